"""tcp_tw_recycle and PAWS: SYNs dropped because their timestamp looks old.

With tcp_tw_recycle=1 (kernels <= 4.11) a server remembers, per peer, the newest TSval it
saw on connections it closed (tcp_remember_stamp) and for 60 s silently drops SYNs whose
TSval is more than 1 behind (tcp_peer_is_proven, PAWSPassive). Hosts behind one NAT
address have unrelated clocks. One fact record, RecycleDrop, read from a run, a capture
(unanswered SYNs exactly where a replayed cache says "drop"; the clocks are hosts only where
the capture separates them, sources.clock_fit) and live hosts (the setting, the PAWS
counters), and one builder; what a capture says of servers that answered (the risk) and
PAWS counters in general are plain rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import Block, by_client, count_where, from_client
from ...findings import EvidenceItem, Finding
from ...model.profiles import Profile, get_profile
from .. import fixes as fx
from ..base import SEEN, Evidence, Fact, Mechanism
from ..judge import fix_list, linux_hosts, profile_of, rate
from ..runfacts import cause_stats, first_at, groups, pct

RECYCLE = Mechanism("recycle", "tcp_tw_recycle / PAWS", {
    "tw-recycle-paws-drop": "a run's servers with tcp_tw_recycle=1 dropped SYNs by the per-peer timestamp check",
    "capture-tw-recycle-drops": "captured SYNs went unanswered exactly where a tcp_tw_recycle cache drops them",
    "capture-tw-recycle-risk": "captured SYNs a tcp_tw_recycle server would drop (these servers answered them)",
    "tw-recycle-enabled": "a live host has tcp_tw_recycle=1",
    "paws-rejects-rising": "a live host's PAWS counters rise",
}, ids={"run": "tw-recycle-paws-drop", "capture": "capture-tw-recycle-drops", "hosts": "tw-recycle-enabled"})


@dataclass(frozen=True)
class RecycleDrop(Fact):
    """tcp_tw_recycle's per-peer timestamp check at work (or armed), as one kind of evidence
    shows it; None: that evidence cannot know."""

    peer: str = ""  # the address whose SYNs are dropped, when the evidence names one
    dropped: int | None = None  # attempts whose SYN was dropped
    failed: int | None = None  # ... that never connected
    attempts: int | None = None  # attempts in the evidence (from this peer)
    paws_passive: int | str | None = None  # TcpExtPAWSPassive (a run's; a live host's since boot, or why not)
    nat_addresses: int | None = None  # NAT addresses the clients share
    clocks: int | None = None  # timestamp clocks behind the peer's address ...
    clocks_kind: str = ""  # ... "NAT" (several hosts) or "one per 4-tuple" (one host's offsets)
    clocks_evidence: str = ""  # what in the capture says so
    no_ts: int | None = None  # dropped SYNs without timestamps
    base_rate: float | None = None  # unanswered rate of SYNs the cache would accept ...
    drop_rate: float | None = None  # ... and of those it drops
    timestamps: object = None  # net.ipv4.tcp_timestamps, where known
    profile: Profile | None = None
    role: str | None = None


@RECYCLE.builder
def build(f: RecycleDrop) -> list[Finding]:
    p = f.profile
    paws = f.paws_passive if isinstance(f.paws_passive, int) else 0
    n = f.dropped or paws
    keyed = ("the peer's address" if p is None else "the peer's IP address (inet_peer)" if not p.at_least(3, 5)
             else "the (local, remote) address pair (tcp_metrics)")
    seen = "; ".join(s for s in (
        f"{pct(f.dropped / max(f.attempts or 1, 1))} of SYNs{' from ' + f.peer if f.peer else ''} ({f.dropped:,}) "
        f"were dropped this way" if f.dropped else "",
        f"{f.failed:,} never connected" if f.failed is not None else "",
        f"the clients reach the servers through {f.nat_addresses} NAT address(es), so hosts with unrelated "
        "timestamp clocks share one cache entry" if f.nat_addresses is not None else "",
        f"SYNs the cache would not drop were unanswered {pct(f.base_rate)} of the time, these "
        f"{pct(f.drop_rate)}" if f.base_rate is not None and f.drop_rate is not None else "") if s)
    cause = (
        "With tcp_tw_recycle=1 (kernels <= 4.11), for every peer the kernel remembers the last TCP timestamp "
        f"it saw when a connection with timestamps entered TIME_WAIT (tcp_remember_stamp), keyed by {keyed}, and for 60 s "
        "(TCP_PAWS_MSL) silently drops a SYN whose timestamp is more than 1 behind (TCP_PAWS_WINDOW; "
        "tcp_peer_is_proven() in tcp_conn_request, counted in TcpExtPAWSPassive): no SYN-ACK, no RST, the client "
        "retransmits and times out. Clients behind one NAT or load-balancer SNAT address have unrelated "
        "timestamp clocks, so all but the fastest clock get dropped."
        + (f" {SEEN.get(f.source, 'Here')}: {seen}." if seen else "")
        + (f" Several hosts share {f.peer}, or a NAT translates their ports: {f.clocks_evidence}."
           if f.clocks_kind == "NAT" else "")
        + (f" {f.peer}'s TSval offsets differ per 4-tuple ({f.clocks:,} clocks, one per 4-tuple: Linux 4.10, or "
           "kernels with the 2026 per-4-tuple offsets), so even one host's SYNs go backwards for a cache kept "
           "per address; nothing in the capture says several hosts." if f.clocks_kind == "one per 4-tuple" else "")
        + (f" {f.no_ts:,} of them carried no timestamp: 3.x-4.11 kernels drop those too while a fresh cache "
           "entry exists (2.6.32 does not)." if f.no_ts else "")
        + (" On this kernel a SYN without timestamps from a recently seen peer is dropped too."
           if p and p.recycle_drops_tsless_syn and f.no_ts is None else "")
        + (" Since 4.10 random timestamp offsets break it even without NAT." if p and p.at_least(4, 10) else "")
        + (" Timestamps are off here, so recycling does nothing now, but turning tcp_timestamps on (a common "
           "fix for other problems) will arm it." if f.timestamps == 0 else ""))
    items = [EvidenceItem(label, value, detail) for label, value, detail in (
        ("SYNs dropped by the recycle cache", f.dropped, pct(f.dropped / max(f.attempts or 1, 1))
         if f.dropped is not None else ""),
        ("never connected", f.failed, ""),
        ("TcpExtPAWSPassive" + (" since boot" if f.source == "hosts" else ""), f.paws_passive, "SYNs dropped by the per-peer timestamp check"),
        ("timestamp clocks behind the address", f.clocks if f.clocks is not None else "-" if f.peer else None,
         f.clocks_kind),
        ("unanswered rate of SYNs the cache would accept", None if f.base_rate is None else pct(f.base_rate), "")
    ) if value is not None] + list(f.context)
    serves = f.role in (None, "server", "lb", "nat") and f.timestamps != 0
    return [Finding(
        id=RECYCLE.ids[f.source],
        title=("tcp_tw_recycle is on" if f.source == "hosts" else "tcp_tw_recycle at work")
        + f": SYNs from {f.peer or 'clients sharing an address'} are silently dropped" + (f" ({n:,} so far)" if n else ""),
        severity="critical" if n or serves else "warning", cause=cause, evidence=items,
        confidence={"capture": 0.85 if f.clocks_kind == "NAT" else 0.7,
                    "hosts": 0.95 if paws else 0.75}.get(f.source, 0.95),
        fixes=list(f.fixes) or fx.recycle_advice(), hosts=list(f.hosts))]


@RECYCLE.extractor("run")
def from_run(ev: Evidence) -> RecycleDrop | None:
    run = ev.require_run()
    st = cause_stats(run, "syn_dropped_recycle")
    passive = run.host_counter("TcpExtPAWSPassive")
    if st is None and not passive:
        return None
    sc = ev.scenario
    on = [g for g in groups(sc, "server") if int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0))]
    return RecycleDrop(
        "run", hosts=tuple(h for h, c in run.counters.items() if c.get("TcpExtPAWSPassive")),
        dropped=st.attempts if st else None, failed=st.failed if st else None, attempts=run.attempt_count(),
        paws_passive=passive, context=(first_at(st), *(EvidenceItem("errors", e) for e in [", ".join(
            f"{k} x{v:,}" for k, v in st.errnos.items())] if e)) if st else (),
        nat_addresses=sc.nat.addresses if sc is not None and sc.nat is not None else None,
        profile=get_profile(on[0].profile) if on else None,
        fixes=tuple(fx.recycle_off(g.name) for g in on) or (fx.recycle_off(),))


def _flagged(ev: Evidence) -> tuple[int, np.ndarray, float, bool]:
    """How many SYNs the recycle cache drops, those of them unanswered (rows), the
    unanswered rate of the others, and whether the drops are observed (unanswered far
    more often than the others); counted a block of rows at a time."""
    an = ev.require_capture()
    n_flag = n_rest = n_rest_unanswered = 0
    dropped = []
    for sl in flows.row_blocks(len(an.attempts)):
        b = Block(an, sl)
        att = b["is_attempt"]
        flagged = att & (b["tw_recycle"] != reuse.RC_NONE)
        t_ans = b["t_answer"]
        unanswered = att & (np.isnan(t_ans) | (~np.isnan(b["t_syn2"]) & (t_ans >= b["t_syn2"])))
        n_flag += int(flagged.sum())
        dropped.append(np.flatnonzero(flagged & unanswered) + sl.start)
        rest = att & ~flagged
        n_rest += int(rest.sum())
        n_rest_unanswered += int((unanswered & rest).sum())
    rows = np.concatenate(dropped) if dropped else np.zeros(0, dtype=np.int64)
    n_drop = rows.size
    base_rate = float(n_rest_unanswered) / max(n_rest, 1)
    return n_flag, rows, base_rate, n_drop >= 3 and n_drop >= 0.5 * n_flag and n_drop / max(n_flag, 1) > 3 * base_rate


@RECYCLE.extractor("capture")
def from_capture(ev: Evidence) -> list[RecycleDrop]:
    an = ev.require_capture()
    a = an.attempts
    n_flag, dropped, base_rate, observed = _flagged(ev)
    if not observed:
        return []
    sources = {s.addr: s for s in an.sources}
    out = []
    for client, rows in by_client(an, dropped):
        src = sources.get(client)
        clocks = src.ts_clocks if src else None
        ck = a["orig"][rows[0]]
        out.append(RecycleDrop(
            "capture", hosts=(client,), peer=client, dropped=rows.size,
            attempts=count_where(an, from_client(ck)),
            failed=int(np.isnan(a["t_answer"][rows]).sum()), clocks=clocks,
            clocks_kind="" if src is None or clocks is None else "NAT" if src.ts_nat else
            "one per 4-tuple" if src.ts_per_connection else "",
            clocks_evidence=src.ts_evidence if src else "",
            no_ts=int((a["tw_recycle"][rows] == reuse.RC_DROP_4X).sum()), base_rate=base_rate,
            drop_rate=dropped.size / n_flag))
    return out


@RECYCLE.rule("capture", "capture-tw-recycle-risk", name="risk")
def risk_from_capture(ev: Evidence) -> list[Finding]:
    """What tw_recycle would do to this traffic, where the servers answered."""
    an = ev.require_capture()
    n_flag, _, _, observed = _flagged(ev)
    if observed or not n_flag:
        return []
    nat = [s for s in an.sources if s.ts_nat]
    per_conn_addrs = [s.addr for s in an.sources if s.ts_per_connection and not s.ts_nat]
    return [Finding(
        id="capture-tw-recycle-risk",
        title="A server with tcp_tw_recycle=1 would drop some of these SYNs",
        severity="info",
        cause=(f"{n_flag:,} SYNs ({pct(n_flag / max(count_where(an, lambda b: b['is_attempt']), 1))}) carry a TSval older than one "
               "the server saw from the same address less than 60 s earlier on a connection it closed. The "
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
                               count_where(an, lambda b: b["tw_recycle"] == reuse.RC_DROP_4X))],
        confidence=0.6, fixes=fx.recycle_advice()[:1])]


@RECYCLE.extractor("hosts")
def from_hosts(ev: Evidence) -> list[RecycleDrop]:
    out = []
    for h in linux_hosts(ev):
        if h.settings.get("net.ipv4.tcp_tw_recycle") != 1:
            continue
        ts, r = h.settings.get("net.ipv4.tcp_timestamps", 1), rate(h, "TcpExtPAWSPassive")
        shown = (("net.ipv4.tcp_tw_recycle", 1, ""), ("net.ipv4.tcp_timestamps", ts, ""),
                 ("kernel", h.extra.get("kernel_release") or h.profile or "unknown", ""),
                 ("TcpExtPAWSPassive per s", None if r is None else round(r, 2), ""),
                 ("TcpExtListenDrops since boot", h.counters_absolute.get("TcpExtListenDrops"), ""),
                 ("role", h.role or "unknown", h.extra.get("role_evidence", "")))
        out.append(RecycleDrop(
            "hosts", hosts=(h.name,), timestamps=ts, profile=profile_of(h), role=h.role,
            paws_passive=h.counters_absolute.get("TcpExtPAWSPassive", "absent on this kernel" if "TcpExtPAWSPassive"
                                                 in h.counters_absent else "not read"),
            fixes=tuple(fix_list(fx.recycle_off_on(h))), context=tuple(EvidenceItem(*x) for x in shown if x[1] is not None)))
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
