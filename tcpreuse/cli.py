"""The `tcpreuse` command: thin. Each verb lives in tcpreuse/commands/<verb>.py and is
imported only when used, so `tcpreuse --help` stays fast and a verb's dependencies are
not loaded by the others. User errors (TcpreuseError) become one clear message."""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .errors import TcpreuseError

# verb -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "simulate": "tcpreuse.commands.simulate:simulate",
    "scenarios": "tcpreuse.commands.scenarios:scenarios",
    "lab": "tcpreuse.commands.lab:lab",
    "validate": "tcpreuse.commands.validate:validate",
    "load": "tcpreuse.commands.load:load",
    "serve": "tcpreuse.commands.serve:serve",
    "doctor": "tcpreuse.commands.doctor:doctor",
    "analyze": "tcpreuse.commands.analyze:analyze",
    "sweep": "tcpreuse.commands.sweep:sweep",
    "capacity": "tcpreuse.commands.sweep:capacity",
    "report": "tcpreuse.commands.report:report",
    "trace": "tcpreuse.commands.trace:trace",
}

HELP = {
    "simulate": "Run a scenario on the kernel-faithful model and diagnose it.",
    "scenarios": "List the built-in scenarios.",
    "lab": "Run a scenario on the real kernel in network namespaces.",
    "validate": "Compare simulate and lab on the running kernel.",
    "load": "Short-connection load generator.",
    "serve": "Reference server for short connections.",
    "doctor": "Diagnose a live host or a snapshot of one.",
    "analyze": "Diagnose short-connection failures from packet captures.",
    "sweep": "Run a scenario over a grid of settings (Dask).",
    "capacity": "Find the highest sustainable connection rate, per fix.",
    "report": "Render a saved result as HTML or text.",
    "trace": "Trace the kernel's verdicts per packet and call (bpftrace).",
}


def _available(verb: str) -> bool:
    mod = COMMANDS[verb].split(":")[0]
    return importlib.util.find_spec(mod) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [v for v in COMMANDS if _available(v)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None or not _available(cmd_name):
            return None
        mod, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(mod), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(v, HELP.get(v, "")) for v in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tcpreuse", prog_name="tcpreuse")
def cli() -> None:
    """Reproduce, diagnose and fix failures of short-lived TCP connections."""


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="tcpreuse", standalone_mode=False)
    except TcpreuseError as e:
        click.secho(f"tcpreuse: error: {e.message}", fg="red", err=True)
        if e.hint:
            click.echo(f"  hint: {e.hint}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except SystemExit:
        raise
