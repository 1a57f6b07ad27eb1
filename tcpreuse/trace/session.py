"""One trace from start to summary: checks, bpftrace, the reading loop, owners, stop.

Used by `tcpreuse trace`, `doctor --trace S` and the tests. Callbacks see each event as
it is classified and a tick a few times a second (for a live view)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from .aggregate import Summary
from .events import Control, TraceEvent
from .kernel import netns_inode
from .owners import listener_owners
from .program import Filter
from .runner import open_trace

OWNERS_EVERY_S = 5.0  # how often listeners are attributed to processes again


@dataclass
class TraceOptions:
    netns: str | None = None
    duration: float | None = None  # None: until stopped (Ctrl-C, or `stop()` returning True)
    ports: tuple[int, ...] = ()
    pid: int | None = None
    reasons: tuple[str, ...] | None = None
    states: bool = True


def filter_for(opts: TraceOptions) -> Filter:
    flt = Filter(netns=netns_inode(opts.netns) if opts.netns else None, ports=opts.ports, pid=opts.pid,
                 states=opts.states)
    if opts.reasons is not None:
        flt.drop_reasons = opts.reasons
    return flt


def run(opts: TraceOptions, *, on_event: Callable[[TraceEvent], None] | None = None,
        on_tick: Callable[[Summary], None] | None = None, on_ready: Callable[[], None] | None = None,
        stop: Callable[[], bool] | None = None, tick_s: float = 0.25) -> Summary:
    """Trace until the duration ends, `stop()` is true or Ctrl-C; return the summary."""
    flt = filter_for(opts)
    summary = Summary()
    with open_trace(flt) as (tracer, info):
        summary.kernel = info.release
        summary.probes = tracer.plan.probes
        summary.skipped = tracer.plan.skipped
        summary.owners = listener_owners(opts.netns)
        summary.started_ns = tracer.ready_ns
        if on_ready is not None:
            on_ready()
        t_end = None if opts.duration is None else time.monotonic() + opts.duration
        t_owners = time.monotonic() + OWNERS_EVERY_S
        try:
            while True:
                left = tick_s if t_end is None else min(tick_s, t_end - time.monotonic())
                items, ended = tracer.poll(max(0.0, left))
                for it in items:
                    if isinstance(it, Control):
                        continue
                    shown = summary.add(it)
                    if shown is not None and on_event is not None:
                        on_event(shown)
                summary.lost = tracer.lost
                summary.last_ns = max(summary.last_ns, time.monotonic_ns())
                if time.monotonic() >= t_owners:  # listeners opened since
                    summary.owners.update(listener_owners(opts.netns))
                    t_owners = time.monotonic() + OWNERS_EVERY_S
                if on_tick is not None:
                    on_tick(summary)
                if ended:
                    why = next((ln for ln in tracer.stderr if ln.strip() and "RLIMIT_MEMLOCK" not in ln), "")
                    summary.warnings.append("bpftrace exited before the trace ended" + (f": {why}" if why else ""))
                    break
                if (t_end is not None and time.monotonic() >= t_end) or (stop is not None and stop()):
                    break
        except KeyboardInterrupt:
            pass
        tracer.stop()
        # what bpftrace printed before it exited
        items, _ = tracer.poll(0)
        for it in items:
            if isinstance(it, TraceEvent):
                shown = summary.add(it)
                if shown is not None and on_event is not None:
                    on_event(shown)
        summary.lost = tracer.lost
        summary.owners.update({k: v for k, v in listener_owners(opts.netns).items() if k not in summary.owners})
    return summary


