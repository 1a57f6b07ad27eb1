"""Per-client-address and per-server statistics: timestamps, clocks, port patterns, rates.

*Timestamp clocks.* A host's TSval grows at a fixed rate (1000/s on Linux >= 4.13 and
Windows; HZ — 100, 250, 300 or 1000 — on older Linux), so ``TSval - rate * t`` is one
constant per clock. SYNs from one address are clustered on that offset; several
clusters mean several clocks. What a clock is depends on the sender's kernel:

- Linux <= 4.9 (and ``tcp_timestamps=2``): one clock per host (jiffies since boot), so
  clocks = hosts behind the address (a NAT);
- Linux 4.11 up to the 2026 change: one offset per (source, destination) address pair,
  so toward one server, clocks = hosts; toward several servers a host shows several;
- Linux 4.10 and kernels with the 2026 per-4-tuple offsets (7.0, backported to 6.12.y;
  the 6.18 kernel the tests ran on has them): one offset per 4-tuple
  (``secure_tcp_seq_and_ts_off()``), so every port is its own "clock" and a count of
  clocks says nothing about hosts.

So the count is never taken for hosts by itself. Several hosts are inferred only from
what separates them (:func:`clock_fit`): two or more clocks each used by several
4-tuples (one host's, whatever its kernel; per-4-tuple offsets never share), one 4-tuple
whose TSval leaves its clock between connections (one host keeps one offset per 4-tuple
in every kernel, so a TSval going backwards or jumping there is another host on the same
4-tuple, as a NAT port reused for another host gives), or clocks ticking at different
rates. Clocks are counted per (client, server) address pair.
*Port patterns* (sequential / random, the share of even ports, how soon a port
comes round again toward the same destination) are per (client, server, server port).
Detailed analysis is done for the busiest clients only (DETAIL_LIMIT); all clients get
counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .flows import (
    ANSWERS,
    Attempts,
    capture_order,
    distinct,
    distinct_counts,
    median,
    row_blocks,
    time_order,
)
from .zeek import CONN_STATES

TS_RATES = (1000.0, 250.0, 100.0, 300.0, 1024.0, 10.0, 1_000_000.0)
DETAIL_LIMIT = 200  # clients analysed in detail (by attempts, descending)
DETAIL_MIN = 8  # fewer attempts than this: counts only


@dataclass
class PortPattern:
    destination: str  # "addr:port"
    attempts: int
    distinct_ports: int
    port_min: int
    port_max: int
    pattern: str  # sequential | random | too few
    median_step: int | None
    sequential_share: float
    even_share: float
    cycle_median_s: float | None  # time between successive uses of one port
    cycle_min_s: float | None
    reuses: int  # attempts whose port was used before toward this destination


@dataclass
class SourceStats:
    addr: str
    attempts: int
    servers: int
    syn_with_ts: int
    syn_without_ts: int
    rate_per_s: float
    peak_per_s: float  # the busiest 1-s window (the whole capture if shorter); never below the mean
    span_s: float
    answers: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    reused: int = 0  # attempts on a 4-tuple seen before in the capture
    reused_server_tw: int = 0  # ... whose server still held TIME_WAIT (< 60 s)
    syn_retried: int = 0  # attempts with at least one SYN retransmission
    first_retry_ms_median: float | None = None
    ts_clocks: int | None = None
    ts_rate_hz: float | None = None
    ts_per_connection: bool = False  # every clock is one 4-tuple's: per-4-tuple offsets (4.10, 2026+)
    ts_nat: bool = False  # clocks one host without NAT cannot show: several hosts or translated ports
    ts_evidence: str = ""  # that evidence, in words
    ts_shared_clocks: int | None = None  # clocks used by >= 3 4-tuples (one per host)
    ts_reconnects: int = 0  # successive SYNs of one 4-tuple (< 60 s apart) checked against its clock
    ts_off_clock: int = 0  # ... whose TSval left that clock (two hosts on one 4-tuple)
    ts_note: str = ""
    ports: list[PortPattern] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServerStats:
    addr: str
    port: int
    attempts: int
    clients: int
    answered: int  # got a SYN-ACK
    refused: int  # answered by RST
    old_ack: int  # answered by an ACK for an old connection
    unanswered: int
    syn_retried: int
    synack_retransmits: int  # attempts where the server sent more than one SYN-ACK
    established: int
    first_answered_t: float | None = None
    last_answered_t: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _counts(codes: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    b = np.bincount(codes.astype(np.int64), minlength=len(names))
    return {names[i]: int(c) for i, c in enumerate(b) if c}


def _clusters(t: np.ndarray, tsval: np.ndarray, rate: float, span: float, t0: float) -> int:
    off = np.mod(tsval.astype(np.float64) - rate * (t - t0), 2.0**32)
    off.sort()
    tol = rate * 0.05 + rate * span * 2e-4 + 2
    k = 1 + int(np.count_nonzero(np.diff(off) > tol))
    if k > 1 and (off[0] + 2.0**32 - off[-1]) <= tol:
        k -= 1  # the first and last cluster meet across the wrap
    return k


def ts_clocks(t: np.ndarray, tsval: np.ndarray) -> tuple[int, float]:
    """(number of clocks, rate in Hz) that best explain the TSvals seen at times t.

    The rate is chosen on at most 2,048 SYNs spread over the capture (the rate that
    explains them with the fewest clocks), then the clocks are counted on all."""
    if t.size == 0:
        return 0, 0.0
    if t.size == 1:
        return 1, TS_RATES[0]
    best_rate = _sample_rate(t, tsval)
    return _clusters(t, tsval, best_rate, float(t.max() - t.min()), float(t.min())), best_rate


def _sample_rate(t: np.ndarray, tsval: np.ndarray) -> float:
    """The rate that explains at most 2,048 SYNs spread over the capture with the fewest clocks."""
    span = float(t.max() - t.min())
    t0 = float(t.min())
    sample = np.linspace(0, t.size - 1, min(t.size, 2048)).astype(np.int64)
    ts_, tv_ = t[sample], tsval[sample]
    return min(TS_RATES, key=lambda r: (_clusters(ts_, tv_, r, span, t0), TS_RATES.index(r)))


@dataclass
class ClockFit:
    """What the SYNs of one (client, server) address pair say about timestamp clocks.

    ``clocks`` counts TSval offsets (``TSval - rate * t``); a clock *shared* by several
    4-tuples is a host's (or one connection's that a NAT moved to other ports), a clock
    seen on one 4-tuple only is what per-4-tuple offsets give every port. Several hosts are inferred only from what
    separates them: several shared clocks, one 4-tuple whose TSval leaves its clock
    (backwards, or ahead of it) between connections, or clocks ticking at different rates."""

    clocks: int
    rate: float
    tuples: int  # distinct 4-tuples with a timestamped SYN
    shared: int  # clocks seen on >= SHARED_MIN of them
    per_tuple: bool  # every clock belongs to one 4-tuple: per-4-tuple offsets (4.10, 2026+)
    steps: int  # successive SYNs of one 4-tuple (< 60 s apart)
    off_clock: int  # ... whose TSval is not where that 4-tuple's clock puts it
    backwards: int  # ... of which went backwards
    other_rates: tuple[float, ...]  # rates that explain steps the main rate does not
    nat: bool  # several hosts share the address, or a NAT translates ports (see why)
    why: str  # the separating evidence, "" when there is none


STEP_MAX_S = 60.0  # a 4-tuple's successive SYNs further apart than this are not compared
SHARED_MIN = 3  # 4-tuples on one clock for it to be a host's (two random 32-bit offsets
#   meet by chance among tens of thousands of 4-tuples; three almost never)


def _tol(rate: float, dt: np.ndarray | float) -> np.ndarray | float:
    return rate * 0.05 + rate * np.abs(dt) * 2e-4 + 2


def _off(dt: np.ndarray, dv: np.ndarray, rate: float) -> np.ndarray:
    """|dv - rate * dt| > _tol(rate, dt), the same operations in place (two temporaries)."""
    x = dt * rate
    np.subtract(dv, x, out=x)
    np.abs(x, out=x)
    tol = np.abs(dt)
    tol *= rate
    tol *= 2e-4
    tol += rate * 0.05
    tol += 2
    np.greater(x, tol, out=tol)
    return tol.astype(bool)


def clock_fit(t: np.ndarray, tsval: np.ndarray, tup: np.ndarray) -> ClockFit:
    """Clocks of one address pair's timestamped SYNs at times t on 4-tuples `tup` (a
    non-negative integer key, e.g. source port << 16 | destination port), rows in
    capture order."""
    if t.size == 0:
        return ClockFit(0, 0.0, 0, 0, False, 0, 0, 0, (), False, "")
    rate = _sample_rate(t, tsval)
    span, t0 = float(t.max() - t.min()), float(t.min())
    # successive SYNs of one 4-tuple: a stable radix sort by 4-tuple keeps capture order
    o = capture_order(tup)
    ko = tup[o]
    same = ko[1:] == ko[:-1]
    del ko
    to = t[o]
    vo = tsval[o].astype(np.uint32)
    del o
    first = np.r_[True, ~same]
    dt = np.diff(to)[same]
    dv = np.diff(vo)[same].view(np.int32)  # uint32 differences wrap: as signed, s32(b - a)
    del same
    keep = np.abs(dt) < STEP_MAX_S
    dt, dv = dt[keep], dv[keep]
    del keep
    n_tup = int(first.sum())
    t_first, v_first = to[first], vo[first]  # each 4-tuple's first SYN
    del to, vo, first
    off = _off(dt, dv, rate)
    if off.any():
        # the rate that keeps every 4-tuple on its own clock wins over the cluster count
        best = min(TS_RATES, key=lambda r: (int(_off(dt, dv, r).sum()), r != rate, TS_RATES.index(r)))
        if best != rate:
            rate = best
            off = _off(dt, dv, rate)
    backwards = int((off & (dv < 0)).sum())
    # clocks that explain steps the main rate does not (>= 0.5 s apart, going forward)
    others: list[float] = []
    far = off & (dt >= 0.5) & (dv > 0)
    if far.sum() >= 2:
        others = [r for r in TS_RATES if r != rate and int((far & ~_off(dt, dv, r)).sum()) >= 2]
    # clocks, and those used by several 4-tuples, from each 4-tuple's first SYN; when every
    # 4-tuple kept its clock these are all the clocks (else all SYNs are counted)
    k, shared = _clock_groups(t_first, v_first, rate, span, t0)
    del t_first, v_first
    if off.any():
        k = _clusters(t, tsval, rate, span, t0)
    return fit_of(k, rate, n_tup, shared, int(dt.size), int(off.sum()), backwards, tuple(others))


def fit_of(k: int, rate: float, n_tup: int, shared: int, steps: int, n_off: int, backwards: int,
           others: tuple[float, ...]) -> ClockFit:
    """The ClockFit of these figures, with the evidence that separates hosts in words."""
    per_tuple = k > 1 and shared == 0
    why = []
    if shared >= 2:
        why.append(f"{shared} timestamp clocks each used by several 4-tuples (a host's clock each, or "
                   "one connection's, moved to other ports by a NAT)")
    if n_off >= 2:
        why.append(f"{n_off:,} of {steps:,} reconnections on one 4-tuple left that 4-tuple's clock"
                   + (f" ({backwards:,} went backwards)" if backwards else "")
                   + ": another host, or another source port a NAT translated onto it")
    if others:
        why.append("clocks ticking at different rates (" + ", ".join(f"{r:g}" for r in (rate, *others)) + " Hz)")
    return ClockFit(k, rate, n_tup, shared, per_tuple, steps, n_off, backwards, others, bool(why), "; ".join(why))


def _clock_groups(t: np.ndarray, tsval: np.ndarray, rate: float, span: float, t0: float) -> tuple[int, int]:
    """(clocks, clocks holding SHARED_MIN or more) of SYNs that are one per 4-tuple."""
    off = np.sort(np.mod(tsval.astype(np.float64) - rate * (t - t0), 2.0**32))
    tol = _tol(rate, span)
    cid = np.r_[0, np.cumsum(np.diff(off) > tol)]
    if cid[-1] > 0 and (off[0] + 2.0**32 - off[-1]) <= tol:
        cid[cid == cid[-1]] = 0  # the first and last cluster meet across the wrap
    size = np.bincount(cid)
    return int(np.count_nonzero(size)), int((size >= SHARED_MIN).sum())


def peak_rate(t: np.ndarray, mean: float) -> float:
    """Attempts per second in the busiest window of one second that starts at an attempt
    (a window as long as the capture when it is shorter, so that the peak of a 0.4 s
    capture is its rate, not the count of a calendar second). The mean counts the span
    between the first and last attempt, which a window may not reach at the edges of a
    sparse capture; the peak is then the mean. (Windows looked up ROW_BLOCK at a time.)"""
    if t.size == 0:
        return 0.0
    ts = np.sort(t)
    span = float(ts[-1] - ts[0])
    w = min(1.0, span) if span > 0 else 1.0
    best = 0
    for sl in row_blocks(ts.size):
        ends = np.searchsorted(ts, ts[sl] + w, side="right")
        best = max(best, int((ends - np.arange(sl.start, sl.stop)).max()))
    return round(max(best / w, mean), 3)


def _port_pattern(dest: str, t: np.ndarray, port: np.ndarray) -> PortPattern:
    """Rows in time order. The cycle is the time between successive uses of one port.
    (Ports are taken as 16-bit values: the temporaries are a quarter of int64 ones.)"""
    port = np.asarray(port).astype(np.uint16, copy=False)
    n = port.size
    counts = np.bincount(port, minlength=65536)
    distinct = int(np.count_nonzero(counts))
    del counts
    even = float(np.mean((port & 1) == 0)) if n else 0.0
    o = np.argsort(port, kind="stable")  # by port, time order kept
    ps = port[o]
    same = ps[1:] == ps[:-1]
    del ps
    ts_ = t[o]
    del o
    cyc = (ts_[1:] - ts_[:-1])[same]
    del ts_
    reuses = int(same.sum())
    del same
    if n < 3:
        return PortPattern(dest, n, distinct, int(port.min()) if n else 0, int(port.max()) if n else 0,
                           "too few", None, 0.0, even, None, None, reuses)
    d = np.diff(port).view(np.int16)  # the step mod 65536, in -32768..32767
    fwd = (d > 0) & (d <= 16)
    seq_share = float(np.mean(fwd))
    med = int(median(d[fwd])) if fwd.any() else None
    return PortPattern(
        destination=dest,
        attempts=n,
        distinct_ports=distinct,
        port_min=int(port.min()),
        port_max=int(port.max()),
        pattern="sequential" if seq_share >= 0.6 else "random",
        median_step=med,
        sequential_share=round(seq_share, 4),
        even_share=round(even, 4),
        cycle_median_s=round(median(cyc), 3) if cyc.size else None,
        cycle_min_s=round(float(cyc.min()), 3) if cyc.size else None,
        reuses=reuses,
    )


def source_stats(a: Attempts, addr: Any) -> list[SourceStats]:
    """Stats per client address, busiest first. `addr(key) -> str` formats addresses.

    The attempts are counted per client a block of rows at a time. A client with more
    than :data:`.bigclients.BIG_CLIENT` attempts is analysed from its attempts streamed
    in capture and time order, with state per server, destination, 4-tuple and port
    (:func:`.bigclients.big_client_stats`, the same figures). The others' rows are
    grouped by client ROW_BLOCK rows at a time (row numbers only, in 32 bits when they
    fit); each client's rows are then put in capture order (equal SYN times keep the
    order they were captured in) and analysed by themselves, so what is held at once is
    one client's rows and their temporaries."""
    n = len(a)
    counts: dict[int, int] = {}
    for sl in row_blocks(n):
        bk, c = distinct_counts(a["orig"][sl][np.asarray(a["is_attempt"][sl])])
        for k, x in zip(bk.tolist(), c.tolist(), strict=True):
            counts[k] = counts.get(k, 0) + x
    if not counts:
        return []
    keys = sorted(counts)
    order = sorted(range(len(keys)), key=lambda i: -counts[keys[i]])  # busiest first, then by key
    detail = {keys[i]: rank < DETAIL_LIMIT and counts[keys[i]] >= DETAIL_MIN for rank, i in enumerate(order)}
    from .bigclients import BIG_CLIENT, big_client_stats

    big = {k: d for k, d in detail.items() if counts[k] > BIG_CLIENT}
    streamed = big_client_stats(a, big, addr) if big else {}
    idx = np.int32 if n < (1 << 31) else np.int64
    parts: dict[int, list[np.ndarray]] = {}
    big_keys = np.asarray(sorted(big), dtype=np.uint64)
    for sl in row_blocks(n) if len(big) < len(counts) else ():
        m = np.flatnonzero(a["is_attempt"][sl])
        src = a["orig"][sl][m]
        if big:
            small = ~np.isin(src, big_keys)
            m, src = m[small], src[small]
        if not m.size:
            continue
        bk, inv = np.unique(src, return_inverse=True)
        del src
        inv = inv.ravel()
        o = np.argsort(inv, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=bk.size))]
        rows = (m[o] + sl.start).astype(idx)
        del m, o, inv
        for i, k in enumerate(bk.tolist()):
            parts.setdefault(k, []).append(rows[bounds[i]:bounds[i + 1]].copy())
        del rows
    out: list[SourceStats] = []
    for i in order:
        k = keys[i]
        if k in streamed:
            out.append(streamed.pop(k))
            continue
        pl = parts.pop(k)
        rows = pl[0] if len(pl) == 1 else np.concatenate(pl)
        del pl
        rows = rows[capture_order(a["pkt"][rows])]
        out.append(_one_source(a, rows, addr, detail=detail[k]))
        del rows
    return out


def _one_source(a: Attempts, rows: np.ndarray, addr: Any, detail: bool) -> SourceStats:
    """One client's statistics from its attempt rows (capture order); each column is
    read for these rows when needed and let go after."""
    t = a["t_syn"][rows]
    n = rows.size
    t0, t1 = float(t.min()), float(t.max())
    span = t1 - t0
    peak = peak_rate(t, n / span if span > 0 else float(n))
    retried = a["n_syn"][rows] > 1
    gap = (a["t_syn2"][rows[retried]] - t[retried]) * 1000
    del t
    has_ts = a["syn_has_ts"][rows]
    n_ts = int(has_ts.sum())
    age = a["reuse_age_s"][rows]
    server_tw = (a["prev_tw"][rows] == 2) & (age < 60)
    del age
    s = SourceStats(
        addr=addr(a["orig"][rows[0]]),
        attempts=int(n),
        servers=int(distinct(a["resp"][rows]).size),
        syn_with_ts=n_ts,
        syn_without_ts=int(n - n_ts),
        rate_per_s=round(n / span, 3) if span > 0 else float(n),
        peak_per_s=peak,
        span_s=round(span, 3),
        answers=_counts(a["answer"][rows], ANSWERS),
        states=_counts(a["conn_state"][rows], CONN_STATES),
        reused=int((a["prev"][rows] >= 0).sum()),
        reused_server_tw=int(server_tw.sum()),
        syn_retried=int(retried.sum()),
        first_retry_ms_median=round(median(gap), 1) if gap.size else None,
    )
    del server_tw, retried, gap
    if not detail:
        return s
    # timestamp clocks per server address: the pair with separating evidence, else the most clocks
    tsr = rows[has_ts]
    del has_ts
    if tsr.size:
        best: ClockFit | None = None
        resp = a["resp"][tsr]
        pairs = [(dst, tsr[resp == dst]) for dst in distinct(resp).tolist()]
        del resp, tsr
        while pairs:
            _dst, r = pairs.pop(0)
            tup = a["orig_port"][r].astype(np.uint32)  # the 4-tuple of a pair: its two ports
            tup <<= 16
            tup |= a["resp_port"][r].astype(np.uint32)
            fit = clock_fit(a["t_syn"][r], a["syn_tsval"][r], tup)
            del tup, r
            if best is None or (fit.nat, fit.clocks) > (best.nat, best.clocks):
                best = fit
        assert best is not None
        s.ts_clocks, s.ts_rate_hz = best.clocks, best.rate
        s.ts_per_connection = best.per_tuple
        s.ts_nat, s.ts_evidence = best.nat, best.why
        s.ts_shared_clocks, s.ts_reconnects, s.ts_off_clock = best.shared, best.steps, best.off_clock
        s.ts_note = _ts_note(s)
    else:
        del tsr
    # port patterns per destination
    dkey = a["resp"][rows].astype(np.uint64) << np.uint64(16) | a["resp_port"][rows].astype(np.uint64)
    dests = [(dk, rows[dkey == dk]) for dk in distinct(dkey).tolist()]
    del dkey
    while dests:
        dk, r = dests.pop(0)
        if r.size < DETAIL_MIN:
            continue
        r = r[time_order(a["t_syn"][r])]
        dest = f"{addr(dk >> 16)}:{dk & 0xFFFF}"
        s.ports.append(_port_pattern(dest, a["t_syn"][r], a["orig_port"][r]))
        del r
    s.ports.sort(key=lambda p: -p.attempts)
    del s.ports[5:]
    return s


def _ts_note(s: SourceStats) -> str:
    if s.ts_clocks is None:
        return ""
    if s.ts_nat:
        return f"NAT: several hosts share this address (or a NAT translates their ports): {s.ts_evidence}"
    checked = (f"; {s.ts_reconnects:,} reconnections on one 4-tuple kept that 4-tuple's clock"
               if s.ts_reconnects else "")
    if s.ts_per_connection:
        return (f"TSval offsets differ per 4-tuple ({s.ts_clocks:,} clocks, one per 4-tuple: Linux 4.10, or "
                "kernels with the 2026 per-4-tuple offsets, 7.0 and stable backports): this can be one "
                f"host, and nothing here separates hosts{checked}")
    if s.ts_clocks <= 1:
        return "one timestamp clock: one host (or hosts whose offsets agree)" + checked
    return (f"{s.ts_clocks} timestamp clocks, but nothing separates hosts (fewer than two clocks used "
            f"by several 4-tuples){checked}")


def server_stats(a: Attempts, addr: Any) -> list[ServerStats]:
    """Stats per server (address, port), busiest first: counts, the first and last
    answer, distinct clients — aggregates, so the table is read ROW_BLOCK rows at a time."""
    cnt_names = ("attempts", "answered", "refused", "old_ack", "unanswered", "syn_retried", "synack_retransmits",
                 "established")
    keys = np.zeros(0, dtype=np.uint64)
    cnt = np.zeros((len(cnt_names), 0), dtype=np.int64)
    t_first = np.zeros(0)
    t_last = np.zeros(0)
    clients: dict[int, np.ndarray] = {}
    for sl in row_blocks(len(a)):
        m = np.flatnonzero(a["is_attempt"][sl])
        if not m.size:
            continue
        key = a["resp"][sl][m].astype(np.uint64) << np.uint64(16) | a["resp_port"][sl][m].astype(np.uint64)
        bk, inv = np.unique(key, return_inverse=True)
        del key
        inv = inv.ravel()
        new = distinct(np.concatenate([keys, bk]))  # the keys so far and this block's, sorted
        if new.size > keys.size:  # widen the tallies to the new keys
            at = np.searchsorted(new, keys)
            grow = np.zeros((len(cnt_names), new.size), dtype=np.int64)
            grow[:, at] = cnt
            f, la = np.full(new.size, np.inf), np.full(new.size, -np.inf)
            f[at], la[at] = t_first, t_last
            keys, cnt, t_first, t_last = new, grow, f, la
        g = np.asarray(np.searchsorted(keys, bk))[inv]  # each row's server
        k = keys.size
        an = a["answer"][sl][m]
        t_ok = a["t_synack"][sl][m]
        ok = ~np.isnan(t_ok)
        for j, sel in enumerate((None, ok, an == ANSWERS.index("rst"), an == ANSWERS.index("old_ack"),
                                 an == ANSWERS.index("none"), a["n_syn"][sl][m] > 1, a["n_synack"][sl][m] > 1,
                                 a["established"][sl][m])):
            cnt[j] += np.bincount(g if sel is None else g[sel], minlength=k)
        np.minimum.at(t_first, g[ok], t_ok[ok])
        np.maximum.at(t_last, g[ok], t_ok[ok])
        del an, t_ok, ok
        orig = a["orig"][sl][m]
        o = np.lexsort((orig, g))
        go, oo = g[o], orig[o]
        first = np.r_[True, (go[1:] != go[:-1]) | (oo[1:] != oo[:-1])]
        go, oo = go[first], oo[first]
        starts = np.flatnonzero(np.r_[True, go[1:] != go[:-1]])
        for gi, part in zip(go[starts].tolist(), np.split(oo, starts[1:]), strict=True):
            kk = int(keys[gi])
            have = clients.get(kk)
            clients[kk] = part if have is None else distinct(np.concatenate([have, part]))
    out = []
    for i, kk in enumerate(keys.tolist()):
        c = {name: int(cnt[j, i]) for j, name in enumerate(cnt_names)}
        answered = c["answered"] > 0
        out.append(ServerStats(
            addr=addr(kk >> 16),
            port=kk & 0xFFFF,
            clients=int(clients[kk].size),
            first_answered_t=float(t_first[i]) if answered else None,
            last_answered_t=float(t_last[i]) if answered else None,
            **c,
        ))
    out.sort(key=lambda s: -s.attempts)
    return out
