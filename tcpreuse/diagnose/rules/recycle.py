"""tcp_tw_recycle and PAWS: SYNs dropped because their timestamp looks old.

With tcp_tw_recycle=1 (kernels <= 4.11) a server remembers, per peer, the newest TSval it
saw on connections it closed (tcp_remember_stamp) and for 60 s silently drops SYNs whose
TSval is more than 1 behind (tcp_peer_is_proven, PAWSPassive). Hosts behind one NAT
address have unrelated clocks. Read from a run, a capture (unanswered SYNs exactly where
a replayed cache says "drop"; the clocks are hosts only where the capture separates them,
sources.clock_fit) and live hosts (the setting, the PAWS counters).
"""

from __future__ import annotations

import numpy as np

from ...capture import reuse
from ...capture.facts import by_client
from ...capture.sources import SourceStats
from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import fix_list, linux_hosts, profile_of, rate
from ..runfacts import cause_stats, first_at, groups, pct

RECYCLE = Mechanism("recycle", "tcp_tw_recycle / PAWS", {
    "tw-recycle-paws-drop": "a run's servers with tcp_tw_recycle=1 dropped SYNs by the per-peer timestamp check",
    "capture-tw-recycle-drops": "captured SYNs went unanswered exactly where a tcp_tw_recycle cache drops them",
    "capture-tw-recycle-risk": "captured SYNs a tcp_tw_recycle server would drop (these servers answered them)",
    "tw-recycle-enabled": "a live host has tcp_tw_recycle=1",
    "paws-rejects-rising": "a live host's PAWS counters rise",
})


@RECYCLE.rule("run", "tw-recycle-paws-drop")
def from_run(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_dropped_recycle")
    passive = run.host_counter("TcpExtPAWSPassive")
    if st is None and not passive:
        return []
    n = len(run.attempts)
    servers = [h for h, c in run.counters.items() if c.get("TcpExtPAWSPassive")]
    evidence = [EvidenceItem("TcpExtPAWSPassive (SYNs dropped)", passive,
                             "passive connections rejected because of time stamp")]
    if st is not None:
        evidence += [
            EvidenceItem("attempts with a dropped SYN", st.attempts, pct(st.attempts / n)),
            EvidenceItem("failed", st.failed, ", ".join(f"{k} x{v:,}" for k, v in st.errnos.items())),
            first_at(st),
        ]
    sc = ev.scenario
    nat_text = ""
    if sc is not None and sc.nat is not None:
        nat_text = (f" The clients reach the servers through {sc.nat.addresses} NAT address(es), so "
                    "hosts with unrelated timestamp clocks share one cache entry.")
    cause = (
        "tcp_tw_recycle=1 on the servers keeps, per peer address, the last TSval seen when a "
        "connection with timestamps entered TIME_WAIT (tcp_remember_stamp). For 60 s (TCP_PAWS_MSL) "
        "a SYN from that address whose TSval is older by more than 1 (TCP_PAWS_WINDOW) — or, on "
        "3.17-4.11, that carries no timestamp — is dropped silently (tcp_conn_request / "
        f"tcp_peer_is_proven): no SYN-ACK, no RST; the client retransmits and times out.{nat_text}"
    )
    fixes = [fx.recycle_off(g.name) for g in groups(sc, "server")
             if int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0))] or [fx.recycle_off()]
    return [Finding(id="tw-recycle-paws-drop",
                    title="tcp_tw_recycle silently drops SYNs whose timestamps look old",
                    severity="critical", cause=cause, evidence=evidence, confidence=0.95, fixes=fixes,
                    hosts=servers)]


def _source(ev: Evidence, client: str) -> SourceStats | None:
    for s in ev.require_capture().sources:
        if s.addr == client:
            return s
    return None


def _clock_text(s: SourceStats | None, client: str) -> str:
    """Why this address's SYNs go backwards for the cache: several hosts (with the evidence),
    or one host's per-4-tuple offsets; nothing when the capture cannot tell."""
    if s is None or s.ts_clocks is None:
        return ""
    if s.ts_nat:
        return f" Several hosts share {client}, or a NAT translates their ports: {s.ts_evidence}."
    if s.ts_per_connection:
        return (f" {client}'s TSval offsets differ per 4-tuple ({s.ts_clocks:,} clocks, one per 4-tuple: "
                "Linux 4.10, or kernels with the 2026 per-4-tuple offsets), so even one host's SYNs go "
                "backwards for a cache kept per address; nothing in the capture says several hosts.")
    return ""


@RECYCLE.rule("capture", ("capture-tw-recycle-drops", "capture-tw-recycle-risk"))
def from_capture(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    a = an.attempts
    att = a["is_attempt"]
    flagged = att & (a["tw_recycle"] != reuse.RC_NONE)
    if not flagged.any():
        return []
    t_ans = a["t_answer"]
    first_unanswered = att & (np.isnan(t_ans) | (~np.isnan(a["t_syn2"]) & (t_ans >= a["t_syn2"])))
    n_flag = int(flagged.sum())
    dropped = flagged & first_unanswered
    n_drop = int(dropped.sum())
    rest = att & ~flagged
    base_rate = float((first_unanswered & rest).sum()) / max(int(rest.sum()), 1)
    observed = n_drop >= 3 and n_drop >= 0.5 * n_flag and n_drop / n_flag > 3 * base_rate
    out: list[Finding] = []
    if observed:
        for client, rows in by_client(an, np.flatnonzero(dropped)):
            n_client = int((att & (a["orig"] == a["orig"][rows[0]])).sum())
            k = rows.size
            never = int(np.isnan(t_ans[rows]).sum())
            src = _source(ev, client)
            clocks = src.ts_clocks if src else None
            per_conn = bool(src and src.ts_per_connection)
            hosts = bool(src and src.ts_nat)
            no_ts = int((a["tw_recycle"][rows] == reuse.RC_DROP_4X).sum())
            clock_text = _clock_text(src, client)
            cause = (
                f"{pct(k / max(n_client, 1))} of SYNs from {client} ({k:,}) were not answered "
                f"({never:,} never), and each of them is one a tcp_tw_recycle server drops: its TSval is "
                "more than 1 behind the newest TSval the server remembered for this address within the "
                "last 60 s (tcp_peer_is_proven(), counted in TcpExtPAWSPassive)." + clock_text
                + f" SYNs the cache would not drop were unanswered {pct(base_rate)} of the time, these "
                f"{pct(n_drop / n_flag)}."
            )
            if no_ts:
                cause += (f" {no_ts:,} of them carried no timestamp: 3.x-4.11 kernels drop those too while "
                          "a fresh cache entry exists (2.6.32 does not).")
            out.append(Finding(
                id="capture-tw-recycle-drops",
                title=f"SYNs from {client} are silently dropped the way tcp_tw_recycle drops them",
                severity="critical", cause=cause,
                evidence=[
                    EvidenceItem("unanswered SYNs the recycle cache would drop", k, pct(k / max(n_client, 1))),
                    EvidenceItem("never answered", never),
                    EvidenceItem("timestamp clocks behind the address", clocks if clocks is not None else "-",
                                 "NAT" if hosts else ("one per 4-tuple" if per_conn else "")),
                    EvidenceItem("unanswered rate of SYNs the cache would accept", pct(base_rate)),
                ],
                confidence=0.85 if hosts else 0.7,
                fixes=fx.recycle_advice(), hosts=[client]))
        return out
    # not observed: what tw_recycle would do to this traffic
    nat = [s for s in an.sources if s.ts_nat]
    per_conn_addrs = [s.addr for s in an.sources if s.ts_per_connection and not s.ts_nat]
    return [Finding(
        id="capture-tw-recycle-risk",
        title="A server with tcp_tw_recycle=1 would drop some of these SYNs",
        severity="info",
        cause=(f"{n_flag:,} SYNs ({pct(n_flag / max(int(att.sum()), 1))}) carry a TSval older than one the "
               "server saw from the same address less than 60 s earlier on a connection it closed. The "
               "servers here answered them, so they do not run tcp_tw_recycle; a server that did "
               "(kernels <= 4.11) would drop them silently."
               + (" Addresses behind a NAT (several hosts, or translated ports): "
                  + "; ".join(f"{s.addr} ({s.ts_evidence})" for s in nat[:5]) + "." if nat else "")
               + (" Addresses whose TSval offsets differ per 4-tuple (Linux 4.10, or kernels with the 2026 "
                  "per-4-tuple offsets): one host's SYNs then go backwards for a cache kept per address, "
                  f"so nothing here says several hosts: {', '.join(per_conn_addrs[:5])}."
                  if per_conn_addrs else "")),
        evidence=[EvidenceItem("SYNs the recycle cache would drop", n_flag),
                  EvidenceItem("... of which without timestamps (3.x-4.11 only)",
                               int((a["tw_recycle"] == reuse.RC_DROP_4X).sum()))],
        confidence=0.6, fixes=fx.recycle_advice()[:1])]


@RECYCLE.rule("hosts", "tw-recycle-enabled")
def from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        if h.settings.get("net.ipv4.tcp_tw_recycle") != 1:
            continue
        p = profile_of(h)
        ts = h.settings.get("net.ipv4.tcp_timestamps", 1)
        paws = h.counters_absolute.get("TcpExtPAWSPassive")
        paws_rate = rate(h, "TcpExtPAWSPassive")
        drops = h.counters_absolute.get("TcpExtListenDrops")
        evidence = [
            EvidenceItem("net.ipv4.tcp_tw_recycle", 1),
            EvidenceItem("net.ipv4.tcp_timestamps", ts),
            EvidenceItem("kernel", h.extra.get("kernel_release") or h.profile or "unknown"),
            EvidenceItem("TcpExtPAWSPassive since boot",
                         paws if paws is not None else
                         "absent on this kernel" if "TcpExtPAWSPassive" in h.counters_absent else "not read",
                         "SYNs dropped by the per-peer timestamp check"),
        ]
        if paws_rate is not None:
            evidence.append(EvidenceItem("TcpExtPAWSPassive per s", round(paws_rate, 2)))
        if drops is not None:
            evidence.append(EvidenceItem("TcpExtListenDrops since boot", drops))
        evidence.append(EvidenceItem("role", h.role or "unknown", h.extra.get("role_evidence", "")))
        keyed = "the peer's IP address (inet_peer)" if p and not p.at_least(3, 5) else \
            "the (local, remote) address pair (tcp_metrics)"
        cause = (
            "tcp_tw_recycle is on. For every peer the kernel remembers the last TCP timestamp it saw, "
            f"keyed by {keyed}, and for 60 s (TCP_PAWS_MSL) silently drops a SYN whose timestamp is "
            "lower (tcp_peer_is_proven() in tcp_conn_request, counted in PAWSPassive): no SYN-ACK, no "
            "RST, the client retransmits and times out. Clients behind one NAT or load-balancer SNAT "
            "address have unrelated timestamp clocks, so all but the fastest clock get dropped."
        )
        if p and p.recycle_drops_tsless_syn:
            cause += (" On this kernel a SYN without timestamps from a recently seen peer is dropped "
                      "too.")
        if p and p.at_least(4, 10):
            cause += " Since 4.10 random timestamp offsets break it even without NAT."
        if not ts:
            cause += (" Timestamps are off here, so recycling does nothing now, but turning "
                      "tcp_timestamps on (a common fix for other problems) will arm it.")
        severity = "critical" if (paws or 0) > 0 or h.role in (None, "server", "lb", "nat") else "warning"
        if not ts and not paws:
            severity = "warning"
        out.append(Finding(
            id="tw-recycle-enabled",
            title="tcp_tw_recycle is on: SYNs from clients sharing an address are silently dropped"
                  + (f" ({paws:,} so far)" if paws else ""),
            severity=severity, cause=cause, evidence=evidence,
            confidence=0.95 if (paws or 0) > 0 else 0.75,
            fixes=fix_list(fx.recycle_off_on(h)),
            hosts=[h.name]))
    return out


_PAWS = {
    "TcpExtPAWSPassive": "SYNs dropped by tcp_tw_recycle's per-peer timestamp cache",
    "TcpExtPAWSActive": "SYN-ACKs whose echoed timestamp does not match the SYN: the connect() is reset",
    "TcpExtPAWSEstab": "segments of established connections (and, before ~6.15, TIME_WAIT) with an older "
                       "timestamp than the last one seen on that 4-tuple",
    "TcpExtPAWSTimewait": "segments (often new SYNs) reaching a TIME_WAIT socket with an older timestamp",
}


@RECYCLE.rule("hosts", "paws-rejects-rising", name="paws")
def paws_from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        rising = {n: r for n in _PAWS if (r := rate(h, n)) is not None and r > 0}
        if h.settings.get("net.ipv4.tcp_tw_recycle") == 1:
            rising.pop("TcpExtPAWSPassive", None)  # the tw_recycle finding owns it
        if not rising:
            continue
        items = [EvidenceItem(f"{n} per s", round(r, 2), _PAWS[n]) for n, r in rising.items()]
        items += [EvidenceItem(f"{n} since boot", h.counters_absolute[n]) for n in rising
                  if n in h.counters_absolute]
        absent = sorted(n for n in _PAWS if n in h.counters_absent)
        if absent:
            items.append(EvidenceItem("absent on this kernel", ", ".join(absent)))
        out.append(Finding(
            id="paws-rejects-rising",
            title="PAWS rejections rising: " + ", ".join(f"{n[6:]} {r:,.1f}/s" for n, r in rising.items()),
            severity="warning",
            cause=("PAWS drops segments whose TCP timestamp is older than the last one seen for the same "
                   "4-tuple (or, with tcp_tw_recycle, the same peer). Rising counts mean 4-tuples are "
                   "reused by senders with unrelated timestamp clocks: several clients behind one NAT or "
                   "load-balancer SNAT address, or a load balancer reusing a back-end 4-tuple still in "
                   "TIME_WAIT. The counters are host-wide; a capture names the peers."),
            evidence=items, confidence=0.7,
            fixes=[fx.capture_and_analyze("Capture SYNs and let `tcpreuse analyze` name the peers", caveat="Do not turn timestamps off to silence PAWS: it also disables tcp_tw_reuse "
                              "and the protection PAWS gives.")],
            hosts=[h.name]))
    return out
