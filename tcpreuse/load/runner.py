"""A load run: worker processes, per-second sampling, merged results.

The parent process does no connection work. It forks the workers (each with its share of
the rate, count or concurrency and a common start time on the monotonic clock), samples
this namespace's TIME_WAIT count once per second on the second, relays the workers'
progress to a callback, and on Ctrl-C/SIGTERM tells them to stop and keeps what they did.
Results merge exactly: records are concatenated and sorted by due time, histograms add
bucket by bucket, counts add.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import platform
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import numpy as np

from ..result import COLUMNS, AttemptTable, HostInfo, RunResult, Timeline, nearest_rank
from . import kstat
from .arrival import ARRIVALS, split_count
from .budget import Estimate, estimate, refusal
from .errors import LoadError
from .sockopt import check_local_port_range, check_route, check_sources_local, raise_nofile
from .target import Endpoint, format_addr
from .worker import (
    BIND_MODES,
    CLOSE_POLICIES,
    WorkerPlan,
    WorkerResult,
    merge_hists,
    run_in_child,
)

PROTOCOLS = ("line", "http")
# A worker still running this long after duration + drain is told to stop, and killed
# this long after that: the most a run can overstay its bound (it says so in a note).
WATCHDOG_S = 2.0


@dataclass
class LoadConfig:
    """What the user asked for, validated by :meth:`check`."""

    target: Endpoint
    rate: float | None = None
    concurrency: int | None = None
    duration: float | None = None
    count: int | None = None
    arrival: str = "constant"
    ramp_from: float = 0.0
    close: str = "client"
    requests_per_conn: int = 1
    protocol: str = "line"
    path: str = "/"
    sources: list[str] = field(default_factory=list)  # expanded addresses
    bind: str | None = None  # None: address_no_port with sources, else none
    local_port_range: tuple[int, int] | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    workers: int | None = None
    seed: int = 0
    host_name: str = field(default_factory=socket.gethostname)
    scenario: str = "load"
    workload: str = "load"
    # Wall-clock (Unix) time of the run's t = 0, so that several load processes interleave
    # their schedules as one workload would (the lab's clients); None: as soon as started.
    start_at: float | None = None
    # After --duration, attempts in flight get this many seconds; then they are cut
    # ("unfinished") and the run ends: duration + drain is its wall-clock bound.
    drain: float = 2.0
    force: bool = False  # run even what the estimate says will not fit (budget.py)
    # open loop: at most this many attempts in flight (split over the workers); an attempt
    # due meanwhile starts when one closes, late, and its lag says so. None: no cap
    max_in_flight: int | None = None
    records_as_json: bool = False  # --result: the records are also rendered as JSON

    @property
    def mode(self) -> str:
        return "closed" if self.concurrency else "open"

    def check(self) -> None:
        """Every mistake a user can make here becomes one LoadError, before any work."""
        if self.rate is None and not self.concurrency:
            raise LoadError("give --rate R (open loop) or --concurrency N (closed loop)")
        if self.rate is not None and self.concurrency:
            raise LoadError("--rate and --concurrency exclude each other (open or closed loop)")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise LoadError(f"--rate must be a positive number, not {self.rate}")
        if self.concurrency is not None and self.concurrency < 0:
            raise LoadError("--concurrency must be positive")
        if self.duration is None and self.count is None:
            raise LoadError("a load run must be bounded: give --duration S and/or --count N")
        if self.duration is not None and not (0 < self.duration < 7 * 86400):
            raise LoadError(f"--duration must be between 0 and a week, not {self.duration}")
        if self.count is not None and self.count <= 0:
            raise LoadError("--count must be positive")
        if self.arrival not in ARRIVALS:
            raise LoadError(f"--arrival must be one of {', '.join(ARRIVALS)}")
        if self.arrival == "ramp":
            if self.duration is None:
                raise LoadError("--arrival ramp needs --duration (the ramp spans it)")
            if self.ramp_from < 0:
                raise LoadError("--ramp-from must be >= 0")
        if self.max_in_flight is not None and (self.mode != "open" or self.max_in_flight < 1):
            raise LoadError("--max-in-flight caps an open loop (--rate): give a positive number")
        if self.mode == "closed" and self.arrival != "constant":
            raise LoadError("--arrival applies to the open loop (--rate), not to --concurrency")
        if self.close not in CLOSE_POLICIES:
            raise LoadError(f"--close must be one of {', '.join(CLOSE_POLICIES)}")
        if self.protocol not in PROTOCOLS:
            raise LoadError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
        if self.requests_per_conn < 1:
            raise LoadError("--requests-per-conn must be at least 1")
        if not (self.connect_timeout > 0 and self.request_timeout > 0
                and math.isfinite(self.connect_timeout) and math.isfinite(self.request_timeout)):
            raise LoadError("timeouts must be positive numbers")
        if not (0 <= self.drain <= 86400):  # the lab passes the workload's timeouts, which may be long
            raise LoadError(f"--drain must be between 0 and 86400 s, not {self.drain}")
        if self.start_at is not None and abs(self.start_at - time.time()) > 3600:
            raise LoadError("--start-at must be a Unix time within an hour of now")
        if self.bind is not None and self.bind not in BIND_MODES:
            raise LoadError(f"--bind must be one of {', '.join(BIND_MODES)}")
        if self.bind == "none" and self.sources:
            raise LoadError("--bind none ignores --source: use address_no_port or bind0")
        if self.workers is not None and not 1 <= self.workers <= 1024:
            raise LoadError("--workers must be between 1 and 1024")
        check_route(self.target.host, self.target.port, self.target.family)
        if self.sources:
            check_sources_local(self.sources, self.target.family)
        if self.local_port_range:
            check_local_port_range(*self.local_port_range, family=self.target.family)
        if not self.force:
            problems = self.estimate().problems()
            if problems:
                raise LoadError(refusal(problems))

    def estimate(self) -> Estimate:
        """What this run will cost on this machine (budget.py)."""
        import resource

        import psutil

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        workers = self.effective_workers()
        return estimate(self.rate, self.duration, self.count, workers=workers,
                        cpus=os.cpu_count() or 1, available=psutil.virtual_memory().available,
                        records_as_json=self.records_as_json, arrival=self.arrival,
                        ramp_from=self.ramp_from,
                        concurrency=self.concurrency or 0,
                        nofile=0 if hard == resource.RLIM_INFINITY else hard)

    def wall_bound(self) -> float | None:
        """Seconds after t = 0 by which the run has ended (None: bounded by count only)."""
        return None if self.duration is None else self.duration + self.drain

    def effective_bind(self) -> str:
        if self.bind is not None:
            return self.bind
        return "address_no_port" if self.sources else "none"

    def effective_workers(self) -> int:
        w = self.workers or os.cpu_count() or 1
        if self.count is not None:
            w = min(w, self.count)
        if self.concurrency:
            w = min(w, self.concurrency)
        if self.max_in_flight:
            w = min(w, self.max_in_flight)
        return max(1, w)


@dataclass
class Progress:
    """What the live view shows; the runner calls back with it about twice a second."""

    elapsed: float
    started: int
    ok: int
    failed: int
    errors: dict[str, int]
    time_wait: int
    rate: float  # attempts/s over the last interval


@dataclass
class LoadRun:
    """The merged outcome of a load run."""

    config: LoadConfig
    result: RunResult
    summary: dict[str, Any]
    stopped_by: int = 0  # the signal that stopped the run (SIGINT, SIGTERM), 0: none


def run_load(config: LoadConfig, on_progress: Callable[[Progress], None] | None = None,
             tick_s: float = 0.5) -> LoadRun:
    config.check()
    nofile = raise_nofile()
    workers = config.effective_workers()
    bind = config.effective_bind()
    counters_before = kstat.read_counters()
    settings = kstat.read_sysctls()
    started_wall, started_mono = time.time(), time.monotonic()
    t0 = started_mono + 0.05 + 0.01 * workers  # time to fork before the first attempt
    if config.start_at is not None and config.start_at - started_wall > t0 - started_mono:
        t0 = started_mono + (config.start_at - started_wall)
    # (a start_at already past -- a slow start-up -- starts now; t0_unix says when)
    t0_unix = started_wall + (t0 - started_mono)  # wall-clock time of t = 0 (due times count from it)

    plans = []
    for i in range(workers):
        plans.append(WorkerPlan(
            target=config.target, protocol=config.protocol, path=config.path, close=config.close,
            requests_per_conn=config.requests_per_conn, sources=config.sources, bind=bind,
            local_port_range=config.local_port_range, connect_timeout=config.connect_timeout,
            request_timeout=config.request_timeout, mode=config.mode, arrival=config.arrival,
            rate=config.rate or 0.0, ramp_from=config.ramp_from,
            concurrency=split_count(config.concurrency, workers, i) or 0 if config.concurrency else 0,
            duration=config.duration,
            count=config.count if config.mode == "open" else split_count(config.count, workers, i),
            seed=config.seed, index=i, workers=workers, t0=t0, tick_s=tick_s,
            drain=config.drain if config.duration is not None else None,
            max_in_flight=split_count(config.max_in_flight, workers, i) or 0 if config.max_in_flight else 0,
        ))

    ctx = mp.get_context("fork")
    procs: list[Any] = []
    pipes: dict[Connection, int] = {}
    results: dict[int, WorkerResult] = {}
    errors: list[str] = []
    ticks: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    tw_samples: list[int] = []
    interrupted = False
    stopped_at: float | None = None  # s since t0 when a stop was asked for
    # The workers cut what is in flight at t0 + duration + drain; a worker that does not
    # end by then (a bug, a stuck system call) is told to stop, then killed.
    bound = config.wall_bound()
    watchdog_at = t0 + bound + WATCHDOG_S if bound is not None else float("inf")
    kill_after = 10.0

    signals: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        signals.append(signum)
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        for plan in plans:
            parent, child = ctx.Pipe(duplex=True)
            pr = ctx.Process(target=run_in_child, args=(plan, child), daemon=True,
                             name=f"tcpreuse-load-{plan.index}")
            pr.start()
            child.close()
            procs.append(pr)
            pipes[parent] = plan.index

        next_sample = t0 + 1.0
        next_progress = t0 + tick_s
        last_started, last_t = 0, t0
        stop_sent_at: float | None = None
        while pipes:
            now = time.monotonic()
            if now >= watchdog_at and stop_sent_at is None:
                errors.append(f"a worker was still running {WATCHDOG_S:g} s after the bound (duration + "
                              f"drain, {bound:g} s) and was told to stop")
                stop_sent_at = now
                kill_after = WATCHDOG_S
                for c in list(pipes):
                    with contextlib.suppress(OSError):
                        c.send("stop")
            timeout = max(0.0, min(next_sample, next_progress, watchdog_at) - now)
            if stop_sent_at is not None:
                timeout = min(timeout, 0.2)
                if now - stop_sent_at > kill_after:  # workers that do not answer are not waited for
                    for pr in procs:
                        if pr.is_alive():
                            pr.kill()
                    errors.append(f"a worker did not stop within {kill_after:g} s and was killed")
                    break
            try:
                ready = cast(list[Connection], wait(list(pipes), timeout=timeout))
                for c in ready:
                    try:
                        msg = c.recv()
                    except (EOFError, OSError):
                        idx = pipes.pop(c)
                        if idx not in results:
                            errors.append(f"worker {idx} ended without a result")
                        continue
                    kind, idx = msg[0], msg[1]
                    if kind == "tick":
                        ticks[idx] = (msg[2], msg[3])
                    elif kind == "result":
                        results[idx] = msg[2]
                        pipes.pop(c, None)
                        c.close()
                    elif kind == "error":
                        errors.append(f"worker {idx} failed:\n{msg[2]}")
                        pipes.pop(c, None)
                        c.close()
                now = time.monotonic()
                while now >= next_sample:
                    tw_samples.append(kstat.read_time_wait())
                    next_sample += 1.0
                if now >= next_progress and on_progress is not None:
                    started = sum(t[0]["started"] for t in ticks.values())
                    ok = sum(t[0]["ok"] for t in ticks.values())
                    failed = sum(t[0]["failed"] for t in ticks.values())
                    errs: dict[str, int] = {}
                    for _, e in ticks.values():
                        for k, v in e.items():
                            errs[k] = errs.get(k, 0) + v
                    rate = (started - last_started) / max(1e-9, now - last_t)
                    last_started, last_t = started, now
                    on_progress(Progress(now - t0, started, ok, failed, errs,
                                         tw_samples[-1] if tw_samples else kstat.read_time_wait(),
                                         rate))
                if now >= next_progress:
                    next_progress = now + tick_s
            except KeyboardInterrupt:
                if stop_sent_at is None:
                    interrupted = True
                    stop_sent_at = time.monotonic()
                    stopped_at = stop_sent_at - t0
                    for c in list(pipes):
                        with contextlib.suppress(OSError):
                            c.send("stop")
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for pr in procs:
            pr.join(timeout=5)
            if pr.is_alive():
                pr.kill()
                pr.join(timeout=5)

    end_time = time.monotonic()
    tw_samples.append(kstat.read_time_wait())
    counters = kstat.deltas(counters_before, kstat.read_counters())
    if not results:
        raise LoadError("no worker returned a result" + (": " + errors[0] if errors else ""))
    merged = _merge(config, [results[i] for i in sorted(results)], tw_samples, counters,
                    settings, workers, bind, interrupted or any(r.interrupted for r in results.values()),
                    errors, nofile, t0_unix, end_time - t0, stopped_at, t0_mono=t0)
    if interrupted:
        merged.stopped_by = signals[0] if signals else signal.SIGINT
    return merged


def _merge(config: LoadConfig, parts: list[WorkerResult], tw_samples: list[int],
           counters: dict[str, int], settings: dict[str, str], workers: int, bind: str,
           interrupted: bool, errors: list[str], nofile: int, t0_unix: float,
           wall_s: float, stopped_at: float | None = None, t0_mono: float | None = None) -> LoadRun:
    outcome_voc: list[str] = []
    reason_voc: list[str] = []
    addr_voc: list[str] = [config.target.host]

    def remap(local: list[str], voc: list[str], codes: np.ndarray) -> np.ndarray:
        table = np.empty(len(local) + 1, dtype=np.int32)
        table[-1] = -1  # code -1 (none) stays -1
        for i, name in enumerate(local):
            if name not in voc:
                voc.append(name)
            table[i] = voc.index(name)
        return table[codes]

    cols: dict[str, list[np.ndarray]] = {k: [] for k in COLUMNS}
    for r in parts:
        n = len(r.t)
        cols["t"].append(np.frombuffer(r.t, dtype="f8") if n else np.zeros(0))
        cols["connect_ms"].append(np.frombuffer(r.connect_ms, dtype="f8") if n else np.zeros(0))
        cols["syn_tries"].append(np.asarray(r.syn_tries, dtype="i2"))
        cols["outcome"].append(remap(r.outcomes, outcome_voc, np.asarray(r.outcome, dtype=np.int64)))
        cols["reason"].append(remap(r.reasons, reason_voc, np.asarray(r.reason, dtype=np.int64)))
        cols["src"].append(remap(r.addrs, addr_voc, np.asarray(r.src, dtype=np.int64)))
        cols["sport"].append(np.asarray(r.sport, dtype="i4"))
    total = sum(len(r.t) for r in parts)
    out: dict[str, np.ndarray] = {k: np.concatenate(v) for k, v in cols.items() if v}
    out.setdefault("t", np.zeros(0))
    out["workload"] = np.zeros(total, dtype="i2")  # one workload, one host, one target:
    out["client"] = np.zeros(total, dtype="i4")  # code 0 of their vocabularies
    out["dst"] = np.zeros(total, dtype="i4")
    out["dport"] = np.full(total, config.target.port, dtype="i4")
    # due time -> first answer, and -> the socket's close(), per attempt (optional columns:
    # load and lab have them)
    out["answer_ms"] = np.concatenate([np.frombuffer(r.answer_ms, dtype="f8") if len(r.answer_ms)
                                       else np.zeros(0) for r in parts]) if parts else np.zeros(0)
    out["close_ms"] = np.concatenate([np.frombuffer(r.close_ms, dtype="f8") if len(r.close_ms)
                                      else np.zeros(0) for r in parts]) if parts else np.zeros(0)
    # the remap above appended only names the workers used, in first-use order
    table = AttemptTable.build(out, {
        "outcome": outcome_voc, "reason": reason_voc, "workload": [config.workload],
        "host": [config.host_name], "addr": addr_voc,
    })

    last_end = max((r.end for r in parts), default=0.0)
    elapsed = max(schedule_window(config, out["t"], stopped_at, last_end), 1e-6)

    # per-second timeline, bucketed by due time
    nsec = math.ceil(float(out["t"].max()) + 1e-9) if total else 1
    if config.duration is not None and not interrupted:
        nsec = max(nsec, math.ceil(config.duration - 1e-9))
    nsec = max(1, nsec)
    ok_code = table.code("outcome", "ok")
    retry_code = table.code("reason", "ok_after_syn_retry")
    okm = out["outcome"] == ok_code
    tl = Timeline.per_second(table, nsec)
    tw = list(tw_samples[:nsec])
    while len(tw) < nsec:
        tw.append(tw_samples[-1] if tw_samples else 0)
    tl.hosts = {config.host_name: {"time_wait": tw}}

    connect_h = merge_hists([r.connect_hist for r in parts])
    request_h = merge_hists([r.request_hist for r in parts])
    # percentiles exactly, by nearest rank, from every value (the histograms above are
    # for merging runs of several hosts; their buckets keep 3 significant digits)
    request_ms = np.concatenate([np.frombuffer(r.request_s, dtype="f8") * 1000.0 if len(r.request_s)
                                 else np.zeros(0) for r in parts]) if parts else np.zeros(0)
    lag_ms = np.concatenate([np.frombuffer(r.lag_s, dtype="f8") * 1000.0 if len(r.lag_s) else np.zeros(0)
                             for r in parts]) if parts else np.zeros(0)
    unfinished = sum(r.unfinished for r in parts)
    http_status: dict[int, int] = {}
    for r in parts:
        for status, v in r.http_status.items():
            http_status[status] = http_status.get(status, 0) + v
    requests = sum(r.requests for r in parts)
    lag_max = max((r.lag_max_ms for r in parts), default=0.0)
    late = sum(r.late_starts for r in parts)
    not_started = sum(r.not_started for r in parts)
    cpu_s = sum(r.cpu_s for r in parts)
    sys_s = sum(r.sys_s for r in parts)
    preempted = sum(r.preempted for r in parts)
    wakeups = sum(r.wakeups for r in parts)

    notes: list[str] = []
    if interrupted:
        notes.append("interrupted: the results cover the attempts made until the stop "
                     "(attempts in flight are recorded as ECANCELED)")
    notes.extend(errors)
    if config.mode == "open" and total and late > 0.01 * total:
        notes.append(f"{late} of {total} attempts started more than 1 ms after they were due "
                     f"(worst {lag_max:.1f} ms): the generator did not keep up with the rate; "
                     "their latency counts from the due time (its workers: "
                     f"{cpu_s / total * 1e6:.0f} us of CPU per attempt, preempted {preempted / total:.2f} "
                     f"times per attempt; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    if not_started:
        notes.append(f"{not_started} attempts due before the end were never started: the generator "
                     f"was too far behind its schedule (use more --workers or a lower --rate)")
    outcomes_counts = table.counts("outcome")
    for fd_err in ("EMFILE", "ENFILE"):
        if fd_err in outcomes_counts:
            notes.append(f"{fd_err}: the load generator ran out of file descriptors "
                         f"(RLIMIT_NOFILE {nofile}); lower the rate or the timeouts, or raise the limit")
    notes.append("time_wait counts every TIME_WAIT socket of this network namespace, "
                 "the server's too if it runs here")

    # outcome details: count, sample 4-tuple, first and last time
    details: dict[str, dict[str, Any]] = {}
    for name, n in sorted(outcomes_counts.items(), key=lambda kv: (kv[0] != "ok", -kv[1])):
        idx = np.flatnonzero(out["outcome"] == table.code("outcome", name))
        i = int(idx[0])
        src = table.name("src", int(out["src"][i])) or "?"
        sport = int(out["sport"][i])
        details[name] = {
            "count": n,
            "sample": f"{format_addr(src, sport or None)} -> {config.target}",
            "first_s": round(float(out["t"][i]), 6),
            "last_s": round(float(out["t"][idx[-1]]), 6),
        }

    ok_n = int(okm.sum())
    if unfinished:
        notes.append(f"{unfinished} attempts were still in flight at the run's bound (--duration "
                     f"{config.duration:g} s + --drain {config.drain:g} s) and were cut: outcome ECANCELED, "
                     "reason unfinished, counted apart from ok and failed")
    syn_retry_n = int((out["reason"] == retry_code).sum()) if total else 0
    nonzero = {k: v for k, v in counters.items() if v}
    summary: dict[str, Any] = {
        "target": str(config.target),
        "mode": config.mode,
        "arrival": config.arrival if config.mode == "open" else None,
        "rate_target": config.rate,
        "ramp_from": config.ramp_from if config.arrival == "ramp" else None,
        "concurrency": config.concurrency,
        "protocol": config.protocol,
        "close": config.close,
        "requests_per_conn": config.requests_per_conn,
        "workers": workers,
        "bind": bind,
        "sources": len(config.sources),
        "duration_s": round(elapsed, 6),  # the scheduling window the rates divide by
        "wall_s": round(wall_s, 6),  # from t = 0 to the last worker's end (drain included)
        "drain_s": config.drain if config.duration is not None else None,
        "attempts": total,
        "ok": ok_n,
        "failed": total - ok_n - unfinished,
        "unfinished": unfinished,
        "attempts_per_s": round(total / elapsed, 3),
        "ok_per_s": round(ok_n / elapsed, 3),
        "requests": requests,
        "ok_after_syn_retry": syn_retry_n,
        "outcomes": details,
        "reasons": table.counts("reason"),
        "connect_ms": nearest_rank(table.cols["connect_ms"]),
        "request_ms": nearest_rank(request_ms),
        "answer_ms": nearest_rank(table.cols["answer_ms"]),
        "close_ms": nearest_rank(table.cols["close_ms"]),
        "max_in_flight": config.max_in_flight,
        "http_status": {str(k): v for k, v in sorted(http_status.items())},
        # how late the generator itself started attempts (open loop; part of connect_ms)
        "not_started": not_started,
        "start_lag": {"late_starts": late, **{k: v for k, v in nearest_rank(lag_ms).items()
                                              if k in ("p50", "p99", "max")}},
        # what the generator itself cost: its workers' CPU (user + system) per attempt, and
        # how often the CPU was taken from them (involuntary context switches)
        "generator": {"cpu_us_per_attempt": round(cpu_s / total * 1e6, 1) if total else None,
                      "sys_us_per_attempt": round(sys_s / total * 1e6, 1) if total else None,
                      "cpu_s": round(cpu_s, 3), "sys_s": round(sys_s, 3), "preempted": preempted,
                      "wakeups": wakeups,
                      "in_flight_max": sum(r.in_flight_max for r in parts)},  # an upper bound
        # the TCP timestamp offset of each source address's first connection (the earliest
        # worker's, per address): per host pair on 4.11-6.17, so validate can start the
        # model's offsets from the kernel's (sockopt.ts_offset())
        "ts_offsets": _ts_offsets(parts),
        "per_second": {
            "attempts": tl.attempts, "ok": tl.ok, "failed": tl.failed, "delayed": tl.delayed,
            "time_wait": tw,
        },
        "counters": nonzero,
        "interrupted": interrupted,
        "host": config.host_name,
        "notes": notes,
    }

    from ..model.profiles import get_profile

    try:
        profile = get_profile("linux-native").name
    except Exception:  # an unparsable kernel release must not lose the run
        profile = "linux"
    hosts = {config.host_name: HostInfo(
        name=config.host_name, group=config.workload, role="client", profile=profile,
        addresses=[a for a in addr_voc[1:] if a not in ("0.0.0.0", "::")] or list(config.sources),
        settings=dict(settings),
    )}
    result = RunResult(
        source="load", scenario=config.scenario, duration_s=round(elapsed, 6), attempts=table,
        timeline=tl, counters={config.host_name: counters}, hosts=hosts, seed=config.seed,
        notes=notes, meta={
            "kernel": platform.release(),
            "t0_unix": round(t0_unix, 6),  # wall-clock time of t = 0
            # CLOCK_MONOTONIC at t = 0: places the attempts on the kernel's own clock (the lab),
            # free of the error in converting between the wall clock and it
            "t0_monotonic": None if t0_mono is None else round(t0_mono, 6),
            "load": {k: v for k, v in summary.items() if k not in ("per_second", "notes", "counters")},
            "histograms": {"connect_us": connect_h.encode().decode() if connect_h.get_total_count() else "",
                           "request_us": request_h.encode().decode() if request_h.get_total_count() else ""},
        },
    )
    return LoadRun(config=config, result=result, summary=summary)


def _ts_offsets(parts: list[WorkerResult]) -> dict[str, int]:
    """Per source address, the TS offset the earliest worker read (WorkerResult.ts_offsets)."""
    out: dict[str, int] = {}
    for r in sorted(parts, key=lambda r: float(r.t[0]) if len(r.t) else math.inf):
        for src, off in r.ts_offsets.items():
            if off is not None and src not in out:
                out[src] = off
    return out


def schedule_window(config: LoadConfig, due: np.ndarray, stopped_at: float | None, last_end: float) -> float:
    """The time the rates divide by: the window attempts were scheduled in, not the time
    to the last completion (a target that drops SYNs makes that seconds longer, and the
    generator would look as if it fell behind).

    - interrupted: from t = 0 to the stop;
    - open loop: until the schedule ended: --duration, or with --count the time the next
      arrival would have been due (a constant rate R and count N: N / R);
    - closed loop: --duration when it ended the run (attempts are started until then);
      with --count only, until the last completion (a closed loop starts an attempt
      when one ends, so its window is the time it took).
    """
    dur = config.duration
    if stopped_at is not None:
        return min(stopped_at, dur) if dur is not None else stopped_at
    if config.mode == "open":
        rate = config.rate or 0.0
        n = int(due.size)
        if config.count is not None and n >= config.count and rate > 0:
            if config.arrival == "constant":
                nxt = config.count / rate
            elif config.arrival == "ramp" and dur is not None:
                from .arrival import _ramp_time

                nxt = _ramp_time(config.count, config.ramp_from, rate, dur) or dur
            else:  # poisson: the mean gap after the last one
                nxt = float(due.max()) + 1.0 / rate
            return min(nxt, dur) if dur is not None else nxt
        if dur is not None:
            return dur
        return float(due.max()) + 1.0 / rate if n and rate > 0 else last_end
    if dur is not None and (config.count is None or last_end >= dur):
        return dur
    return last_end
