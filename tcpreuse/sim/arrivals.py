"""Arrival processes for a workload: constant, Poisson, or a linear ramp."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any, Final

from ..model import clocks

CONSTANT: Final = 0
POISSON: Final = 1
RAMP: Final = 2
_KINDS: Final = {"constant": CONSTANT, "poisson": POISSON, "ramp": RAMP}


class Arrivals:
    """Start times of connections, in order, within [start, start + duration): next() is
    the next one, inf once there is none. A plain object rather than a generator: the
    engine asks for one per connection, and a compiled method call is cheaper than
    resuming a generator through next()."""

    def __init__(self, arrival: str, rate: float, start: float, duration: float,
                 count: int | None, rng: random.Random, ramp_from: float = 0.0) -> None:
        kind = _KINDS.get(arrival)
        if kind is None:  # pragma: no cover - the schema only allows the three above
            raise ValueError(f"unknown arrival process {arrival!r}")
        self.kind = kind
        self.rate = rate
        self.start = start
        self.end = start + duration
        self.count = -1 if count is None else count  # -1: no limit
        self.rng = rng
        self.n = 0
        self.done = False
        self.t = start  # Poisson: the last arrival (the next is an exponential gap later)
        self.gap = 1.0 / rate if kind == CONSTANT else 0.0
        # Ramp: rate grows linearly from ramp_from to rate over the duration:
        # N(x) = r0 x + (r1 - r0) x^2 / (2 D); the k-th arrival solves N(x) = k.
        self.r0 = ramp_from
        self.a = (rate - ramp_from) / (2 * duration) if kind == RAMP else 0.0

    def next(self) -> float:
        if self.done or (self.count >= 0 and self.n >= self.count):
            self.done = True
            return math.inf
        kind = self.kind
        if kind == CONSTANT:
            t = self.start + self.n * self.gap
        elif kind == POISSON:
            t = self.t + self.rng.expovariate(self.rate)
            self.t = t
        else:
            k = self.n
            r0, a = self.r0, self.a
            if a == 0:
                x = k / r0 if r0 > 0 else math.inf
            else:
                x = (-r0 + math.sqrt(r0 * r0 + 4 * a * k)) / (2 * a)
            t = self.start + x
        if t >= self.end:
            self.done = True
            return math.inf
        self.n += 1
        return t


def workload_arrivals(seed: int, w: Any, end: float) -> Arrivals | None:
    """A workload's (scenario Workload) connection start times in a run ending at `end`
    (None if it has none): its arrival process from its start_s for its duration_s (to the
    end without one), drawn with the scenario's `seed` and its name: the engine's arrivals
    and what `capacity` counts in advance (sweep/early.py) are the same draws."""
    dur = min(w.duration_s if w.duration_s is not None else end - w.start_s, end - w.start_s)
    if dur <= 0:
        return None
    rng = random.Random(clocks.derive_secret(seed, "arrivals", w.name))
    return Arrivals(w.arrival, w.connection_rate, w.start_s, dur, w.count, rng,
                    w.ramp_from / w.requests_per_connection)


def arrival_times(arrival: str, rate: float, start: float, duration: float,
                  count: int | None, rng: random.Random, ramp_from: float = 0.0) -> Iterator[float]:
    """Arrivals(...) as an iterator."""
    return _times(Arrivals(arrival, rate, start, duration, count, rng, ramp_from))


def workload_times(seed: int, w: Any, end: float) -> Iterator[float]:
    """workload_arrivals() as an iterator (empty for a workload without arrivals)."""
    a = workload_arrivals(seed, w, end)
    return iter(()) if a is None else _times(a)


def _times(a: Arrivals) -> Iterator[float]:
    while True:
        t = a.next()
        if t == math.inf:
            return
        yield t
