"""Self-contained HTML reports: verdict and findings first, then the topology and plots.

A :class:`Page` is plain data (text, findings, inline-SVG plots, tables); the builders
below make one from a RunResult (simulate, lab, a capture's attempts), from a doctor
document (one snapshot or a --watch series), or from an `analyze --json` document.
:func:`render` turns a Page into one HTML file through a Jinja2 template with autoescape;
only the SVG we draw ourselves is marked safe.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from .. import __version__
from ..errors import TcpreuseError
from ..findings import Finding, Fix
from . import plots, topology
from .plots import Plot

if TYPE_CHECKING:
    from ..result import RunResult
    from ..scenario.schema import Scenario


@dataclass
class TableData:
    title: str
    headers: list[str]
    rows: list[list[Any]]
    numeric: set[int] = field(default_factory=set)  # column indexes aligned right
    note: str = ""


@dataclass
class Page:
    title: str
    subtitle: str = ""
    verdict: str = ""
    verdict_level: str = "good"  # good | warn | bad
    verdict_lines: list[str] = field(default_factory=list)
    findings: list[Finding] | None = None  # None: this kind of input has no diagnosis
    topology: Markup | None = None
    topology_caption: str = ""
    plots: list[Plot] = field(default_factory=list)
    tables: list[TableData] = field(default_factory=list)
    details: list[tuple[str, list[tuple[str, Any]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    made_from: str = ""

    def add(self, plot: Plot | None) -> None:
        if plot is not None:
            self.plots.append(plot)


# ---- formatting -----------------------------------------------------------------------

def pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 100:.2f} %" if x < 0.1 else f"{x * 100:.1f} %"


def ms(x: float | None) -> str:
    from .terminal import fmt_ms

    return fmt_ms(x)


def num(x: Any) -> Any:
    """A figure for a page or a table: thousands separators on every number from 1,000
    (integers and floats alike), four significant digits below."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int) and abs(x) >= 1000:
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:,.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    if isinstance(x, list | tuple) and all(isinstance(v, int | float | str) for v in x):
        return " ".join(map(str, x))
    return x


def render(page: Page) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=pct, ms=ms, num=num)
    from .template import PAGE

    return env.from_string(PAGE).render(page=page, version=__version__)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def write(path: str | os.PathLike[str], page: Page) -> Path:
    """Write the page atomically (a reader never sees half a file), with the permissions any
    new file gets (0666 less the umask), as the JSON and CSV outputs: mkstemp's 0600 is for
    secrets, not for a report meant to be shared."""
    p = Path(path)
    text = render(page)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tcpr-", suffix=".html", dir=p.parent if str(p.parent) else ".")
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except OSError as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise TcpreuseError(f"cannot write {p}: {e.strerror or e}") from None
    return p


# ---- runs -----------------------------------------------------------------------------

def run_verdict(run: RunResult, findings: Sequence[Finding]) -> tuple[str, str, list[str]]:
    n = run.attempt_count()
    if not n:
        return "No connection attempt was recorded.", "warn", []
    fr, dr = run.failure_rate(), run.delayed_rate()
    ff = run.first_failure()
    lines = []
    if fr > 0:
        head = f"{pct(fr)} of {n:,} connection attempts failed"
        if ff:
            head += f", the first at {ff['time_s']:.1f} s ({ff['outcome']}, {ff['reason']})"
        level = "bad"
    elif dr > 0.001:
        head, level = f"Every attempt completed, but {pct(dr)} of {n:,} connected only after a SYN retry", "warn"
    else:
        head, level = f"All {n:,} connection attempts completed at their first SYN", "good"
    if fr > 0 and dr > 0:
        lines.append(f"{pct(dr)} more connected only after a SYN retransmission (delayed).")
    crit = [f for f in findings if f.severity == "critical"]
    if crit:
        lines.append(f"Cause: {crit[0].title} (confidence {crit[0].confidence:.0%}).")
        if len(crit) > 1:
            lines.append(f"{len(crit) - 1} more critical finding(s) below.")
    elif findings:
        lines.append(f"{len(findings)} finding(s) below.")
    return head + ".", level, lines


def outcomes_over_time(run: RunResult, by: str = "reason", limit: int = 8) -> tuple[list[float], dict[str, list[int]]]:
    """Attempts per step by reason (or outcome), from the per-attempt records."""
    a = run.attempts
    if not len(a):
        return [], {}
    step = run.timeline.step_s or 1.0
    t = a.cols["t"]
    nbins = int(max(float(np.nanmax(t)), run.duration_s) // step) + 1
    bins = np.clip((t // step).astype(np.int64), 0, nbins - 1)
    codes = a.cols[by]
    out: dict[str, list[int]] = {}
    uniq, n = np.unique(codes, return_counts=True)
    for code in uniq[np.argsort(-n, kind="stable")].tolist():
        counts = np.bincount(bins[codes == code], minlength=nbins) / step
        out[a.name(by, int(code)) or "unknown"] = counts.tolist()
    if len(out) > limit:
        keep = list(out)[: limit - 1]
        rest = np.sum([out[k] for k in out if k not in keep], axis=0)
        out = {k: out[k] for k in keep} | {"other": rest.tolist()}
    return [i * step for i in range(nbins)], out


def latency_groups(run: RunResult) -> dict[str, np.ndarray]:
    a = run.attempts
    lat = a.cols["connect_ms"]
    out = {}
    for code in np.unique(a.cols["reason"]).tolist():
        v = lat[a.cols["reason"] == code]
        if np.any(~np.isnan(v)):
            out[a.name("reason", int(code)) or "unknown"] = v
    return out


def run_page(run: RunResult, findings: list[Finding], *, scenario: Scenario | None = None,
             ranked: list[Fix] | None = None, capture: Any = None, made_from: str = "") -> Page:
    """The report of one run: simulate, lab, load or a capture's attempts."""
    from ..result import REASONS

    kind = {"simulate": "Simulation", "lab": "Lab run on the real kernel", "analyze": "Capture analysis",
            "load": "Load run"}.get(run.source, run.source)
    sub = [kind, f"{run.duration_s:g} s"]
    if run.seed is not None and run.source == "simulate":
        sub.append(f"seed {run.seed}")
    if run.meta.get("kernel"):
        sub.append(f"Linux {run.meta['kernel']}")
    if scenario is not None and scenario.summary:
        sub.append(scenario.summary)
    verdict, level, lines = run_verdict(run, findings)
    page = Page(title=f"tcpreuse: {run.scenario}", subtitle=" · ".join(sub), verdict=verdict,
                verdict_level=level, verdict_lines=lines, findings=findings, made_from=made_from,
                notes=list(run.notes))
    if run.hosts or scenario is not None:
        top = topology.of_run(run, scenario)
        if top.columns:
            page.topology = topology.svg(top)
            page.topology_caption = ("From the scenario." if scenario is not None else
                                     "From the hosts the result names; settings are as the run recorded them.")
    ff = run.first_failure()
    onset = ff["time_s"] if ff else None
    if ranked:
        rows = [(f.title, f.effect.failure_rate_before, f.effect.failure_rate_after, f.effect.delayed_rate_before,
                 f.effect.delayed_rate_after) for f in ranked if f.effect is not None and not f.effect.note]
        page.add(plots.fixes(rows))
    tl = run.timeline
    page.add(plots.rates(tl.t, tl.attempts, tl.failed, tl.delayed, tl.step_s, onset))
    if run.source == "analyze" or capture is not None:
        t, counts = outcomes_over_time(run)
        page.add(plots.stacked_counts(t, counts, "SYN outcomes over time", onset, "synoutcomes"))
    page.add(plots.host_series(tl.t, tl.hosts, "time_wait", "TIME_WAIT sockets per host", onset, "timewait"))
    page.add(plots.ports(tl.t, [(f"{p.host} {p.src} → {p.dst}", p.budget, p.in_use) for p in tl.ports.values()],
                         onset))
    page.add(plots.latency_cdf(latency_groups(run)))
    if capture is not None:
        page.add(plots.ts_clocks(capture_clocks(capture)))
    if run.source != "analyze" and capture is None:
        page.add(plots.host_series(tl.t, tl.hosts, "established", "Established connections per host", onset,
                                   "established"))
    n = run.attempt_count()
    reasons = run.reasons()
    if reasons:
        page.tables.append(TableData("What happened to the attempts", ["reason", "attempts", "share", "meaning"],
                                     [[k, v, pct(v / n), REASONS.get(k, "")] for k, v in
                                      sorted(reasons.items(), key=lambda kv: -kv[1])], numeric={1, 2}))
    lat = run.connect_percentiles()
    if lat["p50"] is not None:
        page.details.append(("Connect latency of successful attempts", [(k, ms(v)) for k, v in lat.items()]))
    for h, c in run.counters.items():
        nz = [(k, v) for k, v in sorted(c.items()) if v]
        if nz:
            page.details.append((f"Counters of {h} (deltas over the run)", nz))
    for h, info in run.hosts.items():
        if info.settings:
            page.details.append((f"Settings of {h} ({info.role}, {info.profile})", sorted(info.settings.items())))
    return page


def capture_clocks(an: Any, limit: int = 8, points: int = 3000) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(source, SYN time s, TSval) for the busiest sources that send timestamps."""
    a = an.attempts
    m = np.asarray(a["is_attempt"]) & np.asarray(a["syn_has_ts"]).astype(bool)
    out = []
    for s in an.sources[: limit * 2]:
        key = an.key_of(s.addr)
        if key is None:
            continue
        sel = m & (a["orig"] == key)
        if not sel.any():
            continue
        t = np.asarray(a["t_syn"][sel], dtype=float) - an.t_first
        v = np.asarray(a["syn_tsval"][sel], dtype=float)
        if t.size > points:
            idx = np.linspace(0, t.size - 1, points).astype(np.int64)
            t, v = t[idx], v[idx]
        out.append((s.addr, t, v))
        if len(out) >= limit:
            break
    return out


def capture_page(an: Any, findings: list[Finding], made_from: str = "") -> Page:
    """A capture analysis with its attempts: the run view plus the capture's own tables."""
    run = an.to_run_result()
    page = run_page(run, findings, capture=an, made_from=made_from)
    page.tables[:0] = capture_tables(an.to_json())
    return page


def capture_tables(doc: dict[str, Any]) -> list[TableData]:
    out = []
    c = doc.get("counts", {})
    if c:
        rows = [["attempts (SYNs)", c.get("attempts", 0)], ["established", c.get("established", 0)],
                ["attempts with a SYN retransmitted", c.get("syn_retried", 0)],
                ["SYN retransmissions (packets)", c.get("syn_retransmissions", 0)],
                ["4-tuple reused", c.get("reused", 0)],
                ["reused within the server's TIME_WAIT", c.get("reused_server_timewait", 0)]]
        for group in ("answer", "conn_state", "tw_verdict", "tw_recycle"):
            for k, v in (c.get(group) or {}).items():
                rows.append([f"{group}: {k}", v])
        out.append(TableData("Capture: what the packets show", ["", "count"], rows, numeric={1}))
    src = doc.get("sources", [])
    if src:
        rows = []
        for s in src[:20]:
            rows.append([s.get("addr"), s.get("attempts"), s.get("rate_per_s"), s.get("syn_with_ts"),
                         s.get("ts_clocks"), s.get("reused_server_tw"),
                         " ".join(f"{k} {v}" for k, v in (s.get("answers") or {}).items())])
        out.append(TableData("Clients (originators)", ["address", "attempts", "conn/s", "SYNs with TS",
                                                       "TS clocks", "reused in server TW", "answers"], rows,
                             numeric={1, 2, 3, 4, 5},
                             note=f"{len(src) - 20} more not shown" if len(src) > 20 else ""))
    return out


def capture_doc_page(doc: dict[str, Any], made_from: str = "") -> Page:
    """An `analyze --json` document: counts, clients and findings (no per-attempt data)."""
    findings = [Finding.from_json(f) for f in doc.get("findings", [])]
    files = ", ".join(Path(f.get("path", "?")).name for f in doc.get("files", []))
    c = doc.get("counts", {})
    n = int(c.get("attempts", 0))
    est = int(c.get("established", 0))
    level = "good" if n and est == n else "bad" if findings and findings[0].severity == "critical" else "warn"
    page = Page(title=f"tcpreuse: capture {files}", subtitle="Capture analysis (summary document)",
                verdict=f"{n - est:,} of {n:,} connection attempts in the capture never established.",
                verdict_level=level, findings=findings, made_from=made_from,
                notes=["This document has no per-attempt records: run `tcpreuse report` on the capture file "
                       "itself (or on `analyze --save` output) for the plots over time."])
    if findings:
        page.verdict_lines.append(f"Cause: {findings[0].title} (confidence {findings[0].confidence:.0%}).")
    ans = c.get("answer") or {}
    if ans:
        page.add(plots.stacked_counts([0.0], {k: [v] for k, v in ans.items()}, "How SYNs were answered", None,
                                      "answers", ylabel="attempts"))
    page.tables.extend(capture_tables(doc))
    return page


# ---- doctor ---------------------------------------------------------------------------

def doctor_page(docs: Sequence[dict[str, Any]], made_from: str = "") -> Page:
    """One doctor document, or a series of them (`doctor --watch --json`, one per line)."""
    last = docs[-1]
    findings = [Finding.from_json(f) for f in last.get("findings", [])]
    hosts = last.get("hosts", {})
    names = ", ".join(hosts) or "?"
    crit = [f for f in findings if f.severity == "critical"]
    if crit:
        verdict, level = f"{len(crit)} critical problem(s) for short-lived connections on {names}.", "bad"
    elif findings:
        verdict, level = f"{len(findings)} finding(s) on {names}; none critical.", "warn"
    else:
        verdict, level = f"No problem found for short-lived connections on {names}.", "good"
    sub = "Live host diagnosis" + (f" · {len(docs)} samples" if len(docs) > 1 else "")
    page = Page(title=f"tcpreuse doctor: {names}", subtitle=sub, verdict=verdict, verdict_level=level,
                findings=findings, made_from=made_from)
    if findings:
        page.verdict_lines.append(f"Most severe: {findings[0].title} (confidence {findings[0].confidence:.0%}).")
    for name, h in hosts.items():
        rows = [(f"{t['src']} → {t['dst']}:{t['dport']}", int(t.get("established", 0)), int(t.get("time_wait", 0)),
                 int(t.get("other", 0)), int(t.get("budget", 0))) for t in h.get("tuples", [])]
        p = plots.tuple_bars(rows, key=f"tuples-{_slug(name)}")
        if p is not None:
            p.title += f" — {name}"
            page.add(p)
    if len(docs) > 1:
        t, tw, pts = watch_series(docs)
        page.add(plots.host_series(t, {h: {"time_wait": v} for h, v in tw.items()}, "time_wait",
                                   "TIME_WAIT sockets per host over time", None, "timewait"))
        page.add(plots.ports(t, pts, None))
    for name, h in hosts.items():
        settings = h.get("settings", {})
        if settings:
            page.details.append((f"Settings of {name}", sorted(settings.items())))
        cnt = h.get("counters", {})
        if cnt:
            page.details.append((f"Counters of {name} (deltas over {h.get('window_s') or 0:g} s)",
                                 sorted((k, v) for k, v in cnt.items() if v)))
        page.notes.extend(h.get("extra", {}).get("notes", []))
    return page


def watch_series(docs: Sequence[dict[str, Any]], limit: int = 8
                 ) -> tuple[list[float], dict[str, list[int]], list[tuple[str, int, list[int]]]]:
    """Times (s since the first sample), TIME_WAIT per host and ports in use per tuple."""
    times = []
    for i, d in enumerate(docs):
        ts = [h.get("extra", {}).get("taken_at") for h in d.get("hosts", {}).values()]
        ts = [x for x in ts if isinstance(x, int | float)]
        times.append(float(ts[0]) if ts else float(d.get("taken_at", i)))
    t0 = times[0]
    t = [x - t0 for x in times]
    tw: dict[str, list[int]] = {}
    tup: dict[str, tuple[int, list[int]]] = {}
    for i, d in enumerate(docs):
        for name, h in d.get("hosts", {}).items():
            tw.setdefault(name, [0] * len(docs))[i] = int(h.get("time_wait") or 0)
            for tu in h.get("tuples", []):
                label = f"{name} {tu['src']} → {tu['dst']}:{tu['dport']}"
                _, vals = tup.setdefault(label, (int(tu.get("budget", 0)), [0] * len(docs)))
                vals[i] = int(tu.get("in_use", tu.get("established", 0) + tu.get("time_wait", 0)))
    ports = sorted(((k, b, v) for k, (b, v) in tup.items()), key=lambda r: -max(r[2]) / max(r[1], 1))[:limit]
    return t, tw, ports


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s)[:40]


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z")


# ---- validate -------------------------------------------------------------------------

def validate_page(doc: dict[str, Any], runs: Sequence[tuple[str, Any, Any]] = (), made_from: str = "") -> Page:
    """`validate`: per scenario, where the model and the running kernel agree, row by row;
    with the runs at hand, both timelines on one plot."""
    scen = doc.get("scenarios", [])
    bad = [s for s in scen if not s.get("agree")]
    page = Page(title=f"tcpreuse validate: Linux {doc.get('kernel', '?')}",
                subtitle=f"{len(scen)} scenario(s)" + (f" · suite {doc['suite']}" if doc.get("suite") else "")
                + f" · HZ {doc.get('hz', '?')}",
                verdict=("The model agrees with the running kernel on every scenario." if not bad else
                         f"{len(bad)} of {len(scen)} scenario(s) disagree with the running kernel."),
                verdict_level="good" if not bad else "bad", made_from=made_from)
    for s in bad:
        n = s.get("disagreements", 0)
        page.verdict_lines.append(f"{s['name']}: " + (s["error"] or f"{n} row(s) outside tolerance"))
    by_name = {name: (sim, lab) for name, sim, lab in runs}
    for i, s in enumerate(scen):
        sim, lab = by_name.get(s["name"], (None, None))
        p = plots.sim_vs_lab(sim, lab, f"simlab-{i}")
        if p is not None:
            p.title = f"{s['name']}: {p.title}"
            page.add(p)
        rows = [[r.get("group"), r.get("metric"), r.get("sim"), r.get("lab"),
                 {True: "agrees", False: "DISAGREES", None: "n/a"}[r.get("agree")], r.get("tolerance")]
                for r in s.get("rows", [])]
        page.tables.append(TableData(f"{s['name']} — {'agrees' if s.get('agree') else 'disagrees'}",
                                     ["group", "metric", "simulate", "lab", "verdict", "tolerance"], rows,
                                     note=s.get("summary", "") + (f" Error: {s['error']}" if s.get("error") else "")))
        page.notes.extend(f"{s['name']}: {n}" for n in s.get("notes", []))
    return page
