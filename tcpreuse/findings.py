"""Findings: the one shape of a diagnosis, whatever the evidence came from.

A :class:`Finding` names a cause precisely (which packets, at which hop, by which kernel
rule), carries the numbers that support it, a confidence, and ranked :class:`Fix` es.
A fix that can be expressed as scenario overrides (``set``) is re-simulated by the
what-if engine and gets an :class:`Effect`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("critical", "warning", "info")


@dataclass
class Effect:
    """What a fix changed when the scenario was re-run with it."""

    failure_rate_before: float
    failure_rate_after: float
    delayed_rate_before: float = 0.0
    delayed_rate_after: float = 0.0
    p99_connect_ms_before: float | None = None
    p99_connect_ms_after: float | None = None
    attempts: int = 0
    note: str = ""

    @property
    def resolves(self) -> bool:
        return self.failure_rate_after == 0.0 and self.delayed_rate_after <= self.delayed_rate_before


@dataclass
class Fix:
    id: str
    title: str
    # Scenario overrides that express the fix (keys as accepted by `--set`); empty when
    # the fix cannot be expressed in a scenario (then it is never re-simulated).
    set: dict[str, Any] = field(default_factory=dict)
    # What a person runs on the real system (sysctl -w ..., netsh ..., a config line).
    commands: list[str] = field(default_factory=list)
    caveat: str = ""
    effect: Effect | None = None


@dataclass
class EvidenceItem:
    label: str
    value: Any
    detail: str = ""


@dataclass
class Finding:
    id: str  # stable id, e.g. "syn-hit-server-timewait"
    title: str
    severity: str  # critical | warning | info
    cause: str  # the precise mechanism, in prose
    evidence: list[EvidenceItem] = field(default_factory=list)
    confidence: float = 0.5  # 0..1
    fixes: list[Fix] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    source: str = ""  # simulate | lab | doctor | analyze

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Finding:
        fixes = [
            Fix(**{**f, "effect": Effect(**f["effect"]) if f.get("effect") else None})
            for f in d.get("fixes", [])
        ]
        return cls(
            id=d["id"],
            title=d["title"],
            severity=d["severity"],
            cause=d["cause"],
            evidence=[EvidenceItem(**e) for e in d.get("evidence", [])],
            confidence=d.get("confidence", 0.5),
            fixes=fixes,
            hosts=d.get("hosts", []),
            source=d.get("source", ""),
        )


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then most confident."""
    return sorted(findings, key=lambda f: (SEVERITIES.index(f.severity), -f.confidence, f.id))
