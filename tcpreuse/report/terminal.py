"""Terminal rendering (rich) of runs, findings and fixes: for a person, findings first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..findings import Finding, Fix
from ..result import RunResult, Timeline

BLOCKS = " ▁▂▃▄▅▆▇█"
SEV_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def sparkline(values: Sequence[float], width: int = 60, top: float | None = None) -> str:
    """Series resampled to `width` columns (max per bucket) as block characters."""
    if not values:
        return ""
    n = len(values)
    if n > width:
        step = n / width
        vals = [max(values[int(i * step): max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    else:
        vals = list(values)
    hi = top if top is not None else max(vals)
    if hi <= 0:
        return BLOCKS[0] * len(vals)
    out = []
    for v in vals:
        k = 0 if v <= 0 else max(1, min(8, round(v / hi * 8)))
        out.append(BLOCKS[k])
    return "".join(out)


def pct(x: float) -> str:
    return f"{x * 100:.2f} %" if x < 0.1 else f"{x * 100:.1f} %"


def fmt_ms(ms: float | None) -> str:
    """A latency given in ms, with the precision it needs: seconds from 1 s, ms from 1 ms,
    µs below (a loopback connect of 45 µs is "45 µs", not "0.0 ms")."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:,.2f} s"
    if ms >= 1 or ms == 0:
        return f"{ms:.1f} ms"
    us = ms * 1000
    return f"{us:.0f} µs" if us >= 10 else f"{us:.1f} µs"


def run_summary(run: RunResult, title: str = "") -> RenderableType:
    n = run.attempt_count()
    outs = run.outcomes()
    parts = []
    for k, v in sorted(outs.items(), key=lambda kv: (kv[0] != "ok", -kv[1])):
        style = "green" if k == "ok" else "red"
        parts.append(Text.assemble((f"{k} ", style), f"{v:,} ({pct(v / n) if n else '-'})"))
    outcome_line = Text("  ·  ").join(parts) if parts else Text("no attempts")
    lat = run.connect_percentiles()
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    rate = n / run.duration_s if run.duration_s else 0
    t.add_row("attempts", f"{n:,} in {run.duration_s:g} s ({rate:,.0f}/s)")
    t.add_row("outcomes", outcome_line)
    t.add_row("delayed", f"{run.delayed_rate() * n:,.0f} connected only after a SYN retry ({pct(run.delayed_rate())})")
    t.add_row("connect", "  ".join(f"{k} {fmt_ms(v)}" for k, v in lat.items()))
    ff = run.first_failure()
    if ff:
        t.add_row("first failure", f"attempt #{ff['index'] + 1:,} at t = {ff['time_s']:.1f} s: {ff['outcome']} ({ff['reason']})")
    return Panel(t, title=title or f"{run.source}: {run.scenario}", title_align="left")


def timeline(run: RunResult, width: int = 60) -> RenderableType:
    onset = run.first_failure()
    return series_panel(run.timeline, None if onset is None else float(onset["time_s"]), width)


def series_panel(tl: Timeline, first_failure_s: float | None, width: int = 60) -> RenderableType:
    """The timeline panel: per-second attempts, delayed and failed, TIME_WAIT and port
    series, and when the first attempt failed (`first_failure_s`, None: none did)."""
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(no_wrap=True)
    t.add_column(justify="right", style="dim")
    if not tl.t:
        return Text("")
    t.add_row("attempts/s", Text(sparkline(tl.attempts, width), style="blue"), f"max {max(tl.attempts):,}")
    if any(tl.delayed):
        t.add_row("delayed/s", Text(sparkline(tl.delayed, width), style="yellow"), f"max {max(tl.delayed):,}")
    t.add_row("failed/s", Text(sparkline(tl.failed, width), style="red"), f"max {max(tl.failed):,}")
    shown = 0
    for h, s in tl.hosts.items():
        tw = s.get("time_wait", [])
        if tw and max(tw) > 0 and shown < 6:
            t.add_row(f"TIME_WAIT {h}", Text(sparkline(tw, width), style="magenta"), f"max {max(tw):,}")
            shown += 1
    for _k, p in sorted(tl.ports.items(), key=lambda kv: -max(kv[1].in_use or [0]) / max(kv[1].budget, 1))[:3]:
        if p.in_use and max(p.in_use) > 0:
            t.add_row(f"ports {p.host}->{p.dst}", Text(sparkline(p.in_use, width, top=p.budget), style="cyan"),
                      f"max {max(p.in_use):,}/{p.budget:,}")
    dur = tl.t[-1] + tl.step_s
    cap = f"0 … {dur:g} s"
    if first_failure_s is not None:
        cap += f"   first failure at {first_failure_s:.1f} s"
    return Panel(Group(t, Text(cap, style="dim")), title="timeline", title_align="left")


def finding_panel(f: Finding) -> RenderableType:
    body = Table.grid(padding=(0, 2))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    for e in f.evidence:
        v = f"{e.value:,}" if isinstance(e.value, int) else str(e.value)
        body.add_row(e.label, v + (f"  ({e.detail})" if e.detail else ""))
    head = Text.assemble((f"[{f.severity}] ", SEV_STYLE.get(f.severity, "")), (f.title, "bold"),
                         (f"   confidence {f.confidence:.0%}", "dim"))
    return Panel(Group(Text(f.cause), Text(""), body), title=head, title_align="left",
                 border_style=SEV_STYLE.get(f.severity, ""))


def fixes_table(fixes: list[Fix], limit: int = 12) -> RenderableType:
    t = Table(title="fixes, re-simulated (ranked)", title_justify="left", show_lines=False)
    t.add_column("#", justify="right")
    t.add_column("fix")
    t.add_column("failed", justify="right")
    t.add_column("delayed", justify="right")
    t.add_column("p99 connect", justify="right")
    t.add_column("verdict")
    for i, f in enumerate(fixes[:limit], 1):
        e = f.effect
        if e is None:
            t.add_row(str(i), f.title, "-", "-", "-", Text("not simulated", style="dim"))
            continue
        if e.note:
            t.add_row(str(i), f.title, "-", "-", "-", Text(e.note, style="red"))
            continue
        better = e.failure_rate_after < e.failure_rate_before or (
            e.failure_rate_after == e.failure_rate_before and e.delayed_rate_after < e.delayed_rate_before * 0.5)
        worse = e.failure_rate_after > e.failure_rate_before * 1.05 + 1e-9
        if e.failure_rate_after == 0 and e.delayed_rate_after <= max(0.001, e.delayed_rate_before * 0.05):
            verdict = Text("fixes it", style="bold green")
        elif worse:
            verdict = Text("worse", style="bold red")
        elif better:
            verdict = Text("helps", style="green")
        else:
            verdict = Text("no effect", style="dim")
        t.add_row(str(i), f.title,
                  f"{pct(e.failure_rate_before)} → {pct(e.failure_rate_after)}",
                  f"{pct(e.delayed_rate_before)} → {pct(e.delayed_rate_after)}",
                  f"{fmt_ms(e.p99_connect_ms_before)} → {fmt_ms(e.p99_connect_ms_after)}",
                  verdict)
    return t


def render_simulation(console: Console, run: RunResult, findings: list[Finding], ranked: list[Fix] | None,
                      summary: str = "") -> None:
    console.print(run_summary(run, title=f"{run.source} {run.scenario}" + (f" — {summary}" if summary else "")))
    console.print(timeline(run))
    if not findings:
        console.print(Text("No problem found: every connection completed at its first SYN.", style="green"))
    for f in findings:
        console.print(finding_panel(f))
    if ranked:
        console.print(fixes_table(ranked))
        for fx in ranked[:3]:
            if fx.commands:
                console.print(Text.assemble(("  " + fx.title + ": ", "bold"), "; ".join(fx.commands)))
    elif findings and any(fx for fd in findings for fx in fd.fixes):
        t = Table(title="candidate fixes (run with --fixes to prove them)", title_justify="left")
        t.add_column("fix")
        t.add_column("how")
        for fd in findings:
            for fx in fd.fixes:
                t.add_row(fx.title, "; ".join(fx.commands) or ", ".join(f"{k}={v}" for k, v in fx.set.items()))
        console.print(t)
    meta = run.meta.get("engine")
    if meta:
        console.print(Text(f"simulated {meta['attempts']:,} attempts ({meta['events']:,} events) in "
                           f"{meta['wall_s']:.2f} s", style="dim"))


def watch_timeline(docs: Sequence[dict[str, Any]], width: int = 60) -> RenderableType:
    """Sparklines of `doctor --watch` refreshes: TIME_WAIT per host, busiest port pairs."""
    from .html import watch_series

    t, tw, ports = watch_series(docs)
    g = Table.grid(padding=(0, 1))
    g.add_column(style="bold", no_wrap=True)
    g.add_column(no_wrap=True)
    g.add_column(justify="right", style="dim")
    for h, vals in list(tw.items())[:6]:
        g.add_row(f"TIME_WAIT {h}", Text(sparkline(vals, width), style="magenta"), f"now {vals[-1]:,}, max {max(vals):,}")
    for label, budget, vals in ports[:3]:
        if max(vals) > 0:
            g.add_row(f"ports {label}", Text(sparkline(vals, width, top=budget), style="cyan"),
                      f"now {vals[-1]:,}/{budget:,}")
    span = t[-1] if t else 0.0
    return Panel(Group(g, Text(f"last {len(t)} refreshes over {span:.0f} s", style="dim")), title="timeline",
                 title_align="left")
