"""Attempt columns kept in files instead of memory, each mapped read-only when read.

A streamed analysis with no per-attempt output asked (:func:`.analysis.analyze_streamed`,
``per_attempt=False``) emits attempt rows chunk after chunk; kept in memory they were
the part of its footprint that grew with the capture (~165 bytes per attempt, ~1.7 GB
at 100 M packets of short connections). :class:`ColumnStore` appends each emitted
part's columns to one file per column in a temporary directory (deleted with the
store), and gives a column back as a read-only array over a memory map of its file:
only the pages a computation touches are resident, and only while that array (or a
view of it) lives, so what the end passes, the statistics and the rules hold is their
working set — the columns an expression reads and its temporaries — not the table.

A column is replaced whole (``store[k] = array`` writes a new file); an array read from
the store cannot be changed in place (it is read-only), so nothing written to a column
after it was stored can be lost.

The directory is removed when the store is closed, at exit and on errors; a process
killed outright (SIGKILL, the OOM killer, a power cut) leaves it behind, up to the whole
table (~1.7 GB at 100 M packets). So it is named for its process
(``tcpreuse-attempts-<pid>-<random>``) and held under an advisory lock (flock on the
directory, released by the kernel when the process dies however it dies), and every
new store first removes the directories of that form beside it whose process is gone
(:func:`sweep_stale`): never one whose pid is alive or whose lock is held (a live
process in another pid namespace sharing TMPDIR), nor anything else.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import shutil
import stat
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptureError

PREFIX = "tcpreuse-attempts-"
_OURS = re.compile(re.escape(PREFIX) + r"([0-9]+)-[A-Za-z0-9_]+")  # PREFIX<pid>-<mkdtemp's suffix>


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def _lock(path: str) -> int | None:
    """An exclusive flock on directory `path` (its descriptor), or None when another
    process holds it or the file system cannot lock it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_stale(dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove the attempt directories in `dir` (default: ``TMPDIR``) that a killed
    analysis left behind; returns their paths. One is removed only if it is a directory
    (not a link) of this user named ``tcpreuse-attempts-<pid>-...`` whose pid is not a
    live process and whose lock (held by a live store) can be taken. Anything else —
    other names, other users', a live process's, the unnamed ones of older versions —
    is left alone. Errors are ignored: this must never fail an analysis."""
    base = os.fspath(dir) if dir is not None else tempfile.gettempdir()
    gone: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return gone
    me = os.getpid()
    for name in names:
        m = _OURS.fullmatch(name)
        if m is None or int(m.group(1)) == me:
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or _pid_alive(int(m.group(1))):
            continue
        fd = _lock(path)
        if fd is None:
            continue  # held: a live process (in another pid namespace) owns it
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        if not os.path.lexists(path):
            gone.append(path)
    return gone


class ColumnStore(MutableMapping[str, np.ndarray]):
    """Columns of equal length, one file each, in a temporary directory of `dir`
    (default: the system's temporary directory, ``TMPDIR``), named for this process and
    locked while the store lives; stale directories of killed processes there are
    removed first (:func:`sweep_stale`)."""

    def __init__(self, dir: str | os.PathLike[str] | None = None) -> None:
        sweep_stale(dir)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{PREFIX}{os.getpid()}-", dir=dir)
        self.path = Path(self._tmp.name)
        # held until close() or the process ends; a store that is never closed lets it go
        # when it is collected (its directory is removed then too)
        self._lock_fd = _lock(self._tmp.name)
        if self._lock_fd is not None:
            self._unlock = weakref.finalize(self, os.close, self._lock_fd)
        self._cols: dict[str, tuple[np.dtype, int, Path]] = {}  # name -> (dtype, rows, file)
        self._gen = 0

    def _new_file(self, k: str) -> Path:
        self._gen += 1
        return self.path / f"{k}.{self._gen}"

    def _write(self, path: Path, v: np.ndarray, mode: str) -> None:
        try:
            with open(path, mode) as fh:
                fh.write(np.ascontiguousarray(v).data)
        except OSError as e:
            raise CaptureError(f"cannot write the attempt table to {self.path}: {e.strerror or e}",
                               hint="set TMPDIR to a directory with more free space") from None

    def append(self, k: str, v: np.ndarray) -> None:
        """Rows `v` added at the end of column `k` (made with `v`'s dtype if new)."""
        v = np.asarray(v)
        if k not in self._cols:
            self._cols[k] = (v.dtype, 0, self._new_file(k))
        dt, n, path = self._cols[k]
        if v.dtype != dt:
            raise ValueError(f"column {k}: {v.dtype} rows appended to a {dt} column")
        self._write(path, v, "ab")
        self._cols[k] = (dt, n + v.size, path)

    def __getitem__(self, k: str) -> np.ndarray:
        dt, n, path = self._cols[k]
        if not n or not dt.itemsize:
            return np.zeros(n, dtype=dt)
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), n * dt.itemsize, access=mmap.ACCESS_READ)
        return np.frombuffer(mm, dtype=dt, count=n)  # unmapped when the array and its views go

    def __setitem__(self, k: str, v: np.ndarray) -> None:
        v = np.asarray(v)
        if v.ndim != 1:
            raise ValueError(f"column {k}: one dimension expected, not {v.shape}")
        path = self._new_file(k)
        self._write(path, v, "wb")
        old = self._cols.get(k)
        self._cols[k] = (v.dtype, v.size, path)  # an existing column keeps its place
        if old is not None:
            old[2].unlink(missing_ok=True)  # arrays still mapping it keep their pages

    def __delitem__(self, k: str) -> None:
        _dt, _n, path = self._cols.pop(k)
        path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cols))

    def __len__(self) -> int:
        return len(self._cols)

    def rename(self, old: str, new: str) -> None:
        """Column `old` becomes `new` (replacing a column of that name, and taking its place)."""
        if new in self._cols:
            self._cols[new][2].unlink(missing_ok=True)
            self._cols[new] = self._cols.pop(old)
        else:
            self._cols[new] = self._cols.pop(old)

    def dtype(self, k: str) -> np.dtype:
        return self._cols[k][0]

    def rows(self) -> int:
        """The length of the columns (0 without columns)."""
        return next(iter(self._cols.values()))[1] if self._cols else 0

    def nbytes(self) -> int:
        return sum(dt.itemsize * n for dt, n, _ in self._cols.values())

    def close(self) -> None:
        """Delete the files (arrays still mapping them keep their pages)."""
        self._cols.clear()
        self._tmp.cleanup()
        if self._lock_fd is not None:
            self._unlock()  # (once: a finalizer runs at most once)


class ColumnWriter:
    """A column of `n` rows made in pieces, in order (:meth:`put`), then set (:meth:`done`):
    in a :class:`ColumnStore`, appended to a file as they come; in a dict, copied into
    one array (the pieces are let go as they are put)."""

    def __init__(self, cols: MutableMapping[str, np.ndarray], k: str, n: int, dtype: type | np.dtype) -> None:
        self.cols, self.k, self.n, self.dtype = cols, k, n, np.dtype(dtype)
        self.at = 0
        self.arr: np.ndarray | None = None
        if isinstance(cols, ColumnStore):
            self.tmp = f"{k}~"
            cols.pop(self.tmp, None)
            cols.append(self.tmp, np.zeros(0, dtype=self.dtype))
        else:
            self.arr = np.empty(n, dtype=self.dtype)

    def put(self, v: np.ndarray) -> None:
        v = np.asarray(v, dtype=self.dtype)
        if self.at + v.size > self.n:
            raise ValueError(f"column {self.k}: more than {self.n} rows")
        if self.arr is not None:
            self.arr[self.at:self.at + v.size] = v
        else:
            assert isinstance(self.cols, ColumnStore)
            self.cols.append(self.tmp, v)
        self.at += v.size

    def done(self) -> None:
        if self.at != self.n:
            raise ValueError(f"column {self.k}: {self.at} rows of {self.n} made")
        if self.arr is not None:
            self.cols[self.k] = self.arr
            self.arr = None
        else:
            assert isinstance(self.cols, ColumnStore)
            self.cols.rename(self.tmp, self.k)


def column_writer(cols: MutableMapping[str, np.ndarray], k: str, n: int, dtype: type | np.dtype) -> ColumnWriter:
    return ColumnWriter(cols, k, n, dtype)


SPILL_VALUES = 1 << 20  # values a SpilledValues keeps in memory


class SpilledValues:
    """float64 values whose median, percentiles, smallest and largest are wanted, added
    in pieces: in memory up to SPILL_VALUES, then in a temporary file, where an order
    statistic is found exactly in bounded memory (:func:`.analysis.spilled_median`).
    NaN values are counted apart (`nan`), as :func:`.flows.median` sees them."""

    def __init__(self) -> None:
        self.mem: list[np.ndarray] = []
        self.n = 0  # values that are not NaN
        self.nan = 0
        self.fh: Any = None
        self.lo, self.hi = np.inf, -np.inf

    def add(self, v: np.ndarray) -> None:
        v = np.asarray(v, dtype=np.float64)
        bad = np.isnan(v)
        if bad.any():
            self.nan += int(bad.sum())
            v = v[~bad]
        if not v.size:
            return
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        self.n += v.size
        if self.fh is None and self.n <= SPILL_VALUES:
            self.mem.append(v.copy())
            return
        if self.fh is None:
            self.fh = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
            for m in self.mem:
                m.tofile(self.fh)
            self.mem = []
        np.ascontiguousarray(v).tofile(self.fh)

    def rank(self, k: int) -> np.float64:
        """The value of 0-based rank `k` in sorted order (NaN left out)."""
        if self.fh is None:
            v = np.concatenate(self.mem)
            return np.float64(np.partition(v, k)[k])
        from .analysis import _spilled_rank

        self.fh.flush()
        return np.float64(_spilled_rank(self.fh, k, self.lo, self.hi))

    def median(self) -> float:
        """:func:`.flows.median` of the values (NaN if any is NaN)."""
        from . import flows

        if self.nan:
            return float("nan")
        if self.fh is None:
            return flows.median(np.concatenate(self.mem))
        k = self.n // 2
        if self.n % 2:
            return float(self.rank(k))
        return float((self.rank(k - 1) + self.rank(k)) / 2)

    def percentile(self, q: float) -> float:
        """:func:`.flows.percentile` of the values that are not NaN."""
        idx = (self.n - 1) * (q / 100)
        lo = int(idx)
        hi = min(lo + 1, self.n - 1)
        t = idx - lo
        s_lo, s_hi = self.rank(lo), self.rank(hi)
        d = s_hi - s_lo
        return float(s_hi - d * (1 - t) if t >= 0.5 else s_lo + d * t)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.mem = []
