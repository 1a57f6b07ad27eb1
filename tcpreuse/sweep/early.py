"""A capacity probe that stops as soon as its verdict is certain to be "fails".

`capacity` judges a probe on the attempts started in its judged window [w0, duration):
it fails when failed / attempts > the budget (or delayed / attempts > the delayed
budget). Once the run is past w0, the attempts already recorded as failed (a failure is
final: it is recorded when the attempt is done) only grow, and the number of attempts
the window will hold is known before the run, so the verdict "fails" can be certain long
before the window ends: at 4 % failed against a 0.1 % budget, about a second into it.
Such a probe stops there instead of simulating the rest of its window for nothing.

The window's attempt count is exact only when every attempt is an arrival: workloads
without application retries (a retry is a new attempt, started by a failure). Then it is
the number of arrivals in the window, drawn from the same arrival processes with the same
seeds as the engine's (`window_arrivals`; `tests/test_capacity.py` checks it against the
engine's own count). With retries, or several seeds pooled into one verdict, a probe runs
to its end.

What a stopped probe knows is a lower bound of its failed share, and the first failure
in start order once no attempt started before it is still live (the stop waits for
that). The engine is not changed: its per-second progress callback is the hook, and the
aggregates-only sink (sim/sink.py) has the per-second counts the verdict needs.
"""

from __future__ import annotations

import gc
import time
import traceback
from typing import Any

from ..sim.arrivals import workload_times


class _Certain(Exception):
    """Raised from the engine's progress callback to end a run whose verdict is known."""


def stoppable(sc: Any) -> bool:
    """True when a run's judged-window attempt count is known in advance: no retries."""
    return all(w.retries == 0 for w in sc.workload)


def window_arrivals(sc: Any, w0: float) -> int:
    """Arrivals (connections started by the workloads, not retries) at or after `w0` and
    before the end of the run: the attempts of the judged window when no workload retries.
    The engine's own draws (sim/arrivals.py workload_arrivals())."""
    return sum(1 for w in sc.workload for t in workload_times(sc.seed, w, sc.duration_s) if t >= w0)


def oldest_live(eng: Any) -> int | None:
    """The start index of the oldest attempt not yet recorded, or None (the engine keeps
    them in start order, a linked list from live_head)."""
    head = eng.live_head
    return None if head is None else int(head.idx)


def run_until_verdict(sc: Any, w0: int, max_failure: float, max_delayed: float | None) -> dict[str, Any]:
    """Simulate `sc` with aggregates only, stopping once the judged window [w0, end) is
    certain to fail. The summary has the keys of point.summarize(); a stopped run adds
    `stopped_s` (simulated time it stopped at) and `window_attempts` (what the full run's
    window would hold), and its counts are those of the attempts finished by then."""
    from ..sim.engine import Engine
    from .inert import evidence
    from .point import summarize

    total = window_arrivals(sc, w0)
    end = sc.duration_s
    fail_at = max_failure * total
    delay_at = None if max_delayed is None else max_delayed * total
    box: list[Any] = []

    def check(t: float, _n: int) -> None:
        if t < w0 or t >= end or not box:
            return  # (at the end the run is done anyway: let it finish whole)
        sink = box[0].sink
        failed = sum(sink.tl_failed[w0:])
        certain = failed > fail_at or (delay_at is not None and sum(sink.tl_delayed[w0:]) > delay_at)
        if not certain:
            return
        # the first failure (in start order) is final once nothing started before it is live
        oldest = oldest_live(box[0])
        if oldest is not None and sink.ff_idx >= 0 and oldest < sink.ff_idx:
            return
        raise _Certain(t)

    t0 = time.perf_counter()
    eng = Engine(sc, check, False)
    box.append(eng)
    stopped_at = None
    try:
        run = eng.run()
    except _Certain as e:
        stopped_at = float(e.args[0])
        # the traceback's frames hold the engine (check's locals): let it go with them
        traceback.clear_frames(e.__traceback__)
    if stopped_at is not None:
        out = stopped_summary(eng, sc, stopped_at, total)
        out["evidence"] = evidence(eng)  # up to the stop (sweep/inert.py)
        # live attempts and their hosts reference each other (ehash <-> Attempt.client): a
        # run cut short leaves cycles a whole run has closed, and the engine pauses the
        # collector while it runs, so the next run would start beside this one's state
        box.clear()
        del eng
        gc.collect()
    else:
        out = summarize(run, sc)
        out["evidence"] = evidence(eng)
    out["wall_s"] = round(time.perf_counter() - t0, 3)
    return out


def stopped_summary(eng: Any, sc: Any, t: float, window_attempts: int) -> dict[str, Any]:
    sink = eng.sink
    n, failed = sink.n, sink.failed
    return {
        "attempts": n,
        "failed": failed,
        "failure_rate": failed / n if n else 0.0,
        "delayed_rate": sink.delayed / n if n else 0.0,
        "p50_ms": None,
        "p99_ms": None,
        "first_failure_s": round(sink.ff_t, 6) if sink.ff_idx >= 0 else None,
        "outcomes": _counts(sink.outcomes),
        "reasons": _counts(sink.reasons),
        "duration_s": sc.duration_s,
        "attempts_per_s": [int(x) for x in sink.tl_attempts],
        "failed_per_s": [int(x) for x in sink.tl_failed],
        "delayed_per_s": [int(x) for x in sink.tl_delayed],
        "request_rate": sum(w.rate for w in sc.workload),
        "connection_rate": sum(w.connection_rate for w in sc.workload),
        "stopped_s": t,
        "window_attempts": window_attempts,
    }


def _counts(d: dict[str, Any]) -> dict[str, int]:
    """name -> count from the sink's tallies."""
    return {k: int(v.n) for k, v in d.items()}
