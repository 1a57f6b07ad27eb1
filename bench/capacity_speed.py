"""Wall time, CPU time and memory of `tcpreuse capacity` (the README's capacity table).

Runs `tcpreuse capacity SCENARIO --max-failure 0.1% --max-rate 8000 --no-cache --json`
(the command of docs/capacity.md, without its cache so every probe is simulated) in a
child process with this checkout's package (or --source DIR's: another checkout, e.g. the
main branch with its compiled build), and prints:
  wall     - seconds, with the load average beside it (on a shared machine wall time
             mostly measures the neighbours)
  cpu      - user + system seconds of the command and every process it started (the Dask
             scheduler, nannies and workers), from the children's rusage
  peak RSS - the process tree's resident memory summed (sampled every 0.1 s) and its
             largest process
  the table - each configuration's sustained rate and lowest failing probe, so two
             builds can be checked for the same table; with how many probes were
             simulated, how many stopped early (certain to fail) and how many fix runs
             were the baseline's own (sweep/inert.py)
With --baseline DIR the other checkout runs too, alternately, so both see the same machine.

    python bench/capacity_speed.py [--runs 1] [--scenario seed] [--baseline DIR] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(p: psutil.Process) -> tuple[int, int]:
    """(summed, largest) RSS of `p` and its descendants, bytes."""
    total = top = 0
    try:
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for q in procs:
        try:
            r = q.memory_info().rss
        except psutil.Error:
            continue
        total += r
        top = max(top, r)
    return total, top


def run(src: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "tcpreuse", "capacity", args.scenario, "--max-failure", args.max_failure,
           "--max-rate", str(args.max_rate), "--no-cache", "--json", "--workers", str(args.workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    peak_sum = peak_top = 0
    with tempfile.TemporaryDirectory(prefix="tcpr-capbench-") as tmp:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            s, t = tree_rss(ps)
            peak_sum, peak_top = max(peak_sum, s), max(peak_top, t)
            time.sleep(0.1)
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"capacity failed ({proc.returncode}): {err.strip()[-400:]}")
    doc = json.loads(out)
    from tcpreuse.report.sweep import cap_text, first_fail_text

    table = [(s["label"], cap_text(s, doc), first_fail_text(s)) for s in doc["searches"]]
    probes = [p for s in doc["searches"] for p in s["probes"]]
    return {"wall_s": wall, "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "peak_sum_mb": peak_sum / 2**20, "peak_top_mb": peak_top / 2**20,
            "load": (load0, os.getloadavg()[0]), "table": table, "computed": doc["computed"],
            "shared": doc.get("shared", 0),
            "probes": len(probes), "stopped": sum(1 for p in probes if p.get("stopped_s") is not None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", default="seed")
    ap.add_argument("--max-failure", default="0.1%")
    ap.add_argument("--max-rate", type=float, default=8000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--source", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--baseline", type=Path, help="another checkout (with its compiled build) to compare with")
    args = ap.parse_args()
    builds = [("this", args.source.resolve())]
    if args.baseline is not None:
        builds.append(("baseline", args.baseline.resolve()))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in builds}
    for i in range(args.runs):
        for name, src in builds:
            r = run(src, args)
            results[name].append(r)
            print(f"{name} run {i + 1}: {r['wall_s']:.1f} s wall (load average {r['load'][0]:.1f} -> "
                  f"{r['load'][1]:.1f}), {r['cpu_s']:.1f} s CPU, peak RSS {r['peak_sum_mb']:,.0f} MB summed "
                  f"({r['peak_top_mb']:,.0f} MB the largest process), {r['computed']} simulations "
                  f"(+{r['shared']} fix runs taken from the baseline's), "
                  f"{r['probes']} probes ({r['stopped']} stopped early)", flush=True)
    for name, rs in results.items():
        print(f"\n{name} ({dict(builds)[name]}): the table")
        for label, cap, first in rs[-1]["table"]:
            print(f"  {label}: {cap}; lowest failing probe {first}")
    if len(results) == 2:
        same = results["this"][-1]["table"] == results["baseline"][-1]["table"]
        print(f"\nsame table: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
