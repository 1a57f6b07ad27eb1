"""Simulated connection attempts per second on the seed scenario, one core.

Runs `tcpreuse simulate`'s engine on the built-in `seed` scenario (3 Windows clients ->
A10 VIP -> 2 CentOS 6 servers, 2,000 requests/s) several times, in a child process per
mode, and prints the median attempts/s and peak RSS of:
  compiled  - this checkout's package (mypyc-compiled model and engine, see setup.py),
              keeping aggregates only (what `simulate` does without --result) and, as
              `compiled+rows`, with per-attempt rows
  source    - the same engine from its pure-Python source (the reference)
  baseline  - with --baseline DIR: another checkout's compiled build (e.g. the main
              branch), run alternately with the others so that both see the same machine,
              aggregates only and, as `baseline+rows`, with rows (a baseline that predates
              the aggregates sink keeps rows in both)
The target (issue 16) is >= 500,000 attempts/s for the compiled engine. The figure is
attempts per second of the process's CPU time over the whole run, building the result
included (Engine(...).run()): on a shared machine wall time mostly measures the other
processes. The median of several runs is the figure, with the range beside it; all
modes compute bit-identical results (tests/test_sim_golden.py).

    python bench/sim_speed.py [--runs 5] [--duration 90] [--scenario seed] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, os, time
if os.environ.get("SIM_SOURCE"):
    sys.path.insert(0, os.environ["SIM_SOURCE"])  # a copy of the package, or another checkout
from tcpreuse.scenario.loader import load_scenario
from tcpreuse.sim.engine import Engine
import tcpreuse.sim.engine as eng
sc = load_scenario(sys.argv[1], {"duration_s": float(sys.argv[2])})
rows = sys.argv[3] == "rows"
c0 = time.process_time()
r = (Engine(sc, records=rows) if hasattr(eng, "Sink") else Engine(sc)).run()  # a baseline may predate Sink
cpu = time.process_time() - c0
m = r.meta["engine"]
print(json.dumps({"attempts": m["attempts"], "events": m["events"], "wall_s": m["wall_s"], "cpu_s": cpu,
                  "compiled": not eng.__file__.endswith(".py"), "file": eng.__file__,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "failure_rate": r.failure_rate()}))
"""


def run(mode: str, scenario: str, duration: float, src: str) -> dict[str, float]:
    env = dict(os.environ, SIM_SOURCE=src, PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    rows = "rows" if mode.endswith("+rows") else "aggregates"
    out = subprocess.run([sys.executable, "-c", CHILD, scenario, str(duration), rows], env=env,
                         capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=float, default=90.0)
    ap.add_argument("--scenario", default="seed")
    ap.add_argument("--source-runs", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="another checkout (with its compiled build) to compare with")
    args = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    modes = [("compiled", args.runs, str(root)), ("compiled+rows", args.runs, str(root))]
    if args.baseline is not None:
        modes.append(("baseline", args.runs, str(args.baseline.resolve())))
        modes.append(("baseline+rows", args.runs, str(args.baseline.resolve())))
    results: dict[str, list[float]] = {m: [] for m, _, _ in modes}
    results["source"] = []
    rss: dict[str, float] = {}
    tmp = tempfile.mkdtemp(prefix="tcpreuse-src-")
    modes.append(("source", args.source_runs, tmp))
    shutil.copytree(root / "tcpreuse", Path(tmp) / "tcpreuse", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    compiled_flag = None
    for i in range(max(args.runs, args.source_runs)):
        for mode, n, src in modes:
            if i >= n:
                continue
            r = run(mode, args.scenario, args.duration, src)
            if mode == "source" and r["compiled"]:
                raise SystemExit("the source run imported compiled modules")
            if mode == "compiled":
                compiled_flag = r["compiled"]
            if mode.startswith("baseline") and not r["compiled"]:
                print(f"  note: the baseline ({r['file']}) is not compiled")
            rate = r["attempts"] / r["cpu_s"]
            results[mode].append(rate)
            rss[mode] = max(rss.get(mode, 0.0), r["rss_mb"])
            print(f"  {mode:13s} run {i + 1}: {r['attempts']:,} attempts in {r['cpu_s']:.2f} s CPU "
                  f"({r['wall_s']:.2f} s wall in the event loop) = {rate:,.0f}/s, peak RSS {r['rss_mb']:,.0f} MB",
                  flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items() if v}
    print(f"\nscenario {args.scenario}, {args.duration:g} s simulated, one core")
    if not compiled_flag:
        print("  note: the installed engine is NOT compiled (pure Python); see setup.py")
    for k, v in med.items():
        print(f"  {k:13s} median {v:>10,.0f} attempts/s  ({len(results[k])} runs, "
              f"{min(results[k]):,.0f}-{max(results[k]):,.0f}), peak RSS {rss[k]:,.0f} MB")
    if "source" in med and "compiled" in med:
        print(f"  compiled / source = {med['compiled'] / med['source']:.2f}x")
    if "baseline" in med and "compiled" in med:
        print(f"  compiled / baseline = {med['compiled'] / med['baseline']:.2f}x "
              f"(rows: {med['compiled+rows'] / med['baseline+rows']:.2f}x)")
    target = 500_000
    print(f"  target {target:,}/s: {'met' if med.get('compiled', 0) >= target else 'NOT met'}")


if __name__ == "__main__":
    main()
