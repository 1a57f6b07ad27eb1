"""What Dask costs a sweep: the same simulations run serially, on a ProcessPoolExecutor
(what `simulate --fixes` uses) and on the sweep's Dask LocalCluster (start-up included),
cache disabled. Prints wall times, medians over repeats and the ratios.

    .venv/bin/python bench/sweep_overhead.py [--repeats 3] [--duration 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

from tcpreuse.sweep.cache import Cache
from tcpreuse.sweep.grid import parse_grid
from tcpreuse.sweep.point import run_point
from tcpreuse.sweep.runner import Pool
from tcpreuse.sweep.sweep import plan, run_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20.0)
    args = ap.parse_args()
    grid = ["workload.rate=1000,2000,3000,4000", "winclient:netsh.tcp.timestamps=disabled,enabled"]
    base = {"duration_s": args.duration}
    axes = parse_grid(grid)
    _, dumps = plan("seed", axes, 1, base)
    work = list(dumps.values())
    attempts = sum(int(d["duration_s"] * sum(w["rate"] for w in d["workload"])) for d in work)
    cores = os.cpu_count() or 1
    print(f"{len(work)} simulations of the seed, {args.duration:g} s each, {attempts:,} attempts; {cores} cores")
    times: dict[str, list[float]] = {"serial": [], "process pool": [], "dask sweep": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        serial = [run_point(d)["failed"] for d in work]
        times["serial"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with ProcessPoolExecutor(cores) as ex:
            pooled = [r["failed"] for r in ex.map(run_point, work)]
        times["process pool"].append(time.perf_counter() - t)
        t = time.perf_counter()
        res = run_sweep("seed", axes, 1, base, Cache(None), lambda: Pool(None, cores))
        times["dask sweep"].append(time.perf_counter() - t)
        dask = [p.results[p.seeds[0]]["failed"] for p in res.points]
        assert serial == pooled == dask, "the three ways disagree"
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>13}: median {med[k]:6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(f"dask sweep / process pool: {med['dask sweep'] / med['process pool']:.2f}x; "
          f"dask sweep / serial: {med['dask sweep'] / med['serial']:.2f}x")


if __name__ == "__main__":
    main()
