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
from ..host.records import HostFacts, ListenerUse, TupleUse

if TYPE_CHECKING:
    from ..capture.analysis import CaptureAnalysis
    from ..host.observed import Observed
    from ..result import RunResult
    from ..scenario.schema import Scenario

__all__ = ["Evidence", "FunctionRule", "HostFacts", "ListenerUse", "Rule", "TupleUse", "diagnose", "evidence_of", "load_rules",
           "rule"]


@dataclass
class Evidence:
    source: str  # simulate | lab | doctor | analyze
    run: RunResult | None = None
    scenario: Scenario | None = None
    hosts: dict[str, HostFacts] = field(default_factory=dict)
    capture: CaptureAnalysis | None = None  # tcpreuse.capture.analysis.analyze_paths()
    trace: dict[str, Any] | None = None  # a kernel trace summary (tcpreuse.trace, Summary.to_json())

    def require_capture(self) -> CaptureAnalysis:
        """The capture, for a rule that declared needs={"capture"} (run only when present)."""
        if self.capture is None:
            raise ValueError("this rule needs a capture in its evidence")
        return self.capture

    def has(self, need: str) -> bool:
        if need == "hosts":
            return bool(self.hosts)
        return getattr(self, need) is not None


def evidence_of(observed: list[Observed]) -> Evidence:
    """The doctor's evidence: the HostFacts of each observed host (host.facts.build), with
    names made unique ("web", "web#2")."""
    from ..host.facts import build

    ev = Evidence(source="doctor")
    for obs in observed:
        facts = build(obs)
        name, i = facts.name, 2
        while name in ev.hosts:
            name, i = f"{facts.name}#{i}", i + 1
        facts.name = name
        ev.hosts[name] = facts
    return ev


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
