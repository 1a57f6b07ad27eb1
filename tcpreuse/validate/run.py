"""Run one scenario on the real kernel (lab) and on the model (simulate), and compare.

The order matters: the lab runs first, because a fresh network namespace has
machine-dependent defaults the model cannot know (tcp_max_tw_buckets and
tcp_max_syn_backlog are derived from the ehash size, i.e. from RAM); the simulator is
then given the values the lab's namespaces really had, and the RTT the lab could
realise (the veth's, when the kernel has no netem).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TcpreuseError
from ..kernels.jobs import JobOutcome, KernelFacts
from ..model.profiles import get_profile
from ..result import RunResult
from ..scenario.schema import Scenario
from . import suite
from .compare import Row, compare, over_draws, verdict
from .kernel import Hz
from .metrics import measure

# Sysctls whose default in a new namespace depends on the machine (ehash size): the
# lab's namespaces are read and the values handed to the model.
MACHINE_DEPENDENT = ("net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_max_syn_backlog")
# Round-trip time of a veth pair between namespaces, used for the model when the lab
# could not realise the scenario's rtt_ms (no sch_netem in this kernel).
VETH_RTT_MS = 0.05


class ValidateError(TcpreuseError):
    """A scenario `validate` cannot compare on this kernel."""


@dataclass
class Options:
    progress: Callable[[str], None] | None = None
    hz: Hz | None = None  # the host kernel's, when already known
    keep_results: bool = False
    kernel: str = "host"  # which kernel the lab runs on (tcpreuse.kernels): host | uml
    netfilter: str = "auto"  # the lab's NAT/LB backend (lab/iptables.py choose())
    # cross-check: run the model with this profile instead of the kernel's own (a rule that
    # differs between versions must then disagree)
    model_profile: str | None = None
    trace: bool = False  # trace the lab runs: per-attempt rows (validate/perattempt.py)


@dataclass
class CrossCheck:
    """The model with the other version's profile against the same lab run."""

    profile: str
    rule: str
    disagree: list[str] = field(default_factory=list)  # "metric: simulate vs lab"

    @property
    def discriminates(self) -> bool:
        return bool(self.disagree)

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile, "rule": self.rule, "discriminates": self.discriminates,
                "disagree": self.disagree}


@dataclass
class Outcome:
    name: str
    summary: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    lab_s: float = 0.0
    sim_s: float = 0.0
    interrupted: bool = False
    interrupted_by: str = ""  # the signal's name (SIGINT, SIGTERM, ...) when interrupted
    not_applicable: str | None = None  # why the kernel cannot run it (a sysctl it lacks)
    sim: RunResult | None = None
    lab: RunResult | None = None
    cross: CrossCheck | None = None  # a version-discriminating scenario's cross-check
    drawn: int = 0  # rows that agree only judged over draws of the kernel's secrets (judge_over_draws())

    @property
    def agree(self) -> bool:
        return (self.error is None and not self.interrupted and self.not_applicable is None
                and verdict(self.rows))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "summary": self.summary, "agree": self.agree,
            "error": self.error, "interrupted": self.interrupted,
            "not_applicable": self.not_applicable,
            "rows": [r.to_json() for r in self.rows], "notes": self.notes,
            "lab_s": round(self.lab_s, 2), "sim_s": round(self.sim_s, 2),
            "disagreements": sum(1 for r in self.rows if r.agree is False),
            "judged_over_draws": self.drawn,
            "cross_check": self.cross.to_json() if self.cross is not None else None,
        }


@dataclass
class Report:
    kernel: str
    hz: Hz
    outcomes: list[Outcome] = field(default_factory=list)
    suite: str | None = None
    kernel_name: str = "host"  # which tcpreuse.kernels kernel ran the lab
    model_profile: str | None = None  # a cross-check's profile (else the kernel's own)

    @property
    def applicable(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.not_applicable is None]

    @property
    def agree(self) -> bool:
        """Every applicable scenario agrees (and at least one ran)."""
        return bool(self.applicable) and all(o.agree for o in self.applicable)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "kernel_name": self.kernel_name,
            "model_profile": self.model_profile,
            "hz": self.hz.value, "hz_source": self.hz.source,
            "suite": self.suite, "agree": self.agree,
            "scenarios": [o.to_json() for o in self.outcomes],
        }


def native_overrides(sc: Scenario, hz: int, profile: str = "linux-native") -> tuple[dict[str, Any], list[str]]:
    """Every Linux host group on the kernel's profile (the running kernel's by default), with
    its HZ. Windows and macOS client groups keep their profile: the lab plays them with the
    packet-level emulator, whose every parameter comes from that same profile."""
    bad = [f"{g.name} ({g.profile})" for g in sc.host
           if get_profile(g.profile).os != "linux" and g.role != "client"]
    if bad:
        raise ValidateError(
            f"{sc.name}: host group(s) {', '.join(bad)} are not Linux; validate compares the "
            "model with the running Linux kernel, so every server must be Linux",
            hint="use `tcpreuse lab --approximate` to run a stand-in, or `tcpreuse simulate`")
    out: dict[str, Any] = {}
    notes = []
    native = get_profile(profile)
    for g in sc.host:
        if get_profile(g.profile).os != "linux":
            notes.append(f"host group {g.name}: {g.profile}, played by the packet-level emulator")
            continue
        if get_profile(g.profile).version[:2] != native.version[:2]:
            notes.append(f"host group {g.name}: profile {g.profile} replaced by the running "
                         f"kernel's ({native.name}) for the comparison")
        out[f"host.{g.name}.profile"] = profile
        out[f"host.{g.name}.model.hz"] = hz
    return out, notes


def model_overrides(sc: Scenario, lab: RunResult) -> tuple[dict[str, Any], list[str]]:
    """What the model must be told about the lab's namespaces (see module docstring)."""
    out: dict[str, Any] = {}
    notes = []
    given: dict[tuple[str, Any], list[str]] = {}
    for g in sc.host:
        info = next((lab.hosts[n] for n in g.instance_names() if n in lab.hosts), None)
        if info is None:
            continue
        for name in MACHINE_DEPENDENT:
            if name in g.settings or name not in info.settings:
                continue
            out[f"host.{g.name}.settings.{name}"] = info.settings[name]
            given.setdefault((name, info.settings[name]), []).append(g.name)
    if given:
        notes.append("this machine's defaults in a new namespace given to the model: " + "; ".join(
            f"{name.rsplit('.', 1)[-1]} = {v} ({', '.join(gs)})" for (name, v), gs in given.items()))
    if any("netem unavailable" in n for n in lab.notes):
        out["path.rtt_ms"] = VETH_RTT_MS
        notes.append(f"no netem in this kernel: the model runs with the veth's RTT "
                     f"({VETH_RTT_MS} ms) instead of the scenario's {sc.path.rtt_ms:g} ms")
    return out, notes


def clock_overrides(sc: Scenario, lab: RunResult, sim_first_t: float) -> tuple[dict[str, Any], list[str]]:
    """Start the model's clocks where the kernel's were at the first attempt.

    The lab records CLOCK_MONOTONIC at its t = 0 (meta t0_monotonic); the kernel's seconds
    clock (ktime_get_seconds(), 4.19+: when tcp_tw_reuse frees a TIME_WAIT on 4.19-6.13),
    its ms clock and its jiffies (timer ticks, the 5.18+ port re-salt every 10 s) all count
    from boot, as the model's host clocks count from `uptime_s` (sim/host.py). So every
    Linux host gets the uptime at which the lab's first attempt met the kernel, shifted to
    the model's first attempt: one kernel runs all the lab's namespaces, one clock."""
    t0 = lab.meta.get("t0_monotonic")
    if not isinstance(t0, int | float) or not len(lab.attempts):
        return {}, []
    lab_first = float(np.min(lab.attempts.cols["t"]))
    up = float(t0) + lab_first - sim_first_t
    if up <= 0:
        return {}, []
    linux = [g.name for g in sc.host if get_profile(g.profile).os == "linux"]
    out: dict[str, Any] = {f"host.{g}.model.uptime_s": round(up, 6) for g in linux}
    at = up + sim_first_t
    notes = [f"the model's clocks start from the kernel's: CLOCK_MONOTONIC {at:.3f} s at the "
             f"first attempt (seconds-clock phase {at % 1:.3f} s)"]
    tick = lab.meta.get("tick_delay_s")
    turns = run_turns(lab)
    if turns:
        med = float(np.median(turns))
        out.update({f"host.{g}.model.tick_delay_s": round(med, 6) for g in linux})
        notes.append(f"the kernel's seconds value turned {med * 1000:.1f} ms after each whole second "
                     f"while the lab ran (median of {len(turns)}, {min(turns) * 1000:.1f}-"
                     f"{max(turns) * 1000:.1f} ms; CLOCK_MONOTONIC_COARSE"
                     + (f"; {tick * 1000:.1f} ms measured before it" if isinstance(tick, int | float) else "")
                     + "): ktime_get_seconds() turns over then, in the model too")
    elif isinstance(tick, int | float) and tick > 0:
        out.update({f"host.{g}.model.tick_delay_s": tick for g in linux})
        notes.append(f"the kernel's timer ticks come {tick * 1000:.1f} ms after each whole second "
                     "(CLOCK_MONOTONIC_COARSE): ktime_get_seconds() turns over then, in the model too")
    lag = lab.meta.get("jiffies_lag_s")
    if isinstance(lag, int | float):
        out.update({f"host.{g}.model.jiffies_lag_s": lag for g in linux})
        notes.append(f"the kernel's jiffies lag CLOCK_MONOTONIC by {lag * 1000:.1f} ms (/proc/timer_list): "
                     "the model's jiffies (5.18+ port re-salt every 10 s, timer wheel) count the same")
    return out, notes


def ts_offset_overrides(sc: Scenario, lab: RunResult, profile: str) -> tuple[dict[str, Any], list[str]]:
    """Start the model's TCP timestamp offsets from the kernel's, where the kernel keys them
    per host pair (secure_tcp_ts_off(), 4.11-6.17).

    There each client's offset towards a server is one secret draw for the whole run, and
    which of two clients behind one NAT sends the older TSvals decides every SYN that
    meets the other's TIME_WAIT (PAWS): one coin for the run, not a toss per SYN. The lab's
    loads read the offset of their first connection (getsockopt TCP_TIMESTAMP, lab meta
    `loads[].ts_offsets`); each instance with one offset (one source address, one target)
    gets it as the model parameter ts_offsets. Per 4-tuple (6.18) one connection's offset
    says nothing of the next port's: nothing is given, the model draws. An offset is
    relative to the kernel's ms clock: it is given with the kernel's uptime (clock_overrides())."""
    if get_profile(profile).ts_offset != "hostpair":
        return {}, []
    # (a host with tcp_timestamps != 1 sends no TSval: the 0 its load reads is no draw)
    group_of = {n: g.name for g in sc.host if get_profile(g.profile).os == "linux"
                and int(g.effective_settings.get("net.ipv4.tcp_timestamps", 1)) == 1
                for n in g.instance_names()}
    seen: dict[str, set[int]] = {}
    for ld in lab.meta.get("loads") or []:
        if not isinstance(ld, dict) or ld.get("emulated") or str(ld.get("host")) not in group_of:
            continue
        offs = ld.get("ts_offsets")
        if isinstance(offs, dict):
            seen.setdefault(str(ld["host"]), set()).update(int(v) for v in offs.values())
    # (two loads of one instance to two targets, or two source addresses: two pairs, which
    # the parameter, one offset per instance, cannot say; the model draws for it)
    one = {h: next(iter(v)) for h, v in seen.items() if len(v) == 1}
    if not one:
        return {}, []
    out: dict[str, Any] = {}
    for h, off in one.items():
        out.setdefault(f"host.{group_of[h]}.model.ts_offsets", {})[h] = off
    shown = ", ".join(f"{h} {off:,}" for h, off in sorted(one.items()))
    note = (f"the kernel's TCP timestamp offsets (per host pair on this kernel, secure_tcp_ts_off()), "
            f"read in the lab from each client's first connection (getsockopt TCP_TIMESTAMP), given to "
            f"the model: {shown}")
    if len(one) == 2:
        (a, oa), (b, ob) = sorted(one.items())
        d = (oa - ob) & 0xFFFFFFFF
        d = d - (1 << 32) if d >= 1 << 31 else d
        older = a if d < 0 else b
        note += (f"; {older}'s TSvals are the older by {abs(d) / 1000:,.0f} s, so PAWS rejects its SYNs "
                 f"at the other's TIME_WAITs")
    return out, [note]


def run_turns(lab: RunResult) -> list[float]:
    """How late after each whole second the kernel's seconds value turned (s), for the
    seconds from the lab's first attempt to one past its last (meta seconds_turns, watched
    while the loads ran: lab/clockphase.watch_seconds); empty for a run without them."""
    t0, turns = lab.meta.get("t0_monotonic"), lab.meta.get("seconds_turns")
    if not isinstance(t0, int | float) or not isinstance(turns, list) or not len(lab.attempts):
        return []
    t = lab.attempts.cols["t"]
    lo, hi = float(t0) + float(np.min(t)), float(t0) + float(np.max(t)) + 1.0
    return [float(d) for n, d in turns if lo <= n <= hi]


def seconds_crossings(sc: Scenario, sim: RunResult, lab: RunResult, profile: str) -> Row | None:
    """Where tcp_tw_reuse = 1 frees a TIME_WAIT once the seconds clock has passed the second
    it began in (4.19-6.13, `after_s`): a row (not compared) with how many connections, ok on
    both sides, closed in the lab (its recorded close()) in a later second of the kernel's
    seconds clock than the model's did (the model closes within a ms of the due time). Each
    frees its port a second later in the lab, so the outcome counts may differ by as many;
    the row shows whether they do. None where the rule, the close times or a matching
    schedule is missing."""
    def ts_on(g: Any) -> bool:  # a TIME_WAIT is reusable only with timestamps on the connection
        return int(g.effective_settings.get("net.ipv4.tcp_timestamps", 1)) != 0

    if get_profile(profile).tw_reuse_rule != "after_s" or not any(
            g.role == "client" and int(g.effective_settings.get("net.ipv4.tcp_tw_reuse", 0)) == 1 and ts_on(g)
            for g in sc.host) or not all(ts_on(g) for g in sc.host if g.role == "server"):
        return None
    la, sa = lab.attempts, sim.attempts
    t0 = lab.meta.get("t0_monotonic")
    if "close_ms" not in la.cols or not isinstance(t0, int | float) or len(la) != len(sa) or not len(la):
        return None
    turns = run_turns(lab)
    tick = lab.meta.get("tick_delay_s")
    turn = float(np.median(turns)) if turns else float(tick) if isinstance(tick, int | float) else 0.0
    lt, st = la.cols["t"], sa.cols["t"]
    lab_close = float(t0) + lt + la.cols["close_ms"] / 1000.0
    model_close = float(t0) + float(np.min(lt)) + (st - float(np.min(st))) + sa.cols["connect_ms"] / 1000.0
    both_ok = ~la.failed_mask() & ~sa.failed_mask() & ~np.isnan(lab_close) & ~np.isnan(model_close)
    later = both_ok & (np.floor(lab_close - turn) > np.floor(model_close - turn))
    n = int(later.sum())
    first = f"; the first due {float(lt[later][0] - np.min(lt)):.3f} s after the first attempt" if n else ""
    return Row("timing", "TIME_WAITs begun a second later than the model's (recorded close times)", 0, n,
               None, "not compared",
               "tcp_tw_reuse = 1 on 4.19-6.13 frees a TIME_WAIT once ktime_get_seconds() has passed "
               "the second it began in (tw_ts_recent_stamp); these connections closed in the lab after "
               f"a turn of the seconds clock (taken {turn * 1000:.1f} ms after each whole second) that "
               f"the model's closed before{first}: each frees its port one second later in the lab, "
               "so the outcome counts may differ by as many")


def start_lag_ms(lab: RunResult) -> float:
    """The p99 of how late the lab's loads started their attempts (ms), the worst load's."""
    lags = [float((ld.get("start_lag") or {}).get("p99") or 0.0) for ld in lab.meta.get("loads", [])
            if isinstance(ld, dict)]
    return round(max(lags, default=0.0), 3)


ODD_RANGE = ("in an odd-sized range each scan of __inet_hash_connect() (4.2+) misses one port "
             "of @low parity (it wraps by the even-rounded remaining); the lowest is reachable only "
             "by a scan that starts at offset 0, so the kernel ends one port short or not depending "
             "on its secret, and so does the model with its own")


def scan_wrap(sc: Scenario) -> tuple[int, str] | None:
    """+-1 on the exact counts when a Linux client's ip_local_port_range has an odd size."""
    for g in sc.host:
        rng = g.effective_settings.get("net.ipv4.ip_local_port_range")
        # (a one-port range has no wrap: the offset modulo 1 is always 0)
        if g.role == "client" and rng is not None and (rng[1] - rng[0] + 1) % 2 and rng[1] > rng[0] \
                and get_profile(g.profile).port_alg in ("parity", "perturb256", "perturb64k"):
            return (1, ODD_RANGE)
    return None


QUEUE_TIMING = (
    "the server is application-limited (workers x service_ms below the arrival rate): which "
    "SYN or final ACK finds a free accept-queue slot depends on when accept() returns -- in "
    "the lab a Python thread sleeping service_ms on a shared 2-core machine -- and on where "
    "the timer wheel's buckets fall (six lab runs of v-listen-overflow on 6.18: 222 to 279 "
    "ListenOverflows)")


def app_limited(sc: Scenario) -> str | None:
    """QUEUE_TIMING when some server group is offered more connections per second than its
    workers can serve (workers / service_ms), else None."""
    for g in sc.host:
        if g.role != "server" or g.service_ms <= 0:
            continue
        capacity = g.count * g.workers / (g.service_ms / 1000.0)
        offered = sum(w.connection_rate for w in sc.workload
                      if w.target == g.name or (w.target == "lb" and sc.lb is not None and sc.lb.backends == g.name))
        if offered > capacity:
            return QUEUE_TIMING
    return None


def racy_counters(sc: Scenario) -> frozenset[tuple[str, str]]:
    """Counters the lab leaves to a race: with close = server_rst the lab's client closes
    once it has the answer (lab/realise.py CLOSE_MAP), racing the server's RST."""
    out: set[tuple[str, str]] = set()
    for w in sc.workload:
        if w.close == "server_rst":
            out.add((w.clients, "TcpEstabResets"))
            target = sc.lb.backends if w.target == "lb" and sc.lb is not None else w.target
            out.add((target, "TcpOutRsts"))
    return frozenset(out)


def compare_one(ref: str, overrides: dict[str, Any] | None, lab_out: JobOutcome,
                facts: KernelFacts, keep_results: bool = False,
                model_profile: str | None = None, trace: bool = False) -> Outcome:
    """The model against one lab run (JobOutcome) on the kernel described by `facts`."""
    from ..sim.engine import Engine

    try:
        base = suite.load(ref, overrides)
        name, summary = base.name, base.summary
    except TcpreuseError:
        name, summary = ref, ""
    out = Outcome(name=name, summary=summary, notes=list(lab_out.notes), lab_s=lab_out.seconds)
    if lab_out.not_applicable:
        out.not_applicable = lab_out.not_applicable
        return out
    if lab_out.error or lab_out.result is None:
        out.error = lab_out.error or "the lab produced no result"
        if "interrupted" in out.error:
            out.interrupted = True
            out.interrupted_by = next((n for n in ("SIGTERM", "SIGHUP", "SIGINT") if n in out.error), "SIGINT")
        return out
    lab = lab_out.result
    ov = lab_out.overrides
    sc = suite.load(ref, ov)
    out.interrupted = bool(lab.meta.get("interrupted"))
    out.interrupted_by = str(lab.meta.get("interrupted") or "") if out.interrupted else ""
    more, more_notes = model_overrides(sc, lab)
    out.notes += more_notes + [f"lab: {n}" for n in lab.notes if "netem unavailable" not in n]
    if model_profile is not None:
        ov = suite.with_profile(ov, model_profile)
        out.notes.append(f"cross-check: the model runs {get_profile(model_profile).name}, the lab "
                         f"ran Linux {facts.release}")
    sc_sim = suite.load(ref, {**ov, **more})
    t0 = time.monotonic()
    sim = Engine(sc_sim).run()
    clocks, clock_notes = clock_overrides(sc, lab, measure(sim).first_t)
    if clocks:  # (an offset means something only on the kernel's one ms clock, the hosts' uptime)
        ts, ts_notes = ts_offset_overrides(sc, lab, facts.profile)
        clocks.update(ts)
        clock_notes += ts_notes
    if clocks:  # arrivals do not depend on the clocks: the same run, from the kernel's phase
        sim = Engine(suite.load(ref, {**ov, **more, **clocks})).run()
        out.notes += clock_notes
    fixed = all(w.count is not None for w in sc.workload)

    def model(ov_: dict[str, Any], draw: int) -> RunResult:
        """The model under the kernel's secrets' `draw`-th draw (0: the scenario's seed's)."""
        return Engine(suite.load(ref, {**ov_, **more, **clocks, "secrets_seed": sc.seed + draw})).run()

    def rows_for(sim: RunResult, profile: str) -> list[Row]:
        return compare(measure(sim), measure(lab), fixed_count=fixed and not out.interrupted,
                       racy=racy_counters(sc),
                       chance_reason=suite.chance_reason(ref, get_profile(profile).ts_offset),
                       wrap=scan_wrap(sc), queue_reason=app_limited(sc),
                       jiffy_ms=1000.0 / facts.hz, lag_ms=start_lag_ms(lab),
                       chance_outcomes=ref in suite.CHANCE_OUTCOMES,
                       chance_retries=ref in suite.CHANCE_RETRIES,
                       coin_ports=suite.CHANCE_PORTS.get(ref))

    own = model_profile or facts.profile
    out.rows = rows_for(sim, own)
    out.drawn = judge_over_draws(out.rows, lambda k: rows_for(model(ov, k), own))
    crossed = seconds_crossings(sc, sim, lab, own)
    if crossed is not None:
        out.rows.append(crossed)
    if model_profile is None and ref in suite.DISCRIMINATING:
        other = suite.cross_profile(get_profile(facts.profile).version)
        ov_x = suite.with_profile(ov, other)
        rows_x = rows_for(model(ov_x, 0), other)
        judge_over_draws(rows_x, lambda k: rows_for(model(ov_x, k), other))
        out.cross = CrossCheck(other, suite.DISCRIMINATING[ref], [
            f"{r.metric}: {_short(r.sim)} vs {_short(r.lab)}" for r in rows_x if r.agree is False])
    out.sim_s = time.monotonic() - t0
    if trace:
        from .perattempt import rows as per_attempt

        extra, extra_notes = per_attempt(sim, lab, chance=suite.CHANCE.get(ref) or app_limited(sc))
        out.rows += extra
        out.notes += extra_notes
    if keep_results:
        out.sim, out.lab = sim, lab
    return out


# How many more draws of the kernel's secrets the model is run under when its first run
# disagrees with the lab (compare.over_draws()). Each is one run of a small scenario
# (10-130 ms); a lab value from the model's own distribution falls outside the range of
# DRAWS + 1 draws with probability 2 / (DRAWS + 2), ~3 %.
DRAWS = 60
# ...and no more than this many seconds of them (a large user scenario): fewer draws, a
# narrower range, and the row says how many
DRAWS_BUDGET_S = 30.0


def judge_over_draws(rows: list[Row], rows_under: Callable[[int], list[Row]],
                     budget_s: float = DRAWS_BUDGET_S) -> int:
    """The kernel's secrets (port offsets and their random increments, ISNs, timestamp
    offsets where not measured, NAT and LB draws) are the machine's and unknowable: the
    lab's run is one draw of them, the model's run with the scenario's seed another. When
    a row disagrees, the model runs under DRAWS more draws (Scenario.secrets_seed; the
    arrivals, the measured clocks and offsets stay; at most budget_s of them, at least
    one) and such a row is judged against them (compare.over_draws()). Returns how many
    rows were so judged agreeing."""
    if verdict(rows):
        return 0
    draws: list[list[Row]] = []
    end = time.monotonic() + budget_s
    for k in range(1, DRAWS + 1):
        draws.append(rows_under(k))
        if time.monotonic() > end:
            break
    return over_draws(rows, draws)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".")
    if isinstance(v, dict | list):
        return "…"
    return str(v)


def validate_many(refs: list[str], overrides: dict[str, Any] | None = None,
                  opts: Options | None = None, suite_name: str | None = None) -> Report:
    """Every lab run on the chosen kernel (one boot for a bootable kernel), then the model
    for each with that kernel's profile and HZ. A scenario that fails to run is reported,
    not fatal (unless it is the only one); a Ctrl-C ends the run with what was compared."""
    from ..kernels import LabJob, get_kernel

    opts = opts or Options()
    kernel = get_kernel(opts.kernel)
    # a slower kernel than the host gets its scenarios paced (kernels/pace.py)
    jobs = [LabJob(ref=ref, overrides=dict(overrides or {}), native=True, netfilter=opts.netfilter,
                   pace=opts.kernel != "host", trace=opts.trace, sequential=ref in suite.SEQUENTIAL,
                   discriminate=ref in suite.DISCRIMINATING and opts.model_profile is None)
            for ref in refs]
    if opts.model_profile is not None:
        get_profile(opts.model_profile)  # an unknown profile fails before any lab runs
    for ref in refs:  # a bad reference or a non-Linux host fails before any lab runs
        native_overrides(suite.load(ref, overrides), 100)
    try:
        facts, labs = kernel.run(jobs, opts.progress)
    except KeyboardInterrupt:
        from ..lab.run import LabInterrupted

        raise LabInterrupted("validate interrupted before any scenario was compared") from None
    hz = opts.hz if opts.hz is not None and opts.kernel == "host" else Hz(facts.hz, facts.hz_source)
    if hz.value != facts.hz:
        facts = KernelFacts(**{**facts.to_json(), "hz": hz.value, "hz_source": hz.source})
    rep = Report(kernel=facts.release, hz=hz, suite=suite_name, kernel_name=opts.kernel,
                 model_profile=opts.model_profile)
    for ref, lab_out in zip(refs, labs, strict=False):
        if len(refs) == 1 and lab_out.error and lab_out.result is None:
            raise TcpreuseError(lab_out.error)
        if opts.progress and lab_out.result is not None:
            opts.progress(f"{ref}: simulate (model, {facts.profile}, HZ {hz.value})")
        o = compare_one(ref, overrides, lab_out, facts, opts.keep_results, opts.model_profile, opts.trace)
        rep.outcomes.append(o)
        if o.interrupted:
            break
    return rep
