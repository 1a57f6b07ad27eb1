"""`tcpreuse simulate`: run a scenario on the model, diagnose it, prove the fixes."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from ..diagnose.base import Evidence, diagnose
from ..diagnose.whatif import prove_fixes, summarize
from ..errors import TcpreuseError
from ..result import dumps
from ..scenario.loader import load_scenario, parse_sets
from ..sim.estimate import DEFAULT_TIME_LIMIT_S, check, estimate
from .options import OUT_FILE, SECONDS


@click.command()
@click.argument("scenario")
@click.option("--duration", type=SECONDS, help="Override the scenario's duration (s).")
@click.option("--seed", type=int, help="Override the scenario's seed.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario value, e.g. --set workload.rate=3000, "
              "--set server:net.ipv4.tcp_tw_recycle=0, --set lb.ignore_msl=true.")
@click.option("--fixes", is_flag=True, help="Re-simulate every candidate fix and rank them.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the report.")
@click.option("--result", "result_path", type=OUT_FILE,
              help="Also write the full RunResult with per-attempt records: as JSON, or, for a FILE "
              "ending in .parquet, the attempt table as Parquet (row groups of 1 M attempts) with the "
              "rest of the result as JSON in the file's metadata.")
@click.option("--attempts-csv", type=OUT_FILE,
              help="Write every attempt as CSV.")
@click.option("--workers", type=click.IntRange(1, 1024), default=None, help="Processes for --fixes (default: cores).")
@click.option("--html", "html_path", type=OUT_FILE,
              help="Also write a self-contained HTML report (findings, topology, plots).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIME_LIMIT_S,
              show_default=True, metavar="SECONDS",
              help="Refuse a run estimated to need more CPU time than this (see --force).")
@click.option("--force", is_flag=True,
              help="Run even if the estimate says it will not fit this machine's memory or --time-limit.")
def simulate(scenario: str, duration: float | None, seed: int | None, sets: tuple[str, ...], fixes: bool,
             as_json: bool, result_path: Path | None, attempts_csv: Path | None, workers: int | None,
             html_path: Path | None = None, time_limit: float = DEFAULT_TIME_LIMIT_S, force: bool = False) -> None:
    """Run SCENARIO (a .toml file or a built-in name) on the kernel-faithful model.

    Before it starts, the run's attempts, memory and CPU time are estimated; a run that
    would not fit this machine's available memory or --time-limit is refused with the
    estimate (--force runs it anyway). On a terminal, progress goes to stderr."""
    from ..sim.engine import Engine

    overrides: dict[str, Any] = parse_sets(sets)
    if duration is not None:
        overrides["duration_s"] = duration
    if seed is not None:
        overrides["seed"] = seed
    sc = load_scenario(scenario, overrides)
    # Per-attempt rows only when something writes or plots them; otherwise the run keeps
    # aggregates only and its memory follows the live connections, not its length.
    records = result_path is not None or attempts_csv is not None or html_path is not None
    parquet = result_path is not None and result_path.suffix == ".parquet"
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise TcpreuseError("--result FILE.parquet needs pyarrow",
                                hint="pip install 'tcpreuse[parquet]', or give a .json FILE") from None
    est = estimate(sc, records=records, records_json=result_path is not None and not parquet)
    check(est, what=f"simulating {sc.name} for {sc.duration_s:g} s", force=force, time_limit_s=time_limit)
    err = Console(stderr=True)
    show_progress = sys.stderr.isatty() and not as_json
    ranked = None
    with contextlib.ExitStack() as stack:
        prog: Any = None
        if show_progress:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            prog = stack.enter_context(Progress(
                TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[n]:,} attempts"),
                TimeElapsedColumn(), console=err, transient=True))
            task = prog.add_task(f"simulating {sc.name}", total=sc.duration_s, n=0)

            def phase(text: str, n: int | None = None) -> None:
                prog.update(task, description=text, **({} if n is None else {"n": n}))

            def tick(t: float, n: int) -> None:
                prog.update(task, completed=t, n=n)
                if t >= sc.duration_s and records:
                    phase(f"{sc.name}: recording the attempts", n)

            run = Engine(sc, progress=tick, records=records).run()
            phase(f"{sc.name}: diagnosing", run.attempt_count())
        else:
            run = Engine(sc, records=records).run()
        ev = Evidence(source="simulate", run=run, scenario=sc)
        findings = diagnose(ev)
        if fixes:
            base = summarize(run)
            if prog is not None:
                fix_task = prog.add_task("proving fixes", total=None, n=0)
                ranked = prove_fixes(scenario, overrides, base, findings, workers,
                                     progress=lambda i, n: prog.update(fix_task, completed=i, total=n))
            else:
                ranked = prove_fixes(scenario, overrides, base, findings, workers)
    if result_path is not None:
        try:
            extra = {"findings": [f.to_json() for f in findings]}
            if parquet:
                run.save_parquet(result_path, extra)
            else:
                result_path.write_text(dumps({**run.to_json(records=True), **extra}))
        except OSError as e:
            raise TcpreuseError(f"cannot write {result_path}: {e.strerror}") from None
    if attempts_csv is not None:
        try:
            with attempts_csv.open("w", newline="") as fh:
                run.attempts.write_csv(fh)
        except OSError as e:
            raise TcpreuseError(f"cannot write {attempts_csv}: {e.strerror}") from None
    if html_path is not None:
        from ..report import html

        html.write(html_path, html.run_page(run, findings, scenario=sc, ranked=ranked))
    if as_json:
        out = run.to_json()
        out["summary"] = sc.summary
        out["findings"] = [f.to_json() for f in findings]
        if ranked is not None:
            out["fixes_ranked"] = [{"id": f.id, "title": f.title, "set": f.set,
                                    "effect": None if f.effect is None else vars(f.effect)} for f in ranked]
        click.echo(dumps(out))
        return
    from ..report.console import out_console
    from ..report.terminal import render_simulation

    render_simulation(out_console(), run, findings, ranked,
                      summary=sc.summary)
