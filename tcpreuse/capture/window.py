"""What a capture is read from: a file held whole (memory-mapped), or a gzip file
inflated a window at a time.

The record scans and block walks (:mod:`.formats`) and the decoders (:mod:`.decode`)
read a :data:`Source`: `buf` holds the bytes from file offset `base` on, `ensure` makes
more readable (a no-op for a mapped file, inflating for a gzip file), `release` lets
what lies behind a point go (the pages of a mapping given back, the start of the
inflated window dropped), `finish` ends the read (the file's size; a damaged gzip
stream's warning). Inflating is :class:`GzipInflater` for both the one-pass read
(:func:`.formats.inflate_gzip` joins its pieces) and the streamed one, so a truncated
or damaged stream is read as far and reported alike.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from .formats import ReadReport


GZIP_STEP = 1 << 16  # compressed bytes inflated per step


class GzipInflater:
    """A gzip file's inflated bytes piece by piece (about 64 KB of compressed input each),
    all its members, as far as they inflate; afterwards `damage` is "" or what stopped
    it and `inflated` how many bytes came. :func:`inflate_gzip` joins the pieces; a
    streamed read (:class:`InflatingWindow`) holds only a window of them."""

    def __init__(self, fh: BinaryIO, size: int, step: int | None = None) -> None:
        self.fh, self.size, self.step = fh, size, step or GZIP_STEP
        self.damage = ""
        self.inflated = 0

    def __iter__(self) -> Iterator[bytes]:
        import zlib  # only here: most captures are not compressed

        fh, n, step = self.fh, self.size, self.step
        pos, fed = 0, False
        d = zlib.decompressobj(wbits=31)
        fh.seek(0)
        while pos < n:
            chunk = fh.read(min(step, n - pos))
            if not chunk:  # the file shrank while it was read
                break
            before = d.copy()
            try:
                piece = d.decompress(chunk)
            except zlib.error as e:
                # the chunk again in small pieces from the state before it: keep what inflated
                # up to the damage (a bad checksum at the end keeps everything)
                kept: list[bytes] = []
                i = 0
                for i in range(0, len(chunk), 64):
                    try:
                        kept.append(before.decompress(chunk[i:i + 64]))
                    except zlib.error:
                        break
                self.inflated += sum(len(k) for k in kept)
                self.damage = (f"gzip stream damaged at compressed byte {pos + i:,} of {n:,} ({e}); "
                               f"analysed the {self.inflated:,} bytes inflated before it")
                yield from (k for k in kept if k)
                return
            self.inflated += len(piece)
            if piece:
                yield piece
            fed = True
            if d.eof:  # end of a member: another may follow, or zero padding
                pos += len(chunk) - len(d.unused_data)
                if self._zeros_from(pos):
                    return
                fh.seek(pos)
                d, fed = zlib.decompressobj(wbits=31), False
                continue
            pos += len(chunk)
        if fed and not d.eof:
            self.damage = (f"gzip stream truncated: its {n:,} compressed bytes end inside it; analysed the "
                           f"{self.inflated:,} bytes they inflate to")

    def _zeros_from(self, pos: int) -> bool:
        """Is the file all zero bytes from `pos` to its end (padding after the last member)?"""
        self.fh.seek(pos)
        while block := self.fh.read(1 << 20):
            if block.count(0) != len(block):
                return False
        return True


def gzip_isize(path: str | os.PathLike[str]) -> int | None:
    """The last 4 bytes of a gzip file (ISIZE: what its last member inflates to, mod
    2**32); None when the file is not gzip."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                return None
            f.seek(0, os.SEEK_END)
            if f.tell() < 18:
                return 0
            f.seek(-4, os.SEEK_END)
            return int(struct.unpack("<I", f.read(4))[0])
    except OSError:
        return None


GZIP_MAX_RATIO = 32  # a capture that inflates more than this is taken as large whatever its ISIZE says


def capture_size(path: str | os.PathLike[str]) -> int:
    """What a capture file holds, to choose between a one-pass and a streamed read: its
    size; for a gzip file, an estimate of its inflated size, which is only known once it is
    inflated. The trailer's ISIZE is the last member's inflated size mod 2**32: taken as
    it is when it is at least the compressed size; a smaller one (several members, or
    4 GiB or more wrapped around) and a compressed size from 2**32 / GZIP_MAX_RATIO
    (128 MiB: a ratio above that could wrap ISIZE) on count as 4 GiB or more. 0 when it
    cannot be read."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return 0
    isize = gzip_isize(path) if size >= 18 else None
    if isize is None:
        return size
    if isize < size or size * GZIP_MAX_RATIO >= 1 << 32:
        return max(size, isize + (1 << 32))
    return isize


class WholeBuffer:
    """A file held whole (memory-mapped or in memory), as :func:`scan_pcap` and the
    streamed decoders read it: every byte there at once; `release` gives the pages
    behind a window back (:func:`release_pages`)."""

    base = 0  # the file offset of buf[0]
    done = True  # buf reaches the end of the file

    def __init__(self, buf: Any, kind: str = "pcap") -> None:
        self.buf = buf
        self.kind = kind  # pcap or pcapng

    def ensure(self, stop: int) -> int:
        """Make the bytes up to `stop` (a file offset) readable, as far as the file
        goes; returns the file offset where buf ends."""
        return len(self.buf)

    def release(self, start: int, stop: int) -> None:
        release_pages(self.buf, start, stop)

    def drain(self) -> int:
        """The file's size."""
        return len(self.buf)

    def finish(self, rep: ReadReport) -> None:
        rep.bytes_total = len(self.buf)


class InflatingWindow:
    """A gzip file inflated as it is read, a window at a time: `buf` holds the inflated
    bytes from file offset `base` (inflated bytes) on; `ensure` inflates more, `release`
    drops what lies before a point. Resident memory follows the window the reader
    asks for, not the inflated file. `finish` inflates the rest (to learn its size and
    any damage, as :func:`inflate_gzip` reports them) without keeping it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._gz = GzipInflater(self._fh, os.fstat(self._fh.fileno()).st_size)
        self._pieces = iter(self._gz)
        self.buf = bytearray()
        self.base = 0
        self.done = False
        self.kind = "pcap"
        self.peak = 0  # the most inflated bytes held at once

    def ensure(self, stop: int) -> int:
        buf = self.buf
        while not self.done and self.base + len(buf) < stop:
            piece = next(self._pieces, None)
            if piece is None:
                self.done = True
            else:
                buf += piece
        self.peak = max(self.peak, len(buf))
        return self.base + len(buf)

    def release(self, start: int, stop: int) -> None:
        k = min(stop - self.base, len(self.buf))
        if k > 0:
            del self.buf[:k]  # the start of a bytearray moves: no copy
            self.base += k

    def drain(self) -> int:
        """Inflate the rest without keeping it: the inflated file's size."""
        for _piece in self._pieces:
            pass
        self.done = True
        return self._gz.inflated

    def finish(self, rep: ReadReport) -> None:
        self.drain()
        rep.bytes_total = self._gz.inflated
        if self._gz.damage:
            rep.gzip_damage = self._gz.damage
            rep.warn(self._gz.damage)

    def close(self) -> None:
        self.buf = bytearray()
        self._fh.close()


Source = WholeBuffer | InflatingWindow


def as_source(buf: Any) -> Source:
    return buf if isinstance(buf, WholeBuffer | InflatingWindow) else WholeBuffer(buf)


def release_pages(buf: Any, start: int, stop: int) -> None:
    """Give the pages of a memory-mapped file between `start` and `stop` back (they were
    read and will not be again soon): the process's resident memory then follows the
    window being read, not the file's size. Nothing for a buffer that is not a mapping."""
    advise = getattr(buf, "madvise", None)
    lo = (start // mmap.PAGESIZE) * mmap.PAGESIZE
    hi = (stop // mmap.PAGESIZE) * mmap.PAGESIZE
    if advise is not None and hi > lo and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            advise(mmap.MADV_DONTNEED, lo, hi - lo)
