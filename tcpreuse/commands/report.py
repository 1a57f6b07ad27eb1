"""`tcpreuse report FILE`: render a saved result as one self-contained HTML page (--html)
or in the terminal. The kind of FILE is detected (see tcpreuse.report.kinds); a capture is
analysed and a run saved without findings is diagnosed here, so report/ only renders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .options import OUT_FILE

if TYPE_CHECKING:
    from ..report.kinds import Loaded


def load(file: Path) -> Loaded:
    """FILE as the kind it is, with the findings its page shows."""
    from ..capture.formats import PCAP_MAGIC, PCAPNG_SHB
    from ..diagnose.base import Evidence, diagnose
    from ..report import kinds

    if kinds.head(file) in (*PCAP_MAGIC, PCAPNG_SHB.to_bytes(4, "little")):
        from ..capture.analysis import analyze_paths

        an = analyze_paths([file])[0]
        return kinds.Loaded("capture", an, diagnose(Evidence(source="analyze", capture=an)))
    loaded = kinds.load_json(file)
    if loaded.kind == "run" and loaded.findings is None:
        loaded.findings = diagnose(Evidence(source=loaded.data.source, run=loaded.data))
    return loaded


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--html", "html_path", type=OUT_FILE,
              help="Write a self-contained HTML report (plots as inline SVG; opens offline).")
@click.option("--check", "check", is_flag=True,
              help="With --html: open the page in headless Chromium and fail if a plot is empty or the "
              "console shows an error.")
@click.option("--screenshot", type=OUT_FILE,
              help="With --check: also save a full-page PNG.")
def report(file: Path, html_path: Path | None, check: bool, screenshot: Path | None) -> None:
    """Render FILE: a RunResult (simulate/lab --result, analyze --save), lab/doctor/analyze/sweep/
    capacity --json output, doctor --watch --json lines, or a pcap/pcapng capture."""
    from ..errors import TcpreuseError
    from ..report import kinds

    if (check or screenshot) and html_path is None:
        raise TcpreuseError("--check and --screenshot need --html FILE")
    loaded = load(file)
    if html_path is not None:
        from ..report import html

        page = kinds.page_of(loaded, made_from=file.name)
        html.write(html_path, page)
        click.echo(f"report written to {html_path}", err=True)
        if check:
            from ..report.browser import check_page

            res = check_page(html_path, screenshot)
            problems = res.problems()
            click.echo(f"chromium: {len(res.plots)} plot(s), {res.topology_nodes} topology node(s), "
                       f"{res.findings} finding(s), {len(res.console)} console message(s)", err=True)
            if problems:
                raise TcpreuseError("the page does not render as it should: " + "; ".join(problems))
        return
    _terminal(loaded)


def _terminal(loaded: Loaded) -> None:
    from rich.text import Text

    from ..report import html, kinds
    from ..report.console import out_console
    from ..report.terminal import finding_panel, render_simulation

    con = out_console()
    if loaded.kind == "run":
        render_simulation(con, loaded.data, loaded.findings or [], None)
        return
    page = kinds.page_of(loaded)
    style = {"bad": "bold red", "warn": "yellow", "good": "green"}[page.verdict_level]
    con.print(Text(page.title, style="bold"))
    con.print(Text(page.verdict, style=style))
    for line in page.verdict_lines:
        con.print(Text("  " + line))
    for f in page.findings or []:
        con.print(finding_panel(f))
    for t in page.tables:
        from rich.table import Table

        tab = Table(title=t.title, title_justify="left")
        for i, h in enumerate(t.headers):
            tab.add_column(h, justify="right" if i in t.numeric else "left")
        for row in t.rows:
            tab.add_row(*[str(html.num(c)) for c in row])
        con.print(tab)
