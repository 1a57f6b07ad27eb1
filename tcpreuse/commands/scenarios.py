"""`tcpreuse scenarios`: list the built-in scenarios, or print one."""

from __future__ import annotations

import click
from rich.table import Table

from ..errors import ScenarioError
from ..report.console import out_console
from ..scenario.loader import builtin_names, builtin_text, list_builtin


@click.command()
@click.argument("name", required=False)
def scenarios(name: str | None) -> None:
    """List the built-in scenarios (one line each), or print NAME's TOML."""
    if name:
        if name not in builtin_names():
            raise ScenarioError(f"no built-in scenario named {name!r}")
        click.echo(builtin_text(name), nl=False)
        return
    t = Table(show_header=True, header_style="bold", box=None)
    t.add_column("name")
    t.add_column("what it shows")
    for n, summary in list_builtin():
        t.add_row(n, summary)
    out_console().print(t)
