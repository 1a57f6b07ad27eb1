"""From TCP segments to connection attempts, for all flows at once.

1. Packets are grouped by 4-tuple (both directions together) with one stable sort on a
   64-bit hash of the ordered endpoint pair, so within a flow they stay in time order.
2. A flow is cut into *segments*: a SYN starts a new attempt unless it repeats the
   previous SYN of the flow (same direction, same sequence number: a retransmission);
   a SYN-ACK with a new sequence number starts one too (its SYN was not captured), and
   packets before a flow's first SYN form a segment of their own (midstream traffic).
   A segment that opens with a SYN is an *attempt*: "a SYN and what followed".
3. Everything per attempt (first SYN, retransmissions, the answer, SYN-ACK, who closed,
   sequence and timestamp state at the end) is a reduction over the segment's packets
   (`np.minimum.reduceat` and friends) — no loop over packets or attempts.

Roles follow Zeek: the originator sent the SYN (or, if the SYN is missing, received the
SYN-ACK). "client" and "server" in the output mean originator and responder.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from . import backend, zeek
from .decode import ACK, FIN, RST, SYN, Packets

K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xC2B2AE3D27D4EB4F)
BIG = np.iinfo(np.int64).max
LOW = -(1 << 40)  # sequence end of packets outside their connection's sequence space
EARLY_STEPS = 8  # responder packets stepped through Zeek's machine before it answers

# answer to the attempt's SYNs (first packet back from the responder)
ANSWERS = ("none", "synack", "rst", "old_ack", "other")
A_NONE, A_SYNACK, A_RST, A_OLD_ACK, A_OTHER = range(5)
# who: originator / responder
WHO = ("", "client", "server")
W_NONE, W_ORIG, W_RESP = range(3)
CLOSES = ("", "fin", "rst")


@dataclass
class Attempts:
    """Per-segment columns (numpy arrays of equal length) plus Zeek histories.

    Row order: by flow, then time. `is_attempt` marks segments that began with a SYN.
    """

    cols: MutableMapping[str, np.ndarray] = field(default_factory=dict)  # or a spill.ColumnStore
    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="S1"))  # Zeek history, bytes

    def __len__(self) -> int:
        return int(self.cols["t_start"].shape[0]) if self.cols else 0

    def __getitem__(self, k: str) -> np.ndarray:
        return self.cols[k]

    def __setitem__(self, k: str, v: np.ndarray) -> None:
        self.cols[k] = v

    def take(self, idx: np.ndarray) -> Attempts:
        return Attempts({k: v[idx] for k, v in self.cols.items()}, self.history[idx])

    def history_str(self) -> list[str]:
        return [b.decode("ascii") for b in self.history.tolist()]


ROW_BLOCK = 1 << 20  # attempt rows a pass over the whole table (counts, statistics) reads at once


def row_blocks(n: int, step: int | None = None) -> Iterator[slice]:
    """Slices of rows 0..n-1, ROW_BLOCK (or `step`) at a time: a pass that reads the
    attempt table block by block holds a block's temporaries, and of a table in files
    (spill.ColumnStore) only a block's pages."""
    step = step or ROW_BLOCK
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def distinct(a: np.ndarray) -> np.ndarray:
    """np.unique(a) for plain arrays: the distinct values, sorted. np.unique asks
    whether `a` is a masked array, which imports numpy.ma (~10 ms of a command's start)."""
    s = np.sort(a, axis=None)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def distinct_counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, sorted; how many times each occurs), without np.unique (see
    :func:`distinct`)."""
    s = np.sort(a, axis=None)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, dtype=np.int64)
    return s[starts], np.diff(np.r_[starts, s.size])


def median(a: np.ndarray) -> float:
    """float(np.median(a)) of a non-empty 1-D array, without np.median's masked-array
    check (which imports numpy.ma): the middle value, or the mean of the two middle ones.
    np.partition places them as a sort would, in linear time (as np.median does): a full
    sort of a 124k-attempt client's port cycle times was ~5 ms of the per-client stage."""
    v = a.ravel()
    if v.dtype.kind in "fc" and np.isnan(v).any():
        return float("nan")
    k = v.size // 2
    if v.size % 2:
        return float(np.partition(v, k)[k])
    s = np.partition(v, (k - 1, k))
    return float((np.float64(s[k - 1]) + np.float64(s[k])) / 2)


def percentile(a: np.ndarray, q: float) -> float:
    """float(np.percentile(a, q)) of a non-empty 1-D array without NaN, without
    np.percentile's call of np.unique (which imports numpy.ma): numpy's "linear" method,
    interpolated the way numpy does (from the nearer neighbour) so the figures agree."""
    s = np.sort(a.ravel()).astype(np.float64)
    idx = (s.size - 1) * (q / 100)
    lo = int(idx)
    hi = min(lo + 1, s.size - 1)
    t = idx - lo
    d = s[hi] - s[lo]
    return float(s[hi] - d * (1 - t) if t >= 0.5 else s[lo] + d * t)


def _shift(a: np.ndarray, fill: Any) -> np.ndarray:
    """a[i-1] at i (fill at 0)."""
    out = np.empty_like(a)
    if a.size:
        out[0] = fill
        out[1:] = a[:-1]
    return out


def _radix_order(key: np.ndarray, bits: int) -> np.ndarray:
    """Stable argsort on the low `bits` of an unsigned `key`, 16 bits per pass (numpy
    sorts 16-bit keys with a radix sort, so each pass is linear)."""
    words = None
    if key.dtype.byteorder in "=|<" and sys.byteorder == "little" and key.dtype.itemsize % 2 == 0 \
            and key.flags.c_contiguous and key.ndim == 1:
        words = key.view(np.uint16).reshape(key.size, key.dtype.itemsize // 2)  # the 16-bit digits, as views
    order = np.argsort(key.astype(np.uint16), kind="stable")
    for shift in range(16, bits, 16):
        if words is not None:
            dg = words[:, shift // 16][order]
        else:
            dg = (key >> key.dtype.type(shift)).astype(np.uint16)[order]
        order = order[np.argsort(dg, kind="stable")]
        del dg
    return order


def capture_order(pkt: np.ndarray) -> np.ndarray:
    """Stable argsort of packet-table rows (non-negative int64), in 16-bit radix passes:
    the order events were captured in, which breaks ties between equal times the way
    the kernel saw them (and independently of how flows happen to be hashed)."""
    top = int(pkt.max()) if pkt.size else 0
    # non-negative: int64 rows as uint64 are the same bits; unsigned keys are taken as they are
    key = pkt.view(np.uint64) if pkt.dtype == np.int64 else pkt if pkt.dtype.kind == "u" else pkt.astype(np.uint64)
    return _radix_order(key, max(16, top.bit_length()))


def time_order(t: np.ndarray) -> np.ndarray:
    """Stable argsort of float64 times (no NaN), as linear 16-bit radix passes over
    the IEEE bits made order-preserving; digits equal for all times are skipped (the
    high ones of epoch times within one capture). numpy's stable sort of floats is a
    comparison sort, about twice as slow."""
    b = (t.astype(np.float64) + 0.0).view(np.uint64)  # + 0.0: -0.0 becomes 0.0, as comparisons see it
    neg = (b >> np.uint64(63)).astype(bool)
    if neg.any():  # negative: flip every bit; positive: flip the sign bit
        b = np.where(neg, ~b, b | np.uint64(1 << 63))
    order = np.arange(t.size, dtype=np.int64)
    for shift in range(0, 64, 16):
        dg = (b >> np.uint64(shift)).astype(np.uint16)
        if t.size and dg.min() == dg.max():
            continue
        order = order[np.argsort(dg[order], kind="stable")]
    return order


def _flow_hash(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """32 well-mixed bits of the endpoint pair (a module function so tests can make it
    collide on purpose)."""
    h = lo * K1 + (hi ^ (hi >> np.uint64(29))) * K2
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(32)).astype(np.uint32)


def flow_order(p: Packets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(permutation into flow order, flow-start mask in that order, direction per packet,
    time stamps in that order).

    Packets of one flow end up contiguous and in time order. Direction 0 means the
    packet goes from the lower (address, port) endpoint to the higher one. Flows are
    grouped by a 32-bit hash (two linear 16-bit passes); the endpoint pairs are then
    compared exactly, and hash groups holding several flows are sorted apart (in C:
    grouped exactly by a hash table, flows then sorted by (hash, endpoints): the same
    order)."""
    return backend.ACTIVE.flow_order(p)


def _flow_order_numpy(p: Packets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The reference of :func:`flow_order`."""
    n = len(p)
    e_src = (p.src << np.uint64(16)) | p.sport.astype(np.uint64)
    e_dst = (p.dst << np.uint64(16)) | p.dport.astype(np.uint64)
    pair = np.empty((n, 2), dtype=np.uint64)
    lo, hi = pair[:, 0], pair[:, 1]
    np.minimum(e_src, e_dst, out=lo)
    np.maximum(e_src, e_dst, out=hi)
    d = (e_src > e_dst).astype(np.int8)
    del e_src, e_dst
    h = _flow_hash(lo, hi)
    order = _radix_order(h, 32)
    pairs = pair.view("V16").ravel()  # both halves in one gather

    def starts(order: np.ndarray) -> np.ndarray:
        ps = pairs[order].view(np.uint64)
        return np.r_[True, (ps[2::2] != ps[:-2:2]) | (ps[3::2] != ps[1:-2:2])]

    fstart = starts(order)
    hs = h[order]
    gstart = np.r_[True, hs[1:] != hs[:-1]]
    if int(np.count_nonzero(fstart)) != int(np.count_nonzero(gstart)):
        # some hash groups hold several flows, maybe interleaved: sort those groups by
        # (group, endpoints, position), which keeps each group in its place and time order
        gid = np.cumsum(gstart) - 1
        aff = np.flatnonzero(np.isin(gid, gid[fstart & ~gstart]))
        oa = order[aff]
        order[aff] = oa[np.lexsort((aff, hi[oa], lo[oa], gid[aff]))]
        fstart = starts(order)
    # capture order is time order except across CPUs/interfaces; repair within flows
    ts_o = p.ts[order]
    back = np.flatnonzero((ts_o[1:] < ts_o[:-1]) & ~fstart[1:])
    if back.size:
        flow_id = np.cumsum(fstart) - 1
        bad_flows = distinct(flow_id[back])
        aff = np.flatnonzero(np.isin(flow_id, bad_flows))
        sub = np.lexsort((ts_o[aff], flow_id[aff]))
        order[aff] = order[aff][sub]
        ts_o[aff] = ts_o[aff][sub]
    return order, fstart, d, ts_o


C_HASH_MASK = 0xFFFFFFFF  # tests narrow it to make the C path's flow hashes collide


def _segment_starts(fstart: np.ndarray, flow_id: np.ndarray, pos: np.ndarray, syn: np.ndarray,
                    synack: np.ndarray, d: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """Where segments start (packets in flow order): at a flow's first packet, at a SYN
    that does not repeat the flow's previous SYN (same direction and sequence number),
    and at a SYN-ACK with a new sequence number since the last SYN (its SYN was not
    captured). A function of its own so that its temporaries go when it returns."""
    flow_first = np.flatnonzero(fstart)[flow_id]
    last_syn = np.maximum.accumulate(np.where(syn, pos, -1))
    prev_syn = _shift(last_syn, -1)
    in_flow = prev_syn >= flow_first
    ps = np.maximum(prev_syn, 0)
    new_syn = syn & (~in_flow | (d[ps] != d) | (seq[ps] != seq))
    del prev_syn, in_flow, ps
    last_sa = np.maximum.accumulate(np.where(synack, pos, -1))
    prev_sa = _shift(last_sa, -1)
    del last_sa
    scope = np.maximum(last_syn, flow_first)
    sa_in_scope = prev_sa >= scope
    del scope
    pa = np.maximum(prev_sa, 0)
    del prev_sa
    same_sa = sa_in_scope & (seq[pa] == seq) & (d[pa] == d)
    del pa
    had_syn = last_syn >= flow_first
    new_sa = synack & ~same_sa & np.where(had_syn, sa_in_scope, True)
    return fstart | new_syn | new_sa


def build(p: Packets) -> tuple[Attempts, np.ndarray, np.ndarray]:
    """Attempts of a packet table. Also returns the flow-order permutation of the
    packets and the first packet (in that order) of each segment."""
    n = len(p)
    if n == 0:
        return Attempts(cols=_empty_cols()), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order, fstart, d_all, ts_o = flow_order(p)
    # only the columns needed per packet are put in flow order; the rest is read
    # through `order` at the few positions that matter (segment starts, first SYNs)
    q = _FlowCols(p, order, ts_o)
    del ts_o
    d = d_all[order]
    del d_all
    facts = segment_facts(q, d, fstart)
    del fstart
    att = _attempt_columns(p, q, order, d, facts)
    return att, order, facts.starts


@dataclass
class SegFacts:
    """Per-segment reductions over the packets (positions in flow order; a missing
    "first" packet is BIG, a missing "last" one -1), from which the attempt columns
    are read. Two implementations give these: numpy over whole columns
    (:func:`_facts_numpy`, the reference) and one C pass (:func:`_facts_c`)."""

    starts: np.ndarray  # first packet of each segment
    flow: np.ndarray  # flow number of each segment
    first_syn: np.ndarray  # the originator's SYNs: first, second, last, count
    second_syn: np.ndarray
    last_syn: np.ndarray
    n_syn: np.ndarray
    ans: np.ndarray  # first responder packet after the first SYN
    first_sa: np.ndarray  # the responder's SYN-ACKs: first, count
    n_synack: np.ndarray
    established: np.ndarray  # the originator ACKed after a SYN-ACK
    n_old_ack: np.ndarray  # responder bare ACKs before the SYN-ACK not acking the ISN
    n_rst_o_pre: np.ndarray  # originator RSTs before the SYN-ACK
    first_fin_o: np.ndarray  # first FIN (without RST) per side
    first_fin_r: np.ndarray
    first_rst_o: np.ndarray  # first RST per side after the SYN-ACK
    first_rst_r: np.ndarray
    first_term: np.ndarray  # first FIN or RST (after the SYN-ACK if there is one)
    last_ts_o: np.ndarray  # last packet with a timestamp option per side
    last_ts_r: np.ndarray
    orig_end_seq: np.ndarray  # uint32: where each side's sequence space ended (0: none)
    resp_end_seq: np.ndarray
    orig_bytes: np.ndarray
    resp_bytes: np.ndarray
    joint: np.ndarray  # Zeek endpoint states, originator * 8 + responder
    completeness: np.ndarray  # tshark's tcp.completeness bits
    history: np.ndarray  # Zeek history strings (S<n>)


def segment_facts(q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
    """Per-segment facts, by the active backend (numpy or C: the same results)."""
    return backend.ACTIVE.segment_facts(q, d, fstart)


def _facts_c(lib: Any, q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
    """SegFacts from ``_ccap.segment_facts``: one C pass over the packets in flow order,
    reading the capture-order columns through the flow order and writing int64
    columns."""
    p = q.p
    c = np.ascontiguousarray
    _nseg, cols, letters = lib.segment_facts(
        c(q.order, dtype=np.int64), c(fstart, dtype=bool), c(d, dtype=np.int8), c(p.flags, dtype=np.uint8),
        c(p.seq, dtype=np.uint32), c(p.ack, dtype=np.uint32), c(p.plen, dtype=np.int32), c(p.has_ts, dtype=bool),
        c(p.win, dtype=np.uint16), zeek.table())
    (starts, flow, first_syn, second_syn, last_syn, n_syn, ans, first_sa, n_synack, n_old_ack, n_rst_o_pre,
     fin_o, fin_r, rst_o, rst_r, term, ts_o, ts_r, obytes, rbytes, hlen, end_o, end_r, state) = (
        np.frombuffer(x, dtype=np.int64) for x in cols)
    return SegFacts(
        starts=starts, flow=flow, first_syn=first_syn, second_syn=second_syn, last_syn=last_syn, n_syn=n_syn,
        ans=ans, first_sa=first_sa, n_synack=n_synack, established=(state >> 12) & 1 == 1, n_old_ack=n_old_ack,
        n_rst_o_pre=n_rst_o_pre, first_fin_o=fin_o, first_fin_r=fin_r, first_rst_o=rst_o, first_rst_r=rst_r,
        first_term=term, last_ts_o=ts_o, last_ts_r=ts_r, orig_end_seq=end_o.astype(np.uint32),
        resp_end_seq=end_r.astype(np.uint32), orig_bytes=obytes, resp_bytes=rbytes,
        joint=(state & 63).astype(np.uint8), completeness=((state >> 6) & 63).astype(np.int8),
        history=zeek.strings(np.frombuffer(letters, dtype=np.uint8), hlen),
    )


def _facts_numpy(q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
    n = q.flags.size
    pos = np.arange(n, dtype=np.int64)
    flow_id = np.cumsum(fstart) - 1
    f = q.flags
    cls = f & (SYN | ACK | RST)
    syn = cls == SYN
    synack = cls == (SYN | ACK)
    seg_start = _segment_starts(fstart, flow_id, pos, syn, synack, d, q.seq)
    starts = np.flatnonzero(seg_start)
    nseg = starts.size
    seg = np.cumsum(seg_start) - 1
    del seg_start
    flow_of_seg = flow_id[starts]
    del flow_id

    # ---- roles ---------------------------------------------------------------------------
    first_cls = cls[starts]
    flipped = first_cls == (SYN | ACK)
    orig_dir = np.where(flipped, 1 - d[starts], d[starts])
    is_orig = d == orig_dir[seg]
    is_resp = ~is_orig

    # Per-segment first/last/count of a packet mask. Most masks are sparse (SYNs, FINs,
    # RSTs), so they work on the matching positions only; dense ones use reduceat.
    def first(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if idx.size > n // 4:
            return np.minimum.reduceat(np.where(mask, pos, BIG), starts)
        out = np.full(nseg, BIG, dtype=np.int64)
        s = seg[idx]
        keep = np.r_[True, s[1:] != s[:-1]] if idx.size else np.zeros(0, dtype=bool)
        out[s[keep]] = idx[keep]
        return out

    def last(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if idx.size > n // 4:
            return np.maximum.reduceat(np.where(mask, pos, -1), starts)
        out = np.full(nseg, -1, dtype=np.int64)
        s = seg[idx]
        keep = np.r_[s[1:] != s[:-1], True] if idx.size else np.zeros(0, dtype=bool)
        out[s[keep]] = idx[keep]
        return out

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(seg[np.flatnonzero(mask)], minlength=nseg).astype(np.int64)

    def at(idx: np.ndarray, col: np.ndarray, fill: Any) -> np.ndarray:
        ok = (idx >= 0) & (idx < n)
        return np.where(ok, col[np.where(ok, idx, 0)], fill)

    syn_o = syn & is_orig
    first_syn = first(syn_o)
    n_syn = count(syn_o)
    # the second SYN (first retransmission) of each attempt
    c_syn = np.cumsum(syn_o)
    base = _shift(c_syn, 0)[starts]
    second_syn = first(syn_o & ((c_syn - base[seg]) == 2))
    del c_syn
    last_syn_pos = last(syn_o)

    # ---- the answer: first packet from the responder after the first SYN --------------
    fs_b = np.where(first_syn < BIG, first_syn, n)[seg]
    ans = first(is_resp & (pos > fs_b))
    isn = at(first_syn, q.seq, 0).astype(np.uint32)
    synack_r = synack & is_resp
    first_sa = first(synack_r)
    sa_b = np.where(first_sa < BIG, first_sa, n)[seg]
    est_ack = first(is_orig & ((f & ACK) != 0) & ((f & (SYN | RST)) == 0) & (pos > sa_b))
    established = (first_sa < BIG) & (est_ack < BIG)
    # resp bare ACKs for an old connection before the SYN-ACK (TIME_WAIT / challenge ACKs)
    old_ack_pkt = is_resp & ((f & (SYN | RST | ACK)) == ACK) & (pos < sa_b) & (pos > fs_b)
    old_ack_pkt &= q.ack != (isn + np.uint32(1))[seg]
    n_old_ack = count(old_ack_pkt)
    del old_ack_pkt, fs_b
    rst_o = ((f & RST) != 0) & is_orig
    rst_r = ((f & RST) != 0) & is_resp
    fin_o = ((f & FIN) != 0) & is_orig & ~((f & RST) != 0)
    fin_r = ((f & FIN) != 0) & is_resp & ~((f & RST) != 0)
    n_rst_o_pre = count(rst_o & (pos < sa_b))  # client RSTs before the handshake completed
    first_fin_o = first(fin_o)
    first_fin_r = first(fin_r)
    after_sa = pos > sa_b
    first_rst_o = first(rst_o & after_sa)
    first_rst_r = first(rst_r & after_sa)
    n_synack = count(synack_r)
    del rst_o, rst_r, fin_o, fin_r

    # closing: the first FIN or RST after the SYN-ACK (for midstream segments: any)
    scope_close = np.where((first_sa < BIG)[seg], after_sa, True)
    term = ((f & (FIN | RST)) != 0) & scope_close
    first_term = first(term)
    del scope_close, term, after_sa

    # ---- sequence and timestamp state at the end ---------------------------------------
    is_rst = (f & RST) != 0
    seglen = (q.plen.astype(np.int64) + ((f & SYN) != 0) + ((f & FIN) != 0)) * ~is_rst
    # Each endpoint's sequence space starts at its SYN (SYN-ACK); before that, a
    # responder's packets (an ACK for an old connection) and any RST carry numbers of
    # another connection, so they do not count toward where this one ended.
    first_o = first(is_orig)
    first_r = first(is_resp)
    in_space = ~is_rst & (is_orig | (pos >= sa_b) | (first_sa == BIG)[seg])
    base_o = at(np.where(first_syn < BIG, first_syn, first_o), q.seq, 0).astype(np.uint32)
    base_r = at(np.where(first_sa < BIG, first_sa, first_r), q.seq, 0).astype(np.uint32)
    base_pkt = np.where(is_orig, base_o[seg], base_r[seg])
    end_rel = (q.seq - base_pkt).astype(np.int32).astype(np.int64)  # s32 distance
    del base_pkt
    end_rel += seglen
    del seglen
    end_rel[~in_space] = LOW  # numbers of another connection count for nothing
    end_o = np.maximum.reduceat(np.where(is_orig, end_rel, LOW), starts)
    end_r = np.maximum.reduceat(np.where(is_resp, end_rel, LOW), starts)
    orig_end_seq = np.where(end_o > LOW, (base_o.astype(np.int64) + end_o) & 0xFFFFFFFF, 0).astype(np.uint32)
    resp_end_seq = np.where(end_r > LOW, (base_r.astype(np.int64) + end_r) & 0xFFFFFFFF, 0).astype(np.uint32)
    ts_o = is_orig & q.has_ts
    ts_r = is_resp & q.has_ts
    last_ts_o = last(ts_o)
    last_ts_r = last(ts_r)
    del ts_o, ts_r, sa_b
    orig_bytes = np.add.reduceat(np.where(is_orig, q.plen, 0).astype(np.int64), starts)
    resp_bytes = np.add.reduceat(np.where(is_resp, q.plen, 0).astype(np.int64), starts)

    # ---- Zeek ----------------------------------------------------------------------------
    has_data = q.plen > 0
    ctrl = (f & (SYN | FIN | RST)) != 0
    # packets that can change a Zeek endpoint state: control packets, each endpoint's
    # first packet, and responder packets while it may still be "inactive"
    first_or = np.zeros(n, dtype=bool)
    fo = first_o[first_o < BIG]
    fr_ = first_r[first_r < BIG]
    first_or[fo] = True
    first_or[fr_] = True
    r_ctrl_first = first(is_resp & (ctrl | has_data))
    early = np.flatnonzero(is_resp & (pos <= np.where(r_ctrl_first < BIG, r_ctrl_first, n)[seg]))
    early = early[_cumcount(seg[early]) <= EARLY_STEPS]  # a responder rarely ACKs more before answering
    stepped = ctrl | first_or
    stepped[early] = True
    si = np.flatnonzero(stepped)
    del stepped, first_or, early
    ev = zeek.event_code(is_orig[si], f[si], has_data[si])
    joint = zeek.run(seg[si], ev, nseg)
    # retransmission detection must not compare with numbers from another connection
    hist = zeek.histories(seg, is_orig, f, q.plen, q.seq, end_rel, q.win, nseg, flipped)
    del end_rel

    # tshark's tcp.completeness bits for the segment
    comp = (
        (count(syn) > 0) * 1
        + (count(synack) > 0) * 2
        + (count(((f & (SYN | RST | FIN)) == 0) & ((f & ACK) != 0)) > 0) * 4
        + (orig_bytes + resp_bytes > 0) * 8
        + (count((f & FIN) != 0) > 0) * 16
        + (count((f & RST) != 0) > 0) * 32
    )
    return SegFacts(
        starts=starts, flow=flow_of_seg, first_syn=first_syn, second_syn=second_syn, last_syn=last_syn_pos,
        n_syn=n_syn, ans=ans, first_sa=first_sa, n_synack=n_synack, established=established,
        n_old_ack=n_old_ack, n_rst_o_pre=n_rst_o_pre, first_fin_o=first_fin_o, first_fin_r=first_fin_r,
        first_rst_o=first_rst_o, first_rst_r=first_rst_r, first_term=first_term, last_ts_o=last_ts_o,
        last_ts_r=last_ts_r, orig_end_seq=orig_end_seq, resp_end_seq=resp_end_seq, orig_bytes=orig_bytes,
        resp_bytes=resp_bytes, joint=joint.astype(np.uint8), completeness=comp.astype(np.int8), history=hist,
    )


def _attempt_columns(p: Packets, q: _FlowCols, order: np.ndarray, d: np.ndarray, fa: SegFacts) -> Attempts:
    """The attempt columns from the per-segment facts (gathers at a few positions)."""
    n = order.size
    starts = fa.starts
    ends = np.r_[starts[1:], n]
    npk = ends - starts
    ts = q.ts
    nan = np.nan

    def at(idx: np.ndarray, col: np.ndarray, fill: Any) -> np.ndarray:
        ok = (idx >= 0) & (idx < n)
        return np.where(ok, col[np.where(ok, idx, 0)], fill)

    # ---- roles ---------------------------------------------------------------------------
    first_cls = q.at(starts, "flags", 0) & (SYN | ACK | RST)
    has_syn = first_cls == SYN
    flipped = first_cls == (SYN | ACK)
    orig_dir = np.where(flipped, 1 - d[starts], d[starts])
    # the originator's endpoint: the first packet's source, or destination if flipped
    first_pkt_src_is_orig = ~flipped
    ps_ = q.rows(starts)[1]
    src_, dst_, sport_, dport_ = p.src[ps_], p.dst[ps_], p.sport[ps_], p.dport[ps_]
    orig_addr = np.where(first_pkt_src_is_orig, src_, dst_)
    orig_port = np.where(first_pkt_src_is_orig, sport_, dport_)
    resp_addr = np.where(first_pkt_src_is_orig, dst_, src_)
    resp_port = np.where(first_pkt_src_is_orig, dport_, sport_)
    del src_, dst_, sport_, dport_

    first_syn = fa.first_syn
    t_syn = at(first_syn, ts, nan)
    # ---- the answer: first packet from the responder after the first SYN --------------
    ans = fa.ans
    ans_ok = ans < BIG
    af = q.at(ans, "flags", 0)
    isn = q.at(first_syn, "seq", 0).astype(np.uint32)
    ans_ack = q.at(ans, "ack", 0).astype(np.uint32)
    ack_ok = ans_ack == (isn + np.uint32(1))
    a_cls = np.full(starts.size, A_NONE, dtype=np.int8)
    a_cls[ans_ok] = A_OTHER
    a_cls[ans_ok & ((af & (SYN | ACK | RST)) == (SYN | ACK))] = A_SYNACK
    a_cls[ans_ok & ((af & RST) != 0)] = A_RST
    a_cls[ans_ok & ((af & (SYN | RST | ACK)) == ACK) & ~ack_ok] = A_OLD_ACK
    a_cls[first_syn == BIG] = A_NONE

    # closing: the first FIN or RST after the SYN-ACK (for midstream segments: any)
    first_term = fa.first_term
    term_ok = first_term < BIG
    tf = q.at(first_term, "flags", 0)
    close = np.where(~term_ok, 0, np.where((tf & RST) != 0, 2, 1)).astype(np.int8)
    term_by_orig = at(first_term, d, -1) == orig_dir
    closed_by = np.where(~term_ok, W_NONE, np.where(term_by_orig, W_ORIG, W_RESP)).astype(np.int8)
    both_fin = (fa.first_fin_o < BIG) & (fa.first_fin_r < BIG)
    tw_holder = np.where(both_fin, np.where(fa.first_fin_o < fa.first_fin_r, W_ORIG, W_RESP), W_NONE).astype(np.int8)
    tw_enter = np.maximum(fa.first_fin_o, fa.first_fin_r)
    t_tw_enter = np.where(both_fin, at(tw_enter, ts, nan), nan)

    hist = fa.history
    cstate = zeek.conn_state(fa.joint // 8, fa.joint % 8, fa.orig_bytes, fa.resp_bytes, hist)
    got_syn, fsyn = q.rows(first_syn)  # first_syn is BIG or a position
    syn_idx = np.where(got_syn, fsyn, ps_)
    last_ts_o = fa.last_ts_o
    cols: dict[str, np.ndarray] = {
        "flow": fa.flow,
        "first_pos": starts,
        "packets": npk,
        "is_attempt": has_syn,
        "flipped": flipped,
        "t_start": ts[starts],
        "t_end": ts[ends - 1],
        "t_syn": t_syn,
        "t_syn2": at(fa.second_syn, ts, nan),
        "t_syn_last": np.where(fa.last_syn >= 0, at(fa.last_syn, ts, nan), nan),
        "n_syn": fa.n_syn,
        "orig": orig_addr,
        "orig_port": orig_port.astype(np.int32),
        "resp": resp_addr,
        "resp_port": resp_port.astype(np.int32),
        "isn": isn,
        "frame": p.frame[syn_idx],
        "file": p.file[syn_idx],
        "pkt": syn_idx,  # capture order (row in the packet table) of that packet
        "pkt_tw_enter": np.where(both_fin, order[np.where(both_fin, tw_enter, 0)], -1),
        "syn_has_ts": q.at(first_syn, "has_ts", False),
        "syn_tsval": q.at(first_syn, "tsval", 0).astype(np.uint32),
        "syn_mss": np.where(got_syn, p.mss[fsyn], 0).astype(np.int32),
        "syn_wscale": np.where(got_syn, p.wscale[fsyn], -1).astype(np.int16),
        "syn_sackok": np.where(got_syn, p.sackok[fsyn], False),
        "answer": a_cls,
        "t_answer": at(ans, ts, nan),
        "t_synack": at(fa.first_sa, ts, nan),
        "synack_has_ts": q.at(fa.first_sa, "has_ts", False),
        "n_synack": fa.n_synack,
        "n_old_ack": fa.n_old_ack,
        "n_rst_orig_pre": fa.n_rst_o_pre,
        "established": fa.established,
        "orig_bytes": fa.orig_bytes,
        "resp_bytes": fa.resp_bytes,
        "close": close,
        "closed_by": closed_by,
        "t_close": at(first_term, ts, nan),
        "t_rst_orig": at(fa.first_rst_o, ts, nan),
        "t_rst_resp": at(fa.first_rst_r, ts, nan),
        "tw_holder": tw_holder,
        "t_tw_enter": t_tw_enter,
        "orig_end_seq": fa.orig_end_seq,
        "resp_end_seq": fa.resp_end_seq,
        "orig_last_tsval": q.at(last_ts_o, "tsval", 0).astype(np.uint32),
        "t_orig_last_ts": at(last_ts_o, ts, nan),
        "orig_ts_seen": last_ts_o >= 0,
        "resp_last_tsval": q.at(fa.last_ts_r, "tsval", 0).astype(np.uint32),
        "conn_state": cstate,
        "completeness": fa.completeness,
    }
    return Attempts(cols=cols, history=hist)


class _FlowCols:
    """The per-packet columns the attempt reductions read, in flow order. Each is
    gathered on first use (the C pass needs fewer of them); `at` reads one at a
    few positions without gathering the whole column."""

    def __init__(self, p: Packets, order: np.ndarray, ts: np.ndarray) -> None:
        self.p = p
        self.order = order
        self.ts = ts
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @cached_property
    def flags(self) -> np.ndarray:
        return self.p.flags[self.order]

    @cached_property
    def seq(self) -> np.ndarray:
        return self.p.seq[self.order]

    @cached_property
    def ack(self) -> np.ndarray:
        return self.p.ack[self.order]

    @cached_property
    def plen(self) -> np.ndarray:
        return self.p.plen[self.order]

    @cached_property
    def has_ts(self) -> np.ndarray:
        return self.p.has_ts[self.order]

    @cached_property
    def tsval(self) -> np.ndarray:
        return self.p.tsval[self.order]

    @cached_property
    def win(self) -> np.ndarray:
        return self.p.win[self.order]

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(valid, packet-table row) of flow positions `idx` (BIG or -1: none). Kept per
        `idx` array: the same positions are read in several columns."""
        hit = self._rows.get(id(idx))
        if hit is None or hit[0] is not idx:
            ok = (idx >= 0) & (idx < self.order.size)
            hit = (idx, ok, self.order[np.where(ok, idx, 0)])
            self._rows[id(idx)] = hit  # holds `idx`, so its id is not reused meanwhile
        return hit[1], hit[2]

    def at(self, idx: np.ndarray, col: str, fill: Any) -> np.ndarray:
        """Column `col` at flow positions `idx` (BIG or -1: none, giving `fill`)."""
        ok, rows = self.rows(idx)
        return np.where(ok, getattr(self.p, col)[rows], fill)


def _cumcount(key: np.ndarray) -> np.ndarray:
    """1-based running count within runs of equal (sorted) `key`."""
    if not key.size:
        return key.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    return np.arange(key.size) - np.repeat(starts, np.diff(np.r_[starts, key.size])) + 1


def _empty_cols() -> dict[str, np.ndarray]:
    p = Packets.empty()
    p.ts = np.zeros(1)
    p.src = p.dst = np.zeros(1, dtype=np.uint64)
    p.sport = p.dport = np.zeros(1, dtype=np.uint16)
    p.seq = p.ack = p.tsval = p.tsecr = np.zeros(1, dtype=np.uint32)
    p.flags = np.full(1, SYN, dtype=np.uint8)
    p.win = np.zeros(1, dtype=np.uint16)
    p.plen = np.zeros(1, dtype=np.int32)
    p.has_ts = p.sackok = p.opt_cut = np.zeros(1, dtype=bool)
    p.mss = np.zeros(1, dtype=np.uint16)
    p.wscale = np.zeros(1, dtype=np.int16)
    p.frame = np.zeros(1, dtype=np.int64)
    p.file = np.zeros(1, dtype=np.int16)
    a, _, _ = build(p)
    return {k: v[:0] for k, v in a.cols.items()}


def flow_ordered(att: Attempts, inplace: bool = False) -> Attempts:
    """Attempt rows in the order :func:`build` gives them for all packets at once, from
    rows built in parts (streams, chunks): flows by (32-bit endpoint-pair hash,
    endpoints), a flow's segments in their order in `att` (a stable sort: each part
    must hold a flow's segments in time order, and parts come in time order); then the
    flow numbers, the first packet positions in flow order and the `prev` links (when
    there are any) renumbered (`flow` is made when the rows come without it).
    `inplace`: `att`'s columns are replaced one by one (the peak is one column more
    than the table, not two tables)."""
    n = len(att)
    lo = np.empty(n, dtype=np.uint64)
    hi = np.empty(n, dtype=np.uint64)
    h = np.empty(n, dtype=np.uint32)
    for sl in row_blocks(n):  # the endpoints and their hash a block at a time (no full-size temporaries)
        e_o = (att["orig"][sl].astype(np.uint64) << np.uint64(16)) | att["orig_port"][sl].astype(np.uint64)
        e_r = (att["resp"][sl].astype(np.uint64) << np.uint64(16)) | att["resp_port"][sl].astype(np.uint64)
        np.minimum(e_o, e_r, out=lo[sl])
        np.maximum(e_o, e_r, out=hi[sl])
        del e_o, e_r
        h[sl] = _flow_hash(lo[sl], hi[sl])
    if backend.ACTIVE.name == "c":  # the C grouping orders flows by the masked hash
        h &= np.uint32(C_HASH_MASK)
    o = np.lexsort((hi, lo, h))
    del h
    # flow starts, before the columns are put in order (the endpoints then let go)
    lo = lo[o]
    new_flow = np.r_[True, lo[1:] != lo[:-1]]
    del lo
    hi = hi[o]
    new_flow[1:] |= hi[1:] != hi[:-1]
    del hi
    if inplace:
        out = att
        for k in list(att.cols):
            att.cols[k] = att.cols[k][o]
        att.history = att.history[o]
    else:
        out = att.take(o)
    flow_dtype = out.cols["flow"].dtype if "flow" in out.cols else np.dtype(np.int64)  # parts may leave it out
    out["flow"] = (np.cumsum(new_flow) - 1).astype(flow_dtype)
    if "first_pos" in out.cols:
        npk = out["packets"].astype(np.int64)
        out["first_pos"] = (np.cumsum(npk) - npk).astype(out["first_pos"].dtype)
    if "prev" in out.cols:
        inv = np.empty_like(o)
        inv[o] = np.arange(o.size)
        prev = out["prev"]
        out["prev"] = np.where(prev >= 0, inv[np.maximum(prev, 0)], prev).astype(prev.dtype)
    return out
