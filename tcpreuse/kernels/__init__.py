"""Kernels the lab can run on: the running one (`host`) and bootable ones (`uml`).

A kernel runs lab jobs (a scenario reference, overrides, options) and says what it is
(KernelFacts: release, CONFIG_HZ, which sysctls exist, whether nftables can realise the
ip family). The same job code (jobs.py) runs on every kernel: in this process for the
host, inside the booted kernel (guest.py) for the others, so `lab` and `validate` get
the same RunResult whichever kernel ran it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..errors import TcpreuseError
from .jobs import JobOutcome, KernelFacts, LabJob

Progress = Callable[[str], None] | None

KERNELS = ("host", "uml")


class Kernel(Protocol):
    name: str

    def run(self, jobs: list[LabJob], progress: Progress = None,
            capture_to: Path | None = None) -> tuple[KernelFacts, list[JobOutcome]]:
        """Run the jobs in order; the kernel's facts and one outcome per job. The pcaps of
        jobs with `capture` end up in `capture_to`."""
        ...


def get_kernel(name: str) -> Kernel:
    if name == "host":
        from .host import HostKernel

        return HostKernel()
    if name == "uml":
        from .uml import UmlKernel

        return UmlKernel()
    raise TcpreuseError(f"unknown kernel {name!r}", hint="kernels: " + ", ".join(KERNELS))


__all__ = ["KERNELS", "JobOutcome", "Kernel", "KernelFacts", "LabJob", "Progress", "get_kernel"]
