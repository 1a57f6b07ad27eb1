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


def _due(arrival: str, k: int, rate: float, duration: float | None, ramp_from: float) -> float | None:
    """Due time of global arrival k of a constant or ramp schedule, as schedule() computes it."""
    if arrival == "constant":
        return k / rate
    if duration is None:
        raise ValueError("a ramp needs a duration")
    return _ramp_time(k, ramp_from, rate, duration)


def remaining(
    arrival: str,
    rate: float,
    duration: float | None,
    count: int | None,
    *,
    workers: int = 1,
    index: int = 0,
    ramp_from: float = 0.0,
    started: int = 0,
    next_due: float = 0.0,
) -> int:
    """How many of worker `index`'s arrivals are left, the one due at `next_due` (its
    `started`-th, from 0) included: what schedule() would still yield, counted without
    drawing them (an overloaded run at 1e9/s must not spend minutes counting).

    constant and ramp: exactly (a binary search over the same due-time formula); poisson:
    the one pending plus the expected number in (next_due, duration).
    """
    mine = split_count(count, workers, index)
    limit = math.inf if duration is None else duration
    if arrival == "poisson" or limit == math.inf:
        if limit == math.inf:
            left = (mine or 0) - started
        else:
            left = 1 + round(rate / workers * max(0.0, limit - next_due))
            if mine is not None:
                left = min(left, mine - started)
        return max(0, left)

    def due_ok(j: int) -> bool:
        due = _due(arrival, index + workers * j, rate, duration, ramp_from)
        return due is not None and due < limit

    lo, hi = started, max(started + 1, 2)
    while due_ok(hi):  # grow until past the end (ramps and constants end before limit)
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # due_ok(lo) or lo == started; not due_ok(hi)
        mid = (lo + hi) // 2
        if due_ok(mid):
            lo = mid
        else:
            hi = mid
    total = hi if due_ok(lo) else lo  # arrivals j < total are due before the end
    if mine is not None:
        total = min(total, mine)
    return max(0, total - started)
