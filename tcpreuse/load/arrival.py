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
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Schedule:
    """Worker `index`'s share (of `workers`) of an open-loop schedule: `arrival` at `rate`
    per second (for a ramp, from `ramp_from` up to `rate` over `duration`), ending at
    `duration` s or after this worker's share of `count` attempts, whichever comes first;
    `seed` draws the Poisson gaps."""

    arrival: str
    rate: float
    duration: float | None
    count: int | None
    workers: int = 1
    index: int = 0
    ramp_from: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.arrival not in ARRIVALS:
            raise ValueError(f"unknown arrival {self.arrival!r}")
        if self.duration is None and self.count is None:
            raise ValueError("a schedule needs a duration or a count")

    @property
    def _limit(self) -> float:
        return math.inf if self.duration is None else self.duration

    def _due(self, k: int) -> float | None:
        """Due time of global arrival k of a constant or ramp schedule."""
        if self.arrival == "constant":
            return k / self.rate
        if self.duration is None:
            raise ValueError("a ramp needs a duration")
        return _ramp_time(k, self.ramp_from, self.rate, self.duration)

    def times(self) -> Iterator[float]:
        """Due times (s from the run's start) of this worker's attempts, in order."""
        limit, mine = self._limit, split_count(self.count, self.workers, self.index)
        n = 0
        if self.arrival == "poisson":
            rng = random.Random((self.seed << 8) ^ self.index)
            per_worker = self.rate / self.workers
            t = rng.expovariate(per_worker)
            while t < limit and (mine is None or n < mine):
                yield t
                n += 1
                t += rng.expovariate(per_worker)
            return
        j = 0
        while mine is None or n < mine:
            due = self._due(self.index + self.workers * j)
            if due is None or due >= limit:
                return
            yield due
            n += 1
            j += 1

    def remaining(self, started: int = 0, next_due: float = 0.0) -> int:
        """How many of this worker's arrivals are left, the one due at `next_due` (its
        `started`-th, from 0) included: what times() would still yield, counted without
        drawing them (an overloaded run at 1e9/s must not spend minutes counting).

        constant and ramp: exactly (a binary search over the same due-time formula); poisson:
        the one pending plus the expected number in (next_due, duration).
        """
        mine = split_count(self.count, self.workers, self.index)
        limit = self._limit
        if self.arrival == "poisson" or limit == math.inf:
            if limit == math.inf:
                left = (mine or 0) - started
            else:
                left = 1 + round(self.rate / self.workers * max(0.0, limit - next_due))
                if mine is not None:
                    left = min(left, mine - started)
            return max(0, left)

        def due_ok(j: int) -> bool:
            due = self._due(self.index + self.workers * j)
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
