"""`tcpreuse doctor`: what is wrong with short-lived connections on this host, now.

Reads the live host (or a network namespace, a snapshot, pasted command output), read-only,
and prints findings with their numbers and the commands that fix them.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING

import click

# The doctor does no linear algebra; numpy's OpenBLAS would start one thread per CPU at
# import, which costs 50-200 ms of a run that should take a few hundred. Set before numpy
# is imported (this module is only imported when `doctor` runs).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ..errors import HostError

if TYPE_CHECKING:
    from ..diagnose.base import Evidence
    from ..findings import Finding


@click.command()
@click.option("--netns", metavar="NAME", help="Diagnose this network namespace (ip netns) instead of the host.")
@click.option("--interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds between the two samples that give rates (0: one sample, no rates).")
@click.option("--from", "froms", multiple=True, metavar="FILE",
              help="Diagnose a snapshot (.tar.gz from --save) or pasted output (sysctl -a, nstat -az, "
                   "netstat -s, ss -tanoe, netsh ..., netstat -ano). Repeatable; files of one host merge.")
@click.option("--save", metavar="FILE.tar.gz", help="Also write what was read to a snapshot archive.")
@click.option("--json", "as_json", is_flag=True, help="Print findings and host facts as JSON.")
@click.option("--watch", type=click.FloatRange(min=0.1), metavar="N", help="Refresh every N seconds.")
@click.option("--count", type=click.IntRange(min=1), help="With --watch: stop after this many refreshes.")
@click.option("--role", type=click.Choice(["client", "server", "nat", "lb"]),
              help="The host's role, if the inference from its sockets is wrong.")
@click.option("--profile", metavar="NAME",
              help="Kernel profile for pasted input without a kernel version (e.g. centos-6, linux-4.9).")
@click.option("--processes", is_flag=True, help="Attribute sockets to processes (walks /proc/*/fd).")
@click.option("--name", metavar="NAME", help="Host name to show (default: the host name).")
@click.option("--trace-connects", is_flag=True,
              help="Also count connect() attempts and EADDRNOTAVAIL failures over the interval "
                   "(tracepoint sock:inet_sock_set_state in a private tracefs instance; needs root).")
@click.option("--html", "html_path", metavar="FILE",
              help="Also write a self-contained HTML report (with --watch: rewritten at every refresh, "
              "with TIME_WAIT and port use over time).")
@click.option("--serve-metrics", metavar="HOST:PORT",
              help="Serve the numbers as Prometheus metrics instead (the `tcpreuse exporter` verb; "
              "--interval: read at most every S seconds).")
@click.option("--trace", "trace_s", type=click.FloatRange(min=0.1), metavar="S",
              help="Also trace the kernel's verdicts for S seconds first (bpftrace; see `tcpreuse trace`) "
              "and diagnose them with the rest.")
def doctor(netns: str | None, interval: float, froms: tuple[str, ...], save: str | None, as_json: bool,
           watch: float | None, count: int | None, role: str | None, profile: str | None,
           processes: bool, name: str | None, html_path: str | None = None, trace_connects: bool = False,
           serve_metrics: str | None = None, trace_s: float | None = None) -> None:
    """Diagnose a live host (or --netns, or --from snapshots and pasted text): TIME_WAIT,
    ephemeral port budgets per destination, tw_reuse/tw_recycle/timestamps, listen queues,
    conntrack, PAWS. Read-only."""
    if serve_metrics is not None:
        if froms or save or watch or count or as_json or html_path or processes or profile or trace_s or trace_connects:
            raise HostError("--serve-metrics takes only --netns, --interval, --role and --name")
        from .exporter import run

        run(listen=serve_metrics, interval=interval, netns=netns, role=role, name=name)
        return
    from ..diagnose.base import diagnose, evidence_of
    from ..host import sources_for
    from ..model.profiles import get_profile

    if froms and (netns or save or watch):
        raise HostError("--from replays recorded input; it cannot be combined with --netns, --save or --watch")
    if count is not None and watch is None:
        raise HostError("--count needs --watch")
    if trace_connects and (froms or interval == 0):
        raise HostError("--trace-connects counts connect() calls between two samples: it needs a live host "
                        "and --interval > 0")
    if profile:
        get_profile(profile)  # a clear error for a bad name, before any work
    sources = sources_for(list(froms), netns=netns, interval=interval, processes=processes, role=role,
                          profile=profile, name=name, trace_connects=trace_connects)
    trace_doc = _trace(netns, trace_s) if trace_s else None

    def once() -> tuple[Evidence, list[Finding]]:
        observed = [s.observe() for s in sources]
        ev = evidence_of(observed)
        ev.trace = trace_doc
        return ev, diagnose(ev)

    from rich.text import Text

    from ..host.render import render, to_json
    from ..report.console import out_console

    # Everything rendered is Text/Table built by render(): no markup or emoji parsing needed.
    console = out_console(markup=False, emoji=False, highlight=False)
    history: list[dict[str, object]] = []  # JSON documents of the refreshes, for --html and the sparklines

    def keep(ev: Evidence, findings: list[Finding]) -> None:
        if html_path is None and (watch is None or as_json):
            return
        doc = to_json(ev, findings)
        doc["taken_at"] = time.time()
        history.append(doc)
        del history[:-600]
        if html_path is not None:
            from ..report import html

            html.write(html_path, html.doctor_page(history))

    if watch is None:
        ev, findings = once()
        keep(ev, findings)
        try:
            if as_json:
                click.echo(json.dumps(to_json(ev, findings), indent=2, default=str))
            else:
                console.print(render(ev, findings))
        finally:
            if save:  # after the output: a failed write loses no diagnosis (and a closed pipe no file)
                _save(sources[0], save)
        return

    n = 0
    # Ctrl-C ends the watch: exit 130 (SIGTERM 143), as for every verb (tcpreuse.cli)
    while count is None or n < count:
        t0 = time.monotonic()
        ev, findings = once()
        keep(ev, findings)
        n += 1
        if save and n == 1:
            _save(sources[0], save)
        if as_json:
            click.echo(json.dumps(to_json(ev, findings), default=str))
        else:
            console.clear()
            console.print(render(ev, findings))
            if len(history) > 1:
                from ..report.terminal import watch_timeline

                console.print(watch_timeline(history))
            console.print(Text(f"refresh {n}{'/' + str(count) if count else ''}, every {watch:g} s; "
                               "Ctrl-C stops", style="dim"))
        if count is not None and n >= count:
            break
        time.sleep(max(0.0, watch - (time.monotonic() - t0)))


def _trace(netns: str | None, seconds: float) -> dict[str, object] | None:
    """A trace summary to diagnose with the host's facts; None (said on stderr) if tracing is impossible."""
    from ..trace.kernel import TraceUnavailable
    from ..trace.session import TraceOptions, run

    click.echo(f"tracing the kernel's verdicts for {seconds:g} s ...", err=True)
    try:
        return run(TraceOptions(netns=netns, duration=seconds)).to_json()
    except TraceUnavailable as e:
        click.echo(f"doctor: cannot trace ({e.message}); diagnosing from counters and sockets only", err=True)
        return None


def _save(source: object, path: str) -> None:
    from ..host.snapshot import save
    from ..host.source import LiveCollector

    if not isinstance(source, LiveCollector) or source.last_raw is None:
        raise HostError("--save needs a live collection")
    p = save(source.last_raw, path)
    click.echo(f"snapshot written to {p}", err=True)
