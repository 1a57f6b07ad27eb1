"""tcp_tw_recycle's per-peer timestamp cache (kernels <= 4.11; docs/kernel.md §6).

2.6.32 keeps it in the inet_peer cache keyed by the remote address; ~3.5-4.11 in
tcp_metrics keyed by (local address, remote address). It is written only when a
connection that used timestamps enters TIME_WAIT on this host with tcp_tw_recycle=1, and
read when a SYN reaches a listener (not a TIME_WAIT socket).
"""

from __future__ import annotations

from .seq import s32
from .timewait import TCP_PAWS_MSL, TCP_PAWS_WINDOW


class PeerStamp:
    __slots__ = ("stamp", "ts")

    def __init__(self, ts: int, stamp: int) -> None:
        self.ts = ts  # tcp_ts / tcpm_ts: largest TSval seen from the peer
        self.stamp = stamp  # tcp_ts_stamp / tcpm_ts_stamp: seconds clock when it was received


class PeerCache:
    def __init__(self, key_mode: str) -> None:
        self.key_mode = key_mode  # "peer" (2.6.32 inet_peer) | "addr_pair" (tcp_metrics)
        self.entries: dict[tuple[int, int], PeerStamp] = {}

    def key(self, laddr: int, raddr: int) -> tuple[int, int]:
        return (0, raddr) if self.key_mode == "peer" else (laddr, raddr)

    def remember_stamp(self, laddr: int, raddr: int, ts_recent: int, ts_recent_stamp: int,
                       now_sec: int) -> bool:
        """mirrors tcp_v4_remember_stamp() (2.6.32, net/ipv4/tcp_ipv4.c) and
        tcp_remember_stamp() (3.5-4.11, net/ipv4/tcp_metrics.c): keep the largest TSval;
        an older one replaces it only when the stored one is more than TCP_PAWS_MSL old.
        Always returns true (recycle_ok) once an entry exists."""
        k = self.key(laddr, raddr)
        e = self.entries.get(k)
        if e is None:  # inet_getpeer(..., create=1) / tcp_get_metrics(..., create=true)
            e = self.entries[k] = PeerStamp(0, 0)
        if s32(e.ts - ts_recent) <= 0 or (
            e.stamp + TCP_PAWS_MSL < now_sec and e.stamp <= ts_recent_stamp
        ):
            e.stamp = ts_recent_stamp
            e.ts = ts_recent
        return True

    def syn_rejected(self, laddr: int, raddr: int, syn_has_ts: bool, tsval: int, now_sec: int,
                     drops_tsless: bool) -> bool:
        """The passive PAWS check on a SYN at a listener (not from TIME_WAIT, no cookie).

        2.6.32 tcp_v4_conn_request(): only SYNs carrying a TS are checked:
          get_seconds() < peer->tcp_ts_stamp + TCP_PAWS_MSL &&
          (s32)(peer->tcp_ts - req->ts_recent) > TCP_PAWS_WINDOW
        3.x-4.11 tcp_peer_is_proven(req, dst, paws_check=true, timestamps):
          (u32)get_seconds() - tm->tcpm_ts_stamp < TCP_PAWS_MSL &&
          ((s32)(tm->tcpm_ts - req->ts_recent) > TCP_PAWS_WINDOW || !timestamps)
        (`drops_tsless` is the `|| !timestamps` term, absent in EL6). A rejected SYN is
        dropped silently: no SYN-ACK, no RST; PAWSPassive += 1.
        """
        e = self.entries.get(self.key(laddr, raddr))
        if e is None or e.stamp == 0:
            return False
        if not drops_tsless:
            if not syn_has_ts:
                return False
            return now_sec < e.stamp + TCP_PAWS_MSL and s32(e.ts - tsval) > TCP_PAWS_WINDOW
        if (now_sec - e.stamp) & 0xFFFFFFFF >= TCP_PAWS_MSL:
            return False
        return (not syn_has_ts) or s32(e.ts - tsval) > TCP_PAWS_WINDOW
