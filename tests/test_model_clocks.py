"""Timestamp and seconds clocks by kernel version (docs/kernel.md §7)."""

from __future__ import annotations

import pytest

from tcpreuse.model.clocks import seconds_clock, ts_offset, tsval_clock
from tcpreuse.model.profiles import get_profile


def test_ts_clock_is_jiffies_until_4_12_then_milliseconds() -> None:
    base, rate = tsval_clock(get_profile("linux-4.9"), 250, uptime_s=1000.0)
    assert rate == 250 and base == pytest.approx((1000 - 300) * 250)  # INITIAL_JIFFIES = -300 HZ
    base, rate = tsval_clock(get_profile("linux-4.13"), 250, uptime_s=1000.0)
    assert rate == 1000 and base == pytest.approx(1_000_000)  # TCP_TS_HZ, HZ does not matter
    assert tsval_clock(get_profile("windows-2016"), 1000, 5.0) == (5000.0, 1000.0)


def test_paws_seconds_are_wall_clock_until_4_18_then_monotonic() -> None:
    assert seconds_clock(get_profile("centos-6"), uptime_s=100.0, wall0_s=1.7e9) == 1.7e9
    assert seconds_clock(get_profile("linux-4.19"), uptime_s=100.0, wall0_s=1.7e9) == 100.0


def test_ts_offsets_by_version() -> None:
    args = (1234, 1, 0x0A000001, 0x0A000002, 40000, 80)
    other_port = (1234, 1, 0x0A000001, 0x0A000002, 40002, 80)
    assert ts_offset(get_profile("linux-4.9"), *args) == 0  # none before 4.10
    p411 = get_profile("linux-5.15")  # per (saddr, daddr)
    assert ts_offset(p411, *args) == ts_offset(p411, *other_port) != 0
    p618 = get_profile("linux-6.18")  # per 4-tuple again (165573e41f2f)
    assert ts_offset(p618, *args) != ts_offset(p618, *other_port)
    assert ts_offset(p618, 1234, 2, *args[2:]) == 0  # tcp_timestamps = 2: no offsets


def test_a_measured_offset_replaces_the_draw_per_host_pair_only() -> None:
    args = (1234, 1, 0x0A000001, 0x0A000002, 40000, 80)
    p61, p618 = get_profile("linux-6.1"), get_profile("linux-6.18")
    assert ts_offset(p61, *args, measured=4_000_000_000) == 4_000_000_000
    assert ts_offset(p61, *args, measured=None) == ts_offset(p61, *args) != 4_000_000_000
    # per 4-tuple one connection's offset says nothing of the next port's: the draw stays
    assert ts_offset(p618, *args, measured=7) == ts_offset(p618, *args) != 7
    assert ts_offset(get_profile("linux-4.9"), *args, measured=7) == 0  # no offsets at all
