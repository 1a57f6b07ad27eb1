"""Small views of a CaptureAnalysis that the capture_* diagnosis rules share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from . import flows
from .spill import SpilledValues

if TYPE_CHECKING:
    from .analysis import CaptureAnalysis


class Block:
    """A block of rows of the attempt table: ``b["col"]`` is that column's rows."""

    def __init__(self, an: CaptureAnalysis, sl: slice) -> None:
        self.a, self.sl = an.attempts, sl

    def __getitem__(self, k: str) -> np.ndarray:
        return np.asarray(self.a[k][self.sl])


Cond = Callable[[Block], np.ndarray]  # a mask of a block's rows


def from_client(key: int) -> Cond:
    """Attempts from the client with address key `key`."""
    return lambda b: b["is_attempt"] & (b["orig"] == key)


def at_server(key: int, port: int) -> Cond:
    """Attempts to the server with address key `key` and `port`."""
    return lambda b: b["is_attempt"] & (b["resp"] == key) & (b["resp_port"] == port)


def answered(cond: Cond) -> Cond:
    """Rows of `cond` that got a SYN-ACK."""
    return lambda b: cond(b) & ~np.isnan(b["t_synack"])


def both(c1: Cond, c2: Cond) -> Cond:
    return lambda b: c1(b) & c2(b)


def rows_where(an: CaptureAnalysis, cond: Callable[[Block], np.ndarray]) -> np.ndarray:
    """The rows where `cond` (a mask of a block's rows) holds, found a block of rows at a
    time (:func:`.flows.row_blocks`): a rule's masks are a block's, and of a table in
    files only a block's pages are read at once."""
    found = [np.flatnonzero(cond(Block(an, sl))) + sl.start for sl in flows.row_blocks(len(an.attempts))]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def values_where(an: CaptureAnalysis, cond: Callable[[Block], np.ndarray], col: str) -> SpilledValues:
    """Column `col` where `cond` holds, kept as SpilledValues (for its percentiles), a
    block of rows at a time. The caller closes it."""
    out = SpilledValues()
    for sl in flows.row_blocks(len(an.attempts)):
        b = Block(an, sl)
        out.add(b[col][cond(b)])
    return out


def count_where(an: CaptureAnalysis, cond: Callable[[Block], np.ndarray]) -> int:
    """How many rows `cond` holds for, a block of rows at a time."""
    return sum(int(np.count_nonzero(cond(Block(an, sl)))) for sl in flows.row_blocks(len(an.attempts)))


def by_client(an: CaptureAnalysis, rows: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(client address, its rows among `rows`), busiest first."""
    if not rows.size:
        return
    keys = an.attempts["orig"][rows]
    uniq, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    for k in np.argsort(-cnt, kind="stable").tolist():
        yield an.addr(int(uniq[k])), rows[inv == k]


def by_server(an: CaptureAnalysis, rows: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """("addr:port" of the server, its rows among `rows`), busiest first."""
    if not rows.size:
        return
    a = an.attempts
    keys = a["resp"][rows].astype(np.uint64) << np.uint64(16) | a["resp_port"][rows].astype(np.uint64)
    uniq, inv, cnt = np.unique(keys, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    for k in np.argsort(-cnt, kind="stable").tolist():
        key = int(uniq[k])
        yield f"{an.addr(key >> 16)}:{key & 0xFFFF}", rows[inv == k]


def attempts_of(an: CaptureAnalysis, client: str) -> int:
    for s in an.sources:
        if s.addr == client:
            return s.attempts
    return 0


def pct(x: float) -> str:
    return f"{x * 100:.2f} %" if x < 0.1 else f"{x * 100:.1f} %"


def span(values: np.ndarray | SpilledValues, unit: str = "s", nd: int = 1) -> str:
    """'8–40 s' (10th to 90th percentile; one value if they agree); times under a
    second in ms. NaN values are left out."""
    if isinstance(values, SpilledValues):
        if not values.n:
            return "?"
        lo, hi = ((values.percentile(10), values.percentile(90)) if values.n >= 5
                  else (np.float64(values.lo), np.float64(values.hi)))
    else:
        v = values[~np.isnan(values)]
        if not v.size:
            return "?"
        lo, hi = (flows.percentile(v, 10), flows.percentile(v, 90)) if v.size >= 5 else (v.min(), v.max())
    if unit == "s" and hi < 1.0:
        lo, hi, unit, nd = lo * 1000, hi * 1000, "ms", 0 if hi >= 0.01 else 1
    a, b = f"{lo:.{nd}f}", f"{hi:.{nd}f}"
    return f"{a} {unit}" if a == b else f"{a}–{b} {unit}"


def median(values: np.ndarray) -> float | None:
    v = values[~np.isnan(values)]
    return flows.median(v) if v.size else None


def os_guess(an: CaptureAnalysis, rows: np.ndarray) -> str:
    """What the SYNs look like: "windows" (no timestamps, window scale 8 — Windows'
    defaults), "linux" (timestamps and window scale 7 or more), or "unknown"."""
    a = an.attempts
    if not rows.size:
        return "unknown"
    ts = a["syn_has_ts"][rows].mean()
    ws = a["syn_wscale"][rows]
    if ts < 0.1 and np.mean(ws == 8) > 0.5:
        return "windows"
    if ts > 0.9 and np.mean(ws >= 7) > 0.5:
        return "linux"
    return "unknown"


def retry_delay_text(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms"
