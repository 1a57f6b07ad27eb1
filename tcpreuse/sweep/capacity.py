"""`tcpreuse capacity`: the highest request rate a configuration sustains within a
failure budget, for the scenario as it is and for every fix its diagnosis proposes.

Search, per configuration: probe the scenario's own rate; double while it passes (up to
a cap), halve while it fails (down to a floor); then bisect geometrically between the
highest passing and the lowest failing rate until they are within `resolution` of each
other. Rates are rounded to three significant digits, so probes are reused from the
cache across runs. The failure rate is not strictly monotone in the rate (a faster
port cycle can move retries off colliding 4-tuples), so the answer is the boundary this
search finds above the start: every probed rate up to it passed. Rates scale every
workload of the scenario together; the rate reported is requests per second.

The fixes come from diagnosing the lowest failing probe of the configuration as it is
(the same rules `simulate` runs); each fix's `set` is applied on top of the user's
overrides, and searched like the baseline. All searches run at once on one Dask pool:
each keeps one probe in flight, so a few searches keep every core busy.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..errors import TcpreuseError
from ..findings import Finding
from ..scenario.loader import load_scenario
from . import SweepError
from .cache import Cache, point_key
from .runner import Pool


def round_sig(x: float, digits: int = 3) -> float:
    if x <= 0:
        return x
    p = digits - 1 - math.floor(math.log10(x))
    r = round(x, p)
    return float(int(r)) if r >= 100 else r


@dataclass
class Probe:
    rate: float
    attempts: int = 0
    failed: int = 0
    delayed_rate: float = 0.0
    first_failure_s: float | None = None
    passed: bool = False
    error: str = ""
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "attempts": self.attempts, "failed": self.failed,
                "failure_rate": self.failure_rate, "delayed_rate": self.delayed_rate,
                "first_failure_s": self.first_failure_s, "passed": self.passed, "error": self.error,
                "reasons": self.reasons}


@dataclass
class Search:
    label: str
    fix_id: str = ""  # "" for the configuration as it is
    set: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    status: str = "running"  # running | found | capped | below_floor | error
    error: str = ""

    @property
    def lo(self) -> float | None:
        """Highest passing rate below the lowest failing one."""
        hi = self.hi
        ok = [p.rate for p in self.probes if p.passed and (hi is None or p.rate < hi)]
        return max(ok) if ok else None

    @property
    def hi(self) -> float | None:
        bad = [p.rate for p in self.probes if not p.passed]
        return min(bad) if bad else None

    def next_rate(self, start: float, cap: float, floor: float, resolution: float) -> float | None:
        if self.status != "running":
            return None
        if not self.probes:
            return round_sig(start)
        lo, hi = self.lo, self.hi
        if lo is None:  # everything failed so far
            r = round_sig(min(p.rate for p in self.probes) / 2)
            if r < floor:
                self.status = "below_floor"
                return None
            return r
        if hi is None:  # everything passed so far
            if lo >= cap:
                self.status = "capped"
                return None
            return min(round_sig(lo * 2), round_sig(cap))
        if hi / lo <= 1 + resolution:
            self.status = "found"
            return None
        r = round_sig(math.sqrt(lo * hi))
        if r <= lo or r >= hi:
            self.status = "found"
            return None
        return r

    @property
    def capacity(self) -> float | None:
        return self.lo

    def first_failing(self) -> Probe | None:
        hi = self.hi
        return next((p for p in self.probes if p.rate == hi), None) if hi is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "fix_id": self.fix_id, "set": self.set, "commands": self.commands,
                "status": self.status, "error": self.error, "capacity": self.capacity,
                "probes": [p.to_json() for p in sorted(self.probes, key=lambda p: p.rate)]}


@dataclass
class CapacityResult:
    scenario: str
    max_failure: float
    max_delayed: float | None
    resolution: float
    seeds: int
    start_rate: float
    cap: float
    floor: float
    duration_s: float
    overrides: dict[str, Any]
    searches: list[Search]
    findings: list[Finding] = field(default_factory=list)
    diagnosed_at: float | None = None
    cached: int = 0
    computed: int = 0
    where: str = ""

    @property
    def baseline(self) -> Search:
        return self.searches[0]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "capacity", "version": __version__, "scenario": self.scenario,
                "max_failure": self.max_failure, "max_delayed": self.max_delayed, "resolution": self.resolution,
                "seeds": self.seeds, "start_rate": self.start_rate, "cap": self.cap, "floor": self.floor,
                "duration_s": self.duration_s, "overrides": self.overrides, "diagnosed_at": self.diagnosed_at,
                "findings": [{"id": f.id, "title": f.title, "severity": f.severity} for f in self.findings],
                "cached": self.cached, "computed": self.computed, "where": self.where,
                "searches": [s.to_json() for s in self.searches]}


class _Searcher:
    """Drives every search: picks the next rate, serves probes from the cache, submits the
    rest to the pool (opened on first need), and adds the fix searches once the baseline
    has failed somewhere."""

    def __init__(self, ref: str, res: CapacityResult, cache: Cache, make_pool: Callable[[], Pool],
                 progress: Callable[[CapacityResult], None] | None) -> None:
        self.ref, self.res, self.cache, self.make_pool, self.progress = ref, res, cache, make_pool, progress
        self.stack = contextlib.ExitStack()
        self.pool: Pool | None = None
        self.ac: Any = None
        self.pending: dict[Any, tuple[Search, float, int, str, bool]] = {}  # future -> (search, rate, seed, key, diag)
        self.collected: dict[tuple[int, float], dict[int, dict[str, Any]]] = {}  # (search id, rate) -> seed -> summary
        self.fixes_added = False

    # -- one probe = `seeds` simulations at one rate ----------------------------------------
    def overrides(self, s: Search, rate: float, seed: int | None = None) -> dict[str, Any]:
        ov = {**self.res.overrides, **s.set}
        sc = load_scenario(self.ref, ov)
        total = sum(w.rate for w in sc.workload)
        for w in sc.workload:
            ov[f"workload.{w.name}.rate"] = w.rate * rate / total
        if seed is not None:
            ov["seed"] = seed
        return ov

    def advance(self, s: Search) -> None:
        """Start the next probe of `s`; probes served whole from the cache are recorded at once."""
        while True:
            rate = s.next_rate(self.res.start_rate, self.res.cap, self.res.floor, self.res.resolution)
            if rate is None:
                return
            diag = not s.fix_id
            base_seed = load_scenario(self.ref, self.res.overrides).seed
            got: dict[int, dict[str, Any]] = {}
            missing = []
            for i in range(self.res.seeds):
                seed = base_seed + i
                try:
                    ov = self.overrides(s, rate, seed)
                    dump = load_scenario(self.ref, ov).model_dump(mode="json")
                except TcpreuseError as e:  # a fix this scenario cannot take: say so, go on
                    if not s.fix_id:
                        raise
                    s.status, s.error = "error", e.message
                    return
                key = point_key(dump, ov)
                hit = self.cache.get(key)
                if hit is not None and (not diag or "findings" in hit):
                    got[seed] = hit
                    self.res.cached += 1
                else:
                    missing.append((seed, key, dump))
            self.collected[(id(s), rate)] = got
            if not missing:
                self.record(s, rate)
                continue
            for seed, key, dump in missing:
                fut = self.ensure_pool().submit(key, dump, diag)
                self.pending[fut] = (s, rate, seed, key, diag)
                self.ac.add(fut)
            return

    def ensure_pool(self) -> Pool:
        if self.pool is None:
            self.pool = self.stack.enter_context(self.make_pool())
            self.res.where = self.pool.where
            self.ac = self.pool.completed([])
        return self.pool

    def record(self, s: Search, rate: float) -> None:
        runs = self.collected.pop((id(s), rate))
        errors = [r["error"] for r in runs.values() if "error" in r]
        ok = [r for r in runs.values() if "error" not in r]
        p = Probe(rate)
        if errors:
            p.error = errors[0]
            s.status, s.error = "error", f"at {rate:,g}/s: {errors[0]}"
            s.probes.append(p)
            return
        p.attempts = sum(r["attempts"] for r in ok)
        p.failed = sum(r["failed"] for r in ok)
        p.delayed_rate = sum(r["delayed_rate"] * r["attempts"] for r in ok) / p.attempts if p.attempts else 0.0
        ffs = [r["first_failure_s"] for r in ok if r["first_failure_s"] is not None]
        p.first_failure_s = min(ffs) if ffs else None
        for r in ok:
            for k, v in r.get("reasons", {}).items():
                p.reasons[k] = p.reasons.get(k, 0) + v
        p.passed = p.failure_rate <= self.res.max_failure and (
            self.res.max_delayed is None or p.delayed_rate <= self.res.max_delayed)
        s.probes.append(p)
        if not s.fix_id and not p.passed and not self.fixes_added:
            first = next(iter(ok), {})
            self.add_fixes([Finding.from_json(f) for f in first.get("findings", [])], rate)
        if self.progress:
            self.progress(self.res)

    def add_fixes(self, findings: list[Finding], rate: float) -> None:
        self.fixes_added = True
        self.res.findings = findings
        self.res.diagnosed_at = rate
        seen: set[str] = set()
        for fd in findings:
            for fx in fd.fixes:
                if not fx.set:
                    continue
                k = repr(sorted(fx.set.items()))
                if k in seen:
                    continue
                seen.add(k)
                s = Search(fx.title, fix_id=fx.id, set=dict(fx.set), commands=list(fx.commands))
                self.res.searches.append(s)
                self.advance(s)

    def run(self) -> None:
        with self.stack:
            self.advance(self.res.baseline)
            while self.pending:
                fut = next(self.ac)
                s, rate, seed, key, _diag = self.pending.pop(fut)
                summary = Pool.result(fut)
                if "error" not in summary:
                    self.cache.put(key, summary)
                self.res.computed += 1
                got = self.collected.get((id(s), rate))
                if got is None:
                    continue
                got[seed] = summary
                if len(got) == self.res.seeds:
                    self.record(s, rate)
                    self.advance(s)


def find_capacity(ref: str, *, max_failure: float, max_delayed: float | None = None, resolution: float = 0.05,
                  seeds: int = 1, overrides: dict[str, Any] | None = None, cap: float | None = None,
                  cache: Cache, make_pool: Callable[[], Pool], fixes: bool = True,
                  progress: Callable[[CapacityResult], None] | None = None) -> CapacityResult:
    if not 0 <= max_failure < 1:
        raise SweepError("--max-failure must be between 0 % and 100 %")
    if not 0 < resolution < 1:
        raise SweepError("--resolution must be between 0 and 1 (e.g. 0.05 for 5 %)")
    if seeds < 1:
        raise SweepError("--seeds must be at least 1")
    ov = dict(overrides or {})
    sc = load_scenario(ref, ov)
    start = round_sig(sum(w.rate for w in sc.workload))
    cap = round_sig(cap if cap is not None else start * 16)
    if cap < start:
        raise SweepError(f"--max-rate {cap:,g} is below the scenario's rate {start:,g}/s")
    res = CapacityResult(ref, max_failure, max_delayed, resolution, seeds, start, cap, start / 1024,
                         sc.duration_s, ov, [Search("as it is")])
    s = _Searcher(ref, res, cache, make_pool, progress)
    if not fixes:
        s.fixes_added = True
    s.run()
    return res
