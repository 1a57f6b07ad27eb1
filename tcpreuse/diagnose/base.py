"""Evidence and diagnosis rules as plug-ins.

Every source of evidence fills an :class:`Evidence`: a simulated or lab run (`run`,
`scenario`), a live host or snapshot (`hosts`), a packet capture (`capture`). Diagnosis is
organised by mechanism: each module under ``tcpreuse/diagnose/rules/`` declares one
:class:`Mechanism` (its finding ids). A mechanism whose evidence kinds overlap has one
typed fact record, one small extractor per evidence kind (:meth:`Mechanism.extractor`:
evidence -> facts) and one finding builder (:meth:`Mechanism.builder`: fact -> findings,
the id picked per evidence kind from ``Mechanism.ids``); adding an evidence kind means
adding an extractor. Findings that only one kind of evidence can show are plain rules
(:meth:`Mechanism.rule`: evidence -> findings). A rule runs whenever its evidence is
present; :func:`diagnose` imports them all and runs them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..findings import EvidenceItem, Finding, Fix, sort_findings
from ..host.records import HostFacts, ListenerUse, TupleUse

if TYPE_CHECKING:
    from ..capture.analysis import CaptureAnalysis
    from ..host.observed import Observed
    from ..result import RunResult
    from ..scenario.schema import Scenario

__all__ = ["EVIDENCE_KINDS", "Evidence", "EvidenceKind", "Fact", "FactRule", "FunctionRule", "HostFacts", "ListenerUse", "Mechanism", "Rule", "TupleUse",
           "declared_findings", "diagnose", "evidence_of", "load_rules"]


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

    def require_run(self) -> RunResult:
        """The run, for a rule or extractor of the `run` evidence kind (run only when present)."""
        if self.run is None:
            raise ValueError("this rule needs a run in its evidence")
        return self.run

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
    mechanism: str
    evidence: str
    emits: tuple[str, ...]

    def check(self, ev: Evidence) -> list[Finding]: ...


EvidenceKind = Literal["run", "capture", "hosts", "trace"]
EVIDENCE_KINDS: tuple[EvidenceKind, ...] = ("run", "capture", "hosts", "trace")


@dataclass
class FunctionRule:
    """One mechanism read from one kind of evidence: `fn(ev)` returns findings whose ids are
    among `emits` (declared by the rule, documented in docs/findings.md)."""

    id: str
    mechanism: str
    evidence: str
    emits: tuple[str, ...]
    fn: Callable[[Evidence], list[Finding]]

    def check(self, ev: Evidence) -> list[Finding]:
        return _checked(self, ev, self.fn(ev))


@dataclass(frozen=True)
class Fact:
    """What every mechanism's fact record carries: the evidence kind it was read from, the
    hosts it names, figures only that evidence shows (listed as they are, after the
    builder's) and fixes only that evidence can name (a scenario's groups, a host's sysctls)."""

    source: EvidenceKind
    hosts: tuple[str, ...] = ()
    context: tuple[EvidenceItem, ...] = ()
    fixes: tuple[Fix, ...] = ()


# how a builder says where it saw something, per evidence kind
SEEN = {"run": "In the run", "capture": "In the capture", "hosts": "On this host", "trace": "In the kernel trace"}


def _checked(rule: Rule, ev: Evidence, out: list[Finding]) -> list[Finding]:
    for f in out:
        if f.id not in rule.emits:
            raise AssertionError(f"rule {rule.id} emitted finding {f.id!r}, which it does not declare")
        f.source = f.source or ev.source
    return out


@dataclass
class FactRule:
    """One extractor of a mechanism's fact record from one kind of evidence, and the
    mechanism's builder: `extract(ev)` gives a fact, a list of them (one per host, client
    or server) or None; `mechanism.build(fact)` words each as findings."""

    id: str
    mechanism: str
    evidence: str
    emits: tuple[str, ...]
    extract: Callable[[Evidence], Any]

    def check(self, ev: Evidence) -> list[Finding]:
        got = self.extract(ev)
        facts = [] if got is None else got if isinstance(got, list) else [got]
        build = MECHANISMS[self.mechanism].build
        if build is None:
            raise AssertionError(f"mechanism {self.mechanism} has extractors but no builder")
        if any(fact.source != self.evidence for fact in facts):
            raise AssertionError(f"extractor {self.id} gave a fact of another evidence kind")
        return _checked(self, ev, [f for fact in facts for f in build(fact)])


@dataclass
class Mechanism:
    """A failure mechanism (port exhaustion, TIME_WAIT collision, ...): the findings it may
    give, with one line each; `ids`, the finding id its builder gives per evidence kind."""

    name: str
    title: str
    findings: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)
    build: Callable[[Any], list[Finding]] | None = None

    def _register(self, evidence: str, ids: tuple[str, ...], name: str, make: Callable[[str], Rule]) -> Rule:
        if evidence not in EVIDENCE_KINDS:
            raise ValueError(f"unknown evidence kind {evidence!r}")
        undeclared = [i for i in ids if i not in self.findings]
        if undeclared:
            raise ValueError(f"mechanism {self.name} does not declare findings {undeclared}")
        rid = f"{self.name}.{evidence}" + (f".{name}" if name else "")
        if rid in REGISTRY:
            raise ValueError(f"rule {rid} registered twice")
        REGISTRY[rid] = r = make(rid)
        MECHANISMS[self.name] = self
        return r

    def rule(self, evidence: str, emits: str | tuple[str, ...], name: str = ""
             ) -> Callable[[Callable[[Evidence], list[Finding]]], Rule]:
        """Register `fn(ev) -> list[Finding]` reading `evidence` (one of EVIDENCE_KINDS)."""
        ids = (emits,) if isinstance(emits, str) else emits
        return lambda fn: self._register(evidence, ids, name, lambda rid: FunctionRule(
            id=rid, mechanism=self.name, evidence=evidence, emits=ids, fn=fn))

    def extractor(self, evidence: str, name: str = "") -> Callable[[Callable[[Evidence], Any]], Rule]:
        """Register `fn(ev) -> Fact | list[Fact] | None` reading `evidence`; the mechanism's
        builder words the facts, with the finding id `self.ids[evidence]`."""
        if evidence not in self.ids:
            raise ValueError(f"mechanism {self.name} has no finding id for {evidence!r} evidence")
        ids = (self.ids[evidence],)
        return lambda fn: self._register(evidence, ids, name, lambda rid: FactRule(
            id=rid, mechanism=self.name, evidence=evidence, emits=ids, extract=fn))

    def builder(self, fn: Callable[[Any], list[Finding]]) -> Callable[[Any], list[Finding]]:
        """Register the one function that words this mechanism's fact record as findings."""
        self.build = fn
        MECHANISMS[self.name] = self
        return fn


REGISTRY: dict[str, Rule] = {}
MECHANISMS: dict[str, Mechanism] = {}


def load_rules() -> dict[str, Rule]:
    """Import every mechanism module under diagnose/rules/ (each registers its rules)."""
    from . import rules as pkg

    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{m.name}")
    return REGISTRY


def declared_findings() -> dict[str, Mechanism]:
    """Every finding id a rule may emit -> its mechanism (ids are unique across mechanisms)."""
    load_rules()
    out: dict[str, Mechanism] = {}
    for mech in MECHANISMS.values():
        for fid in mech.findings:
            if fid in out:
                raise ValueError(f"finding {fid} declared by {out[fid].name} and {mech.name}")
            out[fid] = mech
    return out


def diagnose(ev: Evidence, only: set[str] | None = None) -> list[Finding]:
    """Run every rule whose evidence is present (`only`: rule ids, mechanisms or finding
    ids); findings sorted, most severe first."""
    findings: list[Finding] = []
    for r in load_rules().values():
        if only is not None and not ({r.id, r.mechanism, *r.emits} & only):
            continue
        if ev.has(r.evidence):
            findings.extend(r.check(ev))
    return sort_findings(findings)
