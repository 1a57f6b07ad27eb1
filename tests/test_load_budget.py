"""The estimate `load` and `lab` refuse runs by (tcpreuse/load/budget.py): its memory
figures hold for a real merge of 100,000 attempts, and its verdicts."""

from __future__ import annotations

import time
import tracemalloc
from array import array

import numpy as np
import pytest

from tcpreuse.load import budget
from tcpreuse.load.runner import LoadConfig, _merge
from tcpreuse.load.target import resolve
from tcpreuse.load.worker import WorkerResult
from tcpreuse.result import dumps


def _part(n: int) -> WorkerResult:
    rng = np.random.default_rng(1)
    floats = lambda: array("d", rng.random(n))  # noqa: E731
    return WorkerResult(
        index=0, t=array("d", np.sort(rng.random(n)) * 10), connect_ms=floats(), syn_tries=array("h", [1] * n),
        outcome=array("h", [0] * n), reason=array("h", [0] * n), src=array("i", [0] * n),
        sport=array("i", rng.integers(1024, 65535, n).tolist()), outcomes=["ok"],
        reasons=["ok", "ok_after_syn_retry"], addrs=["127.0.0.1"], connect_hist="", request_hist="",
        lag_hist="", requests=n, http_status={}, lag_max_ms=0.0, late_starts=0, not_started=0, end=10.0,
        interrupted=False, answer_ms=floats(), close_ms=floats(), request_s=floats(), lag_s=floats())


@pytest.mark.slow  # tracemalloc over ~2 million Python objects: about 20 s
def test_bytes_per_attempt_cover_a_real_merge_and_its_json() -> None:
    n = 100_000
    part = _part(n)
    worker_bytes = sum(a.itemsize * len(a) for a in (part.t, part.connect_ms, part.syn_tries, part.outcome,
                                                     part.reason, part.src, part.sport, part.answer_ms, part.close_ms,
                                                     part.request_s, part.lag_s))
    cfg = LoadConfig(target=resolve("127.0.0.1:80"), rate=10_000, duration=10)
    tracemalloc.start()
    try:
        run = _merge(cfg, [part], [0] * 10, {}, {}, 1, "none", False, [], 1024, time.time(), 10.0)
        merge_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        text = dumps(run.result.to_json(records=True))
        json_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(text) > 50 * n
    # the worker's arrays twice (the worker's and the pickled copy) plus the merge
    assert (2 * worker_bytes + merge_peak) / n < budget.BYTES_PER_ATTEMPT
    assert (2 * worker_bytes + json_peak) / n < budget.BYTES_PER_ATTEMPT_RESULT


def test_estimate_verdicts() -> None:
    ok = budget.estimate(1000.0, 10.0, None, workers=2, cpus=2, available=8e9, records_as_json=True)
    assert ok.attempts == 10_000 and not ok.problems()
    fast = budget.estimate(1e9, 2.0, None, workers=8, cpus=2, available=8e9, records_as_json=False)
    assert fast.capacity == 2 * budget.GENERATOR_RATE_PER_CPU  # workers beyond the CPUs add nothing
    p = fast.problems()
    assert len(p) == 2 and "about 60,000/s" in p[0] and "2,000,000,000 attempts" in p[1]
    capped = budget.estimate(1e9, 2.0, 500, workers=2, cpus=2, available=8e9, records_as_json=True)
    assert capped.attempts == 500 and len(capped.problems()) == 1  # the rate, not the memory
    ramp = budget.attempts_of(1000.0, 10.0, None, arrival="ramp", ramp_from=0.0)
    assert ramp == 5000.0
    assert "--force" in budget.refusal(p)


def test_concurrency_beyond_the_descriptor_limit_is_refused() -> None:
    e = budget.estimate(None, 10.0, None, workers=1, cpus=2, available=8e9, records_as_json=False,
                        concurrency=2_000_000, nofile=1_048_576)
    assert any("--concurrency 2,000,000 puts 2,000,000 connections in flight" in p for p in e.problems())
    e = budget.estimate(None, 10.0, None, workers=1, cpus=2, available=8e9, records_as_json=False,
                        concurrency=500, nofile=1024)
    assert not e.problems()
