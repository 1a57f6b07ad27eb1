"""Run one scenario on the real kernel (lab) and on the model (simulate), and compare.

The order matters: the lab runs first, because a fresh network namespace has
machine-dependent defaults the model cannot know (tcp_max_tw_buckets and
tcp_max_syn_backlog are derived from the ehash size, i.e. from RAM); the simulator is
then given the values the lab's namespaces really had, and the RTT the lab could
realise (the veth's, when the kernel has no netem).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import TcpreuseError
from ..model.profiles import get_profile
from ..result import RunResult
from ..scenario.schema import Scenario
from . import suite
from .compare import Row, compare, verdict
from .kernel import Hz, running_hz
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
    hz: Hz | None = None
    keep_results: bool = False


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
    sim: RunResult | None = None
    lab: RunResult | None = None

    @property
    def agree(self) -> bool:
        return self.error is None and not self.interrupted and verdict(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "summary": self.summary, "agree": self.agree,
            "error": self.error, "interrupted": self.interrupted,
            "rows": [r.to_json() for r in self.rows], "notes": self.notes,
            "lab_s": round(self.lab_s, 2), "sim_s": round(self.sim_s, 2),
            "disagreements": sum(1 for r in self.rows if r.agree is False),
        }


@dataclass
class Report:
    kernel: str
    hz: Hz
    outcomes: list[Outcome] = field(default_factory=list)
    suite: str | None = None

    @property
    def agree(self) -> bool:
        return bool(self.outcomes) and all(o.agree for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel, "hz": self.hz.value, "hz_source": self.hz.source,
            "suite": self.suite, "agree": self.agree,
            "scenarios": [o.to_json() for o in self.outcomes],
        }


def native_overrides(sc: Scenario, hz: int) -> tuple[dict[str, Any], list[str]]:
    """Every host group on the running kernel's profile, with this kernel's HZ."""
    bad = [f"{g.name} ({g.profile})" for g in sc.host if get_profile(g.profile).os != "linux"]
    if bad:
        raise ValidateError(
            f"{sc.name}: host group(s) {', '.join(bad)} are not Linux; validate compares the "
            "model with the running Linux kernel, so every host must be Linux",
            hint="use `tcpreuse lab --approximate` to run a stand-in, or `tcpreuse simulate`")
    out: dict[str, Any] = {}
    notes = []
    native = get_profile("linux-native")
    for g in sc.host:
        if get_profile(g.profile).version[:2] != native.version[:2]:
            notes.append(f"host group {g.name}: profile {g.profile} replaced by the running "
                         f"kernel's ({native.name}) for the comparison")
        out[f"host.{g.name}.profile"] = "linux-native"
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


RESALT = ("the kernel re-salts its port offsets every 10 s of jiffies (secure_ipv4_port_ephemeral(), "
          "5.18+); a re-salt inside the run restarts the scan at a new offset, which may land on a "
          "port freed moments ago (no TIME_WAIT holds it), so fewer distinct ports are used. When "
          "it falls is the machine's jiffies phase, and the table's random increments make the new "
          "offsets the kernel's own; the model re-salts on its own phase")


def resalt_reuse(sc: Scenario) -> str | None:
    """RESALT when a 5.18+ Linux client frees ports during the run (closes without keeping
    a TIME_WAIT: RST close, server-first close, or more closes than tcp_max_tw_buckets)."""
    for w in sc.workload:
        g = sc.group(w.clients)
        if g.role != "client" or get_profile(g.profile).port_secret_epoch_s is None:
            continue
        max_tw = int(g.effective_settings.get("net.ipv4.tcp_max_tw_buckets", 1 << 30))
        frees = w.close != "client" or (w.count is None or w.count > max_tw)
        if frees:
            return RESALT
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


def validate(ref: str, overrides: dict[str, Any] | None = None,
             opts: Options | None = None) -> Outcome:
    """Lab then model for one scenario (a validation name, a file or a built-in)."""
    from ..lab.run import LabOptions, run_lab
    from ..sim.engine import Engine

    opts = opts or Options()
    hz = opts.hz or running_hz()
    base = suite.load(ref, overrides)
    native, notes = native_overrides(base, hz.value)
    ov = {**(overrides or {}), **native}
    sc = suite.load(ref, ov)
    out = Outcome(name=sc.name, summary=sc.summary, notes=list(notes))

    def say(msg: str) -> None:
        if opts.progress:
            opts.progress(f"{sc.name}: {msg}")

    say("lab (real kernel)")
    t0 = time.monotonic()
    lab = run_lab(sc, LabOptions(progress=None))
    out.lab_s = time.monotonic() - t0
    out.interrupted = bool(lab.meta.get("interrupted"))
    more, more_notes = model_overrides(sc, lab)
    out.notes += more_notes + [f"lab: {n}" for n in lab.notes if "netem unavailable" not in n]
    sc_sim = suite.load(ref, {**ov, **more})
    say("simulate (model)")
    t0 = time.monotonic()
    sim = Engine(sc_sim).run()
    out.sim_s = time.monotonic() - t0
    fixed = all(w.count is not None for w in sc.workload)
    out.rows = compare(measure(sim), measure(lab), fixed_count=fixed and not out.interrupted,
                       racy=racy_counters(sc), chance_reason=suite.CHANCE.get(ref),
                       wrap=scan_wrap(sc), queue_reason=app_limited(sc), resalt_reason=resalt_reuse(sc),
                       jiffy_ms=1000.0 / hz.value)
    if opts.keep_results:
        out.sim, out.lab = sim, lab
    return out


def validate_many(refs: list[str], overrides: dict[str, Any] | None = None,
                  opts: Options | None = None, suite_name: str | None = None) -> Report:
    """Each scenario in turn; a scenario that fails to run is reported, not fatal, but a
    Ctrl-C ends the run with what was compared so far."""
    from ..lab.netns import require_root

    require_root()
    opts = opts or Options()
    hz = opts.hz or running_hz()
    opts.hz = hz
    rep = Report(kernel=platform.release(), hz=hz, suite=suite_name)
    for ref in refs:
        try:
            o = validate(ref, overrides, opts)
        except ValidateError:
            raise
        except TcpreuseError as e:
            if len(refs) == 1:
                raise
            o = Outcome(name=ref, summary="", error=e.message)
        except KeyboardInterrupt:
            rep.outcomes.append(Outcome(name=ref, summary="", interrupted=True,
                                        error="interrupted"))
            break
        rep.outcomes.append(o)
        if o.interrupted:
            break
    return rep
