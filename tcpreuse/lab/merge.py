"""Merge the per-client `load` results and the lab's own measurements into one RunResult.

Each `load` process writes a RunResult for one client instance and one workload, with
times relative to its own start. The lab shifts them onto the run's clock (t = 0 when the
first load was launched), names client and workload as the simulator does, fills the
server-side view of each 4-tuple where the lab knows it (no NAT/LB: unchanged; through
NAT or the LB: the flow conntrack made for that attempt, joined by key and time, flows.py),
and adds what only the lab sees: every namespace's counters and TIME_WAIT samples. Pure: no
I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..result import (
    COLUMNS,
    OK,
    OPTIONAL_COLUMNS,
    AttemptTable,
    PortSeries,
    RunResult,
    Timeline,
    empty_column,
)
from .flows import Flows, FlowVal, Query, join
from .plan import LabPlan, Load


@dataclass
class Part:
    load: Load
    result: RunResult | None
    offset_s: float  # load's t = 0 on the run's clock


@dataclass
class Observed:
    """What the lab measured itself."""

    duration_s: float
    step_s: float = 1.0
    samples: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # host -> series
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> deltas
    nat: Flows = field(default_factory=Flows)  # on the run's clock, see flows.py
    lb: Flows = field(default_factory=Flows)


def _concat(parts: list[tuple[AttemptTable, dict[str, str], float]]) -> AttemptTable:
    """Concatenate tables, re-coding vocabularies; `fixed` overrides vocabulary columns."""
    vocab: dict[str, list[str]] = {k: [] for k in ("outcome", "reason", "workload", "host", "addr")}
    index: dict[str, dict[str, int]] = {k: {} for k in vocab}

    def code(voc: str, name: str) -> int:
        d = index[voc]
        if name not in d:
            d[name] = len(vocab[voc])
            vocab[voc].append(name)
        return d[name]

    # optional columns (answer_ms) are carried when a part has them, empty for the others
    names = COLUMNS | {k: v for k, v in OPTIONAL_COLUMNS.items() if any(k in t.cols for t, _, _ in parts)}
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for table, fixed, offset in parts:
        n = len(table)
        for k, (dtype, voc) in names.items():
            arr = table.cols.get(k)
            if arr is None or arr.shape[0] != n:
                arr = empty_column(k, n)
            if k in fixed:
                v = fixed[k]
                arr = np.full(n, code(voc, str(v)) if voc else v, dtype=dtype)
            elif voc is not None:
                remap = np.array([code(voc, s) for s in table.vocab.get(voc, [])] + [-1],
                                 dtype=dtype)
                arr = remap[np.where(arr < 0, len(remap) - 1, arr)]
            elif k == "t":
                arr = arr + offset
            cols[k].append(np.asarray(arr, dtype=dtype))
    out = {k: np.concatenate(v) for k, v in cols.items() if v}
    out.setdefault("t", np.zeros(0))
    return AttemptTable.build(out, vocab)


def _server_view(table: AttemptTable, plan: LabPlan, obs: Observed) -> int:
    """Fill srv_* and server from the lab's knowledge; returns how many stayed unknown."""
    c = table.cols
    voc_addr = table.vocab["addr"]
    voc_host = table.vocab["host"]
    addr_idx = {a: i for i, a in enumerate(voc_addr)}
    host_idx = {h: i for i, h in enumerate(voc_host)}

    def acode(a: str) -> int:
        if a not in addr_idx:
            addr_idx[a] = len(voc_addr)
            voc_addr.append(a)
        return addr_idx[a]

    def hcode(h: str) -> int:
        if h not in host_idx:
            host_idx[h] = len(voc_host)
            voc_host.append(h)
        return host_idx[h]

    natted = {link.lower for link in plan.links if plan.hosts[link.upper].role == "nat"}
    backends = frozenset(a for link in plan.links if plan.hosts[link.upper].role == "lb"
                         for a in plan.hosts[link.lower].addresses)
    ok = table.code("outcome", OK)
    n = len(table)
    # the 4-tuple of each attempt as it leaves the client, then the NAT, then the LB
    tup: list[tuple[str, int, str, int] | None] = [None] * n
    for i in range(n):
        if c["sport"][i] <= 0 or c["src"][i] < 0 or c["dst"][i] < 0:
            continue  # never left the client (no port): nothing reached a server
        tup[i] = (voc_addr[c["src"][i]], int(c["sport"][i]), voc_addr[c["dst"][i]], int(c["dport"][i]))
    t = c["t"]
    unknown = 0

    def stage(flows: Flows, asks: list[Query | None]) -> list[FlowVal | None]:
        nonlocal unknown
        views = join(flows, asks)
        unknown += sum(1 for q, v in zip(asks, views, strict=True) if q is not None and v is None)
        return views

    nat_q: list[Query | None] = [
        (x[0], x[1], frozenset((x[2],)), float(t[i]))
        if x is not None and voc_host[c["client"][i]] in natted else None for i, x in enumerate(tup)]
    for i, v in enumerate(stage(obs.nat, nat_q)):
        x = tup[i]
        if nat_q[i] is not None and x is not None:
            tup[i] = None if v is None else (v[1], v[2], x[2], x[3])  # as the NAT sends it on
    lb_q: list[Query | None] = [
        (x[0], x[1], backends, float(t[i]))
        if x is not None and plan.vip is not None and (x[2], x[3]) == plan.vip else None
        for i, x in enumerate(tup)]
    for i, v in enumerate(stage(obs.lb, lb_q)):
        x = tup[i]
        if lb_q[i] is not None and x is not None:
            tup[i] = None if v is None or plan.backend_port is None else (v[1], v[2], v[0], plan.backend_port)
    for i, x in enumerate(tup):
        if x is None:
            continue
        c["srv_src"][i], c["srv_sport"][i] = acode(x[0]), x[1]
        c["srv_dst"][i], c["srv_dport"][i] = acode(x[2]), x[3]
        owner = plan.owner.get(x[2])
        if owner is not None and plan.hosts[owner].role == "server" and c["outcome"][i] == ok:
            c["server"][i] = hcode(owner)
    return unknown


def _shift(series: list[int], steps: int, n: int) -> list[int]:
    s = ([0] * steps + list(series)) if steps >= 0 else list(series)[-steps:]
    return (s + [s[-1] if s else 0] * n)[:n]


def merge(plan: LabPlan, parts: list[Part], obs: Observed, *, seed: int | None,
          notes: list[str], meta: dict[str, object]) -> RunResult:
    tables = [
        (p.result.attempts, {"client": p.load.host, "workload": p.load.workload}, p.offset_s)
        for p in parts if p.result is not None
    ]
    table = _concat(tables)
    unknown = _server_view(table, plan, obs)
    if unknown:
        notes = [*notes, f"{unknown} attempt(s) whose server-side 4-tuple is unknown (no flow "
                 "recorded by the NAT/LB for them: their SYNs never got through it, or its "
                 "conntrack events were lost)"]

    step = obs.step_s
    n = max(1, math.ceil(obs.duration_s / step - 1e-9))
    t = table.cols["t"]
    k = np.clip((t / step).astype(int), 0, n - 1) if len(t) else np.zeros(0, dtype=int)
    failed = table.failed_mask()
    delayed_codes = [table.code("reason", r) for r in ("ok_after_syn_retry", "ok_after_app_retry")]
    delayed = np.isin(table.cols["reason"], delayed_codes) & ~failed
    tl = Timeline(
        step_s=step,
        t=[round(i * step, 6) for i in range(n)],
        attempts=np.bincount(k, minlength=n).tolist(),
        ok=np.bincount(k[~failed], minlength=n).tolist(),
        failed=np.bincount(k[failed], minlength=n).tolist(),
        delayed=np.bincount(k[delayed], minlength=n).tolist(),
        hosts={h: {name: _shift(v, 0, n) for name, v in series.items()}
               for h, series in obs.samples.items()},
    )
    for p in parts:
        if p.result is None:
            continue
        steps = round(p.offset_s / step)
        for key, ps in p.result.timeline.ports.items():
            name = key if key.startswith(p.load.host) else f"{p.load.host}:{key}"
            tl.ports[name] = PortSeries(host=p.load.host, src=ps.src, dst=ps.dst, budget=ps.budget,
                                        in_use=_shift(ps.in_use, steps, n))
    return RunResult(
        source="lab",
        scenario=plan.scenario,
        duration_s=round(obs.duration_s, 3),
        attempts=table,
        timeline=tl,
        counters=obs.counters,
        seed=seed,
        notes=notes,
        meta=meta,
    )
