"""Zeek's TCP endpoint state machine, `conn_state` and `history`, for whole columns.

SOC teams join conn.log on `conn_state` and `history`, so the codes must mean what Zeek
means. The rules below mirror Zeek's `TCPSessionAdapter::UpdateStateMachine` (the
per-endpoint states INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED,
RESET), `update_history`, and `conn_state()` in base/protocols/conn/main.zeek.

Speed: the machine is compiled into a table (64 joint states x 64 packet classes) and
run for all attempts at once, one step per "k-th state-changing packet" — only packets
that can change a state (SYN, FIN, RST, and an endpoint's first packets) are stepped.
Histories are built from event arrays and turned into strings with one numpy view.

What is not reproduced: 'C' (bad checksum: offloading makes checksums meaningless in
most captures), 'G' (content gaps), and the SYN/SYN-ACK role reversal heuristic.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache

import numpy as np

from . import backend
from .decode import ACK, FIN, RST, SYN

INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET, RESET_AFTER_CLOSE = range(8)
STATE_NAMES = ("INACTIVE", "SYN_SENT", "SYN_ACK_SENT", "PARTIAL", "ESTABLISHED", "CLOSED", "RESET", "RESET")

CONN_STATES = ("S0", "S1", "SF", "REJ", "S2", "S3", "RSTO", "RSTR", "RSTOS0", "RSTRH", "SH", "SHR", "OTH")
CONN_STATE_MEANING = {
    "S0": "connection attempt seen, no reply",
    "S1": "connection established, not terminated",
    "SF": "normal establishment and termination",
    "REJ": "connection attempt rejected",
    "S2": "established, close attempt by originator seen (no reply from responder)",
    "S3": "established, close attempt by responder seen (no reply from originator)",
    "RSTO": "established, originator aborted (sent a RST)",
    "RSTR": "responder sent a RST",
    "RSTOS0": "originator sent a SYN followed by a RST, no SYN-ACK from the responder",
    "RSTRH": "responder sent a SYN-ACK followed by a RST, no SYN from the originator",
    "SH": "originator sent a SYN followed by a FIN, no SYN-ACK from the responder",
    "SHR": "responder sent a SYN-ACK followed by a FIN, no SYN from the originator",
    "OTH": "no SYN seen, just midstream traffic",
}


def _base(s: int) -> int:
    return RESET if s == RESET_AFTER_CLOSE else s


def _set(cur: int, new: int) -> int:
    """TCP_Endpoint::SetState: remembers whether a RESET came from CLOSED (prev_state)."""
    if new == _base(cur):
        return cur
    if new == RESET and _base(cur) == CLOSED:
        return RESET_AFTER_CLOSE
    return new


def step(orig: int, resp: int, is_orig: bool, syn: bool, ack: bool, fin: bool, rst: bool,
         has_data: bool) -> tuple[int, int]:
    """One packet through UpdateStateMachine; returns the new (orig, resp) states."""
    ep, peer = (orig, resp) if is_orig else (resp, orig)
    s = _base(ep)
    if s == INACTIVE:  # UpdateInactiveState
        changed = False
        if syn:
            changed = True
            if is_orig:
                ep = _set(ep, SYN_ACK_SENT if ack else SYN_SENT)
            else:
                if _base(peer) == SYN_SENT:
                    peer = _set(peer, ESTABLISHED)
                ep = _set(ep, ESTABLISHED)
        if fin:
            changed = True
            ep = _set(ep, CLOSED)
        if rst:
            changed = True
            ep = _set(ep, RESET)
        if not changed and _base(ep) == INACTIVE:
            orig_state = _base(peer) if not is_orig else _base(ep)
            if not is_orig and not has_data and orig_state == SYN_SENT:
                pass  # an eccentric stack ACKing the SYN before its SYN-ACK: still inactive
            elif ack and _base(peer) == ESTABLISHED:
                ep = _set(ep, ESTABLISHED)
            else:
                ep = _set(ep, PARTIAL)
    elif s in (SYN_SENT, SYN_ACK_SENT):  # UpdateSYN_SentState
        if fin:
            ep = _set(ep, CLOSED)
        if rst:
            ep = _set(ep, RESET)
    elif s in (ESTABLISHED, PARTIAL):  # UpdateEstablishedState
        if syn and s == PARTIAL and _base(peer) == INACTIVE and not ack:
            ep = _set(ep, SYN_SENT)
        if fin and not rst:
            ep = _set(ep, CLOSED)
            if peer == RESET_AFTER_CLOSE:  # peer sent FIN then RST: normal termination
                peer = _set(peer, CLOSED)
        if rst:
            ep = _set(ep, RESET)
    elif s == CLOSED and rst and _base(peer) != CLOSED:  # UpdateClosedState
        ep = _set(ep, RESET)
    # RESET: UpdateResetState changes nothing
    return (ep, peer) if is_orig else (peer, ep)


def event_code(is_orig: np.ndarray, flags: np.ndarray, has_data: np.ndarray) -> np.ndarray:
    """Packet class 0..63: is_orig, SYN, ACK, FIN, RST, payload."""
    f = flags.astype(np.uint8)
    return (
        is_orig.astype(np.uint8)
        | ((f & SYN) != 0).astype(np.uint8) << 1
        | ((f & ACK) != 0).astype(np.uint8) << 2
        | ((f & FIN) != 0).astype(np.uint8) << 3
        | ((f & RST) != 0).astype(np.uint8) << 4
        | has_data.astype(np.uint8) << 5
    )


@lru_cache(maxsize=1)
def table() -> np.ndarray:
    """T[joint, event] -> joint, joint = orig * 8 + resp."""
    t = np.zeros((64, 64), dtype=np.uint8)
    for j in range(64):
        o, r = divmod(j, 8)
        for e in range(64):
            no, nr = step(o, r, bool(e & 1), bool(e & 2), bool(e & 4), bool(e & 8), bool(e & 16), bool(e & 32))
            t[j, e] = no * 8 + nr
    return t


def run(seg: np.ndarray, events: np.ndarray, nseg: int) -> np.ndarray:
    """Final joint state per segment. `seg` (sorted) and `events` list the stepped
    packets in time order within each segment."""
    t = table()
    state = np.zeros(nseg, dtype=np.uint8)
    if not seg.size:
        return state
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    counts = np.diff(np.r_[starts, seg.size])
    rank = np.arange(seg.size) - np.repeat(starts, counts)
    order = np.argsort(rank.astype(np.int16) if rank.max() < 32767 else rank, kind="stable")
    rk = rank[order]
    bounds = np.flatnonzero(np.r_[True, rk[1:] != rk[:-1], True])
    for a, b in itertools.pairwise(bounds):
        sel = order[a:b]
        s = seg[sel]
        state[s] = t[state[s], events[sel]]
    return state


_RSTOS0 = re.compile(r"^\^?S[^HAFGIQ]*R")


def conn_state(o: np.ndarray, r: np.ndarray, orig_bytes: np.ndarray, resp_bytes: np.ndarray,
               history: np.ndarray) -> np.ndarray:
    """Zeek's conn_state() for every segment: indices into CONN_STATES."""
    os_ = np.where(o == RESET_AFTER_CLOSE, RESET, o)
    rs = np.where(r == RESET_AFTER_CLOSE, RESET, r)
    o_in = (os_ == INACTIVE) | (os_ == PARTIAL)
    r_in = (rs == INACTIVE) | (rs == PARTIAL)
    code = {k: i for i, k in enumerate(CONN_STATES)}
    out = np.full(o.shape, code["OTH"], dtype=np.int8)
    rr = rs == RESET
    rej = rr & ((os_ == SYN_SENT) | (os_ == SYN_ACK_SENT) | ((os_ == RESET) & (orig_bytes == 0) & (resp_bytes == 0)))
    # evaluated in reverse order of precedence, so earlier rules overwrite later ones
    rest = ~rr & (os_ != RESET)
    out[rest & (os_ == ESTABLISHED) & (rs == ESTABLISHED)] = code["S1"]
    out[rest & (os_ == SYN_SENT) & (rs == INACTIVE)] = code["S0"]
    out[rest & (rs == CLOSED)] = np.where(o_in, code["SHR"], code["S3"])[rest & (rs == CLOSED)]
    out[rest & (os_ == CLOSED)] = np.where(r_in, code["SH"], code["S2"])[rest & (os_ == CLOSED)]
    out[rest & (os_ == CLOSED) & (rs == CLOSED)] = code["SF"]
    ors = ~rr & (os_ == RESET)
    out[ors & ~r_in] = code["RSTO"]
    for i in np.flatnonzero(ors & r_in).tolist():
        out[i] = code["RSTOS0"] if _RSTOS0.match(history[i].decode("ascii")) else code["OTH"]
    out[rr] = np.where(o_in, code["RSTRH"], code["RSTR"])[rr]
    out[rej] = code["REJ"]
    return out


def _scaled(rank: np.ndarray) -> np.ndarray:
    """Zeek's ScaledHistoryEntry: the letter is logged at the 1st, 10th, 100th ... time."""
    r = rank.astype(np.float64)
    lg = np.log10(np.maximum(r, 1))
    return np.isclose(lg, np.round(lg)) & (rank >= 1)


def _cumcount(key: np.ndarray) -> np.ndarray:
    """1-based running count within runs of equal `key` (key sorted in runs)."""
    if not key.size:
        return key.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    counts = np.diff(np.r_[starts, key.size])
    return np.arange(key.size) - np.repeat(starts, counts) + 1


def _runs_first(part: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Of positions `part` (increasing), the first one of each segment."""
    if not part.size:
        return part
    sp = seg[part]
    return part[np.r_[True, sp[1:] != sp[:-1]]]


def histories(seg: np.ndarray, is_orig: np.ndarray, flags: np.ndarray, plen: np.ndarray,
              seq: np.ndarray, end_seq_rel: np.ndarray, win: np.ndarray, nseg: int,
              flipped: np.ndarray) -> np.ndarray:
    """Zeek `history` strings, one per segment, as a numpy bytes array (S<n>).

    Inputs are per packet in segment order (segments contiguous, time order within);
    `end_seq_rel` is the packet's end sequence number relative to its endpoint's start
    (retransmission detection; very low for packets of another connection).

    A packet logs at most one letter from update_history() (I, Q, S/H, F, R, D, A) and
    possibly a scaled T and W after it: the first kind lives in one byte per packet, the
    rare T and W in short lists merged in afterwards; the strings are the letters of
    each segment in packet order. Every rule works on one direction at a time: there a
    segment's packets form a contiguous run, so "first per endpoint" and "running
    maximum per endpoint" need no sorting."""
    n = seg.size
    if not n:
        return np.zeros(nseg, dtype="S1")
    f = flags
    nsyn = (f & SYN) != 0
    nfin = (f & FIN) != 0
    nrst = (f & RST) != 0
    bits = nsyn.astype(np.int8) + nfin + nrst
    ack = (f & ACK) != 0
    letters = np.zeros(n, dtype=np.uint8)  # the update_history letter of each packet
    later: list[tuple[np.ndarray, int, int]] = []  # (packets, column 1 = T / 2 = W, letter)
    resp = ~is_orig

    def mark(idx: np.ndarray, letter: np.ndarray | int) -> None:
        if idx.size:
            letters[idx] = np.asarray(letter, dtype=np.uint8) + np.where(is_orig[idx], 0, 32).astype(np.uint8)

    def first_of(mask: np.ndarray, letter: int) -> None:
        """The first packet per endpoint matching `mask` logs a letter (CheckHistory)."""
        for dm in (is_orig, resp):
            mark(_runs_first(np.flatnonzero(mask & dm), seg), letter)

    def repeats(mask: np.ndarray, value: np.ndarray, letter: np.ndarray | int) -> None:
        """First per endpoint, then again whenever `value` differs from that endpoint's
        previous one (Zeek: hist_last_SYN / _FIN / _RST)."""
        for dm in (is_orig, resp):
            idx = np.flatnonzero(mask & dm)
            if not idx.size:
                continue
            sp = seg[idx]
            v = value[idx]
            hit = idx[np.r_[True, (sp[1:] != sp[:-1]) | (v[1:] != v[:-1])]]
            mark(hit, letter if isinstance(letter, int) else letter[hit])

    multi = bits > 1
    if multi.any():
        first_of(multi & nfin & nrst, ord("I"))
        first_of(multi & ~(nfin & nrst), ord("Q"))
    one = bits == 1
    repeats(one & nsyn, seq, np.where(ack, ord("H"), ord("S")).astype(np.uint8))
    repeats(one & nfin, end_seq_rel, ord("F"))
    repeats(one & nrst, seq, ord("R"))
    none = bits == 0
    data = plen > 0
    first_of(none & data, ord("D"))
    first_of(none & ~data & ack, ord("A"))
    # retransmissions 'T' (scaled): payload not advancing the highest end seen so far.
    # Only packets that occupy sequence space can raise that maximum.
    adv = (data | nsyn | nfin) & ~nrst
    big = np.int64(1) << 40
    for dm in (is_orig, resp):
        if not (data & dm & ~nrst).any():
            continue
        idx = np.flatnonzero(adv & dm)
        sp = seg[idx].astype(np.int64)
        v = sp * big + end_seq_rel[idx]
        prev = np.r_[np.int64(-1), np.maximum.accumulate(v)[:-1]]
        same = np.r_[False, sp[1:] == sp[:-1]]
        rx = idx[same & (v <= prev) & data[idx]]
        if rx.size:
            later.append((rx[_scaled(_cumcount(seg[rx]))], 1, ord("T")))
    zw = (win == 0) & ~nrst
    if zw.any():
        for dm in (is_orig, resp):
            zi = np.flatnonzero(zw & dm)
            if zi.size:
                later.append((zi[_scaled(_cumcount(seg[zi]))], 2, ord("W")))
    pos = np.flatnonzero(letters)
    codes = letters[pos]
    s = seg[pos]
    if later or flipped.any():
        # merge in packet order (T and W after the packet's own letter; '^' first)
        fs = np.flatnonzero(flipped)
        keys = [pos * 3]
        code_parts = [codes]
        seg_parts = [s]
        for idx, col, letter in later:
            keys.append(idx * 3 + col)
            code_parts.append(letter + np.where(is_orig[idx], 0, 32).astype(np.uint8))
            seg_parts.append(seg[idx])
        o = np.argsort(np.concatenate(keys), kind="stable")  # sorted runs: a linear merge
        codes = np.concatenate(code_parts)[o]
        s = np.concatenate(seg_parts)[o]
        if fs.size:
            codes = np.concatenate([np.full(fs.size, ord("^"), dtype=np.uint8), codes])
            s = np.concatenate([fs, s])
            o = np.argsort(s, kind="stable")
            codes, s = codes[o], s[o]
    if not codes.size:
        return np.zeros(nseg, dtype="S1")
    return strings(codes, np.bincount(s, minlength=nseg))


def strings(codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Letters (uint8, segment after segment) and the number of letters of each
    segment -> one bytes string per segment (S<longest>)."""
    nseg = counts.size
    if not codes.size:
        return np.zeros(nseg, dtype="S1")
    return backend.ACTIVE.pad_strings(codes, counts, int(counts.max()))


def _pad_strings_numpy(codes: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """The reference of :func:`strings`: every letter scattered to its row and column."""
    nseg = counts.size
    seg = np.repeat(np.arange(nseg, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts  # index of each segment's first letter
    grid = np.zeros(nseg * width, dtype=np.uint8)
    # letter k goes to row seg[k], column k - first[seg[k]]
    grid[np.arange(codes.size) + (seg * width - first[seg])] = codes
    return grid.view(f"S{width}")
