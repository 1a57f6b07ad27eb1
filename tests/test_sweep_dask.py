"""A sweep through a real Dask deployment on loopback: `dask scheduler` and two `dask
worker` processes (the installed CLI entry points), one of which is killed (SIGKILL, no
nanny to restart it) while the sweep runs. Every point must still arrive, with the same
numbers a local run gives, and be in the cache."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.dask import DASK, deploy
from helpers.scenarios import client_first

from tcpreuse.sweep.cache import Cache
from tcpreuse.sweep.grid import parse_grid
from tcpreuse.sweep.point import run_point
from tcpreuse.sweep.runner import Pool
from tcpreuse.sweep.sweep import plan, run_sweep

pytestmark = [pytest.mark.slow, pytest.mark.skipif(DASK is None, reason="needs the dask CLI")]

# ~1 s per simulation: long enough that the kill lands while tasks are still queued
SCENARIO = client_first("dask-sweep", duration_s=30, seed=3, clients=2, port_range="40000 59999", rate=1000)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    with deploy(tmp_path, workers=2) as d:
        yield d.address, d.procs


def test_sweep_survives_a_worker_killed_mid_sweep(deployment: tuple[str, list[subprocess.Popen[bytes]]],
                                                  tmp_path: Path) -> None:
    address, procs = deployment
    ref = tmp_path / "dask.toml"
    ref.write_text(SCENARIO)
    axes = parse_grid(["workload.rate=1000,2500,4000,6000", "client:net.ipv4.tcp_tw_reuse=0,1"])
    cache = Cache(tmp_path / "cache")
    victim = procs[1]
    killed_at: list[int] = []

    def progress(done: int, total: int, cached: int) -> None:
        if done == 2 and not killed_at:  # the sweep is under way, six points still to go
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed_at.append(done)

    t0 = time.monotonic()
    res = run_sweep(str(ref), axes, 1, {}, cache, lambda: Pool(address), progress=progress)
    assert killed_at == [2] and victim.returncode == -signal.SIGKILL
    assert procs[2].poll() is None  # the other worker carried on
    assert res.computed == 8 and res.where == f"Dask scheduler {address}"
    for p in res.points:
        agg = p.aggregate()
        assert agg["seeds_done"] == 1 and agg["errors"] == [], (p.values, agg)
    # the numbers are the model's, whichever worker computed them
    pts, dumps = plan(str(ref), axes, 1, {})
    for i in (0, 6):
        local = run_point(dumps[pts[i].keys[0]])
        got = res.points[i].results[pts[i].seeds[0]]
        assert (got["attempts"], got["failed"]) == (local["attempts"], local["failed"])
    by = {(p.values["workload.rate"], p.values["client:net.ipv4.tcp_tw_reuse"]): p.aggregate() for p in res.points}
    assert by[(1000, 0)]["failure_rate"] == 0  # 500/s per client x 30 s < 20,000 ports
    assert by[(6000, 0)]["failure_rate"] > 0.1  # 3,000/s per client runs out after ~6.7 s
    assert by[(6000, 1)]["failure_rate"] < by[(6000, 0)]["failure_rate"]
    # every point is in the cache: a re-run computes nothing (and needs no cluster)
    again = run_sweep(str(ref), axes, 1, {}, cache, lambda: Pool("tcp://127.0.0.1:9"))
    assert again.cached == 8 and again.computed == 0
    # not a speed test: a sweep that lost a worker must finish, not wait forever (a quiet
    # machine takes ~40 s; a loaded CI runner has taken 138 s)
    assert time.monotonic() - t0 < 400
