"""pcap and pcapng files: find every packet record, fast.

Reading a capture is two passes. This module is the first: it walks the record (pcap) or
block (pcapng) headers with a tight loop that only reads each record's length (the one
thing that cannot be vectorised: where record k+1 starts depends on record k), then reads
all other header fields at once with numpy. The result is a :class:`Frames` table (where
each frame's bytes are, how long, when, which link type), which :mod:`.decode` turns into
TCP packets without touching Python per packet.

Damage does not lose what came before it. A record header that cannot be right (length
beyond the snap length, microseconds >= 1e6, captured > original length, a block trailer
that does not repeat the block length) ends the clean run; the reader then looks for the
next plausible record (resynchronises), and reports what it skipped and why in a
:class:`ReadReport`. Only a file that is not a capture at all raises :class:`CaptureError`.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptureError
from . import backend
from .window import GzipInflater, Source, as_source

PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),  # microseconds, little-endian writer
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),  # nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
BLOCK_NAMES = {
    0x01: "IDB",
    0x02: "PB (obsolete)",
    0x03: "SPB",
    0x04: "NRB",
    0x05: "ISB",
    0x06: "EPB",
    0x09: "systemd journal",
    0x0A: "DSB",
    0x0BAD: "custom",
    0x40000BAD: "custom",
}
# Largest record we believe when the header's snap length is smaller (GRO/TSO frames
# can exceed it) — and the most a corrupt length may make us skip in one step.
MAX_RECORD = 1 << 18
MAX_RESYNC_SCAN = 16 << 20  # bytes scanned per resynchronisation attempt
MAX_RESYNCS = 64


@dataclass
class ReadReport:
    """How far reading got and what was left out. Part of every result."""

    path: str
    format: str = ""
    bytes_total: int = 0
    bytes_read: int = 0  # end of the last record that was used
    records: int = 0  # packet records found (all link types, all protocols)
    tcp_packets: int = 0  # records decoded to TCP segments
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records
    garbage_bytes: int = 0  # bytes jumped over while resynchronising
    other_blocks: dict[str, int] = field(default_factory=dict)  # pcapng blocks not holding packets
    linktypes: dict[int, int] = field(default_factory=dict)  # link type -> records
    warnings: list[str] = field(default_factory=list)
    complete: bool = True  # False: damage or truncation was met
    gzip_damage: str = ""  # a gzip file's stream ended early or was damaged: bytes_total is what inflated
    bad_times: int = 0  # records dropped for a timestamp far outside the rest of the capture

    def skip(self, reason: str, n: int = 1) -> None:
        if n:
            self.skipped[reason] = self.skipped.get(reason, 0) + int(n)

    def warn(self, msg: str) -> None:
        self.complete = False
        if len(self.warnings) < 50:
            self.warnings.append(msg)
        elif len(self.warnings) == 50:
            self.warnings.append("(further warnings suppressed)")

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
            "records": self.records,
            "tcp_packets": self.tcp_packets,
            "skipped": dict(self.skipped),
            "garbage_bytes": self.garbage_bytes,
            "other_blocks": dict(self.other_blocks),
            "linktypes": {str(k): v for k, v in self.linktypes.items()},
            "warnings": list(self.warnings),
            "complete": self.complete,
            "gzip_damage": self.gzip_damage,
            "bad_times": self.bad_times,
        }

    def summary(self) -> str:
        """How far reading got. The share is rounded down, so only a whole read says
        100 %; one that stopped early says by how many bytes and whether it was cut."""
        total, got = self.bytes_total, min(self.bytes_read, self.bytes_total)
        cut = any(w.startswith("truncated") for w in self.warnings) or "truncated" in self.gzip_damage
        of = (f"the {total:,} bytes a {'truncated' if 'truncated' in self.gzip_damage else 'damaged'} "
              "gzip stream inflated to" if self.gzip_damage else f"{total:,} bytes")
        if got >= total:
            share = "100 %"
        else:
            left = total - got
            share = (f"{math.floor(1000.0 * got / total) / 10:.1f} %: stopped {left:,} byte"
                     f"{'s' if left != 1 else ''} before the end, "
                     + ("truncated" if cut else "damaged" if not self.complete else "no records there"))
        return f"read {got:,} of {of} ({share}), {self.records:,} records, {self.tcp_packets:,} TCP packets"


@dataclass
class PcapIndex:
    """The believable records of a pcap file, by offset: what the C decoder reads (it
    takes each header's fields from the file itself, so no per-frame columns are built)."""

    rec_off: np.ndarray  # int64: offset of each record's 16-byte header
    endian: str
    tsdiv: int
    linktype: int


class Frames:
    """Every packet record of one file: where its bytes are and its header fields.

    Columns: data_off (int64, offset of the frame's first byte in buf), caplen (int64,
    bytes captured), origlen (int64, bytes on the wire), ts (float64, seconds since the
    epoch), linktype (int32), frame (int64, record number in the file, 1-based: tshark
    frame.number). A pcap file read with the C extension carries a :class:`PcapIndex`
    instead, and the columns are computed from it only when asked for."""

    def __init__(self, buf: Any, data_off: np.ndarray | None, caplen: np.ndarray | None,
                 origlen: np.ndarray | None, ts: np.ndarray | None, linktype: np.ndarray | None,
                 frame: np.ndarray | None, report: ReadReport, pcap: PcapIndex | None = None) -> None:
        self.buf = buf  # bytes, mmap or similar: the whole file
        self.report = report
        self.pcap = pcap
        if pcap is None:
            assert data_off is not None and caplen is not None and origlen is not None
            assert ts is not None and linktype is not None and frame is not None
            self.data_off, self.caplen, self.origlen = data_off, caplen, origlen
            self.ts, self.linktype, self.frame = ts, linktype, frame

    def __getattr__(self, name: str) -> np.ndarray:
        """The columns of a :class:`PcapIndex`, on first use."""
        pcap = self.__dict__.get("pcap")
        if pcap is None or name not in ("data_off", "caplen", "origlen", "ts", "linktype", "frame"):
            raise AttributeError(name)
        sec, frac, incl, orig = _pcap_fields(self.buf, pcap.rec_off, pcap.endian)
        n = pcap.rec_off.size
        self.data_off = pcap.rec_off + 16
        self.caplen, self.origlen = incl, orig
        self.ts = sec.astype(np.float64) + frac.astype(np.float64) / pcap.tsdiv
        self.linktype = np.full(n, pcap.linktype, dtype=np.int32)
        self.frame = np.arange(1, n + 1, dtype=np.int64)
        col: np.ndarray = self.__dict__[name]
        return col

    def __len__(self) -> int:
        return int(self.pcap.rec_off.shape[0] if self.pcap is not None else self.data_off.shape[0])


def _u32_view(buf: Any, endian: str) -> np.ndarray:
    """uint32 readable at *every* byte offset (unaligned, strides of one byte)."""
    n = len(buf)
    if n < 4:
        return np.zeros(0, dtype=np.uint32)
    return np.ndarray((n - 3,), dtype=endian + "u4", buffer=buf, offset=0, strides=(1,))


def _u16_view(buf: Any, endian: str) -> np.ndarray:
    n = len(buf)
    if n < 2:
        return np.zeros(0, dtype=np.uint16)
    return np.ndarray((n - 1,), dtype=endian + "u2", buffer=buf, offset=0, strides=(1,))


# --------------------------------------------------------------------------------------
# opening


def open_buffer(path: str | os.PathLike[str]) -> tuple[Any, int, str]:
    """The file's bytes (memory-mapped; gzip files are decompressed in memory), its size,
    and what went wrong inflating a damaged gzip stream ("" when nothing did)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if not p.is_file():
            raise CaptureError(f"{p}: not a regular file")
        with open(p, "rb") as f:
            head = f.read(2)
            if head == b"\x1f\x8b":
                f.seek(0)
                data, damage = inflate_gzip(f.read())
                if damage and len(data) < 4:
                    raise CaptureError(f"{p}: nothing could be inflated from this gzip stream: "
                                       + damage.split(";")[0])
                return data, len(data), damage
            if size == 0:
                return b"", 0, ""
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), size, ""
    except FileNotFoundError:
        raise CaptureError(f"{p}: no such file") from None
    except PermissionError:
        raise CaptureError(f"{p}: permission denied") from None
    except IsADirectoryError:
        raise CaptureError(f"{p}: is a directory") from None
    except OSError as e:
        raise CaptureError(f"{p}: cannot read ({e.strerror or e})") from None


def inflate_gzip(raw: bytes, step: int | None = None) -> tuple[bytes, str]:
    """The bytes a gzip file inflates to (all its members) as far as they inflate, and ""
    or what stopped it: a truncated or damaged stream keeps what came before, as a
    truncated capture keeps its records (GzipFile would drop it all, or raise zlib.error)."""
    g = GzipInflater(io.BytesIO(raw), len(raw), step)
    data = b"".join(g)
    return data, g.damage


def read_frames(path: str | os.PathLike[str]) -> Frames:
    buf, _size, damage = open_buffer(path)
    fr = parse_frames(buf, str(path))
    if damage:
        fr.report.gzip_damage = damage
        fr.report.warn(damage)
    return fr


def parse_frames(buf: Any, name: str = "<buffer>") -> Frames:
    """Find every packet record in `buf` (a whole pcap or pcapng file)."""
    rep = ReadReport(path=name, bytes_total=len(buf))
    if len(buf) < 4:
        raise CaptureError(f"{name}: {len(buf)} bytes is too short to be a pcap or pcapng file")
    magic = bytes(buf[:4])
    if magic in PCAP_MAGIC:
        return backend.ACTIVE.read_pcap(buf, rep)
    if struct.unpack("<I", magic)[0] == PCAPNG_SHB:
        return _parse_pcapng(buf, rep)
    hint = None
    if magic[:2] in (b"PK", b"BZ") or magic[:3] == b"\xfd7z":
        hint = "decompress it first (only gzip is read directly)"
    raise CaptureError(
        f"{name}: not a pcap or pcapng file (starts with {magic.hex()})",
        hint=hint or "write captures with `tcpdump -w FILE` (pcap) or dumpcap/Wireshark (pcapng)",
    )


def _empty_frames(buf: Any, rep: ReadReport) -> Frames:
    z = np.zeros(0, dtype=np.int64)
    return Frames(buf, z, z, z, np.zeros(0), np.zeros(0, dtype=np.int32), z, rep)


# --------------------------------------------------------------------------------------
# pcap


def _walk_pcap(buf: Any, off: int, end: int, endian: str) -> tuple[np.ndarray, tuple[np.ndarray, ...], int, str]:
    """Record offsets and header fields (see :func:`_pcap_fields`) from `off` until the
    end of the file.

    The hot loop of the whole reader: it reads only each record's length (the lengths
    are checked afterwards, vectorised, by the caller). Returns (offsets, fields, where
    it stopped, why: "" at a clean end, else a truncation message)."""
    offs, last = _walk_struct(buf, off, end, endian)
    fields = _pcap_fields(buf, offs, endian)
    if last == end:
        return offs, fields, last, ""
    if last > end and offs.size:  # the final record's data is cut short
        cut = int(offs[-1])
        return (offs[:-1], tuple(f[:-1] for f in fields), cut,
                f"last record cut short ({end - cut - 16} of {last - cut - 16} bytes)")
    return offs, fields, last, f"{end - last} stray bytes at the end (a cut record header)"


def _walk_struct(buf: Any, off: int, end: int, endian: str) -> tuple[np.ndarray, int]:
    """The same walk in the interpreter: one struct read per record (about 100 ns)."""
    unpack = struct.Struct(endian + "I").unpack_from
    view = memoryview(buf)[8 : end - 4] if end >= 12 else memoryview(b"")  # whole 16-byte headers only
    offs = array("q")  # converts to numpy without a copy
    append = offs.append
    try:
        while True:
            append(off)
            off += 16 + unpack(view, off)[0]
    except struct.error:
        pass
    view.release()
    last = offs.pop()  # the offset whose header did not fit
    arr = np.frombuffer(offs, dtype=np.int64) if len(offs) else np.zeros(0, dtype=np.int64)
    return arr, last


def _pcap_header_ok(h: np.ndarray, tsdiv: int, limit: int, ts_lo: float, ts_hi: float) -> np.ndarray:
    """Which pcap record headers (rows of 4 uint32) are believable."""
    return (
        (h[:, 1] < tsdiv)
        & (h[:, 2] <= limit)
        & (h[:, 2] <= h[:, 3])
        & (h[:, 3] <= max(limit, MAX_RECORD) * 4)
        & (h[:, 0] >= ts_lo)
        & (h[:, 0] <= ts_hi)
    )


def _pcap_time_bounds(buf: Any, endian: str, tsdiv: int, limit: int) -> tuple[float, float]:
    """The times a record may carry: a year before to five years after the median time of
    the first (up to) nine chained records, so that one damaged timestamp in the first
    record does not become the bound that rejects every other record. Unset (0, 2**32)
    when not even the first header can be read."""
    secs = [sec for sec, _frac in _first_records(buf, endian, tsdiv, limit)]
    if not secs:
        return 0.0, float(2**32)
    t0 = float(sorted(secs)[len(secs) // 2])
    return t0 - 86400 * 365, t0 + 86400 * 365 * 5


def _first_records(buf: Any, endian: str, tsdiv: int, limit: int, n: int = 9) -> list[tuple[int, int]]:
    """(seconds, fraction) of the first (up to) `n` chained records whose headers are
    believable, stopping at the first that is not."""
    hdr = struct.Struct(endian + "IIII")
    off, out = 24, list[tuple[int, int]]()
    while len(out) < n and off + 16 <= len(buf):
        sec, frac, incl, orig = hdr.unpack_from(buf, off)
        if frac >= tsdiv or incl > limit or incl > orig:
            break
        out.append((sec, frac))
        off += 16 + incl
    return out


def pcap_start_time(buf: Any) -> float:
    """When a pcap file starts, read from its first records only: the median time of the
    first (up to) nine chained records (one damaged record time does not move it); inf
    when not even the first record header can be read. What orders rotated files for a
    streamed read, before any of them is decoded. `buf`: the file's bytes or a
    :data:`Source` (a gzip file inflates as far as those records)."""
    src = as_source(buf)
    if src.ensure(24) < 24 or bytes(src.buf[:4]) not in PCAP_MAGIC:
        return float("inf")
    hdr = pcap_header(src.buf, ReadReport(path=""))
    _ensure_first_records(src, hdr)
    buf = src.buf
    t = sorted(sec + frac / hdr.tsdiv for sec, frac in _first_records(buf, hdr.endian, hdr.tsdiv, hdr.limit))
    return t[len(t) // 2] if t else float("inf")


def _ensure_first_records(src: Source, hdr: PcapHeader, n: int = 9) -> None:
    """Make the headers :func:`_first_records` reads readable (a source at its start)."""
    rec = struct.Struct(hdr.endian + "IIII")
    off = 24
    for _ in range(n):
        if src.ensure(off + 16) < off + 16:
            return
        _sec, frac, incl, orig = rec.unpack_from(src.buf, off)
        if frac >= hdr.tsdiv or incl > hdr.limit or incl > orig:
            return
        off += 16 + incl


def _parse_pcap_numpy(buf: Any, rep: ReadReport) -> Frames:
    """Every believable record of a pcap file: the reference (the numpy backend)."""
    end = len(buf)
    endian, tsdiv = PCAP_MAGIC[bytes(buf[:4])]
    rep.format = "pcap (ns)" if tsdiv == 1_000_000_000 else "pcap"
    if end < 24:
        rep.warn(f"file ends inside the 24-byte pcap header ({end} bytes)")
        rep.bytes_read = end
        return _empty_frames(buf, rep)
    _vmaj, _vmin, _zone, _sig, snaplen, network = struct.unpack_from(endian + "HHiIII", buf, 4)
    linktype = network & 0x0FFFFFFF  # upper bits: FCS length flags
    limit = max(min(snaplen, 1 << 26), MAX_RECORD) if snaplen else MAX_RECORD * 4
    u32 = _u32_view(buf, endian)

    chunks: list[tuple[np.ndarray, ...]] = []
    off = 24
    ts_lo, ts_hi = _pcap_time_bounds(buf, endian, tsdiv, limit)
    resyncs = 0
    rep.bytes_read = 24
    while True:
        arr, (sec, frac, incl, orig), stop, why = _walk_pcap(buf, off, end, endian)
        if arr.size:
            if ts_hi == float(2**32):  # bound the times by the first record's
                t0 = float(sec[0])
                ts_lo, ts_hi = t0 - 86400 * 365, t0 + 86400 * 365 * 5
            ok = _fields_ok(sec, frac, incl, orig, tsdiv, limit, ts_lo, ts_hi)
            if not ok.all():
                k = int(np.argmin(ok))
                stop = int(arr[k])
                why = _bad_pcap_header_reason(np.array([sec[k], frac[k], incl[k], orig[k]]), tsdiv, limit)
                arr, sec, frac, incl, orig = arr[:k], sec[:k], frac[:k], incl[:k], orig[:k]
            if arr.size:
                chunks.append((arr, sec, frac, incl, orig))
                rep.bytes_read = int(arr[-1]) + 16 + int(incl[-1])
        if not why:
            break
        cut = why.startswith("last record cut short") or why.endswith("(a cut record header)")
        nxt = _after_damage(rep, buf, u32, endian, stop, end, why, cut, resyncs, tsdiv, limit, ts_lo, ts_hi)
        if nxt is None:
            break
        resyncs += 1
        off = nxt
    if len(chunks) == 1:
        arr, sec, frac, incl, orig = chunks[0]
    elif chunks:
        arr, sec, frac, incl, orig = (np.concatenate([c[i] for c in chunks]) for i in range(5))
    else:
        z = np.zeros(0, dtype=np.int64)
        return Frames(buf, z, z, z, np.zeros(0), np.zeros(0, dtype=np.int32), z, rep)
    n = arr.size
    rep.records = n
    rep.linktypes[linktype] = n
    return Frames(
        buf=buf,
        data_off=arr + 16,
        caplen=incl,
        origlen=orig,
        ts=sec.astype(np.float64) + frac.astype(np.float64) / tsdiv,
        linktype=np.full(n, linktype, dtype=np.int32),
        frame=np.arange(1, n + 1, dtype=np.int64),
        report=rep,
    )


def _parse_pcap_c(lib: Any, buf: Any, rep: ReadReport) -> Frames:
    """:func:`_parse_pcap_numpy` with the walk and the header checks in one C pass
    (``_ccap.pcap_scan``): the same records, report, warnings and resynchronisation,
    and a :class:`PcapIndex` instead of per-frame columns."""
    hdr = pcap_header(buf, rep)
    chunks = list(scan_pcap(lib, buf, rep, hdr))
    rec = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return Frames(buf, None, None, None, None, None, None, rep, pcap=PcapIndex(rec, hdr.endian, hdr.tsdiv,
                                                                              hdr.linktype))


@dataclass
class PcapHeader:
    """A pcap file's global header, as the record walk uses it."""

    endian: str
    tsdiv: int
    linktype: int
    limit: int  # the largest record length believed


def pcap_header(buf: Any, rep: ReadReport) -> PcapHeader:
    endian, tsdiv = PCAP_MAGIC[bytes(buf[:4])]
    rep.format = "pcap (ns)" if tsdiv == 1_000_000_000 else "pcap"
    _vmaj, _vmin, _zone, _sig, snaplen, network = struct.unpack_from(endian + "HHiIII", buf, 4)
    limit = max(min(snaplen, 1 << 26), MAX_RECORD) if snaplen else MAX_RECORD * 4
    return PcapHeader(endian, tsdiv, network & 0x0FFFFFFF, limit)


SCAN_WINDOW = 32 << 20  # bytes of a compressed file inflated per step when no window is given


def scan_pcap(lib: Any, buf: Any, rep: ReadReport, hdr: PcapHeader, window: int | None = None) -> Iterator[np.ndarray]:
    """The offsets of a pcap file's believable records (``_ccap.pcap_scan``), in runs.
    `buf`: the file's bytes, or a :data:`Source` (a gzip file inflated as it is read:
    the window must hold what the scan reads, the offsets are the file's). `window`
    None: one run per stretch between damages (the whole file when it is clean); a
    number of bytes: runs of about that many bytes, so a reader can decode and forget
    each before the next is scanned. A record or header that a window's end cuts is
    where the next window starts, not damage: the records, report, warnings and
    resynchronisation are those of one scan (a resynchronisation looks as far ahead as
    the one-pass scan can: MAX_RESYNC_SCAN and three records). Sets the report's record
    count at the end, and the file's size (`src.finish`: an inflated size, and a
    damaged gzip stream's warning after the scan's, as :func:`read_frames` adds it)."""
    src = as_source(buf)
    endian, tsdiv, limit = hdr.endian, hdr.tsdiv, hdr.limit
    rec_hdr = struct.Struct(endian + "IIII")
    off = 24
    _ensure_first_records(src, hdr)
    ts_lo, ts_hi = _pcap_time_bounds(src.buf, endian, tsdiv, limit)
    resyncs = 0
    records = 0
    rep.bytes_read = 24
    whole = window or (len(src.buf) if src.done else SCAN_WINDOW)
    step = whole
    while True:
        bounds = ts_hi != float(2**32)  # as _parse_pcap_numpy tells whether the bounds are set
        avail = src.ensure(off + step)
        w_end = min(avail, off + step)
        at_end = src.done and w_end == avail  # this window ends where the file does
        base = src.base
        offs, status, stop, bounds, ts_lo, ts_hi = lib.pcap_scan(src.buf, off - base, w_end - base, endian == "<",
                                                                  tsdiv, limit, bounds, ts_lo, ts_hi)
        stop += base
        arr = np.frombuffer(offs, dtype=np.int64)
        if arr.size:
            if base:
                arr = arr + base
            records += int(arr.size)
            last = int(arr[-1])
            rep.bytes_read = last + 16 + rec_hdr.unpack_from(src.buf, last - base)[2]
            yield arr  # the reader may release what lies before its first pending record
        if not at_end and status == 1 and ts_hi != float(2**32):
            h = np.array([rec_hdr.unpack_from(src.buf, stop - src.base)])
            if not _pcap_header_ok(h, tsdiv, limit, ts_lo, ts_hi)[0]:
                status = 3  # a damaged length, not a long record: damage here, as one scan finds it
        if not at_end and status in (1, 2):  # the window's end, not the file's
            step = step if stop > off else 2 * step  # a record longer than the window
            off = stop
            continue
        step = whole
        if status == 0:
            if not at_end:
                off = w_end
                continue
            break
        if status == 3:  # as far ahead as a resynchronisation may look
            avail = src.ensure(stop + MAX_RESYNC_SCAN + 3 * (16 + limit) + 32)
        base = src.base
        if status == 3:
            why = _bad_pcap_header_reason(np.array(rec_hdr.unpack_from(src.buf, stop - base)), tsdiv, limit)
        elif status == 1:
            incl = rec_hdr.unpack_from(src.buf, stop - base)[2]
            why = f"last record cut short ({avail - stop - 16} of {incl} bytes)"
        else:
            why = f"{avail - stop} stray bytes at the end (a cut record header)"
        u32 = _u32_view(src.buf, endian)
        nxt = _after_damage(rep, src.buf, u32, endian, stop - base, avail - base, why, status != 3, resyncs, tsdiv,
                            limit, ts_lo, ts_hi, base)
        del u32  # a view of an inflated window keeps it from moving
        if nxt is None:
            break
        resyncs += 1
        off = nxt + base
    if records:
        rep.records = records
        rep.linktypes[hdr.linktype] = records
    src.finish(rep)


def _pcap_fields(buf: Any, arr: np.ndarray, endian: str) -> tuple[np.ndarray, ...]:
    """(ts seconds, ts fraction, captured length, original length) of record headers:
    each 16-byte header gathered whole, then read as four integers."""
    hdr = np.dtype([("sec", endian + "u4"), ("frac", endian + "u4"), ("incl", endian + "u4"),
                    ("orig", endian + "u4")])
    if arr.size:
        v16 = np.ndarray((len(buf) - 15,), dtype="V16", buffer=buf, offset=0, strides=(1,))
        h = v16[arr].view(hdr)
    else:
        h = np.zeros(0, dtype=hdr)
    return (h["sec"].astype(np.uint64), h["frac"].astype(np.uint64), h["incl"].astype(np.int64),
            h["orig"].astype(np.int64))


def _fields_ok(sec: np.ndarray, frac: np.ndarray, incl: np.ndarray, orig: np.ndarray, tsdiv: int,
               limit: int, ts_lo: float, ts_hi: float) -> np.ndarray:
    return (
        (frac < tsdiv)
        & (incl <= limit)
        & (incl <= orig)
        & (orig <= max(limit, MAX_RECORD) * 4)
        & (sec >= ts_lo)
        & (sec <= ts_hi)
    )


def _bad_pcap_header_reason(h: np.ndarray, tsdiv: int, limit: int) -> str:
    sec, frac, incl, orig = (int(x) for x in h)
    if frac >= tsdiv:
        return f"sub-second field {frac} out of range"
    if incl > limit:
        return f"record length {incl} exceeds {limit}"
    if incl > orig:
        return f"captured length {incl} > original length {orig}"
    if orig > max(limit, MAX_RECORD) * 4:
        return f"original length {orig} implausible"
    return f"timestamp {sec} far from the rest of the capture"


def _after_damage(rep: ReadReport, buf: Any, u32: np.ndarray, endian: str, stop: int, end: int, why: str,
                  cut: bool, resyncs: int, tsdiv: int, limit: int, ts_lo: float, ts_hi: float,
                  base: int = 0) -> int | None:
    """Where a pcap walk stopped at byte `stop` for `why`: a cut last record (`cut`) whose
    header is believable is a truncation (None: stop); anything else is damage, skipped to
    the next believable record (its offset), unless too many resynchronisations or none
    is found (None). Each outcome is reported. `buf` may be a window of the file that
    starts at file offset `base` (offsets here are the window's, reports the file's)."""
    if cut:
        believable = True
        if stop + 16 <= end:
            h = np.array([struct.unpack_from(endian + "IIII", buf, stop)])
            believable = bool(_pcap_header_ok(h, tsdiv, limit, ts_lo, ts_hi)[0])
            if not believable:
                why = _bad_pcap_header_reason(h[0], tsdiv, limit)
        if believable:
            rep.warn(f"truncated at byte {stop + base:,}: {why}")
            return None
    if resyncs >= MAX_RESYNCS:
        rep.warn(f"gave up at byte {stop + base:,} after {resyncs} resynchronisations ({why})")
        return None
    nxt = _resync_pcap(buf, u32, stop + 1, end, tsdiv, limit, ts_lo, ts_hi)
    if nxt is None:
        rep.warn(f"unreadable from byte {stop + base:,} ({why}); no believable record after it")
        return None
    rep.garbage_bytes += nxt - stop
    rep.warn(f"skipped {nxt - stop:,} damaged bytes at {stop + base:,} ({why}); resynchronised")
    return nxt


def _resync_pcap(buf: Any, u32: np.ndarray, start: int, end: int, tsdiv: int, limit: int,
                 ts_lo: float, ts_hi: float) -> int | None:
    """The first offset >= start where three chained record headers are believable
    (or the chain ends exactly at the end of the file)."""
    stop = min(end - 16, start + MAX_RESYNC_SCAN)
    pos = start
    step = 1 << 20
    while pos <= stop:
        hi = min(stop + 1, pos + step)
        idx = np.arange(pos, hi, dtype=np.int64)
        hdr = np.stack([u32[idx], u32[idx + 4], u32[idx + 8], u32[idx + 12]], axis=1)
        cand = idx[_pcap_header_ok(hdr, tsdiv, limit, ts_lo, ts_hi)]
        for c in cand.tolist():
            if _chain_ok(u32, c, end, tsdiv, limit, ts_lo, ts_hi):
                return int(c)
        pos = hi
    return None


def _chain_ok(u32: np.ndarray, off: int, end: int, tsdiv: int, limit: int, ts_lo: float, ts_hi: float) -> bool:
    for _ in range(3):
        if off == end:
            return True
        if off + 16 > end:
            return False
        h = np.array([[u32[off], u32[off + 4], u32[off + 8], u32[off + 12]]])
        if not _pcap_header_ok(h, tsdiv, limit, ts_lo, ts_hi)[0]:
            return False
        off += 16 + int(h[0, 2])
        if off > end:
            return False
    return True


# --------------------------------------------------------------------------------------
# pcapng


@dataclass
class _Iface:
    linktype: int
    snaplen: int
    tsdiv: float = 1e6  # units per second
    tsoffset: int = 0  # seconds added to every timestamp


def _idb_options(buf: Any, off: int, end: int, endian: str, iface: _Iface) -> None:
    """if_tsresol (9) and if_tsoffset (14) from an IDB's options."""
    while off + 4 <= end:
        code, olen = struct.unpack_from(endian + "HH", buf, off)
        if code == 0:
            return
        val = off + 4
        if val + olen > end:
            return
        if code == 9 and olen >= 1:
            r = buf[val]
            exp = r & 0x7F
            if exp <= 30 if r & 0x80 else exp <= 12:
                iface.tsdiv = float(2**exp if r & 0x80 else 10**exp)
        elif code == 14 and olen >= 8:
            iface.tsoffset = struct.unpack_from(endian + "q", buf, val)[0]
        off = val + ((olen + 3) & ~3)


class _Offsets:
    """Block offsets found one at a time (list) or a run at a time (arrays), in order."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []
        self._one: list[int] = []
        self._n = 0

    def append(self, off: int) -> None:
        self._one.append(off)
        self._n += 1

    def extend(self, offs: np.ndarray) -> None:
        if offs.size:
            self._flush()
            self._parts.append(offs)
            self._n += offs.size

    def _flush(self) -> None:
        if self._one:
            self._parts.append(np.asarray(self._one, dtype=np.int64))
            self._one = []

    def __len__(self) -> int:
        return self._n

    def last(self) -> int:
        return self._one[-1] if self._one else int(self._parts[-1][-1])

    def array(self) -> np.ndarray:
        self._flush()
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=np.int64)]
        return self._parts[0]


@dataclass
class _NgWalk:
    """What one pass over a pcapng file found."""

    epb: _Offsets = field(default_factory=lambda: _Offsets())  # EPB offsets (fields read vectorised later)
    epb_sec: list[tuple[int, int]] = field(default_factory=list)  # (first EPB index, section)
    # SPB/PB: (data offset, caplen, origlen, interface, ts high, ts low); ts -1 = none
    slow: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    slow_pos: list[int] = field(default_factory=list)  # position among all packet blocks
    slow_sec: list[int] = field(default_factory=list)
    sections: list[tuple[str, list[_Iface]]] = field(default_factory=list)


def _parse_pcapng(buf: Any, rep: ReadReport) -> Frames:
    """pcapng: SHB sections (each with its own byte order and interfaces), IDB, EPB, SPB,
    the obsolete PB; every other block is counted and skipped.

    The first pass trusts EPB lengths (one struct read per packet). If the vectorised
    check afterwards finds an EPB whose trailer disagrees, the file is walked again
    carefully, checking every block, so damage is skipped precisely.
    """
    rep.format = "pcapng"
    w = _walk_pcapng(buf, rep, careful=False)
    fr = _pcapng_frames(buf, rep, w, careful=False)
    if fr is not None:
        return fr
    rep2 = ReadReport(path=rep.path, bytes_total=rep.bytes_total, format=rep.format)
    w = _walk_pcapng(buf, rep2, careful=True)
    fr = _pcapng_frames(buf, rep2, w, careful=True)
    assert fr is not None
    return fr


def _walk_pcapng(buf: Any, rep: ReadReport, careful: bool) -> _NgWalk:
    walker = _NgWalker(buf, rep, careful)
    walker.walk()
    walker.finish()
    return walker.w


class _NgWalker:
    """The block walk of a pcapng file, resumable: :meth:`walk` goes on from where the
    last call stopped, up to a file offset (a streamed read walks window after window,
    the one-pass read the whole file at once), :meth:`finish` ends it. `w` collects the
    packet blocks found (a streamed read takes them and starts `w` afresh after each
    window); the sections and their interfaces are the walker's."""

    def __init__(self, buf: Any, rep: ReadReport, careful: bool) -> None:
        self.src = as_source(buf)
        self.rep, self.careful = rep, careful
        self.w = _NgWalk()
        self.sections = self.w.sections
        self.endian = "<"
        self.ifaces: list[_Iface] = []
        self.off = 0  # a file offset
        self.resyncs = 0
        self.stopped = False  # damage or truncation ended the walk
        self.last_epb = -1  # offset of the last EPB found
        self.last_epb_len = (0, 0)  # its length field read little- and big-endian
        self.block_end = 0  # end of the last block taken (bytes_read of a careful walk)
        self.ran_bad = False  # an EPB an unbounded run would have taken failed the checks
        self.w_base = 0  # the file offset of `w`'s offsets (those of the window they were found in)

    def new_window(self) -> _NgWalk:
        """Start collecting packet blocks afresh (in the current section); returns those
        collected so far (their offsets are the window's: add `w_base`)."""
        old = self.w
        self._take_last_epb(old)
        self.w = _NgWalk(sections=self.sections)
        self.w_base = self.src.base
        if self.sections:
            self.w.epb_sec.append((0, len(self.sections) - 1))
        return old

    def _take_last_epb(self, w: _NgWalk) -> None:
        if len(w.epb):
            last = w.epb.last()
            buf = self.src.buf
            self.last_epb = last + self.w_base
            self.last_epb_len = (struct.unpack_from("<I", buf, last + 4)[0],
                                 struct.unpack_from(">I", buf, last + 4)[0])

    def walk(self, stop: int | None = None) -> None:
        """Blocks from where the walk is, while they start before `stop` (a file offset;
        None: to the end of the file). A block is taken whole, whatever `stop` cuts. A
        file that inflates as it is read (:class:`.window.InflatingWindow`) is inflated as far as
        a block or a resynchronisation needs, or :class:`NotStreamable` is raised when
        that is more than MAX_LOOKAHEAD ahead (a damaged length)."""
        if self.stopped:
            return
        src, rep, careful, w = self.src, self.rep, self.careful, self.w
        base = src.base  # offsets here are the window's, reports the file's
        self.w_base = base
        if not src.done:
            src.ensure(self.off + NG_AHEAD)
        buf = src.buf
        end = len(buf)  # the window's end; the file's once src.done
        rel_stop = (base + end if stop is None else stop) - base
        epb = w.epb
        endian, ifaces, off, resyncs = self.endian, self.ifaces, self.off - base, self.resyncs
        hdr = struct.Struct("<II")
        hdr_be = struct.Struct(">II")

        def need(n: int) -> int:
            """Make the window reach a block of `n` bytes at `off` (or the file's end): its
            end. A length no block can have is refused whatever follows: nothing to read."""
            if src.done or off + n <= end or n < 12 or n & 3:
                return end
            if n > MAX_LOOKAHEAD:
                raise NotStreamable(f"a length of {n:,} bytes at byte {off + base:,} (damaged?) reaches past the window")
            return src.ensure(base + off + n) - base

        def damage(why: str) -> int:
            nonlocal end
            if not src.done:
                end = src.ensure(base + off + 4 + MAX_RESYNC_SCAN + MAX_LOOKAHEAD) - base
            return _pcapng_damage(buf, rep, off, why, endian, resyncs, base, src.done)

        try:
            while True:
                if not src.done and off + NG_AHEAD > end:
                    end = src.ensure(base + off + NG_AHEAD) - base
                if off + 12 > end:
                    break
                if off >= rel_stop:
                    return
                btype, blen = (hdr if endian == "<" else hdr_be).unpack_from(buf, off)
                if btype == 6 and not careful:  # the common case, kept short; validated afterwards
                    nxt = _epb_run(buf, off, min(end, rel_stop), endian, epb)
                    if nxt != off:
                        off = nxt
                        self.block_end = nxt + base
                        continue
                if btype == PCAPNG_SHB:
                    bom = bytes(buf[off + 8 : off + 12])
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        off = damage(f"section header with bad byte-order magic {bom.hex()}")
                        resyncs += 1
                        if off < 0:
                            break
                        continue
                    blen = struct.unpack_from(endian + "I", buf, off + 4)[0]
                    end = need(blen)
                    if not _block_ok(buf, off, blen, end, endian) or blen < 28:
                        off = damage(f"section header length {blen} invalid")
                        resyncs += 1
                        if off < 0:
                            break
                        continue
                    ifaces = []
                    w.sections.append((endian, ifaces))
                    w.epb_sec.append((len(epb), len(w.sections) - 1))
                    rep.bytes_read = self.block_end = off + blen + base
                    off += blen
                    continue
                if not w.sections:
                    _no_section(rep)
                end = need(blen)
                if not _block_ok(buf, off, blen, end, endian):
                    if btype == 6 and not careful and blen >= 32 and not blen & 3 and blen <= end - off:
                        self.ran_bad = True  # cut from a run by `stop`: the one-pass run takes it
                    if off + blen > end and blen >= 12 and not blen & 3:
                        rep.warn(f"truncated at byte {off + base:,}: block of {blen} bytes cut short "
                                 f"({end - off} bytes left)")
                        break
                    off = damage(f"block type {btype:#x} with length {blen}")
                    resyncs += 1
                    if off < 0:
                        break
                    continue
                if btype == 6:
                    cap = struct.unpack_from(endian + "I", buf, off + 20)[0] if blen >= 32 else blen
                    if blen < 32 or cap > blen - 32:
                        if not careful and blen >= 32:
                            self.ran_bad = True  # as above
                        off = damage(f"packet block captured length {cap} > block")
                        resyncs += 1
                        if off < 0:
                            break
                        continue
                    epb.append(off)
                elif btype == 1 and blen >= 20:
                    lt, _res, snap = struct.unpack_from(endian + "HHI", buf, off + 8)
                    iface = _Iface(linktype=lt, snaplen=snap)
                    _idb_options(buf, off + 16, off + blen - 4, endian, iface)
                    ifaces.append(iface)
                elif btype == 3 and blen >= 16:
                    olen = struct.unpack_from(endian + "I", buf, off + 8)[0]
                    snap = ifaces[0].snaplen if ifaces else 0
                    cap = min(olen, blen - 16, snap or olen)
                    w.slow_pos.append(len(epb) + len(w.slow))
                    w.slow.append((off + 12, cap, olen, 0, -1, -1))
                    w.slow_sec.append(len(w.sections) - 1)
                elif btype == 2 and blen >= 32:
                    iid, _drops, tsh, tsl, cap, olen = struct.unpack_from(endian + "HHIIII", buf, off + 8)
                    if cap > blen - 32:
                        rep.skip("packet block with captured length beyond its block")
                    else:
                        w.slow_pos.append(len(epb) + len(w.slow))
                        w.slow.append((off + 28, cap, olen, iid, tsh, tsl))
                        w.slow_sec.append(len(w.sections) - 1)
                else:
                    name = BLOCK_NAMES.get(btype, f"type {btype:#x}")
                    rep.other_blocks[name] = rep.other_blocks.get(name, 0) + 1
                rep.bytes_read = self.block_end = off + blen + base
                off += blen
            if off >= 0 and end - off > 0 and off + 12 > end:
                rep.warn(f"truncated at byte {off + base:,}: {end - off} stray bytes (a cut block header)")
            self.stopped = True
        finally:
            self.endian, self.ifaces, self.off, self.resyncs = endian, ifaces, off + base, resyncs
            if off < 0:
                self.stopped = True

    def finish(self, end: int | None = None) -> None:
        """The end of the walk: a file without a readable section is not a capture; how
        far it was read counts the last EPB (trusted by a run, not checked one by one).
        `end`: the file's size (an inflated one: known once inflated)."""
        rep = self.rep
        end = len(self.src.buf) + self.src.base if end is None else end
        self.stopped = True
        if not self.sections:
            _no_section(rep)
        self._take_last_epb(self.w)
        if self.last_epb >= 0:
            e = self.sections[-1][0]  # the last section's byte order, as the one-pass walk reads it
            blen = self.last_epb_len[0 if e == "<" else 1]
            rep.bytes_read = max(rep.bytes_read, min(end, self.last_epb + blen))

    def snapshot(self) -> tuple[Any, ...]:
        """The walk's state, to walk a window again carefully (:meth:`restore`)."""
        import copy

        return (self.endian, self.off, self.resyncs, self.stopped, self.block_end, self.ran_bad, self.last_epb,
                self.last_epb_len, [(e, list(ifs)) for e, ifs in self.sections], copy.deepcopy(self.rep.__dict__))

    def restore(self, state: tuple[Any, ...], careful: bool) -> None:
        (self.endian, self.off, self.resyncs, self.stopped, self.block_end, self.ran_bad, self.last_epb,
         self.last_epb_len, sections, rep) = state
        self.sections[:] = sections
        self.ifaces = sections[-1][1] if sections else []
        self.rep.__dict__.update(rep)
        self.careful = careful
        self.w = _NgWalk(sections=self.sections)
        if self.sections:
            self.w.epb_sec.append((0, len(self.sections) - 1))


def _epb_run(buf: Any, off: int, end: int, endian: str, epb: _Offsets) -> int:
    """A run of Enhanced Packet Blocks from `off` (types and lengths only, as the
    non-careful walk trusts them), by the active backend. Returns where the run stopped."""
    offs, nxt = backend.ACTIVE.epb_walk(buf, off, end, endian == "<")
    epb.extend(offs)
    return nxt


def _epb_walk_struct(buf: Any, off: int, end: int, little: bool) -> tuple[np.ndarray, int]:
    """The EPB run in the interpreter (the reference of ``_ccap.epb_walk``): stops at the
    first block whose 8-byte header does not fit, that is not an EPB (type 6), or whose
    length is not a multiple of 4 in 32..(bytes left)."""
    hdr = struct.Struct("<II" if little else ">II").unpack_from
    offs = array("q")
    while off + 8 <= end:
        btype, blen = hdr(buf, off)
        if btype != 6 or blen < 32 or blen > end - off or blen & 3:
            break
        offs.append(off)
        off += blen
    return (np.frombuffer(offs, dtype=np.int64) if len(offs) else np.zeros(0, dtype=np.int64)), off


def _no_section(rep: ReadReport) -> None:
    why = f" ({rep.warnings[0]})" if rep.warnings else ""
    raise CaptureError(f"{rep.path}: pcapng without a readable section header{why}")


def _block_ok(buf: Any, off: int, blen: int, end: int, endian: str) -> bool:
    if blen < 12 or blen & 3 or off + blen > end:
        return False
    return bool(struct.unpack_from(endian + "I", buf, off + blen - 4)[0] == blen)


MAX_LOOKAHEAD = 64 << 20  # the most a streamed walk of an inflating file reads ahead for one block
NG_AHEAD = 1 << 16  # what it keeps inflated past the block it is at


def _pcapng_damage(buf: Any, rep: ReadReport, off: int, why: str, endian: str, resyncs: int, base: int = 0,
                   whole: bool = True) -> int:
    """Report damage at `off` and return where to continue (-1: stop). `buf` may be a
    window of the file from file offset `base` (offsets here are the window's, reports
    the file's) that does not reach its end (`whole` False)."""
    if resyncs >= MAX_RESYNCS:
        rep.warn(f"gave up at byte {off + base:,} after {resyncs} resynchronisations ({why})")
        return -1
    nxt = _resync_pcapng(buf, off + 4, len(buf), endian, whole)
    if nxt is None:
        rep.warn(f"unreadable from byte {off + base:,} ({why}); no believable block after it")
        return -1
    rep.garbage_bytes += nxt - off
    rep.warn(f"skipped {nxt - off:,} damaged bytes at {off + base:,} ({why}); resynchronised")
    return nxt


def _resync_pcapng(buf: Any, start: int, end: int, endian: str, whole: bool = True) -> int | None:
    """Next 4-aligned-relative offset holding a known block type whose trailer repeats
    its length. Blocks are 4-byte multiples, so only offsets congruent to `start` mod 4
    are real candidates — but damage may have shifted that, so all are tried. `whole`
    False: `buf` ends before the file does; a candidate whose length reaches past it
    cannot be told before a good one: :class:`NotStreamable`."""
    u32 = _u32_view(buf, endian)
    stop = min(end - 12, start + MAX_RESYNC_SCAN)
    pos = start
    known = np.array([1, 2, 3, 4, 5, 6, 9, 10, PCAPNG_SHB], dtype=np.uint32)
    while pos <= stop:
        hi = min(stop + 1, pos + (1 << 20))
        idx = np.arange(pos, hi, dtype=np.int64)
        t = u32[idx]
        ln = u32[idx + 4].astype(np.int64)
        shape = np.isin(t, known) & (ln >= 12) & ((ln & 3) == 0)
        ok = shape & (idx + ln <= end)
        cand = idx[ok]
        first = None
        if cand.size:
            tail = u32[np.minimum(cand + u32[cand + 4].astype(np.int64) - 4, u32.size - 1)]
            good = cand[tail == u32[cand + 4]]
            if good.size:
                first = int(good[0])
        if not whole:
            beyond = idx[shape & (idx + ln > end)]
            if beyond.size and (first is None or int(beyond[0]) < first):
                raise NotStreamable("a resynchronisation candidate whose length reaches past the window")
        if first is not None:
            return first
        pos = hi
    return None


def _epb_fields(buf: Any, w: _NgWalk) -> tuple[np.ndarray, ...]:
    """The EPBs of a walk: offsets, sections, and header fields read vectorised in each
    section's byte order (interface, time high and low, captured and original length),
    and which fail the checks a trusting run left out (captured length beyond the
    block, a trailer that does not repeat the length)."""
    sections = w.sections
    n_epb = len(w.epb)
    offs = w.epb.array()
    sec_of = np.zeros(n_epb, dtype=np.int64)
    for i, (start, s) in enumerate(w.epb_sec):
        stop = w.epb_sec[i + 1][0] if i + 1 < len(w.epb_sec) else n_epb
        sec_of[start:stop] = s
    big = np.asarray([e == ">" for e, _ in sections], dtype=bool)[sec_of] if n_epb else np.zeros(0, bool)
    blen = np.zeros(n_epb, dtype=np.int64)
    iid = np.zeros(n_epb, dtype=np.int64)
    tsh = np.zeros(n_epb, dtype=np.uint64)
    tsl = np.zeros(n_epb, dtype=np.uint64)
    cap = np.zeros(n_epb, dtype=np.int64)
    olen = np.zeros(n_epb, dtype=np.int64)
    tail = np.zeros(n_epb, dtype=np.int64)
    for e, m in (("<", ~big), (">", big)):
        sel = np.flatnonzero(m)
        if not sel.size:
            continue
        u32 = _u32_view(buf, e)
        o = offs[sel]
        bl = u32[o + 4].astype(np.int64)
        blen[sel] = bl
        iid[sel] = u32[o + 8]
        tsh[sel] = u32[o + 12]
        tsl[sel] = u32[o + 16]
        cap[sel] = u32[o + 20]
        olen[sel] = u32[o + 24]
        tail[sel] = u32[np.clip(o + bl - 4, 0, u32.size - 1)]
    bad = (cap > blen - 32) | (tail != blen)
    return offs, sec_of, iid, tsh, tsl, cap, olen, bad


class _Blocks:
    """The packet blocks of a walk in file order: the EPBs' fields (from the buffer) and
    the SPBs' and odd blocks' (from the walk) in one set of columns."""

    def __init__(self, buf: Any, w: _NgWalk) -> None:
        offs, sec_of, iid, tsh, tsl, cap, olen, self.bad = _epb_fields(buf, w)
        slow = w.slow
        self.n = n = len(w.epb) + len(slow)
        self.data_off = np.empty(n, dtype=np.int64)
        self.caplen = np.empty(n, dtype=np.int64)
        self.origlen = np.empty(n, dtype=np.int64)
        self.iface = np.empty(n, dtype=np.int64)
        self.ts_hi = np.empty(n, dtype=np.uint64)
        self.ts_lo = np.empty(n, dtype=np.uint64)
        self.has_ts = np.ones(n, dtype=bool)
        self.section = np.empty(n, dtype=np.int64)
        is_slow = np.zeros(n, dtype=bool)
        if slow:
            is_slow[np.asarray(w.slow_pos, dtype=np.int64)] = True
        self.epb_slots = e = np.flatnonzero(~is_slow)
        self.data_off[e] = offs + 28
        self.caplen[e] = cap
        self.origlen[e] = olen
        self.iface[e] = iid
        self.ts_hi[e] = tsh
        self.ts_lo[e] = tsl
        self.section[e] = sec_of
        if slow:
            sl = np.asarray(slow, dtype=np.int64)
            o = np.flatnonzero(is_slow)
            self.data_off[o] = sl[:, 0]
            self.caplen[o] = sl[:, 1]
            self.origlen[o] = sl[:, 2]
            self.iface[o] = sl[:, 3]
            self.has_ts[o] = sl[:, 4] >= 0
            self.ts_hi[o] = np.maximum(sl[:, 4], 0).astype(np.uint64)
            self.ts_lo[o] = np.maximum(sl[:, 5], 0).astype(np.uint64)
            self.section[o] = np.asarray(w.slow_sec, dtype=np.int64)


def _iface_tables(sections: list[tuple[str, list[_Iface]]]) -> tuple[np.ndarray, list[int], list[float], list[int]]:
    """Each section's first interface in the flattened tables, and the tables: link
    type, time-unit divisor and time offset of every interface of every section."""
    first = np.zeros(len(sections) + 1, dtype=np.int64)
    lt_tab: list[int] = []
    div_tab: list[float] = []
    off_tab: list[int] = []
    for s, (_e, ifs) in enumerate(sections):
        first[s + 1] = first[s] + len(ifs)
        for f in ifs:
            lt_tab.append(f.linktype)
            div_tab.append(f.tsdiv)
            off_tab.append(f.tsoffset)
    return first, lt_tab, div_tab, off_tab


def _block_times(bl: _Blocks, div: np.ndarray, tso: np.ndarray) -> np.ndarray:
    """Seconds of each block (NaN for a block with no time) from its 64-bit time in its
    interface's units, exact to the unit before the float division."""
    units = (bl.ts_hi << np.uint64(32)) | bl.ts_lo
    divu = div.astype(np.uint64)  # 10^k and 2^k are both whole numbers
    whole = units // divu
    secs = whole.astype(np.float64) + (units - whole * divu).astype(np.float64) / div
    return np.where(bl.has_ts, secs + tso, np.nan)


def _pcapng_frames(buf: Any, rep: ReadReport, w: _NgWalk, careful: bool) -> Frames | None:
    """Frames from a walk; None when an EPB fails validation on a non-careful walk."""
    sections = w.sections
    bl = _Blocks(buf, w)
    if bl.bad.any():
        if not careful:
            return None
        rep.skip("damaged packet block (lengths disagree)", int(bl.bad.sum()))
    n, iface, section, has_ts = bl.n, bl.iface, bl.section, bl.has_ts
    ok = np.ones(n, dtype=bool)
    ok[bl.epb_slots] = ~bl.bad
    frame = np.arange(1, n + 1, dtype=np.int64)
    base, lt_tab, div_tab, off_tab = _iface_tables(sections)
    n_if = np.diff(base)
    known_if = (iface >= 0) & (iface < n_if[section])
    lost = ~known_if & ok
    if lost.any():
        k = int(lost.sum())
        rep.skip("packet for an undeclared interface", k)
        rep.warn(f"{k} packets refer to an interface with no description block; skipped")
    ok &= known_if
    gidx = np.where(ok, base[section] + iface, 0)
    lt = np.asarray(lt_tab or [0], dtype=np.int32)[gidx]
    div = np.asarray(div_tab or [1e6], dtype=np.float64)[gidx]
    tso = np.asarray(off_tab or [0], dtype=np.float64)[gidx]
    ts = _block_times(bl, div, tso)
    if not has_ts.all():
        ts = _ffill(ts)  # SPBs carry no time: the previous packet's time stands in
    sel = np.flatnonzero(ok)
    rep.records = int(sel.size)
    for t, c in zip(*np.unique(lt[sel], return_counts=True), strict=True):
        rep.linktypes[int(t)] = int(c)
    return Frames(
        buf=buf,
        data_off=bl.data_off[sel],
        caplen=bl.caplen[sel],
        origlen=bl.origlen[sel],
        ts=ts[sel],
        linktype=lt[sel],
        frame=frame[sel],
        report=rep,
    )


def _ffill(a: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(a)
    idx = np.where(ok, np.arange(a.size), 0)
    np.maximum.accumulate(idx, out=idx)
    out = a[idx]
    return np.where(np.isnan(out), 0.0, out)


# --------------------------------------------------------------------------------------
# pcapng in windows


class NotStreamable(Exception):
    """A streamed read cannot give the one-pass read's result here: the caller reads
    the file in one pass."""


@dataclass
class _NgCarry:
    """What the windows of a streamed pcapng read pass on to the next."""

    frames: int = 0  # packet blocks before this window (frame numbers count them all)
    last_ts: float = math.nan  # the last packet's time (an SPB, which has none, takes it)
    records: int = 0
    linktypes: dict[int, int] = field(default_factory=dict)
    lost: int = 0  # packets for an interface their section never described
    careful: bool = False  # a window was walked again carefully: the one-pass walk is careful


def scan_pcapng(buf: Any, rep: ReadReport, window: int) -> Iterator[Frames]:
    """The packet records of a pcapng file (memory-mapped: `buf`) window after window,
    each a :class:`Frames` with the file's offsets, so that a reader can decode them and
    give their pages back before the next window is walked. The records, frame numbers,
    times, report, warnings and resynchronisation are those of :func:`_parse_pcapng`:
    the same walk (:class:`_NgWalker`) goes on from window to window with its sections
    and interfaces; a window whose trusting EPB run meets a block that fails the checks
    is walked again carefully from its start, as the one-pass read walks the whole
    file again carefully then (the walks agree up to the first such block). Raises
    :class:`NotStreamable` for a packet that names an interface its section has not
    described yet (an IDB may still come: the one-pass read looks at the whole file),
    and :class:`~tcpreuse.errors.CaptureError` as the one-pass read does."""
    src = as_source(buf)
    rep.format = "pcapng"
    walker = _NgWalker(src, rep, careful=False)
    carry = _NgCarry()
    while not walker.stopped:
        state = walker.snapshot()
        stop = walker.off + window
        walker.walk(stop)
        base = walker.w_base
        w = walker.new_window()
        if walker.ran_bad or (len(w.epb) and _epb_fields(src.buf, w)[-1].any()):
            walker.restore(state, careful=True)
            walker.walk(stop)
            base = walker.w_base
            w = walker.new_window()
            walker.careful = False
            carry.careful = True
        fr = _ng_window_frames(src.buf, rep, walker, w, carry, base)
        if len(fr):
            yield fr
    if carry.careful:
        rep.bytes_read = walker.block_end  # as a careful walk counts it: every block taken
    walker.finish(src.drain())
    if carry.lost:
        rep.skip("packet for an undeclared interface", carry.lost)
        rep.warn(f"{carry.lost} packets refer to an interface with no description block; skipped")
    rep.records = carry.records
    for t in sorted(carry.linktypes):
        rep.linktypes[t] = carry.linktypes[t]
    src.finish(rep)


def _ng_window_frames(buf: Any, rep: ReadReport, walker: _NgWalker, w: _NgWalk, carry: _NgCarry,
                      base: int = 0) -> Frames:
    """:func:`_pcapng_frames` for the packet blocks of one window (all passed the checks),
    whose offsets in `w` are those of `buf`, a window from file offset `base`; the
    frames' offsets are the file's."""
    sections = walker.sections
    bl = _Blocks(buf, w)
    n, iface, section, has_ts = bl.n, bl.iface, bl.section, bl.has_ts
    frame = np.arange(carry.frames + 1, carry.frames + n + 1, dtype=np.int64)
    carry.frames += n
    first, lt_tab, div_tab, off_tab = _iface_tables(sections)
    n_if = np.diff(first)
    known_if = (iface >= 0) & (iface < n_if[section]) if n else np.zeros(0, dtype=bool)
    lost = ~known_if
    if lost.any():
        if not walker.stopped and (not lt_tab or (section[lost] == len(sections) - 1).any()):
            raise NotStreamable("a packet for an interface its section has not described (yet)")
        carry.lost += int(lost.sum())
    gidx = np.where(known_if, first[section] + iface, 0)
    lt = np.asarray(lt_tab or [0], dtype=np.int32)[gidx]
    div = np.asarray(div_tab or [1e6], dtype=np.float64)[gidx]
    tso = np.asarray(off_tab or [0], dtype=np.float64)[gidx]
    ts = _block_times(bl, div, tso)
    if n and not has_ts.all():  # an SPB takes the previous packet's time, of this window or the last
        ts = _ffill(np.concatenate([[carry.last_ts], ts]))[1:]
    if n:
        carry.last_ts = float(ts[-1])
    sel = np.flatnonzero(known_if)
    carry.records += int(sel.size)
    for t, c in zip(*np.unique(lt[sel], return_counts=True), strict=True):
        carry.linktypes[int(t)] = carry.linktypes.get(int(t), 0) + int(c)
    return Frames(buf=buf, data_off=bl.data_off[sel] + base, caplen=bl.caplen[sel], origlen=bl.origlen[sel], ts=ts[sel],
                  linktype=lt[sel], frame=frame[sel], report=rep)


def pcapng_start_time(buf: Any) -> float:
    """:func:`pcap_start_time` of a pcapng file (memory-mapped): the median time of its
    first (up to) nine packet records, walked as the streamed read walks them; inf when
    it has none or its walk cannot be streamed."""
    times: list[float] = []
    try:
        for fr in scan_pcapng(as_source(buf), ReadReport(path=""), 1 << 20):
            times += fr.ts[: 9 - len(times)].tolist()
            if len(times) >= 9:
                break
    except (NotStreamable, CaptureError):
        return float("inf")
    times.sort()
    return times[len(times) // 2] if times else float("inf")
