"""Where the kernel's timer ticks fall within a second, read from CLOCK_MONOTONIC_COARSE.

CLOCK_MONOTONIC_COARSE is the timekeeper's time as of its last update, which happens on a
timer tick; its whole seconds are ktime_get_seconds() (both read tk->tkr_mono / ktime_sec,
kernel/time/timekeeping.c). So each coarse reading is the instant of a tick, and the
ticks' phase modulo 1/HZ says how long after a second boundary the seconds value turns
over. Readings are taken over ~0.2 s (a CPU that is busy keeps ticking under NOHZ) and
their phase is averaged on the circle (a phase near 0 and one near 1/HZ are neighbours).

jiffies count the same ticks from INITIAL_JIFFIES, but not from CLOCK_MONOTONIC's zero (on
the 6.18 host they lag it by ~0.3 s): /proc/timer_list prints both in one read, which
places the kernel's jiffies (the 5.18+ port re-salt every 10 s, timer-wheel buckets).
"""

from __future__ import annotations

import cmath
import math
import re
import time

CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)  # Linux's id


def circular_phase(values: list[float], period: float) -> float:
    """The mean phase of `values` modulo `period`, in [0, period)."""
    if not values or period <= 0:
        return 0.0
    z = sum(cmath.exp(2j * math.pi * (v % period) / period) for v in values)
    return (cmath.phase(z) / (2 * math.pi) * period) % period


def tick_delay(hz: int, samples: int = 40, spacing_s: float = 0.005) -> float | None:
    """Seconds from a whole second of CLOCK_MONOTONIC to the next tick (0 to 1/HZ), or None
    when the coarse clock cannot be read."""
    ticks = set()
    try:
        for _ in range(samples):
            ticks.add(time.clock_gettime(CLOCK_MONOTONIC_COARSE))
            time.sleep(spacing_s)
    except OSError:
        return None
    return round(circular_phase(sorted(ticks), 1.0 / hz), 6) if ticks else None


def parse_timer_list(text: str) -> tuple[float, int] | None:
    """(CLOCK_MONOTONIC in s, jiffies) from one read of /proc/timer_list: its `now at N
    nsecs` line is ktime_get() and its first `jiffies: N` line the jiffies counter, printed
    by the same read (kernel/time/timer_list.c)."""
    now = re.search(r"^now at (\d+) nsecs", text, re.MULTILINE)
    jif = re.search(r"^jiffies:\s*(\d+)", text, re.MULTILINE)
    if now is None or jif is None:
        return None
    return int(now[1]) / 1e9, int(jif[1])


def jiffies_lag(mono_s: float, jiffies: int, hz: int, tick_delay_s: float) -> float:
    """How far jiffies lag CLOCK_MONOTONIC, as the model counts them: jiffies(t) =
    INITIAL_JIFFIES + (t - lag) x HZ, rounded down, equals `jiffies` at `mono_s` and goes up
    on the ticks (tick_delay_s after each multiple of 1/HZ). INITIAL_JIFFIES is
    (unsigned long)(unsigned int)(-300 * HZ) (include/linux/jiffies.h): 2^32 - 300 HZ."""
    initial = (-300 * hz) % (1 << 32)
    ticks = math.floor((mono_s - tick_delay_s) * hz)
    return round(tick_delay_s + (ticks - (jiffies - initial)) / hz, 6)


def read_jiffies_lag(hz: int, tick_delay_s: float, samples: int = 8) -> float | None:
    """jiffies_lag() from /proc/timer_list (root only), or None where it cannot be read.
    The smallest of a few reads: a read can print jiffies one tick stale (an idle CPU under
    NOHZ updates them late), never ahead."""
    lags = []
    for _ in range(samples):
        try:
            with open("/proc/timer_list") as f:
                got = parse_timer_list(f.read())
        except OSError:
            return None
        if got is None:
            return None
        lags.append(jiffies_lag(got[0], got[1], hz, tick_delay_s))
        time.sleep(0.003)
    return min(lags)
