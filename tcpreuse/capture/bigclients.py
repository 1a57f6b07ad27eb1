"""Statistics of clients too busy to hold their attempts at once, streamed.

:func:`.sources.source_stats` analyses a client from its rows, held together with their
columns and sort indexes: ~45 bytes an attempt, all of a capture's attempts when one
load generator made them. A client with more than BIG_CLIENT attempts is analysed here
instead, with state that follows its servers, destinations and 4-tuples, not its
attempts, and the same figures (tests compare the two on the same clients):

- counts, the SYN span, distinct servers: one pass over the table, a block at a time;
  the median first-retry delay over the values kept (:class:`.spill.SpilledValues`: in a
  temporary file past a limit, its median found there exactly);
- timestamp clocks per server (:func:`.sources.clock_fit`): the timestamped SYNs in
  capture order (:func:`.ordered.in_order`), each 4-tuple's first and last SYN carried,
  the reconnection steps counted against every rate at once (the rate is chosen at the
  end), the 2,048 sampled SYNs picked by their place; when reconnections left their
  clock, the clocks of all SYNs counted in one more pass, by bins of half the
  tolerance (a gap between clusters only falls between bins);
- the peak rate and the port patterns per destination (:func:`.sources.peak_rate`,
  :func:`.sources._port_pattern`): attempts in time order, the windows that can still
  grow and each port's last use carried, the port cycles kept as SpilledValues.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import ordered
from .flows import ANSWERS, Attempts, distinct, distinct_counts, row_blocks
from .sources import (
    DETAIL_MIN,
    STEP_MAX_S,
    TS_RATES,
    ClockFit,
    PortPattern,
    SourceStats,
    _clock_groups,
    _clusters,
    _off,
    _ts_note,
    fit_of,
)
from .spill import SpilledValues
from .zeek import CONN_STATES

BIG_CLIENT = 1 << 18  # attempts of a client from which it is streamed


def _uadd(counts: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """`counts` plus the bincount of `codes` (grown when a code is past its end)."""
    b = np.bincount(codes.astype(np.int64), minlength=size)
    if b.size > counts.size:
        counts = np.r_[counts, np.zeros(b.size - counts.size, dtype=np.int64)]
    counts[:b.size] += b
    return counts


class _Client:
    """What one pass over the table gives of a client."""

    def __init__(self) -> None:
        self.n = self.n_ts = self.reused = self.server_tw = self.retried = 0
        self.t0, self.t1 = np.inf, -np.inf
        self.answers = np.zeros(len(ANSWERS), dtype=np.int64)
        self.states = np.zeros(len(CONN_STATES), dtype=np.int64)
        self.servers: set[int] = set()
        self.gap = SpilledValues()
        self.pairs: dict[int, list[float]] = {}  # server -> [timestamped SYNs, first t, last t]
        self.dests: dict[int, int] = {}  # server << 16 | port -> attempts


class _Clocks:
    """:func:`.sources.clock_fit` of one address pair, fed its timestamped SYNs in
    capture order."""

    def __init__(self, n: int, t0: float, t1: float) -> None:
        self.n, self.t0, self.span = n, t0, t1 - t0
        self.sample_at = np.linspace(0, n - 1, min(n, 2048)).astype(np.int64)
        self.seen = 0
        self.s_t: list[np.ndarray] = []
        self.s_v: list[np.ndarray] = []
        self.tk = np.zeros(0, dtype=np.uint32)  # 4-tuples seen (sorted), their first and last SYN
        self.first_t = np.zeros(0)
        self.first_v = np.zeros(0, dtype=np.uint32)
        self.last_t = np.zeros(0)
        self.last_v = np.zeros(0, dtype=np.uint32)
        r = len(TS_RATES)
        self.steps = 0
        self.off = np.zeros(r, dtype=np.int64)  # steps off the clock at each rate
        self.back = np.zeros(r, dtype=np.int64)  # ... going backwards
        self.far_not = np.zeros((r, r), dtype=np.int64)  # far off at rate i, on the clock at rate j
        self.far = np.zeros(r, dtype=np.int64)

    def add(self, t: np.ndarray, v: np.ndarray, tup: np.ndarray) -> None:
        lo, hi = self.seen, self.seen + t.size
        at = self.sample_at[(self.sample_at >= lo) & (self.sample_at < hi)] - lo
        self.s_t.append(t[at])
        self.s_v.append(v[at])
        self.seen = hi
        o = np.argsort(tup, kind="stable")  # by 4-tuple, capture order kept
        ko, to, vo = tup[o], t[o], v[o].astype(np.uint32)
        del o
        same = ko[1:] == ko[:-1]
        firsts = np.flatnonzero(np.r_[True, ~same])
        lasts = np.r_[firsts[1:] - 1, ko.size - 1]
        fk = ko[firsts]
        pos = np.searchsorted(self.tk, fk)
        known = pos < self.tk.size
        known[known] = self.tk[pos[known]] == fk[known]
        kp, kf = pos[known], firsts[known]
        dt = np.r_[to[kf] - self.last_t[kp], np.diff(to)[same]]
        dv = np.r_[(vo[kf] - self.last_v[kp]).view(np.int32), np.diff(vo)[same].view(np.int32)]
        keep = np.abs(dt) < STEP_MAX_S
        self._steps(dt[keep], dv[keep])
        # each 4-tuple's last SYN; the new ones' first
        self.last_t[kp], self.last_v[kp] = to[lasts[known]], vo[lasts[known]]
        new = ~known
        if new.any():
            tk = np.r_[self.tk, fk[new]]
            o = np.argsort(tk, kind="stable")
            self.tk = tk[o]
            self.first_t = np.r_[self.first_t, to[firsts[new]]][o]
            self.first_v = np.r_[self.first_v, vo[firsts[new]]][o]
            self.last_t = np.r_[self.last_t, to[lasts[new]]][o]
            self.last_v = np.r_[self.last_v, vo[lasts[new]]][o]

    def _steps(self, dt: np.ndarray, dv: np.ndarray) -> None:
        self.steps += dt.size
        if not dt.size:
            return
        offs = [_off(dt, dv, r) for r in TS_RATES]
        fwd = (dt >= 0.5) & (dv > 0)
        for i, off in enumerate(offs):
            self.off[i] += int(off.sum())
            self.back[i] += int((off & (dv < 0)).sum())
            far = off & fwd
            self.far[i] += int(far.sum())
            for j, off2 in enumerate(offs):
                self.far_not[i, j] += int((far & ~off2).sum())

    def rate(self) -> float:
        """The rate clock_fit settles on."""
        ts_, tv_ = np.concatenate(self.s_t), np.concatenate(self.s_v)
        rate = min(TS_RATES, key=lambda r: (_clusters(ts_, tv_, r, self.span, self.t0), TS_RATES.index(r)))
        if self.off[TS_RATES.index(rate)]:
            best = min(TS_RATES, key=lambda r: (int(self.off[TS_RATES.index(r)]), r != rate, TS_RATES.index(r)))
            rate = best
        return rate

    def fit(self, rate: float, all_clusters: int | None) -> ClockFit:
        """The fit at `rate` (:meth:`rate`); `all_clusters`: the clocks of all SYNs, needed
        when steps left their clock at that rate."""
        i = TS_RATES.index(rate)
        others: tuple[float, ...] = ()
        if self.far[i] >= 2:
            others = tuple(r for j, r in enumerate(TS_RATES) if r != rate and self.far_not[i, j] >= 2)
        k, shared = _clock_groups(self.first_t, self.first_v, rate, self.span, self.t0)
        if self.off[i]:
            assert all_clusters is not None
            k = all_clusters
        return fit_of(k, rate, int(self.tk.size), shared, self.steps, int(self.off[i]), int(self.back[i]), others)


class _Bins:
    """:func:`.sources._clusters` of values fed in any order: each bin of half the
    tolerance keeps its smallest and largest value (values in one bin are never more
    than the tolerance apart, and bins are in value order)."""

    def __init__(self, rate: float, span: float, t0: float) -> None:
        self.rate, self.t0 = rate, t0
        self.tol = rate * 0.05 + rate * span * 2e-4 + 2
        self.w = self.tol / 2
        self.bins = np.zeros(0, dtype=np.int64)
        self.lo = np.zeros(0)
        self.hi = np.zeros(0)

    def add(self, t: np.ndarray, tsval: np.ndarray) -> None:
        off = np.mod(tsval.astype(np.float64) - self.rate * (t - self.t0), 2.0**32)
        b = np.r_[self.bins, np.floor(off / self.w).astype(np.int64)]
        lo, hi = np.r_[self.lo, off], np.r_[self.hi, off]
        u = distinct(b)
        inv = np.searchsorted(u, b)
        self.bins = u
        self.lo = np.full(u.size, np.inf)
        self.hi = np.full(u.size, -np.inf)
        np.minimum.at(self.lo, inv, lo)
        np.maximum.at(self.hi, inv, hi)

    def clusters(self) -> int:
        k = 1 + int(np.count_nonzero((self.lo[1:] - self.hi[:-1]) > self.tol))
        if k > 1 and (self.lo[0] + 2.0**32 - self.hi[-1]) <= self.tol:
            k -= 1
        return k


class _Peak:
    """:func:`.sources.peak_rate`, fed the times in order: the window starts whose
    window may still take later times are kept."""

    def __init__(self, n: int, span: float) -> None:
        self.w = min(1.0, span) if span > 0 else 1.0
        self.mean = n / span if span > 0 else float(n)
        self.pending = np.zeros(0)
        self.best = 0

    def add(self, t: np.ndarray, final: bool = False) -> None:
        v = np.r_[self.pending, t]
        if not v.size:
            return
        end = v + self.w
        done = v.size if final else int(np.searchsorted(end, v[-1], side="left"))  # end < last: settled
        if done:
            ends = np.searchsorted(v, end[:done], side="right")
            self.best = max(self.best, int((ends - np.arange(done)).max()))
        self.pending = v[done:]

    def peak(self) -> float:
        self.add(np.zeros(0), final=True)
        return round(max(self.best / self.w, self.mean), 3)


class _Ports:
    """:func:`.sources._port_pattern` of one destination, fed its attempts in time order."""

    def __init__(self) -> None:
        self.counts = np.zeros(65536, dtype=np.int64)
        self.even = self.n = self.reuses = self.fwd = self.d_n = 0
        self.last_t = np.full(65536, np.nan)
        self.prev: np.ndarray | None = None
        self.d_hist = np.zeros(17, dtype=np.int64)
        self.cyc = SpilledValues()

    def add(self, t: np.ndarray, port: np.ndarray) -> None:
        port = np.asarray(port).astype(np.uint16, copy=False)
        if not port.size:
            return
        self.counts += np.bincount(port, minlength=65536)
        self.even += int(((port & 1) == 0).sum())
        self.n += port.size
        o = np.argsort(port, kind="stable")
        ps, ts_ = port[o], t[o]
        same = ps[1:] == ps[:-1]
        firsts = np.flatnonzero(np.r_[True, ~same])
        lasts = np.r_[firsts[1:] - 1, ps.size - 1]
        before = self.last_t[ps[firsts]]
        known = ~np.isnan(before)
        self.cyc.add(np.r_[ts_[firsts][known] - before[known], (ts_[1:] - ts_[:-1])[same]])
        self.reuses += int(same.sum()) + int(known.sum())
        self.last_t[ps[lasts]] = ts_[lasts]
        seq = port if self.prev is None else np.concatenate([self.prev, port])
        d = np.diff(seq).view(np.int16)
        fwd = (d > 0) & (d <= 16)
        self.fwd += int(fwd.sum())
        self.d_n += d.size
        self.d_hist += np.bincount(d[fwd].astype(np.int64), minlength=17)
        self.prev = port[-1:].copy()

    def pattern(self, dest: str) -> PortPattern:
        n = self.n
        used = np.flatnonzero(self.counts)
        distinct_ = int(used.size)
        even = self.even / n if n else 0.0
        pmin, pmax = (int(used[0]), int(used[-1])) if n else (0, 0)
        try:
            if n < 3:
                return PortPattern(dest, n, distinct_, pmin, pmax, "too few", None, 0.0, even, None, None, self.reuses)
            seq_share = self.fwd / self.d_n
            med = _median_of_counts(self.d_hist) if self.fwd else None
            return PortPattern(
                destination=dest, attempts=n, distinct_ports=distinct_, port_min=pmin, port_max=pmax,
                pattern="sequential" if seq_share >= 0.6 else "random",
                median_step=med, sequential_share=round(seq_share, 4), even_share=round(even, 4),
                cycle_median_s=round(self.cyc.median(), 3) if self.cyc.n or self.cyc.nan else None,
                cycle_min_s=round(self.cyc.lo, 3) if self.cyc.n else None,
                reuses=self.reuses)
        finally:
            self.cyc.close()


def _median_of_counts(counts: np.ndarray) -> int:
    """int(flows.median(values)) of integer values given as counts per value."""
    m = int(counts.sum())
    cum = np.cumsum(counts)

    def kth(k: int) -> int:
        return int(np.searchsorted(cum, k, side="right"))

    k = m // 2
    if m % 2:
        return int(float(kth(k)))
    return int((np.float64(kth(k - 1)) + np.float64(kth(k))) / 2)


def big_client_stats(a: Attempts, clients: dict[int, bool], addr: Any) -> dict[int, SourceStats]:
    """The statistics of `clients` (address key -> analysed in detail), as
    :func:`.sources._one_source` gives them."""
    n = len(a)
    keys = np.asarray(sorted(clients), dtype=np.uint64)
    got = {k: _Client() for k in clients}
    detail = {k for k, d in clients.items() if d}

    def mine(sl: slice) -> tuple[np.ndarray, np.ndarray]:
        """Rows of block `sl` that are these clients' attempts, and their clients."""
        m = np.flatnonzero(a["is_attempt"][sl])
        orig = a["orig"][sl][m]
        keep = np.isin(orig, keys)
        return m[keep], orig[keep]

    for sl in row_blocks(n):
        m, orig = mine(sl)
        if not m.size:
            continue

        def col(k: str, m: np.ndarray = m, sl: slice = sl) -> np.ndarray:
            return np.asarray(a[k][sl][m])

        t, t2, n_syn, has_ts = col("t_syn"), col("t_syn2"), col("n_syn"), col("syn_has_ts")
        resp, rport = col("resp"), col("resp_port")
        prev, prev_tw, age = col("prev"), col("prev_tw"), col("reuse_age_s")
        answer, state = col("answer"), col("conn_state")
        for k in distinct(orig).tolist():
            c = got[k]
            r = orig == k
            tr = t[r]
            c.n += tr.size
            c.t0, c.t1 = min(c.t0, float(tr.min())), max(c.t1, float(tr.max()))
            retried = n_syn[r] > 1
            c.retried += int(retried.sum())
            c.gap.add((t2[r][retried] - tr[retried]) * 1000)
            ts = has_ts[r]
            c.n_ts += int(ts.sum())
            c.reused += int((prev[r] >= 0).sum())
            c.server_tw += int(((prev_tw[r] == 2) & (age[r] < 60)).sum())
            c.answers = _uadd(c.answers, answer[r], len(ANSWERS))
            c.states = _uadd(c.states, state[r], len(CONN_STATES))
            rr = resp[r]
            c.servers.update(distinct(rr).tolist())
            if k not in detail:
                continue
            for s in distinct(rr[ts]).tolist():
                st = tr[ts][rr[ts] == s]
                p = c.pairs.setdefault(s, [0, np.inf, -np.inf])
                p[0] += st.size
                p[1], p[2] = min(p[1], float(st.min())), max(p[2], float(st.max()))
            dk = rr.astype(np.uint64) << np.uint64(16) | rport[r].astype(np.uint64)
            u, cnt = distinct_counts(dk)
            for d, c_ in zip(u.tolist(), cnt.tolist(), strict=True):
                c.dests[d] = c.dests.get(d, 0) + c_
        del t, t2, n_syn, has_ts, resp, rport, prev, prev_tw, age, answer, state

    out: dict[int, SourceStats] = {}
    try:
        clocks = _clock_fits(a, n, got, detail) if detail else {}
        peaks, ports = _in_time_order(a, n, got, detail)
        for k, c in got.items():
            span = c.t1 - c.t0
            s = SourceStats(
                addr=addr(k), attempts=int(c.n), servers=len(c.servers), syn_with_ts=c.n_ts,
                syn_without_ts=int(c.n - c.n_ts), rate_per_s=round(c.n / span, 3) if span > 0 else float(c.n),
                peak_per_s=peaks[k].peak(), span_s=round(span, 3),
                answers={ANSWERS[i]: int(x) for i, x in enumerate(c.answers.tolist()) if x},
                states={CONN_STATES[i]: int(x) for i, x in enumerate(c.states.tolist()) if x},
                reused=c.reused, reused_server_tw=c.server_tw, syn_retried=c.retried,
                first_retry_ms_median=round(c.gap.median(), 1) if c.gap.n or c.gap.nan else None)
            if k in detail:
                best: ClockFit | None = None
                for s_key in sorted(c.pairs):
                    fit = clocks[(k, s_key)]
                    if best is None or (fit.nat, fit.clocks) > (best.nat, best.clocks):
                        best = fit
                if best is not None:
                    s.ts_clocks, s.ts_rate_hz = best.clocks, best.rate
                    s.ts_per_connection = best.per_tuple
                    s.ts_nat, s.ts_evidence = best.nat, best.why
                    s.ts_shared_clocks, s.ts_reconnects, s.ts_off_clock = best.shared, best.steps, best.off_clock
                    s.ts_note = _ts_note(s)
                for dk in sorted(ports.get(k, {})):
                    s.ports.append(ports[k][dk].pattern(f"{addr(dk >> 16)}:{dk & 0xFFFF}"))
                s.ports.sort(key=lambda p: -p.attempts)
                del s.ports[5:]
            out[k] = s
    finally:
        for c in got.values():
            c.gap.close()
    return out


def _clock_fits(a: Attempts, n: int, got: dict[int, _Client], detail: set[int]) -> dict[tuple[int, int], ClockFit]:
    """clock_fit of each (client, server) pair of the clients in `detail`."""
    keys = np.asarray(sorted(detail), dtype=np.uint64)
    streams = {(k, s): _Clocks(int(p[0]), p[1], p[2]) for k in detail for s, p in got[k].pairs.items()}
    if not streams:
        return {}

    def sel(sl: slice) -> np.ndarray:
        m = np.asarray(a["is_attempt"][sl]) & np.asarray(a["syn_has_ts"][sl])
        m &= np.isin(a["orig"][sl], keys)
        return np.flatnonzero(m)

    def key(sl: slice) -> np.ndarray:
        return np.asarray(a["pkt"][sl][sel(sl)])

    def fetch(sl: slice) -> dict[str, np.ndarray]:
        m = sel(sl)
        return {c: np.asarray(a[c][sl][m]) for c in ("pkt", "orig", "resp", "t_syn", "syn_tsval", "orig_port",
                                                     "resp_port")}

    for part in ordered.in_order(a.cols, n, key, fetch, ("pkt",)):
        orig, resp = part["orig"], part["resp"]
        for k, s in [(x, y) for x in distinct(orig).tolist() for y in distinct(resp[orig == x]).tolist()]:
            r = (orig == k) & (resp == s)
            tup = part["orig_port"][r].astype(np.uint32)
            tup <<= 16
            tup |= part["resp_port"][r].astype(np.uint32)
            streams[(k, s)].add(part["t_syn"][r], part["syn_tsval"][r], tup)
    rates = {ks: st.rate() for ks, st in streams.items()}
    need = {ks: _Bins(rates[ks], st.span, st.t0) for ks, st in streams.items() if st.off[TS_RATES.index(rates[ks])]}
    if need:  # the clocks of all SYNs at the rate chosen
        for sl in row_blocks(n):
            m = sel(sl)
            orig, resp = a["orig"][sl][m], a["resp"][sl][m]
            for (k, s), b in need.items():
                r = m[(orig == k) & (resp == s)]
                if r.size:
                    b.add(np.asarray(a["t_syn"][sl][r]), np.asarray(a["syn_tsval"][sl][r]))
    return {ks: st.fit(rates[ks], need[ks].clusters() if ks in need else None) for ks, st in streams.items()}


def _in_time_order(a: Attempts, n: int, got: dict[int, _Client], detail: set[int]
                   ) -> tuple[dict[int, _Peak], dict[int, dict[int, _Ports]]]:
    """The peak rate of each client, and the port patterns of its destinations with
    DETAIL_MIN attempts or more (clients in `detail`), from its attempts in time order
    (equal times in capture order)."""
    keys = np.asarray(sorted(got), dtype=np.uint64)
    peaks = {k: _Peak(c.n, c.t1 - c.t0) for k, c in got.items()}
    ports = {k: {d: _Ports() for d, cnt in got[k].dests.items() if cnt >= DETAIL_MIN} for k in detail}

    def sel(sl: slice) -> np.ndarray:
        m = np.asarray(a["is_attempt"][sl]) & np.isin(a["orig"][sl], keys)
        return np.flatnonzero(m)

    def key(sl: slice) -> np.ndarray:
        return np.asarray(a["t_syn"][sl][sel(sl)])

    def fetch(sl: slice) -> dict[str, np.ndarray]:
        m = sel(sl)
        return {c: np.asarray(a[c][sl][m]) for c in ("t_syn", "pkt", "orig", "resp", "resp_port", "orig_port")}

    for part in ordered.in_order(a.cols, n, key, fetch, ("t_syn", "pkt")):
        orig = part["orig"]
        for k in distinct(orig).tolist():
            r = orig == k
            t = part["t_syn"][r]
            peaks[k].add(t)
            if k not in ports or not ports[k]:
                continue
            dk = part["resp"][r].astype(np.uint64) << np.uint64(16) | part["resp_port"][r].astype(np.uint64)
            op = part["orig_port"][r]
            for d in distinct(dk).tolist():
                if d in ports[k]:
                    x = dk == d
                    ports[k][d].add(t[x], op[x])
    return peaks, ports
