"""Attempts built chunk by chunk of packets, equal to :func:`.flows.build` over all of them.

:func:`.flows.build` needs every packet of a 4-tuple at once: a flow is cut into
segments where a SYN does not repeat the flow's previous SYN, and each segment is
reduced over its packets. Reading a capture in chunks, :class:`ChunkBuilder` keeps
instead, between chunks, only what a later packet can still change:

- **carried packets**: for each *live* 4-tuple (one whose last packet is recent: within
  ``closed_idle_s`` of the newest packet for a connection that closed — both FINs or a
  RST — within ``open_idle_s`` otherwise), the packets from the first SYN of its last run
  of equal SYNs (same direction and sequence number: a SYN and its retransmissions) or,
  without a SYN, from its last segment's start. The segmentation rule looks back no
  further than that SYN, so the segments built again from there with the next chunk's
  packets are those of one pass; the segments before it are final and are emitted.
- **retired 4-tuples**: for a 4-tuple idle longer than that, everything is emitted and
  only its endpoints, its last SYN (direction, sequence number) and its last time are
  kept (~30 bytes; bounded by the tuple space, not by the capture).

Emitted rows keep their packet-table rows (``pkt``, ``pkt_tw_enter``) as rows of the
whole capture; :func:`.flows.flow_ordered` puts them at the end in one build's order
(flows by endpoint-pair hash and endpoints, a flow's segments in time order) and
renumbers ``flow`` and ``first_pos``.

A packet that would make the result differ from one pass raises :class:`Inexact`
(the caller then reads the capture in one pass): a packet of a live 4-tuple older
than its first carried packet (reordered in time across what was emitted), or a retired
4-tuple that comes back with anything but a new SYN (a SYN with another sequence number
or direction, not older than its last packet), which one pass would have put in the old
segment. Tests compare the two builds column by column (tests/test_capture_chunked.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from .decode import ACK, RST, SYN, Packets
from .flows import Attempts, build, flow_ordered
from .spill import ColumnStore

# Attempt columns that only the per-attempt exports (--csv/--parquet, --save, --html) and
# the build read: a builder told that no such output is asked for drops them from the
# rows it emits, and the reuse passes' own inputs once they ran (REUSE_ONLY).
EXPORT_ONLY = ("first_pos", "flipped", "n_old_ack", "t_close", "resp_last_tsval", "frame", "syn_mss",
               "syn_sackok", "completeness", "packets", "file")
# Counters that such a builder keeps in 32 bits when they fit (the counts, statistics
# and findings read their values, never their width).
NARROW = ("n_syn", "n_synack", "n_rst_orig_pre")
REUSE_ONLY = ("flow", "pkt_tw_enter", "synack_has_ts", "t_tw_enter", "orig_end_seq", "resp_end_seq",
              "orig_last_tsval", "t_orig_last_ts", "orig_ts_seen", "isn")

CLOSED_IDLE_S = 5.0  # a closed connection's packets are carried this long after its last one
OPEN_IDLE_S = 300.0  # and an open one's (or an unanswered attempt's)


def release_freed() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim; nothing
    elsewhere). The CLI asks malloc to keep freed memory (commands/analyze.py), which
    saves page faults between the stages of an analysis; but the attempt rows emitted
    chunk after chunk are small allocations that, once joined into the table, would stay
    resident beside it."""
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                _TRIM = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):
                pass
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


class Inexact(Exception):
    """The chunked build cannot give the one-pass result for this capture."""


def concat_packets(parts: list[Packets]) -> Packets:
    """Packet tables of one stream (address keys from one IPv6 table that only grew),
    one after the other."""
    if len(parts) == 1:
        return parts[0]
    cols = {c: np.concatenate([getattr(p, c) for p in parts]) for c in Packets.COLUMNS}
    return Packets(**cols, v6=parts[-1].v6)


def _endpoints(p: Packets, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower endpoint, higher endpoint, direction) of packets `rows`, as flows.flow_order has them."""
    e_src = (p.src[rows] << np.uint64(16)) | p.sport[rows].astype(np.uint64)
    e_dst = (p.dst[rows] << np.uint64(16)) | p.dport[rows].astype(np.uint64)
    return np.minimum(e_src, e_dst), np.maximum(e_src, e_dst), (e_src > e_dst).astype(np.int8)


class ChunkBuilder:
    """Feed packet chunks in capture order (:meth:`add`), then take the attempts (:meth:`finish`)."""

    def __init__(self, closed_idle_s: float = CLOSED_IDLE_S, open_idle_s: float = OPEN_IDLE_S,
                 per_attempt: bool = True, spill: bool | None = None) -> None:
        self.per_attempt = per_attempt  # False: emitted rows without the EXPORT_ONLY columns and histories
        # emitted rows appended to files (spill.ColumnStore) instead of kept in memory:
        # by default when no per-attempt output is asked (TCPREUSE_CAPTURE_SPILL=0: never)
        if spill is None:
            spill = not per_attempt and os.environ.get("TCPREUSE_CAPTURE_SPILL", "1") != "0"
        self.store: ColumnStore | None = ColumnStore() if spill else None
        self.emitted = 0  # rows emitted (to parts or the store)
        self.closed_idle_s = closed_idle_s
        self.open_idle_s = open_idle_s
        self.carry: Packets | None = None
        self.carry_rows = np.zeros(0, dtype=np.int64)  # rows of the carried packets in the whole capture
        self.rows = 0  # packets added so far
        self.t_now = -np.inf
        self.parts: list[Attempts] = []
        self.v6: list[bytes] = []
        z64 = np.zeros(0, dtype=np.uint64)
        # retired 4-tuples
        self.r_lo, self.r_hi = z64, z64
        self.r_syn = np.zeros(0, dtype=bool)
        self.r_d = np.zeros(0, dtype=np.int8)
        self.r_seq = np.zeros(0, dtype=np.uint32)
        self.r_t = np.zeros(0, dtype=np.float64)
        self.peak_carry = 0  # most packets carried between two chunks

    def add(self, parts: list[Packets]) -> None:
        """The next packets of the capture, in pieces (`parts` is emptied: the pieces are
        copied, with the carried packets, into one table and then let go)."""
        given = parts
        parts = [pk for pk in parts if len(pk)]
        given.clear()
        if not parts:
            return
        n = sum(len(pk) for pk in parts)
        rows = np.arange(self.rows, self.rows + n, dtype=np.int64)
        self.rows += n
        self.t_now = max(self.t_now, max(float(pk.ts.max()) for pk in parts))
        self.v6 = parts[-1].v6
        n_carry = 0
        if self.carry is not None and len(self.carry):
            n_carry = len(self.carry)
            parts = [self.carry, *parts]
            rows = np.concatenate([self.carry_rows, rows])
        self.carry = None
        p = concat_packets(parts)
        del parts
        self._build(p, rows, n_carry, final=False)

    def finish(self) -> Attempts:
        if self.carry is not None and len(self.carry):
            p, rows = self.carry, self.carry_rows
            self.carry = None
            self._build(p, rows, len(p), final=True)
            del p
        if self.store is not None and self.emitted:
            # the columns stay in files: put in order a part of flows at a time
            from .ordered import flow_ordered_in_parts

            att = Attempts(self.store, np.zeros(self.emitted, dtype="S1"))
            self.store = None
            return flow_ordered_in_parts(att)
        if not self.parts:
            return build(Packets.empty())[0]
        # one column at a time, each part's column dropped once copied and its memory
        # given back (the parts are small allocations, which stay in malloc's heap)
        cols: dict[str, np.ndarray] = {}
        for k in list(self.parts[0].cols):
            cols[k] = np.concatenate([a.cols.pop(k) for a in self.parts])
            release_freed()
        att = Attempts(cols, np.concatenate([a.history for a in self.parts]))
        self.parts = []
        att = flow_ordered(att, inplace=True)
        release_freed()
        return att

    # ------------------------------------------------------------------------------------
    def _build(self, p: Packets, rows: np.ndarray, n_carry: int, final: bool) -> None:
        att, order, starts = build(p)
        nseg = len(att)
        if not nseg:
            return
        n = len(p)
        flow = att["flow"]
        f_first = np.flatnonzero(np.r_[True, flow[1:] != flow[:-1]])  # first segment of each flow
        f_last = np.r_[f_first[1:] - 1, nseg - 1]
        n_flows = f_first.size
        first_row = order[starts[f_first]]  # each flow's first packet (table row)
        lo, hi, d_first = _endpoints(p, first_row)
        new_flow = np.ones(n_flows, dtype=bool)
        if n_carry:
            carried = order < n_carry  # in flow order
            seg_c = np.logical_or.reduceat(carried, starts)
            has_c = np.logical_or.reduceat(seg_c, f_first)
            if (has_c & (first_row >= n_carry)).any():
                raise Inexact("a packet older than the carried packets of its connection")
            new_flow = ~has_c
        self._check_retired(p, lo, hi, d_first, first_row, new_flow)

        # where each flow's carried packets would start: its last run of equal SYNs
        fo_rows = order
        cls = p.flags[fo_rows] & (SYN | ACK | RST)
        synpos = np.flatnonzero(cls == SYN)
        p0 = np.full(n_flows, -1, dtype=np.int64)
        if synpos.size:
            fl = flow[np.searchsorted(starts, synpos, side="right") - 1]
            sr = fo_rows[synpos]
            _, _, sd = _endpoints(p, sr)
            sq = p.seq[sr]
            run = np.r_[True, (fl[1:] != fl[:-1]) | (sd[1:] != sd[:-1]) | (sq[1:] != sq[:-1])]
            rs, rfl = synpos[run], fl[run]
            last = np.r_[rfl[1:] != rfl[:-1], True]
            p0[rfl[last]] = rs[last]
        s_last = starts[f_last]
        carry_start = np.where(p0 >= 0, p0, s_last)
        t_last = att["t_end"][f_last]
        if final:
            live = np.zeros(n_flows, dtype=bool)
        else:
            closed = ((att["tw_holder"][f_last] != 0) | (att["close"][f_last] == 2)
                      | ~np.isnan(att["t_rst_orig"][f_last]) | ~np.isnan(att["t_rst_resp"][f_last]))
            live = t_last >= self.t_now - np.where(closed, self.closed_idle_s, self.open_idle_s)

        # emit what is final, in packet rows of the whole capture
        emit = np.flatnonzero(~live[flow] | (starts < carry_start[flow]))
        if emit.size:
            a = att.take(emit)
            a["pkt"] = rows[a["pkt"]]
            tw = a["pkt_tw_enter"]
            a["pkt_tw_enter"] = np.where(tw >= 0, rows[np.maximum(tw, 0)], tw).astype(tw.dtype)
            del a.cols["flow"]  # flow_ordered numbers the flows of all rows at the end
            if not self.per_attempt:
                for k in EXPORT_ONLY:
                    del a.cols[k]
                for k in NARROW:
                    c = a.cols[k]
                    if c.size and int(c.max()) <= np.iinfo(np.int32).max and int(c.min()) >= 0:
                        a.cols[k] = c.astype(np.int32)
                a.history = np.zeros(len(a), dtype="S1")
            self.emitted += len(a)
            if self.store is not None:
                self._spill(a)
            else:
                self.parts.append(a)

        # carry the live flows' tails
        if live.any():
            seg_len = np.diff(np.r_[starts, n])
            pos_flow = np.repeat(flow, seg_len)
            keep = live[pos_flow] & (np.arange(n) >= carry_start[pos_flow])
            r = np.sort(fo_rows[keep])
            self.carry = p.take(r)
            self.carry_rows = rows[r]
            self.peak_carry = max(self.peak_carry, int(r.size))
        else:
            self.carry, self.carry_rows = None, np.zeros(0, dtype=np.int64)

        # retire the others
        if not final:
            gone = np.flatnonzero(~live)
            if gone.size:
                has = p0[gone] >= 0
                sr = fo_rows[np.where(has, p0[gone], 0)]
                _, _, sd = _endpoints(p, sr)
                self.r_lo = np.concatenate([self.r_lo, lo[gone]])
                self.r_hi = np.concatenate([self.r_hi, hi[gone]])
                self.r_syn = np.concatenate([self.r_syn, has])
                self.r_d = np.concatenate([self.r_d, sd])
                self.r_seq = np.concatenate([self.r_seq, p.seq[sr]])
                self.r_t = np.concatenate([self.r_t, t_last[gone]])

    def _spill(self, a: Attempts) -> None:
        """Emitted rows appended to the store's columns (a counter narrowed in one part
        and not in another is widened, as joining the parts would)."""
        st = self.store
        assert st is not None
        for k, v in a.cols.items():
            if k in st:
                have = st.dtype(k)
                if have != v.dtype:
                    wide = np.result_type(have, v.dtype)
                    if wide != have:
                        st[k] = st[k].astype(wide)
                    v = v.astype(wide)
            st.append(k, v)

    def _check_retired(self, p: Packets, lo: np.ndarray, hi: np.ndarray, d_first: np.ndarray,
                       first_row: np.ndarray, new_flow: np.ndarray) -> None:
        """New flows of this chunk whose 4-tuple was retired: each must come back with a
        SYN that starts a new segment in one pass too; their entries are then dropped."""
        if not self.r_lo.size:
            return
        q = np.flatnonzero(new_flow)
        nr = self.r_lo.size
        all_lo = np.concatenate([self.r_lo, lo[q]])
        all_hi = np.concatenate([self.r_hi, hi[q]])
        src = np.r_[np.zeros(nr, dtype=np.int8), np.ones(q.size, dtype=np.int8)]
        o = np.lexsort((src, all_hi, all_lo))
        same = (all_lo[o[1:]] == all_lo[o[:-1]]) & (all_hi[o[1:]] == all_hi[o[:-1]])
        hit = np.flatnonzero(same)  # a retired entry (src 0) followed by a flow (src 1)
        if not hit.size:
            return
        ri = o[hit]
        fi = q[o[hit + 1] - nr]
        fr = first_row[fi]
        pure_syn = (p.flags[fr] & (SYN | ACK | RST)) == SYN
        new_syn = ~self.r_syn[ri] | (d_first[fi] != self.r_d[ri]) | (p.seq[fr] != self.r_seq[ri])
        if not (pure_syn & new_syn & (p.ts[fr] >= self.r_t[ri])).all():
            raise Inexact("a connection idle past the carry window came back without a new SYN")
        keep = np.ones(nr, dtype=bool)
        keep[ri] = False
        self.r_lo, self.r_hi, self.r_syn = self.r_lo[keep], self.r_hi[keep], self.r_syn[keep]
        self.r_d, self.r_seq, self.r_t = self.r_d[keep], self.r_seq[keep], self.r_t[keep]
