"""Trace rules: the kernel's own per-event verdicts (tcpreuse trace, doctor --trace).

A trace names the mechanism directly, where counters only move (or, for the seed's ACK
at a TIME_WAIT, move nothing but TcpExtTW): these rules turn its summary document
(``Evidence.trace``, tcpreuse.trace.aggregate.Summary.to_json()) into the same Findings,
with the same fixes, as the capture and run rules that infer the same causes.
"""

from __future__ import annotations

from typing import Any

from ...findings import EvidenceItem, Finding, Fix
from ...model.verdicts import VERDICTS
from ..base import Evidence, rule
from .capture_ports import _port_fixes
from .capture_timewait import common_fixes, timestamp_fixes


def _top(doc: dict[str, Any], key: str, label: str, verdict: str, n: int = 5) -> str:
    rows = [r for r in doc.get(key, []) if r["verdicts"].get(verdict)]
    rows.sort(key=lambda r: -r["verdicts"][verdict])
    text = ", ".join(f"{r[label]} ({r['verdicts'][verdict]:,})" for r in rows[:n])
    return text + (" ..." if len(rows) > n else "") if text else "-"


def _reasons(doc: dict[str, Any], verdict: str) -> str:
    return ", ".join(f"{r['reason']} {r['count']:,}" for r in doc.get("reasons", []) if r["verdict"] == verdict) or "-"


def _hosts(doc: dict[str, Any], verdict: str) -> list[str]:
    return sorted({r["endpoint"].rpartition(":")[0] for r in doc.get("locals", []) if r["verdicts"].get(verdict)})


def _listen_fixes() -> list[Fix]:
    return [Fix(id="backlog", title="Raise the listen backlog (listen() argument and net.core.somaxconn)",
                commands=["sysctl -w net.core.somaxconn=4096", "sysctl -w net.ipv4.tcp_max_syn_backlog=4096",
                          "listen(fd, 4096) in the server (nginx: listen ... backlog=4096)"],
                caveat="A longer queue absorbs bursts; if accept() is slower than the arrival rate, add workers."),
            Fix(id="accept-faster", title="Accept faster: more workers/threads calling accept()",
                commands=["more server processes or an accept loop that never blocks"])]


def _window(doc: dict[str, Any]) -> str:
    return f"in {doc.get('duration_s', 0):.1f} s of tracing (kernel {doc.get('kernel', '?')})"


@rule("trace-syn-hit-timewait", needs={"trace"})
def syn_hit_timewait(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    n = doc.get("verdicts", {}).get("old-ack", 0)
    paws = doc.get("verdicts", {}).get("tw-paws", 0)
    if not n and not paws:
        return []
    out: list[Finding] = []
    if n:
        out.append(Finding(
            id="trace-syn-hit-timewait",
            title="SYNs land on TIME_WAIT sockets and get an ACK for the old connection (kernel trace)",
            severity="critical",
            cause=(f"The kernel answered {n:,} SYNs {_window(doc)} with an ACK for the previous connection on the "
                   "same 4-tuple: each met a TIME_WAIT socket (tcp_timewait_state_process() -> TCP_TW_ACK) "
                   "because it carried no newer timestamp and its sequence number was not after the old "
                   "connection's rcv_nxt; the packet was then freed with SKB_DROP_REASON_NOT_SPECIFIED. "
                   "The client resets that ACK and its connect() waits for the next SYN retransmission "
                   "(1 s or more). No counter but TcpExtTW moves for this."),
            evidence=[EvidenceItem(VERDICTS["old-ack"], n),
                      EvidenceItem("TCP flags of those segments", ", ".join(
                          f"{r['flags']} {r['count']:,}" for r in doc.get("flags", []) if r["verdict"] == "old-ack")),
                      EvidenceItem("local endpoints (servers)", _top(doc, "locals", "endpoint", "old-ack")),
                      EvidenceItem("4-tuples", _top(doc, "tuples", "tuple", "old-ack"))],
            confidence=0.95,
            fixes=timestamp_fixes("unknown") + common_fixes(),
            hosts=_hosts(doc, "old-ack")))
    if paws:
        out.append(Finding(
            id="trace-timewait-paws",
            title="SYNs on TIME_WAIT 4-tuples are dropped by PAWS (older timestamps; kernel trace)",
            severity="critical",
            cause=(f"The kernel dropped {paws:,} SYNs {_window(doc)} at TIME_WAIT sockets because their "
                   "timestamp was older than the old connection's last one (tcp_timewait_state_process(): "
                   "tcp_paws_reject(), SKB_DROP_REASON_TCP_RFC7323_TW_PAWS). Several clients share the source "
                   "address (NAT) with unrelated timestamp clocks, or a client's timestamp offset changed."),
            evidence=[EvidenceItem(VERDICTS["tw-paws"], paws),
                      EvidenceItem("local endpoints (servers)", _top(doc, "locals", "endpoint", "tw-paws")),
                      EvidenceItem("4-tuples", _top(doc, "tuples", "tuple", "tw-paws"))],
            confidence=0.9, fixes=common_fixes(), hosts=_hosts(doc, "tw-paws")))
    return out


@rule("trace-listen-overflow", needs={"trace"})
def listen_overflow(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    v = doc.get("verdicts", {})
    n = v.get("listen-overflow", 0)
    if not n:
        return []
    return [Finding(
        id="trace-listen-overflow",
        title="Final ACKs dropped: accept queues are full (kernel trace)",
        severity="critical",
        cause=(f"The kernel dropped {n:,} handshake-completing ACKs {_window(doc)} with "
               "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW: the listener's accept queue was full "
               "(tcp_v4_syn_recv_sock(): sk_acceptq_is_full()). With tcp_abort_on_overflow=0 the server "
               f"retransmits its SYN-ACK later ({v.get('synack-retransmit', 0):,} SYN-ACK retransmissions "
               "seen), so the client waits; its connect() had already returned."),
        evidence=[EvidenceItem(VERDICTS["listen-overflow"], n),
                  EvidenceItem("listeners", _top(doc, "locals", "endpoint", "listen-overflow")),
                  EvidenceItem("SYN-ACK retransmissions", v.get("synack-retransmit", 0))],
        confidence=0.95, fixes=_listen_fixes(), hosts=_hosts(doc, "listen-overflow"))]


@rule("trace-connect-errors", needs={"trace"})
def connect_errors(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    by = {r["reason"]: r["count"] for r in doc.get("reasons", []) if r["verdict"] == "connect-error"}
    out: list[Finding] = []
    n = by.get("EADDRNOTAVAIL", 0)
    if n:
        out.append(Finding(
            id="trace-connect-eaddrnotavail",
            title="connect() fails with EADDRNOTAVAIL: no free local port (kernel trace)",
            severity="critical",
            cause=(f"{n:,} connect() calls returned EADDRNOTAVAIL {_window(doc)}: __inet_hash_connect() found "
                   "no local port in ip_local_port_range whose 4-tuple toward that destination was free "
                   "(TIME_WAIT holds them for 60 s unless tcp_tw_reuse may take them over)."),
            evidence=[EvidenceItem("failed connect() calls", n),
                      EvidenceItem("processes", _top(doc, "processes", "process", "connect-error")),
                      EvidenceItem("destinations", _top(doc, "locals", "endpoint", "connect-error"))],
            confidence=0.95, fixes=_port_fixes()))
    other = {k: c for k, c in by.items() if k != "EADDRNOTAVAIL"}
    asyncs = {r["reason"]: r["count"] for r in doc.get("reasons", []) if r["verdict"] == "async-error"}
    if other or asyncs:
        # a blocking connect() that fails shows twice (the socket's error, then connect()'s return)
        merged = {k: max(other.get(k, 0), asyncs.get(k, 0)) for k in set(other) | set(asyncs)}
        detail = "; ".join(f"{k}: connect() returned it {other.get(k, 0):,} times, reported on a socket "
                           f"{asyncs.get(k, 0):,} times" for k in sorted(merged, key=lambda k: -merged[k]))
        out.append(Finding(
            id="trace-connect-failures",
            title="Connections fail or are reset: " + ", ".join(
                f"{k} {c:,}" for k, c in sorted(merged.items(), key=lambda x: -x[1])),
            severity="warning",
            cause=(f"Connections failed {_window(doc)} with errors the peer or the path caused ({detail}). "
                   "ECONNREFUSED is an RST answer (no listener, or a middlebox), ETIMEDOUT no answer to any "
                   "SYN retransmission, ECONNRESET an RST on an established connection."),
            evidence=[EvidenceItem("destinations of failed connect() calls",
                                   _top(doc, "locals", "endpoint", "connect-error")),
                      EvidenceItem("processes", _top(doc, "processes", "process", "connect-error")),
                      EvidenceItem("4-tuples with an error reported later", _top(doc, "tuples", "tuple", "async-error"))],
            confidence=0.6))
    b = {r["reason"]: r["count"] for r in doc.get("reasons", []) if r["verdict"] == "bind-error"}
    if b.get("EADDRINUSE"):
        out.append(Finding(
            id="trace-bind-eaddrinuse",
            title="bind() fails with EADDRINUSE (kernel trace)",
            severity="warning",
            cause=(f"{b['EADDRINUSE']:,} bind() calls returned EADDRINUSE {_window(doc)}: the address and port "
                   "are held (inet_csk_bind_conflict()), possibly by TIME_WAIT sockets of an earlier run. A "
                   "client that binds before connect() should let the kernel pick the port at connect() "
                   "(IP_BIND_ADDRESS_NO_PORT) so the whole 4-tuple, not the port alone, must be free."),
            evidence=[EvidenceItem("failed bind() calls", b["EADDRINUSE"]),
                      EvidenceItem("processes", _top(doc, "processes", "process", "bind-error"))],
            confidence=0.8,
            fixes=[Fix(id="bind-address-no-port", title="IP_BIND_ADDRESS_NO_PORT before bind() in clients",
                       commands=["setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1) before bind(addr, 0)"]),
                   Fix(id="reuseaddr", title="SO_REUSEADDR on servers that restart",
                       commands=["setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1) before bind()"])]))
    return out


@rule("trace-lost-events", needs={"trace"})
def lost_events(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    lost = doc.get("lost_events", 0)
    if not lost:
        return []
    return [Finding(
        id="trace-lost-events", title=f"The trace lost {lost:,} events: its counts are lower bounds",
        severity="info",
        cause=("bpftrace's perf buffer overflowed: the kernel produced events faster than they were read. "
               "Narrow the trace (--port, --netns, --reasons) so the kernel filters more."),
        evidence=[EvidenceItem("lost events", lost), EvidenceItem("events read", doc.get("events", 0))],
        confidence=1.0)]
