"""`tcpreuse trace`: the kernel's own verdicts on short connections, live, per event.

bpftrace on stable tracepoints (skb:kfree_skb with its drop reason, tcp:tcp_send_reset,
tcp:tcp_retransmit_synack, sock:inet_sk_error_report, sock:inet_sock_set_state, and the
connect()/bind() syscalls). Where tracing is impossible it says why in one line and
shows the counters instead.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from ..errors import TcpreuseError
from ..signals import raising

if TYPE_CHECKING:
    from rich.console import Console

    from ..trace.aggregate import Summary
    from ..trace.events import TraceEvent
    from ..trace.session import TraceOptions


def _ports(values: tuple[str, ...]) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        for p in v.split(","):
            if not p.strip().isdigit() or not 0 < int(p) < 65536:
                raise TcpreuseError(f"--port: not a port number: {p!r}")
            out.append(int(p))
    return tuple(out)


@click.command()
@click.option("--netns", metavar="NAME", help="Trace only this network namespace (ip netns).")
@click.option("--duration", type=click.FloatRange(min=0.1), metavar="S", help="Stop after S seconds (default: Ctrl-C).")
@click.option("--port", "ports", multiple=True, metavar="P", help="Only packets and sockets with this local or "
              "remote port (repeatable, or comma-separated).")
@click.option("--pid", type=click.IntRange(min=1), help="connect()/bind() errors of this process only "
              "(receive-path events have no process and are not filtered by it).")
@click.option("--reasons", metavar="LIST", help="Drop reasons to trace, comma-separated kernel names "
              "(default: NOT_SPECIFIED at TIME_WAIT, NO_SOCKET, TCP_RFC7323_TW_PAWS, TCP_RFC7323_PAWS, "
              "TCP_LISTEN_OVERFLOW, TCP_INVALID_SYN).")
@click.option("--no-states", is_flag=True, help="Do not trace state changes (no tw-accepted / tw-reuse inference).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per event, the summary last.")
@click.option("--html", "html_path", metavar="FILE", help="Also write the summary as a self-contained HTML page.")
@click.option("--save", metavar="FILE.json", help="Also write the summary document with its findings (JSON).")
@click.option("--quiet", is_flag=True, help="No per-event output; only the summary at the end.")
def trace(netns: str | None, duration: float | None, ports: tuple[str, ...], pid: int | None, reasons: str | None,
          no_states: bool, as_json: bool, html_path: str | None, save: str | None, quiet: bool) -> None:
    """Trace the kernel's verdicts on TCP connections: SYNs answered with an old ACK at a
    TIME_WAIT, PAWS drops, listen-queue overflows, resets and why, connect()/bind() errors.
    Needs root and bpftrace."""
    from rich.console import Console

    from ..trace import render
    from ..trace.kernel import TraceUnavailable, netns_inode
    from ..trace.runner import mono_to_wall_ns
    from ..trace.session import TraceOptions

    if netns:
        netns_inode(netns)  # a clear error for a bad name, before anything starts
    opts = TraceOptions(netns=netns, duration=duration, ports=_ports(ports), pid=pid, states=not no_states,
                        reasons=tuple(r.strip() for r in reasons.split(",") if r.strip()) if reasons else None)
    console = Console(markup=False, emoji=False, highlight=False)
    err = Console(stderr=True, markup=False, emoji=False, highlight=False)
    offset = mono_to_wall_ns()
    live_view = not as_json and not quiet and console.is_terminal
    if not as_json:
        err.print("starting bpftrace (the program is compiled for this kernel; a few seconds) ...", style="dim")
    try:
        # SIGTERM/SIGHUP end the trace like Ctrl-C: bpftrace stopped, a tracefs mounted
        # for the run unmounted
        with raising(lambda signum: KeyboardInterrupt()):
            summary = _run(opts, console, err, offset, live_view=live_view, as_json=as_json, quiet=quiet,
                           duration=duration)
    except TraceUnavailable as e:
        err.print(f"tcpreuse: cannot trace: {e.message}", style="red")
        _counters_instead(netns, duration or 5.0, as_json, console)
        return
    doc = summary.to_json()
    from ..diagnose.base import Evidence, diagnose

    findings = diagnose(Evidence(source="trace", trace=doc))
    doc["findings"] = [f.to_json() for f in findings]
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        console.print(render.summary_view(doc))
        if findings:
            from ..host.render import render_findings

            console.print(render_findings(findings))
    if save:
        try:
            with open(save, "w") as f:
                json.dump(doc, f, indent=1)
        except OSError as e:
            raise TcpreuseError(f"cannot write {save}: {e.strerror}") from None
    if html_path:
        from ..report import html

        html.write(html_path, render.html_page(doc, findings, made_from="tcpreuse trace"))
        err.print(f"HTML summary written to {html_path}")


def _run(opts: TraceOptions, console: Console, err: Console, offset: int, *, live_view: bool, as_json: bool,
         quiet: bool, duration: float | None) -> Summary:
    """The trace with its output while it runs: a live view, event lines, JSON lines or nothing."""
    from ..trace import render
    from ..trace.session import run

    if live_view:
        from collections import deque

        from rich.live import Live

        recent: deque[TraceEvent] = deque(maxlen=10)
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            def tick(s: Summary) -> None:
                live.update(render.summary_view(s.to_json(), recent, offset, live=True))

            return run(opts, on_event=recent.append, on_tick=tick)

    def line(e: TraceEvent) -> None:
        if quiet:
            return
        if as_json:
            sys.stdout.write(json.dumps(e.to_json()) + "\n")
        else:
            console.print(render.event_line(e, offset))

    def ready() -> None:
        if not as_json:
            err.print("tracing; Ctrl-C stops" if duration is None else f"tracing for {duration:g} s")

    return run(opts, on_event=line, on_ready=ready)


def _counters_instead(netns: str | None, seconds: float, as_json: bool, console: object) -> None:
    """The fallback: what the counters moved by over the same time (no per-event detail)."""
    from rich.console import Console

    from ..diagnose.base import evidence_of
    from ..host import sources_for

    assert isinstance(console, Console)
    names = ("TcpExtTW", "TcpExtTWRecycled", "TcpExtTWKilled", "TcpExtPAWSPassive", "TcpExtPAWSEstab",
             "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPTimeWaitOverflow", "TcpAttemptFails",
             "TcpOutRsts", "TcpExtTCPACKSkippedTimeWait")
    src = sources_for([], netns=netns, interval=seconds)
    ev = evidence_of([s.observe() for s in src])
    deltas = {k: v for h in ev.hosts.values() for k, v in h.counters.items() if k in names}
    if as_json:
        console.file.write(json.dumps({"kind": "tcpreuse-trace-counters", "window_s": seconds, "counters": deltas})
                           + "\n")
        return
    from rich.table import Table

    t = Table(title=f"Counter deltas over {seconds:g} s (no tracing: no 4-tuples, no per-packet reasons)",
              title_justify="left")
    t.add_column("counter")
    t.add_column("delta", justify="right")
    for k in names:
        if k in deltas:
            t.add_row(k, f"{deltas[k]:,}")
    console.print(t)
