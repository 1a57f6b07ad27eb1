"""4-tuple reuse, and what a Linux peer would have done with each reused SYN.

For every attempt whose 4-tuple carried an earlier connection in the capture, this
module says how long ago that connection ended, which side held TIME_WAIT from it (the
side that sent the first FIN, once both FINs were seen), and — when the *server* would
still hold that TIME_WAIT (less than TCP_TIMEWAIT_LEN = 60 s) — what
``tcp_timewait_state_process()`` decides for the new SYN, by calling the model
(tcpreuse.model.timewait) with a TIME_WAIT socket rebuilt from the old connection:

- ``tw_rcv_nxt``: the client's last sequence number + payload + FIN (what the server
  had received), ``tw_snd_nxt``: the server's, likewise;
- ``tw_ts_recent``: the last TSval the server saw from the client;
  ``tw_ts_recent_stamp``: the second it was seen, or 0 when the old connection did not
  negotiate timestamps (SYN and SYN-ACK both carry the option).

It also replays the per-peer timestamp cache of ``tcp_tw_recycle`` (kernels <= 4.11,
docs/kernel.md §6) over the capture: the cache is written when the server enters TIME_WAIT
for a timestamped connection (``tcp_remember_stamp``), and a SYN is dropped when the
cache is younger than TCP_PAWS_MSL (60 s) and the SYN's TSval is more than
TCP_PAWS_WINDOW (1) behind the cached one (``tcp_peer_is_proven``). 3.x-4.11 kernels
also drop SYNs without timestamps while a fresh entry exists; 2.6.32 does not.
"""

from __future__ import annotations

import numpy as np

from ..model.recycle import RC_KEEP, RC_SYN_DROP, RC_SYN_DROP_TSLESS, PeerCache
from ..model.timewait import (
    TCP_PAWS_24DAYS,
    TCP_TIMEWAIT_LEN,
    TW_ACK,
    TW_ACK_SKIPPED,
    TW_RST,
    TW_SYN,
    Segment,
    TimeWaitSock,
    tcp_timewait_state_process,
)
from . import backend
from .flows import W_NONE, W_ORIG, W_RESP, Attempts, capture_order, row_blocks, time_order
from .spill import ColumnStore, column_writer

TW_VERDICTS = ("", "accept", "ack_old", "paws_reject", "rst", "drop")
V_NONE, V_ACCEPT, V_ACK_OLD, V_PAWS, V_RST, V_DROP = range(6)
RECYCLE = ("", "drop", "drop_4x")
RC_NONE, RC_DROP, RC_DROP_4X = RC_KEEP, RC_SYN_DROP, RC_SYN_DROP_TSLESS  # the model's verdicts
PREV_TW = ("", "client", "server")


REUSE_BLOCK = 1 << 20  # rows compared with the rows before them at once
TW_BLOCK = 1 << 18  # SYNs on a server TIME_WAIT whose model inputs are built at once


def tuple_reuse(a: Attempts) -> None:
    """Adds: prev (index of the previous segment on the 4-tuple, -1), reuse_age_s,
    prev_tw (who held TIME_WAIT from it, in this attempt's roles), tw_verdict.

    A 4-tuple's segments are consecutive rows (flow order), so a segment's previous one
    is the row before it: rows are compared with the rows before them REUSE_BLOCK at a
    time, through slices (views), and each block's columns are written out
    (:func:`.spill.column_writer`) before the next: the temporaries are a block's, not
    the table's, and a table in files (:class:`.spill.ColumnStore`) is read a block at a
    time (``tuple_reuse_reference`` in the tests is the gathering form over all rows;
    they agree)."""
    n = len(a)
    out = {k: column_writer(a.cols, k, n, dt) for k, dt in
           (("prev", np.int64), ("reuse_age_s", np.float64), ("prev_tw", np.int8), ("tw_verdict", np.int8))}
    known: dict[int, int] = {}  # TIME_WAIT input class -> verdict, over all blocks
    for s in range(0, n, REUSE_BLOCK):
        e = min(n, s + REUSE_BLOCK)
        prev, age, prev_tw, same_client = _reuse_block(a, s, e)
        out["prev"].put(prev)
        out["reuse_age_s"].put(age)
        out["prev_tw"].put(prev_tw)
        out["tw_verdict"].put(_tw_verdicts(a, s, prev, same_client, known))
    for w in out.values():
        w.done()


def _reuse_block(a: Attempts, s: int, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """prev, reuse_age_s, prev_tw of rows s..e-1, and which of them are SYNs of the same
    client on a 4-tuple whose server held TIME_WAIT for less than TCP_TIMEWAIT_LEN."""
    m = e - s
    prev = np.arange(s - 1, e - 1, dtype=np.int64)
    age = np.full(m, np.nan)
    prev_tw = np.zeros(m, dtype=np.int8)
    same_client = np.zeros(m, dtype=bool)
    lo = max(s - 1, 0)
    off = lo + 1 - s  # rows [off, m) have a row before them: pairs (lo + k, lo + k + 1)
    if e - lo < 2:
        prev[:] = -1
        return prev, age, prev_tw, same_client

    def pair(k: str) -> tuple[np.ndarray, np.ndarray]:
        c = a[k]
        return c[lo:e - 1], c[lo + 1:e]

    f0, f1 = pair("flow")
    same = f1 == f0  # the row follows the one before it on its 4-tuple
    del f0, f1
    prev[:off] = -1
    prev[off:][~same] = -1
    t_syn = a["t_syn"][lo + 1:e]
    t_new = np.where(np.isnan(t_syn), a["t_start"][lo + 1:e], t_syn)
    del t_syn
    np.subtract(t_new, a["t_end"][lo:e - 1], out=t_new)
    np.copyto(age[off:], t_new, where=same)
    del t_new
    holder = np.where(same, a["tw_holder"][lo:e - 1], W_NONE)
    o0, o1 = pair("orig")
    p0, p1 = pair("orig_port")
    client_kept = (o0 == o1) & (p0 == p1)  # the previous connection's originator is this one's
    # the previous connection's holder (its originator or responder) is this attempt's client?
    h_is_client = np.where(holder == W_ORIG, client_kept,
                           (a["resp"][lo:e - 1] == o1) & (a["resp_port"][lo:e - 1] == p1))
    del o0, o1, p0, p1
    prev_tw[off:] = np.where(holder == W_NONE, 0, np.where(h_is_client, 1, 2))
    del holder, h_is_client
    a_age = age[off:]
    same_client[off:] = (same & client_kept & (prev_tw[off:] == 2) & (a_age < TCP_TIMEWAIT_LEN)
                         & (a_age >= 0) & a["is_attempt"][lo + 1:e])
    return prev, age, prev_tw, same_client


def _s32(x: np.ndarray) -> np.ndarray:
    """(__s32)x for int64 arrays."""
    x = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    return np.where(x >= 0x80000000, x - 0x100000000, x)


def _tw_verdicts(a: Attempts, s: int, prev: np.ndarray, same_client: np.ndarray,
                 known: dict[int, int]) -> np.ndarray:
    """tcp_timewait_state_process() for every SYN that met a server TIME_WAIT, of the
    block of rows from `s` (`prev` and `same_client` are the block's).

    The model is called once per *equivalence class* of inputs: for a SYN in the
    TIME_WAIT substate the function reads only whether the SYN's TSval is parsed
    (option present, old connection timestamped), the sign of
    s32(tw_ts_recent - tsval), whether ts_recent is 0, whether the 24-day PAWS limit
    passed, and where the SYN's sequence number lies relative to tw_rcv_nxt (after,
    equal, before). Every SYN of a class gets the verdict the model gives the class's
    first member (of the first group of TW_BLOCK SYNs the class appears in; `known`
    keeps them over the blocks), called with that member's real values (tests check
    this equals a call per SYN)."""
    out = np.zeros(prev.size, dtype=np.int8)
    cand = np.flatnonzero(same_client)
    for b in range(0, cand.size, TW_BLOCK):  # the inputs in groups: their temporaries stay small
        c = cand[b:b + TW_BLOCK]
        inp = _tw_inputs(a, prev[c], c + s)
        sig = _tw_signature(inp)
        classes, first_idx, inv = np.unique(sig, return_index=True, return_inverse=True)
        for k, i in zip(classes.tolist(), first_idx.tolist(), strict=True):
            if k not in known:
                known[k] = _tw_call(inp, int(i))
        verdict = np.asarray([known[k] for k in classes.tolist()], dtype=np.int8)
        out[c] = verdict[inv.ravel()]
    return out


def _tw_inputs(a: Attempts, p: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """The TIME_WAIT socket (from the previous connection p) and the SYN (attempt c)."""
    ts_neg = a["syn_has_ts"][p] & a["synack_has_ts"][p] & a["orig_ts_seen"][p]
    t_stamp = np.nan_to_num(a["t_orig_last_ts"][p], nan=0.0)
    stamp = np.where(ts_neg, np.maximum(1, t_stamp.astype(np.int64)), 0)
    return {
        "rcv_nxt": a["orig_end_seq"][p].astype(np.int64),
        "snd_nxt": a["resp_end_seq"][p].astype(np.int64),
        "ts_recent": np.where(stamp > 0, a["orig_last_tsval"][p].astype(np.int64), 0),
        "stamp": stamp,
        "isn": a["isn"][c].astype(np.int64),
        "has_ts": a["syn_has_ts"][c],
        "tsval": a["syn_tsval"][c].astype(np.int64),
        "now": a["t_syn"][c],
    }


def _tw_signature(i: dict[str, np.ndarray]) -> np.ndarray:
    saw = i["has_ts"] & (i["stamp"] != 0)
    d = _s32(i["ts_recent"] - i["tsval"])
    now_sec = i["now"].astype(np.int64)
    seq_d = _s32(i["rcv_nxt"] - i["isn"])  # < 0: SYN after rcv_nxt
    return (
        saw.astype(np.int64)
        | (np.sign(d) + 1) << 1
        | (i["ts_recent"] == 0).astype(np.int64) << 3
        | (now_sec >= i["stamp"] + TCP_PAWS_24DAYS).astype(np.int64) << 4
        | (np.sign(seq_d) + 1) << 5
    )


def _tw_call(i: dict[str, np.ndarray], k: int) -> int:
    """mirrors the kernel via the model: one SYN meeting one TIME_WAIT socket."""
    tw = TimeWaitSock(rcv_nxt=int(i["rcv_nxt"][k]), snd_nxt=int(i["snd_nxt"][k]),
                      ts_recent=int(i["ts_recent"][k]), ts_recent_stamp=int(i["stamp"][k]))
    isn = int(i["isn"][k])
    seg = Segment(syn=True, seq=isn, end_seq=(isn + 1) & 0xFFFFFFFF, has_ts=bool(i["has_ts"][k]),
                  tsval=int(i["tsval"][k]))
    now = float(i["now"][k])
    d = tcp_timewait_state_process(tw, seg, now, int(now), timestamps_sysctl=1, rfc1337=0,
                                   oow_ratelimit_s=0.5)
    if d.verdict == TW_SYN:
        return V_ACCEPT
    if d.verdict in (TW_ACK, TW_ACK_SKIPPED):
        return V_PAWS if d.paws_reject else V_ACK_OLD
    if d.verdict == TW_RST:
        return V_RST
    return V_DROP


def tw_verdicts_per_call(a: Attempts) -> np.ndarray:
    """The same verdicts with one model call per SYN (the slow reference)."""
    out = np.zeros(len(a), dtype=np.int8)
    prev, age, prev_tw = a["prev"], a["reuse_age_s"], a["prev_tw"]
    has = prev >= 0
    pi = np.where(has, prev, 0)
    same_client = has & (a["orig"][pi] == a["orig"]) & (a["orig_port"][pi] == a["orig_port"])
    cand = np.flatnonzero(a["is_attempt"] & same_client & (prev_tw == 2) & (age < TCP_TIMEWAIT_LEN) & (age >= 0))
    if cand.size:
        inp = _tw_inputs(a, prev[cand], cand)
        out[cand] = [_tw_call(inp, k) for k in range(cand.size)]
    return out


def recycle_verdicts(a: Attempts) -> None:
    """Adds tw_recycle: would a server with tcp_tw_recycle=1 have silently dropped the
    attempt's first SYN (per-peer timestamp cache, keyed by client and server address)?

    The cache changes only when a connection enters TIME_WAIT at the server, so only
    those writes and the SYNs of the same address pairs are replayed, in one order (by
    key, then time, writes first): the model's PeerCache (tcpreuse.model.recycle) in
    the numpy backend, one C pass in the C backend (tested against it).

    The replay runs in windows of whole seconds (RECYCLE_WINDOW events or so each, in
    time order; :func:`_recycle_windows`), so its temporaries are a window's: each
    address pair's entry at the end of a window (its last write that set it) is carried
    to the next as a first write of that pair, which sets the entry as it was."""
    a["tw_recycle"] = _recycle(a)  # set once made: a spilled column is written when set


RECYCLE_WINDOW = 1 << 19  # TIME_WAIT writes and SYN checks replayed at once (about)
_CARRIED_NOW = 1 << 62  # the `now` of a carried entry's write: past any stamp + TCP_PAWS_MSL, so it sets the entry


def _events(a: Attempts, sl: slice) -> tuple[np.ndarray, np.ndarray]:
    """Rows (in block `sl`) of the cache writes — the server entered TIME_WAIT for a
    timestamped connection — and of the SYNs to check — attempts a TIME_WAIT did not accept."""
    w = np.flatnonzero((a["tw_holder"][sl] == W_RESP) & a["syn_has_ts"][sl] & a["synack_has_ts"][sl]
                       & a["orig_ts_seen"][sl] & ~np.isnan(a["t_tw_enter"][sl]))
    c = np.flatnonzero(a["is_attempt"][sl] & (a["tw_verdict"][sl] != V_ACCEPT))
    return w, c


def _recycle(a: Attempts) -> np.ndarray:
    n = len(a)
    out = np.zeros(n, dtype=np.int8)
    # the events' times: their span, then events per step (a second, or coarser over a long span)
    lo, hi, writes = np.inf, -np.inf, 0
    for sl in row_blocks(n):
        w, c = _events(a, sl)
        writes += w.size
        for t in (a["t_tw_enter"][sl][w], a["t_syn"][sl][c]):
            if t.size:
                lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    if not writes:
        return out
    step = max(1.0, float(np.ceil((hi - lo) / (1 << 20))))
    bins = np.zeros(int((hi - lo) // step) + 1, dtype=np.int64)

    def bin_of(t: np.ndarray) -> np.ndarray:
        return ((t - lo) // step).astype(np.int64)

    for sl in row_blocks(n):
        w, c = _events(a, sl)
        for t in (a["t_tw_enter"][sl][w], a["t_syn"][sl][c]):
            bins += np.bincount(bin_of(t), minlength=bins.size)
    win = (np.cumsum(bins) - bins) // RECYCLE_WINDOW  # each step's window (equal times: one window)
    del bins
    # each window's events, with the columns the replay reads, in files (a window's
    # events are read back by themselves; gathering them from the table would read
    # pages all over its columns)
    from .ordered import Dealt

    in_files = isinstance(a.cols, ColumnStore)
    w_dealt, c_dealt = Dealt(in_files), Dealt(in_files)
    n_win = int(win[-1]) + 1
    try:
        for sl in row_blocks(n):
            w, c = _events(a, sl)
            for dealt, rows, t, names in ((w_dealt, w, "t_tw_enter", _WRITE_COLS), (c_dealt, c, "t_syn", _CHECK_COLS)):
                if rows.size:
                    got = {k: np.asarray(a[k][sl][rows]) for k in names}
                    got["row"] = rows + sl.start
                    dealt.add(win[bin_of(got[t])], got)
        carried: dict[tuple[int, int], tuple[int, int]] = {}  # (client, server) -> (TSval, stamp)
        for k in range(n_win):
            _replay(w_dealt.take(k), c_dealt.take(k), carried, out)
    finally:
        w_dealt.close()
        c_dealt.close()
    return out


_WRITE_COLS = ("orig", "resp", "pkt_tw_enter", "t_tw_enter", "orig_last_tsval", "t_orig_last_ts")
_CHECK_COLS = ("orig", "resp", "pkt", "t_syn", "syn_tsval", "syn_has_ts")
# a window without writes or without checks: its empty columns (the addresses' as the other kind has them)
_WRITE_DTYPES = {"orig": np.uint64, "resp": np.uint64, "pkt_tw_enter": np.int64, "t_tw_enter": np.float64,
                 "orig_last_tsval": np.uint32, "t_orig_last_ts": np.float64, "row": np.int64}
_CHECK_DTYPES = {"orig": np.uint64, "resp": np.uint64, "pkt": np.int64, "t_syn": np.float64, "syn_tsval": np.uint32,
                 "syn_has_ts": np.bool_, "row": np.int64}


def _taken(d: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in d.items()}


def _replay(w: dict[str, np.ndarray], c: dict[str, np.ndarray], carried: dict[tuple[int, int], tuple[int, int]],
            out: np.ndarray) -> None:
    """One window's writes (`w`) and SYN checks (`c`: their rows and columns), after the
    entries `carried` from the windows before (updated here to this window's end);
    verdicts into `out`."""
    n_upd, n_chk = (w["row"].size if w else 0), (c["row"].size if c else 0)
    if not n_upd and not (n_chk and carried):
        return
    w = w or {k: np.zeros(0, dtype=c[k].dtype if k in c else dt) for k, dt in _WRITE_DTYPES.items()}
    c = c or {k: np.zeros(0, dtype=w[k].dtype if k in w else dt) for k, dt in _CHECK_DTYPES.items()}
    # this window's address pairs (dense ids), and those among them with a carried entry
    orig, resp = np.concatenate([w["orig"], c["orig"]]), np.concatenate([w["resp"], c["resp"]])
    pid = _pair_ids(orig, resp)
    ids, first = np.unique(pid, return_index=True)
    po, pr = orig[first].tolist(), resp[first].tolist()
    del orig, resp
    c_ids = [i for i, x, y in zip(ids.tolist(), po, pr, strict=True) if (x, y) in carried]
    c_ent = [carried[(po[i], pr[i])] for i in c_ids]
    # the SYNs to check: of a pair with a write (this window's or carried)
    w_pid = pid[:n_upd]
    c_pid = pid[n_upd:]
    has = np.isin(c_pid, np.concatenate([w_pid, np.asarray(c_ids, dtype=pid.dtype)]))
    c, c_pid = _taken(c, has), c_pid[has]
    if not c_pid.size and not n_upd:
        return
    # writes and checks in one order: by key, then time (the carried entries first, then
    # writes first at equal times, then in capture order)
    o = capture_order(w["pkt_tw_enter"])
    w, w_pid = _taken(w, o), w_pid[o]
    o = capture_order(c["pkt"])
    c, c_pid = _taken(c, o), c_pid[o]
    del o
    nc = len(c_ids)
    m = nc + n_upd
    key_all = np.concatenate([np.asarray(c_ids, dtype=pid.dtype), w_pid, c_pid])
    t_upd, t_chk = w["t_tw_enter"], c["t_syn"]
    t0 = min(float(t_upd.min()) if t_upd.size else np.inf, float(t_chk.min()) if t_chk.size else np.inf)
    t_all = np.concatenate([np.full(nc, t0 - 1.0), t_upd, t_chk])
    order = time_order(t_all)  # stable: carried entries, then writes, first at equal times
    del t_all
    if key_all.size and key_all.min() != key_all.max():
        order = order[np.argsort(key_all[order], kind="stable")]
    w_ts = np.concatenate([np.asarray([e[0] for e in c_ent], dtype=np.int64),
                           w["orig_last_tsval"].astype(np.int64)])
    w_stamp = np.concatenate([np.asarray([e[1] for e in c_ent], dtype=np.int64),
                              np.nan_to_num(w["t_orig_last_ts"]).astype(np.int64)])
    w_now = np.concatenate([np.full(nc, _CARRIED_NOW, dtype=np.int64), t_upd.astype(np.int64)])
    won = np.zeros(m, dtype=np.int8)
    out[c["row"]] = backend.ACTIVE.recycle_checks(
        order, m, key_all, w_ts, w_stamp, w_now, t_chk.astype(np.int64), c["syn_tsval"].astype(np.int64),
        c["syn_has_ts"], won)
    # each pair's entry at the end of the window: its last write (in replay order) that set it
    wo = order[order < m]
    wo = wo[won[wo] == 1]
    if wo.size:
        kk = key_all[wo]
        last = np.flatnonzero(np.r_[kk[1:] != kk[:-1], True])  # writes come grouped by key
        for e, i in zip(wo[last].tolist(), np.searchsorted(ids, kk[last]).tolist(), strict=True):
            carried[(po[i], pr[i])] = (int(w_ts[e]), int(w_stamp[e]))


def _recycle_checks_reference(order: np.ndarray, m: int, key: np.ndarray, w_ts: np.ndarray, w_stamp: np.ndarray,
                              w_now: np.ndarray, c_now: np.ndarray, c_tsval: np.ndarray,
                              c_has_ts: np.ndarray, won: np.ndarray | None = None) -> np.ndarray:
    """The numpy backend's recycle_checks: the model's cache
    (:class:`tcpreuse.model.recycle.PeerCache`, tcp_tw_recycle's per-peer cache of
    3.5-4.11 kernels, keyed here by the (client, server) address pair as tcp_metrics
    keys it) replayed one event at a time: entries 0..m-1 of `order` are writes
    (``remember_stamp``), the rest checks of SYNs (``syn_verdict``, 3.x-4.11 rules,
    SYNs without timestamps dropped too)."""
    cache = PeerCache("addr_pair")
    out = np.zeros(c_now.size, dtype=np.int8)
    keys, wts, wst, wnow = key.tolist(), w_ts.tolist(), w_stamp.tolist(), w_now.tolist()
    cnow, cts, chas = c_now.tolist(), c_tsval.tolist(), c_has_ts.tolist()
    for e in order.tolist():
        if e < m:
            cache.remember_stamp(0, keys[e], wts[e], wst[e], wnow[e])
            if won is not None:  # the entry is now this write's
                after = cache.entries[cache.key(0, keys[e])]
                won[e] = after.ts == wts[e] and after.stamp == wst[e]
        else:
            c = e - m
            out[c] = cache.syn_verdict(0, keys[e], chas[c], cts[c], cnow[c], drops_tsless=True)
    return out


def _pair_ids(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dense ids of (x, y) address-key pairs."""
    if x.size and max(int(x.max()), int(y.max())) < (1 << 32):
        key = (x << np.uint64(32)) | y
        return np.unique(key, return_inverse=True)[1].ravel().astype(np.int64)
    pair = np.stack([x, y], axis=1)
    return np.unique(pair, axis=0, return_inverse=True)[1].ravel().astype(np.int64)
