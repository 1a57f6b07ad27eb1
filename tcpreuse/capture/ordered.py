"""Rows of the attempt table in another order, a part at a time, in bounded memory.

A pass that needs the rows sorted (a client's attempts in capture or time order, the
whole table in build order) would sort an index over all rows at once: 8 bytes a row
and the sort's own, for a table that otherwise lives in files (:mod:`.spill`). Here the
table is read block by block instead (:func:`.flows.row_blocks`), each selected row is
*dealt* to a part by the range its first sort key falls in (ranges of about `block`
rows, from a count of the keys in FINE bins between their bounds), with the columns a
pass needs, appended to one file per column and part (:class:`.spill.ColumnStore`: a
table in memory keeps the parts in memory); then the parts are read back one by one, in
key order, each sorted by the keys by itself. What is resident is a block of the
table, then a part: the keys' ranges keep the order exact, a stable sort within a part
keeps the table's order among equal keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping, Sequence

import numpy as np

from . import flows
from .flows import Attempts, row_blocks
from .spill import ColumnStore

FINE = 1 << 16  # bins the first key's range is counted in, to cut it into parts
PART_ROWS = 1 << 19  # rows of a part (about: a bin is never split)

Fetch = Callable[[slice], dict[str, np.ndarray]]


def deal(cols: MutableMapping[str, np.ndarray], n: int, key: Callable[[slice], np.ndarray], fetch: Fetch,
         block: int | None = None) -> tuple[Dealt, int]:
    """The rows of `cols` (n rows) that ``fetch(sl)`` gives for each block `sl`, with
    the columns it gives, dealt to parts by ranges of ``key(sl)`` (their first sort key:
    the same rows in the same order, finite values) of about `block` rows each, in key
    order: a part's keys are at most the next part's. Returns the parts and how many
    there are (some may be empty)."""
    block = block or PART_ROWS
    lo, hi, rows = np.inf, -np.inf, 0
    for sl in row_blocks(n):
        k = key(sl)
        if k.size:
            lo, hi, rows = min(lo, float(k.min())), max(hi, float(k.max())), rows + k.size
    dealt = Dealt(isinstance(cols, ColumnStore))
    if not rows:
        return dealt, 0
    scale = FINE / (hi - lo) if hi > lo else 0.0

    def fine(k: np.ndarray) -> np.ndarray:  # monotone in k: parts in key order
        return np.minimum(((k.astype(np.float64) - lo) * scale).astype(np.int64), FINE - 1)

    counts = np.zeros(FINE, dtype=np.int64)
    for sl in row_blocks(n):
        counts += np.bincount(fine(key(sl)), minlength=FINE)
    part_of = (np.cumsum(counts) - counts) // block  # each bin's part: by the rows before it
    try:
        for sl in row_blocks(n):
            k = key(sl)
            if k.size:
                dealt.add(part_of[fine(k)], fetch(sl))
            del k
    except BaseException:
        dealt.close()
        raise
    return dealt, int(part_of[-1]) + 1


def in_order(cols: MutableMapping[str, np.ndarray], n: int, key: Callable[[slice], np.ndarray],
             fetch: Fetch, keys: Sequence[str], block: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Parts of rows in order of `keys` (lexicographic, names of columns `fetch` gives),
    each a dict of the columns ``fetch`` gives, sorted by the keys (stable: equal keys
    in table order); `key` and `fetch` as for :func:`deal`."""
    dealt, n_parts = deal(cols, n, key, fetch, block)
    try:
        for p in range(n_parts):
            got = dealt.take(p)
            if not got:
                continue
            o = np.lexsort([got[c] for c in reversed(keys)])
            yield {c: v[o] for c, v in got.items()}
            del got, o
    finally:
        dealt.close()


class Dealt:
    """Rows dealt to numbered parts, their columns appended part by part in the order
    they come: in files (`in_files`) or in memory."""

    def __init__(self, in_files: bool) -> None:
        self.store = ColumnStore() if in_files else None
        self.mem: dict[int, dict[str, list[np.ndarray]]] = {}
        self.names: dict[int, list[str]] = {}

    def add(self, part: np.ndarray, cols: dict[str, np.ndarray]) -> None:
        """Rows with their part numbers `part` and columns `cols` (equal lengths; each
        column is let go from `cols` once dealt: a view of a mapped column unmaps)."""
        if not part.size:
            cols.clear()
            return
        o = np.argsort(part, kind="stable")
        ps = part[o]
        cut = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
        ids = ps[cut].tolist()
        bounds = np.r_[cut, ps.size].tolist()
        del ps
        names = list(cols)
        for name in names:
            vo = np.asarray(cols.pop(name))[o]
            for i, p in enumerate(ids):
                piece = vo[bounds[i]:bounds[i + 1]]
                if self.store is not None:
                    self.store.append(f"{name}@{p}", piece)
                else:
                    self.mem.setdefault(p, {}).setdefault(name, []).append(piece.copy())
            del vo
        for p in ids:
            self.names.setdefault(p, list(names))

    def take(self, p: int, only: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Part `p`'s columns (`only` those; in memory), let go here."""
        have = self.names.get(p, [])
        names = [c for c in have if only is None or c in only]
        left = [c for c in have if c not in names]
        if left:
            self.names[p] = left
        else:
            self.names.pop(p, None)
        if self.store is not None:
            out = {}
            for name in names:
                out[name] = np.array(self.store[f"{name}@{p}"])  # a copy: the file's pages go with the map
                del self.store[f"{name}@{p}"]
            return out
        parts = self.mem.get(p, {})
        out = {name: np.concatenate(parts.pop(name)) for name in names}
        if not parts:
            self.mem.pop(p, None)
        return out

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        self.mem.clear()


def flow_ordered_in_parts(att: Attempts, block: int | None = None) -> Attempts:
    """:func:`.flows.flow_ordered` of a table in files (:class:`.spill.ColumnStore`,
    rows without `prev` links), by parts of endpoint-pair hashes (:func:`deal`): the
    sort keys (hash, endpoints) and the permutation are a part's, not the table's, and
    each column is put in order part after part into a new file. A flow's rows share
    its hash, so they are in one part, in table order (stable sort), as
    flow_ordered has them."""
    from . import backend

    src = att.cols
    assert isinstance(src, ColumnStore) and "prev" not in src
    n = len(att)
    names = [k for k in src if k != "flow"]
    src_dtypes = {k: src.dtype(k) for k in names}
    mask = np.uint32(flows.C_HASH_MASK) if backend.ACTIVE.name == "c" else None  # as flow_ordered

    def ends(sl: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e_o = (att["orig"][sl].astype(np.uint64) << np.uint64(16)) | att["orig_port"][sl].astype(np.uint64)
        e_r = (att["resp"][sl].astype(np.uint64) << np.uint64(16)) | att["resp_port"][sl].astype(np.uint64)
        lo, hi = np.minimum(e_o, e_r), np.maximum(e_o, e_r)
        h = flows._flow_hash(lo, hi)
        if mask is not None:
            h &= mask
        return h, lo, hi

    def fetch(sl: slice) -> dict[str, np.ndarray]:
        h, lo, hi = ends(sl)
        got = {"~h": h, "~lo": lo, "~hi": hi, "~history": att.history[sl]}
        for k in names:
            got[k] = src[k][sl]  # a view: read when dealt
        return got

    dealt, n_parts = deal(src, n, lambda sl: ends(sl)[0], fetch, block)
    out = ColumnStore()
    hist: list[np.ndarray] = []
    try:
        flow_dtype = src.dtype("flow") if "flow" in src else np.dtype(np.int64)
        src.close()  # everything is in the parts now
        flows_before = pos_before = 0
        last: tuple[int, int] | None = None
        for p in range(n_parts):
            keys = dealt.take(p, ("~h", "~lo", "~hi"))
            if not keys:
                continue
            o = np.lexsort((keys["~hi"], keys["~lo"], keys["~h"]))
            lo, hi = keys["~lo"][o], keys["~hi"][o]
            del keys
            new_flow = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])]
            if last is not None and (int(lo[0]), int(hi[0])) == last:
                new_flow[0] = False
            last = (int(lo[-1]), int(hi[-1]))
            del lo, hi
            hist.append(dealt.take(p, ("~history",))["~history"][o])
            kept: dict[str, np.ndarray] = {}
            if "first_pos" in names:  # each segment's first packet position, counted on
                kept["packets"] = dealt.take(p, ("packets",))["packets"][o]
                npk = kept["packets"].astype(np.int64)
                start = np.cumsum(npk) - npk + pos_before
                pos_before = int(start[-1] + npk[-1])
                kept["first_pos"] = start
                del npk, start
            for k in names:
                v = kept.pop(k) if k in kept else dealt.take(p, (k,))[k][o]
                out.append(k, v.astype(src_dtypes[k], copy=False))
                del v
            flow = np.cumsum(new_flow) - 1 + flows_before
            flows_before = int(flow[-1]) + 1
            out.append("flow", flow.astype(flow_dtype))
            del flow, new_flow, o
    finally:
        dealt.close()
    return Attempts(out, np.concatenate(hist) if hist else att.history[:0])
