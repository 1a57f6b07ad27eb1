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

try:
    from mypy_extensions import i64
except ImportError:  # pragma: no cover - the pure-Python package without mypy_extensions
    i64 = int  # type: ignore[misc]

COMPILED: bool = not __file__.endswith(".py")  # imported from the mypyc-built extension
ESCAPE = 0xFFFF  # a length >= this is stored as FF FF and listed in `big`


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

    mirrors tcp_remember_stamp() / tcp_v4_remember_stamp() (spec §5.3): a write wins if
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
