"""Terminal rendering of a capture analysis: what was read, what happened to the
attempts, per client and per server, then the findings with their fixes. Nothing here
prints; the command does."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..capture.analysis import CaptureAnalysis
from ..capture.facts import pct
from ..capture.zeek import CONN_STATE_MEANING
from ..findings import Finding
from .terminal import SEV_STYLE, finding_panel


def _n(x: int) -> str:
    return f"{x:,}"


def read_summary(an: CaptureAnalysis) -> RenderableType:
    rows: list[RenderableType] = []
    for r in an.reports:
        style = "" if r.complete else "yellow"
        line = Text.assemble((Path(r.path).name, "bold"), f" ({r.format or '?'}): {r.summary()}", style=style)
        skipped = {k: v for k, v in r.skipped.items() if v}
        if skipped:
            line.append("; skipped: " + ", ".join(f"{k} {v:,}" for k, v in skipped.items()), style="dim")
        rows.append(line)
        for w in r.warnings:
            rows.append(Text(f"  ! {w}", style="yellow"))
    return Group(*rows)


def overview(an: CaptureAnalysis) -> RenderableType:
    c = an.counts()
    n = c["attempts"]
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    dur = an.t_last - an.t_first if an.packets else 0.0
    t.add_row("packets", f"{_n(an.packets)} TCP packets over {dur:.1f} s")
    t.add_row("attempts", f"{_n(n)} SYNs opened an attempt ({_n(c['established'])} established"
              + (f"; {_n(c['midstream'])} midstream flows without a SYN" if c["midstream"] else "") + ")")
    if n:
        states = "  ".join(f"{k} {_n(v)}" for k, v in sorted(c["conn_state"].items(), key=lambda kv: -kv[1]))
        t.add_row("Zeek conn_state", states)
        t.add_row("first answer", "  ".join(f"{k} {_n(v)}" for k, v in c["answer"].items()))
        t.add_row("SYN retransmitted", f"in {_n(c['syn_retried'])} attempts ({pct(c['syn_retried'] / n)}), "
                  f"{_n(c['syn_retransmissions'])} SYN packet{'s' if c['syn_retransmissions'] != 1 else ''} resent")
        t.add_row("4-tuple reused", f"{_n(c['reused'])}, of which {_n(c['reused_server_timewait'])} "
                  "within the server's 60 s TIME_WAIT")
        if c["tw_verdict"]:
            t.add_row("Linux TIME_WAIT verdict", "  ".join(f"{k} {_n(v)}" for k, v in c["tw_verdict"].items()))
        if c["tw_recycle"]:
            t.add_row("tcp_tw_recycle would", "  ".join(f"{k} {_n(v)}" for k, v in c["tw_recycle"].items()))
        if c["closed_by"]:
            t.add_row("closed first by", "  ".join(f"{k} {_n(v)}" for k, v in c["closed_by"].items())
                      + "   (" + "  ".join(f"{k} {_n(v)}" for k, v in c["close"].items()) + ")")
    return t


def clients_table(an: CaptureAnalysis, top: int) -> RenderableType:
    t = Table(title="clients (originators)", title_justify="left", header_style="bold")
    for col, just in (("address", "left"), ("attempts", "right"), ("conn/s", "right"), ("SYNs with TS", "right"),
                      ("TS clocks", "right"), ("ports (first destination)", "left"), ("reused in server TW", "right"),
                      ("answers", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for s in an.sources[:top]:
        pp = s.ports[0] if s.ports else None
        ports = "-"
        if pp is not None:
            ports = (f"{pp.pattern}{f' +{pp.median_step}' if pp.median_step else ''}, {pct(pp.even_share)} even, "
                     f"{pp.distinct_ports:,} ports"
                     + (f", cycle {pp.cycle_median_s:g} s" if pp.cycle_median_s is not None else ""))
        clocks = "-" if s.ts_clocks is None else str(s.ts_clocks)
        if s.ts_nat:
            clocks += ", NAT"
        elif s.ts_per_connection:
            clocks = "per 4-tuple"
        t.add_row(s.addr, _n(s.attempts), f"{s.rate_per_s:,.1f}",
                  pct(s.syn_with_ts / s.attempts) if s.attempts else "-", clocks, ports,
                  _n(s.reused_server_tw), " ".join(f"{k} {v:,}" for k, v in s.answers.items()))
    if len(an.sources) > top:
        t.caption = f"{len(an.sources) - top:,} more clients (--top N, or --json)"
    return t


def servers_table(an: CaptureAnalysis, top: int) -> RenderableType:
    t = Table(title="servers (responders)", title_justify="left", header_style="bold")
    for col in ("address", "attempts", "clients", "SYN-ACK", "RST", "old ACK", "no answer",
                "attempts with SYN retried", "attempts with SYN-ACK resent"):
        t.add_column(col, justify="left" if col == "address" else "right")
    for s in an.servers[:top]:
        t.add_row(f"{s.addr}:{s.port}", _n(s.attempts), _n(s.clients), _n(s.answered), _n(s.refused),
                  _n(s.old_ack), _n(s.unanswered), _n(s.syn_retried), _n(s.synack_retransmits))
    if len(an.servers) > top:
        t.caption = f"{len(an.servers) - top:,} more servers"
    return t


def findings_view(findings: list[Finding]) -> RenderableType:
    if not findings:
        return Text("No problems found for short-lived connections in this capture.", style="green")
    parts: list[RenderableType] = []
    for f in findings:
        parts.append(finding_panel(f))
        for i, fx in enumerate(f.fixes, 1):
            parts.append(Text.assemble(f"  fix {i}: ", (fx.title, "bold")))
            for cmd in fx.commands:
                parts.append(Text(f"      $ {cmd}", style="green"))
            if fx.caveat:
                parts.append(Text(f"      note: {fx.caveat}", style="dim"))
    return Group(*parts)


def legend() -> RenderableType:
    return Text("Zeek conn_state: " + "; ".join(f"{k} = {v}" for k, v in CONN_STATE_MEANING.items()),
                style="dim")


def render(an: CaptureAnalysis, findings: list[Finding], top: int = 10) -> list[RenderableType]:
    head = Text.assemble(("findings: ", "bold"), *[
        (f"{sum(f.severity == sev for f in findings)} {sev}  ", SEV_STYLE[sev]) for sev in ("critical", "warning", "info")])
    return [read_summary(an), Text(""), overview(an), Text(""), clients_table(an, top), servers_table(an, top),
            Text(""), head, findings_view(findings)]
