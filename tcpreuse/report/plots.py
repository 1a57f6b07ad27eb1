"""Plots for the HTML report, drawn with matplotlib and kept as inline SVG text.

Why SVG: the report must open offline as one file; an SVG is text inside the page, scales
on any screen, and its data can be checked in a browser. Every artist that carries data
gets an id ``<key>-data-<n>`` (matplotlib writes it as ``<g id=...>``), which is how
tcpreuse.report.browser tells a plot with data from an empty frame.

Only the object-oriented API (Figure, no pyplot): no global backend, no GUI, safe in
worker processes. Inputs are plain series; nothing here reads files or prints.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import Markup

COLORS = {"attempts": "#4c72b0", "ok": "#55a868", "failed": "#c44e52", "delayed": "#dd8452",
          "onset": "#8c1c13", "budget": "#333333"}
PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd")
_seq = itertools.count()


@dataclass
class Plot:
    """One figure of the report: its key (unique in a page), title, SVG text, caption."""

    key: str
    title: str
    svg: str
    caption: str = ""


@contextmanager
def _figure(key: str, w: float = 9.0, h: float = 3.2, rows: int = 1, sharex: bool = False) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    # hashsalt: matplotlib derives clip-path ids from content and salt; two figures with
    # the same axes box would otherwise share ids in one page and clip each other.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"{key}-{next(_seq)}",
                                "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                                "axes.grid": True, "grid.alpha": 0.3}):
        fig = Figure(figsize=(w, h), layout="constrained")
        axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False)[:, 0]
        yield fig, list(axes)


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    # width/height in pt fix the size; let CSS scale it to the column instead
    text = re.sub(r'<svg([^>]*?) width="[\d.]+pt" height="[\d.]+pt"', r'<svg\1 class="plot-svg"', text, count=1)
    return Markup(text)  # our own drawing: the one thing the page does not escape


def _tag(artists: Any, key: str, n: int) -> int:
    """Give data artists their ids; returns the next free number."""
    items = artists if isinstance(artists, list | tuple) else [artists]
    for a in items:
        if hasattr(a, "patches"):  # BarContainer
            for p in a.patches:
                p.set_gid(f"{key}-data-{n}")
                n += 1
        else:
            a.set_gid(f"{key}-data-{n}")
            n += 1
    return n


def _onset(axes: Sequence[Any], onset: float | None) -> None:
    if onset is None:
        return
    for ax in axes:
        ax.axvline(onset, color=COLORS["onset"], ls="--", lw=1)
    axes[0].annotate(f"first failure {onset:.1f} s", xy=(onset, 1), xycoords=("data", "axes fraction"),
                     xytext=(4, -10), textcoords="offset points", color=COLORS["onset"], fontsize=8)


# ---- run plots ------------------------------------------------------------------------

def rates(t: Sequence[float], attempts: Sequence[int], failed: Sequence[int], delayed: Sequence[int],
          step_s: float, onset: float | None, key: str = "rates") -> Plot | None:
    if not t or not any(attempts):
        return None
    x = np.asarray(t, dtype=float)
    per = 1.0 / step_s if step_s else 1.0
    with _figure(key, h=4.2, rows=2, sharex=True) as (fig, (a1, a2)):
        n = _tag(a1.plot(x, np.asarray(attempts) * per, color=COLORS["attempts"], label="attempts/s",
                         drawstyle="steps-post"), key, 0)
        a1.set_ylabel("attempts/s")
        a1.set_ylim(bottom=0)
        n = _tag(a2.plot(x, np.asarray(failed) * per, color=COLORS["failed"], label="failed/s",
                         drawstyle="steps-post"), key, n)
        if any(delayed):
            _tag(a2.plot(x, np.asarray(delayed) * per, color=COLORS["delayed"], label="delayed/s (SYN retry)",
                         drawstyle="steps-post"), key, n)
        a2.set_ylabel("per s")
        a2.set_ylim(bottom=0)
        a2.set_xlabel("time since start (s)")
        a2.legend(loc="upper left", fontsize=8)
        _onset([a1, a2], onset)
        svg = _svg(fig)
    cap = (f"Failures start at {onset:.1f} s (dashed)." if onset is not None else "No attempt failed.")
    return Plot(key, "Attempts and failures over time", svg, cap)


def host_series(t: Sequence[float], hosts: dict[str, dict[str, list[int]]], series: str, title: str,
                onset: float | None, key: str, limit: int = 10) -> Plot | None:
    rows = [(h, s[series]) for h, s in hosts.items() if s.get(series) and max(s[series]) > 0]
    if not rows or not t:
        return None
    rows.sort(key=lambda r: -max(r[1]))
    x = np.asarray(t[: len(rows[0][1])], dtype=float)
    with _figure(key) as (fig, (ax,)):
        n = 0
        for i, (h, vals) in enumerate(rows[:limit]):
            m = min(len(x), len(vals))
            n = _tag(ax.plot(x[:m], vals[:m], color=PALETTE[i % len(PALETTE)], label=h), key, n)
        ax.set_ylabel(series.replace("_", " "))
        ax.set_xlabel("time since start (s)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8, ncol=2)
        _onset([ax], onset)
        svg = _svg(fig)
    more = f" ({len(rows) - limit} more hosts not drawn)" if len(rows) > limit else ""
    return Plot(key, title, svg, f"Sampled every step, per host{more}.")


def ports(t: Sequence[float], series: Sequence[tuple[str, int, Sequence[int]]], onset: float | None,
          key: str = "ports", limit: int = 8) -> Plot | None:
    """series: (label, budget, in_use per step). Drawn as a share of each budget."""
    rows = [s for s in series if s[2] and max(s[2]) > 0]
    if not rows or not t:
        return None
    rows = sorted(rows, key=lambda r: -max(r[2]) / max(r[1], 1))
    x = np.asarray(t, dtype=float)
    with _figure(key) as (fig, (ax,)):
        n = 0
        for i, (label, budget, vals) in enumerate(rows[:limit]):
            m = min(len(x), len(vals))
            y = np.asarray(vals[:m], dtype=float) / max(budget, 1) * 100
            n = _tag(ax.plot(x[:m], y, color=PALETTE[i % len(PALETTE)],
                             label=f"{label} (peak {max(vals):,} of {budget:,})"), key, n)
        ax.axhline(100, color=COLORS["budget"], ls=":", lw=1)
        ax.set_ylabel("% of port budget in use")
        ax.set_xlabel("time since start (s)")
        ax.set_ylim(0, max(105.0, ax.get_ylim()[1]))
        ax.legend(loc="upper left", fontsize=7)
        _onset([ax], onset)
        svg = _svg(fig)
    more = f"; {len(rows) - limit} more not drawn" if len(rows) > limit else ""
    return Plot(key, "Local ports in use per (source, destination) against the budget", svg,
                f"100 % (dotted) is every port connect() may use for that pair{more}.")


def latency_cdf(groups: dict[str, np.ndarray], key: str = "latency", points: int = 400) -> Plot | None:
    """Connect latency (ms) CDF per group (reason or outcome), log x."""
    rows = [(g, v[~np.isnan(v) & (v > 0)]) for g, v in groups.items()]
    rows = [(g, v) for g, v in rows if v.size]
    if not rows:
        return None
    rows.sort(key=lambda r: -r[1].size)
    with _figure(key) as (fig, (ax,)):
        n = 0
        for i, (g, v) in enumerate(rows[:8]):
            q = np.linspace(0, 1, min(points, v.size) + 1)
            xs = np.quantile(v, q)
            n = _tag(ax.plot(xs, q, color=PALETTE[i % len(PALETTE)], drawstyle="steps-post",
                             label=f"{g} ({v.size:,})"), key, n)
        ax.set_xscale("log")
        ax.set_xlabel("connect latency (ms, log scale)")
        ax.set_ylabel("share of attempts ≤ x")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=8)
        svg = _svg(fig)
    return Plot(key, "Connect latency distribution (CDF)", svg,
                "One curve per reason; a step at the client's SYN retransmission timer marks delayed connects.")


def stacked_counts(t: Sequence[float], counts: Mapping[str, Sequence[float]], title: str, onset: float | None,
                   key: str, ylabel: str = "attempts per s") -> Plot | None:
    rows = [(k, np.asarray(v, dtype=float)) for k, v in counts.items() if sum(v) > 0]
    if not rows or not t:
        return None
    rows.sort(key=lambda r: -r[1].sum())
    x = np.asarray(t, dtype=float)
    with _figure(key) as (fig, (ax,)):
        m = min(len(x), *(len(v) for _, v in rows))
        colors = [COLORS.get(k) or PALETTE[i % len(PALETTE)] for i, (k, _) in enumerate(rows)]
        polys = ax.stackplot(x[:m], *[v[:m] for _, v in rows], labels=[k for k, _ in rows], colors=colors,
                             step="post", alpha=0.85)
        _tag(list(polys), key, 0)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("time since start (s)")
        ax.legend(loc="upper left", fontsize=8, ncol=2)
        _onset([ax], onset)
        svg = _svg(fig)
    return Plot(key, title, svg, "Stacked: every attempt counted once, by what happened to it.")


def ts_clocks(sources: Sequence[tuple[str, np.ndarray, np.ndarray]], key: str = "tsclocks",
              limit: int = 8) -> Plot | None:
    """(source ip, SYN times s, TSvals) per source: each clock is a rising line (one per host,
    or one per 4-tuple with per-4-tuple offsets)."""
    rows = [(s, t, v) for s, t, v in sources if t.size]
    if not rows:
        return None
    with _figure(key, h=3.6) as (fig, (ax,)):
        n = 0
        for i, (s, t, v) in enumerate(rows[:limit]):
            n = _tag(ax.scatter(t, v, s=4, color=PALETTE[i % len(PALETTE)], label=f"{s} ({t.size:,} SYNs)"),
                     key, n)
        ax.set_xlabel("time since capture start (s)")
        ax.set_ylabel("SYN TSval")
        ax.legend(loc="upper left", fontsize=7, markerscale=3)
        svg = _svg(fig)
    more = f" {len(rows) - limit} more sources not drawn." if len(rows) > limit else ""
    return Plot(key, "TCP timestamp clocks per source IP", svg,
                "One rising line per clock. Several lines from one address are several hosts behind a NAT when "
                "each line holds many ports; with per-4-tuple offsets (Linux 4.10, 2026+ kernels) every port "
                "is its own line, even from one host. tcp_tw_recycle drops the SYNs that go backwards." + more)


def fixes(rows: Sequence[tuple[str, float, float, float, float]], key: str = "fixes") -> Plot | None:
    """(fix title, failed before, failed after, delayed before, delayed after), shares 0..1."""
    if not rows:
        return None
    rows = list(rows)[:12]
    labels = [r[0] if len(r[0]) <= 60 else r[0][:57] + "…" for r in rows]
    y = np.arange(len(rows))
    with _figure(key, h=0.5 + 0.45 * len(rows) * 2) as (fig, (ax,)):
        n = _tag(ax.barh(y - 0.2, [r[2] * 100 for r in rows], height=0.38, color=COLORS["failed"],
                         label="failed after"), key, 0)
        _tag(ax.barh(y + 0.2, [r[4] * 100 for r in rows], height=0.38, color=COLORS["delayed"],
                     label="delayed after"), key, n)
        before_f, before_d = rows[0][1] * 100, rows[0][3] * 100
        ax.axvline(before_f, color=COLORS["failed"], ls="--", lw=1, label=f"failed before ({before_f:.2f} %)")
        ax.axvline(before_d, color=COLORS["delayed"], ls=":", lw=1, label=f"delayed before ({before_d:.1f} %)")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("% of attempts")
        ax.legend(loc="lower right", fontsize=8)
        svg = _svg(fig)
    return Plot(key, "Fixes side by side (each re-simulated)", svg,
                "Shorter bars are better; dashed and dotted lines are the run without any fix.")


# ---- hosts (doctor) -------------------------------------------------------------------

def tuple_bars(rows: Sequence[tuple[str, int, int, int, int]], key: str = "tuples") -> Plot | None:
    """(label, established, time_wait, other, budget) per (source, destination), most used first."""
    rows = [r for r in rows if r[1] + r[2] + r[3] > 0][:12]
    if not rows:
        return None
    y = np.arange(len(rows))
    with _figure(key, h=0.8 + 0.35 * len(rows)) as (fig, (ax,)):
        est = np.asarray([r[1] for r in rows], dtype=float)
        tw = np.asarray([r[2] for r in rows], dtype=float)
        oth = np.asarray([r[3] for r in rows], dtype=float)
        n = _tag(ax.barh(y, est, color=COLORS["ok"], label="established"), key, 0)
        n = _tag(ax.barh(y, tw, left=est, color="#8172b3", label="TIME_WAIT"), key, n)
        _tag(ax.barh(y, oth, left=est + tw, color=COLORS["delayed"], label="other states"), key, n)
        for i, r in enumerate(rows):
            ax.plot([r[4], r[4]], [i - 0.45, i + 0.45], color=COLORS["budget"], lw=2)
        ax.set_yticks(y, [r[0] for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("local ports in use (black tick: budget)")
        ax.legend(loc="lower right", fontsize=8)
        svg = _svg(fig)
    return Plot(key, "Local ports in use per (source, destination) against the budget", svg,
                "The black tick is the number of ports connect() may use for that pair.")


# ---- sweeps and capacity --------------------------------------------------------------

def heatmap(xs: Sequence[Any], ys: Sequence[Any], values: np.ndarray, xlabel: str, ylabel: str, title: str,
            key: str, fmt: str = "{:.2%}", label: str = "failure rate") -> Plot | None:
    """values[iy, ix]; NaN cells (not computed) stay blank."""
    if values.size == 0 or np.all(np.isnan(values)):
        return None
    with _figure(key, w=min(9.0, 2.5 + 1.1 * len(xs)), h=min(7.0, 1.4 + 0.5 * len(ys))) as (fig, (ax,)):
        ax.grid(False)
        mesh = ax.pcolormesh(np.arange(len(xs) + 1), np.arange(len(ys) + 1), np.ma.masked_invalid(values),
                             cmap="Reds", vmin=0, vmax=max(float(np.nanmax(values)), 1e-9), edgecolors="white",
                             linewidth=0.5)
        _tag(mesh, key, 0)
        hi = float(np.nanmax(values)) or 1.0
        for iy in range(len(ys)):
            for ix in range(len(xs)):
                v = values[iy, ix]
                if not np.isnan(v):
                    ax.text(ix + 0.5, iy + 0.5, fmt.format(v), ha="center", va="center", fontsize=8,
                            color="white" if v > 0.6 * hi else "black")
        ax.set_xticks(np.arange(len(xs)) + 0.5, [str(x) for x in xs])
        ax.set_yticks(np.arange(len(ys)) + 0.5, [str(y) for y in ys])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        fig.colorbar(mesh, ax=ax, label=label)
        svg = _svg(fig)
    return Plot(key, title, svg, "Mean over seeds; blank cells were not computed.")


def line_ci(xs: Sequence[Any], mean: Sequence[float], lo: Sequence[float], hi: Sequence[float], xlabel: str,
            title: str, key: str, ylabel: str = "failure rate (%)") -> Plot | None:
    if not xs:
        return None
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs)
    x = np.asarray(xs, dtype=float) if numeric else np.arange(len(xs))
    m = np.asarray(mean, dtype=float) * 100
    with _figure(key) as (fig, (ax,)):
        n = _tag(ax.plot(x, m, marker="o", color=COLORS["failed"], label="mean over seeds"), key, 0)
        _tag(ax.fill_between(x, np.asarray(lo, dtype=float) * 100, np.asarray(hi, dtype=float) * 100,
                             color=COLORS["failed"], alpha=0.2, label="95 % confidence interval"), key, n)
        if not numeric:
            ax.set_xticks(x, [str(v) for v in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        svg = _svg(fig)
    return Plot(key, title, svg, "Shaded: 95 % confidence interval of the mean over seeds (Student t).")


def capacity_bars(rows: Sequence[tuple[str, float, bool]], baseline: float, key: str = "capacity") -> Plot | None:
    """(label, sustained rate, capped) per configuration."""
    if not rows:
        return None
    y = np.arange(len(rows))
    with _figure(key, h=0.8 + 0.4 * len(rows)) as (fig, (ax,)):
        colors = [COLORS["ok"] if r[1] > baseline * 1.05 else COLORS["attempts"] for r in rows]
        _tag(ax.barh(y, [r[1] for r in rows], color=colors), key, 0)
        for i, r in enumerate(rows):
            ax.text(r[1], i, f" {r[1]:,.0f}/s" + (" (search cap)" if r[2] else ""), va="center", fontsize=8)
        ax.axvline(baseline, color=COLORS["budget"], ls="--", lw=1)
        ax.set_yticks(y, [r[0] if len(r[0]) <= 60 else r[0][:57] + "…" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("highest sustained rate within the failure budget (requests/s)")
        svg = _svg(fig)
    return Plot(key, "Capacity per configuration", svg, "Dashed: the configuration as it is.")


def sim_vs_lab(sim: Any, lab: Any, key: str) -> Plot | None:
    """Attempts/s and failed/s of the model and of the real kernel, on one time axis."""
    series = [(n, r.timeline) for n, r in (("simulate", sim), ("lab", lab)) if r is not None and r.timeline.t]
    if not series:
        return None
    with _figure(key, h=4.0, rows=2, sharex=True) as (fig, (a1, a2)):
        n = 0
        for i, (name, tl) in enumerate(series):
            per = 1.0 / (tl.step_s or 1.0)
            ls = "-" if name == "lab" else "--"
            n = _tag(a1.plot(tl.t, np.asarray(tl.attempts) * per, ls=ls, color=PALETTE[i], label=name,
                             drawstyle="steps-post"), key, n)
            n = _tag(a2.plot(tl.t, np.asarray(tl.failed) * per, ls=ls, color=PALETTE[i], label=name,
                             drawstyle="steps-post"), key, n)
        a1.set_ylabel("attempts/s")
        a2.set_ylabel("failed/s")
        a2.set_xlabel("time since start (s)")
        a1.legend(loc="upper right", fontsize=8)
        svg = _svg(fig)
    return Plot(key, "Model (dashed) and real kernel (solid) over time", svg)
