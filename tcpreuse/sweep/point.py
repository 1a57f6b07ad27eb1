"""One simulation as a Dask task: an effective scenario in, a small summary out.

The task carries the scenario itself (its validated model as JSON), not a path, so a
worker on another machine needs nothing but tcpreuse. It returns plain JSON-able data;
a user error (TcpreuseError) becomes an `error` field instead of failing the sweep.
"""

from __future__ import annotations

import gc
import time
from typing import Any


def run_point(dump: dict[str, Any], diagnose: bool = False, stop: dict[str, Any] | None = None) -> dict[str, Any]:
    """`stop` ({"w0", "max_failure", "max_delayed"}, from `capacity`): end the run as soon
    as its judged window is certain to fail (sweep/early.py); never with `diagnose`."""
    from ..errors import TcpreuseError
    from ..scenario.loader import from_data
    from ..sim.engine import Engine
    from .inert import evidence

    # A worker runs one task after another, and the engine pauses the cyclic collector
    # while it runs: what an earlier run left in cycles (live attempts and their hosts
    # refer to each other) would otherwise still be there when this one peaks.
    gc.collect()
    t0 = time.perf_counter()
    try:
        sc = from_data(dump)
        if stop is not None and not diagnose:
            from .early import run_until_verdict

            return run_until_verdict(sc, int(stop["w0"]), float(stop["max_failure"]), stop.get("max_delayed"))
        eng = Engine(sc, None, False)  # aggregates only: memory follows live connections
        run = eng.run()
    except TcpreuseError as e:
        return {"error": e.message}
    out = summarize(run, sc)
    out["evidence"] = evidence(eng)  # what the run never consulted (sweep/inert.py)
    del eng
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    if diagnose:
        from ..diagnose.base import Evidence
        from ..diagnose.base import diagnose as run_rules

        out["findings"] = [f.to_json() for f in run_rules(Evidence(source="simulate", run=run, scenario=sc))]
    return out


def summarize(run: Any, sc: Any) -> dict[str, Any]:
    n = run.attempt_count()
    failed = run.failed_count()
    ff = run.first_failure()
    lat = run.connect_percentiles()
    return {
        "attempts": n,
        "failed": failed,
        "failure_rate": failed / n if n else 0.0,
        "delayed_rate": run.delayed_rate(),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "first_failure_s": ff["time_s"] if ff else None,
        "outcomes": run.outcomes(),
        "reasons": run.reasons(),
        "duration_s": run.duration_s,
        # per second of start time: what `capacity` judges after its warm-up
        "attempts_per_s": [int(x) for x in run.timeline.attempts],
        "failed_per_s": [int(x) for x in run.timeline.failed],
        "delayed_per_s": [int(x) for x in run.timeline.delayed],
        "request_rate": sum(w.rate for w in sc.workload),
        "connection_rate": sum(w.connection_rate for w in sc.workload),
    }
