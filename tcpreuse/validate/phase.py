"""Where in the second a version-discriminating run should start.

Some rules the versions differ in act on the kernel's seconds clock: tcp_tw_reuse = 1
frees a TIME_WAIT once ktime_get_seconds() has passed the second it began in (4.19-6.13,
tcp_twsk_unique()), or tcp_tw_reuse_delay after it began (6.14+). Whether a run then
tells the two apart depends on where in the second its attempts fall: `v-reuse1-seconds`
paced to 91 connections/s gives 280 successes under both rules for half the phases of
the second and 284-292 on 6.1 for the other half. The model, which both versions' rules
are written in, says beforehand which phase separates them; the lab then starts its
first attempt there (lab/run.py LabOptions.start_phase_s), and validate still gives the
model the phase the lab really had (t0_monotonic).
"""

from __future__ import annotations

from typing import Any

from ..model.profiles import get_profile
from ..sim.engine import Engine
from . import suite
from .compare import compare
from .metrics import measure

STEPS = 20  # phases tried, 50 ms apart
BASE_UPTIME_S = 1000.0  # an uptime for the trial runs; only its fraction of a second matters


def _linux_groups(ref: str, ov: dict[str, Any]) -> list[str]:
    return [g.name for g in suite.load(ref, ov).host if get_profile(g.profile).os == "linux"]


def _run(ref: str, ov: dict[str, Any], groups: list[str], phase: float, first_t: float) -> Any:
    up = BASE_UPTIME_S + ((phase - first_t) % 1.0)
    return measure(Engine(suite.load(ref, {**ov, **{f"host.{g}.model.uptime_s": up for g in groups}})).run())


def discriminating_phase(ref: str, overrides: dict[str, Any], own: str, other: str) -> tuple[float, int] | None:
    """(phase of the first attempt in its second, rows the two profiles' models disagree
    on there) at the phase where they disagree on the most rows, counting its neighbours'
    half (a phase in the middle of a band, so the lab's start jitter stays inside it);
    None when the phase does not change how many rows they disagree on."""
    first_t = measure(Engine(suite.load(ref, overrides)).run()).first_t
    runs = []
    for profile in (own, other):
        ov = suite.with_profile(overrides, profile)
        runs.append((ov, _linux_groups(ref, ov)))
    counts = []
    for i in range(STEPS):
        ph = i / STEPS
        a, b = (_run(ref, ov, groups, ph, first_t) for ov, groups in runs)
        counts.append(sum(1 for r in compare(a, b) if r.agree is False))
    if len(set(counts)) == 1:
        return None
    score = [counts[i] + 0.5 * (counts[i - 1] + counts[(i + 1) % STEPS]) for i in range(STEPS)]
    best = max(range(STEPS), key=lambda i: (score[i], -i))
    return best / STEPS, counts[best]
