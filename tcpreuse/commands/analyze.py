"""`tcpreuse analyze FILE...`: what happened to every connection attempt in captures.

Thin: tcpreuse.capture reads and analyses, the capture_* diagnosis rules judge,
tcpreuse.report.capture draws. Several files are read in parallel processes; by default
they are one capture (rotated files of one capture point), --per-file keeps them apart.
--scheduler runs the same analysis on a Dask cluster, one task per capture point
(tcpreuse.capture.distributed), with the same result.
"""

from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path

import click

from ..errors import CaptureError
from .options import OUT_FILE

_FREEZE_AT_EXIT: list[object] = []


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON: counts, per-client/server stats, findings.")
@click.option("--csv", "csv_path", type=OUT_FILE,
              help="Write one row per attempt (tshark field names where they exist).")
@click.option("--parquet", "parquet_path", type=OUT_FILE,
              help="The same rows as Parquet (needs pyarrow).")
@click.option("--save", "save_path", type=OUT_FILE,
              help="Save the attempts as a RunResult JSON (source=analyze) for `tcpreuse report`.")
@click.option("--html", "html_path", type=OUT_FILE,
              help="Write a self-contained HTML report (findings, SYN outcomes and timestamp clocks over time).")
@click.option("--per-file", is_flag=True, help="Analyse each file on its own instead of as one capture.")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=None,
              help="Processes reading files in parallel (default: one per core).")
@click.option("--scheduler", metavar="tcp://HOST:PORT|local",
              help="Analyse on a Dask cluster: one task per capture point (rotated files of one host "
              "together), results merged; `local` starts one on this machine's cores (loopback only).")
@click.option("--top", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="Clients and servers shown in the tables.")
@click.option("--strict", is_flag=True, help="Fail (exit 2) if any file could not be read completely.")
def analyze(files: tuple[Path, ...], as_json: bool, csv_path: Path | None, parquet_path: Path | None,
            save_path: Path | None, per_file: bool, jobs: int | None, top: int, strict: bool,
            html_path: Path | None = None, scheduler: str | None = None) -> None:
    """Diagnose short-connection failures from pcap/pcapng captures.

    For every connection attempt (a SYN and what followed): Zeek conn_state and history,
    SYN retransmissions, how the SYN was answered (SYN-ACK, RST, an ACK for an old
    connection, nothing), 4-tuple reuse and what a Linux server in TIME_WAIT would have
    done with it; per client: timestamps, timestamp clocks (NAT), port allocation and
    cycle; then findings with the changes that fix them.
    """
    # One run that ends with the process: the cyclic garbage collector would only walk
    # the objects of numpy's import and of the analysis again and again, and once more
    # at exit (together ~7 % of the command). So it is off for the run (back on after:
    # tests call this in-process), and at exit everything is frozen, which the final
    # collection skips.
    if not _FREEZE_AT_EXIT:
        _FREEZE_AT_EXIT.append(atexit.register(gc.freeze))
    was_enabled = gc.isenabled()
    gc.disable()
    _keep_freed_memory()
    try:
        _run(files, as_json, csv_path, parquet_path, save_path, per_file, jobs, top, strict, html_path, scheduler)
    finally:
        if was_enabled:
            gc.enable()


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse, as it ends up doing by itself
    in a long-running process: allocations under 32 MB come from the heap, which is not
    trimmed. Otherwise each large temporary of the analysis is a fresh mapping whose
    every page is faulted in and zeroed again, then unmapped (~12 ms of a 0.29 s command
    on an 800k-packet capture). Process-wide, hence here and not in the library; a no-op
    (False) where there is no glibc. ctypes is imported by numpy in any case."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20) == 1) & bool(mallopt(m_trim_threshold, 1 << 30) == 1)


def _run(files: tuple[Path, ...], as_json: bool, csv_path: Path | None, parquet_path: Path | None,
         save_path: Path | None, per_file: bool, jobs: int | None, top: int, strict: bool,
         html_path: Path | None, scheduler: str | None = None) -> None:
    from ..capture.analysis import analyze_paths
    from ..diagnose.base import Evidence, diagnose
    from ..result import dumps

    if scheduler:
        from ..capture.distributed import analyze_on_dask

        results = analyze_on_dask(files, scheduler, merge=not per_file, workers=jobs,
                                  progress=lambda m: click.echo(f"analyze: {m}", err=True))
    else:
        per_attempt = bool(csv_path or parquet_path or save_path or html_path)
        results = analyze_paths(files, merge=not per_file, jobs=jobs, per_attempt=per_attempt)
    if csv_path or parquet_path or save_path or html_path:
        if len(results) > 1:
            raise CaptureError("--csv/--parquet/--save/--html need one analysis; drop --per-file")
        an = results[0]
        if csv_path:
            an.write_csv(csv_path)
        if parquet_path:
            an.write_parquet(parquet_path)
        if save_path:
            try:
                an.to_run_result().save(save_path)
            except OSError as e:
                raise CaptureError(f"cannot write {save_path}: {e.strerror or e}") from None
    judged = [(an, diagnose(Evidence(source="analyze", capture=an))) for an in results]
    if html_path is not None:  # files before stdout: a reader that stops early (| head) loses no file
        from ..report import html

        an, findings = judged[0]
        html.write(html_path, html.capture_page(an, findings))
    docs = []
    for an, findings in judged:
        if as_json:
            docs.append({**an.to_json(), "findings": [f.to_json() for f in findings]})
        else:
            from ..report.capture import render
            from ..report.console import out_console

            con = out_console()
            if len(results) > 1:
                con.rule(", ".join(Path(f).name for f in an.files))
            for part in render(an, findings, top=top):
                con.print(part)
            from ..report.terminal import series_panel

            con.print(series_panel(*an.timeline()))
    if as_json:
        click.echo(dumps(docs[0] if len(docs) == 1 else {"analyses": docs}))
    for an in results:
        for w in an.warnings:
            click.secho(f"tcpreuse: warning: {w}", fg="yellow", err=True)
    if strict and not all(an.complete for an in results):
        bad = [r for an in results for r in an.reports if not r.complete]
        raise CaptureError(f"{len(bad)} file(s) not read completely: "
                           + "; ".join(f"{Path(r.path).name}: {r.summary()}" for r in bad))
    sys.stdout.flush()
