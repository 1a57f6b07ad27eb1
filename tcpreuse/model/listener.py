"""A listening socket's SYN and accept queues (docs/kernel.md §9).

`conn_request()` mirrors the order of checks in tcp_conn_request() (net/ipv4/tcp_input.c,
4.x-6.x; tcp_v4_conn_request() in 2.6.32) for one SYN; `syn_recv_sock_ok()` the
accept-queue test when the handshake's final ACK arrives (tcp_v4_syn_recv_sock()).
"""

from __future__ import annotations

from typing import Final

from .profiles import Profile

# verdicts
SYNACK: Final = 0
DROP: Final = 1
COOKIE: Final = 2  # SYN-ACK with a syncookie, no request sock kept


class Listener:
    """A listening socket's queues (a plain class: mypyc makes it a native struct)."""

    __slots__ = ("accept_queue", "backlog", "max_ack_backlog", "somaxconn", "syn_queue")

    def __init__(self, backlog: int, somaxconn: int, accept_queue: int = 0, syn_queue: int = 0) -> None:
        self.backlog = backlog  # listen() argument
        self.somaxconn = somaxconn
        # listen(): sk_max_ack_backlog = min(backlog, net.core.somaxconn)
        self.max_ack_backlog = min(backlog, somaxconn)
        self.accept_queue = accept_queue  # sk_ack_backlog: established children not yet accept()ed
        self.syn_queue = syn_queue  # request socks (SYN_RECV) still waiting

    def acceptq_is_full(self) -> bool:
        """mirrors sk_acceptq_is_full(): strictly greater, so backlog + 1 children fit"""
        return self.accept_queue > self.max_ack_backlog


class ConnRequestVerdict:
    __slots__ = ("counters", "reason", "verdict")

    def __init__(self, verdict: int, reason: str = "", counters: tuple[str, ...] = ()) -> None:
        self.verdict = verdict
        self.reason = reason
        self.counters = counters


class ListenRules:
    """The kernel facts tcp_conn_request() depends on, read once from a Profile (so the
    per-SYN path does not go back to the profile's derived properties)."""

    __slots__ = ("counts_on_syn", "old_full_rule", "reqq_counters")

    def __init__(self, p: Profile) -> None:
        self.counts_on_syn: bool = p.listen_counts_on_syn
        self.reqq_counters: bool = p.has_reqq_counters
        # 2.6.32 (and EL6): the accept-queue test also needs more than one young request
        self.old_full_rule: bool = p.el6 or not p.at_least(3, 0)


_SYNACK: Final = ConnRequestVerdict(SYNACK)  # (Final: a C static in compiled code, not a globals lookup)


def conn_request(
    lst: Listener,
    rules: ListenRules,
    *,
    from_timewait: bool,
    syncookies: int,
    recycle_reject: bool,
) -> ConnRequestVerdict:
    """mirrors tcp_conn_request() for one SYN (docs/kernel.md §9). `from_timewait`: the SYN was
    accepted by a TIME_WAIT socket (isn != 0): "TW buckets are converted to open requests
    without limitations" (SYN-queue test skipped, accept-queue test kept). `recycle_reject`
    is the outcome of the tcp_tw_recycle passive PAWS check (PeerCache.syn_rejected)."""
    counts = rules.counts_on_syn
    cookie = False
    pre: tuple[str, ...] = ()
    if (syncookies == 2 or lst.syn_queue >= lst.max_ack_backlog) and not from_timewait:
        if not syncookies:
            c: tuple[str, ...] = ("TcpExtTCPReqQFullDrop", "TcpExtListenDrops") if counts else ()
            return ConnRequestVerdict(DROP, "syn_dropped_listen_overflow", c)
        # tcp_syn_flood_action() counts TCPReqQFullDoCookies; the accept-queue test below
        # still drops the SYN (no cookie is sent then).
        cookie = True
        pre = ("TcpExtTCPReqQFullDoCookies",) if rules.reqq_counters else ()
    if rules.old_full_rule:
        # 2.6.32: sk_acceptq_is_full(sk) && inet_csk_reqsk_queue_young(sk) > 1 -> silent drop
        full = lst.acceptq_is_full() and lst.syn_queue > 1
    else:
        full = lst.acceptq_is_full()
    if full:
        c = pre + (("TcpExtListenOverflows", "TcpExtListenDrops") if counts else ())
        return ConnRequestVerdict(DROP, "syn_dropped_listen_overflow", c)
    if recycle_reject and not from_timewait:
        c = pre + ("TcpExtPAWSPassive",) + (("TcpExtListenDrops",) if counts else ())
        return ConnRequestVerdict(DROP, "syn_dropped_recycle", c)
    if cookie:
        return ConnRequestVerdict(COOKIE, "syncookie", pre)
    return _SYNACK


_ACCEPT_OK: Final[tuple[str, ...]] = ()
_ACCEPT_FULL: Final[tuple[str, ...]] = ("TcpExtListenOverflows", "TcpExtListenDrops")


def syn_recv_sock_ok(lst: Listener) -> tuple[bool, tuple[str, ...]]:
    """The final ACK of the handshake: tcp_v4_syn_recv_sock() refuses to create the child
    when the accept queue is full (ListenOverflows, ListenDrops; counted in 2.6.32 too).
    With tcp_abort_on_overflow=0 the request is kept (acked=1) and retried."""
    if lst.acceptq_is_full():
        return False, _ACCEPT_FULL
    return True, _ACCEPT_OK
