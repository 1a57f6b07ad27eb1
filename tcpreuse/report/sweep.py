"""Sweep and capacity results for people and programs: terminal tables, CSV/Parquet rows,
HTML pages (heatmaps, confidence bands, capacity bars) and the capacity Markdown.

Everything here works on the JSON documents (SweepResult.to_json, CapacityResult.to_json),
so `tcpreuse report sweep.json` renders exactly what `sweep --html` does.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from ..sweep import SweepError
from . import plots
from .html import Page, TableData, ms, pct


def _fmt(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return f"{int(v):,}" if abs(v) >= 10000 else str(int(v))
    return str(v)


def rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per grid point (for CSV, Parquet and tables)."""
    out = []
    for p in doc["points"]:
        a = p["aggregate"]
        out.append({**{k: _fmt(v) if isinstance(v, list) else v for k, v in p["values"].items()},
                    "seeds": a["seeds_done"], "attempts": a["attempts"], "failure_rate": a["failure_rate"],
                    "ci95_low": a["ci_low"], "ci95_high": a["ci_high"], "delayed_rate": a["delayed_rate"],
                    "p99_connect_ms": a["p99_ms"], "first_failure_s": a["first_failure_s"],
                    "errors": "; ".join(a["errors"])})
    return out


def write_csv(doc: dict[str, Any], path: Path) -> None:
    rs = rows(doc)
    try:
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rs[0]) if rs else ["failure_rate"])
            w.writeheader()
            w.writerows(rs)
    except OSError as e:
        raise SweepError(f"cannot write {path}: {e.strerror}") from None


def write_parquet(doc: dict[str, Any], path: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SweepError("--parquet needs pyarrow", hint="pip install 'tcpreuse[parquet]'") from None
    rs = rows(doc)
    cols = {k: [r[k] for r in rs] for k in (rs[0] if rs else {})}
    try:
        pq.write_table(pa.table({k: pa.array([None if v is None else str(v) for v in vs])
                                 if any(isinstance(v, str) for v in vs) and not all(isinstance(v, str) for v in vs)
                                 else pa.array(vs) for k, vs in cols.items()}), str(path))
    except OSError as e:
        raise SweepError(f"cannot write {path}: {e}") from None


def sweep_table(doc: dict[str, Any]) -> Table:
    keys = [a["key"] for a in doc["axes"]]
    single = doc["seeds"] == 1
    t = Table(title=f"sweep of {doc['scenario']}: {len(doc['points'])} points × {doc['seeds']} seed(s)",
              title_justify="left", header_style="bold")
    for k in keys:
        t.add_column(k)
    for c in ("failed", "95 % CI" + (" (1 seed: Wilson)" if single else ""), "delayed", "p99 connect",
              "first failure", "attempts"):
        t.add_column(c, justify="right")
    for r in rows(doc):
        fr = r["failure_rate"]
        style = "" if fr is None else "red" if fr > 0.001 else "yellow" if fr > 0 else "green"
        t.add_row(*[_fmt(r[k]) for k in keys],
                  "-" if fr is None else pct(fr),
                  "-" if r["ci95_low"] is None or r["ci95_low"] != r["ci95_low"] else
                  f"{pct(r['ci95_low'])} … {pct(r['ci95_high'])}",
                  "-" if r["delayed_rate"] is None else pct(r["delayed_rate"]),
                  ms(r["p99_connect_ms"]),
                  "-" if r["first_failure_s"] is None else f"{r['first_failure_s']:.1f} s",
                  f"{r['attempts']:,}", style=style)
        if r["errors"]:
            t.add_row(*([""] * (len(keys) - 1)), f"error: {r['errors']}")
    return t


def _grid(doc: dict[str, Any], xk: str, yk: str, fixed: dict[str, Any], field: str) -> np.ndarray:
    axes = {a["key"]: a["values"] for a in doc["axes"]}
    xs, ys = axes[xk], axes[yk]
    m = np.full((len(ys), len(xs)), np.nan)
    for p in doc["points"]:
        v = p["values"]
        if any(v[k] != fv for k, fv in fixed.items()):
            continue
        val = p["aggregate"].get(field)
        if val is not None:
            m[ys.index(v[yk]), xs.index(v[xk])] = val
    return m


def sweep_page(doc: dict[str, Any], made_from: str = "") -> Page:
    axes = doc["axes"]
    pts = doc["points"]
    frs = [p["aggregate"]["failure_rate"] for p in pts if p["aggregate"]["failure_rate"] is not None]
    worst = max(frs) if frs else 0.0
    clean = sum(1 for f in frs if f == 0)
    page = Page(title=f"tcpreuse sweep: {doc['scenario']}",
                subtitle=f"{len(pts)} points × {doc['seeds']} seed(s) · " + " × ".join(
                    f"{a['key']} ({len(a['values'])})" for a in axes),
                verdict=f"{clean} of {len(pts)} points ran without a failed attempt; the worst failed {pct(worst)}.",
                verdict_level="good" if worst == 0 else "warn" if clean else "bad", made_from=made_from)
    if doc.get("overrides"):
        page.verdict_lines.append("Fixed overrides: " + ", ".join(f"{k}={v}" for k, v in doc["overrides"].items()))
    page.verdict_lines.append(f"{doc.get('computed', 0)} simulation(s) computed, {doc.get('cached', 0)} from the cache.")
    if len(axes) == 1:
        k = axes[0]["key"]
        xs = axes[0]["values"]
        agg = [p["aggregate"] for p in pts]
        mean = [a["failure_rate"] or 0.0 for a in agg]
        lo = [a["ci_low"] if a["ci_low"] is not None and a["ci_low"] == a["ci_low"] else m for a, m in zip(agg, mean, strict=True)]
        hi = [a["ci_high"] if a["ci_high"] is not None and a["ci_high"] == a["ci_high"] else m for a, m in zip(agg, mean, strict=True)]
        page.add(plots.line_ci([_fmt(x) if isinstance(x, list) else x for x in xs], mean, lo, hi, k,
                               f"Failure rate by {k}", "failure"))
        page.add(plots.line_ci([_fmt(x) if isinstance(x, list) else x for x in xs],
                               [a["delayed_rate"] or 0.0 for a in agg], [a["delayed_rate"] or 0.0 for a in agg],
                               [a["delayed_rate"] or 0.0 for a in agg], k, f"Delayed share by {k}", "delayed",
                               ylabel="delayed (%)"))
    else:
        xk, yk = axes[0]["key"], axes[1]["key"]
        rest = axes[2:]
        combos = list(itertools.product(*(a["values"] for a in rest)))[:12]
        for i, combo in enumerate(combos):
            fixed = dict(zip([a["key"] for a in rest], combo, strict=True))
            suffix = (" with " + ", ".join(f"{k}={_fmt(v)}" for k, v in fixed.items())) if fixed else ""
            xs = [_fmt(x) for x in axes[0]["values"]]
            ys = [_fmt(y) for y in axes[1]["values"]]
            page.add(plots.heatmap(xs, ys, _grid(doc, xk, yk, fixed, "failure_rate"), xk, yk,
                                   f"Failure rate by {xk} × {yk}{suffix}", f"hm-fail-{i}"))
            page.add(plots.heatmap(xs, ys, _grid(doc, xk, yk, fixed, "delayed_rate"), xk, yk,
                                   f"Delayed share by {xk} × {yk}{suffix}", f"hm-delay-{i}",
                                   label="delayed share"))
    rs = rows(doc)
    keys = [a["key"] for a in axes]
    page.tables.append(TableData("Every point", [*keys, "failed", "95 % CI", "delayed", "p99 connect ms",
                                                 "first failure s", "attempts"],
                                 [[_fmt(r[k]) for k in keys] + [
                                     "-" if r["failure_rate"] is None else pct(r["failure_rate"]),
                                     "-" if r["ci95_low"] is None or r["ci95_low"] != r["ci95_low"] else
                                     f"{pct(r['ci95_low'])} … {pct(r['ci95_high'])}",
                                     "-" if r["delayed_rate"] is None else pct(r["delayed_rate"]),
                                     r["p99_connect_ms"], r["first_failure_s"], r["attempts"]] for r in rs],
                                 numeric=set(range(len(keys), len(keys) + 6)),
                                 note="95 % CI: Student t over seeds; with one seed, the Wilson interval over "
                                 "that run's attempts."))
    return page


# ---- capacity -------------------------------------------------------------------------

def steady_text(doc: dict[str, Any]) -> str:
    st = doc.get("steady_state")
    return st["text"] if st else f"{doc['duration_s']:g} s runs"


def runs_text(doc: dict[str, Any]) -> str:
    st = doc.get("steady_state")
    if not st:
        return f"{doc['duration_s']:g} s runs"
    return f"steady state: {st['warm_up_s']:g} s warm-up + {st['window_s']:g} s judged"


def cap_text(s: dict[str, Any], doc: dict[str, Any]) -> str:
    c = s["capacity"]
    if s["status"] == "error":
        return "could not be simulated"
    if s["status"] == "below_floor" or c is None:
        return f"< {doc['floor']:,.0f}/s"
    if s["status"] == "capped":
        return f"≥ {c:,.0f}/s (search cap)"
    return f"{c:,.0f}/s"


def _share(p: dict[str, Any]) -> str:
    """A probe's failed share; a lower bound ("≥") when it stopped once certain to fail."""
    return ("≥ " if p.get("stopped_s") is not None else "") + pct(p["failure_rate"])


def first_fail_text(s: dict[str, Any]) -> str:
    bad = [p for p in s["probes"] if not p["passed"]]
    if s["status"] == "error":
        return s["error"]
    if not bad:
        return "none"
    p = min(bad, key=lambda p: p["rate"])
    when = f" from t = {p['first_failure_s']:.0f} s" if p["first_failure_s"] is not None else ""
    return f"{p['rate']:,.0f}/s: {_share(p)} failed{when}"


def ratio_text(s: dict[str, Any], base: dict[str, Any]) -> str:
    c, b = s["capacity"], base["capacity"]
    if not c or not b:
        return "-"
    return ("≥ " if s["status"] == "capped" else "") + f"×{c / b:.1f}"


def capacity_table(doc: dict[str, Any]) -> Table:
    base = doc["searches"][0]
    t = Table(title=f"capacity of {doc['scenario']} within {pct(doc['max_failure'])} failed "
              f"({runs_text(doc)}, resolution {doc['resolution']:.0%})", title_justify="left",
              header_style="bold")
    for c, j in (("configuration", "left"), ("sustained", "right"), ("vs as-is", "right"),
                 ("first failing probe", "left"), ("probes", "right")):
        t.add_column(c, justify=j)  # type: ignore[arg-type]
    for s in doc["searches"]:
        t.add_row(s["label"], cap_text(s, doc), "" if s is base else ratio_text(s, base), first_fail_text(s),
                  str(len(s["probes"])), style="bold" if s is base else "")
    return t


def capacity_page(doc: dict[str, Any], made_from: str = "") -> Page:
    base = doc["searches"][0]
    best = max(doc["searches"], key=lambda s: s["capacity"] or 0)
    page = Page(title=f"tcpreuse capacity: {doc['scenario']}",
                subtitle=f"within {pct(doc['max_failure'])} failed attempts · {runs_text(doc)} · "
                f"{doc['seeds']} seed(s) per probe · resolution {doc['resolution']:.0%}",
                verdict=f"As it is: {cap_text(base, doc)}. Best fix: {best['label']} — {cap_text(best, doc)}."
                if best is not base else f"As it is: {cap_text(base, doc)}.",
                verdict_level="good" if base["status"] == "capped" else "warn", made_from=made_from)
    if doc.get("steady_state"):
        page.verdict_lines.append(f"Steady state: {steady_text(doc)}.")
    if doc.get("diagnosed_at"):
        page.verdict_lines.append(f"Fixes from the diagnosis at {doc['diagnosed_at']:,.0f}/s: "
                                  + "; ".join(f["title"] for f in doc.get("findings", [])))
    bars = [(s["label"], float(s["capacity"] or 0), s["status"] == "capped") for s in doc["searches"]
            if s["status"] != "error"]
    page.add(plots.capacity_bars(bars, float(base["capacity"] or 0)))
    page.tables.append(TableData("Capacity per configuration",
                                 ["configuration", "sustained", "vs as-is", "first failing probe", "how"],
                                 [[s["label"], cap_text(s, doc), "" if s is base else ratio_text(s, base),
                                   first_fail_text(s), "; ".join(s["commands"]) or
                                   ", ".join(f"{k}={v}" for k, v in s["set"].items())] for s in doc["searches"]]))
    for s in doc["searches"]:
        page.details.append((f"Probes: {s['label']}", [
            (f"{p['rate']:,.0f}/s", f"{'pass' if p['passed'] else 'FAIL'}: {_share(p)} failed, "
             f"{pct(p['delayed_rate'])} delayed, {p['attempts']:,} attempts"
             + (f" (stopped at t = {p['stopped_s']:.0f} s: certain to fail)" if p.get("stopped_s") is not None else ""))
            for p in s["probes"]]))
    return page


def capacity_markdown(doc: dict[str, Any], command: str) -> str:
    base = doc["searches"][0]
    lines = [
        f"# Capacity of `{doc['scenario']}`, as it is and with each fix",
        "",
        f"Generated by `{command}` (tcpreuse {doc['version']}); do not edit by hand.",
        "",
        f"Each figure is the highest request rate (all workloads scaled together) sustained in steady "
        f"state with at most {pct(doc['max_failure'])} failed connection attempts"
        + (f" and at most {pct(doc['max_delayed'])} delayed ones" if doc.get("max_delayed") is not None else "")
        + f", {doc['seeds']} seed(s) per probe. Steady state: {steady_text(doc)}. "
        f"Search: start at the scenario's {doc['start_rate']:,.0f}/s, "
        f"double while it passes (cap {doc['cap']:,.0f}/s), halve while it fails, then bisect to "
        f"{doc['resolution']:.0%} resolution. The fixes are the ones the diagnosis proposed for the run at "
        f"{(doc.get('diagnosed_at') or 0):,.0f}/s, each re-searched with its settings.",
        "",
        "| configuration | sustained rate | vs as-is | lowest failing probe | how |",
        "|---|---:|---:|---|---|",
    ]
    for s in doc["searches"]:
        how = "; ".join(f"`{c}`" for c in s["commands"]) or ", ".join(f"`{k}={v}`" for k, v in s["set"].items())
        name = f"**{s['label']}**" if s is base else s["label"]
        lines.append(f"| {name} | {cap_text(s, doc)} | {'' if s is base else ratio_text(s, base)} | "
                     f"{first_fail_text(s)} | {how.replace('|', '/')} |")
    lines += ["", "Probes (rate: failed share in the judged window; ≥: the probe stopped once it was certain "
              "to fail, so its share is a lower bound; ⟳ n: the window was doubled n times "
              "because failures still grew) per configuration:", ""]
    for s in doc["searches"]:
        ps = ", ".join(f"{p['rate']:,.0f} {'✓' if p['passed'] else '✗'} {_share(p)}"
                       + (f" ⟳ {p['extended']}" if p.get("extended") else "") for p in s["probes"])
        lines.append(f"- {s['label']}: {ps or '-'}")
    lines.append("")
    return "\n".join(lines)
