"""From the engine's raw state to a RunResult: attempts to columns, timeline, counters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..result import AttemptTable, HostInfo, PortSeries, RunResult, Timeline
from ..scenario.topology import int2ip

if TYPE_CHECKING:
    from .engine import Attempt, Engine


def _freeze(eng: Engine) -> AttemptTable:
    """Attempts to columns, once, at the end (the run itself keeps raw ints)."""
    atts: list[Attempt] = eng.atts
    n = len(atts)
    voc_out: dict[str, int] = {}
    voc_reason: dict[str, int] = {}

    def code(voc: dict[str, int], name: str) -> int:
        if not name:
            return -1
        c = voc.get(name)
        if c is None:
            c = voc[name] = len(voc)
        return c

    host_names = list(eng.hosts)
    host_idx = {h: i for i, h in enumerate(host_names)}
    cols: dict[str, Any] = {
        "t": np.fromiter((a.t0 for a in atts), "f8", n),
        "connect_ms": np.fromiter((a.connect_ms for a in atts), "f8", n),
        "syn_tries": np.fromiter((a.tries for a in atts), "i2", n),
        "outcome": np.fromiter((code(voc_out, a.outcome) for a in atts), "i2", n),
        "reason": np.fromiter((code(voc_reason, a.reason) for a in atts), "i2", n),
        "cause": np.fromiter((code(voc_reason, a.cause) for a in atts), "i2", n),
        "workload": np.fromiter((a.wl.index for a in atts), "i2", n),
        "client": np.fromiter((host_idx[a.client.name] for a in atts), "i4", n),
        "server": np.fromiter((host_idx[a.srv.name] if a.srv is not None else -1 for a in atts), "i4", n),
        "sport": np.fromiter((a.sport for a in atts), "i4", n),
        "dport": np.fromiter((a.dport for a in atts), "i4", n),
        "srv_sport": np.fromiter((a.r_sport for a in atts), "i4", n),
        "srv_dport": np.fromiter((a.r_dport for a in atts), "i4", n),
    }
    raw = {
        "src": np.fromiter((a.saddr for a in atts), "i8", n),
        "dst": np.fromiter((a.daddr for a in atts), "i8", n),
        "srv_src": np.fromiter((a.r_saddr for a in atts), "i8", n),
        "srv_dst": np.fromiter((a.r_daddr for a in atts), "i8", n),
    }
    allv = np.unique(np.concatenate([*raw.values(), np.zeros(1, "i8")]))
    allv = allv[allv != 0]
    for k, v in raw.items():
        idx = np.searchsorted(allv, v).astype("i4")
        cols[k] = np.where(v == 0, -1, idx).astype("i4")
    vocab = {
        "outcome": list(voc_out), "reason": list(voc_reason), "workload": [w.name for w in eng.wls],
        "host": host_names, "addr": [int2ip(int(a)) for a in allv],
    }
    return AttemptTable.build(cols, vocab, sort=False)  # attempts are recorded in start order


def build_result(eng: Engine) -> RunResult:
    table = _freeze(eng)
    tl = Timeline(step_s=eng.step)
    n = eng.nsteps
    tl.t = [round(k * eng.step, 6) for k in range(n)]
    b = np.clip((table.cols["t"] // eng.step).astype(int), 0, n - 1)
    failed = table.failed_mask()
    codes = [table.code("reason", r) for r in ("ok_after_syn_retry", "ok_after_app_retry")]
    delayed = np.isin(table.cols["reason"], codes)
    tl.attempts = np.bincount(b, minlength=n).tolist()
    tl.failed = np.bincount(b, weights=failed, minlength=n).astype(int).tolist()
    tl.delayed = np.bincount(b, weights=delayed, minlength=n).astype(int).tolist()
    tl.ok = [a - f for a, f in zip(tl.attempts, tl.failed, strict=True)]
    tl.hosts = {h: {k: v[:n] for k, v in s.items()} for h, s in eng.samples.items()}
    for (hn, la, ra, rp), series in eng.port_series.items():
        h = eng.hosts[hn]
        key = f"{hn} {int2ip(la)} -> {int2ip(ra)}:{rp}"
        tl.ports[key] = PortSeries(host=hn, src=int2ip(la), dst=f"{int2ip(ra)}:{rp}",
                                   budget=h.port_budget_cached(), in_use=series[:n])
    hosts = {
        h.name: HostInfo(name=h.name, group=h.group, role=h.role, profile=h.p.name,
                         addresses=[int2ip(a) for a in h.addrs],
                         settings={k: (sorted(v) if isinstance(v, frozenset) else v)
                                   for k, v in h.settings.items()})
        for h in eng.hosts.values()
    }
    meta: dict[str, Any] = {
        "engine": {"events": eng.events, "attempts": len(eng.atts), "wall_s": round(eng.wall_s, 3)},
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
                     hosts=hosts, seed=eng.sc.seed, meta=meta)
