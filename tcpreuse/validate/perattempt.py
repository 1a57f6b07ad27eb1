"""Per-attempt rows of a validation, from the lab's kernel trace (`validate --trace`).

The lab run's attempts carry the kernel's own verdict (tcpreuse.trace.join, stored in
``meta["kernel_trace"]``). Two rows come from it: the kernel against the lab's own reasons
(the client's view), and the kernel against the simulator, attempt by attempt: the i-th
attempt of a client's workload is the same scheduled request in both runs, so the model's
reason for it (what it met first: ``cause``, else ``reason``) should be the kernel's, for
the reasons the kernel reports per attempt. Pure.
"""

from __future__ import annotations

from typing import Any

from ..result import RunResult
from .compare import Row

# Reasons the kernel reports per attempt (tcpreuse.trace.join.VERDICT_REASON); others are
# compared as "nothing reported" on both sides.
OBSERVABLE = frozenset({"syn_hit_timewait", "syn_paws_timewait", "ack_dropped_listen_overflow",
                        "local_ports_exhausted", "refused"})
EXACT_TEXT = "exact"
KERNEL_REASON = ("the kernel reports these per attempt (a drop reason, a connect() errno); where the kernel is "
                 "deterministic for the workload every attempt must agree")


def _kernel_reasons(lab: RunResult) -> list[str] | None:
    kt = lab.meta.get("kernel_trace")
    if not kt:
        return None
    voc = kt["reasons"]
    return [voc[c] if c >= 0 else "" for c in kt["per_attempt"]]


def _by_request(run: RunResult, reasons: list[str]) -> dict[tuple[str, str, int], str]:
    a = run.attempts
    hosts, wls = a.column("client"), a.column("workload")
    seen: dict[tuple[str, str], int] = {}
    out: dict[tuple[str, str, int], str] = {}
    for i, (h, w) in enumerate(zip(hosts, wls, strict=True)):
        k = seen.get((h, w), 0)
        seen[(h, w)] = k + 1
        r = reasons[i]
        out[(h, w, k)] = r if r in OBSERVABLE else ""
    return out


def sim_vs_kernel(sim: RunResult, lab: RunResult, first: int = 5) -> tuple[int, int, list[str]]:
    """(attempts compared, agreeing, first disagreements as text)."""
    kr = _kernel_reasons(lab)
    assert kr is not None
    causes = sim.attempts.column("cause")
    reasons = sim.attempts.column("reason")
    model = [c or r for c, r in zip(causes, reasons, strict=True)]
    s = _by_request(sim, model)
    k = _by_request(lab, kr)
    both = sorted(set(s) & set(k))
    agree = 0
    bad: list[str] = []
    for key in both:
        if s[key] == k[key]:
            agree += 1
        elif len(bad) < first:
            bad.append(f"{key[0]} {key[1]} #{key[2]}: model {s[key] or '-'}, kernel {k[key] or '-'}")
    return len(both), agree, bad


def rows(sim: RunResult, lab: RunResult, chance: str | None = None) -> tuple[list[Row], list[str]]:
    """The per-attempt rows and notes naming the first disagreeing attempts; none without a trace.
    With `chance` (why which attempts meet a mechanism is decided by keyed hashes or random
    offsets, not by the workload) the model-vs-kernel row is shown, not judged."""
    kt: dict[str, Any] | None = lab.meta.get("kernel_trace")
    if not kt:
        return [], []
    out: list[Row] = []
    notes: list[str] = []
    ag = kt["agreement"]
    if ag["checked"]:
        out.append(Row("per attempt", "lab's reason = kernel's verdict", None,
                       f"{ag['agree']:,}/{ag['checked']:,}", ag["agree"] == ag["checked"], EXACT_TEXT,
                       KERNEL_REASON + "; the lab's reasons are the client's view"))
        notes += [f"per attempt, lab vs kernel: attempt {d['index']} at {d['t']} s: lab {d['lab']}, kernel "
                  f"{d['kernel']}" for d in ag["first_disagreements"][:5]]
    n, agree, bad = sim_vs_kernel(sim, lab)
    if n:
        out.append(Row("per attempt", "model's reason = kernel's verdict", f"{agree:,}/{n:,}",
                       f"{agree / n:.1%}", None if chance else agree == n, "not judged" if chance else EXACT_TEXT,
                       chance or KERNEL_REASON))
        notes += [f"per attempt, model vs kernel: {b}" for b in bad]
    if kt["summary"].get("lost_events"):
        notes.append(f"the kernel trace lost {kt['summary']['lost_events']:,} events: per-attempt rows are "
                     "lower bounds")
    return out, notes
