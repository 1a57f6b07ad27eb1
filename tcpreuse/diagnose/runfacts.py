"""Numbers the rules that read a run share, computed once from a RunResult (+ scenario)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..capture.facts import pct
from ..findings import EvidenceItem

__all__ = ["CauseStats", "cause_stats", "first_at", "groups", "os_of", "pct", "timestamps_on", "tw_at", "tw_at_role"]

if TYPE_CHECKING:
    from ..result import RunResult
    from ..scenario.schema import HostGroup, Scenario


@dataclass
class CauseStats:
    cause: str
    attempts: int  # attempts that met this problem
    failed: int  # ... and failed
    delayed: int  # ... and succeeded late
    first_index: int
    first_t: float
    errnos: dict[str, int] = field(default_factory=dict)
    connect_ms_p50: float | None = None  # of the delayed ones
    first_client: str = ""  # the first attempt's client, destination address and port
    first_dst: str = ""
    first_dport: int = 0
    ok_before: int = 0  # attempts before the first that succeeded


def cause_stats(run: RunResult, cause: str) -> CauseStats | None:
    if run.aggregates is not None:  # a run kept without per-attempt rows
        s = run.aggregates.causes.get(cause)
        if s is None:
            return None
        return CauseStats(cause=cause, attempts=s.attempts, failed=s.failed, delayed=s.delayed,
                          first_index=s.first_index, first_t=s.first_t, errnos=dict(s.errnos),
                          connect_ms_p50=s.delayed_median_ms(), first_client=s.first_client,
                          first_dst=s.first_dst, first_dport=s.first_dport, ok_before=s.ok_before)
    a = run.attempts
    code = a.code("reason", cause)
    if code < 0:
        return None
    mask = (a.cols["cause"] == code) | (a.cols["reason"] == code)
    n = int(mask.sum())
    if n == 0:
        return None
    failed = a.failed_mask() & mask
    delayed = mask & ~failed
    first = int(np.argmax(mask))
    sub = a.cols["outcome"][failed]
    errnos: dict[str, int] = {}
    if sub.size:
        codes, counts = np.unique(sub, return_counts=True)
        errnos = {a.name("outcome", int(c)): int(k) for c, k in zip(codes, counts, strict=True)}
    lat = a.cols["connect_ms"][delayed]
    lat = lat[~np.isnan(lat)]
    return CauseStats(
        cause=cause, attempts=n, failed=int(failed.sum()), delayed=int(delayed.sum()),
        first_index=first, first_t=float(a.cols["t"][first]), errnos=errnos,
        connect_ms_p50=float(np.median(lat)) if lat.size else None,
        first_client=a.name("client", int(a.cols["client"][first])),
        first_dst=a.name("dst", int(a.cols["dst"][first])), first_dport=int(a.cols["dport"][first]),
        ok_before=int((~a.failed_mask()[:first]).sum()),
    )


def first_at(st: CauseStats) -> EvidenceItem:
    """The evidence row naming the first attempt that met a problem (1-based)."""
    return EvidenceItem("first at", f"attempt #{st.first_index + 1:,}, t = {st.first_t:.1f} s")


def tw_at(run: RunResult, host: str, t: float) -> int | None:
    s = run.timeline.hosts.get(host, {}).get("time_wait")
    if not s:
        return None
    k = min(max(int(t / run.timeline.step_s), 0), len(s) - 1)
    return int(s[k])


def tw_at_role(run: RunResult, role: str, t: float) -> int:
    return sum(tw_at(run, h, t) or 0 for h, info in run.hosts.items() if info.role == role)


def groups(sc: Scenario | None, role: str) -> list[HostGroup]:
    return [g for g in sc.host if g.role == role] if sc is not None else []


def timestamps_on(settings: dict[str, Any], os: str) -> bool:
    """Does a host offer TCP timestamps in its SYNs?"""
    if os == "windows":
        return settings.get("netsh.tcp.timestamps") == "enabled"
    if os == "macos":
        return int(settings.get("net.inet.tcp.rfc1323", 1)) == 1
    return int(settings.get("net.ipv4.tcp_timestamps", 1)) != 0


def os_of(profile: str) -> str:
    return "windows" if profile.startswith("windows") else ("macos" if profile.startswith("macos") else "linux")
