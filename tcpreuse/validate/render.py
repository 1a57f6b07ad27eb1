"""Render a validation Report: terminal tables (rich), Markdown (docs/validation.md)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from . import suite
from .compare import Row
from .run import CrossCheck, Outcome, Report


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _mark(r: Row) -> str:
    return {True: "agree", False: "DISAGREE", None: "n/a"}[r.agree]


def terminal(rep: Report, con: Console) -> None:
    con.print(f"[bold]validate[/] on Linux {rep.kernel} ({_where(rep)}, CONFIG_HZ={rep.hz.value}, "
              f"from {rep.hz.source})")
    for o in rep.outcomes:
        _terminal_one(o, con)
    n_ok = sum(o.agree for o in rep.outcomes)
    colour = "green" if rep.agree else "red"
    na = len(rep.outcomes) - len(rep.applicable)
    con.print(f"[{colour}][bold]{n_ok}/{len(rep.applicable)} scenario(s) agree[/][/]"
              + (f" ({na} not applicable on this kernel)" if na else ""))


def _where(rep: Report) -> str:
    return "the running kernel" if rep.kernel_name == "host" else f"kernel {rep.kernel_name}"


def _terminal_one(o: Outcome, con: Console) -> None:
    if o.not_applicable:
        con.print(f"\n[bold]{o.name}[/] — {o.summary} … [yellow]not applicable[/]: {o.not_applicable}")
        return
    head = "[green]agree[/]" if o.agree else "[red]DISAGREE[/]"
    con.print(f"\n[bold]{o.name}[/] — {o.summary} … {head} (lab {o.lab_s:.1f} s, model "
              f"{o.sim_s:.2f} s)")
    if o.error:
        con.print(f"  [red]error:[/] {o.error}")
        return
    t = Table(box=None, header_style="bold", pad_edge=False)
    for c, j in (("metric", "left"), ("simulate", "right"), ("lab", "right"), ("", "left"),
                 ("tolerance", "left")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for r in o.rows:
        style = "red" if r.agree is False else ("dim" if r.agree is None else "")
        t.add_row(r.metric, _fmt(r.sim), _fmt(r.lab), _mark(r), r.tolerance, style=style)
    con.print(t)
    for n in o.notes:
        con.print(f"  [yellow]note:[/] {n}")
    if o.cross is not None:
        con.print(f"  [bold]cross-check[/] ({o.cross.rule}): the model with {o.cross.profile} "
                  + (f"[green]disagrees[/] with this kernel under every draw of its secrets, as it must: "
                     f"{_cross_rows(o.cross.disagree)}"
                     if o.cross.discriminates else "[red]agrees[/] with this kernel" + _draw(o.cross)
                     + ": the scenario did not tell the versions apart on this run"))


def _draw(x: CrossCheck) -> str:
    return f" (under draw {x.agreeing_draw} of the secrets)" if x.agreeing_draw else ""


def _cross_rows(rows: list[str], n: int = 4) -> str:
    return "; ".join(rows[:n]) + (f"; and {len(rows) - n} more" if len(rows) > n else "")


def _cross_cell(o: Outcome | None) -> str:
    if o is None:
        return "—"
    if o.not_applicable or o.error or o.cross is None:
        return _verdict(o)
    own = "agree" if o.agree else f"{sum(1 for r in o.rows if r.agree is False)} disagree"
    x = (f"**{len(o.cross.disagree)} disagree** ({_md_escape(_cross_rows(o.cross.disagree, 3))})"
         if o.cross.discriminates else f"agree{_draw(o.cross)} (**does not discriminate on this run**)")
    return f"own profile: {own}; {o.cross.profile}: {x}"


def cross_checks(reps: list[Report], heads: list[str]) -> list[str]:
    """The version-discriminating scenarios: each kernel's own verdict and the cross-check's."""
    names = [n for n in suite.DISCRIMINATING if any(o.name == n for r in reps for o in r.outcomes)]
    if not names:
        return []
    by = [{o.name: o for o in r.outcomes} for r in reps]
    lines = ["", "## Version-discriminating scenarios and their cross-checks", "",
             "Each pins a rule the model changes between the two kernels' versions. The model "
             "runs once more with the other version's profile against the same lab run; that "
             "cross-check must disagree, under every draw of the kernel's secrets the model tries "
             "(validate/run.py drawn()), which shows the rule decides the outcome.", "",
             "| scenario | rule | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(reps)]
    for n in names:
        lines.append(f"| {n} | {_md_escape(suite.DISCRIMINATING[n])} | "
                     + " | ".join(_cross_cell(b.get(n)) for b in by) + " |")
    return lines


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(rep: Report, command: str) -> str:
    """docs/validation.md: generated, so say how to regenerate it and on what it ran."""
    n_ok = sum(o.agree for o in rep.outcomes)
    lines = [
        "# Validation: the simulator against the real kernel",
        "",
        "<!-- Generated by `" + command + "`; do not edit by hand. -->",
        "",
        f"Measured on **Linux {rep.kernel}** (CONFIG_HZ={rep.hz.value}, from {rep.hz.source}), "
        f"suite `{rep.suite or 'custom'}`: **{n_ok} of {len(rep.outcomes)} scenarios agree**.",
        "",
        "Each scenario ran in the lab (network namespaces on this kernel, real `serve` and "
        "`load`) and in the simulator with every host on the running kernel's profile "
        "(`linux-native`). How to read it and what each tolerance means: "
        "[validate.md](validate.md). Regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        "| scenario | what it pins | rows | verdict |",
        "|---|---|---:|---|",
    ]
    for o in rep.outcomes:
        n = sum(1 for r in o.rows if r.agree is not None)
        lines.append(f"| [{o.name}](#{o.name}) | {_md_escape(o.summary)} | {n} | {_verdict(o)} |")
    lines += cross_checks([rep], [f"Linux {rep.kernel}"])
    tolerances: dict[str, str] = {}
    lines += _details(rep, tolerances, "##", "")
    lines += ["", "## Tolerances and why", "", "| tolerance | why |", "|---|---|"]
    lines += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in tolerances.items()]
    return "\n".join(lines) + "\n"


def _verdict(o: Outcome) -> str:
    bad = sum(1 for r in o.rows if r.agree is False)
    return "agree" if o.agree else (f"not applicable: {_md_escape(o.not_applicable)}" if o.not_applicable
                                    else f"**error**: {_md_escape(o.error)}" if o.error else f"**{bad} disagree**")


def _anchor(o: Outcome, suffix: str) -> str:
    return f"{o.name}{suffix}"


def markdown_kernels(reps: list[Report], command: str) -> str:
    """One verdict column per kernel (docs/validation.md when validated on several)."""
    heads = [f"Linux {r.kernel} ({r.kernel_name}, HZ {r.hz.value})" for r in reps]
    counts = [f"{sum(o.agree for o in r.outcomes)} of {len(r.applicable)} applicable agree on "
              f"{h}" for r, h in zip(reps, heads, strict=True)]
    lines = [
        "# Validation: the simulator against real kernels", "",
        "<!-- Generated by `" + command + "`; do not edit by hand. -->", "",
        "Each scenario ran in the lab on each kernel (the running one, and User-Mode Linux: "
        "[kernels.md](kernels.md)) and in the simulator with every host on that kernel's "
        "profile, HZ and clock phase. " + "; ".join(counts) + ". How to read it: "
        "[validate.md](validate.md). Regenerate with:", "", "```", command, "```", "",
        "| scenario | what it pins | " + " | ".join(heads) + " |",
        "|---|---|" + "---|" * len(reps),
    ]
    names = list(dict.fromkeys(o.name for r in reps for o in r.outcomes))
    by = [{o.name: o for o in r.outcomes} for r in reps]
    for n in names:
        summary = next((b[n].summary for b in by if n in b and b[n].summary), "")
        cells = [(f"[{_verdict(b[n])}](#{_anchor(b[n], '-' + r.kernel_name)})" if n in b else "—")
                 for b, r in zip(by, reps, strict=True)]
        lines.append(f"| {n} | {_md_escape(summary)} | " + " | ".join(cells) + " |")
    lines += cross_checks(reps, heads)
    tolerances: dict[str, str] = {}
    for r, h in zip(reps, heads, strict=True):
        lines += ["", f"## On {h}"]
        lines += _details(r, tolerances, "###", "-" + r.kernel_name)
    lines += ["", "## Tolerances and why", "", "| tolerance | why |", "|---|---|"]
    lines += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in tolerances.items()]
    return "\n".join(lines) + "\n"


def _details(rep: Report, tolerances: dict[str, str], level: str, suffix: str) -> list[str]:
    lines: list[str] = []
    for o in rep.outcomes:
        anchor = f' <a id="{_anchor(o, suffix)}"></a>' if suffix else ""
        lines += ["", f"{level} {o.name}{anchor}", "", _md_escape(o.summary), ""]
        if o.not_applicable:
            lines += [f"Not applicable on this kernel: {_md_escape(o.not_applicable)}", ""]
            continue
        if o.error:
            lines += [f"Error: {o.error}", ""]
            continue
        lines += ["| metric | simulate | lab | verdict | tolerance |", "|---|---:|---:|---|---|"]
        for r in o.rows:
            tolerances.setdefault(r.tolerance, r.reason)
            mark = _mark(r) if r.agree is not False else "**DISAGREE**"
            lines.append(f"| {_md_escape(r.metric)} | {_fmt(r.sim)} | {_fmt(r.lab)} | {mark} | "
                         f"{_md_escape(r.tolerance)} |")
        if o.notes:
            lines.append("")
            lines += [f"- {_md_escape(n)}" for n in o.notes]
        if o.cross is not None:
            lines += ["", f"Cross-check with {o.cross.profile} ({_md_escape(o.cross.rule)}): "
                      + (f"{len(o.cross.disagree)} row(s) disagree (under the seed's secrets; no other draw "
                         "agrees either): " + _md_escape("; ".join(o.cross.disagree))
                         if o.cross.discriminates else f"agrees{_draw(o.cross)}: did not discriminate on this run")
                      + "."]
    return lines


def listing() -> list[tuple[str, str, bool]]:
    """(name, summary, in quick) of every validation scenario."""
    return [(n, suite.summary(n), n in suite.QUICK) for n in suite.names()]
