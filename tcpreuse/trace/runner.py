"""bpftrace as a subprocess: start it, drain its stdout continuously, stop it.

The reader thread never stops reading while bpftrace runs: a pipe left full blocks
bpftrace's perf-buffer reader and the kernel then drops events (silently, except for
bpftrace's ``lost_events`` records, which are counted and reported). Events are decoded
in that thread and queued; the caller takes them with :meth:`Tracer.poll`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import resource
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .events import Control, Decoder, TraceEvent
from .kernel import KernelInfo, TraceUnavailable, bpftrace_path, check, read_kernel, tracefs_mounted
from .program import Filter, Plan, build

Item = TraceEvent | Control


def _raise_memlock() -> None:  # runs in the child before exec
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _first_error(lines: list[str]) -> str:
    for ln in lines:
        s = ln.strip()
        if s and "RLIMIT_MEMLOCK" not in s and not s.startswith("Attaching"):
            return s
    return "bpftrace exited before tracing started"


@dataclass
class Tracer:
    plan: Plan
    decoder: Decoder
    bpftrace: str = "bpftrace"
    lost: int = 0
    stderr: list[str] = field(default_factory=list)
    _q: queue.SimpleQueue[Item | None] = field(default_factory=queue.SimpleQueue)
    _proc: subprocess.Popen[bytes] | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _dir: tempfile.TemporaryDirectory[str] | None = None
    ready_ns: int = 0

    def start(self, timeout: float = 60.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tcpr-trace-")
        path = os.path.join(self._dir.name, "trace.bt")
        with open(path, "w") as f:
            f.write(self.plan.text)
        # 1 MiB per CPU of perf ring (bpftrace defaults to 64 pages): bursts do not overflow it
        env = {**os.environ, "BPFTRACE_STRLEN": "32",
               "BPFTRACE_PERF_RB_PAGES": os.environ.get("BPFTRACE_PERF_RB_PAGES", "256")}
        self._proc = subprocess.Popen([self.bpftrace, "-f", "json", path], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                      preexec_fn=_raise_memlock)
        assert self._proc.stdout is not None
        with contextlib.suppress(OSError, AttributeError):  # a larger pipe rides out a slow moment of the reader
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        for target in (self._read_stdout, self._read_stderr):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        deadline = time.monotonic() + timeout
        pending: list[Item] = []
        while True:
            try:
                item = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TraceUnavailable(f"bpftrace did not start within {timeout:g} s") from None
            if item is None:
                self.stop()
                raise TraceUnavailable(f"bpftrace failed: {_first_error(self.stderr)}")
            if isinstance(item, Control) and item.kind == "ready":
                self.ready_ns = item.value
                break
            pending.append(item)
        for it in pending:
            self._q.put(it)

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            item = self.decoder.line(raw)
            if item is None:
                continue
            if isinstance(item, Control) and item.kind == "lost":
                self.lost += item.value
            self._q.put(item)
        self._q.put(None)

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            if len(self.stderr) < 200:
                self.stderr.append(raw.decode(errors="replace").rstrip())

    def poll(self, timeout: float) -> tuple[list[Item], bool]:
        """Everything queued (waiting up to `timeout` for the first); and whether bpftrace ended."""
        out: list[Item] = []
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return out, False
        while True:
            if item is None:
                return out, True
            out.append(item)
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return out, False

    def stop(self) -> None:
        p = self._proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in self._threads:
            t.join(timeout=5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None


@contextlib.contextmanager
def open_trace(flt: Filter, *, timeout: float = 60.0) -> Iterator[tuple[Tracer, KernelInfo]]:
    """Checks, tracefs, the kernel's numbering, the program, bpftrace running: in that order,
    each failing with one clear line. Stops bpftrace and unmounts what it mounted."""
    check()
    bt = bpftrace_path()
    assert bt is not None
    with tracefs_mounted() as tracing:
        info = read_kernel(tracing)
        plan = build(info, flt)
        if not plan.probes:
            why = "; ".join(plan.skipped) or "nothing selected"
            raise TraceUnavailable(f"nothing can be traced on this kernel: {why}")
        tracer = Tracer(plan, Decoder(info), bpftrace=bt)
        try:
            tracer.start(timeout=timeout)
        except BaseException:  # Ctrl-C while bpftrace compiles: do not leave it running
            tracer.stop()
            raise
        try:
            yield tracer, info
        finally:
            tracer.stop()


def mono_to_wall_ns() -> int:
    """Add this to a CLOCK_MONOTONIC ns time (bpftrace's nsecs) to get Unix time in ns."""
    return time.time_ns() - time.monotonic_ns()
