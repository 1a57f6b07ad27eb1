"""Terminal (rich) and HTML views of a trace: the live view, one line per event, the
summary. Renderers only: they take events and summaries and return renderables/pages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..model.verdicts import VERDICTS
from .events import TraceEvent

BAD = {"old-ack", "tw-paws", "listen-overflow", "connect-error", "bind-error", "async-error", "paws"}


def event_line(ev: TraceEvent, wall_offset_ns: int = 0) -> Text:
    import time

    t = time.strftime("%H:%M:%S", time.localtime((ev.t_ns + wall_offset_ns) / 1e9))
    ms = ((ev.t_ns + wall_offset_ns) // 1_000_000) % 1000
    txt = Text(f"{t}.{ms:03d} ")
    txt.append(f"{ev.verdict:<17}", style="bold red" if ev.verdict in BAD else "yellow")
    if ev.probe.startswith("syscalls:"):
        end = f"{ev.saddr}:{ev.sport}" if ev.verdict == "bind-error" else f"-> {ev.daddr}:{ev.dport}"
        txt.append(f" {ev.reason} {end} {ev.comm}[{ev.pid}]")
    else:
        txt.append(f" {ev.reason or '-'} {ev.saddr}:{ev.sport} > {ev.daddr}:{ev.dport}")
        if ev.state:
            txt.append(f" at {ev.state}")
        if ev.flags:
            txt.append(f" [{ev.flags}]")
    txt.append(f" netns {ev.netns}", style="dim")
    return txt


def _table(title: str, headers: list[str], rows: Iterable[list[Any]], right: set[int] | None = None) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, h in enumerate(headers):
        t.add_column(h, justify="right" if right and i in right else "left")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def _verdict_counts(c: dict[str, int]) -> str:
    return ", ".join(f"{v} {n:,}" for v, n in sorted(c.items(), key=lambda kv: -kv[1]))


def summary_view(doc: dict[str, Any], recent: Iterable[TraceEvent] = (), wall_offset_ns: int = 0,
                 live: bool = False) -> RenderableType:
    """The summary document (Summary.to_json()) as tables; with `recent`, the last events too."""
    head = Text()
    head.append("tcpreuse trace", style="bold")
    head.append(f"  {doc['duration_s']:.1f} s, {doc['events']:,} events")
    lost = doc.get("lost_events", 0)
    head.append(f", {lost:,} lost" if lost else ", 0 lost", style="bold red" if lost else "green")
    if doc.get("kernel"):
        head.append(f"  kernel {doc['kernel']}", style="dim")
    parts: list[RenderableType] = [head]
    for s in doc.get("skipped", []):
        parts.append(Text(f"not traced: {s}", style="yellow"))
    for w in doc.get("warnings", []):
        parts.append(Text(w, style="bold red"))
    reasons: dict[str, list[str]] = {}
    for r in doc.get("reasons", []):
        if r["reason"]:
            reasons.setdefault(r["verdict"], []).append(f"{r['reason']} {r['count']:,}")
    rows = [[v, f"{n:,}", "; ".join(reasons.get(v, [])[:3]), VERDICTS.get(v, "")] for v, n in doc["verdicts"].items()]
    if rows:
        parts.append(_table("What the kernel did", ["verdict", "events", "kernel reason", "meaning"], rows, {1}))
    else:
        parts.append(Text("no events yet" if live else "no events: the kernel reported nothing traced here",
                          style="dim"))
    rec = list(recent)
    if rec:  # in the live view, right under the counts: it must fit a terminal
        parts.append(Text("Last events", style="bold"))
        parts.extend(event_line(e, wall_offset_ns) for e in rec[-5:])
    n = 5 if live else 8
    if doc.get("locals"):
        parts.append(_table("Per local endpoint (listener / destination)", ["endpoint", "process", "events", "verdicts"],
                            [[r["endpoint"], r.get("process") or "-", f"{r['events']:,}", _verdict_counts(r["verdicts"])]
                             for r in doc["locals"][:n]], {2}))
    if doc.get("processes"):
        parts.append(_table("Per process", ["process", "events", "verdicts"],
                            [[r["process"], f"{r['events']:,}", _verdict_counts(r["verdicts"])]
                             for r in doc["processes"][:n]], {1}))
    if doc.get("tuples"):
        parts.append(_table("Per 4-tuple (as the packet or socket had it)", ["4-tuple", "events", "verdicts"],
                            [[r["tuple"], f"{r['events']:,}", _verdict_counts(r["verdicts"])]
                             for r in doc["tuples"][:n + 2]], {1}))
    return Group(*parts)


def html_page(doc: dict[str, Any], findings: list[Any], made_from: str = "") -> Any:
    """A self-contained HTML page of a trace summary (tcpreuse.report.html.Page)."""
    from ..report import html

    n = doc["events"]
    bad = sum(c for v, c in doc["verdicts"].items() if v in BAD)
    level = "bad" if bad else "good" if not doc.get("lost_events") else "warn"
    page = html.Page(title="tcpreuse: kernel trace", subtitle=f"kernel {doc.get('kernel', '?')}, "
                     f"{doc['duration_s']:.1f} s traced", verdict=f"{n:,} kernel events, {bad:,} of them failures "
                     f"of short connections; {doc.get('lost_events', 0):,} lost.", verdict_level=level,
                     findings=findings, made_from=made_from)
    page.tables.append(html.TableData("What the kernel did", ["verdict", "events", "meaning"],
                                      [[v, c, VERDICTS.get(v, "")] for v, c in doc["verdicts"].items()], numeric={1}))
    page.tables.append(html.TableData("Kernel reasons", ["verdict", "reason", "events"],
                                      [[r["verdict"], r["reason"], r["count"]] for r in doc["reasons"]], numeric={2}))
    for key, title, label in (("locals", "Per local endpoint", "endpoint"), ("processes", "Per process", "process"),
                              ("tuples", "Per 4-tuple", "tuple")):
        with_owner = key == "locals"
        rows = [[r[label], *([r.get("process") or "-"] if with_owner else []), r["events"],
                 _verdict_counts(r["verdicts"])] for r in doc.get(key, [])]
        headers = [label, *(["process"] if with_owner else []), "events", "verdicts"]
        page.tables.append(html.TableData(title, headers, rows, numeric={2 if with_owner else 1}))
    page.details.append(("Trace", [("probes", ", ".join(doc.get("probes", []))),
                                   ("not traced", "; ".join(doc.get("skipped", [])) or "-")]))
    return page


def lab_agreement(kt: dict[str, Any]) -> RenderableType:
    """A lab run's kernel verdicts per attempt (meta["kernel_trace"]) against its own reasons."""
    ag = kt["agreement"]
    head = Text("Kernel verdict per attempt: ", style="bold")
    rate = ag.get("rate")
    head.append(f"{ag['agree']:,} of {ag['checked']:,} attempts agree with the lab's reason"
                + (f" ({rate:.1%})" if rate is not None else ""))
    if ag.get("kernel_silent"):
        head.append(f"; for {ag['kernel_silent']:,} delayed or failed attempts the kernel reported nothing "
                    "(SYNs dropped at a full accept queue at SYN time, or lost on the path)")
    lost = kt["summary"].get("lost_events", 0)
    if lost:
        head.append(f"; {lost:,} events lost (a lower bound)", style="red")
    rows = [[p["lab"], p["kernel"], f"{p['attempts']:,}"] for p in ag["pairs"][:12]]
    parts: list[RenderableType] = [head, _table("lab reason vs kernel", ["lab", "kernel", "attempts"], rows, {2})]
    if ag["first_disagreements"]:
        parts.append(_table("First disagreeing attempts", ["index", "t (s)", "lab", "kernel"],
                            [[d["index"], d["t"], d["lab"], d["kernel"]] for d in ag["first_disagreements"]], {0, 1}))
    return Group(*parts)
