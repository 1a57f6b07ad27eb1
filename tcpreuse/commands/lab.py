"""`tcpreuse lab SCENARIO|NAME`: run a scenario on the real kernel in network namespaces.

`tcpreuse lab cleanup` removes what a killed (SIGKILL) run left behind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..result import RunResult, dumps
from .options import OUT_FILE, SECONDS

# Counters worth a column in the summary (nstat names); all of them are in --json/--result.
KEY_COUNTERS = ("TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpOutRsts", "TcpExtTW",
                "TcpExtTWRecycled", "TcpExtPAWSActive", "TcpExtPAWSEstab", "TcpExtPAWSTimewait",
                "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPTimeWaitOverflow")


def _cleanup(everything: bool, as_json: bool) -> None:
    from ..kernels import uml
    from ..lab import state
    from ..lab.netns import require_root

    require_root()
    done = state.cleanup(everything=everything)
    done.scratch += uml.cleanup()  # directories (and processes) of SIGKILLed UML boots
    if as_json:
        click.echo(dumps({"namespaces": done.namespaces, "scratch": done.scratch,
                          "alive": done.alive}))
        return
    if done.namespaces:
        click.echo(f"removed {len(done.namespaces)} namespace(s): {', '.join(done.namespaces)}")
    else:
        click.echo("nothing to clean up")
    for d in done.scratch:
        click.echo(f"removed {d}")
    for r in done.alive:
        click.echo(f"left run {r} alone: it is still running")


def render(res: RunResult, con: Console) -> None:
    out = res.outcomes()
    n = len(res.attempts)
    con.print(f"[bold]{res.scenario}[/] on Linux {res.meta.get('kernel')} (lab, run "
              f"{res.meta.get('run_id')}): {n:,} attempts in {res.duration_s:g} s, failure "
              f"rate {res.failure_rate() * 100:.2f} %")
    t = Table(box=None, show_header=True, header_style="bold")
    t.add_column("outcome")
    t.add_column("count", justify="right")
    for k, v in sorted(out.items(), key=lambda kv: -kv[1]):
        t.add_row(k, f"{v:,}")
    con.print(t)
    ff = res.first_failure()
    if ff:
        con.print(f"first failure: {ff['outcome']} ({ff['reason']}) at {ff['time_s']:.3f} s, "
                  f"attempt #{ff['index'] + 1}")
    p = res.connect_percentiles()
    if p["p50"] is not None:
        from ..report.terminal import fmt_ms

        con.print(f"connect: p50 {fmt_ms(p['p50'])}  p99 {fmt_ms(p['p99'])}  max {fmt_ms(p['max'])}")
    h = Table(box=None, show_header=True, header_style="bold")
    cols = [c for c in KEY_COUNTERS if any(res.counters.get(k, {}).get(c) for k in res.counters)]
    h.add_column("host")
    h.add_column("role")
    h.add_column("TIME_WAIT at end", justify="right")
    for c in cols:
        h.add_column(c.removeprefix("TcpExt").removeprefix("Tcp"), justify="right")
    end = res.meta.get("end", {})
    for name, info in res.hosts.items():
        row = [name, info.role, str(end.get(name, {}).get("time_wait", ""))]
        row += [f"{res.counters.get(name, {}).get(c, 0):,}" for c in cols]
        h.add_row(*row)
    con.print(h)
    for note in res.notes:
        con.print(f"[yellow]note:[/] {note}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", metavar="SCENARIO|NAME|cleanup")
@click.option("--duration", type=SECONDS, help="Run for S seconds (overrides duration_s).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario value (repeatable), e.g. client:net.ipv4.tcp_tw_reuse=1.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--capture", type=click.Path(file_okay=False, path_type=Path),
              help="Write one pcap per namespace interface into DIR.")
@click.option("--result", "result_file", type=OUT_FILE,
              help="Write the full RunResult (with per-attempt records) to FILE.")
@click.option("--approximate", is_flag=True,
              help="Run what the kernel cannot realise exactly as its closest setup, "
              "stating the differences.")
@click.option("--no-diagnose", is_flag=True, help="Skip the diagnosis of the result.")
@click.option("--html", "html_path", type=OUT_FILE,
              help="Also write a self-contained HTML report (findings, topology, plots).")
@click.option("--trace", "trace", is_flag=True,
              help="Also trace the kernel's verdicts (bpftrace) and give each attempt the kernel's reason.")
@click.option("--drain", type=float, metavar="S",
              help="Seconds each load's attempts in flight may take after its duration before they "
              "are cut (unfinished); default: the workload's connect + request timeouts, as the model "
              "gives them.")
@click.option("--force", is_flag=True,
              help="Run even when the estimate says the loads are beyond this machine's generator "
              "or their records will not fit in memory.")
@click.option("--kernel", "kernel", type=click.Choice(["host", "uml"]), default="host", show_default=True,
              help="Run on the running kernel, or boot User-Mode Linux (Debian's 6.1) and run "
              "the same lab inside it.")
@click.option("--netfilter", type=click.Choice(["auto", "nft", "iptables"]), default="auto",
              show_default=True, help="NAT/LB/loss backend: nftables, iptables-legacy, or "
              "nftables where it can load an ip table (else iptables-legacy).")
@click.option("--all", "everything", is_flag=True,
              help="With `cleanup`: remove every tcpr-* namespace, not only dead lab runs'.")
def lab(scenario: str, duration: float | None, sets: tuple[str, ...], as_json: bool,
        capture: Path | None, result_file: Path | None, approximate: bool, no_diagnose: bool,
        everything: bool, drain: float | None = None, force: bool = False,
        kernel: str = "host", netfilter: str = "auto",
        html_path: Path | None = None, trace: bool = False) -> None:
    """Run a scenario on the real kernel in network namespaces (needs root).

    Builds one namespace per host instance, a router, a NAT and an L4 load balancer
    (nftables) where the scenario has them, runs `serve` and `load` inside, and reports
    the same RunResult as `simulate`. Refuses what this kernel cannot realise (e.g.
    tcp_tw_recycle on >= 4.12), and loads this machine cannot generate or hold (--force
    runs them anyway). The loads end within their duration plus their timeouts. Each run
    first removes what killed (SIGKILL) runs left; `tcpreuse lab cleanup` does it alone.
    """
    if scenario == "cleanup":
        _cleanup(everything, as_json)
        return
    from ..errors import TcpreuseError
    from ..lab.run import LabOptions, run_lab
    from ..scenario.loader import load_scenario, parse_sets

    overrides = parse_sets(sets)
    if duration is not None:
        overrides["duration_s"] = duration
    sc = load_scenario(scenario, overrides)
    err = Console(stderr=True)
    if drain is not None and not (0 <= drain <= 3600):
        raise TcpreuseError(f"--drain must be between 0 and 3600 s, not {drain}")
    opts = LabOptions(approximate=approximate, capture=capture, trace=trace, force=force, grace_s=drain,
                      netfilter=netfilter,
                      progress=None if as_json else (lambda m: err.print(f"[dim]lab: {m}[/]")))
    if kernel != "host":
        from ..kernels.run import lab_on

        res = lab_on(kernel, scenario, overrides, opts)
    elif err.is_terminal and not as_json:
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(TextColumn("lab: load"), BarColumn(), TextColumn("{task.fields[at]:.0f} of at most "
                                                                        "{task.fields[bound]:.0f} s"),
                      console=err, transient=True) as prog:
            task = prog.add_task("load", total=None, at=0.0, bound=0.0, visible=False)

            def tick(at: float, bound: float) -> None:  # shown once the loads run
                prog.update(task, total=bound, completed=min(at, bound), at=at, bound=bound, visible=True)

            opts.on_tick = tick
            res = run_lab(sc, opts)
    else:
        res = run_lab(sc, opts)
    if result_file is not None:
        try:
            res.save(result_file, records=True)
        except OSError as e:
            raise TcpreuseError(f"cannot write {result_file}: {e.strerror}") from None
    findings = []
    if not no_diagnose:
        from ..diagnose.base import Evidence, diagnose

        findings = diagnose(Evidence(source="lab", run=res, scenario=sc))
    if html_path is not None:
        from ..report import html

        html.write(html_path, html.run_page(res, findings, scenario=sc))
    if as_json:
        d = res.to_json(records=False)
        d["findings"] = [f.to_json() for f in findings]
        click.echo(dumps(d))
    else:
        from ..report.console import out_console

        con = out_console()
        render(res, con)
        from ..report.terminal import timeline

        con.print(timeline(res))
        for f in findings:
            con.print(f"[bold]{f.severity}[/]: {f.title}")
        kt = res.meta.get("kernel_trace")
        if kt:
            from ..trace.render import lab_agreement

            con.print(lab_agreement(kt))
        if result_file is not None:
            con.print(f"result written to {result_file}")
    if res.meta.get("interrupted"):
        sys.exit(exit_status(str(res.meta["interrupted"])))


def exit_status(signal_name: str) -> int:
    """128 + the signal that interrupted a run ("SIGTERM" -> 143), as a shell reports it."""
    import signal

    try:
        return 128 + signal.Signals[signal_name].value
    except KeyError:
        return 130
