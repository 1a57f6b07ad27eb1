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

from ..model.timewait import (
    TCP_PAWS_24DAYS,
    TCP_PAWS_MSL,
    TCP_PAWS_WINDOW,
    TCP_TIMEWAIT_LEN,
    TW_ACK,
    TW_ACK_SKIPPED,
    TW_RST,
    TW_SYN,
    Segment,
    TimeWaitSock,
    tcp_timewait_state_process,
)
from . import loops, native
from .flows import W_NONE, W_ORIG, W_RESP, Attempts, capture_order, distinct, time_order

TW_VERDICTS = ("", "accept", "ack_old", "paws_reject", "rst", "drop")
V_NONE, V_ACCEPT, V_ACK_OLD, V_PAWS, V_RST, V_DROP = range(6)
RECYCLE = ("", "drop", "drop_4x")
RC_NONE, RC_DROP, RC_DROP_4X = range(3)
PREV_TW = ("", "client", "server")


def tuple_reuse(a: Attempts) -> None:
    """Adds: prev (index of the previous segment on the 4-tuple, -1), reuse_age_s,
    prev_tw (who held TIME_WAIT from it, in this attempt's roles), tw_verdict."""
    n = len(a)
    flow = a["flow"]
    prev = np.full(n, -1, dtype=np.int64)
    if n > 1:
        same = flow[1:] == flow[:-1]
        prev[1:] = np.where(same, np.arange(n - 1), -1)
    has = prev >= 0
    pi = np.where(has, prev, 0)
    t_new = np.where(np.isnan(a["t_syn"]), a["t_start"], a["t_syn"])
    age = np.where(has, t_new - a["t_end"][pi], np.nan)
    holder = np.where(has, a["tw_holder"][pi], W_NONE)
    h_is_orig_prev = holder == W_ORIG
    h_addr = np.where(h_is_orig_prev, a["orig"][pi], a["resp"][pi])
    h_port = np.where(h_is_orig_prev, a["orig_port"][pi], a["resp_port"][pi])
    h_is_client = (h_addr == a["orig"]) & (h_port == a["orig_port"])
    prev_tw = np.where(holder == W_NONE, 0, np.where(h_is_client, 1, 2)).astype(np.int8)
    a["prev"] = prev
    a["reuse_age_s"] = age
    a["prev_tw"] = prev_tw
    a["tw_verdict"] = _tw_verdicts(a, prev, age, prev_tw)


def _s32(x: np.ndarray) -> np.ndarray:
    """(__s32)x for int64 arrays."""
    x = np.asarray(x, dtype=np.int64) & 0xFFFFFFFF
    return np.where(x >= 0x80000000, x - 0x100000000, x)


def _tw_verdicts(a: Attempts, prev: np.ndarray, age: np.ndarray, prev_tw: np.ndarray) -> np.ndarray:
    """tcp_timewait_state_process() for every SYN that met a server TIME_WAIT.

    The model is called once per *equivalence class* of inputs: for a SYN in the
    TIME_WAIT substate the function reads only whether the SYN's TSval is parsed
    (option present, old connection timestamped), the sign of
    s32(tw_ts_recent - tsval), whether ts_recent is 0, whether the 24-day PAWS limit
    passed, and where the SYN's sequence number lies relative to tw_rcv_nxt (after,
    equal, before). Every SYN of a class gets the verdict the model gives the class's
    first member, called with that member's real values (tests check this equals a
    call per SYN)."""
    out = np.zeros(len(a), dtype=np.int8)
    has = prev >= 0
    pi = np.where(has, prev, 0)
    same_client = has & (a["orig"][pi] == a["orig"]) & (a["orig_port"][pi] == a["orig_port"])
    cand = np.flatnonzero(
        a["is_attempt"] & same_client & (prev_tw == 2) & (age < TCP_TIMEWAIT_LEN) & (age >= 0)
    )
    if not cand.size:
        return out
    inp = _tw_inputs(a, prev[cand], cand)
    sig = _tw_signature(inp)
    classes, first_idx, inv = np.unique(sig, return_index=True, return_inverse=True)
    verdict = np.asarray([_tw_call(inp, int(i)) for i in first_idx], dtype=np.int8)
    out[cand] = verdict[inv.ravel()]
    del classes
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
    those writes are replayed in order (per key); every SYN then reads the cache state
    of the last write before it, vectorised."""
    n = len(a)
    out = np.zeros(n, dtype=np.int8)
    a["tw_recycle"] = out
    upd = np.flatnonzero(
        (a["tw_holder"] == W_RESP) & a["syn_has_ts"] & a["synack_has_ts"] & a["orig_ts_seen"]
        & ~np.isnan(a["t_tw_enter"])
    )
    if not upd.size:
        return
    pid = _pair_ids(a["orig"], a["resp"])
    chk = np.flatnonzero(a["is_attempt"] & np.isin(pid, pid[upd]) & (a["tw_verdict"] != V_ACCEPT))
    if not chk.size:
        return
    # writes and checks in one order: by key, then time (writes first at equal times,
    # then in capture order)
    upd = upd[capture_order(a["pkt_tw_enter"][upd])]
    chk = chk[capture_order(a["pkt"][chk])]
    m = upd.size
    key_all = np.concatenate([pid[upd], pid[chk]])
    t_all = np.concatenate([a["t_tw_enter"][upd], a["t_syn"][chk]])
    kind = np.concatenate([np.zeros(m, np.int64), np.ones(chk.size, np.int64)])
    order = time_order(t_all)  # stable: writes (first in the concatenation) first at equal times
    if key_all.min() != key_all.max():
        if int(key_all.max()) < (1 << 16):
            order = order[np.argsort(key_all[order].astype(np.uint16), kind="stable")]
        else:
            order = order[np.argsort(key_all[order], kind="stable")]
    if native.lib is not None:  # the replay and the checks in one C pass; numpy below is the reference
        res = np.zeros(chk.size, dtype=np.int8)
        native.lib.recycle_checks(
            np.ascontiguousarray(order, dtype=np.int64), m, pid[np.concatenate([upd, chk])],
            a["orig_last_tsval"][upd].astype(np.int64), np.nan_to_num(a["t_orig_last_ts"][upd]).astype(np.int64),
            a["t_tw_enter"][upd].astype(np.int64), a["t_syn"][chk].astype(np.int64),
            a["syn_tsval"][chk].astype(np.int64), np.ascontiguousarray(a["syn_has_ts"][chk]).view(np.uint8),
            TCP_PAWS_MSL, TCP_PAWS_WINDOW, res)
        out[chk] = res
        return
    is_w = kind[order] == 0
    w = np.concatenate([upd, chk])[order][is_w]
    w_key = pid[w]
    c_ts, c_stamp = _replay_writes(w_key, a["orig_last_tsval"][w].astype(np.int64),
                                   np.nan_to_num(a["t_orig_last_ts"][w]).astype(np.int64),
                                   a["t_tw_enter"][w].astype(np.int64))
    # for each check: the cache after the last write of its key before the SYN
    wpos = np.where(is_w, np.cumsum(is_w) - 1, -1)
    last_w = np.maximum.accumulate(wpos)[~is_w]
    ci = np.concatenate([upd, chk])[order][~is_w]
    ok = last_w >= 0
    lw = np.where(ok, last_w, 0)
    ok &= w_key[lw] == pid[ci]  # that write belongs to the same key
    now = a["t_syn"][ci].astype(np.int64)
    fresh = ok & (now - c_stamp[lw] < TCP_PAWS_MSL)
    syn_ts = a["syn_has_ts"][ci]
    older = _s32(c_ts[lw] - a["syn_tsval"][ci].astype(np.int64)) > TCP_PAWS_WINDOW
    out[ci] = np.where(fresh & syn_ts & older, RC_DROP, np.where(fresh & ~syn_ts, RC_DROP_4X, RC_NONE))


def _pair_ids(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dense ids of (x, y) address-key pairs."""
    if x.size and max(int(x.max()), int(y.max())) < (1 << 32):
        key = (x << np.uint64(32)) | y
        return np.unique(key, return_inverse=True)[1].ravel().astype(np.int64)
    pair = np.stack([x, y], axis=1)
    return np.unique(pair, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _replay_writes(key: np.ndarray, ts: np.ndarray, stamp: np.ndarray,
                   now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cache state after each write, writes sorted by (key, time).

    mirrors tcp_remember_stamp() / tcp_v4_remember_stamp() (docs/kernel.md §6): a write wins if
    its TSval is not older than the cached one, or the cached entry is older than
    TCP_PAWS_MSL and not newer than the write's stamp. Where a key's TSvals never go
    back (one clock per client, the usual case) every write wins, so only keys whose
    TSvals jump back are replayed one write at a time (compiled: :mod:`.loops`). The C
    extension does this replay inside recycle_checks(), so this runs without it."""
    m = key.size
    out_ts = ts.copy()
    out_st = stamp.copy()
    if m < 2:
        return out_ts, out_st
    same = key[1:] == key[:-1]
    back = same & (_s32(ts[1:] - ts[:-1]) < 0)
    if not back.any():
        return out_ts, out_st
    bad_keys = distinct(key[1:][back])
    rows = np.flatnonzero(np.isin(key, bad_keys))
    k = key[rows]
    first = np.r_[True, k[1:] != k[:-1]]
    won: list[int] = []
    loops.recycle_replay(first.tobytes(), ts[rows].tolist(), stamp[rows].tolist(), now[rows].tolist(),
                         TCP_PAWS_MSL, won)
    w = np.frombuffer(bytearray(won), dtype=np.uint8).astype(bool)
    # the entry after each write is the one of the last write that won
    winner = rows[np.maximum.accumulate(np.where(w, np.arange(rows.size), 0))]
    out_ts[rows] = ts[winner]
    out_st[rows] = stamp[winner]
    return out_ts, out_st
