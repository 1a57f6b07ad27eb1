"""The engine's aggregates-only mode (no per-attempt rows) reports what the rows give.

Every built-in scenario runs twice, with rows and without; the JSON summary (outcomes,
reasons, rates, first failure, connect percentiles, timeline, counters), what-if's and
sweep's summaries and every problem's figures the diagnosis quotes must be equal, and
the findings the same."""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers.sim_golden import DURATIONS

from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.diagnose.runfacts import cause_stats
from tcpreuse.diagnose.whatif import summarize
from tcpreuse.result import REASONS, RunResult, dumps
from tcpreuse.scenario.loader import load_scenario
from tcpreuse.sim.engine import Engine
from tcpreuse.sweep.point import summarize as point_summary

# quick (a few seconds in pure Python); the slow test runs every built-in at its golden length
QUICK = {"client-exhaustion": 20.0, "listen-overflow": 10.0, "cgnat-recycle": 10.0, "azure-snat": 180.0}


def _summary(run: RunResult) -> dict[str, Any]:
    d = run.to_json()
    d["meta"] = {k: v for k, v in d["meta"].items() if k != "engine"}
    return d


def _check(name: str, duration: float) -> None:
    sc = load_scenario(name, {"duration_s": duration})
    rows = Engine(sc).run()
    agg = Engine(sc, records=False).run()
    assert rows.aggregates is None and agg.aggregates is not None
    assert len(agg.attempts) == 0 and agg.attempt_count() == len(rows.attempts) > 0
    assert _summary(agg) == _summary(rows)
    assert summarize(agg) == summarize(rows)
    assert point_summary(agg, sc) == point_summary(rows, sc)
    for reason in REASONS:
        a, r = cause_stats(agg, reason), cause_stats(rows, reason)
        if r is None:
            assert a is None, reason
            continue
        assert a is not None, reason
        ra, rr = vars(a), vars(r)
        pa, pr = ra.pop("connect_ms_p50"), rr.pop("connect_ms_p50")
        assert ra == rr, reason
        # the median of latencies counted per microsecond: within one of the exact one
        assert (pa is None) == (pr is None) and (pa is None or abs(pa - pr) <= 1e-3), reason
    fa = [f.to_json() for f in diagnose(Evidence(source="simulate", run=agg, scenario=sc))]
    fr = [f.to_json() for f in diagnose(Evidence(source="simulate", run=rows, scenario=sc))]
    assert fa == fr


@pytest.mark.parametrize("name", QUICK)
def test_aggregates_equal_rows(name: str) -> None:
    _check(name, QUICK[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DURATIONS))
def test_aggregates_equal_rows_all(name: str) -> None:
    _check(name, DURATIONS[name])


def test_result_parquet_round_trips_the_attempt_table(tmp_path: Any) -> None:
    """simulate --result FILE.parquet: the same columns and vocabularies as the JSON records,
    readable by `tcpreuse report` (the rest of the result rides in the file's metadata)."""
    pytest.importorskip("pyarrow")
    from tcpreuse.commands.report import load

    sc = load_scenario("client-exhaustion", {"duration_s": 20.0})
    run = Engine(sc).run()
    p = tmp_path / "run.parquet"
    run.attempts.write_parquet(p, {}, chunk_rows=1000)  # several row groups
    back, _ = type(run.attempts).read_parquet(p)
    assert back.vocab == run.attempts.vocab and back.names() == run.attempts.names()
    for k, col in run.attempts.cols.items():
        assert back.cols[k].dtype == col.dtype and back.cols[k].tobytes() == col.tobytes(), k
    run.save_parquet(p, {"findings": []})
    loaded = load(p)
    assert loaded.kind == "run" and loaded.findings == []
    assert json.loads(dumps(loaded.data.to_json(records=True))) == json.loads(dumps(run.to_json(records=True)))
