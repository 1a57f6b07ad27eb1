"""Evidence and diagnosis rules as plug-ins.

Every source of evidence fills an :class:`Evidence`: a simulated or lab run (`run`,
`scenario`), a live host or snapshot (`hosts`), a packet capture (`capture`). A rule is a
small object with an `id`, the evidence it `needs`, and `check(ev) -> list[Finding]`; it
runs whenever its evidence is present, so the same rule fires on a simulation, a lab
run, a live host or a capture. Rules register themselves with :func:`rule` in modules
under ``tcpreuse/diagnose/rules/``; :func:`diagnose` imports them all and runs them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..findings import Finding, sort_findings

if TYPE_CHECKING:
    from ..result import RunResult
    from ..scenario.schema import Scenario


@dataclass
class TupleUse:
    """Local ports used toward one destination from one source address (doctor, sim)."""

    src: str
    dst: str
    dport: int
    established: int = 0
    time_wait: int = 0
    other: int = 0  # SYN_SENT, FIN_WAIT*, CLOSE_WAIT, LAST_ACK ...
    budget: int = 0  # ports connect() may use for this tuple
    rate_per_s: float | None = None  # new connections per second (sampled)
    seconds_to_exhaustion: float | None = None
    next_free_in_s: float | None = None  # when the oldest TIME_WAIT frees up

    @property
    def in_use(self) -> int:
        return self.established + self.time_wait + self.other


@dataclass
class ListenerUse:
    addr: str
    port: int
    queue: int  # current accept-queue length (ss Recv-Q)
    backlog: int  # effective max (ss Send-Q)


@dataclass
class HostFacts:
    """What is known of one host, whatever the source. Absent knowledge is None/empty."""

    name: str
    role: str | None = None  # client | server | nat | lb | None (unknown)
    os: str = "linux"
    kernel: tuple[int, int, int] | None = None
    profile: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # names as in model.settings
    counters: dict[str, int] = field(default_factory=dict)  # deltas over window_s (nstat names)
    counters_absolute: dict[str, int] = field(default_factory=dict)
    counters_absent: set[str] = field(default_factory=set)  # do not exist on this kernel
    window_s: float | None = None
    time_wait: int | None = None
    established: int | None = None
    tuples: list[TupleUse] = field(default_factory=list)
    listeners: list[ListenerUse] = field(default_factory=list)
    conntrack: dict[str, int] | None = None  # {"count": n, "max": m}
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    source: str  # simulate | lab | doctor | analyze
    run: RunResult | None = None
    scenario: Scenario | None = None
    hosts: dict[str, HostFacts] = field(default_factory=dict)
    capture: Any = None  # capture summary object from tcpreuse.capture
    trace: dict[str, Any] | None = None  # a kernel trace summary (tcpreuse.trace, Summary.to_json())

    def has(self, need: str) -> bool:
        if need == "hosts":
            return bool(self.hosts)
        return getattr(self, need) is not None


class Rule(Protocol):
    id: str
    needs: frozenset[str]

    def check(self, ev: Evidence) -> list[Finding]: ...


@dataclass
class FunctionRule:
    id: str
    needs: frozenset[str]
    fn: Callable[[Evidence], list[Finding]]

    def check(self, ev: Evidence) -> list[Finding]:
        out = self.fn(ev)
        for f in out:
            f.source = f.source or ev.source
        return out


REGISTRY: dict[str, Rule] = {}


def rule(id: str, needs: set[str] | frozenset[str]) -> Callable[[Callable[[Evidence], list[Finding]]], Rule]:
    """Register a function `fn(ev) -> list[Finding]` as a diagnosis rule."""

    def deco(fn: Callable[[Evidence], list[Finding]]) -> Rule:
        r = FunctionRule(id=id, needs=frozenset(needs), fn=fn)
        REGISTRY[id] = r
        return r

    return deco


_loaded: set[str] = set()

# Rule modules are named by the evidence they read (run_*, host_*, capture_*); a source
# loads only the modules that can fire on its evidence.
MODULE_PREFIXES = {"run": ("run_",), "hosts": ("host_",), "capture": ("capture_",), "trace": ("trace_",)}


def load_rules(prefixes: tuple[str, ...] | None = None) -> dict[str, Rule]:
    """Import rule modules (all, or those whose name starts with one of `prefixes`)."""
    from . import rules as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name in _loaded or (prefixes is not None and not m.name.startswith(prefixes)):
            continue
        importlib.import_module(f"{pkg.__name__}.{m.name}")
        _loaded.add(m.name)
    return REGISTRY


def diagnose(ev: Evidence, only: set[str] | None = None) -> list[Finding]:
    """Run every rule whose evidence is present; findings sorted, most severe first."""
    findings: list[Finding] = []
    present = tuple(p for need, ps in MODULE_PREFIXES.items() if ev.has(need) for p in ps)
    for r in load_rules(present).values():
        if only is not None and r.id not in only:
            continue
        if all(ev.has(n) for n in r.needs):
            findings.extend(r.check(ev))
    return sort_findings(findings)
