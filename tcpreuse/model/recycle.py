"""tcp_tw_recycle's per-peer timestamp cache (kernels <= 4.11; docs/kernel.md §6).

2.6.32 keeps it in the inet_peer cache keyed by the remote address; ~3.5-4.11 in
tcp_metrics keyed by (local address, remote address). It is written only when a
connection that used timestamps enters TIME_WAIT on this host with tcp_tw_recycle=1, and
read when a SYN reaches a listener (not a TIME_WAIT socket).

This is the one implementation of the rule: the simulator calls it per event, and
``tcpreuse analyze`` replays it over a capture's TIME_WAIT entries and SYNs (the numpy
backend calls :class:`PeerCache` event by event; the C fast path,
``capture/_ccap.c`` ``recycle_checks()``, is tested against it).
"""

from __future__ import annotations

from typing import Final

from .seq import s32
from .timewait import TCP_PAWS_MSL, TCP_PAWS_WINDOW

# What the passive check decides for a SYN (syn_verdict)
RC_KEEP: Final = 0  # not dropped
RC_SYN_DROP: Final = 1  # its TSval is more than TCP_PAWS_WINDOW behind a fresh entry
RC_SYN_DROP_TSLESS: Final = 2  # no TSval while a fresh entry exists (3.x-4.11 `|| !timestamps`)


def remember_wins(cached_ts: int, cached_stamp: int, ts_recent: int, ts_recent_stamp: int, now_sec: int) -> bool:
    """Does a TIME_WAIT entry's (ts_recent, ts_recent_stamp) replace the cached one?
    tcp_v4_remember_stamp() (2.6.32, net/ipv4/tcp_ipv4.c), tcp_remember_stamp() /
    tcp_tw_remember_stamp() (3.5-4.11, net/ipv4/tcp_metrics.c):
      (s32)(tcpm_ts - ts_recent) <= 0 ||
      (tcpm_ts_stamp + TCP_PAWS_MSL < get_seconds() && tcpm_ts_stamp <= ts_recent_stamp)"""
    return s32(cached_ts - ts_recent) <= 0 or (
        cached_stamp + TCP_PAWS_MSL < now_sec and cached_stamp <= ts_recent_stamp)


def peer_verdict(cached_ts: int, cached_stamp: int, syn_has_ts: bool, tsval: int, now_sec: int,
                 drops_tsless: bool) -> int:
    """The passive PAWS check of tcp_tw_recycle on a SYN at a listener, against an entry.

    2.6.32 tcp_v4_conn_request() (net/ipv4/tcp_ipv4.c): only SYNs carrying a TS:
      get_seconds() < peer->tcp_ts_stamp + TCP_PAWS_MSL &&
      (s32)(peer->tcp_ts - req->ts_recent) > TCP_PAWS_WINDOW
    3.x-4.11 tcp_peer_is_proven(req, dst, paws_check=true, timestamps)
    (net/ipv4/tcp_metrics.c; removed with tcp_tw_recycle in 4.12):
      (u32)get_seconds() - tm->tcpm_ts_stamp < TCP_PAWS_MSL &&
      ((s32)(tm->tcpm_ts - req->ts_recent) > TCP_PAWS_WINDOW || !timestamps)
    The two freshness forms agree while the stamp is not in the future, which a kernel
    clock guarantees; a capture's clock can put it up to a second after the SYN (its
    stamp is the last TSval packet's time), and such an entry counts as fresh, as in
    2.6.32. Returns RC_KEEP, RC_SYN_DROP or RC_SYN_DROP_TSLESS; a dropped SYN gets no
    SYN-ACK and no RST, PAWSPassive += 1."""
    if not now_sec < cached_stamp + TCP_PAWS_MSL:
        return RC_KEEP
    if not syn_has_ts:
        return RC_SYN_DROP_TSLESS if drops_tsless else RC_KEEP
    return RC_SYN_DROP if s32(cached_ts - tsval) > TCP_PAWS_WINDOW else RC_KEEP


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
        if remember_wins(e.ts, e.stamp, ts_recent, ts_recent_stamp, now_sec):
            e.stamp = ts_recent_stamp
            e.ts = ts_recent
        return True

    def syn_verdict(self, laddr: int, raddr: int, syn_has_ts: bool, tsval: int, now_sec: int,
                    drops_tsless: bool) -> int:
        """:func:`peer_verdict` against this pair's entry (RC_KEEP without one)."""
        e = self.entries.get(self.key(laddr, raddr))
        if e is None:
            return RC_KEEP
        return peer_verdict(e.ts, e.stamp, syn_has_ts, tsval, now_sec, drops_tsless)

    def syn_rejected(self, laddr: int, raddr: int, syn_has_ts: bool, tsval: int, now_sec: int,
                     drops_tsless: bool) -> bool:
        """The passive PAWS check on a SYN at a listener (not from TIME_WAIT, no cookie):
        :func:`peer_verdict`, for an entry that was ever stamped (`drops_tsless` is the
        `|| !timestamps` term, absent in EL6)."""
        if not self.entries:  # (nothing remembered yet: no key to build; clients without TS)
            return False
        e = self.entries.get(self.key(laddr, raddr))
        if e is None or e.stamp == 0:
            return False
        return peer_verdict(e.ts, e.stamp, syn_has_ts, tsval, now_sec, drops_tsless) != RC_KEEP


# -- whether tcp_tw_recycle acted at all in a run ---------------------------------------------

def stamps_remembered(cache: PeerCache | None) -> int:
    """The peers a host's cache remembered a timestamp for (0 with tcp_tw_recycle=0: no
    cache): what :func:`recycle_consulted` reads."""
    return 0 if cache is None else len(cache.entries)


def recycle_consulted(stamps: int) -> bool:
    """Whether tcp_tw_recycle=1 decided anything on a host whose cache held `stamps` entries
    at the end of a run (or at the moment a stopped run stopped). False: the same run with
    tcp_tw_recycle=0 takes the same branch at every event.

    Its only two effects, in the model as in the kernel (<= 4.11, docs/kernel.md §6), go
    through an entry of the per-peer cache:
      * the short TIME_WAIT (3.5 x RTO, tw_lifetime() in model/timewait.py) needs
        recycle_ok, which tcp_remember_stamp() returns only once it has filed an entry
        (2.6.32 tcp_v4_remember_stamp(), net/ipv4/tcp_ipv4.c; 3.5-4.11
        tcp_remember_stamp(), net/ipv4/tcp_metrics.c), and tcp_time_wait()
        (net/ipv4/tcp_minisocks.c) calls it only for a connection that used timestamps;
      * the passive PAWS check on a SYN at a listener (2.6.32 tcp_v4_conn_request(),
        net/ipv4/tcp_ipv4.c; 3.x-4.11 tcp_peer_is_proven(), net/ipv4/tcp_metrics.c;
        :meth:`PeerCache.syn_rejected`) drops a SYN only against an entry.
    The model removes no entry during a run, so a cache empty at the end was empty at
    every event before."""
    return stamps != 0
