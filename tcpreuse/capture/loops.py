"""The few loops of the capture reader that cannot be whole-column numpy, for mypyc.

Where pcap record k+1 starts depends on record k's length, so finding the records is a
sequential walk; so is replaying the ``tcp_tw_recycle`` per-peer cache for clients
whose TSvals go back. setup.py compiles this module with mypyc (COMPILED), which makes
these loops plain C over ``bytes`` (about 20 ns per record instead of about 100 ns for
a ``struct`` read in the interpreter). Without compilation the module still works, but
its byte-by-byte reads are slow in the interpreter, so callers check :data:`COMPILED`
and use their ``struct``-based loops instead.

Results go out as lists of *small* ints (0..255, which CPython never allocates) so that
``bytearray(list)`` turns them into a numpy-readable buffer at a few ns per byte;
a list of arbitrary ints would cost an allocation per value.
"""

from __future__ import annotations

from typing import Final

try:
    from mypy_extensions import i64
except ImportError:  # pragma: no cover - the pure-Python package without mypy_extensions
    i64 = int  # type: ignore[misc]

COMPILED: bool = not __file__.endswith(".py")  # imported from the mypyc-built extension
ESCAPE: Final = 0xFFFF  # a length >= this is stored as FF FF and listed in `big`


def pcap_walk(chunk: bytes, off: i64, little: bool, lens: list[int], big: list[int]) -> i64:
    """Walk pcap record headers in `chunk` from `off` while a whole 16-byte header fits.

    Appends each record's captured length to `lens` as two little-endian bytes (ESCAPE
    for longer ones, whose (record number, length) go to `big`, record numbers counted
    from the start of `lens`). Returns the offset after the last record walked: where
    the next header starts, possibly beyond the chunk (a record running past its end).
    Lengths are not checked here; the caller validates all headers at once."""
    end: i64 = len(chunk)
    n: i64
    while off + 16 <= end:
        if little:
            n = (i64(chunk[off + 8]) | i64(chunk[off + 9]) << 8 | i64(chunk[off + 10]) << 16
                 | i64(chunk[off + 11]) << 24)
        else:
            n = (i64(chunk[off + 11]) | i64(chunk[off + 10]) << 8 | i64(chunk[off + 9]) << 16
                 | i64(chunk[off + 8]) << 24)
        if n < ESCAPE:
            lens.append(n & 0xFF)
            lens.append(n >> 8)
        else:
            big.append(len(lens) >> 1)
            big.append(n)
            lens.append(0xFF)
            lens.append(0xFF)
        off += 16 + n
    return off


def pcapng_epb_walk(chunk: bytes, off: i64, little: bool, room: i64, lens: list[int],
                    big: list[int]) -> i64:
    """Walk a run of pcapng Enhanced Packet Blocks in `chunk` from `off`.

    Stops at the first block whose 8-byte header does not fit in the chunk, that is not
    an EPB (type 6), or whose length is not a multiple of 4 in 32..`room` - offset
    (`room`: bytes from the chunk's start to the end of the file). Block lengths go to
    `lens` as in :func:`pcap_walk`. Returns where it stopped."""
    end: i64 = len(chunk)
    btype: i64
    blen: i64
    while off + 8 <= end:
        if little:
            btype = (i64(chunk[off]) | i64(chunk[off + 1]) << 8 | i64(chunk[off + 2]) << 16
                     | i64(chunk[off + 3]) << 24)
            blen = (i64(chunk[off + 4]) | i64(chunk[off + 5]) << 8 | i64(chunk[off + 6]) << 16
                    | i64(chunk[off + 7]) << 24)
        else:
            btype = (i64(chunk[off + 3]) | i64(chunk[off + 2]) << 8 | i64(chunk[off + 1]) << 16
                     | i64(chunk[off]) << 24)
            blen = (i64(chunk[off + 7]) | i64(chunk[off + 6]) << 8 | i64(chunk[off + 5]) << 16
                    | i64(chunk[off + 4]) << 24)
        if btype != 6 or blen < 32 or blen > room - off or blen & 3:
            return off
        if blen < ESCAPE:
            lens.append(blen & 0xFF)
            lens.append(blen >> 8)
        else:
            big.append(len(lens) >> 1)
            big.append(blen)
            lens.append(0xFF)
            lens.append(0xFF)
        off += blen
    return off


def recycle_replay(first: bytes, ts: list[int], stamp: list[int], now: list[int], msl: i64,
                   won: list[int]) -> None:
    """tcp_remember_stamp() over writes sorted by (key, time): appends 1 to `won` where
    the write replaced the cached entry, else 0. `first[i]` is 1 where a new key starts.

    mirrors tcp_remember_stamp() / tcp_v4_remember_stamp() (docs/kernel.md §6): a write wins if
    its TSval is not older than the cached one (s32 difference <= 0), or the cached entry
    is older than `msl` (TCP_PAWS_MSL) and not newer than the write's stamp."""
    m: i64 = len(ts)
    c_ts: i64 = 0
    c_st: i64 = 0
    i: i64 = 0
    while i < m:
        t: i64 = ts[i]
        st: i64 = stamp[i]
        if first[i]:
            c_ts = t
            c_st = st
            won.append(1)
        else:
            d: i64 = (c_ts - t) & 0xFFFFFFFF
            if d == 0 or d >= 0x80000000 or (now[i] - c_st > msl and c_st <= st):
                c_ts = t
                c_st = st
                won.append(1)
            else:
                won.append(0)
        i += 1


# ---- attempts: one pass over the packets in flow order -----------------------------------
#
# The compiled twin of flows._facts_numpy (the reference; tests compare the two): the
# same per-segment facts, found by walking each segment's packets twice — once to find
# where it ends and its first SYN / SYN-ACK / packets per side (what later rules look
# ahead to), once for everything else. Per segment it appends a REC-byte record to `out`:
# NARROW one-byte fields (positions are 1 + offset from the segment's first packet,
# 0 = none), WIDE two-byte little-endian fields, and a two-byte state. A value that does
# not fit is stored as all ones and listed in `big` as (segment, field, value). The
# Zeek history letters go to `hist`.

F_NPK: Final = 0
F_FIRST_SYN: Final = 1
F_SECOND_SYN: Final = 2
F_LAST_SYN: Final = 3
F_N_SYN: Final = 4
F_ANS: Final = 5
F_FIRST_SA: Final = 6
F_N_SYNACK: Final = 7
F_N_OLD_ACK: Final = 8
F_N_RST_PRE: Final = 9
F_FIN_O: Final = 10
F_FIN_R: Final = 11
F_RST_O: Final = 12
F_RST_R: Final = 13
F_TERM: Final = 14
F_TS_O: Final = 15
F_TS_R: Final = 16
F_FIRST_O: Final = 17
F_FIRST_R: Final = 18
F_HLEN: Final = 19
NARROW: Final = 20
# where the side's sequence space ended relative to its base: 1 + end when end >= 0, the
# (negative) end itself when it lies before the base (never inline: always in `big`), 0 = none
F_END_O: Final = 20
F_END_R: Final = 21
F_OBYTES: Final = 22
F_RBYTES: Final = 23
WIDE: Final = 4
REC: Final = NARROW + 2 * WIDE + 2  # + the state: Zeek joint state | completeness << 6 | established << 12
LOW: Final = -(1 << 40)  # flows.LOW
EARLY_STEPS: Final = 8  # flows.EARLY_STEPS

# per-packet `bits`
B_FLOW_START: Final = 1
B_DIR: Final = 2
B_HAS_TS: Final = 4
B_WIN0: Final = 8


def _u32(b: bytes, i: i64) -> i64:
    j = i * 4
    return i64(b[j]) | i64(b[j + 1]) << 8 | i64(b[j + 2]) << 16 | i64(b[j + 3]) << 24


def _narrow(out: list[int], big: list[int], seg: i64, field: i64, v: i64) -> None:
    if 0 <= v < 0xFF:
        out.append(v)
    else:
        out.append(0xFF)
        big.append(seg)
        big.append(field)
        big.append(v)


def _wide(out: list[int], big: list[int], seg: i64, field: i64, v: i64) -> None:
    if 0 <= v < 0xFFFF:
        out.append(v & 0xFF)
        out.append(v >> 8)
    else:
        out.append(0xFF)
        out.append(0xFF)
        big.append(seg)
        big.append(field)
        big.append(v)


def _end_code(end: i64) -> i64:
    """F_END_O/F_END_R's code for an end relative to the base (LOW: none)."""
    if end >= 0:
        return end + 1
    return end if end > LOW else 0


def _scaled(k: i64) -> bool:
    """Zeek logs a repeated letter at the 1st, 10th, 100th ... time."""
    while k >= 10 and k % 10 == 0:
        k = k // 10
    return k == 1


class _Boundary:
    """Where segments start (flows._segment_starts, one packet at a time): at a flow's
    first packet, at a SYN that does not repeat the flow's previous SYN, at a SYN-ACK
    with a new sequence number since the last SYN."""

    def __init__(self) -> None:
        self.ls_pos: i64 = -1  # the flow's last SYN: position, direction, sequence number
        self.ls_d: i64 = 0
        self.ls_seq: i64 = 0
        self.la_pos: i64 = -1  # the flow's last SYN-ACK
        self.la_d: i64 = 0
        self.la_seq: i64 = 0

    def step(self, i: i64, b: i64, cls: i64, seq: bytes) -> bool:
        start = False
        d: i64 = (b >> 1) & 1
        if b & B_FLOW_START:
            self.ls_pos = -1
            self.la_pos = -1
            start = True
        if cls != 0x02 and cls != 0x12:
            return start
        s = _u32(seq, i)
        if cls == 0x02:
            if self.ls_pos < 0 or self.ls_d != d or self.ls_seq != s:
                start = True
            self.ls_pos = i
            self.ls_d = d
            self.ls_seq = s
        elif cls == 0x12:
            in_scope = self.la_pos >= 0 and self.la_pos > self.ls_pos
            same = in_scope and self.la_seq == s and self.la_d == d
            if not same and (in_scope or self.ls_pos < 0):
                start = True
            self.la_pos = i
            self.la_d = d
            self.la_seq = s
        return start


class _Side:
    """One endpoint's history state within a segment (Zeek update_history)."""

    def __init__(self, case: i64) -> None:
        self.case = case  # 0 originator (upper case), 32 responder (lower case)
        self.reset()

    def reset(self) -> None:
        self.seen_i = False
        self.seen_q = False
        self.seen_d = False
        self.seen_a = False
        self.syn_ok = False  # last SYN-only packet's sequence number
        self.syn_v: i64 = 0
        self.fin_ok = False  # last FIN-only packet's end
        self.fin_v: i64 = 0
        self.rst_ok = False  # last RST-only packet's sequence number
        self.rst_v: i64 = 0
        self.adv_ok = False  # highest end of a packet using sequence space
        self.adv_max: i64 = 0
        self.n_rexmit: i64 = 0
        self.n_zero_win: i64 = 0


def segment_facts(bits: bytes, flags: bytes, seq: bytes, ack: bytes, plen: bytes, table: bytes,
                  out: list[int], big: list[int], hist: list[int]) -> i64:
    """Per-segment facts of packets in flow order (see the comment above); returns the
    number of segments. `bits`: B_* per packet; `seq`, `ack`, `plen`: little-endian
    uint32 per packet; `table`: zeek.table() as 64 x 64 bytes."""
    n: i64 = len(flags)
    if n == 0:
        return 0
    bd = _Boundary()
    so = _Side(0)
    sr = _Side(32)
    bd.step(0, i64(bits[0]), i64(flags[0]) & 0x16, seq)
    nseg: i64 = 0
    s0: i64 = 0
    i: i64
    while s0 < n:
        # ---- pass 1: the segment's end, its first SYN / SYN-ACK / packet per side
        d0: i64 = (i64(bits[s0]) >> 1) & 1
        cls0: i64 = i64(flags[s0]) & 0x16
        flipped = cls0 == 0x12
        orig_dir: i64 = 1 - d0 if flipped else d0
        fsyn: i64 = -1
        fsa: i64 = -1
        fo: i64 = -1
        fr: i64 = -1
        i = s0
        while True:
            cls = i64(flags[i]) & 0x16
            if ((i64(bits[i]) >> 1) & 1) == orig_dir:
                if fo < 0:
                    fo = i
                if cls == 0x02 and fsyn < 0:
                    fsyn = i
            else:
                if fr < 0:
                    fr = i
                if cls == 0x12 and fsa < 0:
                    fsa = i
            i += 1
            if i >= n or bd.step(i, i64(bits[i]), i64(flags[i]) & 0x16, seq):
                break
        s1: i64 = i
        # ---- pass 2: everything else
        has_sa = fsa >= 0
        fs_b: i64 = fsyn if fsyn >= 0 else s1
        sa_b: i64 = fsa if has_sa else s1
        isn1: i64 = (_u32(seq, fsyn) + 1) & 0xFFFFFFFF if fsyn >= 0 else 0
        base_o: i64 = _u32(seq, fsyn) if fsyn >= 0 else (_u32(seq, fo) if fo >= 0 else 0)
        base_r: i64 = _u32(seq, fsa) if has_sa else (_u32(seq, fr) if fr >= 0 else 0)
        n_syn: i64 = 0
        syn2: i64 = -1
        lsyn: i64 = -1
        ans: i64 = -1
        n_sa: i64 = 0
        est = False
        n_old: i64 = 0
        n_rst_pre: i64 = 0
        fin_o: i64 = -1
        fin_r: i64 = -1
        rst_o: i64 = -1
        rst_r: i64 = -1
        term: i64 = -1
        ts_o: i64 = -1
        ts_r: i64 = -1
        end_o: i64 = LOW
        end_r: i64 = LOW
        ob: i64 = 0
        rb: i64 = 0
        comp: i64 = 0
        joint: i64 = 0
        seen_o = False
        seen_r = False
        r_answered = False  # the responder sent control or data (Zeek stepping)
        n_early: i64 = 0
        hlen: i64 = 0
        so.reset()
        sr.reset()
        if flipped:
            hist.append(94)  # '^'
            hlen += 1
        i = s0
        while i < s1:
            b = i64(bits[i])
            f = i64(flags[i])
            io = ((b >> 1) & 1) == orig_dir
            pl = _u32(plen, i)
            s = _u32(seq, i)
            cls = f & 0x16
            fin = (f & 1) != 0
            syn = (f & 2) != 0
            rst = (f & 4) != 0
            ackf = (f & 16) != 0
            data = pl > 0
            # handshake and answer
            if io:
                ob += pl
                if cls == 0x02:
                    n_syn += 1
                    if n_syn == 2:
                        syn2 = i
                    lsyn = i
                if ackf and (f & 6) == 0 and i > sa_b:
                    est = True
            else:
                rb += pl
                if ans < 0 and i > fs_b:
                    ans = i
                if cls == 0x12:
                    n_sa += 1
                if (f & 0x16) == 0x10 and fs_b < i < sa_b and _u32(ack, i) != isn1:
                    n_old += 1
            # closing
            if rst:
                if io:
                    if i < sa_b:
                        n_rst_pre += 1
                    if i > sa_b and rst_o < 0:
                        rst_o = i
                elif i > sa_b and rst_r < 0:
                    rst_r = i
            elif fin:
                if io:
                    if fin_o < 0:
                        fin_o = i
                elif fin_r < 0:
                    fin_r = i
            if (fin or rst) and term < 0 and (i > sa_b or not has_sa):
                term = i
            # tshark's completeness
            if cls == 0x02:
                comp |= 1
            elif cls == 0x12:
                comp |= 2
            if (f & 7) == 0 and ackf:
                comp |= 4
            if fin:
                comp |= 16
            if rst:
                comp |= 32
            # sequence space: where each side ended
            end_rel: i64 = LOW
            if not rst and (io or i >= sa_b or not has_sa):
                rel: i64 = (s - (base_o if io else base_r)) & 0xFFFFFFFF
                if rel >= 0x80000000:
                    rel -= 0x100000000
                end_rel = rel + pl + ((f >> 1) & 1) + (f & 1)  # SYN and FIN take one number each
            if io:
                if end_rel > end_o:
                    end_o = end_rel
            elif end_rel > end_r:
                end_r = end_rel
            if b & B_HAS_TS:
                if io:
                    ts_o = i
                else:
                    ts_r = i
            # Zeek's endpoint state machine, for the packets that can change it
            step = (f & 7) != 0
            if io:
                if not seen_o:
                    seen_o = True
                    step = True
            else:
                if not seen_r:
                    seen_r = True
                    step = True
                if not r_answered:
                    n_early += 1
                    if n_early <= EARLY_STEPS:
                        step = True
                    if (f & 7) != 0 or data:
                        r_answered = True
            if step:
                # zeek.event_code: is_orig, SYN, ACK, FIN, RST, payload
                ev: i64 = (f & 2) | ((f & 16) >> 2) | ((f & 1) << 3) | ((f & 4) << 2)
                if io:
                    ev |= 1
                if data:
                    ev |= 32
                joint = i64(table[joint * 64 + ev])
            # Zeek history: at most one letter of update_history(), then T and W
            side = so if io else sr
            nflags: i64 = ((f >> 1) & 1) + (f & 1) + ((f >> 2) & 1)
            letter: i64 = 0
            if nflags > 1:
                if fin and rst:
                    if not side.seen_i:
                        side.seen_i = True
                        letter = 73  # I
                elif not side.seen_q:
                    side.seen_q = True
                    letter = 81  # Q
            elif nflags == 1:
                if syn:
                    if not side.syn_ok or side.syn_v != s:
                        letter = 72 if ackf else 83  # H / S
                    side.syn_ok = True
                    side.syn_v = s
                elif fin:
                    if not side.fin_ok or side.fin_v != end_rel:
                        letter = 70  # F
                    side.fin_ok = True
                    side.fin_v = end_rel
                else:
                    if not side.rst_ok or side.rst_v != s:
                        letter = 82  # R
                    side.rst_ok = True
                    side.rst_v = s
            elif data:
                if not side.seen_d:
                    side.seen_d = True
                    letter = 68  # D
            elif ackf and not side.seen_a:
                side.seen_a = True
                letter = 65  # A
            if letter:
                hist.append(letter + side.case)
                hlen += 1
            if (data or syn or fin) and not rst:
                if side.adv_ok and data and end_rel <= side.adv_max:
                    side.n_rexmit += 1
                    if _scaled(side.n_rexmit):
                        hist.append(84 + side.case)  # T
                        hlen += 1
                if not side.adv_ok or end_rel > side.adv_max:
                    side.adv_ok = True
                    side.adv_max = end_rel
            if b & B_WIN0 and not rst:
                side.n_zero_win += 1
                if _scaled(side.n_zero_win):
                    hist.append(87 + side.case)  # W
                    hlen += 1
            i += 1
        if ob + rb > 0:
            comp |= 8
        # ---- the segment's facts
        _narrow(out, big, nseg, F_NPK, s1 - s0)
        _narrow(out, big, nseg, F_FIRST_SYN, fsyn - s0 + 1 if fsyn >= 0 else 0)
        _narrow(out, big, nseg, F_SECOND_SYN, syn2 - s0 + 1 if syn2 >= 0 else 0)
        _narrow(out, big, nseg, F_LAST_SYN, lsyn - s0 + 1 if lsyn >= 0 else 0)
        _narrow(out, big, nseg, F_N_SYN, n_syn)
        _narrow(out, big, nseg, F_ANS, ans - s0 + 1 if ans >= 0 else 0)
        _narrow(out, big, nseg, F_FIRST_SA, fsa - s0 + 1 if fsa >= 0 else 0)
        _narrow(out, big, nseg, F_N_SYNACK, n_sa)
        _narrow(out, big, nseg, F_N_OLD_ACK, n_old)
        _narrow(out, big, nseg, F_N_RST_PRE, n_rst_pre)
        _narrow(out, big, nseg, F_FIN_O, fin_o - s0 + 1 if fin_o >= 0 else 0)
        _narrow(out, big, nseg, F_FIN_R, fin_r - s0 + 1 if fin_r >= 0 else 0)
        _narrow(out, big, nseg, F_RST_O, rst_o - s0 + 1 if rst_o >= 0 else 0)
        _narrow(out, big, nseg, F_RST_R, rst_r - s0 + 1 if rst_r >= 0 else 0)
        _narrow(out, big, nseg, F_TERM, term - s0 + 1 if term >= 0 else 0)
        _narrow(out, big, nseg, F_TS_O, ts_o - s0 + 1 if ts_o >= 0 else 0)
        _narrow(out, big, nseg, F_TS_R, ts_r - s0 + 1 if ts_r >= 0 else 0)
        _narrow(out, big, nseg, F_FIRST_O, fo - s0 + 1 if fo >= 0 else 0)
        _narrow(out, big, nseg, F_FIRST_R, fr - s0 + 1 if fr >= 0 else 0)
        _narrow(out, big, nseg, F_HLEN, hlen)
        _wide(out, big, nseg, F_END_O, _end_code(end_o))
        _wide(out, big, nseg, F_END_R, _end_code(end_r))
        _wide(out, big, nseg, F_OBYTES, ob)
        _wide(out, big, nseg, F_RBYTES, rb)
        state: i64 = joint | comp << 6 | (1 << 12 if has_sa and est else 0)
        out.append(state & 0xFF)
        out.append(state >> 8)
        nseg += 1
        s0 = s1
    return nseg
