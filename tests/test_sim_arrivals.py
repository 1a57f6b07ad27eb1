"""Arrival processes (sim/arrivals.py): the engine's Arrivals.next() and the iterator
form (what `capacity` counts in advance) give the same start times."""

from __future__ import annotations

import math
import random

from tcpreuse.sim.arrivals import Arrivals, arrival_times


def _drain(a: Arrivals) -> list[float]:
    out = []
    while (t := a.next()) != math.inf:
        out.append(t)
    assert a.next() == math.inf  # stays exhausted
    return out


def test_constant_arrivals_are_evenly_spaced_within_the_window() -> None:
    got = list(arrival_times("constant", 10.0, 1.0, 1.0, None, random.Random(1)))
    assert got == [1.0 + n * 0.1 for n in range(10)]


def test_a_count_ends_the_arrivals_early() -> None:
    assert len(list(arrival_times("constant", 10.0, 0.0, 5.0, 7, random.Random(1)))) == 7
    assert list(arrival_times("poisson", 10.0, 0.0, 5.0, 0, random.Random(1))) == []


def test_poisson_arrivals_are_the_same_draws_in_both_forms() -> None:
    it = list(arrival_times("poisson", 50.0, 2.0, 10.0, None, random.Random(7)))
    direct = _drain(Arrivals("poisson", 50.0, 2.0, 10.0, None, random.Random(7)))
    assert it == direct
    assert all(2.0 < t < 12.0 for t in it) and it == sorted(it)
    assert 400 < len(it) < 600  # ~500 at 50/s over 10 s
    # the exponential gaps, drawn in order from the same generator
    rng, t, want = random.Random(7), 2.0, []
    while (t := t + rng.expovariate(50.0)) < 12.0:
        want.append(t)
    assert it == want


def test_a_ramp_grows_from_its_start_rate_to_its_rate() -> None:
    got = list(arrival_times("ramp", 100.0, 0.0, 10.0, None, random.Random(1), ramp_from=10.0))
    assert got[0] == 0.0 and got == sorted(got)
    assert abs(len(got) - 550) <= 1  # (10 + 100) / 2 per s over 10 s
    first_s = sum(1 for t in got if t < 1.0)
    last_s = sum(1 for t in got if t >= 9.0)
    assert first_s < 20 and last_s > 90
