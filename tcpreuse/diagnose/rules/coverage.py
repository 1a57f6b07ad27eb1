"""How complete the evidence is: a capture read only in part, a trace that lost events.
Not a failure mechanism; it says how far the other findings can be trusted."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding
from ..base import Evidence, Mechanism

COVERAGE = Mechanism("coverage", "Evidence coverage", {
    "capture-incomplete": "part of the capture could not be read",
    "trace-lost-events": "the kernel trace lost events: its counts are lower bounds",
})


@COVERAGE.rule("capture", "capture-incomplete")
def from_capture(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    bad = [r for r in an.reports if not r.complete]
    if not bad:
        return []
    evidence = [EvidenceItem(r.path, r.summary(), "; ".join(r.warnings[:3])) for r in bad]
    return [Finding(
        id="capture-incomplete",
        title="Part of the capture could not be read; the analysis covers what was",
        severity="info",
        cause=("Reading stopped early or skipped damaged records (truncated file, a cut last record, "
               "or garbage in the middle). Everything before and after the damage that could be "
               "resynchronised was analysed; attempts that straddle the damage may look unanswered."),
        evidence=evidence, confidence=1.0)]


@COVERAGE.rule("trace", "trace-lost-events")
def from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    lost = doc.get("lost_events", 0)
    if not lost:
        return []
    return [Finding(
        id="trace-lost-events", title=f"The trace lost {lost:,} events: its counts are lower bounds",
        severity="info",
        cause=("bpftrace's perf buffer overflowed: the kernel produced events faster than they were read. "
               "Narrow the trace (--port, --netns, --reasons) so the kernel filters more."),
        evidence=[EvidenceItem("lost events", lost), EvidenceItem("events read", doc.get("events", 0))],
        confidence=1.0)]
