"""The kernel's verdict for each attempt of a run: trace events joined to the load
generator's attempts by 4-tuple and time. Pure.

An attempt is known by the 4-tuple the client used and the one the server saw (after
NAT/LB); an event by the 4-tuple of its packet or socket. Each event goes to the latest
attempt on its 4-tuple that started at or before it (a 4-tuple is reused only after
the previous connection on it is gone, so that attempt is the one it belongs to). A
connect() that failed before a port was chosen (EADDRNOTAVAIL) has no source port: it
goes to the nearest unjoined attempt to the same destination that failed that way.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..result import RunResult
from .events import TraceEvent

# kernel verdict -> the project's reason code (tcpreuse.result.REASONS); the first that
# applies to an attempt wins, in this order.
VERDICT_REASON: dict[str, str] = {
    "connect-error:EADDRNOTAVAIL": "local_ports_exhausted",
    "tw-paws": "syn_paws_timewait",
    "old-ack": "syn_hit_timewait",
    "listen-overflow": "ack_dropped_listen_overflow",
    "no-socket:S": "refused",  # a SYN no socket took: answered by RST
    "async-error:ECONNREFUSED": "refused",
    "tw-accepted": "ok_on_timewait",
}
ORDER = list(VERDICT_REASON)
SLACK_S = 0.05  # the load generator's clock against the kernel's, and its own bookkeeping

# The lab's reason for an attempt against the kernel's: which pairs agree. The lab's
# reasons come from the client (connect()'s result and latency); the kernel's name the
# mechanism. An "ok" the kernel said nothing about agrees; so does an "ok" whose first
# SYN got the old ACK at a TIME_WAIT: the client resets it and re-sends its SYN 2 jiffies
# later (tcp_rcv_synsent_state_process(): TCP_TIMEOUT_MIN), too soon for its latency to
# show; a final ACK dropped at a full accept queue is invisible to the client too (its
# connect() returned), so it agrees with "ok" and explains a later "reset".
CONSISTENT: dict[str, set[str]] = {
    "ok": {"", "ok_on_timewait", "ack_dropped_listen_overflow", "syn_hit_timewait", "syn_paws_timewait"},
    "local_ports_exhausted": {"local_ports_exhausted"},
    "refused": {"refused"},
    "ok_after_syn_retry": {"syn_hit_timewait", "syn_paws_timewait", "ack_dropped_listen_overflow"},
    "connect_timeout": {"syn_hit_timewait", "syn_paws_timewait", "ack_dropped_listen_overflow"},
    "reset": {"ack_dropped_listen_overflow", "syn_hit_timewait"},
    "syn_hit_timewait": {"syn_hit_timewait"},
    "syn_paws_timewait": {"syn_paws_timewait"},
    "ack_dropped_listen_overflow": {"ack_dropped_listen_overflow"},
}
# Lab reasons that need a kernel event to be explained, where the kernel may have none:
# a SYN dropped because the accept queue was full at SYN time is freed with consume_skb()
# (tcp_conn_request(), v6.18: no drop reason), and a SYN lost on the path never arrives.
MAY_BE_SILENT = {"ok_after_syn_retry", "connect_timeout", "reset"}


def _key(ev: TraceEvent) -> str:
    if ev.verdict in ("connect-error", "async-error"):
        return f"{ev.verdict}:{ev.reason}"
    if ev.verdict == "no-socket" and ev.flags == "S":
        return "no-socket:S"
    return ev.verdict


@dataclass
class Joined:
    reasons: list[str]  # per attempt: the kernel's reason code, "" if it reported nothing
    unjoined: int = 0  # events with no attempt to go to
    per_verdict: Counter[str] = field(default_factory=Counter)

    def counts(self) -> dict[str, int]:
        return dict(Counter(r for r in self.reasons if r))


def join(run: RunResult, events: list[TraceEvent], wall_offset_ns: int) -> Joined:
    """`wall_offset_ns` turns an event's CLOCK_MONOTONIC time into Unix time."""
    a = run.attempts
    n = len(a)
    t0 = float(run.meta.get("t0_unix", 0.0))
    starts = (a.cols["t"] + t0).tolist()
    addr = a.vocab["addr"]

    def name(code: int) -> str:
        return addr[code] if code >= 0 else ""

    cols = {k: a.cols[k].tolist() for k in ("src", "sport", "dst", "dport", "srv_src", "srv_sport", "srv_dst",
                                            "srv_dport")}
    outcome = a.column("outcome")
    by_tuple: dict[tuple[str, int, str, int], list[tuple[float, int]]] = {}
    by_dest_fail: dict[tuple[str, int], list[tuple[float, int]]] = {}
    for i in range(n):
        cli = (name(cols["src"][i]), cols["sport"][i], name(cols["dst"][i]), cols["dport"][i])
        srv = (name(cols["srv_src"][i]), cols["srv_sport"][i], name(cols["srv_dst"][i]), cols["srv_dport"][i])
        for tup4 in {cli, srv}:
            if tup4[1] and tup4[0]:
                by_tuple.setdefault(tup4, []).append((starts[i], i))
        if outcome[i] == "EADDRNOTAVAIL":
            by_dest_fail.setdefault((cli[2], cli[3]), []).append((starts[i], i))
    for lst in (*by_tuple.values(), *by_dest_fail.values()):
        lst.sort()
    found: list[set[str]] = [set() for _ in range(n)]
    out = Joined(reasons=[""] * n)
    taken: set[int] = set()
    for ev in events:
        k = _key(ev)
        if k not in VERDICT_REASON:
            continue
        t = (ev.t_ns + wall_offset_ns) / 1e9
        at: int | None = None
        if k == "connect-error:EADDRNOTAVAIL":
            cands = by_dest_fail.get((ev.daddr, ev.dport), [])
            j = bisect.bisect_left(cands, (t - 1.0, -1))
            best = None
            for ts, idx in cands[j:]:
                if idx in taken:
                    continue
                if best is None or abs(ts - t) < abs(best[0] - t):
                    best = (ts, idx)
                if ts > t + 1.0:
                    break
            if best is not None:
                at = best[1]
                taken.add(at)
        else:
            tup = ev.tuple
            if ev.verdict in ("tw-accepted",) or ev.probe == "tcp:tcp_retransmit_synack":
                tup = (ev.daddr, ev.dport, ev.saddr, ev.sport)  # the socket's own view: reverse it
            cands = by_tuple.get(tup, [])
            j = bisect.bisect_right(cands, (t + SLACK_S, n))
            if j:
                at = cands[j - 1][1]
        if at is None:
            out.unjoined += 1
            continue
        out.per_verdict[k] += 1
        found[at].add(k)
    for i, ks in enumerate(found):
        for k in ORDER:
            if k in ks:
                out.reasons[i] = VERDICT_REASON[k]
                break
    return out


def agreement(run: RunResult, joined: Joined, first: int = 10) -> dict[str, Any]:
    """The lab's own reason per attempt against the kernel's: agreement where the lab's
    reason is one the kernel reports on, and the first disagreeing attempts."""
    lab = run.attempts.column("reason")
    checked = agreed = silent = 0
    bad: list[dict[str, Any]] = []
    table: Counter[tuple[str, str]] = Counter()
    for i, (lr, kr) in enumerate(zip(lab, joined.reasons, strict=True)):
        table[(lr, kr)] += 1
        ok_set = CONSISTENT.get(lr)
        if ok_set is None:
            continue
        if lr in MAY_BE_SILENT and kr in ("", "ok_on_timewait"):
            silent += 1  # the kernel reported nothing that explains it (see MAY_BE_SILENT)
            continue
        checked += 1
        if kr in ok_set:
            agreed += 1
        elif len(bad) < first:
            bad.append({"index": i, "t": round(float(run.attempts.cols["t"][i]), 4), "lab": lr, "kernel": kr or "-"})
    return {"attempts": len(lab), "checked": checked, "agree": agreed, "kernel_silent": silent,
            "rate": round(agreed / checked, 4) if checked else None,
            "kernel_reasons": joined.counts(), "unjoined_events": joined.unjoined,
            "pairs": [{"lab": lr, "kernel": kr or "-", "attempts": c} for (lr, kr), c in table.most_common()],
            "first_disagreements": bad}
