"""Run a scenario on the real kernel: build, serve, load, measure, merge, always tear down.

The order matters for what the numbers mean:
  1. topology (namespaces, links, sysctls, nftables), then `serve` in every server
     namespace, ready when its sockets are in LISTEN;
  2. tcpdump per interface when asked, ready when it says "listening";
  3. counters of every namespace (before), t = 0, `load` in every client namespace (each
     at its workload's start_s), TIME_WAIT/conntrack sampled every second;
  4. loads end (or their deadline passes), 0.5 s for the last FIN/ACKs, counters (after),
     the flows NAT/LB recorded (ctevents.py, joined in flows.py), captures stopped (files complete), servers stopped;
  5. everything removed: on success, error, Ctrl-C, SIGTERM/SIGHUP (handlers + finally +
     atexit). A SIGKILLed run leaves a state file for `tcpreuse lab cleanup`.
An interrupted run still returns what was measured (partial results, marked).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LabError, TcpreuseError
from ..model.profiles import get_profile
from ..model.settings import SETTINGS, known_settings
from ..result import HostInfo, RunResult
from ..scenario.schema import Scenario
from ..signals import Signalled, raising
from . import state
from .merge import Observed, Part, merge
from .netns import PREFIX, require_root
from .plan import LabPlan, Load, Serve, build_plan
from .procnet import ProcNet
from .realise import Realisation, realise
from .topology import Topology

SETTLE_S = 0.5
WATCHDOG_S = 3.0  # a load still running this long after its bound is stopped, then killed
LOAD_LEAD_S = 1.5  # a load process starts (imports, fork) well within this before its first attempt
READY_TIMEOUT_S = 20.0
GO_MARGIN_S = 0.25  # from the last load's "ready" to the common start: the go's delivery, wake-ups


class LabInterrupted(TcpreuseError):
    """Stopped by a signal before anything could be measured (exit 128 + the signal)."""

    exit_code = 130



@dataclass
class LabOptions:
    approximate: bool = False
    capture: Path | None = None
    python: str = field(default_factory=lambda: sys.executable)
    step_s: float = 1.0
    progress: Callable[[str], None] | None = None
    # seconds a load's attempts in flight may take after its duration before they are cut
    # (load --drain); None: the load's connect + request timeouts, so every attempt ends as
    # the model's would (see drain_of)
    grace_s: float | None = None
    trace: bool = False  # record the kernel's verdicts (lab/tracing.py)
    force: bool = False  # run what the estimate says will not fit (load/budget.py)
    # called about twice a second while the loads run: (seconds since t = 0, the bound)
    on_tick: Callable[[float, float], None] | None = None
    # NAT/LB/loss backend: auto (nftables where it can load an ip table), nft, iptables
    netfilter: str = "auto"
    # seconds between starting a load and its first attempt (longer on a slow kernel); a
    # load slower to get ready than this delays every load (the start barrier, _start_loads)
    lead_s: float = LOAD_LEAD_S
    # each load keeps at most this many attempts in flight (load --max-in-flight); None: no
    # cap. 1 for a workload the model runs one connection after another (validate's
    # suite.SEQUENTIAL): a late answer then delays the next attempt (measured start lag)
    # instead of overlapping it, which would hold ports the model's run never holds
    max_in_flight: int | None = None
    # how long the start barrier waits for the slowest load (None: max(20 s, 4 x lead_s))
    start_timeout_s: float | None = None
    # where in its second of CLOCK_MONOTONIC the first attempt falls (the barrier's start
    # waits up to 1 s more for it); None: as soon as the loads are ready. validate asks it
    # for a version-discriminating run (validate/phase.py)
    start_phase_s: float | None = None


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP while tearing down, so cleanup always completes."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def serve_argv(python: str, s: Serve) -> list[str]:
    if s.workers:  # a server slower than its load: bounded concurrency (boundserve.py)
        argv = [python, "-m", "tcpreuse.lab.boundserve"]
        for a, p in s.listen:
            argv += ["--listen", f"{a}:{p}"]
        return [*argv, "--backlog", str(s.backlog), "--workers", str(s.workers),
                "--delay-ms", _fmt(s.delay_ms), "--close", s.close]
    argv = [python, "-m", "tcpreuse", "serve"]
    for a, p in s.listen:
        argv += ["--listen", f"{a}:{p}"]
    return [*argv, "--backlog", str(s.backlog), "--close", s.close, "--delay-ms",
            _fmt(s.delay_ms), "--idle-timeout", "30", "--workers", "1"]


def drain_of(ld: Load, grace_s: float | None) -> float:
    """How long a load's attempts in flight may take after its duration: by default its
    connect plus request timeouts, so an attempt due at the very end still ends by its own
    timeout (as in the simulator) and is not cut as "unfinished"."""
    return grace_s if grace_s is not None else ld.connect_timeout_s + ld.request_timeout_s


def bound_of(plan: LabPlan, grace_s: float | None, lead_s: float = LOAD_LEAD_S) -> float:
    """Seconds from the loads' t = 0 by which every load has ended (each stops itself at
    its start + duration + drain; the lab stops what is left WATCHDOG_S later)."""
    return lead_s + max((ld.start_s + ld.duration_s + drain_of(ld, grace_s) for ld in plan.loads),
                             default=0.0)


def budget_problems(plan: LabPlan) -> list[str]:
    """What will not fit this machine: a load beyond one generator process (each runs
    with one worker), all loads together beyond the machine's CPUs, or their records
    beyond its memory (the lab merges every record in this process)."""
    import os

    import psutil

    from ..load import budget

    cpus = os.cpu_count() or 1
    out = []
    for ld in plan.loads:
        if ld.rate > budget.GENERATOR_RATE_PER_CPU:
            out.append(f"the load on {ld.host} ({ld.workload}) at {ld.rate:,.6g}/s is more than one generator "
                       f"process starts (about {budget.GENERATOR_RATE_PER_CPU:,.0f}/s)")
    total = sum(ld.rate for ld in plan.loads)
    if total > budget.GENERATOR_RATE_PER_CPU * cpus and not out:
        out.append(f"the loads together, {total:,.6g}/s, are more than this machine's {cpus} CPU(s) start "
                   f"(about {budget.GENERATOR_RATE_PER_CPU * cpus:,.0f}/s)")
    n = sum(budget.attempts_of(ld.rate, ld.duration_s, ld.count, arrival=ld.arrival, ramp_from=ld.ramp_from)
            for ld in plan.loads)
    need = n * budget.BYTES_PER_ATTEMPT_RESULT
    avail = psutil.virtual_memory().available
    if need > budget.MEMORY_SHARE * avail:
        out.append(f"{n:,.0f} attempts would need about {budget.size_text(need)} of memory for their records; "
                   f"{budget.size_text(avail)} is available")
    return out


def _start_arg(start_at: float | str) -> str:
    return start_at if isinstance(start_at, str) else f"{start_at:.6f}"


def load_argv(python: str, ld: Load, result: Path, scenario: str,
              start_at: float | str | None = None, drain: float | None = None,
              max_in_flight: int | None = None) -> list[str]:
    argv = [python, "-m", "tcpreuse", "load", f"{ld.target[0]}:{ld.target[1]}",
            "--rate", _fmt(ld.rate), "--duration", _fmt(ld.duration_s), "--arrival", ld.arrival,
            "--close", ld.close, "--requests-per-conn", str(ld.requests_per_conn),
            "--protocol", "line", "--bind", ld.bind, "--workers", "1",
            "--host-name", ld.host, "--result", str(result), "--workload", ld.workload,
            "--scenario", scenario, "--seed", str(ld.seed), "--quiet",
            "--connect-timeout", _fmt(ld.connect_timeout_s),
            "--request-timeout", _fmt(ld.request_timeout_s)]
    if ld.count is not None:
        argv += ["--count", str(ld.count)]
    if max_in_flight is not None:
        argv += ["--max-in-flight", str(max_in_flight)]
    if drain is not None:
        # the budget was checked (and maybe overridden) by the lab, for all loads at once
        argv += ["--drain", _fmt(drain), "--force"]
    if start_at is not None:
        argv += ["--start-at", _start_arg(start_at)]
    if ld.arrival == "ramp":
        argv += ["--ramp-from", _fmt(ld.ramp_from)]
    if ld.bind != "none":  # bind none: the kernel picks the (primary) source, as in simulate
        for a in ld.sources:
            argv += ["--source", a]
    return argv


def emulate_argv(python: str, ld: Load, result: Path, profile: Path, scenario: str,
                 start_at: float | str, drain: float | None = None) -> list[str]:
    """The packet-level client (tcpreuse.emulate) for a Windows/macOS client's load; the
    phase is already in start_at, as for `load` ("wait": the start barrier's)."""
    argv = [python, "-m", "tcpreuse", "emulate", f"{ld.target[0]}:{ld.target[1]}",
            "--profile-json", str(profile), "--source", ld.sources[0], "--rate", _fmt(ld.rate),
            "--duration", _fmt(ld.duration_s), "--close", ld.close, "--seed", str(ld.seed),
            "--connect-timeout", _fmt(ld.connect_timeout_s),
            "--request-timeout", _fmt(ld.request_timeout_s), "--host-name", ld.host,
            "--workload", ld.workload, "--scenario", scenario, "--result", str(result),
            "--start-at", _start_arg(start_at), "--quiet"]
    if ld.count is not None:
        argv += ["--count", str(ld.count)]
    if drain is not None:
        argv += ["--drain", _fmt(drain)]
    return argv


def _tail(path: Path, n: int = 400) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


class LabRun:
    """One run. Use run() once; teardown() is idempotent and also registered with atexit."""

    def __init__(self, sc: Scenario, opts: LabOptions, r: Realisation) -> None:
        self.sc, self.opts, self.r = sc, opts, r
        self.run_id = secrets.token_hex(3)
        self.plan: LabPlan = build_plan(sc, r, self.run_id)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{PREFIX}lab-{self.run_id}-"))
        self.topo = Topology(self.plan, self.scratch, opts.python)
        self.serves: dict[str, subprocess.Popen[bytes]] = {}
        self.loads: list[tuple[Load, subprocess.Popen[bytes] | None, Path, float]] = []
        self.captures: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.notes: list[str] = []
        self.interrupted: str | None = None
        self._torn_down = False
        self._samples: dict[str, dict[str, list[int]]] = {}
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._trace: Any = None  # a lab.tracing.LabTrace while the kernel is traced
        self.tick_delay: float | None = None
        self.jiffies_lag: float | None = None
        # (whole second of CLOCK_MONOTONIC, s after it that the kernel's seconds value turned),
        # watched while the loads run (clockphase.watch_seconds)
        self.seconds_turns: list[tuple[int, float]] = []
        self._turns: threading.Thread | None = None
        self.barrier: dict[str, Any] | None = None  # what the start barrier waited (_start_loads)

    # ---- helpers ----------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.opts.progress:
            self.opts.progress(msg)

    def _log(self, name: str) -> Path:
        return self.scratch / f"{name}.log"

    def _popen(self, host: str, argv: list[str], log: Path,
               stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return self.topo.ns[host].popen(argv, stdin=stdin, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def _wait_until(self, what: str, ok: Callable[[], bool], alive: Callable[[], bool],
                    log: Path) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ok():
            if not alive():
                raise LabError(f"{what} exited at start: {_tail(log) or 'no output'}")
            if time.monotonic() > deadline:
                raise LabError(f"{what} not ready after {READY_TIMEOUT_S:g} s: {_tail(log) or 'no output'}")
            time.sleep(0.05)

    # ---- phases -----------------------------------------------------------------------
    def _start_serves(self) -> None:
        for s in self.plan.serves:
            log = self._log(f"serve-{s.host}")
            p = self._popen(s.host, serve_argv(self.opts.python, s), log)
            self.serves[s.host] = p
        for s in self.plan.serves:
            p, pn, want = self.serves[s.host], self.topo.procnet(s.host), set(s.listen)
            self._wait_until(f"serve on {s.host}", _listening(pn, want), _alive(p),
                             self._log(f"serve-{s.host}"))

    def _start_captures(self, where: Path) -> None:
        if shutil.which("tcpdump") is None:
            raise LabError("--capture needs tcpdump, which is not installed")
        where.mkdir(parents=True, exist_ok=True)
        for h in self.plan.hosts.values():
            for dev in ([h.uplink] if h.uplink else []) + list(h.downlinks):
                path = where / f"{h.key}-{dev}.pcap"
                log = self._log(f"tcpdump-{h.key}-{dev}")
                # --immediate-mode: without it libpcap hands packets over a ring block at a
                # time (up to 1 s late), and the packets of the last block are lost at SIGINT
                p = self._popen(h.key, ["tcpdump", "-i", dev, "-n", "-U", "--immediate-mode", "-s", "256",
                                        "-Z", "root", "-w", str(path)], log)
                self.captures.append((p, path))
        for p, path in self.captures:
            log = self._log(f"tcpdump-{path.stem}")
            self._wait_until(f"tcpdump ({path.name})", _says(log, "listening on"), _alive(p), log)

    def _sample(self, t0: float) -> None:
        hosts = [h for h in self.plan.hosts.values() if h.role != "router"]
        for h in hosts:
            self._samples[h.key] = {"time_wait": [], "tcp_inuse": []}
            if h.role in ("nat", "lb"):
                self._samples[h.key]["conntrack"] = []
        k = 1
        while not self._stop_sampling.wait(max(0.0, t0 + k * self.opts.step_s - time.monotonic())):
            for h in hosts:
                try:
                    pn = self.topo.procnet(h.key)
                except KeyError:  # torn down under us (error path): stop quietly
                    return
                st = pn.sockstat()
                series = self._samples[h.key]
                series["time_wait"].append(st.time_wait)
                series["tcp_inuse"].append(st.tcp_inuse)
                if "conntrack" in series:
                    series["conntrack"].append(pn.conntrack_count())
            k += 1

    def _start_loads(self) -> tuple[float, float]:
        """The start barrier: launch every load at once with --start-at wait; each gets
        ready (imports, checks, its workers forked, or its TUN device) and says so
        (load/barrier.py). Only when
        all have is the common start handed out, so a slow start-up delays the whole run
        instead of one client starting alone, late. The run's t = 0 is lead_s before that
        start (at least lead_s after the launch, as without the barrier); each load's first
        attempt is due at t = lead_s + its start_s + its phase, which keeps staggered
        workloads and the clients' interleaving as planned. -> (t0 monotonic, t0 Unix)."""
        from ..load.barrier import READY_LINE

        lead, grace = self.opts.lead_s, self.opts.grace_s
        timeout = self.opts.start_timeout_s or max(READY_TIMEOUT_S, 4.0 * lead)
        launched = time.monotonic()
        for ld in self.plan.loads:
            res = self.scratch / f"{ld.name}.json"
            if ld.emulated:
                prof = self.scratch / f"{ld.name}.profile.json"
                prof.write_text(ld.emulated)
                argv = emulate_argv(self.opts.python, ld, res, prof, self.plan.scenario, "wait",
                                    drain_of(ld, grace))
            else:
                argv = load_argv(self.opts.python, ld, res, self.plan.scenario, "wait", drain_of(ld, grace),
                                 self.opts.max_in_flight)
            p = self._popen(ld.host, argv, self._log(ld.name), stdin=subprocess.PIPE)
            self.loads.append((ld, p, res, lead + ld.start_s + ld.phase_s))
        ready: dict[str, float] = {}
        while len(ready) < len(self.loads):
            for ld, q, _, _ in self.loads:
                if ld.name in ready:
                    continue
                log = self._log(ld.name)
                if READY_LINE in _tail(log, 4000):
                    ready[ld.name] = time.monotonic() - launched
                elif q is not None and q.poll() is not None:
                    raise LabError(f"load on {ld.host} ({ld.workload}) exited at start: "
                                   f"{_tail(log) or 'no output'}")
            if len(ready) < len(self.loads) and time.monotonic() - launched > timeout:
                ld = next(ld for ld, _, _, _ in self.loads if ld.name not in ready)
                raise LabError(f"load on {ld.host} ({ld.workload}) not ready {timeout:g} s after its "
                               f"launch (start barrier; {len(ready)} of {len(self.loads)} loads "
                               f"ready): {_tail(self._log(ld.name)) or 'no output'}")
            time.sleep(0.02)
        waited = time.monotonic() - launched
        # the go must reach each process, and each its workers, before the first attempt
        go = max(launched + lead, launched + waited + max(GO_MARGIN_S, 0.1 * lead))
        if self.opts.start_phase_s is not None and self.loads:
            first = go + min(ld.start_s + ld.phase_s for ld, _, _, _ in self.loads)
            go += (self.opts.start_phase_s - first) % 1.0
        t0 = go - lead
        t0_unix = time.time() + (t0 - time.monotonic())
        for ld, q, _, _ in self.loads:
            if q is None or q.stdin is None:
                continue
            with contextlib.suppress(OSError):  # died meanwhile: it has no result, noted later
                q.stdin.write(f"{t0_unix + lead + ld.start_s + ld.phase_s:.6f}\n".encode())
                q.stdin.close()
        slowest = max(ready, key=lambda k: ready[k]) if ready else None
        self.barrier = {"waited_s": round(waited, 3), "slowest": slowest,
                        "late_s": round(max(0.0, go - launched - lead), 3),
                        "ready_s": {k: round(v, 3) for k, v in ready.items()}, "timeout_s": timeout}
        if self.barrier["late_s"] > 0:
            self._say(f"the loads took {waited:.2f} s to get ready (slowest {slowest}): "
                      f"the run starts {self.barrier['late_s']:g} s later than planned, all together")
        return t0, t0_unix

    def _run_loads(self, t0: float, t0_unix: float) -> None:
        """Watch the loads (started by _start_loads, each at its own start_s) until they
        end or their bound passes."""
        grace = self.opts.grace_s
        bound = bound_of(self.plan, grace, self.opts.lead_s)
        deadline = t0 + bound + WATCHDOG_S
        running = [p for _, p, _, _ in self.loads if p is not None]
        self._say(f"load running for {max((ld.start_s + ld.duration_s) for ld in self.plan.loads):g} s, "
                  f"ending within {bound:g} s (start-up {self.opts.lead_s:g} s, then what is in flight "
                  f"gets its timeouts)" if self.plan.loads else "no load to run")
        next_tick = 0.0
        while any(p.poll() is None for p in running):
            now = time.monotonic()
            if self.opts.on_tick is not None and now >= next_tick:
                self.opts.on_tick(now - t0, bound)
                next_tick = now + 0.5
            if now > deadline:
                self.notes.append(f"a load ran {WATCHDOG_S:g} s past its bound ({bound:g} s) and was "
                                  "stopped; its attempts still in flight are lost")
                self._stop_loads(timeout=WATCHDOG_S)
                break
            time.sleep(0.05)

    def _stop_loads(self, timeout: float = 10.0) -> None:
        for _, p, _, _ in self.loads:
            if p is not None and p.stdin is not None and not p.stdin.closed:
                with contextlib.suppress(OSError):  # still at the start barrier: EOF ends it
                    p.stdin.close()
            if p is not None and p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for _, p, _, _ in self.loads:
            if p is None:
                continue
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()

    def _stop(self, procs: list[subprocess.Popen[bytes]], sig: int, timeout: float) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
        end = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=2)

    # ---- the run ----------------------------------------------------------------------
    def run(self) -> RunResult:
        # what runs killed with SIGKILL left (namespaces, their serve/load, scratch): gone
        # before this run starts; live runs are left alone (state.cleanup)
        stale = state.cleanup()
        if stale.namespaces or stale.scratch:
            self.notes.append(stale.summary())
            self._say(stale.summary())
        state.register(self.run_id, self.plan.ns_names(), str(self.scratch))
        atexit.register(self.teardown)
        t0 = time.monotonic()
        t0_unix = time.time()
        before: dict[str, dict[str, int]] = {}
        started = False
        try:
            with raising():
                try:
                    self._say(f"building {len(self.plan.hosts)} network namespaces (run {self.run_id})")
                    self.topo.build()
                    self.read_settings()
                    # the kernel's tick phase and jiffies (clockphase.py)
                    self.tick_delay, self.jiffies_lag = _tick_delay()
                    self.notes += self.topo.notes
                    self._say(f"starting serve on {len(self.plan.serves)} server(s)")
                    self._start_serves()
                    if self.opts.capture is not None:
                        self._start_captures(self.opts.capture)
                    if self.opts.trace:
                        self._start_trace()
                    before = {k: self.topo.procnet(k).counters() for k in self.plan.hosts if k != "router"}
                    t0, t0_unix = self._start_loads()
                    started = True
                    self._sampler = threading.Thread(target=self._sample, args=(t0,), daemon=True)
                    self._sampler.start()
                    from .clockphase import watch_seconds

                    self._turns = threading.Thread(target=watch_seconds, daemon=True,
                                                   args=(self._stop_sampling, self.seconds_turns))
                    self._turns.start()
                    self._run_loads(t0, t0_unix)
                    time.sleep(SETTLE_S)
                except (KeyboardInterrupt, Signalled) as e:
                    self.interrupted = ("SIGINT" if isinstance(e, KeyboardInterrupt)
                                        else signal.Signals(e.signum).name)
                    self._say(f"interrupted ({self.interrupted}); collecting what was measured")
                    self._stop_loads()
                    if not started:
                        err = LabInterrupted(f"lab run interrupted by {self.interrupted} before "
                                             "any load started; everything it created is removed")
                        err.exit_code = 128 + signal.Signals[self.interrupted].value
                        raise err from None
                return self._collect(t0, t0_unix, before)
        finally:
            self.teardown()

    def _collect(self, t0: float, t0_unix: float, before: dict[str, dict[str, int]]) -> RunResult:
        duration = time.monotonic() - t0
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        if self._turns is not None:
            self._turns.join(timeout=5)
        obs = Observed(duration_s=duration, step_s=self.opts.step_s)
        end: dict[str, dict[str, int]] = {}
        for k, h in self.plan.hosts.items():
            if k == "router":
                continue
            pn = self.topo.procnet(k)
            obs.counters[k] = {n: v for n, v in _deltas(before.get(k, {}), pn.counters()).items()}
            st = pn.sockstat()
            end[k] = {"time_wait": st.time_wait, "tcp_inuse": st.tcp_inuse}
            if h.role in ("nat", "lb"):
                end[k]["conntrack"] = pn.conntrack_count()
                flows, lost = self.topo.flows(k)
                if lost:
                    self.notes.append(f"{k}: the kernel dropped {lost} batch(es) of conntrack "
                                      "events; their flows have no server-side view")
                flows = flows.shifted(t0_unix)  # wall clock -> the run's clock
                if h.role == "nat":
                    obs.nat = flows
                else:
                    obs.lb = flows
        # the last step's sample is the state at the end (the sampler stopped before it)
        steps = max(1, math.ceil(duration / self.opts.step_s - 1e-9))
        obs.samples = {k: {n: list(v) + [end[k].get(n, v[-1] if v else 0)] * (steps - len(v))
                           for n, v in s.items()} for k, s in self._samples.items()}
        self._stop([p for p, _ in self.captures], signal.SIGINT, 5.0)
        self._stop(list(self.serves.values()), signal.SIGTERM, 5.0)

        parts = []
        for ld, p, res, launched in self.loads:
            rc = p.returncode if p is not None else None
            result = None
            if res.exists():
                try:
                    result = RunResult.from_json(json.loads(res.read_text()))
                except Exception as e:  # a half-written file from a killed load
                    self.notes.append(f"load on {ld.host} ({ld.workload}): unreadable result ({e})")
            if result is None:
                self.notes.append(f"load on {ld.host} ({ld.workload}) produced no result "
                                  f"(exit {rc}): {_tail(self._log(ld.name))}")
                parts.append(Part(ld, None, launched))
                continue
            offset = launched
            t_start = result.meta.get("t0_unix", result.meta.get("started_unix"))
            t_mono = result.meta.get("t0_monotonic")
            if isinstance(t_mono, int | float) and abs(t_mono - t0 - launched) < 30:
                # one kernel, one CLOCK_MONOTONIC: exact, where converting through the wall
                # clock (read apart from the monotonic one in each process) was off by as
                # much as a process was preempted between the two reads (ms in a loaded UML)
                offset = float(t_mono) - t0
            elif isinstance(t_start, int | float) and abs(t_start - t0_unix - launched) < 30:
                offset = float(t_start) - t0_unix
            parts.append(Part(ld, result, offset))
        if self.plan.loads and all(p.result is None for p in parts) and not self.interrupted:
            raise LabError("no load produced a result: " + "; ".join(self.notes[-len(parts):]))

        out = merge(self.plan, parts, obs, seed=self.sc.seed, notes=self._notes(),
                    meta=self._meta(t0_unix, end, parts))
        out.hosts = self._hosts()
        if self._trace is not None:
            self._trace.attach(out)
        out.meta["t0_monotonic"] = round(t0, 6)  # CLOCK_MONOTONIC at t = 0: the kernel's clock phase
        out.meta["tick_delay_s"] = self.tick_delay
        out.meta["jiffies_lag_s"] = self.jiffies_lag
        out.meta["seconds_turns"] = [[n, d] for n, d in self.seconds_turns]
        out.meta["start_barrier"] = self.barrier
        return out

    def _start_trace(self) -> None:
        from .tracing import LabTrace

        self._say("starting the kernel trace")
        self._trace = LabTrace([port for s in self.plan.serves for _, port in s.listen])
        note = self._trace.start()
        if note:
            self.notes.append(note)
            self._trace = None

    def _notes(self) -> list[str]:
        out = list(self.r.notes)
        if self.opts.approximate:
            out += [f"approximation: {d}" for d in self.r.differences]
        out += self.notes
        if self.interrupted:
            out.append(f"interrupted by {self.interrupted}: partial results")
        return out

    def _meta(self, t0_unix: float, end: dict[str, dict[str, int]], parts: list[Part]) -> dict[str, Any]:
        captures = [str(path) for _, path in self.captures if path.exists()]
        return {
            "kernel": platform.release(),
            "run_id": self.run_id,
            "t0_unix": round(t0_unix, 6),
            "approximate": self.opts.approximate,
            "approximations": list(self.r.differences) if self.opts.approximate else [],
            "interrupted": self.interrupted,
            "topology": {
                k: {"ns": h.ns, "role": h.role, "addresses": h.addresses,
                    "via": next((link.upper for link in self.plan.links if link.lower == k), None)}
                for k, h in self.plan.hosts.items()
            },
            "nftables": {k: h.nft for k, h in self.plan.hosts.items() if h.nft},
            "iptables": {k: h.ipt for k, h in self.plan.hosts.items() if h.ipt},
            "loads": [
                {"host": p.load.host, "workload": p.load.workload,
                 "target": f"{p.load.target[0]}:{p.load.target[1]}",
                 "rate": round(p.load.rate, 6), "duration_s": p.load.duration_s,
                 "count": p.load.count, "offset_s": round(p.offset_s, 4),
                 "attempts": len(p.result.attempts) if p.result else None,
                 "emulated": bool(p.load.emulated),
                 "start_lag": p.result.meta.get("load", {}).get("start_lag") if p.result else None,
                 # the TCP timestamp offset of the load's first connection per source address
                 # (load/sockopt.py ts_offset()): the kernel's secret draw, seen from outside
                 "ts_offsets": p.result.meta.get("load", {}).get("ts_offsets") if p.result else None,
                 # due time -> the client's close() (when its port, and its TIME_WAIT, begin)
                 "close_ms": p.result.meta.get("load", {}).get("close_ms") if p.result else None,
                 "max_in_flight": None if p.load.emulated else self.opts.max_in_flight}
                for p in parts
            ],
            "serve_close": {s.host: s.close for s in self.plan.serves},
            "end": end,
            "captures": captures,
        }

    def _hosts(self) -> dict[str, HostInfo]:
        kernel = self.r.kernel
        names = [s.name for s in known_settings(kernel) if not s.name.startswith("net.netfilter.")]
        out = {}
        for k, h in self.plan.hosts.items():
            if k == "router":
                continue
            keys = names if h.role in ("client", "server") else sorted(h.sysctls)
            raw = self.topo.settings.get(k, {})
            settings: dict[str, Any] = {}
            for n in keys:
                if n not in raw:
                    continue
                s = SETTINGS.get(n)
                try:
                    v = s.validate(raw[n], kernel) if s else raw[n]
                except (ValueError, TypeError):
                    v = raw[n]
                settings[n] = sorted(v) if isinstance(v, frozenset) else v  # JSON has no sets
            if h.emulated:  # the emulator's parameters, not the namespace's sysctls
                out[k] = HostInfo(name=k, group=h.group, role=h.role, profile=h.profile,
                                  addresses=list(h.addresses),
                                  settings={"emulated": True, **json.loads(h.emulated)})
                continue
            if h.role in ("client", "server"):
                prof = get_profile(h.profile)
                exact = prof.os == "linux" and not any(
                    f"group {h.group!r}" in d for d in self.r.differences)
                profile = prof.name if exact else kernel.name
            else:
                profile = f"{'iptables-legacy' if h.ipt else 'nftables'} on {kernel.name}"
            out[k] = HostInfo(name=k, group=h.group, role=h.role, profile=profile,
                              addresses=list(h.addresses), settings=settings)
        return out

    def read_settings(self) -> None:
        kernel = self.r.kernel
        names = [s.name for s in known_settings(kernel) if not s.name.startswith("net.netfilter.")]
        self.topo.read_settings({k: (names if h.role in ("client", "server") else sorted(h.sysctls))
                                 for k, h in self.plan.hosts.items() if k != "router"})

    def teardown(self) -> None:
        if self._torn_down:
            return
        with _no_signals():
            self._stop_sampling.set()
            if self._sampler is not None:
                self._sampler.join(timeout=5)
            if self._trace is not None:
                self._trace.stop()
            procs = [p for _, p, _, _ in self.loads if p is not None]
            procs += [p for p, _ in self.captures] + list(self.serves.values())
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            self.topo.teardown()
            state.unregister(self.run_id)
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._torn_down = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.teardown)


def _tick_delay() -> tuple[float | None, float | None]:
    from ..validate.kernel import running_hz
    from .clockphase import read_jiffies_lag, tick_delay

    hz = running_hz().value
    td = tick_delay(hz)
    return td, read_jiffies_lag(hz, td or 0.0)


def _alive(p: subprocess.Popen[bytes]) -> Callable[[], bool]:
    return lambda: p.poll() is None


def _listening(pn: ProcNet, want: set[tuple[str, int]]) -> Callable[[], bool]:
    return lambda: want <= pn.listening()


def _says(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in _tail(log, 4000)


def _deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def check_tools(plan: LabPlan, capture: bool) -> None:
    require_root()
    if any(h.ipt for h in plan.hosts.values()) and shutil.which("iptables-legacy-restore") is None:
        raise LabError("this scenario needs iptables-legacy (NAT, LB or loss on a kernel whose "
                       "nftables has no ip family), and it is not installed (Debian: iptables)")
    if any(h.nft for h in plan.hosts.values()) and shutil.which("nft") is None:
        raise LabError("this scenario needs nftables (NAT, LB or loss), and `nft` is not installed")
    if capture and shutil.which("tcpdump") is None:
        raise LabError("--capture needs tcpdump, which is not installed")
    if shutil.which("sysctl") is None:
        raise LabError("the `sysctl` command (procps) is not installed")


def run_lab(sc: Scenario, opts: LabOptions | None = None) -> RunResult:
    """Run `sc` on the running kernel; raise UnsupportedError when it cannot (see realise)."""
    opts = opts or LabOptions()
    r = realise(sc)
    r.check(opts.approximate)
    if sc.nat is not None or sc.lb is not None or sc.path.loss:
        from .iptables import choose

        r.netfilter = choose(opts.netfilter)
    run = LabRun(sc, opts, r)
    try:
        if not opts.force:
            problems = budget_problems(run.plan)
            if problems:
                from ..load.budget import refusal

                raise LabError(refusal(problems, "lab run"))
        check_tools(run.plan, opts.capture is not None)
    except BaseException:
        shutil.rmtree(run.scratch, ignore_errors=True)
        raise
    return run.run()


def scratch_leftovers() -> list[str]:
    """Scratch directories of lab runs (for tests and cleanup reporting)."""
    base = Path(tempfile.gettempdir())
    return sorted(str(p) for p in base.glob(f"{PREFIX}lab-*") if p.is_dir())

