"""A kernel trace of a lab run: the kernel's verdict for each attempt.

Started before the loads and stopped after them, filtered in the kernel to the run's
server ports; its events are joined to the attempts by 4-tuple and time
(:mod:`tcpreuse.trace.join`) and stored in the result's ``meta["kernel_trace"]``: the
summary, the kernel's reason per attempt (a vocabulary and one code per attempt), and
the per-attempt agreement with the lab's own reasons. If tracing is impossible the run
goes on without it and says why in its notes.
"""

from __future__ import annotations

import threading
from typing import Any

from ..result import RunResult
from ..trace.aggregate import Summary
from ..trace.events import TraceEvent
from ..trace.kernel import TraceUnavailable
from ..trace.runner import mono_to_wall_ns
from ..trace.session import TraceOptions, run

READY_TIMEOUT_S = 120.0  # bpftrace compiles for the kernel first; slow on a busy machine


class LabTrace:
    def __init__(self, ports: list[int]) -> None:
        self.opts = TraceOptions(ports=tuple(sorted(set(ports))))
        self.events: list[TraceEvent] = []
        self.summary: Summary | None = None
        self.error: str | None = None
        self.offset_ns = mono_to_wall_ns()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.summary = run(self.opts, on_event=self.events.append, on_ready=self._ready.set,
                               stop=self._stop.is_set)
        except TraceUnavailable as e:
            self.error = e.message
        except Exception as e:  # the run must go on without its trace
            self.error = f"trace failed: {e}"
        finally:
            self._ready.set()

    def start(self) -> str | None:
        """Start and wait until the kernel is traced; a note if it cannot be."""
        self._thread.start()
        self._ready.wait(READY_TIMEOUT_S)
        if self.error is None and not self._ready.is_set():
            self.error = f"bpftrace did not start within {READY_TIMEOUT_S:g} s"
        return f"no kernel trace: {self.error}" if self.error else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def attach(self, out: RunResult) -> None:
        """Stop, join the events to the attempts, store it all in out.meta["kernel_trace"]."""
        from ..trace.join import agreement, join

        self.stop()
        if self.summary is None:
            if self.error:
                out.notes.append(f"no kernel trace: {self.error}")
            return
        joined = join(out, self.events, self.offset_ns)
        vocab = sorted({r for r in joined.reasons if r})
        code = {r: i for i, r in enumerate(vocab)}
        doc: dict[str, Any] = {
            "summary": self.summary.to_json(),
            "reasons": vocab,
            "per_attempt": [code.get(r, -1) for r in joined.reasons],
            "agreement": agreement(out, joined),
        }
        out.meta["kernel_trace"] = doc
