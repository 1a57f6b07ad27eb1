"""Pacing a scenario for a slow kernel: the same attempts, in the same order, slower.

User-Mode Linux runs the lab's Python `serve` and `load` several times slower than the
host (every syscall is a ptrace round trip) on one virtual CPU, so a rate the host
sustains makes UML's accept queues overflow and its connects queue up in the load
generator: timing artefacts, not kernel rules. A validation job on such a kernel is
therefore dilated in time by a factor k <= 1: every workload's rate and ramp_from times k,
every duration and start time divided by k, counts unchanged. What decides the exact rows
(how many attempts meet how many ports, in which order) is unchanged while the run stays
within a TIME_WAIT (60 s); rules with their own clock (tcp_tw_reuse's second, SYN RTOs,
conntrack timeouts) see the slower rate, and so does the model, which runs the same
dilated scenario. k comes from the kernel's measured speed (KernelFacts.connect_rate at
boot, measured again before each paced job and the slower taken, since the shared
machine's load moves during a suite: one UML boot measured 1,756/s and its runs lagged by
~0.5 s): the scenario's connection rate is held to PACE_SHARE of what one Python process
can connect/accept/close over loopback there. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from ..scenario.schema import Scenario

# The lab's load, server and kernel share the CPU (and UML one host CPU with the machine's
# other work): rates above a tenth of the measured cycles/s made UML's load generator lag by
# hundreds of ms (connects queue up, ports stay busy). On the host (~2,000 cycles/s measured
# on the shared 2-core machine) the suite's highest rate, 400/s, is a fifth of it.
PACE_SHARE = 0.1


def pace_factor(sc: Scenario, connect_rate: float) -> float:
    """k in (0, 1]: 1 when the scenario is within the kernel's budget (or speed unknown)."""
    demand = sum(w.connection_rate for w in sc.workload)
    if connect_rate <= 0 or demand <= 0:
        return 1.0
    return min(1.0, round(PACE_SHARE * connect_rate / demand, 3))


def pace_overrides(sc: Scenario, k: float) -> dict[str, Any]:
    """`--set` overrides that dilate `sc` by k (rates x k, times / k)."""
    if k >= 1.0:
        return {}
    out: dict[str, Any] = {"duration_s": round(sc.duration_s / k, 3)}
    for w in sc.workload:
        key = f"workload.{w.name}"
        out[f"{key}.rate"] = round(w.rate * k, 6)
        if w.ramp_from:
            out[f"{key}.ramp_from"] = round(w.ramp_from * k, 6)
        if w.start_s:
            out[f"{key}.start_s"] = round(w.start_s / k, 3)
        if w.duration_s is not None:
            out[f"{key}.duration_s"] = round(w.duration_s / k, 3)
    return out


def pace_note(sc: Scenario, k: float, connect_rate: float) -> str:
    demand = sum(w.connection_rate for w in sc.workload)
    return (f"paced for this kernel: rates x {k:g} and times / {k:g} (the scenario's "
            f"{demand:g} connections/s against {connect_rate:g} loopback connects/s measured "
            f"here, held to {PACE_SHARE:g} of it); same attempts in the same order, and the "
            "model runs the same paced scenario")
