"""Where the kernel's timer ticks fall within a second, read from CLOCK_MONOTONIC_COARSE.

CLOCK_MONOTONIC_COARSE is the timekeeper's time as of its last update, which happens on a
timer tick; its whole seconds are ktime_get_seconds() (both read tk->tkr_mono / ktime_sec,
kernel/time/timekeeping.c). So each coarse reading is the instant of a tick, and the
ticks' phase modulo 1/HZ says how long after a second boundary the seconds value turns
over. Readings are taken over ~0.2 s (a CPU that is busy keeps ticking under NOHZ) and
their phase is averaged on the circle (a phase near 0 and one near 1/HZ are neighbours).
"""

from __future__ import annotations

import cmath
import math
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
