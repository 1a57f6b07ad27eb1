"""What-if: re-run the scenario with each candidate fix and measure its effect.

Every fix whose `set` is non-empty is applied on top of the run's own overrides, with the
same seed, and simulated; its Effect records failure rate, delayed share and p99 connect
latency before and after. Runs go to a process pool (one simulation per core).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import TcpreuseError
from ..findings import Effect, Finding, Fix


@dataclass(frozen=True)
class Summary:
    attempts: int
    failure_rate: float
    delayed_rate: float
    p99_ms: float | None
    error: str = ""


def summarize(run: Any) -> Summary:
    return Summary(run.attempt_count(), run.failure_rate(), run.delayed_rate(),
                   run.connect_percentiles()["p99"])


def run_variant(ref: str, overrides: dict[str, Any]) -> Summary:
    """One simulation (in a worker process): scenario `ref` with `overrides`."""
    from ..scenario.loader import load_scenario
    from ..sim.engine import simulate

    try:
        return summarize(simulate(load_scenario(ref, overrides), records=False))
    except TcpreuseError as e:
        return Summary(0, 0.0, 0.0, None, error=e.message)


def _key(d: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in d.items()))


def prove_fixes(ref: str, overrides: dict[str, Any], base: Summary, findings: list[Finding],
                workers: int | None = None, progress: Callable[[int, int], None] | None = None) -> list[Fix]:
    """Fill `effect` of every expressible fix; return all fixes ranked, best first."""
    fixes: list[Fix] = [f for fd in findings for f in fd.fixes]
    todo: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for f in fixes:
        if f.set:
            todo.setdefault(_key(f.set), {**overrides, **f.set})
    results: dict[tuple[tuple[str, str], ...], Summary] = {}
    n = len(todo)
    workers = workers or min(n, os.cpu_count() or 1) or 1
    if n:
        if workers <= 1 or n == 1:
            for i, (k, ov) in enumerate(todo.items()):
                results[k] = run_variant(ref, ov)
                if progress:
                    progress(i + 1, n)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futs = {k: pool.submit(run_variant, ref, ov) for k, ov in todo.items()}
                for i, (k, fut) in enumerate(futs.items()):
                    results[k] = fut.result()
                    if progress:
                        progress(i + 1, n)
    for f in fixes:
        if not f.set:
            continue
        s = results[_key(f.set)]
        f.effect = Effect(
            failure_rate_before=base.failure_rate, failure_rate_after=s.failure_rate,
            delayed_rate_before=base.delayed_rate, delayed_rate_after=s.delayed_rate,
            p99_connect_ms_before=base.p99_ms, p99_connect_ms_after=s.p99_ms, attempts=s.attempts,
            note=s.error)
    for fd in findings:
        fd.fixes.sort(key=rank_key)
    seen: set[tuple[tuple[str, str], ...]] = set()
    ranked: list[Fix] = []
    for f in sorted(fixes, key=rank_key):
        k = _key(f.set) if f.set else (("id", f.id),)
        if k in seen:
            continue
        seen.add(k)
        ranked.append(f)
    return ranked


def rank_key(f: Fix) -> tuple[float, float, float, int]:
    e = f.effect
    if e is None:
        return (2.0, 2.0, float("inf"), 1)
    if e.note:
        return (3.0, 3.0, float("inf"), 1)
    return (e.failure_rate_after, e.delayed_rate_after, e.p99_connect_ms_after or 0.0, 0)
