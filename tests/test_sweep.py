"""`tcpreuse sweep`: grids, seeds, the cache that makes a sweep resumable, outputs, errors.

Scenarios are tiny (a Linux client with a few hundred ports, seconds of simulated time)
so each simulation takes milliseconds; the Dask cluster is a real LocalCluster.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import Cli
from helpers.scenarios import client_first

from tcpreuse.errors import ScenarioError
from tcpreuse.sweep import SweepError
from tcpreuse.sweep.cache import Cache, point_key
from tcpreuse.sweep.grid import parse_grid, points, split_values
from tcpreuse.sweep.runner import Pool
from tcpreuse.sweep.stats import mean_ci, wilson
from tcpreuse.sweep.sweep import plan, run_sweep

# 500 ports, the client closes first (60 s TIME_WAIT), 10 s runs: rate x 10 > 500 fails
PORTS = client_first("tiny-ports", seed=5, arrival="poisson")


@pytest.fixture
def scenario(tmp_path: Path) -> str:
    p = tmp_path / "tiny.toml"
    p.write_text(PORTS)
    return str(p)


class CountingPool(Pool):
    """A LocalCluster of one worker that counts what it was asked to compute."""

    submitted: ClassVar[list[str]] = []

    def __init__(self) -> None:
        super().__init__(None, workers=1)

    def submit(self, key: str, dump: dict[str, Any], diagnose: bool = False) -> Any:
        CountingPool.submitted.append(key)
        return super().submit(key, dump, diagnose)


def test_grid_values_split_outside_brackets_and_quotes() -> None:
    assert split_values('1000,2000, 4000') == ["1000", "2000", "4000"]
    assert split_values('[1024, 65535],"32768 60999"') == ["[1024, 65535]", '"32768 60999"']
    axes = parse_grid(["workload.rate=100,200", "server:net.ipv4.tcp_tw_recycle=0,1"])
    assert [a.values for a in axes] == [(100, 200), (0, 1)]
    assert points(axes) == [{"workload.rate": 100, "server:net.ipv4.tcp_tw_recycle": 0},
                            {"workload.rate": 100, "server:net.ipv4.tcp_tw_recycle": 1},
                            {"workload.rate": 200, "server:net.ipv4.tcp_tw_recycle": 0},
                            {"workload.rate": 200, "server:net.ipv4.tcp_tw_recycle": 1}]


@pytest.mark.parametrize("specs, message", [
    ([], "empty grid"),
    (["workload.rate="], r"no values \(empty grid\)"),
    (["workload.rate"], "expected KEY=V1,V2"),
    (["workload.rate=1,1"], "repeated"),
    (["workload.rate=1", "workload.rate=2"], "given twice"),
])
def test_bad_grids_are_clear_errors(specs: list[str], message: str) -> None:
    with pytest.raises(SweepError, match=message):
        parse_grid(specs)


def test_unknown_keys_fail_before_any_work(scenario: str) -> None:
    with pytest.raises(ScenarioError, match="unknown key"):
        plan(scenario, parse_grid(["nosuch.key=1,2"]), 1, {})
    with pytest.raises(ScenarioError, match=r"net\.ipv4\.tcp_no_such_thing"):
        plan(scenario, parse_grid(["client:net.ipv4.tcp_no_such_thing=0,1"]), 1, {})
    with pytest.raises(ScenarioError, match="rate"):
        plan(scenario, parse_grid(["workload.rate=-5,10"]), 1, {})


@pytest.mark.slow
def test_cli_errors_are_one_line(cli: Cli, scenario: str) -> None:
    code, _, err = cli(["sweep", scenario, "--grid", "bogus=1,2"])
    assert code == 2 and "unknown key" in err and "Traceback" not in err
    code, _, err = cli(["sweep", scenario])
    assert code == 2 and "empty grid" in err
    code, _, err = cli(["sweep", scenario, "--grid", "workload.rate=10", "--no-cache",
                        "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert "Traceback" not in err


def test_cache_key_is_the_effective_scenario(scenario: str) -> None:
    pts, dumps = plan(scenario, parse_grid(["workload.rate=10,20"]), 2, {})
    keys = [k for p in pts for k in p.keys]
    assert len(set(keys)) == 4  # two rates x two seeds
    assert [p.seeds for p in pts] == [[5, 6], [5, 6]]
    # the same effective scenario reached through another override has the same scenario part
    d = dumps[pts[0].keys[0]]
    assert point_key(d, {"workload.rate": 10, "seed": 5}) == pts[0].keys[0]
    # prose does not matter; a setting does
    assert point_key({**d, "description": "other words"}, {"workload.rate": 10, "seed": 5}) == pts[0].keys[0]
    other = json.loads(json.dumps(d))
    other["host"][0]["settings"]["net.ipv4.tcp_tw_reuse"] = 1
    assert point_key(other, {"workload.rate": 10, "seed": 5}) != pts[0].keys[0]


@pytest.mark.slow
def test_sweep_matches_the_port_arithmetic_and_resumes(scenario: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    axes = parse_grid(["workload.rate=20,40,100", "client:net.ipv4.tcp_tw_reuse=0,1"])
    CountingPool.submitted = []
    res = run_sweep(scenario, axes, 2, {}, cache, CountingPool)
    assert res.computed == 12 and res.cached == 0 and len(CountingPool.submitted) == 12
    agg = {(p.values["workload.rate"], p.values["client:net.ipv4.tcp_tw_reuse"]): p.aggregate() for p in res.points}
    # 20/s and 40/s x 10 s stay within 500 ports; 100/s needs ~1,000: about half fail
    # without tcp_tw_reuse, and with it the client takes over TIME_WAIT ports after 1 s
    for rate in (20, 40):
        assert agg[(rate, 0)]["failure_rate"] == 0 and agg[(rate, 1)]["failure_rate"] == 0
    assert 0.3 < agg[(100, 0)]["failure_rate"] < 0.6
    assert agg[(100, 0)]["ci_low"] <= agg[(100, 0)]["failure_rate"] <= agg[(100, 0)]["ci_high"]
    assert agg[(100, 1)]["failure_rate"] == 0
    assert agg[(100, 0)]["first_failure_s"] == pytest.approx(5.0, abs=0.8)  # the 500th attempt
    # interrupted sweep: two finished runs lost from the cache; only those are computed again
    lost = [res.points[0].keys[1], res.points[5].keys[0]]
    for k in lost:
        next((tmp_path / "cache").rglob(f"{k}.json")).unlink()
    CountingPool.submitted = []
    again = run_sweep(scenario, axes, 2, {}, cache, CountingPool)
    assert again.cached == 10 and again.computed == 2
    assert sorted(CountingPool.submitted) == sorted(lost)
    def results(r: Any) -> list[Any]:  # what was computed, without the wall-clock time it took
        return [[{k: v for k, v in run.items() if k != "wall_s"} for run in p["runs"]] for p in r.to_json()["points"]]
    assert results(again) == results(res)
    # everything cached: no cluster is started at all
    def no_pool() -> Pool:
        raise AssertionError("a pool was started for a fully cached sweep")
    assert run_sweep(scenario, axes, 2, {}, cache, no_pool).computed == 0


@pytest.mark.slow
def test_cli_outputs(cli: Cli, scenario: str, tmp_path: Path) -> None:
    out_csv, out_pq, out_html = tmp_path / "s.csv", tmp_path / "s.parquet", tmp_path / "s.html"
    run = ["sweep", scenario, "--grid", "workload.rate=30,80", "--grid", "client:net.ipv4.tcp_tw_reuse=0,1",
           "--workers", "1", "--cache", str(tmp_path / "c")]
    code, out, err = cli([*run, "--csv", str(out_csv), "--parquet", str(out_pq), "--html", str(out_html)])
    assert code == 0, err
    assert "4 run(s) computed" in out and "80" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["workload.rate"], r["client:net.ipv4.tcp_tw_reuse"]) for r in rows] == [
        ("30", "0"), ("30", "1"), ("80", "0"), ("80", "1")]
    assert float(rows[2]["failure_rate"]) > 0.2 and float(rows[3]["failure_rate"]) == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out_pq).num_rows == 4
    html = out_html.read_text()
    assert 'data-plot="hm-fail-0"' in html and "Failure rate by workload.rate" in html
    # --json, all from the cache, and `tcpreuse report` renders it again
    code, out, err = cli([*run, "--json"])
    doc = json.loads(out)
    assert doc["kind"] == "sweep" and doc["cached"] == 4 and doc["computed"] == 0
    (tmp_path / "s.json").write_text(out)
    code, _, err = cli(["report", str(tmp_path / "s.json"), "--html", str(tmp_path / "r.html")])
    assert code == 0, err
    assert "hm-fail-0" in (tmp_path / "r.html").read_text()


def test_confidence_intervals() -> None:
    m, lo, hi = mean_ci([0.50, 0.51, 0.52])
    assert m == pytest.approx(0.51) and lo == pytest.approx(0.51 - 4.303 * 0.01 / 3 ** 0.5)
    assert hi == pytest.approx(0.51 + 4.303 * 0.01 / 3 ** 0.5)
    assert mean_ci([0.0, 0.001, 0.0])[1] == 0.0  # clipped: a share is never negative
    lo, hi = wilson(0, 1000)
    assert lo == 0 and 0.003 < hi < 0.004  # the "rule of three" neighbourhood
    lo, hi = wilson(50, 1000)
    assert lo < 0.05 < hi


def test_a_bad_scheduler_address_fails_at_once_and_leaves_nothing_behind(scenario: str) -> None:
    """Before: a good error, then a 20 s hang and 'Exception ignored in Client.__del__'."""
    import subprocess
    import sys
    import time

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "sweep", scenario, "--grid", "workload.rate=10,20",
                        "--no-cache", "--scheduler", "banana"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expected a Dask scheduler address such as tcp://" in r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert time.monotonic() - t0 < 15


def test_a_grid_too_big_for_the_machine_is_refused_with_its_estimate(cli: Cli, scenario: str) -> None:
    """1,000,000 points: refused before planning any, with the estimate and --force."""
    import time

    values = ",".join(str(i) for i in range(1, 1001))
    t0 = time.monotonic()
    code, _, err = cli(["sweep", scenario, "--grid", f"workload.rate={values}", "--grid", f"seed={values}",
                        "--no-cache"])
    assert code == 2 and ("the sweep will not fit this machine's memory: 1,000,000 runs" in err
                          or "the sweep would take too long: 1,000,000 runs" in err)
    assert "--force" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 30
    code, _, err = cli(["sweep", scenario, "--grid", "workload.rate=10,20", "--no-cache",
                        "--time-limit", "0.000001"])
    assert code == 2 and "would take too long: 2 runs" in err
