"""From the engine's raw state to a RunResult: attempt rows (or aggregates), timeline, counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from ..result import (
    COLUMNS,
    Aggregates,
    AttemptTable,
    CauseSummary,
    HostInfo,
    PortSeries,
    RunResult,
    Timeline,
)
from ..scenario.topology import int2ip
from .sink import ROW_DTYPES, ROW_FIELDS, counts, firsts

if TYPE_CHECKING:
    from .engine import Engine


class Consulted(TypedDict):
    """What a run (whole, or up to where it was stopped) shows of two settings it may never
    have consulted (Engine.consulted(); what the figures mean is model/recycle.py
    recycle_consulted() and model/lb.py ignore_msl_consulted(); sweep/inert.py decides from
    them which fixes' runs are this run). Kept as is in a sweep run's summary (`evidence`)."""

    recycle_stamped: dict[str, int]  # per host group: peers its tcp_tw_recycle caches remembered
    lb_held_met: int | None  # SYNs that met a session the LB held after close; None: no LB
    lb_snat: bool | None  # whether the LB translates source addresses; None: no LB


def _first_seen(cols: list[np.ndarray]) -> list[int]:
    """Codes (>= 0) in the order they first occur, column after column."""
    order: list[int] = []
    seen: set[int] = set()
    for col in cols:
        codes, first = np.unique(col, return_index=True)
        for c in codes[np.argsort(first, kind="stable")].tolist():
            if c >= 0 and c not in seen:
                seen.add(c)
                order.append(c)
    return order


def _recode(col: np.ndarray, order: list[int], size: int) -> np.ndarray:
    """Map codes so that order[i] becomes i (-1 stays -1)."""
    lut = np.full(size + 1, -1, "i2")  # lut[-1] (the last slot) keeps -1
    lut[np.asarray(order, dtype=np.int64)] = np.arange(len(order), dtype="i2")
    return np.asarray(lut[col], dtype="i2")


def _table(eng: Engine) -> AttemptTable:
    """The sink's packed rows (in the order attempts finished) to columns in start order.
    Vocabulary codes are numbered by first occurrence in start order (outcome; reason,
    then cause), as the table always had them."""
    sink = eng.sink
    n = sink.n
    rows = np.frombuffer(sink.buf, dtype=np.dtype(list(zip(ROW_FIELDS, ROW_DTYPES, strict=True))), count=n)
    pos = rows["idx"]
    cols: dict[str, Any] = {}
    raw = ("src", "dst", "srv_src", "srv_dst")  # addresses as ints until numbered below
    for name in ROW_FIELDS[1:]:
        dtype = rows.dtype[name] if name in raw else COLUMNS[name][0]
        out = np.empty(n, dtype)
        out[pos] = rows[name]
        cols[name] = out
    del rows
    sink.buf = bytearray()
    names = list(sink.codes)
    ocodes = _first_seen([cols["outcome"]])
    rcodes = _first_seen([cols["reason"], cols["cause"]])
    for k, order in (("outcome", ocodes), ("reason", rcodes), ("cause", rcodes)):
        cols[k] = _recode(cols[k], order, len(names))
    allv = np.unique(np.concatenate([cols[k] for k in raw] + [np.zeros(1, "u4")]))
    allv = allv[allv != 0]
    for k in raw:
        v = cols[k]
        cols[k] = np.where(v == 0, -1, np.searchsorted(allv, v)).astype("i4")
    vocab = {
        "outcome": [names[c] for c in ocodes], "reason": [names[c] for c in rcodes],
        "workload": [w.name for w in eng.wls], "host": list(eng.hosts), "addr": [int2ip(int(a)) for a in allv],
    }
    return AttemptTable.build(cols, vocab, sort=False)


def _by_first(counts: dict[str, int], first: dict[str, int]) -> dict[str, int]:
    """Counts in the order a table's counts() gives: "" (code -1) first, then by first use."""
    return {k: counts[k] for k in sorted(counts, key=lambda k: (k != "", first[k]))}


def _ok_before(bits: bytearray, i: int) -> int:
    """Successful attempts among the first i (bit k of `bits`: attempt k succeeded)."""
    whole = bits[: i >> 3]
    n = int.from_bytes(whole, "little").bit_count()
    if (i >> 3) < len(bits):
        n += (bits[i >> 3] & ((1 << (i & 7)) - 1)).bit_count()
    return n


def _aggregates(eng: Engine) -> Aggregates:
    s = eng.sink
    ff = None
    if s.ff_idx >= 0:
        ff = {"index": s.ff_idx, "time_s": round(s.ff_t, 6), "outcome": s.ff_outcome, "reason": s.ff_reason}
    causes = {}
    hosts = list(eng.hosts)
    outcome_first = firsts(s.outcomes)
    for name, c in s.causes.items():
        errnos = {k: c.errnos[k] for k in sorted(c.errnos, key=lambda k: (k != "", outcome_first[k]))}
        causes[name] = CauseSummary(attempts=c.attempts, failed=c.failed, delayed=c.delayed,
                                    first_index=c.first_index, first_t=c.first_t,
                                    first_client=hosts[c.first_client], first_dst=int2ip(c.first_daddr),
                                    first_dport=c.first_dport,
                                    ok_before=_ok_before(s.ok_bits, c.first_index),
                                    errnos=errnos,
                                    delayed_ms=counts(c.delayed_ms))
    return Aggregates(attempts=s.n, outcomes=_by_first(counts(s.outcomes), outcome_first),
                      reasons=_by_first(counts(s.reasons), firsts(s.reasons)), failed=s.failed, delayed=s.delayed,
                      first_failure=ff, ok_connect_ms=counts(s.ok_ms), causes=causes)


def build_result(eng: Engine) -> RunResult:
    tl = Timeline(step_s=eng.step)
    n = eng.nsteps
    tl.t = [round(k * eng.step, 6) for k in range(n)]
    agg: Aggregates | None = None
    if eng.records:
        table = _table(eng)
        b = np.clip((table.cols["t"] // eng.step).astype(int), 0, n - 1)
        failed = table.failed_mask()
        codes = [table.code("reason", r) for r in ("ok_after_syn_retry", "ok_after_app_retry")]
        delayed = np.isin(table.cols["reason"], codes)
        tl.attempts = np.bincount(b, minlength=n).tolist()
        tl.failed = np.bincount(b, weights=failed, minlength=n).astype(int).tolist()
        tl.delayed = np.bincount(b, weights=delayed, minlength=n).astype(int).tolist()
    else:
        table = AttemptTable()
        agg = _aggregates(eng)
        tl.attempts, tl.failed, tl.delayed = eng.sink.tl_attempts, eng.sink.tl_failed, eng.sink.tl_delayed
    tl.ok = [a - f for a, f in zip(tl.attempts, tl.failed, strict=True)]
    tl.hosts = {h: {k: v[:n] for k, v in s.items()} for h, s in eng.samples.items()}
    for (hn, la, ra, rp), series in eng.port_series.items():
        h = eng.hosts[hn]
        key = f"{hn} {int2ip(la)} -> {int2ip(ra)}:{rp}"
        tl.ports[key] = PortSeries(host=hn, src=int2ip(la), dst=f"{int2ip(ra)}:{rp}",
                                   budget=h.port_pool(), in_use=series[:n])
    hosts = {
        h.name: HostInfo(name=h.name, group=h.group, role=h.role, profile=h.p.name,
                         addresses=[int2ip(a) for a in h.addrs],
                         settings={k: (sorted(v) if isinstance(v, frozenset) else v)
                                   for k, v in h.settings.items()})
        for h in eng.hosts.values()
    }
    meta: dict[str, Any] = {
        "engine": {"events": eng.events, "attempts": eng.n_atts, "wall_s": round(eng.wall_s, 3)},
        # end_s: when the last attempt started within duration_s finished (at least
        # duration_s); counters, outcomes and end_state are all taken at that moment
        "end_s": round(eng.end_s, 6),
        "end_state": eng.end_state,
    }
    if eng.nat is not None:
        meta["nat"] = dict(eng.nat.stats)
    if eng.lb is not None:
        meta["lb"] = dict(eng.lb.stats)
    return RunResult(source="simulate", scenario=eng.sc.name, duration_s=eng.end, attempts=table,
                     timeline=tl, counters={h.name: dict(h.counters) for h in eng.hosts.values()},
                     hosts=hosts, seed=eng.sc.seed, meta=meta, aggregates=agg)
