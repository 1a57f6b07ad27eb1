"""`tcpreuse load HOST:PORT`: short-connection load with diagnostic output.

Thin: options become a LoadConfig, tcpreuse.load.runner does the work, this renders.
The lab runs `python -m tcpreuse load ... --result FILE` inside network namespaces and
merges the files, so --result, --host-name and the RunResult layout are a contract.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..load.errors import LoadError


def _fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _render_summary(s: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from ..report.console import out_console

    con = out_console()
    con.print(
        f"[bold]{escape(s['target'])}[/] {s['mode']} loop"
        + (f", {s['arrival']} {s['rate_target']}/s" if s["mode"] == "open" else f", {s['concurrency']} in flight")
        + f", {s['protocol']}, close={s['close']}, {s['workers']} worker(s)"
    )
    con.print(
        f"{s['attempts']} attempts scheduled over {s['duration_s']:.2f} s: {s['ok']} ok, {s['failed']} failed"
        + (f", {s['unfinished']} unfinished" if s.get("unfinished") else "")
        + f"; {s['attempts_per_s']:.1f} attempts/s, {s['ok_per_s']:.1f} ok/s"
        + (f" (ended {s['wall_s']:.2f} s after t = 0)" if s["wall_s"] > s["duration_s"] + 0.05 else "")
        + (f"; {s['ok_after_syn_retry']} ok only after a SYN retransmission" if s["ok_after_syn_retry"] else "")
    )
    t = Table(box=None, header_style="bold")
    for c in ("outcome", "count", "sample 4-tuple", "first s", "last s"):
        t.add_column(c, justify="right" if c in ("count", "first s", "last s") else "left")
    for name, d in s["outcomes"].items():
        t.add_row(name if name == "ok" else f"[red]{name}[/]", str(d["count"]), escape(d["sample"]),
                  f"{d['first_s']:.3f}", f"{d['last_s']:.3f}")
    con.print(t)
    lat = Table(box=None, header_style="bold")
    for c in ("latency ms", "count", "p50", "p90", "p99", "p99.9", "max"):
        lat.add_column(c, justify="left" if c == "latency ms" else "right")
    for label, key in (("connect (from due time)", "connect_ms"), ("request", "request_ms"),
                       ("answer (from due time)", "answer_ms")):
        d = s[key]
        lat.add_row(label, str(d["count"]), *(_fmt_ms(d[q]) for q in ("p50", "p90", "p99", "p99.9", "max")))
    con.print(lat)
    g, lag = s.get("generator") or {}, s.get("start_lag") or {}
    if s["mode"] == "open" and lag.get("p99") is not None:
        con.print(f"generator: start lag p50 {_fmt_ms(lag['p50'])} ms, p99 {_fmt_ms(lag['p99'])} ms, "
                  f"{lag['late_starts']} started > 1 ms late"
                  + (f"; CPU {g['cpu_us_per_attempt']:.1f} us/attempt ({g.get('sys_us_per_attempt') or 0:.1f} system), "
                     f"preempted {g['preempted']} times"
                     if g.get("cpu_us_per_attempt") is not None else ""))
    tw = s["per_second"]["time_wait"]
    if tw:
        con.print(f"TIME_WAIT in this namespace, per second: max {max(tw)}, last {tw[-1]}")
    if s["counters"]:
        interesting = [k for k in s["counters"] if k.startswith(("TcpExtTW", "TcpExtPAWS", "TcpExtListen",
                                                                  "TcpExtTCPTimeWait", "TcpAttemptFails",
                                                                  "TcpActiveOpens", "TcpOutRsts",
                                                                  "TcpRetransSegs", "TcpExtTCPSynRetrans"))]
        if interesting:
            con.print("counters: " + ", ".join(f"{k} {s['counters'][k]:+d}" for k in interesting))
    for n in s["notes"]:
        con.print(f"[yellow]note:[/] {escape(n)}")


def _save_atomically(result: Any, path: Path) -> None:
    """Write to a temporary file beside `path`, then rename: a reader (the lab) never sees
    half a file, even if this process is killed while writing."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        result.save(Path(tmp), records=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Live:
    """A one-line live view on a terminal (rich), nothing otherwise."""

    def __init__(self, enabled: bool, total: float | None = None) -> None:
        self.enabled = enabled
        self.total = total  # the run's wall-clock bound, s
        self.live: Any = None

    def __enter__(self) -> _Live:
        if self.enabled:
            from rich.console import Console
            from rich.live import Live

            self.live = Live("starting...", refresh_per_second=4, transient=True,
                             console=Console(stderr=True))
            self.live.__enter__()
        return self

    def update(self, p: Any) -> None:
        if self.live is None:
            return
        of = f" of {self.total:g}" if self.total else ""
        errs = ", ".join(f"{k} {v}" for k, v in sorted(p.errors.items(), key=lambda kv: -kv[1])) or "none"
        self.live.update(
            f"{p.elapsed:6.1f}{of} s  {p.rate:8.0f} attempts/s  ok {p.ok}  failed {p.failed} ({errs})  "
            f"TIME_WAIT {p.time_wait}"
        )

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)


@click.command()
@click.argument("target", metavar="HOST:PORT")
@click.option("--rate", type=float, help="Open loop: new connections per second (split across workers).")
@click.option("--concurrency", type=int, help="Closed loop: connections in flight, as wrk -c.")
@click.option("--max-in-flight", type=int,
              help="Open loop: at most N attempts in flight; one due meanwhile starts when one "
              "closes (late, and its start lag says so). 1: strictly one connection after another.")
@click.option("--duration", type=float, help="Seconds to run (start no attempt after this).")
@click.option("--count", type=int, help="Attempts to make in all (stops at duration or count).")
@click.option("--arrival", type=click.Choice(["constant", "poisson", "ramp"]), default="constant",
              show_default=True, help="Open-loop arrivals: evenly spaced, Poisson, or a linear ramp.")
@click.option("--ramp-from", type=float, default=0.0, show_default=True,
              help="Ramp start rate; the ramp reaches --rate at --duration.")
@click.option("--close", "close", type=click.Choice(["client", "server", "rst"]), default="client",
              show_default=True,
              help="client: FIN first after the answer; server: wait for the server's FIN; "
              "rst: SO_LINGER {1,0}, RST instead of FIN (no TIME_WAIT).")
@click.option("--requests-per-conn", type=int, default=1, show_default=True,
              help="Requests per connection (> 1: keep-alive).")
@click.option("--protocol", type=click.Choice(["line", "http"]), default="line", show_default=True,
              help="line: VERIFY <id> -> OK <code>; http: GET (Connection: close unless keep-alive).")
@click.option("--path", default="/", show_default=True, help="HTTP request target.")
@click.option("--source", "sources", multiple=True, metavar="ADDR|A-B|CIDR",
              help="Local source address(es), used in turn (repeatable).")
@click.option("--bind", type=click.Choice(["none", "address_no_port", "bind0"]),
              help="How sockets get their source: none; bind(addr) with IP_BIND_ADDRESS_NO_PORT "
              "(port chosen per 4-tuple at connect; default with --source); bind0: bind(addr, 0), "
              "one port per socket.")
@click.option("--local-port-range", metavar="LO-HI",
              help="Per-socket IP_LOCAL_PORT_RANGE (Linux 6.3+).")
@click.option("--connect-timeout", type=float, default=5.0, show_default=True,
              help="Application connect timeout, s.")
@click.option("--request-timeout", type=float, default=5.0, show_default=True,
              help="Application timeout per request (and for the server's FIN), s.")
@click.option("--workers", type=int, help="Worker processes (default: number of CPUs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the Poisson arrivals.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (the summary).")
@click.option("--result", "result_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the full RunResult (per-attempt records) as JSON to this file.")
@click.option("--host-name", help="Name of this host in the RunResult (default: hostname).")
@click.option("--scenario", default="load", show_default=True, help="Scenario label in the RunResult.")
@click.option("--workload", default="load", show_default=True, help="Workload label of the attempts.")
@click.option("--start-at", type=float, metavar="UNIX_TIME",
              help="Wall-clock time of the first attempt (several load processes then "
                   "interleave their schedules; the lab uses it).")
@click.option("--drain", type=float, default=2.0, show_default=True,
              help="Seconds after --duration that attempts in flight may take; then they are cut "
              "(ECANCELED, reason unfinished) and the run ends: duration + drain bounds its wall-clock time.")
@click.option("--force", is_flag=True,
              help="Run even when the estimate says the rate is beyond this machine's generator "
              "or the records will not fit in memory.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML report (findings, plots, latency).")
@click.option("--quiet", is_flag=True, help="No live progress.")
def load(target: str, rate: float | None, concurrency: int | None, max_in_flight: int | None,
         duration: float | None,
         count: int | None, arrival: str, ramp_from: float, close: str, requests_per_conn: int,
         protocol: str, path: str, sources: tuple[str, ...], bind: str | None,
         local_port_range: str | None, connect_timeout: float, request_timeout: float,
         workers: int | None, seed: int, as_json: bool, result_path: Path | None,
         host_name: str | None, scenario: str, workload: str, start_at: float | None,
         drain: float, force: bool, html_path: Path | None, quiet: bool) -> None:
    """Open HOST:PORT short connections at a rate (open loop) or concurrency (closed loop).

    Reports outcomes by errno with a sample 4-tuple, connect and request latency
    (HdrHistogram), SYN retransmissions per attempt (TCP_INFO), TIME_WAIT per second and
    the kernel's TCP counter deltas. Always bounded: give --duration and/or --count;
    --duration plus --drain is a hard bound on its wall-clock time. A rate or a record
    count this machine cannot hold is refused up front (with the estimate) unless --force.
    """
    import socket

    from ..load.runner import LoadConfig, run_load
    from ..load.target import parse_port_range, parse_sources, resolve

    cfg = LoadConfig(
        target=resolve(target),
        rate=rate, concurrency=concurrency, duration=duration, count=count, arrival=arrival,
        ramp_from=ramp_from, close=close, requests_per_conn=requests_per_conn, protocol=protocol,
        path=path, sources=parse_sources(list(sources)), bind=bind,
        local_port_range=parse_port_range(local_port_range) if local_port_range else None,
        connect_timeout=connect_timeout, request_timeout=request_timeout, workers=workers,
        seed=seed, host_name=host_name or socket.gethostname(), scenario=scenario, workload=workload,
        start_at=start_at, drain=drain, force=force, max_in_flight=max_in_flight,
        records_as_json=result_path is not None or html_path is not None,
    )
    if result_path is not None:  # fail before the run, not after it
        try:
            result_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LoadError(f"cannot write --result {result_path}: {e.strerror}") from None
        if result_path.is_dir() or not os.access(result_path.parent, os.W_OK):
            raise LoadError(f"cannot write --result {result_path}")
    if html_path is not None and (html_path.is_dir() or not html_path.parent.is_dir()
                                  or not os.access(html_path.parent, os.W_OK)):
        raise LoadError(f"cannot write --html {html_path}: no writable directory {html_path.parent}")
    live = not quiet and not as_json and sys.stderr.isatty()
    with _Live(live, cfg.wall_bound()) as view:
        run = run_load(cfg, on_progress=view.update if live else None)
    if result_path is not None:
        _save_atomically(run.result, result_path)
    if html_path is not None:
        from ..diagnose.base import Evidence, diagnose
        from ..report import html

        html.write(html_path, html.run_page(run.result, diagnose(Evidence(source="load", run=run.result))))
    if as_json:
        from ..result import dumps

        click.echo(dumps(run.summary))
    else:
        _render_summary(run.summary)
    if run.stopped_by:  # results written; the exit status says the run was cut short
        sys.exit(128 + run.stopped_by)
