"""`tcpreuse sweep` and `tcpreuse capacity`: many simulations of one scenario on Dask,
cached so that an interrupted run only computes what is missing."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import TcpreuseError
from .options import OUT_FILE, SECONDS

_common = [
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                 help="Fixed override for every run (the --set syntax of simulate)."),
    click.option("--duration", type=SECONDS, help="Override the scenario's duration (s) of every run."),
    click.option("--seeds", type=click.IntRange(1, 1000), default=1, show_default=True,
                 help="Runs per point with seeds s, s+1, ... (confidence interval over seeds)."),
    click.option("--scheduler", metavar="tcp://HOST:PORT",
                 help="Use this Dask scheduler instead of a local cluster on this machine's cores."),
    click.option("--workers", type=click.IntRange(1, 1024), help="Local cluster size (default: cores)."),
    click.option("--dashboard", is_flag=True,
                 help="Start the Dask dashboard on 127.0.0.1 (random port) and print its link; off by default."),
    click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Cache directory (default ~/.cache/tcpreuse/sweep)."),
    click.option("--no-cache", is_flag=True, help="Compute everything; read and write no cache."),
    click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=3600.0, show_default=True,
                 metavar="SECONDS", help="Refuse work estimated to need more than this wall time on the workers "
                 "(CPU time / workers; see --force)."),
    click.option("--force", is_flag=True, help="Run even if the estimate says it will not fit this machine's "
                 "memory or --time-limit."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object."),
    click.option("--html", "html_path", type=OUT_FILE,
                 help="Write a self-contained HTML report."),
]


def common(f: Any) -> Any:
    for opt in reversed(_common):
        f = opt(f)
    return f


def _setup(sets: tuple[str, ...], duration: float | None, cache_dir: Path | None, no_cache: bool,
           scheduler: str | None, workers: int | None, dashboard: bool = False) -> tuple[dict[str, Any], Any, Any]:
    from ..scenario.loader import parse_sets
    from ..sweep.cache import Cache, default_dir
    from ..sweep.runner import Pool

    base = parse_sets(sets)
    if duration is not None:
        if duration <= 0:
            raise TcpreuseError("--duration must be positive")
        base["duration_s"] = duration
    if scheduler:
        from ..sweep.runner import check_scheduler

        check_scheduler(scheduler)  # a bad address fails here, before anything starts
    cache = Cache(None if no_cache else (cache_dir or default_dir()))

    def say(link: str) -> None:
        click.echo(f"dask dashboard: {link}", err=True)

    return base, cache, lambda: Pool(scheduler, workers, dashboard=dashboard, on_dashboard=say)


def _workers(scheduler: str | None, workers: int | None) -> int:
    """Runs at once: the local cluster's size (a remote scheduler's is not known here)."""
    import os

    return 1 if scheduler else (workers or os.cpu_count() or 1)


def _write_json(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from ..result import dumps

        click.echo(dumps(doc))


@click.command()
@click.argument("scenario")
@click.option("--grid", "grids", multiple=True, metavar="KEY=V1,V2,...",
              help="An axis of the sweep (repeatable), e.g. --grid workload.rate=1000,2000,4000 "
              "--grid server:net.ipv4.tcp_tw_recycle=0,1.")
@common
@click.option("--csv", "csv_path", type=OUT_FILE, help="Write one row per point.")
@click.option("--parquet", "parquet_path", type=OUT_FILE,
              help="The same rows as Parquet (needs pyarrow).")
def sweep(scenario: str, grids: tuple[str, ...], sets: tuple[str, ...], duration: float | None, seeds: int,
          scheduler: str | None, workers: int | None, dashboard: bool, cache_dir: Path | None, no_cache: bool,
          time_limit: float, force: bool, as_json: bool, html_path: Path | None, csv_path: Path | None,
          parquet_path: Path | None) -> None:
    """Run SCENARIO over the cartesian product of --grid settings, --seeds runs per point,
    on Dask. Finished runs are cached: re-running an interrupted sweep computes only what
    is missing. The whole sweep is estimated first (runs, attempts, memory, time) and
    refused if it will not fit this machine's memory or --time-limit (--force runs it)."""
    from rich.console import Console

    from ..report import sweep as render
    from ..sim.estimate import check
    from ..sweep.grid import parse_grid
    from ..sweep.sweep import estimate_sweep, run_sweep

    axes = parse_grid(grids)
    base, cache, make_pool = _setup(sets, duration, cache_dir, no_cache, scheduler, workers, dashboard)
    n_workers = _workers(scheduler, workers)
    est = estimate_sweep(scenario, axes, seeds, base)
    check(est, what="the sweep", force=force, time_limit_s=time_limit, workers=n_workers)
    err = Console(stderr=True)
    if sys.stderr.isatty() and not as_json:
        err.print(f"sweep: {est.text()}, on {n_workers} worker(s)", markup=False, highlight=False)
    if sys.stderr.isatty() and not as_json:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                      TimeRemainingColumn(), console=err, transient=True) as prog:
            task = prog.add_task("sweep", total=None, note="")
            res = run_sweep(scenario, axes, seeds, base, cache, make_pool,
                            progress=lambda d, t, c: prog.update(task, completed=d, total=t, note=f"{c} cached"))
    else:
        res = run_sweep(scenario, axes, seeds, base, cache, make_pool)
    doc = res.to_json()
    if csv_path is not None:
        render.write_csv(doc, csv_path)
    if parquet_path is not None:
        render.write_parquet(doc, parquet_path)
    _emit(doc, res, html_path, as_json, render.sweep_page, render.sweep_table)


def _emit(doc: dict[str, Any], res: Any, html_path: Path | None, as_json: bool,
          page: Callable[[dict[str, Any]], Any], table: Callable[[dict[str, Any]], Any]) -> None:
    """The end of `sweep` and `capacity`: the HTML page if asked, then JSON or a table with
    where the runs came from (`res`: computed, where, cached)."""

    if html_path is not None:
        from ..report import html

        html.write(html_path, page(doc))
    if as_json:
        _write_json(doc, True)
        return
    from ..report.console import out_console

    con = out_console()
    con.print(table(doc))
    if doc.get("steady_state"):
        con.print(f"steady state: {doc['steady_state']['text']}", markup=False)
    shared = f", {res.shared} taken from the configuration's own runs" if getattr(res, "shared", 0) else ""
    con.print(f"[dim]{res.computed} run(s) computed{' on ' + res.where if res.where else ''}, "
              f"{res.cached} from the cache{shared}[/]")


def parse_share(text: str) -> float:
    """'0.1%' -> 0.001; '0.001' -> 0.001."""
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise TcpreuseError(f"{text!r}: expected a share such as 0.1% or 0.001") from None


@click.command()
@click.argument("scenario")
@click.option("--max-failure", default="0.1%", show_default=True, metavar="SHARE",
              help="Failure budget: the highest share of failed attempts that still counts as sustained.")
@click.option("--max-delayed", metavar="SHARE", help="Also require at most this share of delayed attempts.")
@click.option("--resolution", default="5%", show_default=True, metavar="SHARE",
              help="Stop when the passing and failing rates are this close.")
@click.option("--max-rate", type=float, help="Search cap in requests/s (default: 16x the scenario's rate).")
@click.option("--no-fixes", is_flag=True, help="Only the scenario as it is; do not search each fix.")
@common
@click.option("--markdown", "md_path", type=OUT_FILE,
              help="Write the result as a Markdown page (e.g. docs/capacity.md).")
def capacity(scenario: str, max_failure: str, max_delayed: str | None, resolution: str, max_rate: float | None,
             no_fixes: bool, sets: tuple[str, ...], duration: float | None, seeds: int, scheduler: str | None,
             workers: int | None, dashboard: bool, cache_dir: Path | None, no_cache: bool, time_limit: float,
             force: bool, as_json: bool, html_path: Path | None, md_path: Path | None) -> None:
    """Find the highest request rate SCENARIO sustains within the failure budget, as it is
    and with each fix its diagnosis proposes ("enable client timestamps: 1,800/s -> ...")."""
    from rich.console import Console

    from ..report import sweep as render
    from ..sweep.capacity import find_capacity

    base, cache, make_pool = _setup(sets, duration, cache_dir, no_cache, scheduler, workers, dashboard)
    err = Console(stderr=True)
    kw: dict[str, Any] = dict(max_failure=parse_share(max_failure),
                              max_delayed=None if max_delayed is None else parse_share(max_delayed),
                              resolution=parse_share(resolution), seeds=seeds, overrides=base, cap=max_rate,
                              cache=cache, make_pool=make_pool, fixes=not no_fixes, force=force,
                              time_limit_s=time_limit, workers=_workers(scheduler, workers))
    if sys.stderr.isatty() and not as_json:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err, transient=True) as prog:
            task = prog.add_task("capacity: probing", total=None)

            def show(r: Any) -> None:
                probes = sum(len(s.probes) for s in r.searches)
                running = sum(s.status == "running" for s in r.searches)
                prog.update(task, description=f"capacity: {probes} probes, {running} of {len(r.searches)} "
                            "configurations still searching")

            res = find_capacity(scenario, progress=show, **kw)
    else:
        res = find_capacity(scenario, **kw)
    doc = res.to_json()
    if md_path is not None:
        parts = [scenario, "--max-failure", max_failure]
        for opt, val in (("--max-delayed", max_delayed), ("--max-rate", max_rate), ("--duration", duration),
                         ("--seeds", seeds if seeds != 1 else None),
                         ("--resolution", resolution if resolution != "5%" else None)):
            if val is not None:
                parts += [opt, f"{val:g}" if isinstance(val, float) else str(val)]
        parts += [a for kv in sets for a in ("--set", kv)] + (["--no-fixes"] if no_fixes else [])
        cmd = "tcpreuse capacity " + " ".join(shlex.quote(a) for a in [*parts, "--markdown", str(md_path)])
        try:
            md_path.write_text(render.capacity_markdown(doc, cmd))
        except OSError as e:
            raise TcpreuseError(f"cannot write {md_path}: {e.strerror}") from None
    _emit(doc, res, html_path, as_json, render.capacity_page, render.capacity_table)

