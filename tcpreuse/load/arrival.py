"""Open-loop arrival schedules, sans-I/O: when each attempt is *due*, independent of how
long earlier attempts take. That is what keeps slow connects from hiding failures
(coordinated omission): a worker that falls behind starts late attempts at once, and
their latency still counts from the time they were due.

Schedules are split across W workers without changing the whole: for `constant` and
`ramp`, worker i takes arrivals i, i+W, i+2W, ... of the one global sequence, so W
workers together produce exactly the sequence one worker would. For `poisson`, W
independent Poisson processes of rate R/W sum to a Poisson process of rate R.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

ARRIVALS = ("constant", "poisson", "ramp")


def split_count(count: int | None, workers: int, index: int) -> int | None:
    """Worker `index`'s share of a global attempt count."""
    if count is None:
        return None
    return count // workers + (1 if index < count % workers else 0)


def _ramp_time(k: float, r0: float, r1: float, duration: float) -> float | None:
    """Time of the k-th arrival (k from 0) when the rate goes linearly from r0 to r1.

    The expected number of arrivals by t is N(t) = r0 t + (r1 - r0) t^2 / (2 D); the k-th
    arrival is at N(t) = k. None when the ramp never gets there.
    """
    a = (r1 - r0) / (2.0 * duration)
    if abs(a) < 1e-12:
        return k / r0 if r0 > 0 else None
    disc = r0 * r0 + 4.0 * a * k
    if disc < 0:
        return None
    t = (-r0 + math.sqrt(disc)) / (2.0 * a)
    return t if t >= 0 else None


def schedule(
    arrival: str,
    rate: float,
    duration: float | None,
    count: int | None,
    *,
    workers: int = 1,
    index: int = 0,
    ramp_from: float = 0.0,
    seed: int = 0,
) -> Iterator[float]:
    """Due times (s from the run's start) of worker `index`'s attempts, in order.

    Stops at `duration` or after this worker's share of `count`, whichever comes first.
    """
    if arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival {arrival!r}")
    if duration is None and count is None:
        raise ValueError("a schedule needs a duration or a count")
    limit = math.inf if duration is None else duration
    mine = split_count(count, workers, index)
    n = 0
    if arrival == "poisson":
        rng = random.Random((seed << 8) ^ index)
        per_worker = rate / workers
        t = rng.expovariate(per_worker)
        while t < limit and (mine is None or n < mine):
            yield t
            n += 1
            t += rng.expovariate(per_worker)
        return
    j = 0
    while mine is None or n < mine:
        k = index + workers * j
        if arrival == "constant":
            due: float | None = k / rate
        else:
            if duration is None:
                raise ValueError("a ramp needs a duration")
            due = _ramp_time(k, ramp_from, rate, duration)
        if due is None or due >= limit:
            return
        yield due
        n += 1
        j += 1
