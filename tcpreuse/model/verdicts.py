"""What the kernel's per-packet and per-call reports mean for short connections.

A trace sees the kernel's verdicts one event at a time: an ``skb:kfree_skb`` with its
``enum skb_drop_reason`` and the socket the packet met (``rx_sk``), a ``tcp:tcp_send_reset``
with its ``enum sk_rst_reason``, a connect()/bind() that returned an errno. These rules
name what each combination is, in this project's words (the same ones the simulator's
reasons and the capture verdicts use), and cite where the kernel decides it. Reason
*numbers* are never here: they are read from the running kernel (tcpreuse.trace.kernel).
Pure: no I/O.
"""

from __future__ import annotations

# TCP header flag bits (RFC 9293 §3.1; include/net/tcp.h TCPHDR_*)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Verdicts, with what each means. Order is the order of the summary tables.
VERDICTS: dict[str, str] = {
    "old-ack": "SYN on a TIME_WAIT 4-tuple answered with an ACK for the old connection",
    "tw-paws": "SYN on a TIME_WAIT 4-tuple dropped by PAWS (older timestamp)",
    "tw-rst": "RST that killed a TIME_WAIT socket",
    "tw-fin": "retransmitted FIN at a TIME_WAIT socket, answered with an ACK",
    "tw-segment": "other segment at a TIME_WAIT socket, dropped",
    "listen-overflow": "final ACK dropped: the listener's accept queue was full",
    "synack-retransmit": "SYN-ACK retransmitted: the handshake's final ACK did not arrive or was dropped",
    "paws": "segment dropped by PAWS on an open connection",
    "no-socket": "segment for a 4-tuple no socket holds (answered by RST unless it was an RST)",
    "invalid-syn": "SYN where none is allowed (open connection), dropped",
    "reset-sent": "the kernel sent an RST",
    "connect-error": "connect() failed in the calling process",
    "bind-error": "bind() failed in the calling process",
    "async-error": "a connection failed after connect() returned (error reported on the socket)",
    "tw-accepted": "SYN accepted on a 4-tuple that was in TIME_WAIT here (a newer timestamp or sequence)",
    "tw-reuse": "connect() took over this host's own TIME_WAIT 4-tuple (tcp_tw_reuse)",
    "drop": "segment dropped for another reason",
}


def tw_verdict(reason: str, flags: int) -> str:
    """A segment freed by tcp_v4_rcv() after tcp_timewait_state_process() (net/ipv4/tcp_minisocks.c).

    mirrors tcp_timewait_state_process() and the TCP_TW_* switch in tcp_v4_rcv()
    (net/ipv4/tcp_ipv4.c), v6.x: a SYN that is neither after the old rcv_nxt nor carries a
    newer timestamp gets TCP_TW_ACK (an ACK for the old connection; the seed incident),
    then the skb is freed with SKB_DROP_REASON_NOT_SPECIFIED; with a timestamp older than
    ts_recent it is rejected by PAWS, SKB_DROP_REASON_TCP_RFC7323_TW_PAWS (checked on
    v6.18; a kernel whose enum lacks that reason reports NOT_SPECIFIED, and the SYN is
    then counted as old-ack, which it also is: PAWS-rejected SYNs are answered by an ACK). An RST in window kills the TIME_WAIT
    (inet_twsk_deschedule_put(), unless tcp_rfc1337); a retransmitted FIN is ACKed.
    An accepted SYN (TCP_TW_SYN) is not freed here: it goes on to the listener.
    """
    if reason == "TCP_RFC7323_TW_PAWS":
        return "tw-paws"
    if flags & RST:
        return "tw-rst"
    if flags & SYN:
        return "old-ack"
    if flags & FIN:
        return "tw-fin"
    return "tw-segment"


# skb_drop_reason name -> verdict, for segments that did not meet a TIME_WAIT socket.
# Names from include/net/dropreason-core.h (the enum exists since v5.17 and grows; which
# names a kernel has is read from its tracefs, not assumed). Where each is raised (v6.18):
DROP_VERDICTS: dict[str, str] = {
    "TCP_LISTEN_OVERFLOW": "listen-overflow",  # tcp_v4_syn_recv_sock(): sk_acceptq_is_full()
    "TCP_RFC7323_PAWS": "paws",  # tcp_validate_incoming() -> tcp_paws_discard()
    "NO_SOCKET": "no-socket",  # tcp_v4_rcv(): __inet_lookup_skb() found nothing
    "TCP_INVALID_SYN": "invalid-syn",  # tcp_validate_incoming(): SYN in window (RFC 5961)
    "TCP_RFC7323_TW_PAWS": "tw-paws",
}

# The drop reasons traced by default (a whitelist applied in the kernel, so a busy host
# is not flooded): the ones the table above and tw_verdict() explain. NOT_SPECIFIED is
# traced only when the packet met a TIME_WAIT socket.
DEFAULT_DROP_REASONS = ("NOT_SPECIFIED", "NO_SOCKET", "TCP_RFC7323_TW_PAWS", "TCP_RFC7323_PAWS",
                        "TCP_LISTEN_OVERFLOW", "TCP_INVALID_SYN")


def drop_verdict(reason: str, at_timewait: bool, flags: int) -> str:
    if at_timewait:
        return tw_verdict(reason, flags)
    return DROP_VERDICTS.get(reason, "drop")


# What an errno from connect()/bind() means for short connections (Linux errno names).
ERRNO_MEANING: dict[str, str] = {
    "EADDRNOTAVAIL": "no free local port for this destination (inet_hash_connect(): __inet_hash_connect "
                     "found none, ip_local_port_range exhausted)",
    "EADDRINUSE": "the local address and port are taken (inet_csk_get_port() / inet_csk_bind_conflict())",
    "ECONNREFUSED": "the peer answered the SYN with RST (no listener, or a middlebox)",
    "ETIMEDOUT": "no answer to the SYN and its retransmissions (tcp_syn_retries)",
    "ENETUNREACH": "no route to the destination",
    "EHOSTUNREACH": "host unreachable (ICMP or neighbour failure)",
}


def new_connection_verdict(from_state: str) -> str:
    """A connection reaching ESTABLISHED on a 4-tuple that entered TIME_WAIT here less
    than TCP_TIMEWAIT_LEN ago: no event marks this, so it is inferred.

    mirrors tcp_timewait_state_process() -> TCP_TW_SYN (net/ipv4/tcp_minisocks.c): the
    server's TIME_WAIT let a SYN through to the listener (SYN_RECV -> ESTABLISHED); and
    tcp_twsk_unique() (net/ipv4/tcp_ipv4.c, tcp_tw_reuse): connect() took over the
    client's own TIME_WAIT (SYN_SENT -> ESTABLISHED). v4.x-v6.18.
    """
    return "tw-reuse" if from_state == "SYN_SENT" else "tw-accepted"
