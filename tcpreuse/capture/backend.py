"""The capture reader's per-packet loops, behind one interface: numpy (the reference) or C.

Reading a capture has a few stages whose work is one pass over every record or packet:
the pcap record walk and header checks, the pcapng Enhanced Packet Block walk, header
decoding, grouping packets into flows, the per-segment pass that reduces each
connection to its facts, the replay of tcp_tw_recycle's per-peer cache, and the padding
of Zeek history strings. Each stage has two implementations:

- :class:`NumpyBackend`, the reference: whole-column numpy where a stage vectorises,
  plain interpreted loops where it cannot (a record walk: where record k+1 starts
  depends on record k; the recycle cache: :class:`tcpreuse.model.recycle.PeerCache`,
  the kernel rule itself). Readable, always there, slow only in the walks.
- :class:`CBackend`, the fast path: ``tcpreuse/capture/_ccap.c`` (CPython API only, no
  numpy headers), one pass per stage; setup.py builds it when a C compiler is there.

:data:`ACTIVE` is chosen once, when the package is imported: C when the extension is
built and ``TCPREUSE_CAPTURE_C`` is not ``0`` (``bench/analyze_speed.py`` times both
paths in one run that way). The stage modules (formats, decode, flows, reuse, zeek) call
``backend.ACTIVE.<stage>(...)`` and hold no branch on which one it is; tests swap
:data:`ACTIVE` to compare the two column by column (tests/test_capture_cext.py).

The stage modules import this one, so the methods look the reference functions up in
them at call time (function-level imports), never at import time.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from .decode import Packets
    from .flows import SegFacts, _FlowCols
    from .formats import Frames, ReadReport


class Backend(Protocol):
    """One implementation of the reader's per-packet stages."""

    name: str

    def read_pcap(self, buf: Any, rep: ReadReport) -> Frames:
        """Every believable record of a pcap file (walk, header checks, resynchronisation)."""
        ...

    def epb_walk(self, buf: Any, off: int, end: int, little: bool) -> tuple[np.ndarray, int]:
        """(offsets of a run of pcapng Enhanced Packet Blocks from `off`, where it stopped)."""
        ...

    def decode(self, fr: Frames, out: dict[str, np.ndarray], unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
        """Decode every frame into the `out` columns; (rows written, IPv6 address table)."""
        ...

    def flow_order(self, p: Packets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(flow-order permutation, flow-start mask, direction per packet, times in that order)."""
        ...

    def segment_facts(self, q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
        """Per-segment reductions over the packets in flow order."""
        ...

    def recycle_checks(self, order: np.ndarray, m: int, key: np.ndarray, w_ts: np.ndarray, w_stamp: np.ndarray,
                       w_now: np.ndarray, c_now: np.ndarray, c_tsval: np.ndarray, c_has_ts: np.ndarray,
                       won: np.ndarray | None = None) -> np.ndarray:
        """tcp_tw_recycle's cache replayed over `m` writes and the checks after them
        (events in `order`: by key, then time); the verdict (RC_*) of each check.
        `won` (int8 per write, optional) is set to 1 where the key's entry is the
        write's (TSval, stamp) after it, 0 otherwise."""
        ...

    def pad_strings(self, codes: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
        """Letters, segment after segment -> one zero-padded S<width> row per segment."""
        ...


class NumpyBackend:
    """The reference: numpy columns, and interpreted loops where a stage is sequential."""

    name = "numpy"

    def read_pcap(self, buf: Any, rep: ReadReport) -> Frames:
        from .formats import _parse_pcap_numpy

        return _parse_pcap_numpy(buf, rep)

    def epb_walk(self, buf: Any, off: int, end: int, little: bool) -> tuple[np.ndarray, int]:
        from .formats import _epb_walk_struct

        return _epb_walk_struct(buf, off, end, little)

    def decode(self, fr: Frames, out: dict[str, np.ndarray], unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
        from .decode import _decode_numpy

        return _decode_numpy(fr, out, unsupported)

    def flow_order(self, p: Packets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from .flows import _flow_order_numpy

        return _flow_order_numpy(p)

    def segment_facts(self, q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
        from .flows import _facts_numpy

        return _facts_numpy(q, d, fstart)

    def recycle_checks(self, order: np.ndarray, m: int, key: np.ndarray, w_ts: np.ndarray, w_stamp: np.ndarray,
                       w_now: np.ndarray, c_now: np.ndarray, c_tsval: np.ndarray, c_has_ts: np.ndarray,
                       won: np.ndarray | None = None) -> np.ndarray:
        from .reuse import _recycle_checks_reference

        return _recycle_checks_reference(order, m, key, w_ts, w_stamp, w_now, c_now, c_tsval, c_has_ts, won)

    def pad_strings(self, codes: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
        from .zeek import _pad_strings_numpy

        return _pad_strings_numpy(codes, counts, width)


class CBackend:
    """The fast path: each stage one pass of ``_ccap``, tested against :class:`NumpyBackend`."""

    name = "c"

    def __init__(self, lib: ModuleType) -> None:
        self.lib = lib

    def read_pcap(self, buf: Any, rep: ReadReport) -> Frames:
        from .formats import _parse_pcap_c, _parse_pcap_numpy

        if len(buf) < 24:  # the header's own damage report
            return _parse_pcap_numpy(buf, rep)
        return _parse_pcap_c(self.lib, buf, rep)

    def epb_walk(self, buf: Any, off: int, end: int, little: bool) -> tuple[np.ndarray, int]:
        offs, nxt = self.lib.epb_walk(buf, off, end, little)
        return np.frombuffer(offs, dtype=np.int64), int(nxt)

    def decode(self, fr: Frames, out: dict[str, np.ndarray], unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
        from .decode import _decode_c

        return _decode_c(self.lib, fr, out, unsupported)

    def flow_order(self, p: Packets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from .flows import C_HASH_MASK

        n = len(p)
        order = np.empty(n, dtype=np.int64)
        fstart = np.empty(n, dtype=bool)
        d = np.empty(n, dtype=np.int8)
        ts_o = np.empty(n, dtype=np.float64)
        c = np.ascontiguousarray
        self.lib.flow_order(c(p.src, dtype=np.uint64), c(p.dst, dtype=np.uint64), c(p.sport, dtype=np.uint16),
                            c(p.dport, dtype=np.uint16), c(p.ts, dtype=np.float64), C_HASH_MASK, order, fstart, d,
                            ts_o)
        return order, fstart, d, ts_o

    def segment_facts(self, q: _FlowCols, d: np.ndarray, fstart: np.ndarray) -> SegFacts:
        from .flows import _facts_c

        return _facts_c(self.lib, q, d, fstart)

    def recycle_checks(self, order: np.ndarray, m: int, key: np.ndarray, w_ts: np.ndarray, w_stamp: np.ndarray,
                       w_now: np.ndarray, c_now: np.ndarray, c_tsval: np.ndarray, c_has_ts: np.ndarray,
                       won: np.ndarray | None = None) -> np.ndarray:
        from ..model.timewait import TCP_PAWS_MSL, TCP_PAWS_WINDOW

        res = np.zeros(c_now.size, dtype=np.int8)
        i8 = np.ascontiguousarray
        args = [i8(order, dtype=np.int64), m, i8(key, dtype=np.int64), i8(w_ts, dtype=np.int64),
                i8(w_stamp, dtype=np.int64), i8(w_now, dtype=np.int64), i8(c_now, dtype=np.int64),
                i8(c_tsval, dtype=np.int64), i8(c_has_ts, dtype=bool).view(np.uint8), TCP_PAWS_MSL, TCP_PAWS_WINDOW,
                res]
        if won is not None:
            args.append(won)
        self.lib.recycle_checks(*args)
        return res

    def pad_strings(self, codes: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
        rows = self.lib.pad_strings(np.ascontiguousarray(codes, dtype=np.uint8),
                                    np.ascontiguousarray(counts, dtype=np.int64), width)
        return np.frombuffer(rows, dtype=f"S{width}")


def c_extension() -> ModuleType | None:
    """The built C extension, or None (no compiler, a ``TCPREUSE_PURE_PYTHON=1`` build)."""
    try:
        from . import _ccap  # type: ignore[attr-defined]
    except ImportError:
        return None
    lib: ModuleType = _ccap
    return lib


def choose() -> Backend:
    """C when it is built and ``TCPREUSE_CAPTURE_C`` is not ``0``; else the numpy reference."""
    lib = c_extension() if os.environ.get("TCPREUSE_CAPTURE_C", "1") != "0" else None
    return CBackend(lib) if lib is not None else NumpyBackend()


ACTIVE: Backend = choose()
