"""`tcpreuse validate`: run scenarios on the real kernel (lab) and on the model
(simulate) on this machine, and say row by row where they agree."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from ..errors import TcpreuseError
from ..result import dumps
from .options import OUT_FILE


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("scenario", required=False, metavar="[SCENARIO|NAME]")
@click.option("--suite", "suite_name", metavar="NAME",
              help="Run a built-in validation suite: full or quick.")
@click.option("--quick", is_flag=True, help="The quick suite (what CI runs, a few minutes).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario value (repeatable), as in simulate and lab.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
@click.option("--markdown", "markdown_file", type=OUT_FILE,
              help="Also write the agreement tables as Markdown to FILE.")
@click.option("--list", "list_only", is_flag=True, help="List the validation scenarios and exit.")
@click.option("--kernel", "kernels", type=click.Choice(["host", "uml"]), multiple=True,
              help="Where the lab runs: the running kernel (host, the default), or User-Mode "
              "Linux (uml: Debian's 6.1, one boot for the whole suite). Repeat for one verdict "
              "column per kernel.")
@click.option("--model-profile", metavar="PROFILE",
              help="Cross-check: run the model with this profile (e.g. linux-6.18) instead of "
              "the kernel's own; a version-dependent rule must then disagree.")
@click.option("--html", "html_path", type=OUT_FILE,
              help="Also write a self-contained HTML report (agreement tables, model and kernel timelines).")
@click.option("--trace", "trace", is_flag=True,
              help="Trace the lab runs (bpftrace) and compare per attempt: the kernel's verdict against the "
                   "model's reason and the lab's.")
def validate(scenario: str | None, suite_name: str | None, quick: bool, sets: tuple[str, ...],
             as_json: bool, markdown_file: Path | None, list_only: bool,
             kernels: tuple[str, ...] = (), model_profile: str | None = None,
             html_path: Path | None = None, trace: bool = False) -> None:
    """Compare the simulator with the running kernel (needs root).

    Each scenario runs in the lab (network namespaces, real sockets) and in the simulator
    with every host on the running kernel's profile; outcome counts, first failure,
    ports and parity, TIME_WAIT, counters and latency are compared with stated
    tolerances. Exit status 1 when anything disagrees.
    """
    from ..scenario.loader import parse_sets
    from ..validate import render, suite
    from ..validate.run import Options, validate_many

    if list_only:
        for name, summary, quick_too in render.listing():
            click.echo(f"{name:30} {'quick' if quick_too else '     '}  {summary}")
        return
    if quick:
        suite_name = suite_name or "quick"
        if suite_name != "quick":
            raise TcpreuseError("--quick and --suite name different suites")
    if (scenario is None) == (suite_name is None):
        raise TcpreuseError("give one SCENARIO (a validation name, a file or a built-in) or "
                            "--suite NAME / --quick", hint="`tcpreuse validate --list`")
    refs = suite.suite(suite_name) if suite_name else [scenario or ""]
    overrides = parse_sets(sets)
    kernels = tuple(dict.fromkeys(kernels)) or ("host",)
    if html_path is not None and len(kernels) > 1:
        raise TcpreuseError("--html takes one --kernel")
    err = Console(stderr=True)
    reps = []
    for kernel in kernels:
        opts = Options(progress=None if as_json else (lambda m: err.print(f"[dim]validate: {m}[/]")),
                       keep_results=html_path is not None, kernel=kernel, model_profile=model_profile,
                       trace=trace)
        reps.append(validate_many(refs, overrides, opts, suite_name=suite_name))
    rep = reps[0]
    if html_path is not None:
        from ..report import html

        html.write(html_path, html.validate_page(rep.to_json(), [(o.name, o.sim, o.lab) for o in rep.outcomes]))
    if markdown_file is not None:
        cmd = ("tcpreuse validate " + "".join(f"--kernel {k} " for k in kernels if kernels != ("host",))
               + (f"--model-profile {model_profile} " if model_profile else "")
               + (f"--suite {suite_name}" if suite_name else str(scenario))
               + f" --markdown {markdown_file}")
        try:
            markdown_file.write_text(render.markdown(rep, cmd) if len(reps) == 1
                                     else render.markdown_kernels(reps, cmd))
        except OSError as e:
            raise TcpreuseError(f"cannot write {markdown_file}: {e.strerror}") from None
    if as_json:
        click.echo(dumps(rep.to_json() if len(reps) == 1 else {"kernels": [r.to_json() for r in reps]}))
    else:
        from ..report.console import out_console

        for r in reps:
            render.terminal(r, out_console())
    stopped = [o for r in reps for o in r.outcomes if o.interrupted]
    if stopped:
        from .lab import exit_status

        sys.exit(exit_status(stopped[0].interrupted_by or "SIGINT"))
    if not all(r.agree for r in reps):
        sys.exit(1)
