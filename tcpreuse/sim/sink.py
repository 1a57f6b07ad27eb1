"""Where the engine puts an attempt once nothing can change it any more.

The engine hands over each attempt when it is finished (no event of its own pending), so
it holds only live attempts. A Sink keeps either

- rows: one packed 62-byte record per attempt (struct ROW, in the order attempts finish;
  sim/record.py turns them into the RunResult's columns in start order), or
- aggregates only, when nobody asked for per-attempt output: outcome and reason counts
  (with the first attempt of each, for their order), the per-second timeline, the
  connect() latencies of the successful attempts counted per value rounded to the
  microsecond (the percentiles RunResult reports are rounded to that, so they come out
  exactly as from the rows), the first failure, and per problem (reason or cause) what
  the diagnosis quotes: attempts, failed, delayed, errnos, the first attempt.

Memory: rows are 62 bytes per attempt; aggregates are bounded by the run's length in
seconds and its number of distinct latencies, not by its attempts.
Compiled with mypyc with the engine (setup.py).
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

# idx t0 connect_ms | syn_tries outcome reason cause workload | client server |
# saddr daddr r_saddr r_daddr | sport dport r_sport r_dport   (no padding: 62 bytes)
ROW: Final = struct.Struct("=idd5h2i4I4H")
ROW_FIELDS: Final = ("idx", "t", "connect_ms", "syn_tries", "outcome", "reason", "cause", "workload",
                     "client", "server", "src", "dst", "srv_src", "srv_dst",
                     "sport", "dport", "srv_sport", "srv_dport")
ROW_DTYPES: Final = ("<i4", "<f8", "<f8", "<i2", "<i2", "<i2", "<i2", "<i2", "<i4", "<i4",
                     "<u4", "<u4", "<u4", "<u4", "<u2", "<u2", "<u2", "<u2")


class Tally:
    """A count and the first (lowest) attempt index counted: a native object as a dict
    value, so counting is an attribute increment, not a boxed int per update."""

    __slots__ = ("first", "n")

    def __init__(self, first: int) -> None:
        self.n = 0
        self.first = first


def counts(d: dict[str, Tally] | dict[float, Tally]) -> dict[Any, int]:
    """{key: count} of a tally dict, in its order."""
    return {k: v.n for k, v in d.items()}


def firsts(d: dict[str, Tally]) -> dict[str, int]:
    """{key: first index} of a tally dict, in its order."""
    return {k: v.first for k, v in d.items()}


class CauseAgg:
    """What the diagnosis reads about one problem (attempts whose reason or cause it is)."""

    def __init__(self, idx: int, t: float, client: int, daddr: int, dport: int) -> None:
        self.attempts = 0
        self.failed = 0
        self.delayed = 0
        self.first_index = idx
        self.first_t = t
        self.first_client, self.first_daddr, self.first_dport = client, daddr, dport  # its 4-tuple
        self.errnos: dict[str, int] = {}
        self.delayed_ms: dict[float, Tally] = {}  # connect() ms of the delayed ones, rounded to 1 us
        self.last_k = math.nan  # the last of them and its tally (most repeat the previous one)
        self.last_kt = Tally(0)


class Sink:
    def __init__(self, keep_rows: bool, step: float, nsteps: int) -> None:
        self.keep_rows = keep_rows
        self.n = 0
        # rows
        self.buf = bytearray()
        self.codes: dict[str, int] = {}  # outcome and reason names -> codes in `buf` ("" is -1)
        # aggregates
        self.step = step
        self.unit_step = step == 1.0
        self.nsteps = nsteps
        self._tl_attempts: list[int] = [0] * nsteps  # (read through tl_attempts)
        # Attempts are recorded about in start order, so most land in the second the last
        # one did: they are counted in a plain field and added to the list when the second
        # changes (a list item update boxes a new int each time).
        self.tl_b = -1
        self.tl_n = 0
        self.tl_failed: list[int] = [0] * nsteps
        self.tl_delayed: list[int] = [0] * nsteps
        self.outcomes: dict[str, Tally] = {}  # counts() and firsts() read them
        self.reasons: dict[str, Tally] = {}
        self.failed = 0
        self.delayed = 0
        self.ok_ms: dict[float, Tally] = {}  # connect() ms of the successful ones, rounded to 1 us
        self.ff_idx = -1  # the first failure (in start order)
        self.ff_t = 0.0
        self.ff_outcome = ""
        self.ff_reason = ""
        self.causes: dict[str, CauseAgg] = {}
        # bit idx: attempt idx succeeded (successes before a problem's first); read through
        # ok_bits. The byte the last success fell in is kept in a field and or-ed in when
        # another byte is touched (indexing a bytearray is a generic operation compiled).
        self._ok_bits: bytearray = bytearray()
        self.ok_i = -1
        self.ok_byte = 0
        # the same for successes that finish late (after SYN retries), which come in start
        # order among themselves, behind the others
        self.late_i = -1
        self.late_byte = 0
        # Most attempts repeat the previous one's connect() time (a steady run's is one
        # RTT): the last and its tally are kept, so such an attempt is counted with a float
        # test, not a rounding and a dict lookup.
        self.last_mt = Tally(0)
        self.last_ms = math.nan
        self.last_k = math.nan
        # ... and the one before (a run with SYN retries alternates between the steady time
        # and the retried attempts' own)
        self.prev_mt = Tally(0)
        self.prev_ms = math.nan
        self.prev_k = math.nan
        self.last_cause = "\0"
        self.last_ca = CauseAgg(0, 0.0, 0, 0, 0)
        self.last_out, self.last_out_t = "\0", Tally(0)  # the last outcome and reason counted
        self.last_rsn, self.last_rsn_t = "\0", Tally(0)
        self.last_codes = ("\0", "\0", "\0")
        self.last_code_vals = (0, 0, 0)

    @property
    def tl_attempts(self) -> list[int]:
        """Attempts per timeline step (by start time)."""
        self._flush_tl()
        return self._tl_attempts

    @property
    def ok_bits(self) -> bytearray:
        """Bit idx is set when attempt idx succeeded."""
        self._flush_ok()
        return self._ok_bits

    def _flush_tl(self) -> None:
        if self.tl_n:
            tl, b = self._tl_attempts, self.tl_b
            tl[b] = tl[b] + self.tl_n
            self.tl_n = 0

    def _flush_ok(self) -> None:
        if self.ok_byte:
            self._or_ok(self.ok_i, self.ok_byte)
            self.ok_byte = 0
        if self.late_byte:
            self._or_ok(self.late_i, self.late_byte)
            self.late_byte = 0

    def _or_ok(self, i: int, bits: int) -> None:
        ob = self._ok_bits
        if i >= len(ob):
            ob.extend(bytes(i + 1 - len(ob) + 4096))
        ob[i] = ob[i] | bits

    def code(self, name: str) -> int:
        if not name:
            return -1
        c = self.codes.get(name)
        if c is None:
            c = len(self.codes)
            self.codes[name] = c
        return c

    def add(self, idx: int, t0: float, connect_ms: float, tries: int, outcome: str, reason: str, cause: str,
            workload: int, client: int, server: int, saddr: int, daddr: int, r_saddr: int, r_daddr: int,
            sport: int, dport: int, r_sport: int, r_dport: int) -> None:
        self.n += 1
        if self.keep_rows:
            if outcome is self.last_codes[0] and reason is self.last_codes[1] and cause is self.last_codes[2]:
                co, cr, cc = self.last_code_vals
            else:
                co, cr, cc = self.code(outcome), self.code(reason), self.code(cause)
                self.last_codes, self.last_code_vals = (outcome, reason, cause), (co, cr, cc)
            self.buf += ROW.pack(idx, t0, connect_ms, tries, co, cr, cc, workload, client, server,
                                 saddr, daddr, r_saddr, r_daddr, sport, dport, r_sport, r_dport)
            return
        # (int(t0) is t0 // 1.0 for t0 >= 0, and below 0 both are clamped to 0; a float `//`
        # is an fmod() call)
        b = int(t0) if self.unit_step else int(t0 // self.step)
        if b < 0:
            b = 0
        elif b >= self.nsteps:
            b = self.nsteps - 1
        if b != self.tl_b:
            self._flush_tl()
            self.tl_b = b
        self.tl_n += 1
        failed = outcome != "ok"
        delayed = reason == "ok_after_syn_retry" or reason == "ok_after_app_retry"
        if outcome is self.last_out:  # (interned names: the steady run's repeat is a pointer test)
            _seen(self.last_out_t, idx)
        else:
            self.last_out, self.last_out_t = outcome, _count(self.outcomes, outcome, idx)
        if reason is self.last_rsn:
            _seen(self.last_rsn_t, idx)
        else:
            self.last_rsn, self.last_rsn_t = reason, _count(self.reasons, reason, idx)
        k = math.nan  # connect() ms rounded to 1 us (successes), computed once for ok_ms and causes
        if failed:
            self.failed += 1
            # (x[i] = x[i] + 1 rather than x[i] += 1: compiled code makes the augmented form a
            # generic operation)
            tl = self.tl_failed
            tl[b] = tl[b] + 1
            if self.ff_idx < 0 or idx < self.ff_idx:
                self.ff_idx, self.ff_t, self.ff_outcome, self.ff_reason = idx, t0, outcome, reason
        else:
            i = idx >> 3
            if i == self.ok_i:
                self.ok_byte |= 1 << (idx & 7)
            elif i > self.ok_i:
                if self.ok_byte:
                    self._or_ok(self.ok_i, self.ok_byte)
                self.ok_i, self.ok_byte = i, 1 << (idx & 7)
            elif i == self.late_i:  # one that finished late (after a later byte was started)
                self.late_byte |= 1 << (idx & 7)
            else:
                if self.late_byte:
                    self._or_ok(self.late_i, self.late_byte)
                self.late_i, self.late_byte = i, 1 << (idx & 7)
            if connect_ms == self.last_ms:  # (false for NaN)
                k = self.last_k
                self.last_mt.n += 1
            elif connect_ms == self.prev_ms:
                k = self.prev_k
                self.prev_mt.n += 1
                self.prev_ms, self.prev_k, self.prev_mt, self.last_ms, self.last_k, self.last_mt = (
                    self.last_ms, self.last_k, self.last_mt, connect_ms, k, self.prev_mt)
            elif not math.isnan(connect_ms):
                k = round3(connect_ms)
                self.prev_ms, self.prev_k, self.prev_mt = self.last_ms, self.last_k, self.last_mt
                self.last_ms, self.last_k, self.last_mt = connect_ms, k, _tally(self.ok_ms, k)
        if delayed:
            self.delayed += 1
            tl = self.tl_delayed
            tl[b] = tl[b] + 1
        if reason:
            self._cause(reason, idx, t0, failed, outcome, k, client, daddr, dport)
        if cause and cause != reason:
            self._cause(cause, idx, t0, failed, outcome, k, client, daddr, dport)

    def _cause(self, name: str, idx: int, t0: float, failed: bool, outcome: str, k: float,
               client: int, daddr: int, dport: int) -> None:
        """Count the attempt under problem `name`; k: its connect() ms rounded to 1 us
        (round3), NaN if it failed or has none."""
        s = self.last_ca if name is self.last_cause else self.causes.get(name)
        if s is None:
            s = CauseAgg(idx, t0, client, daddr, dport)
            self.causes[name] = s
        elif idx < s.first_index:
            s.first_index, s.first_t = idx, t0
            s.first_client, s.first_daddr, s.first_dport = client, daddr, dport
        self.last_cause, self.last_ca = name, s
        s.attempts += 1
        if failed:
            s.failed += 1
            s.errnos[outcome] = s.errnos.get(outcome, 0) + 1
        else:
            s.delayed += 1
            if k == s.last_k:  # (false for NaN)
                s.last_kt.n += 1
            elif not math.isnan(k):
                s.last_k, s.last_kt = k, _tally(s.delayed_ms, k)


def round3(x: float) -> float:
    """round(x, 3), exactly, without its decimal conversion when the answer is clear:
    x * 1000 is within half an ulp of the exact product, so unless that lands near a
    half its nearest integer is the correctly rounded one, and that integer / 1000 (one
    correctly rounded division) is the double round() returns."""
    y = x * 1000.0
    if not abs(y) < 1e15:
        return round(x, 3)
    f = float(math.floor(y))
    d = y - f
    if abs(d - 0.5) > 1e-15 * abs(y):  # (half an ulp of y is at most 1.2e-16 * |y|)
        return (f + 1.0 if d > 0.5 else f) / 1000.0
    return round(x, 3)


def _count(tallies: dict[str, Tally], name: str, idx: int) -> Tally:
    t = tallies.get(name)
    if t is None:
        t = tallies[name] = Tally(idx)
    _seen(t, idx)
    return t


def _seen(t: Tally, idx: int) -> None:
    """Count attempt `idx` in `t`."""
    if idx < t.first:
        t.first = idx
    t.n += 1


def _tally(tallies: dict[float, Tally], k: float) -> Tally:
    t = tallies.get(k)
    if t is None:
        t = tallies[k] = Tally(0)
    t.n += 1
    return t
