"""When a Linux timer_list timer fires: jiffies and the timer wheel's rounding.

TCP's retransmission timer (and with it every SYN retransmission) is a timer_list timer
armed in jiffies. Since 4.8 the wheel does not cascade (500462a9de65, "timer: Switch to a
non-cascading wheel"): a timer goes into the level its distance selects and fires at the
next multiple of that level's granularity strictly after its expiry (calc_index(),
kernel/time/timer.c, 4.8-6.18). At HZ=250 a 1 s timer fires up to 32 ms late, at HZ=1000
up to 64 ms; timers armed a few ms apart fire together, so SYNs that were dropped one by
one are retransmitted in bursts. Before 4.8 the cascading wheel fired a timer on its
expiry jiffy.

Jiffies start at INITIAL_JIFFIES = (unsigned long)(unsigned int)(-300 * HZ)
(include/linux/jiffies.h),
so a host's jiffies at the start of a run follow from its uptime, which fixes where the
wheel's bucket boundaries fall.
"""

from __future__ import annotations

import math

LVL_CLK_SHIFT = 3  # each level is 8 times coarser
LVL_BITS = 6
LVL_SIZE = 1 << LVL_BITS


def lvl_start(n: int) -> int:
    """LVL_START(n): the smallest distance (jiffies) that goes into level n."""
    return (LVL_SIZE - 1) << ((n - 1) * LVL_CLK_SHIFT)


def lvl_depth(hz: int) -> int:
    """LVL_DEPTH: 9 levels for HZ > 100, 8 otherwise."""
    return 9 if hz > 100 else 8


def wheel_expiry(expires: int, clk: int, hz: int) -> int:
    """mirrors calc_wheel_index() + calc_index() (kernel/time/timer.c, 4.8-6.18): the jiffy
    at which a timer with `expires`, armed while the wheel's clock is `clk`, fires.

    calc_index(): expires = (expires >> LVL_SHIFT(lvl)) + 1; bucket_expiry = expires <<
    LVL_SHIFT(lvl) -- the next multiple of the level's granularity strictly after it.
    (Before "timers: Simplify calc_index()", 5.18, the same value was written
    (expires + LVL_GRAN(lvl)) >> LVL_SHIFT(lvl).)"""
    delta = expires - clk
    if delta < 0:
        return clk
    depth = lvl_depth(hz)
    lvl = 0
    while lvl < depth - 1 and delta >= lvl_start(lvl + 1):
        lvl += 1
    if lvl == depth - 1 and delta >= lvl_start(depth):
        # WHEEL_TIMEOUT_CUTOFF: capped to the wheel's range (days at any HZ)
        expires = clk + lvl_start(depth) - (1 << ((depth - 1) * LVL_CLK_SHIFT))
    shift = lvl * LVL_CLK_SHIFT
    return ((expires >> shift) + 1) << shift


def jiffies0(hz: int, uptime_s: float) -> float:
    """jiffies (with its fraction) at the start of the run: INITIAL_JIFFIES + uptime * HZ."""
    return float((-300 * hz) % (1 << 32)) + uptime_s * hz


def timer_fires_s(t_arm: float, timeout_j: int, hz: int, j0: float, wheel: bool) -> float:
    """Run time (s) at which a timer armed at run time `t_arm` for `timeout_j` jiffies fires
    (mod_timer(timer, jiffies + timeout_j)). The wheel's clock is taken equal to jiffies."""
    now = math.floor(j0 + t_arm * hz)
    expires = now + timeout_j
    fire = wheel_expiry(expires, now, hz) if wheel else expires
    return (fire - j0) / hz
