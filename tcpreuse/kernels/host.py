"""The running kernel: lab jobs run in this process, in network namespaces."""

from __future__ import annotations

from pathlib import Path

from . import Progress
from .jobs import JobOutcome, KernelFacts, LabJob, read_facts, run_jobs


class HostKernel:
    name = "host"

    def __init__(self) -> None:
        self._facts: KernelFacts | None = None

    def facts(self) -> KernelFacts:
        if self._facts is None:
            self._facts = read_facts()
        return self._facts

    def run(self, jobs: list[LabJob], progress: Progress = None,
            capture_to: Path | None = None) -> tuple[KernelFacts, list[JobOutcome]]:
        from ..lab.netns import require_root

        require_root()
        facts = self.facts()
        return facts, run_jobs(jobs, facts, progress, capture_root=capture_to)
