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
import threading
import time
from collections.abc import Callable

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


def seconds_turn(second: int, read: Callable[[], float], now: Callable[[], float],
                 sleep: Callable[[float], None], poll_s: float = 0.0005, give_up_s: float = 0.1,
                 within_s: float = 0.002) -> float | None:
    """When ktime_get_seconds() turned to `second`, on CLOCK_MONOTONIC (`now`), s after the
    whole second: the coarse clock (`read`) moves with it (timekeeping_update() sets both),
    so the turn lies between the last poll that read the coarse clock short of `second` and
    the first that read it past. Not the coarse value itself: the timekeeper accumulates
    whole tick intervals, so a tick handled late still reads as its grid time. None when
    those two polls are more than `within_s` apart (this thread ran late: the turn is not
    known to that precision) or the turn has not come `give_up_s` after the second."""
    before = now()
    while True:
        v = read()
        seen = now()
        if v >= second:
            return round(seen - second, 6) if seen - before <= within_s else None
        if seen > second + give_up_s:
            return None
        before = seen
        sleep(poll_s)


def watch_seconds(stop: threading.Event, out: list[tuple[int, float]], lead_s: float = 0.003) -> None:
    """Until `stop`: just before each whole second of CLOCK_MONOTONIC, poll for the tick that
    turns the kernel's seconds value (seconds_turn()) and append (second, delay); a second
    whose turn this thread saw too late to place is left out. On a kernel whose ticks are
    handled late (User-Mode Linux on a loaded host: its timer interrupt is a host signal) the
    delay varies from second to second, from the tick's grid time that tick_delay() measures
    before the run to a jiffy or more after it; tcp_tw_reuse on 4.19-6.13 frees TIME_WAITs
    on it."""
    def coarse() -> float:
        return time.clock_gettime(CLOCK_MONOTONIC_COARSE)

    while not stop.is_set():
        nxt = math.floor(time.monotonic()) + 1
        if stop.wait(max(0.0, nxt - lead_s - time.monotonic())):
            return
        try:
            d = seconds_turn(nxt, coarse, time.monotonic, time.sleep)
        except OSError:
            return
        if d is not None:
            out.append((nxt, d))
