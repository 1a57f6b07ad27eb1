"""Capture rule: SYNs a tcp_tw_recycle server drops (per-peer timestamp check, <= 4.11).

With tcp_tw_recycle=1 a Linux server remembers, per client address, the newest TSval it
saw on connections it closed (tcp_remember_stamp) and for 60 s silently drops SYNs whose
TSval is more than 1 behind (tcp_peer_is_proven / PAWSPassive). Hosts behind one NAT
address have unrelated clocks, so most of them are dropped. In a capture: SYNs never
answered (Zeek S0) or answered only after retransmissions, from addresses that show
several timestamp clocks, exactly where the replayed cache says "drop". The clocks are
hosts only where the capture separates them (sources.clock_fit): per-4-tuple offsets
(Linux 4.10, 2026+ kernels) give one host a clock per port, and the cache drops its SYNs
just the same.
"""

from __future__ import annotations

import numpy as np

from ...capture import reuse
from ...capture.facts import by_client, pct
from ...capture.sources import SourceStats
from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule


def _fixes() -> list[Fix]:
    return [
        Fix(id="tw-recycle-off", title="Turn tcp_tw_recycle off on the servers (kernels <= 4.11)",
            commands=["sysctl -w net.ipv4.tcp_tw_recycle=0",
                      "and remove net.ipv4.tcp_tw_recycle from /etc/sysctl.conf and /etc/sysctl.d/*"],
            caveat="It was removed in Linux 4.12 because it breaks clients behind NAT; without it the "
                   "server keeps TIME_WAIT for 60 s (harmless on the server side)."),
        Fix(id="tw-reuse-instead", title="If TIME_WAIT on the server was the worry: let clients close first",
            commands=["client-side: sysctl -w net.ipv4.tcp_tw_reuse=1 (needs timestamps)"]),
    ]


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


@rule("capture-tw-recycle-drops", needs={"capture"})
def tw_recycle_drops(ev: Evidence) -> list[Finding]:
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
                fixes=_fixes(), hosts=[client]))
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
        confidence=0.6, fixes=_fixes()[:1])]
