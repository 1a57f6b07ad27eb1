"""tcp_timewait_state_process(), tcp_twsk_unique() and TIME_WAIT lifetimes (docs/kernel.md §2-§4)."""

from __future__ import annotations

import pytest

from tcpreuse.model.recycle import PeerCache
from tcpreuse.model.seq import MASK32, after, before, s32
from tcpreuse.model.timewait import (
    FIN_WAIT2,
    TIME_WAIT,
    TW_ACK,
    TW_ACK_SKIPPED,
    TW_RST,
    TW_SUCCESS,
    TW_SYN,
    DeathRow,
    Segment,
    TimeWaitSock,
    deathrow_expiry,
    inet_twsk_alloc_ok,
    tcp_paws_reject,
    tcp_time_wait,
    tcp_timewait_state_process,
    tcp_twsk_takeover,
    tcp_twsk_unique,
    tw_lifetime,
    tw_timeout_s,
)


def tw(rcv_nxt: int = 1000, snd_nxt: int = 5000, ts_recent: int = 0, stamp: int = 0) -> TimeWaitSock:
    return TimeWaitSock(rcv_nxt=rcv_nxt, snd_nxt=snd_nxt, ts_recent=ts_recent, ts_recent_stamp=stamp)


def syn(seq: int, tsval: int | None = None) -> Segment:
    return Segment(syn=True, seq=seq, end_seq=(seq + 1) & MASK32, has_ts=tsval is not None, tsval=tsval or 0)


def process(t: TimeWaitSock, seg: Segment, now: float = 10.0, rfc1337: int = 0, rl: float | None = 0.5):
    return tcp_timewait_state_process(t, seg, now, int(now) + 1000, timestamps_sysctl=1, rfc1337=rfc1337,
                                      oow_ratelimit_s=rl)


def test_seq_arithmetic_wraps() -> None:
    assert after(5, 0xFFFFFFF0)  # across the wrap
    assert before(0xFFFFFFF0, 5)
    assert s32(0x80000000) < 0


def test_syn_with_newer_isn_is_accepted_with_monotonic_server_isn() -> None:
    d = process(tw(rcv_nxt=1000, snd_nxt=5000), syn(2000))
    assert d.verdict == TW_SYN and d.killed
    assert d.isn == 5000 + 65535 + 2  # tw_snd_nxt + 65537


def test_syn_with_older_isn_and_no_timestamps_gets_old_ack() -> None:
    d = process(tw(rcv_nxt=1000), syn(500))
    assert d.verdict == TW_ACK and not d.killed
    assert not d.reschedule  # "ACKless SYN ... Do not reschedule"


def test_newer_tsval_accepts_even_with_older_isn() -> None:
    d = process(tw(rcv_nxt=1000, ts_recent=100, stamp=1000), syn(500, tsval=200))
    assert d.verdict == TW_SYN


def test_older_tsval_is_paws_rejected_and_rearms_the_timer() -> None:
    d = process(tw(rcv_nxt=1000, ts_recent=100, stamp=1000), syn(5000, tsval=50))
    assert d.paws_reject and d.verdict == TW_ACK and d.reschedule
    assert "TcpExtPAWSEstab" in d.counters


def test_timestamps_off_on_the_server_ignores_the_ts_option() -> None:
    t = tw(rcv_nxt=1000, ts_recent=100, stamp=1000)
    d = tcp_timewait_state_process(t, syn(500, tsval=50), 1.0, 1001, timestamps_sysctl=0, rfc1337=0,
                                   oow_ratelimit_s=0.5)
    assert not d.paws_reject and d.verdict == TW_ACK  # falls back to the sequence rule


def test_rst_on_rcv_nxt_kills_unless_rfc1337() -> None:
    rst = Segment(rst=True, seq=1000, end_seq=1000)
    assert process(tw(rcv_nxt=1000), rst).killed
    d = process(tw(rcv_nxt=1000), rst, rfc1337=1)
    assert d.verdict == TW_SUCCESS and not d.killed


def test_old_acks_are_rate_limited_per_timewait_socket() -> None:
    t = tw(rcv_nxt=1000)
    assert process(t, syn(500), now=1.0).verdict == TW_ACK
    d = process(t, syn(500), now=1.2)
    assert d.verdict == TW_ACK_SKIPPED and d.counters == ("TcpExtTCPACKSkippedTimeWait",)
    assert process(t, syn(500), now=1.6).verdict == TW_ACK
    # 2.6.32 (EL6) has no rate limit
    t2 = tw(rcv_nxt=1000)
    assert all(process(t2, syn(500), now=1.0 + k * 0.01, rl=None).verdict == TW_ACK for k in range(5))


def test_paws_reject_rules() -> None:
    assert not tcp_paws_reject(100, 1000, 100, False, 1010)
    assert tcp_paws_reject(100, 1000, 99, False, 1010)
    assert not tcp_paws_reject(100, 1000, 99, True, 1061)  # RST after TCP_PAWS_MSL
    assert not tcp_paws_reject(0, 1000, 5, False, 1010)  # ts_recent == 0


@pytest.mark.parametrize(("rule", "age_s", "expect"), [
    ("gt1s", 1, False), ("gt1s", 2, True),
    ("after_s", 0, False), ("after_s", 1, True),
])
def test_twsk_unique_second_rules(rule: str, age_s: int, expect: bool) -> None:
    t = tw(ts_recent=5, stamp=1000)
    assert tcp_twsk_unique(t, False, 0, 1000 + age_s, rule=rule, tw_reuse=1, tw_reuse_delay_ms=1000) is expect


def test_twsk_unique_delay_ms_and_loopback_and_bound() -> None:
    t = tw(ts_recent=5, stamp=1000)
    t.entry_stamp_ms = 50_000
    kw = {"rule": "delay_ms", "tw_reuse_delay_ms": 1000}
    assert not tcp_twsk_unique(t, False, 51_000, 0, tw_reuse=1, **kw)  # exactly the delay: not yet
    assert tcp_twsk_unique(t, False, 51_001, 0, tw_reuse=1, **kw)
    assert not tcp_twsk_unique(t, False, 99_000, 0, tw_reuse=2, **kw)  # 2 = loopback only
    t.loopback = True
    assert tcp_twsk_unique(t, False, 99_000, 0, tw_reuse=2, **kw)
    assert tcp_twsk_unique(t, True, 50_000, 0, tw_reuse=0, **kw)  # bound port: any TW with TS
    assert not tcp_twsk_unique(tw(), True, 99_000, 0, tw_reuse=1, **kw)  # no TS: never


def test_recycled_lifetime_is_three_and_a_half_rto() -> None:
    assert tw_timeout_s(0.201, 1000, recycle_ok=False) == 60.0
    assert tw_timeout_s(0.201, 1000, recycle_ok=True) == pytest.approx(0.704)  # docs/kernel.md §2.2: 3.5 x RTO
    assert tw_timeout_s(0.05, 1000, recycle_ok=True) == pytest.approx(0.7)  # RTO >= TCP_RTO_MIN


def test_deathrow_reaps_between_52_5_and_60_seconds() -> None:
    for now in (0.0, 1.3, 7.49, 100.0):
        exp, recycled = deathrow_expiry(now, 60.0, 1000, phase=3.0)
        assert not recycled and 52.5 < exp - now <= 60.0 + 1e-9
    exp, recycled = deathrow_expiry(10.0, 0.704, 1000, phase=3.0)
    assert recycled and exp - 10.0 == pytest.approx(0.768)  # rounded up to 128 ms ticks


# ---- FIN_WAIT2 mini-sockets (tcp_timewait_state_process(), the tw_substate == TCP_FIN_WAIT2
# branch, net/ipv4/tcp_minisocks.c: "Just repeat all the checks of tcp_rcv_state_process()")

def fw2(rcv_nxt: int = 1000, ts_recent: int = 0, stamp: int = 0, rcv_wnd: int = 1000) -> TimeWaitSock:
    return TimeWaitSock(rcv_nxt=rcv_nxt, snd_nxt=5000, ts_recent=ts_recent, ts_recent_stamp=stamp,
                        substate=FIN_WAIT2, rcv_wnd=rcv_wnd)


def test_fin_wait2_out_of_window_segment_gets_a_rate_limited_ack() -> None:
    t = fw2(rcv_nxt=1000, rcv_wnd=1000)
    old = Segment(ack=True, seq=500, end_seq=500)  # before rcv_nxt: not in the window
    d = process(t, old, now=1.0)
    assert d.verdict == TW_ACK and not d.killed and t.alive and t.substate == FIN_WAIT2
    d = process(t, old, now=1.2)  # within tcp_invalid_ratelimit (500 ms)
    assert d.verdict == TW_ACK_SKIPPED and d.counters == ("TcpExtTCPACKSkippedFinWait2",)
    assert process(t, old, now=1.6).verdict == TW_ACK
    beyond = Segment(ack=True, seq=2500, end_seq=2600)  # past rcv_nxt + rcv_wnd
    assert process(fw2(), beyond).verdict == TW_ACK


def test_fin_wait2_paws_reject_is_answered_like_out_of_window() -> None:
    t = fw2(rcv_nxt=1000, ts_recent=100, stamp=1000)
    seg = Segment(ack=True, fin=True, seq=1000, end_seq=1001, has_ts=True, tsval=50)  # in window, old TSval
    d = process(t, seg)
    assert d.verdict == TW_ACK and d.paws_reject and t.substate == FIN_WAIT2 and t.rcv_nxt == 1000


def test_fin_wait2_in_window_rst_kills_even_with_rfc1337() -> None:
    for rfc1337 in (0, 1):
        t = fw2(rcv_nxt=1000)
        d = process(t, Segment(rst=True, seq=1000, end_seq=1000), rfc1337=rfc1337)
        assert d.verdict == TW_SUCCESS and d.killed and not t.alive


def test_fin_wait2_syn_at_or_after_rcv_nxt_is_reset() -> None:
    for seq in (1000, 1500):
        t = fw2(rcv_nxt=1000)
        d = process(t, Segment(syn=True, seq=seq, end_seq=seq + 1))
        assert d.verdict == TW_RST and d.killed and not t.alive


def test_fin_wait2_dup_ack_is_dropped_and_new_data_is_reset() -> None:
    t = fw2(rcv_nxt=1000)
    d = process(t, Segment(ack=True, seq=1000, end_seq=1000))  # bare ACK
    assert d.verdict == TW_SUCCESS and not d.killed and t.substate == FIN_WAIT2
    t = fw2(rcv_nxt=1000)
    d = process(t, Segment(ack=True, seq=1000, end_seq=1100))  # data after our half-close
    assert d.verdict == TW_RST and d.killed
    t = fw2(rcv_nxt=1000)
    d = process(t, Segment(ack=True, fin=True, seq=1000, end_seq=1101))  # data + FIN
    assert d.verdict == TW_RST and d.killed


def test_fin_wait2_peer_fin_enters_time_wait() -> None:
    t = fw2(rcv_nxt=1000, ts_recent=100, stamp=900)
    d = process(t, Segment(ack=True, fin=True, seq=1000, end_seq=1001, has_ts=True, tsval=150), now=10.0)
    assert d.verdict == TW_ACK and d.reschedule and not d.killed
    assert t.substate == TIME_WAIT and t.rcv_nxt == 1001
    assert (t.ts_recent, t.ts_recent_stamp) == (150, 1010)  # now_sec of process()
    # now a real TIME_WAIT: the retransmitted FIN is an in-window duplicate
    d = process(t, Segment(ack=True, fin=True, seq=1000, end_seq=1001), now=11.0)
    assert d.verdict == TW_ACK and t.alive


# ---- tcp_time_wait() and the takeover by connect() ------------------------------------------

def test_takeover_inherits_write_seq_and_ts_recent_as_tcp_twsk_unique() -> None:
    # tcp_twsk_unique(), net/ipv4/tcp_ipv4.c: write_seq = tw_snd_nxt + 65535 + 2 (0 -> 1),
    # tp->rx_opt.ts_recent = tw_ts_recent, tp->rx_opt.ts_recent_stamp = tw_ts_recent_stamp.
    t = tw(snd_nxt=5000, ts_recent=777, stamp=1234)
    assert tcp_twsk_takeover(t) == (5000 + 65537, 777, 1234)
    assert not t.alive
    assert tcp_twsk_takeover(tw(snd_nxt=MASK32 - 65535 - 1))[0] == 1  # wraps to 0: becomes 1
    assert tcp_twsk_takeover(tw(snd_nxt=MASK32 - 65535))[0] == 1  # wraps to 1 by itself


def test_time_wait_stamps_timestamps_and_counts_kill_for_short_lifetimes() -> None:
    t = tcp_time_wait(5.0, 1005, 5000, 111, 222, 42, True, 9, 60.0, None)
    assert (t.rcv_nxt, t.snd_nxt, t.ts_recent, t.ts_recent_stamp, t.ts_offset) == (111, 222, 42, 1005, 9)
    assert t.expires == 65.0 and not t.kill and t.entry_stamp_ms == 5000 and t.substate == TIME_WAIT
    t = tcp_time_wait(5.0, 1005, 5000, 111, 222, 0, False, 0, 0.7, None)
    assert t.ts_recent_stamp == 0 and t.kill  # no timestamps: tcp_tw_reuse can never take it
    t = tcp_time_wait(10.0, 1010, 10000, 1, 2, 3, True, 0, 0.704, DeathRow(1000, 3.0))
    assert t.kill and t.expires == pytest.approx(10.768)  # the recycle calendar


def test_lifetime_is_shortened_only_with_recycle_and_timestamps() -> None:
    assert tw_lifetime(100, 1, 2, 5, True, True, 0.201, 1000, 0.0, None) == 60.0
    cache = PeerCache("addr_pair")
    assert tw_lifetime(100, 1, 2, 5, False, True, 0.201, 1000, 0.0, cache) == 60.0
    assert not cache.entries  # nothing remembered without timestamps
    assert tw_lifetime(100, 1, 2, 5, True, True, 0.201, 1000, 0.0, cache) == pytest.approx(0.704)
    assert cache.entries[(1, 2)].ts == 5 and cache.entries[(1, 2)].stamp == 100
    assert tw_lifetime(100, 1, 2, 5, True, False, 0.201, 1000, 240.0, None) == 240.0  # Windows


def test_tw_buckets_overflow() -> None:
    assert inet_twsk_alloc_ok(9, 10) and not inet_twsk_alloc_ok(10, 10)
