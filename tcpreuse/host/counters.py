"""The kernel counters the doctor reads, with nstat names and which kernels have them.

A counter missing from /proc/net/netstat does not exist on that kernel: it is *absent*,
not 0 (``PAWSPassive`` is gone on 6.15+, ``TCPTimeWaitOverflow`` never existed on EL6).
``netstat -s`` output is different: it omits counters whose value is 0, so a counter the
kernel has (per :mod:`tcpreuse.model.profiles`) but netstat did not print is a 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..model.profiles import Profile


@dataclass(frozen=True)
class Counter:
    name: str  # nstat name: TcpExtPAWSPassive, TcpActiveOpens
    doc: str
    exists: Callable[[Profile], bool] | None = None  # None: on every kernel tcpreuse models
    gauge: bool = False  # a level (CurrEstab), not a running total: no rate


_L: list[Counter] = [
    Counter("TcpActiveOpens", "connect() calls that sent a SYN (sar active/s)"),
    Counter("TcpPassiveOpens", "connections accepted from a listener (sar passive/s)"),
    Counter("TcpAttemptFails", "connections that died in SYN-SENT/SYN-RECV"),
    Counter("TcpEstabResets", "established connections reset"),
    Counter("TcpOutRsts", "RST segments sent"),
    Counter("TcpRetransSegs", "segments retransmitted"),
    Counter("TcpCurrEstab", "connections now in ESTABLISHED or CLOSE-WAIT", gauge=True),
    Counter("TcpExtTW", "TIME_WAIT sockets that ran their full timer"),
    Counter("TcpExtTWRecycled", "TIME_WAIT entries taken over by connect() (tw_reuse)"),
    Counter("TcpExtTWKilled", "TIME_WAIT entries killed early (tw_recycle, short FIN_WAIT2)"),
    # Listed until the PAWSTimewait series (~6.15) rewrote the list; dead since 4.12.
    Counter("TcpExtPAWSPassive", "SYNs dropped by tcp_tw_recycle's per-peer timestamp check",
            exists=lambda p: not p.has_counter_paws_timewait),
    Counter("TcpExtPAWSActive", "SYN-ACKs rejected by PAWS in SYN-SENT"),
    Counter("TcpExtPAWSEstab", "segments rejected by PAWS (established; TIME_WAIT before ~6.15)"),
    Counter("TcpExtPAWSTimewait", "segments rejected by PAWS at a TIME_WAIT socket",
            exists=lambda p: p.has_counter_paws_timewait),
    Counter("TcpExtTCPTimeWaitOverflow", "sockets closed without TIME_WAIT: tcp_max_tw_buckets reached",
            exists=lambda p: p.has_counter_tw_overflow),
    Counter("TcpExtListenOverflows", "accept queue full (SYN or final ACK dropped)"),
    Counter("TcpExtListenDrops", "SYNs or handshakes dropped at a listener, for any reason"),
    Counter("TcpExtTCPReqQFullDrop", "SYNs dropped: SYN queue full and syncookies off",
            exists=lambda p: p.has_reqq_counters),
    Counter("TcpExtTCPReqQFullDoCookies", "SYN queue full: answered with a syncookie",
            exists=lambda p: p.has_reqq_counters),
    Counter("TcpExtSyncookiesSent", "SYN cookies sent"),
    Counter("TcpExtSyncookiesFailed", "invalid SYN cookies received"),
    Counter("TcpExtEmbryonicRsts", "resets received for SYN-RECV sockets"),
    Counter("TcpExtTCPACKSkippedTimeWait", "ACKs a TIME_WAIT socket did not send (rate limit)",
            exists=lambda p: p.oow_ratelimit),
    # f19c29e3e391 "tcp: snmp stats for Fast Open, syn rtx, and data pkts" (3.10); not in EL6.
    Counter("TcpExtTCPSynRetrans", "SYN and SYN-ACK retransmissions (tcp_retransmit_skb, tcp_rtx_synack)",
            exists=lambda p: p.at_least(3, 10) and not p.el6),
    Counter("TcpExtTCPAbortOnData", "connections reset: data after close, or SO_LINGER {1,0}"),
    Counter("TcpExtTCPAbortOnClose", "connections reset: closed with unread data"),
]

COUNTERS: dict[str, Counter] = {c.name: c for c in _L}


def exists_on(name: str, profile: Profile | None) -> bool | None:
    """Whether the kernel of `profile` has the counter; None when it cannot be told."""
    c = COUNTERS.get(name)
    if c is None:
        return None
    if c.exists is None:
        return True
    return None if profile is None else c.exists(profile)
