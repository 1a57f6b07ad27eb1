"""The `tcpreuse` command: thin. Each verb lives in tcpreuse/commands/<verb>.py and is
imported only when used, so `tcpreuse --help` stays fast and a verb's dependencies are
not loaded by the others. User errors (TcpreuseError) become one clear message.

Exit status, the same for every verb: 0 done; 1 the verb's own "not good" (validate's
disagreement, capacity's ...); 2 bad input or environment (one line on stderr); 130 after
SIGINT (Ctrl-C), 143 after SIGTERM, 129 after SIGHUP (128 + the signal, the shell's
convention), cleanup done first. A reader that goes away (`tcpreuse ... | head`) is not
an error: files the verb writes are written first, the rest of stdout is dropped, exit 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading

import click

from .errors import TcpreuseError, Terminated

# verb -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "simulate": "tcpreuse.commands.simulate:simulate",
    "scenarios": "tcpreuse.commands.scenarios:scenarios",
    "lab": "tcpreuse.commands.lab:lab",
    "validate": "tcpreuse.commands.validate:validate",
    "load": "tcpreuse.commands.load:load",
    "serve": "tcpreuse.commands.serve:serve",
    "emulate": "tcpreuse.commands.emulate:emulate",
    "doctor": "tcpreuse.commands.doctor:doctor",
    "exporter": "tcpreuse.commands.exporter:exporter",
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
    "emulate": "A Windows/macOS client, packet by packet, over a TUN device (the lab uses it).",
    "doctor": "Diagnose a live host or a snapshot of one.",
    "exporter": "Serve doctor's numbers as Prometheus metrics.",
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


_MAIN_PID = os.getpid()


def _raise_terminated(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked child (serve/load workers): the default action
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(signum)


def _catch_signals() -> dict[int, object]:
    """SIGTERM and SIGHUP raise Terminated in the main thread (where they still have their
    default action), so that they unwind like Ctrl-C. Returns the handlers replaced."""
    global _MAIN_PID
    old: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    _MAIN_PID = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, _raise_terminated)
    return old


def _drop_stdout() -> None:
    """The reader of stdout went away: send what is still buffered (and anything printed
    later, at exit) to /dev/null instead of failing again while flushing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no real file (a test's capture)
        pass


def main(argv: list[str] | None = None) -> None:
    old = _catch_signals()
    try:
        # click's own main() would turn Ctrl-C into Abort after printing an empty line
        args = sys.argv[1:] if argv is None else list(argv)
        with cli.make_context("tcpreuse", args) as ctx:
            cli.invoke(ctx)
        sys.stdout.flush()
    except click.exceptions.Exit as e:  # --help, --version
        sys.stdout.flush()
        sys.exit(e.exit_code)
    except TcpreuseError as e:
        msg = e.message if not e.hint else f"{e.message} (hint: {e.hint})"
        click.secho(f"tcpreuse: error: {' '.join(msg.split())}", fg="red", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        _show(e)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(128 + signal.SIGINT)
    except Terminated as e:
        click.echo(f"terminated by {signal.Signals(e.signum).name}", err=True)
        sys.exit(128 + e.signum)
    except BrokenPipeError:
        _drop_stdout()
        sys.exit(0)
    except SystemExit:
        raise
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)  # type: ignore[arg-type]


def _show(e: click.ClickException) -> None:
    """A usage error in one line: `tcpreuse simulate: error: ...` (click's own form takes
    three: usage, a pointer to --help, the error)."""
    ctx = getattr(e, "ctx", None)
    where = f"tcpreuse {ctx.info_name}" if ctx is not None and ctx.parent is not None else "tcpreuse"
    hint = ""
    if isinstance(e, click.UsageError) and ctx is not None:
        hint = f" (see `{ctx.command_path} --help`)"
    click.secho(f"{where}: error: {' '.join(e.format_message().split())}{hint}", fg="red", err=True)
