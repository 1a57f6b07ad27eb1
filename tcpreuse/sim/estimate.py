"""What a simulation will cost, before it starts: attempts, memory, time.

The engine holds the live attempts and sockets (connections in flight, TIME_WAIT: the
connection rate times about a minute) and one timeline sample per host per second. A
finished attempt costs a 62-byte row when per-attempt output is asked for (records=True:
about 200 bytes at the end, when the rows become the result's columns), nothing when
only aggregates are kept (sim/sink.py). `simulate`, `sweep` and `capacity` estimate first
and refuse, with the estimate and the flag that overrides, a run that would not fit
this machine's available memory (psutil) or the time bound.

The figures were measured on this code (seed scenario, compiled, peak RSS): 90 / 900 s
at 2,000/s take 135 / 177 MB keeping aggregates only and 159 / 421 MB with rows; 1 h at
10,000 connections/s (36 M attempts, aggregates only) peaks at 543 MB, flat after the
first minute, most of
it the live state of ~600 k TIME_WAIT sockets and their indexes (~650 bytes each; the
estimate allows twice that; pure Python about twice again). Speed ~100,000-200,000
attempts per CPU second compiled and ~40,000 pure Python. Estimates are meant to catch
runs that are out by orders of magnitude, not to predict to the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import TcpreuseError

BYTES_PER_ROW = 200  # a finished attempt's row, at its peak (records=True)
BYTES_PER_JSON_ROW = 1_000  # ... written as JSON (RunResult.to_json(records=True): lists, then text)
BYTES_PER_LIVE = {True: 1_300, False: 2_600}  # a live attempt or socket: compiled, pure Python
LIVE_WINDOW_S = 60.0  # how long a connection's state lives: TIME_WAIT (TCP_TIMEWAIT_LEN)
ATTEMPTS_PER_S = {True: 200_000.0, False: 40_000.0}
BYTES_PER_SAMPLE = 80  # a timeline sample: two list items per host and per port series
BASE_BYTES = 150 * 2**20  # the interpreter, numpy and the package
MEMORY_SHARE = 0.8  # of psutil's available memory
DEFAULT_TIME_LIMIT_S = 600.0  # simulate: refuse runs estimated to take longer (--force)


def compiled() -> bool:
    """Is the engine the mypyc-compiled one?"""
    from . import engine

    return not str(getattr(engine, "__file__", "")).endswith(".py")


@dataclass
class Estimate:
    attempts: float
    memory_bytes: float  # of one run (the largest)
    seconds: float  # CPU time of all runs
    runs: int = 1
    local_bytes: float = 0.0  # held in this process besides the runs (a sweep's plan and results)

    def text(self) -> str:
        runs = f"{self.runs:,} runs, " if self.runs > 1 else ""
        per = "the largest run needs " if self.runs > 1 else ""
        local = f" (+ ≈{_bytes(self.local_bytes)} to plan and collect them)" if self.local_bytes >= 2**20 else ""
        return (f"{runs}≈{_count(self.attempts)} attempts, {per}≈{_bytes(self.memory_bytes)} of memory{local}, "
                f"≈{_duration(self.seconds)} of CPU")


def _count(n: float) -> str:
    if not math.isfinite(n):
        return "infinitely many"
    for div, unit in ((1e12, " T"), (1e9, " G"), (1e6, " M"), (1e3, " k")):
        if n >= div:
            return f"{n / div:,.1f}{unit}"
    return f"{n:,.0f}"


def _bytes(n: float) -> str:
    if not math.isfinite(n):
        return "unbounded"
    for div, unit in ((2**40, "TB"), (2**30, "GB"), (2**20, "MB")):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{n / 2**10:,.0f} KB"


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "forever"
    if s >= 86400:
        return f"{s / 86400:,.1f} days"
    if s >= 3600:
        return f"{s / 3600:,.1f} h"
    if s >= 60:
        return f"{s / 60:,.1f} min"
    return f"{s:,.1f} s"


def attempts(sc: Any) -> float:
    """Connection attempts the workloads start (application retries on top, at most)."""
    total = 0.0
    for w in sc.workload:
        window = sc.duration_s - w.start_s
        if w.duration_s is not None:
            window = min(window, w.duration_s)
        n = max(0.0, window) * w.connection_rate
        if w.count is not None:
            n = min(n, float(w.count))
        total += n * (1 + w.retries)
    return total


def live(sc: Any) -> float:
    """Attempts whose state is held at once: the connection rate over LIVE_WINDOW_S (and
    application retries on top, at most)."""
    window = min(LIVE_WINDOW_S, sc.duration_s)
    return float(sum(w.connection_rate * window * (1 + w.retries) for w in sc.workload))


def estimate(sc: Any, is_compiled: bool | None = None, records: bool = False,
             records_json: bool = False) -> Estimate:
    """records: per-attempt rows are kept (simulate --attempts-csv/--html); records_json:
    and written as JSON (--result)."""
    c = compiled() if is_compiled is None else is_compiled
    n = attempts(sc)
    hosts = sum(g.count for g in sc.host)
    steps = math.ceil(sc.duration_s) if math.isfinite(sc.duration_s) else math.inf
    mem = (BASE_BYTES + min(n, live(sc)) * BYTES_PER_LIVE[c] + (n * (BYTES_PER_JSON_ROW if records_json else BYTES_PER_ROW if records else 0))
           + steps * hosts * BYTES_PER_SAMPLE)
    return Estimate(n, mem, n / ATTEMPTS_PER_S[c] + steps * hosts * 2e-6)


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def check(est: Estimate, *, what: str, force: bool, time_limit_s: float | None, workers: int = 1,
          flag: str = "--force") -> None:
    """Refuse what will not fit: `workers` runs at once must fit MEMORY_SHARE of the
    available memory, and the CPU time spread over them must fit `time_limit_s`."""
    if force:
        return
    avail = available_memory() * MEMORY_SHARE
    if est.memory_bytes * workers + est.local_bytes > avail:
        per = f" x {workers} worker processes" if workers > 1 else ""
        raise TcpreuseError(
            f"{what} will not fit this machine's memory: {est.text()}{per}, "
            f"{_bytes(avail)} available", hint=f"shorten or slow it down, or run it anyway with {flag}")
    if time_limit_s is not None and est.seconds / max(1, workers) > time_limit_s:
        raise TcpreuseError(
            f"{what} would take too long: {est.text()}"
            + (f" over {workers} workers" if workers > 1 else "")
            + f", more than the {_duration(time_limit_s)} limit",
            hint=f"shorten or slow it down, raise --time-limit, or run it anyway with {flag}")
