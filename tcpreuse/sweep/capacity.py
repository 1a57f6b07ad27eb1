"""`tcpreuse capacity`: the highest request rate a configuration sustains within a
failure budget, for the scenario as it is and for every fix its diagnosis proposes.

Sustains means in steady state. A short run overstates: 1,000 ports last 20 s at 50/s
before TIME_WAIT (60 s) frees any, so a 20 s run passes 50/s where the steady state is
1,000 / 60 s = 16.7/s. Each probe therefore runs for a warm-up as long as the
longest-lived state the scenario builds (steady_state(): TIME_WAIT on the side that
closes first, the tcp_tw_recycle per-peer window, NAT/conntrack holds, LB session holds),
then a judged window at least as long again; only attempts started in the judged window
count. If their failures still grow (the second half of the window fails more than the
first by more than the budget) the probe is re-run with the window doubled, up to
MAX_EXTENSIONS times, and the result says so.

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
each keeps one probe in flight, so a few searches keep every core busy; when probes wait
for a worker, higher rates go first (the searches that reach them are the long chains).

A failing probe stops as soon as its verdict is certain (sweep/early.py), except the one
that would end its search, whose share the table quotes; if a search still ends on a
stopped probe, that probe is run again to its end. Verdicts, capacities and the table are
those of whole runs (tests/test_capacity.py); only the probe list marks a stopped probe's
share as a lower bound.

A fix's probe whose setting the configuration's own run at that rate provably never
consulted (sweep/inert.py: the run's recorded evidence) is that run: the fix takes it,
waiting for it when it is in flight, instead of simulating it again.
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
from ..sim.estimate import Estimate, check, estimate
from . import SweepError, early, inert
from .cache import Cache, point_key
from .runner import Pool

MIN_WINDOW_S = 30.0  # the judged window is at least this long
MAX_EXTENSIONS = 2  # window doublings while failures still grow


@dataclass
class SteadyState:
    """How long a probe runs to reach steady state, and why."""

    hold_s: float  # the longest-lived state: the warm-up
    window_s: float  # the judged window after it
    holds: list[tuple[str, float]]  # (what, seconds), longest first

    @property
    def duration_s(self) -> float:
        return self.hold_s + self.window_s

    def text(self) -> str:
        what = ", ".join(f"{w} {s:g} s" for w, s in self.holds[:3]) or "no state outlives a connection"
        return (f"each probe warms up for {self.hold_s:g} s, the longest-lived state ({what}), and is "
                f"judged on the attempts of the next {self.window_s:g} s")


def steady_state(sc: Any, min_duration_s: float = 0.0) -> SteadyState:
    """The states a scenario builds that outlive their connection, and so the warm-up a
    probe needs before its failure rate is the steady one. Constants and rules from the
    model: TIME_WAIT on the side that closes first (TCP_TIMEWAIT_LEN; Windows
    TcpTimedWaitDelay, macOS 2 MSL: model.stacks), the tcp_tw_recycle per-peer timestamp
    window (TCP_PAWS_MSL, model.recycle), conntrack/NAT holds, LB session holds."""
    from ..model.profiles import get_profile
    from ..model.stacks import client_stack
    from ..model.timewait import TCP_PAWS_MSL, TCP_TIMEWAIT_LEN

    holds: dict[str, float] = {}

    def add(what: str, s: float) -> None:
        if s > 0:
            holds[what] = max(holds.get(what, 0.0), float(s))

    for w in sc.workload:
        if w.close == "client":
            g = sc.group(w.clients)
            st = client_stack(get_profile(g.profile), g.effective_settings, g.params)
            add(f"TIME_WAIT on {g.name}", st.time_wait_s)
        elif w.close == "server":
            servers = [sc.lb.backends] if w.target == "lb" and sc.lb is not None else [w.target]
            for name in servers:
                add(f"TIME_WAIT on {name}", TCP_TIMEWAIT_LEN)
    for g in sc.host:
        if g.role == "server" and int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0) or 0):
            add(f"tcp_tw_recycle peer window on {g.name}", TCP_PAWS_MSL)
    if sc.nat is not None:
        add("conntrack TIME_WAIT hold at the NAT", sc.nat.time_wait_s)
        add("conntrack CLOSE hold at the NAT", sc.nat.close_s)
    if sc.lb is not None and not sc.lb.ignore_msl:
        add("session hold at the load balancer", sc.lb.session_hold_s)
    ordered = sorted(holds.items(), key=lambda kv: -kv[1])
    hold = ordered[0][1] if ordered else 0.0
    window = max(hold, MIN_WINDOW_S, min_duration_s - hold)
    return SteadyState(hold, window, ordered)


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
    duration_s: float = 0.0  # how long its runs were
    growing: bool = False  # failures still grew at the end of its longest run
    extended: int = 0  # window doublings it took
    stopped_s: float | None = None  # ended early at this simulated time: certain to fail (sweep/early.py)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.attempts if self.attempts else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "attempts": self.attempts, "failed": self.failed,
                "failure_rate": self.failure_rate, "delayed_rate": self.delayed_rate,
                "first_failure_s": self.first_failure_s, "passed": self.passed, "error": self.error,
                "reasons": self.reasons, "duration_s": self.duration_s, "growing": self.growing,
                "extended": self.extended, "stopped_s": self.stopped_s}


@dataclass
class Search:
    label: str
    fix_id: str = ""  # "" for the configuration as it is
    set: dict[str, Any] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    status: str = "running"  # running | found | capped | below_floor | error
    error: str = ""
    shared: int = 0  # runs that were the configuration's own (sweep/inert.py): not simulated again
    shared_why: str = ""

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
                "shared_runs": self.shared, "shared_why": self.shared_why,
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
    shared: int = 0  # fix runs that were the configuration's own runs (sweep/inert.py)
    where: str = ""
    steady: SteadyState | None = None

    @property
    def baseline(self) -> Search:
        return self.searches[0]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "capacity", "version": __version__, "scenario": self.scenario,
                "max_failure": self.max_failure, "max_delayed": self.max_delayed, "resolution": self.resolution,
                "seeds": self.seeds, "start_rate": self.start_rate, "cap": self.cap, "floor": self.floor,
                "duration_s": self.duration_s, "overrides": self.overrides, "diagnosed_at": self.diagnosed_at,
                "findings": [{"id": f.id, "title": f.title, "severity": f.severity} for f in self.findings],
                "cached": self.cached, "computed": self.computed, "shared": self.shared, "where": self.where,
                "steady_state": None if self.steady is None else {
                    "warm_up_s": self.steady.hold_s, "window_s": self.steady.window_s,
                    "holds": [{"state": w, "s": v} for w, v in self.steady.holds],
                    "text": self.steady_text()},
                "searches": [s.to_json() for s in self.searches]}

    def steady_text(self) -> str:
        """How steady state was established, for the output."""
        if self.steady is None:
            return ""
        probes = [p for s in self.searches for p in s.probes if not p.error]
        ext = sum(1 for p in probes if p.extended)
        stopped = sum(1 for p in probes if p.stopped_s is not None)
        grow = sum(1 for p in probes if p.growing and p.passed)
        out = self.steady.text() + (
            f"; failures were flat over the judged window in {len(probes) - ext} of {len(probes)} probes"
            if probes else "")
        if ext:
            out += f", {ext} needed a longer window (doubled up to {MAX_EXTENSIONS} times) before they stopped growing"
        if grow:
            out += f"; {grow} passing probe(s) still grew at the longest window"
        if stopped:
            out += (f"; {stopped} failing probe(s) stopped as soon as they were certain to exceed the budget "
                    "(their share is a lower bound)")
        shared = [s for s in self.searches if s.shared]
        if shared:
            whys = sorted({s.shared_why for s in shared})
            out += (f"; {len(shared)} fix(es) took the runs of the configuration as it is ("
                    f"{sum(s.shared for s in shared)} runs), which never consulted their settings: "
                    + "; ".join(whys))
        return out


class _Searcher:
    """Drives every search: picks the next rate, serves probes from the cache, submits the
    rest to the pool (opened on first need), and adds the fix searches once the baseline
    has failed somewhere."""

    def __init__(self, ref: str, res: CapacityResult, cache: Cache, make_pool: Callable[[], Pool],
                 progress: Callable[[CapacityResult], None] | None, min_duration_s: float = 0.0,
                 early_stop: bool = True, share: bool = True) -> None:
        self.ref, self.res, self.cache, self.make_pool, self.progress = ref, res, cache, make_pool, progress
        self.early_stop, self.share = early_stop, share
        self.min_duration_s = min_duration_s  # the scenario's (or --duration): probes run at least this
        self.stack = contextlib.ExitStack()
        self.pool: Pool | None = None
        self.ac: Any = None
        # future -> (search, rate, seed, its cache key, its key as a stoppable run or "", doublings, stop rule)
        self.pending: dict[Any, tuple[Search, float, int, str, str, int, dict[str, Any] | None]] = {}
        # The baseline's runs, done and in flight, by (rate, doublings, seed): a fix whose
        # runs are provably the baseline's (sweep/inert.py) takes them instead of its own.
        self.base_runs: dict[tuple[float, int, int], tuple[dict[str, Any], dict[str, Any] | None]] = {}
        self.base_flight: set[tuple[float, int, int]] = set()
        # fix runs waiting for the baseline's run in flight: (search, seed, key, stop key, scenario, stop rule)
        self.waiting: dict[tuple[float, int, int],
                           list[tuple[Search, int, str, str, dict[str, Any], dict[str, Any] | None]]] = {}
        self.to_start: list[Search] = []  # fix searches added, started once the baseline went on
        # (search id, rate) -> (window doublings, seed -> summary)
        self.collected: dict[tuple[int, float], tuple[int, dict[int, dict[str, Any]]]] = {}
        self.steady: dict[int, SteadyState] = {}  # search id -> its steady-state plan
        self.fixes_added = False

    # -- one probe = `seeds` simulations at one rate ----------------------------------------
    def overrides(self, s: Search, rate: float, seed: int | None = None, ext: int = 0) -> dict[str, Any]:
        ov = {**self.res.overrides, **s.set}
        sc = load_scenario(self.ref, ov)
        total = sum(w.rate for w in sc.workload)
        for w in sc.workload:
            ov[f"workload.{w.name}.rate"] = w.rate * rate / total
        st = self.steady_of(s, sc)
        ov["duration_s"] = st.hold_s + st.window_s * (1 << ext)
        if seed is not None:
            ov["seed"] = seed
        return ov

    def steady_of(self, s: Search, sc: Any) -> SteadyState:
        """The steady-state plan of a configuration (a fix may change what it holds)."""
        st = self.steady.get(id(s))
        if st is None:
            st = self.steady[id(s)] = steady_state(sc, self.min_duration_s)
        return st

    def advance(self, s: Search) -> None:
        """Start the next probe of `s`; probes served whole from the cache are recorded at once.
        When the search is over and its lowest failing probe was stopped early, that probe
        is run again to its end: the table quotes its failed share, which must be whole.
        Fix searches added meanwhile start after the baseline's next probe is in flight, so
        that one that mirrors it finds that probe there to wait for."""
        self._advance(s)
        while self.to_start:
            self._advance(self.to_start.pop(0))

    def _advance(self, s: Search) -> None:
        while True:
            rate = s.next_rate(self.res.start_rate, self.res.cap, self.res.floor, self.res.resolution)
            if rate is None:
                bad = s.first_failing() if s.status in ("found", "below_floor") else None
                if bad is None or bad.stopped_s is None:
                    return
                s.probes.remove(bad)
                if not self.submit(s, bad.rate, bad.extended, whole=True):
                    return
                continue
            if not self.submit(s, rate, 0):
                return

    def may_stop(self, probes: list[Probe], rate: float, sc: Any) -> bool:
        """Whether a probe may end once it is certain to fail (sweep/early.py): one seed per
        probe, no retries (the window's attempts are then known in advance), and not the
        probe that would end the search if it failed (its share is quoted: run it whole)."""
        if not self.early_stop or self.res.seeds != 1 or not early.stoppable(sc):
            return False
        trial = Search("", probes=[*probes, Probe(rate)])
        return trial.next_rate(self.res.start_rate, self.res.cap, self.res.floor, self.res.resolution) is not None

    def plan(self, s: Search, rate: float, ext: int, whole: bool, probes: list[Probe],
             diag: bool) -> list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]]:
        """The runs of a probe: (seed, cache key, key as a stoppable run or "", scenario,
        stop rule or None), given the search's probes so far (may_stop reads them)."""
        base_seed = load_scenario(self.ref, self.res.overrides).seed
        out = []
        for i in range(self.res.seeds):
            seed = base_seed + i
            ov = self.overrides(s, rate, seed, ext)
            sc = load_scenario(self.ref, ov)
            dump = sc.model_dump(mode="json")
            stop = None
            if not diag and not whole and self.may_stop(probes, rate, sc):
                stop = {"w0": math.ceil(self.steady[id(s)].hold_s - 1e-9), "max_failure": self.res.max_failure,
                        "max_delayed": self.res.max_delayed}
            key = point_key(dump, ov)
            # a stopped run is cached apart: it is no whole run for `sweep` or a later probe
            stop_key = point_key(dump, {**ov, "_stop": stop}) if stop is not None else ""
            out.append((seed, key, stop_key, dump, stop))
        return out

    def lookup(self, key: str, stop_key: str, diag: bool) -> dict[str, Any] | None:
        for k in (key, stop_key):
            if not k:
                continue
            hit = self.cache.get(k)
            if hit is not None and "failed_per_s" in hit and (not diag or "findings" in hit):
                return hit
        return None

    def submit(self, s: Search, rate: float, ext: int, whole: bool = False) -> bool:
        """Start a probe (all seeds at `rate`, window doubled `ext` times). False when it is
        running; True when it was served whole from the cache (and recorded: go on).
        The baseline's probes carry the diagnosis until the fixes are known; the others may
        stop early (may_stop) unless `whole`."""
        diag = not s.fix_id and not self.fixes_added
        try:
            runs = self.plan(s, rate, ext, whole, s.probes, diag)
        except TcpreuseError as e:  # a fix this scenario cannot take: say so, go on
            if not s.fix_id:
                raise
            s.status, s.error = "error", e.message
            return False
        got: dict[int, dict[str, Any]] = {}
        missing = []
        for seed, key, stop_key, dump, stop in runs:
            hit = self.lookup(key, stop_key, diag)
            if hit is not None:
                got[seed] = hit
                self.res.cached += 1
                if s is self.res.baseline:
                    self.base_runs[(rate, ext, seed)] = (hit, stop)
                elif hit.get("shared_why"):  # cached when taken from the baseline: it still is its run
                    self.count_shared(s, hit["shared_why"])
            else:
                missing.append((seed, key, stop_key, dump, stop))
        self.collected[(id(s), rate)] = (ext, got)
        mirror = self.mirrors(s)
        for seed, key, stop_key, dump, stop in missing:
            k = (rate, ext, seed)
            shared = self.take(s, k, key, stop_key, stop) if mirror and k in self.base_runs else None
            if shared is not None:
                got[seed] = shared
                continue
            if mirror and k in self.base_flight:  # (a stopped run's whole re-run too)
                self.waiting.setdefault(k, []).append((s, seed, key, stop_key, dump, stop))
                continue
            self.launch(s, rate, ext, seed, key, stop_key, dump, stop, diag)
        if len(got) == self.res.seeds:
            return self.record(s, rate)
        return False

    def launch(self, s: Search, rate: float, ext: int, seed: int, key: str, stop_key: str,
               dump: dict[str, Any], stop: dict[str, Any] | None, diag: bool) -> None:
        # longest first: the searches of high rates are the long chains of the run
        fut = self.ensure_pool().submit(key, dump, diag, stop, priority=int(rate * (1 << ext)))
        self.pending[fut] = (s, rate, seed, key, stop_key, ext, stop)
        self.ac.add(fut)
        if s is self.res.baseline:
            self.base_flight.add((rate, ext, seed))

    # -- fixes whose runs are the baseline's (sweep/inert.py) ---------------------------------
    def mirrors(self, s: Search) -> bool:
        """Whether `s` may take the baseline's runs: a fix of the kinds inert.py decides, on
        probes as long as the baseline's (the same runs but for the fix's settings)."""
        if not self.share or s is self.res.baseline or not inert.shareable(s.set):
            return False
        mine, base = self.steady.get(id(s)), self.steady.get(id(self.res.baseline))
        return mine is not None and base is not None and (mine.hold_s, mine.window_s) == (base.hold_s, base.window_s)

    def take(self, s: Search, k: tuple[float, int, int], key: str, stop_key: str,
             stop: dict[str, Any] | None) -> dict[str, Any] | None:
        """The baseline's run `k` as the fix's own, when its evidence proves them equal: a
        whole run stands for any; a stopped one only for a run with the same stop rule (the
        two are the same run up to that rule's stop). It is cached as the fix's run."""
        summary, base_stop = self.base_runs[k]
        if "error" in summary or ("stopped_s" in summary and (stop is None or stop != base_stop)):
            return None
        why = inert.why_same(s.set, summary)
        if why is None:
            return None
        # the findings are the baseline's diagnosis, not this configuration's
        out = {k2: v for k2, v in summary.items() if k2 != "findings"}
        out["shared_why"] = why
        self.cache.put(stop_key if "stopped_s" in out else key, out)
        self.count_shared(s, why)
        return out

    def count_shared(self, s: Search, why: str) -> None:
        s.shared += 1
        s.shared_why = why
        self.res.shared += 1

    def resolve(self, k: tuple[float, int, int]) -> None:
        """The baseline's run `k` is in: the fix runs waiting for it take it, or run."""
        rate, ext, seed = k
        for s, _seed, key, stop_key, dump, stop in self.waiting.pop(k, []):
            entry = self.collected.get((id(s), rate))
            if entry is None:
                continue
            shared = self.take(s, k, key, stop_key, stop)
            if shared is None:
                self.launch(s, rate, ext, seed, key, stop_key, dump, stop, False)
                continue
            entry[1][seed] = shared
            if len(entry[1]) == self.res.seeds and self.record(s, rate):
                self.advance(s)

    def ensure_pool(self) -> Pool:
        if self.pool is None:
            self.pool = self.stack.enter_context(self.make_pool())
            self.res.where = self.pool.where
            self.ac = self.pool.completed([])
        return self.pool

    def judge(self, s: Search, rate: float, ext: int, ok: list[dict[str, Any]], p: Probe) -> None:
        """Fill `p` from the judged window (after the warm-up) of each seed's run."""
        st = self.steady[id(s)]
        w0 = math.ceil(st.hold_s - 1e-9)
        n = f = 0
        halves = [[0, 0], [0, 0]]
        delayed = 0.0
        for r in ok:
            if "stopped_s" in r:  # ended once certain to fail: what it saw, over what the window holds
                n += r["window_attempts"]
                f += sum(r["failed_per_s"][w0:])
                delayed += sum(r["delayed_per_s"][w0:])
                p.stopped_s = r["stopped_s"]
                continue
            att, bad = r["attempts_per_s"][w0:], r["failed_per_s"][w0:]
            mid = len(att) // 2
            for h, sl in ((0, slice(0, mid)), (1, slice(mid, None))):
                halves[h][0] += sum(att[sl])
                halves[h][1] += sum(bad[sl])
            n += sum(att)
            f += sum(bad)
            delayed += sum(r["delayed_per_s"][w0:])
        p.attempts, p.failed = n, f
        p.delayed_rate = delayed / n if n else 0.0
        p.duration_s = st.hold_s + st.window_s * (1 << ext)
        p.extended = ext
        fr = [b / a if a else 0.0 for a, b in halves]
        p.growing = fr[1] > 0 and fr[1] > fr[0] + self.res.max_failure / 2

    def record(self, s: Search, rate: float) -> bool:
        """Judge a finished probe. True when it is recorded; False when it was re-submitted
        with a longer window because its failures were still growing."""
        ext, runs = self.collected.pop((id(s), rate))
        errors = [r["error"] for r in runs.values() if "error" in r]
        ok = [r for r in runs.values() if "error" not in r]
        p = Probe(rate)
        if errors:
            p.error = errors[0]
            s.status, s.error = "error", f"at {rate:,g}/s: {errors[0]}"
            s.probes.append(p)
            return False
        self.judge(s, rate, ext, ok, p)
        ffs = [r["first_failure_s"] for r in ok if r["first_failure_s"] is not None]
        p.first_failure_s = min(ffs) if ffs else None
        for r in ok:
            for k, v in r.get("reasons", {}).items():
                p.reasons[k] = p.reasons.get(k, 0) + v
        p.passed = p.failure_rate <= self.res.max_failure and (
            self.res.max_delayed is None or p.delayed_rate <= self.res.max_delayed)
        if p.passed and p.growing and ext < MAX_EXTENSIONS:
            return self.submit(s, rate, ext + 1)  # not steady yet: a longer window
        s.probes.append(p)
        if not s.fix_id and not p.passed and not self.fixes_added:
            first = next(iter(ok), {})
            self.add_fixes([Finding.from_json(f) for f in first.get("findings", [])], rate)
        if self.progress:
            self.progress(self.res)
        return True

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
                self.to_start.append(s)

    def run(self) -> None:
        with self.stack:
            self.advance(self.res.baseline)
            while self.pending or self.waiting:
                if not self.pending:  # cannot happen: a waiting run waits for one in flight
                    raise RuntimeError("capacity: fix runs wait for no baseline run")
                fut = next(self.ac)
                s, rate, seed, key, stop_key, ext, stop = self.pending.pop(fut)
                summary = Pool.result(fut)
                if "error" not in summary:
                    # a stoppable run that went to its end is a whole run: cached as one
                    self.cache.put(stop_key if "stopped_s" in summary else key, summary)
                self.res.computed += 1
                k = (rate, ext, seed)
                if s is self.res.baseline:
                    self.base_flight.discard(k)
                    self.base_runs[k] = (summary, stop)
                entry = self.collected.get((id(s), rate))
                if entry is not None:
                    got = entry[1]
                    got[seed] = summary
                    if len(got) == self.res.seeds and self.record(s, rate):
                        self.advance(s)
                if s is self.res.baseline:
                    self.resolve(k)  # after the baseline went on: its next probe is in flight


PROBES_AT_CAP = 7  # a search's probes, in cost: the doublings sum to < 2 probes at the cap, ~5 bisect near it


def estimate_search(sc: Any, cap: float, steady: SteadyState, seeds: int) -> Estimate:
    """One configuration's search at its most expensive: PROBES_AT_CAP probes at the cap
    rate for the steady-state duration (each fix searched costs about as much again)."""
    total = sum(w.rate for w in sc.workload)
    top = sc.model_copy(update={"duration_s": steady.duration_s})
    top.workload = [w.model_copy(update={"rate": w.rate * cap / total}) for w in sc.workload]
    one = estimate(top)
    n = PROBES_AT_CAP * seeds
    return Estimate(one.attempts * n, one.memory_bytes, one.seconds * n, n)


def find_capacity(ref: str, *, max_failure: float, max_delayed: float | None = None, resolution: float = 0.05,
                  seeds: int = 1, overrides: dict[str, Any] | None = None, cap: float | None = None,
                  cache: Cache, make_pool: Callable[[], Pool], fixes: bool = True,
                  progress: Callable[[CapacityResult], None] | None = None, force: bool = True,
                  time_limit_s: float | None = None, workers: int = 1, early_stop: bool = True,
                  share: bool = True) -> CapacityResult:
    """`force` False: estimate the search first (sim.estimate) and refuse what will not fit
    this machine's memory or `time_limit_s`. `early_stop` False runs every probe to its end
    (the reference the early verdicts are tested against: same capacities, same table);
    `share` False simulates every fix's runs even where they are provably the baseline's
    (sweep/inert.py; the reference the shared runs are tested against)."""
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
    steady = steady_state(sc, sc.duration_s)
    if not force:
        est = estimate_search(sc, cap, steady, seeds)
        check(est, what=f"the capacity search (probes up to {cap:,.0f}/s for {steady.duration_s:g} s each)",
              force=False, time_limit_s=time_limit_s, workers=workers)
    res = CapacityResult(ref, max_failure, max_delayed, resolution, seeds, start, cap, start / 1024,
                         steady.duration_s, ov, [Search("as it is")], steady=steady)
    s = _Searcher(ref, res, cache, make_pool, progress, min_duration_s=sc.duration_s, early_stop=early_stop,
                  share=share)
    if not fixes:
        s.fixes_added = True
    s.run()
    return res
