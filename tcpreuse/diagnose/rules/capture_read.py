"""Capture rule: say so when the capture could not be read completely."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding
from ..base import Evidence, rule


@rule("capture-incomplete", needs={"capture"})
def incomplete(ev: Evidence) -> list[Finding]:
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
