"""The numbers `validate` compares, taken the same way from a simulated and a lab run.

Pure: a RunResult in, a Metrics out. Times are relative to the run's first attempt,
because the lab's first attempt comes a few hundred ms after its t = 0 (the load's
interpreter start-up) while the simulator's comes at the scenario's start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..result import RunResult

PERCENTILES = ("p50", "p90", "p99")


@dataclass
class Metrics:
    attempts: int
    outcomes: dict[str, int]
    # workload -> (attempt # within that workload, s after the run's first attempt) of
    # its first failure; per workload because concurrent workloads interleave by timing
    first_failures: dict[str, tuple[int, float] | None]
    first_t: float  # time of the first attempt on the run's clock
    ports_distinct: int  # summed over (client, source address): ports are per source
    ports_even: int  # attempts that got an even local port
    ports_odd: int
    delayed: int  # connected only after a SYN retransmission
    by_tries: dict[int, int]  # connected attempts by the number of SYNs they sent
    retried_connect_ms: float | None  # median connect time of those
    connect_ms: dict[str, float | None]
    # Per host *group* (instances summed): which instance of a symmetric group meets a
    # race or a hash coincidence is not the kernel's decision to pin, the group's total is.
    time_wait_end: dict[str, int]  # group -> TIME_WAIT sockets at the end
    time_wait_series: dict[str, list[int]]  # group -> per-step samples
    step_s: float
    counters: dict[str, dict[str, int]]  # group -> counter -> delta
    hosts: list[str] = field(default_factory=list)  # client and server groups
    # connects that failed with ETIMEDOUT before connecting, by the number of SYNs they sent
    # (without an application connect timeout: the kernel's tcp_write_timeout() gave up)
    gave_up_by_tries: dict[int, int] = field(default_factory=dict)
    # group -> per TIME_WAIT sample: (connections open then, s since the oldest of them was
    # due), from the lab's recorded close() times (the close_ms column); empty when the run
    # has none (the simulator, whose connections close within a ms; emulated clients)
    open_at_samples: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def open_at(t: np.ndarray, close_ms: np.ndarray, times: list[float]) -> list[tuple[int, float]]:
    """For each moment in `times`: how many attempts were open (due, not yet closed by the
    client: t <= moment < t + close_ms) and how long before it the oldest of them was due
    (0.0 when none). An attempt without a close time (NaN: it never had a socket) counts
    as closed when due."""
    end = t + np.where(np.isnan(close_ms), 0.0, close_ms) / 1000.0
    out = []
    for m in times:
        is_open = (t <= m) & (end > m)
        n = int(is_open.sum())
        out.append((n, round(float(m - t[is_open].min()), 6) if n else 0.0))
    return out


def end_time_wait(res: RunResult, host: str) -> int | None:
    """TIME_WAIT count at the end: `meta.end` (lab) or `meta.end_state` (simulate)."""
    for key in ("end", "end_state"):
        d = res.meta.get(key)
        if isinstance(d, dict) and host in d and "time_wait" in d[host]:
            return int(d[host]["time_wait"])
    series = res.timeline.hosts.get(host, {}).get("time_wait")
    return int(series[-1]) if series else None


def measure(res: RunResult) -> Metrics:
    a = res.attempts
    c = a.cols
    n = len(a)
    failed = a.failed_mask()
    t = c["t"]
    first_t = float(t.min()) if n else 0.0
    sport = c["sport"]
    has_port = sport > 0
    got = sport[has_port]
    pairs = np.unique(np.stack([c["client"][has_port].astype("i8"), c["src"][has_port].astype("i8"),
                                got.astype("i8")]), axis=1) if got.size else np.zeros((3, 0))
    firsts: dict[str, tuple[int, float] | None] = {}
    for code, name in enumerate(a.vocab["workload"]):
        idx = np.flatnonzero(c["workload"] == code)
        if idx.size == 0:
            continue
        bad = np.flatnonzero(failed[idx])
        firsts[name] = None if bad.size == 0 else (
            int(bad[0]), round(float(t[idx[bad[0]]]) - first_t, 6))
    ok = ~failed
    tries = c["syn_tries"]
    retried = ok & (tries > 1)
    lat = c["connect_ms"][retried]
    lat = lat[~np.isnan(lat)]
    groups: dict[str, list[str]] = {}
    for h, info in res.hosts.items():
        if info.role in ("client", "server"):
            groups.setdefault(info.group, []).append(h)
    tw_end: dict[str, int] = {}
    series: dict[str, list[int]] = {}
    opens: dict[str, list[tuple[int, float]]] = {}
    close_ms = c.get("close_ms")
    # close times only when every attempt that had a port has one (a part without them,
    # an emulated client, leaves the comparison to the start lag)
    closes_known = close_ms is not None and n > 0 and not np.isnan(close_ms[has_port]).any()
    step = res.timeline.step_s or 1.0
    counters: dict[str, dict[str, int]] = {}
    for g, members in groups.items():
        ends = [end_time_wait(res, h) for h in members]
        if all(v is not None for v in ends):
            tw_end[g] = sum(v for v in ends if v is not None)
        parts = [res.timeline.hosts.get(h, {}).get("time_wait", []) for h in members]
        n_steps = max((len(p) for p in parts), default=0)
        series[g] = [sum(p[k] for p in parts if k < len(p)) for k in range(n_steps)]
        if closes_known and close_ms is not None:
            codes = [a.vocab["host"].index(h) for h in members if h in a.vocab["host"]]
            mine = np.isin(c["client"], codes) | np.isin(c["server"], codes)
            opens[g] = open_at(t[mine], close_ms[mine], [(k + 1) * step for k in range(n_steps)])
        total: dict[str, int] = {}
        for h in members:
            for k, v in res.counters.get(h, {}).items():
                total[k] = total.get(k, 0) + int(v)
        counters[g] = total
    pct = res.connect_percentiles()
    gave_up = np.zeros(n, dtype=bool)
    if "ETIMEDOUT" in a.vocab["outcome"]:  # ETIMEDOUT before the connection was established
        gave_up = (c["outcome"] == a.vocab["outcome"].index("ETIMEDOUT")) & np.isnan(c["connect_ms"])
    return Metrics(
        attempts=n,
        outcomes=res.outcomes(),
        first_failures=firsts,
        first_t=first_t,
        ports_distinct=int(pairs.shape[1]),
        ports_even=int((got % 2 == 0).sum()),
        ports_odd=int((got % 2 == 1).sum()),
        delayed=int(retried.sum()),
        by_tries={int(k): int(v) for k, v in zip(*np.unique(tries[ok], return_counts=True), strict=True)},
        gave_up_by_tries={int(k): int(v)
                          for k, v in zip(*np.unique(tries[gave_up], return_counts=True), strict=True)},
        retried_connect_ms=None if lat.size == 0 else round(float(np.median(lat)), 3),
        connect_ms={k: pct.get(k) for k in PERCENTILES},
        time_wait_end=tw_end,
        time_wait_series=series,
        step_s=step,
        counters=counters,
        hosts=list(groups),
        open_at_samples=opens,
    )


def finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)
