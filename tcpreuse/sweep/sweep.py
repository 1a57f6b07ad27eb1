"""`tcpreuse sweep`: the grid, its seeds, the cache and the Dask pool put together."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..scenario.loader import load_scenario
from ..sim.estimate import Estimate, estimate
from . import SweepError, stats
from .cache import Cache, point_key
from .grid import Axis, count, point_at, points
from .runner import Pool, iterate


@dataclass
class Point:
    values: dict[str, Any]  # grid key -> value
    keys: list[str] = field(default_factory=list)  # cache key per seed
    seeds: list[int] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # seed -> summary

    def aggregate(self) -> dict[str, Any]:
        ok = [r for r in self.results.values() if "error" not in r]
        errors = sorted({r["error"] for r in self.results.values() if "error" in r})
        out: dict[str, Any] = {"seeds_done": len(ok), "errors": errors}
        if not ok:
            return out | {"failure_rate": None, "ci_low": None, "ci_high": None, "delayed_rate": None,
                          "attempts": 0, "p99_ms": None, "first_failure_s": None}
        fr = [r["failure_rate"] for r in ok]
        if len(ok) >= 2:
            m, lo, hi = stats.mean_ci(fr)
        else:
            m = fr[0]
            lo, hi = stats.wilson(ok[0]["failed"], ok[0]["attempts"])
        return out | {
            "failure_rate": m, "ci_low": lo, "ci_high": hi,
            "delayed_rate": sum(r["delayed_rate"] for r in ok) / len(ok),
            "attempts": round(sum(r["attempts"] for r in ok) / len(ok)),
            "p99_ms": stats.median([r["p99_ms"] for r in ok if r["p99_ms"] is not None]),
            "first_failure_s": stats.median([r["first_failure_s"] for r in ok if r["first_failure_s"] is not None]),
        }


@dataclass
class SweepResult:
    scenario: str
    axes: list[Axis]
    seeds: int
    points: list[Point]
    base_overrides: dict[str, Any]
    cached: int = 0
    computed: int = 0
    where: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "sweep", "version": __version__, "scenario": self.scenario,
            "axes": [{"key": a.key, "values": list(a.values)} for a in self.axes],
            "seeds": self.seeds, "overrides": self.base_overrides, "cached": self.cached,
            "computed": self.computed, "where": self.where,
            "points": [{"values": p.values, "seeds": p.seeds, "aggregate": p.aggregate(),
                        "runs": [p.results.get(s) for s in p.seeds]} for p in self.points],
        }


SAMPLE_POINTS = 24  # points of a large grid loaded to estimate it
PLAN_BYTES_PER_RUN = 12_000  # a planned run: its scenario dump (measured 6.2 KB) and result summary


def estimate_sweep(ref: str, axes: list[Axis], seeds: int, base: dict[str, Any]) -> Estimate:
    """The whole sweep's cost from a sample of its points (each loaded and estimated like
    a simulate run): attempts and CPU time summed over every run, memory of the largest
    run, plus what planning and collecting every run holds in this process."""
    n = count(axes)
    idx = sorted({round(k * (n - 1) / (SAMPLE_POINTS - 1)) for k in range(SAMPLE_POINTS)}) if n > 1 else [0]
    per = [estimate(load_scenario(ref, {**base, **point_at(axes, i)})) for i in idx]
    runs = n * seeds
    mean_att = sum(e.attempts for e in per) / len(per)
    mean_s = sum(e.seconds for e in per) / len(per)
    return Estimate(mean_att * runs, max(e.memory_bytes for e in per), mean_s * runs, runs,
                    local_bytes=runs * PLAN_BYTES_PER_RUN)


def plan(ref: str, axes: list[Axis], seeds: int, base: dict[str, Any]) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """Validate every point (a bad key or value fails here, before any work) and give
    each (point, seed) its effective scenario and cache key."""
    if seeds < 1:
        raise SweepError("--seeds must be at least 1")
    pts, dumps = [], {}
    for values in points(axes):
        ov = {**base, **values}
        sc0 = load_scenario(ref, ov)
        p = Point(values)
        for i in range(seeds):
            s = sc0.seed + i
            sc = sc0 if i == 0 else load_scenario(ref, {**ov, "seed": s})
            dump = sc.model_dump(mode="json")
            k = point_key(dump, {**ov, "seed": s})
            p.keys.append(k)
            p.seeds.append(s)
            dumps[k] = dump
        pts.append(p)
    return pts, dumps


def run_sweep(ref: str, axes: list[Axis], seeds: int, base: dict[str, Any], cache: Cache,
              make_pool: Callable[[], Pool], progress: Callable[[int, int, int], None] | None = None) -> SweepResult:
    """progress(done, total, cached) after each point-seed arrives. The pool is started
    only when something is missing from the cache."""
    pts, dumps = plan(ref, axes, seeds, base)
    where: dict[str, tuple[Point, int]] = {k: (p, s) for p in pts for k, s in zip(p.keys, p.seeds, strict=True)}
    res = SweepResult(ref, axes, seeds, pts, base)
    todo: dict[str, tuple[dict[str, Any], bool]] = {}
    for k, (p, s) in where.items():
        hit = cache.get(k)
        if hit is not None:
            p.results[s] = hit
            res.cached += 1
        else:
            todo[k] = (dumps[k], False)
    total = len(where)
    if progress:
        progress(res.cached, total, res.cached)
    if todo:
        with make_pool() as pool:
            res.where = pool.where
            for k, summary in iterate(pool, todo):
                p, s = where[k]
                p.results[s] = summary
                if "error" not in summary:  # a lost worker's error is retried next time
                    cache.put(k, summary)
                res.computed += 1
                if progress:
                    progress(res.cached + res.computed, total, res.cached)
    return res
