"""TIME_WAIT mini-sockets: creation, lifetime, segments arriving, and reuse by connect().

Pure rules, no clock of their own: callers pass the times. Section numbers refer to
docs/kernel.md (§2 lifetime, §3 segments arriving, §4 tcp_tw_reuse).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from .seq import MASK32, after, before, s32

if TYPE_CHECKING:
    from .recycle import PeerCache

TCP_TIMEWAIT_LEN: Final = 60.0  # include/net/tcp.h: (60*HZ), not tunable
TCP_PAWS_24DAYS: Final = 60 * 60 * 24 * 24
TCP_PAWS_MSL: Final = 60
TCP_PAWS_WINDOW: Final = 1

# tw_substate
TIME_WAIT: Final = 0
FIN_WAIT2: Final = 1

# tcp_timewait_state_process() verdicts
TW_SUCCESS: Final = 0  # segment consumed (dropped), nothing sent
TW_ACK: Final = 1  # answer with an ACK for the old connection (seq=tw_snd_nxt, ack=tw_rcv_nxt)
TW_ACK_SKIPPED: Final = 2  # the ACK was due but rate-limited (tcp_oow_rate_limited)
TW_RST: Final = 3  # answer with RST and kill the TW
TW_SYN: Final = 4  # accept the SYN: TW killed, hand it to the listener with isn


class TimeWaitSock:
    """struct tcp_timewait_sock fields the rules read (docs/kernel.md §2-§4).

    A plain class rather than a dataclass: mypyc compiles it to a native struct with a C
    constructor (a dataclass is built through its Python __init__), and the simulator
    creates one per connection."""

    __slots__ = ("alive", "entry_stamp_ms", "expires", "kill", "last_oow_ack_time", "loopback",
                 "rcv_nxt", "rcv_wnd", "snd_nxt", "substate", "ts_offset", "ts_recent",
                 "ts_recent_stamp")

    def __init__(self, rcv_nxt: int, snd_nxt: int, ts_recent: int, ts_recent_stamp: int,
                 ts_offset: int = 0, entry_stamp_ms: int = 0, expires: float = 0.0,
                 substate: int = TIME_WAIT, last_oow_ack_time: float = -1.0, rcv_wnd: int = 65535,
                 loopback: bool = False, kill: bool = False, alive: bool = True) -> None:
        self.rcv_nxt = rcv_nxt  # tw_rcv_nxt
        self.snd_nxt = snd_nxt  # tw_snd_nxt
        self.ts_recent = ts_recent  # tw_ts_recent: last TSval received from the peer
        self.ts_recent_stamp = ts_recent_stamp  # tw_ts_recent_stamp: seconds clock when stored; 0 = no TS
        self.ts_offset = ts_offset  # tw_ts_offset
        self.entry_stamp_ms = entry_stamp_ms  # tw_entry_stamp (6.14+)
        self.expires = expires  # when the timer fires (sim seconds)
        self.substate = substate
        self.last_oow_ack_time = last_oow_ack_time  # tw_last_oow_ack_time (-1: never)
        self.rcv_wnd = rcv_wnd  # tw_rcv_wnd
        self.loopback = loopback
        self.kill = kill  # tw_kill: scheduled with timeo <= 4 s (counted TWKilled)
        self.alive = alive


class Segment:
    """The fields of an arriving segment the TIME_WAIT rules read."""

    __slots__ = ("ack", "end_seq", "fin", "has_ts", "rst", "seq", "syn", "tsecr", "tsval")

    def __init__(self, syn: bool = False, ack: bool = False, rst: bool = False, fin: bool = False,
                 seq: int = 0, end_seq: int = 0, has_ts: bool = False, tsval: int = 0,
                 tsecr: int = 0) -> None:
        self.syn, self.ack, self.rst, self.fin = syn, ack, rst, fin
        self.seq = seq
        self.end_seq = end_seq  # seq + SYN + FIN + payload length
        self.has_ts, self.tsval, self.tsecr = has_ts, tsval, tsecr


class TwDecision:
    """What tcp_timewait_state_process() decided for one segment."""

    __slots__ = ("counters", "isn", "killed", "paws_reject", "reschedule", "verdict")

    def __init__(self, verdict: int, isn: int = 0, paws_reject: bool = False, reschedule: bool = False,
                 killed: bool = False, counters: tuple[str, ...] = ()) -> None:
        self.verdict = verdict
        self.isn = isn  # for TW_SYN: the new connection's ISN
        self.paws_reject = paws_reject
        self.reschedule = reschedule  # timer reset to TCP_TIMEWAIT_LEN
        self.killed = killed
        self.counters = counters


def tcp_in_window(seq: int, end_seq: int, s_win: int, e_win: int) -> bool:
    """mirrors tcp_in_window(), net/ipv4/tcp_minisocks.c"""
    if seq == s_win:
        return True
    if after(end_seq, s_win) and before(seq, e_win):
        return True
    return seq == e_win and seq == end_seq


def tcp_paws_check(ts_recent: int, ts_recent_stamp: int, tsval: int, paws_win: int, now_sec: int) -> bool:
    """mirrors tcp_paws_check(), include/net/tcp.h, 2.6.32-6.18: True = acceptable"""
    if s32(ts_recent - tsval) <= paws_win:
        return True
    if now_sec >= ts_recent_stamp + TCP_PAWS_24DAYS:
        return True
    # Some OSes send SYN and SYN-ACK with tsval=0 (ts_recent stays 0).
    return not ts_recent


def tcp_paws_reject(ts_recent: int, ts_recent_stamp: int, tsval: int, rst: bool, now_sec: int) -> bool:
    """mirrors tcp_paws_reject(), include/net/tcp.h, 2.6.32-6.18"""
    if tcp_paws_check(ts_recent, ts_recent_stamp, tsval, 0, now_sec):
        return False
    # RST segments are not recommended to carry timestamp, and, if they do, it is
    # recommended to ignore PAWS because "their cleanup function should take precedence".
    return not (rst and now_sec >= ts_recent_stamp + TCP_PAWS_MSL)


def tcp_timewait_state_process(
    tw: TimeWaitSock,
    seg: Segment,
    now: float,
    now_sec: int,
    *,
    timestamps_sysctl: int,
    rfc1337: int,
    oow_ratelimit_s: float | None,
    el6: bool = False,
    paws_counter: str = "TcpExtPAWSEstab",
) -> TwDecision:
    """mirrors tcp_timewait_state_process(), net/ipv4/tcp_minisocks.c (docs/kernel.md §3).

    Structure from v6.18 (K6.18); the same in 4.9 (K4.9), 5.x and 2.6.32 (EL6) except:
    the out-of-window ACK rate limit exists from ~4.0 (`oow_ratelimit_s` None before),
    PAWS rejects count PAWSTimewait from ~6.15 (`paws_counter`), and EL6 also re-arms the
    timer when a valid RST is ignored under tcp_rfc1337 (`el6`).
    The engine drives the TIME_WAIT substate (its closers never linger in FIN_WAIT2); the
    FIN_WAIT2 branch (an orphaned socket that closed first, kept as a mini-socket by
    tcp_time_wait(sk, TCP_FIN_WAIT2, tmo)) is driven by tests/test_model_timewait.py.
    """
    paws_reject = False
    saw_ts = False
    # TS parsed only if the old connection used TS and tcp_timestamps != 0 (estab=0).
    if seg.has_ts and tw.ts_recent_stamp and timestamps_sysctl:
        saw_ts = True
        paws_reject = tcp_paws_reject(tw.ts_recent, tw.ts_recent_stamp, seg.tsval, seg.rst, now_sec)

    if tw.substate == FIN_WAIT2:
        in_window = tcp_in_window(seg.seq, seg.end_seq, tw.rcv_nxt, (tw.rcv_nxt + tw.rcv_wnd) & MASK32)
        if paws_reject or not in_window:
            return _oow_ack(tw, seg, now, oow_ratelimit_s, paws_reject, "TcpExtTCPACKSkippedFinWait2")
        if seg.rst:
            tw.alive = False
            return TwDecision(TW_SUCCESS, killed=True)
        if seg.syn and not before(seg.seq, tw.rcv_nxt):
            tw.alive = False
            return TwDecision(TW_RST, killed=True)
        if not seg.ack or not after(seg.end_seq, tw.rcv_nxt) or seg.end_seq == seg.seq:
            return TwDecision(TW_SUCCESS)
        if not seg.fin or seg.end_seq != ((tw.rcv_nxt + 1) & MASK32):
            tw.alive = False
            return TwDecision(TW_RST, killed=True)
        tw.substate = TIME_WAIT
        tw.rcv_nxt = seg.end_seq
        if saw_ts:
            tw.ts_recent, tw.ts_recent_stamp = seg.tsval, now_sec
        return TwDecision(TW_ACK, reschedule=True)

    # Real TIME_WAIT: an in-window duplicate (bare ACK / retransmitted FIN) or RST.
    if not paws_reject and seg.seq == tw.rcv_nxt and (seg.seq == seg.end_seq or seg.rst):
        resched = False
        if seg.rst:
            if rfc1337 == 0:
                tw.alive = False  # "TIME_WAIT assassination"
                return TwDecision(TW_SUCCESS, killed=True)
            resched = el6  # EL6 re-arms here; 4.x/6.x do not
        else:
            resched = True
        if saw_ts:
            tw.ts_recent, tw.ts_recent_stamp = seg.tsval, now_sec
        return TwDecision(TW_SUCCESS, reschedule=resched)

    # "RFC check is that it has newer sequence number works at rates <40Mbit/sec.
    #  However, if paws works, it is reliable and even more, we even may relax silly
    #  seq space cutoff." (comment in the source)
    if (
        seg.syn
        and not seg.rst
        and not seg.ack
        and not paws_reject
        and (after(seg.seq, tw.rcv_nxt) or (saw_ts and s32(tw.ts_recent - seg.tsval) < 0))
    ):
        isn = (tw.snd_nxt + 65535 + 2) & MASK32 or 1
        tw.alive = False
        return TwDecision(TW_SYN, isn=isn, killed=True)

    counters: tuple[str, ...] = (paws_counter,) if paws_reject else ()
    if not seg.rst:
        # "In this case we must reset the TIMEWAIT timer. If it is ACKless SYN it may be
        #  both old duplicate and new good SYN with random sequence number <rcv_nxt.
        #  Do not reschedule in the last case."
        resched = paws_reject or seg.ack
        d = _oow_ack(tw, seg, now, oow_ratelimit_s, paws_reject, "TcpExtTCPACKSkippedTimeWait")
        d.reschedule = resched
        d.counters = counters + d.counters
        return d
    return TwDecision(TW_SUCCESS, paws_reject=paws_reject, counters=counters)


def _oow_ack(tw: TimeWaitSock, seg: Segment, now: float, ratelimit_s: float | None,
             paws_reject: bool, skipped_counter: str) -> TwDecision:
    """mirrors tcp_oow_rate_limited() (net/ipv4/tcp_input.c, ~4.0+) for a TW socket."""
    if ratelimit_s is not None and not ((seg.seq != seg.end_seq) and not seg.syn):
        if tw.last_oow_ack_time >= 0:
            elapsed = now - tw.last_oow_ack_time
            if 0 <= elapsed < ratelimit_s:
                return TwDecision(TW_ACK_SKIPPED, paws_reject=paws_reject, counters=(skipped_counter,))
        tw.last_oow_ack_time = now
    return TwDecision(TW_ACK, paws_reject=paws_reject)


# ---- lifetime (tcp_time_wait) ---------------------------------------------------------

def rto_jiffies_35(rto_s: float, hz: int) -> int:
    """`(icsk_rto << 2) - (icsk_rto >> 1)`: 3.5 x RTO in integer jiffies (tcp_time_wait())."""
    rto = max(int(rto_s * hz), hz // 5)  # icsk_rto >= TCP_RTO_MIN (HZ/5)
    return (rto << 2) - (rto >> 1)


def tw_timeout_s(rto_s: float, hz: int, recycle_ok: bool) -> float:
    """mirrors tcp_time_wait() (net/ipv4/tcp_minisocks.c) for state TCP_TIME_WAIT, timeo=0:
    TCP_TIMEWAIT_LEN, or 3.5 x RTO when tcp_tw_recycle applies (<= 4.11, docs/kernel.md §2.2)."""
    if recycle_ok:
        return rto_jiffies_35(rto_s, hz) / hz
    return TCP_TIMEWAIT_LEN


def deathrow_expiry(now: float, timeo: float, hz: int, phase: float) -> tuple[float, bool]:
    """When a TW scheduled at `now` is reaped under the pre-4.1 central death row, and
    whether it went to the recycle calendar (counted TWKilled). mirrors
    inet_twsk_schedule(), net/ipv4/inet_timewait_sock.c, 2.6.32-4.0 (docs/kernel.md §2.3)."""
    return DeathRow(hz, phase).expiry(now, timeo)


_TWKILL_PERIOD: Final = TCP_TIMEWAIT_LEN / 8  # INET_TWDR_TWKILL_SLOTS = 8 -> 7.5 s


class DeathRow:
    """One host's central death row (deathrow_expiry()): HZ and the hangman's phase are
    fixed, and the slot arithmetic for a TIME_WAIT length is done once per length (a
    host schedules one or two lengths, thousands of times a second)."""

    __slots__ = ("_cells", "_delay", "_recycle", "_timeo", "hz", "phase")

    def __init__(self, hz: int, phase: float) -> None:
        self.hz, self.phase = hz, phase
        self._timeo = -1.0
        self._recycle = False
        self._delay = 0.0
        self._cells = 0

    def _slot(self, timeo: float) -> None:
        hz = self.hz
        tick_bits = 7 if hz > 512 else (6 if hz > 256 else 5)  # INET_TWDR_RECYCLE_TICK for HZ
        jiffies = round(timeo * hz)
        slot = (jiffies + (1 << tick_bits) - 1) >> tick_bits
        self._timeo = timeo
        self._recycle = slot < 32  # INET_TWDR_RECYCLE_SLOTS
        if self._recycle:
            self._delay = (slot << tick_bits) / hz
            return
        period = _TWKILL_PERIOD
        self._cells = 7 if timeo >= period * 7 else min(math.ceil(timeo / period), 7)

    def expiry(self, now: float, timeo: float) -> tuple[float, bool]:
        if timeo != self._timeo:
            self._slot(timeo)
        if self._recycle:
            return now + self._delay, True
        # The hangman ticks every `period` at a per-host phase; the cell `cells` ahead of the
        # current one is reaped `cells` ticks after the next one.
        period = _TWKILL_PERIOD
        k = (now - self.phase) // period + 1
        next_tick = self.phase + k * period
        return next_tick + self._cells * period, False


def inet_twsk_alloc_ok(tw_count: int, max_tw_buckets: int) -> bool:
    """inet_twsk_alloc(), net/ipv4/inet_timewait_sock.c: no mini-socket once
    `tcp_max_tw_buckets` are in use; the caller closes without TIME_WAIT and counts
    TCPTimeWaitOverflow (3.0+) (docs/kernel.md §2.5)."""
    return tw_count < max_tw_buckets


def tw_lifetime(now_sec: int, laddr: int, raddr: int, ts_recent: int, ts_ok: bool, linux: bool,
                rto_s: float, hz: int, other_os_len_s: float, recycle: PeerCache | None) -> float:
    """The `timeo` tcp_time_wait() (net/ipv4/tcp_minisocks.c) schedules a new TIME_WAIT for
    (docs/kernel.md §2.2): TCP_TIMEWAIT_LEN, or, with tcp_tw_recycle (`recycle`, <= 4.11,
    §6) and a timestamped connection, 3.5 x RTO once the peer's timestamp is remembered
    (tcp_remember_stamp(), which this calls). Windows and macOS (`linux` False) keep their
    own fixed length `other_os_len_s`."""
    if not linux:
        return other_os_len_s
    recycle_ok = False
    if recycle is not None and ts_ok:
        recycle_ok = recycle.remember_stamp(laddr, raddr, ts_recent, now_sec, now_sec)
    return tw_timeout_s(rto_s, hz, recycle_ok)


def tcp_time_wait(now: float, now_sec: int, now_ms: int, rcv_nxt: int, snd_nxt: int, ts_recent: int,
                  ts_ok: bool, ts_offset: int, timeo: float, death_row: DeathRow | None) -> TimeWaitSock:
    """mirrors tcp_time_wait(sk, TCP_TIME_WAIT, timeo), net/ipv4/tcp_minisocks.c, for the
    side that closed first (docs/kernel.md §2), once inet_twsk_alloc_ok() said yes and
    tw_lifetime() gave `timeo`:

    * the mini-socket keeps rcv_nxt/snd_nxt and, when the connection used timestamps,
      `tw_ts_recent` with `tw_ts_recent_stamp` = now (seconds), else stamp 0;
    * `tw_kill` when scheduled for <= 4 s (inet_twsk_schedule(), counted TWKilled);
      under the pre-4.1 central death row (`death_row`) the slot decides both that and
      when the socket is reaped.
    The caller files the socket in its tables and timer queue."""
    kill = timeo <= 4.0
    if death_row is not None:
        expires, kill = death_row.expiry(now, timeo)
    else:
        expires = now + timeo
    return TimeWaitSock(rcv_nxt=rcv_nxt, snd_nxt=snd_nxt, ts_recent=ts_recent,
                        ts_recent_stamp=now_sec if ts_ok else 0, ts_offset=ts_offset,
                        entry_stamp_ms=now_ms, expires=expires, kill=kill)


def time_after32_ms(now_ms: int, thresh_ms: int) -> bool:
    return s32(thresh_ms - now_ms) < 0


def tcp_twsk_unique(
    tw: TimeWaitSock,
    bound_port: bool,
    now_ms: int,
    now_sec: int,
    *,
    rule: str,
    tw_reuse: int,
    tw_reuse_delay_ms: int,
) -> bool:
    """mirrors tcp_twsk_unique(), net/ipv4/tcp_ipv4.c (docs/kernel.md §4): may connect() take over
    this TIME_WAIT 4-tuple?

    rule gt1s (<= 4.18): `get_seconds() - tw_ts_recent_stamp > 1`;
    rule after_s (4.19-6.13): `time_after32(ktime_get_seconds(), tw_ts_recent_stamp)`;
    rule delay_ms (6.14+): `time_after32(tcp_clock_ms(), tw_entry_stamp + tcp_tw_reuse_delay)`,
    FIN_WAIT2 mini-sockets excluded. A socket with a bound port (`twp == NULL`) reuses
    any TW that has timestamp state, whatever the sysctl.
    """
    if not tw.ts_recent_stamp:
        return False
    if bound_port:
        return True
    if not tw_reuse_enabled(tw_reuse, tw.loopback, loopback_mode=True,
                            fin_wait2=tw.substate == FIN_WAIT2 and rule == "delay_ms"):
        return False
    if rule == "delay_ms":
        return time_after32_ms(now_ms, tw.entry_stamp_ms + tw_reuse_delay_ms)
    if rule == "after_s":
        return s32(tw.ts_recent_stamp - now_sec) < 0
    return now_sec - tw.ts_recent_stamp > 1


def tcp_twsk_takeover(tw: TimeWaitSock) -> tuple[int, int, int]:
    """What connect() inherits when tcp_twsk_unique() (net/ipv4/tcp_ipv4.c) lets it take
    over a TIME_WAIT 4-tuple (docs/kernel.md §4), as `(write_seq, ts_recent,
    ts_recent_stamp)`: `write_seq = tw_snd_nxt + 65535 + 2` (0 becomes 1, so that
    tcp_v4_connect() does not pick a fresh secure_tcp_seq()), and `tp->rx_opt.ts_recent` /
    `ts_recent_stamp` copied from `tw_ts_recent` / `tw_ts_recent_stamp` (read in current
    mainline; the same assignments in 2.6.32). The caller unhashes
    the mini-socket (__inet_check_established(), TWRecycled++)."""
    tw.alive = False
    return (tw.snd_nxt + 65535 + 2) & MASK32 or 1, tw.ts_recent, tw.ts_recent_stamp


def tw_reuse_enabled(tw_reuse: int, loopback: bool, *, loopback_mode: bool, fin_wait2: bool = False) -> bool:
    """The sysctl part of tcp_twsk_unique(), net/ipv4/tcp_ipv4.c (docs/kernel.md §4): does
    `tcp_tw_reuse` let an autoselecting connect() consider this TIME_WAIT 4-tuple at all?

    * 2 means loopback only since 4.18 (79e9fed46038, `loopback_mode`); before 4.18 the
      value was only tested for non-zero, so 2 enabled reuse everywhere;
    * 6.14+ never reuses a FIN_WAIT2 mini-socket (`fin_wait2`: pass True only then).
    Timestamps (`tw_ts_recent_stamp`) and the delay are separate: tcp_twsk_unique().
    """
    if not tw_reuse or fin_wait2:
        return False
    return not (loopback_mode and tw_reuse == 2 and not loopback)


def tw_reuse_hold_s(rule: str, tw_reuse_delay_ms: int = 1000) -> float:
    """How long, at most, connect() waits before it may take over a TIME_WAIT 4-tuple with
    tcp_tw_reuse on (tcp_twsk_unique(), docs/kernel.md §4), counted from the connection's last
    timestamped segment, about when this host closed:

    * gt1s (<= 4.18): `get_seconds() - tw_ts_recent_stamp > 1` on whole wall seconds:
      between just over 1 s and 2 s;
    * after_s (4.19-6.13): `time_after32(ktime_get_seconds(), tw_ts_recent_stamp)`: the next
      monotonic second, within 1 s;
    * delay_ms (6.14+): `time_after32(tcp_clock_ms(), tw_entry_stamp + tcp_tw_reuse_delay)`:
      the delay plus 1 ms after entering TIME_WAIT.
    """
    if rule == "delay_ms":
        return (tw_reuse_delay_ms + 1) / 1000.0
    if rule == "after_s":
        return 1.0
    return 2.0
