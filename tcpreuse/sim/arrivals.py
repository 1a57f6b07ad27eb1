"""Arrival processes for a workload: constant, Poisson, or a linear ramp."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from ..model import clocks


def workload_arrivals(seed: int, w: Any, end: float) -> Iterator[float]:
    """A workload's (scenario Workload) connection start times in a run ending at `end`:
    its arrival process from its start_s for its duration_s (to the end without one),
    drawn with the scenario's `seed` and its name: the engine's arrivals and what
    `capacity` counts in advance (sweep/early.py) are the same draws."""
    dur = min(w.duration_s if w.duration_s is not None else end - w.start_s, end - w.start_s)
    if dur <= 0:
        return iter(())
    rng = random.Random(clocks.derive_secret(seed, "arrivals", w.name))
    return arrival_times(w.arrival, w.connection_rate, w.start_s, dur, w.count, rng,
                         w.ramp_from / w.requests_per_connection)


def arrival_times(arrival: str, rate: float, start: float, duration: float,
                  count: int | None, rng: random.Random, ramp_from: float = 0.0) -> Iterator[float]:
    """Start times of connections, in order, within [start, start + duration)."""
    end = start + duration
    n = 0
    if arrival == "constant":
        gap = 1.0 / rate
        while count is None or n < count:
            t = start + n * gap
            if t >= end:
                return
            yield t
            n += 1
    elif arrival == "poisson":
        t = start
        while count is None or n < count:
            t += rng.expovariate(rate)
            if t >= end:
                return
            yield t
            n += 1
    elif arrival == "ramp":
        # Rate grows linearly from ramp_from to rate over the duration:
        # N(x) = r0 x + (r1 - r0) x^2 / (2 D); the k-th arrival solves N(x) = k.
        r0, r1, d = ramp_from, rate, duration
        a = (r1 - r0) / (2 * d)
        while count is None or n < count:
            k = n
            if a == 0:
                x = k / r0 if r0 > 0 else math.inf
            else:
                x = (-r0 + math.sqrt(r0 * r0 + 4 * a * k)) / (2 * a)
            t = start + x
            if t >= end:
                return
            yield t
            n += 1
    else:  # pragma: no cover - the schema only allows the three above
        raise ValueError(f"unknown arrival process {arrival!r}")
