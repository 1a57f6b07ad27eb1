"""Capture analysis on a Dask cluster: many files (a fleet's), one task per stream.

A *stream* is the capture of one capture point: one file, or several rotated files
(tcpdump ``-C``/``-W``/``-G``) that together are one capture. The files of a stream are
analysed together on one worker, joined in time order (:func:`.analysis.file_order_key`),
so a 4-tuple reused across a file boundary is seen as in-process. The client then
merges the streams' attempts into one :class:`~.analysis.CaptureAnalysis` and computes
the per-client and per-server statistics over all of them.

Streams are found in two steps:

1. by name (:func:`stream_key`): files in one directory whose names differ only in a
   rotation counter after the capture extension (``cap.pcap``, ``cap.pcap1``, ...,
   ``cap.pcap00``) or in a time stamp (``%Y%m%d``, ``%Y-%m-%d_%H:%M:%S``, ``%H%M%S``,
   ``%s``) are one stream;
2. by content: streams that share a (client, server) address pair — rotated files the
   names did not join, or one connection captured at both ends — are joined and
   analysed again together, because the 4-tuple reuse and the TIME_WAIT recycle
   verdicts are per address pair.

So the merged result is the in-process ``analyze FILES`` one (``analyze_paths(merge=True)``),
attempt for attempt and in the same row order, with one documented difference: the
check that leaves out packets with impossible times (a day or more away from the rest,
:func:`.analysis.far_times`) runs per stream, not over the whole fleet.

Workers read the files themselves, by absolute path: every worker must see them there
(shared storage), and have tcpreuse installed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CaptureError
from . import analysis, flows
from .analysis import (
    CaptureAnalysis,
    _read_one,
    analyze_packets,
    file_order_key,
    finish_analysis,
    packet_attempts,
)
from .decode import V6_BASE, Packets
from .flows import Attempts
from .formats import ReadReport

# a tcpdump -C / -W counter: digits right after the capture file's extension
_COUNTER = re.compile(r"(\.(?:pcapng|pcap|cap|dmp|dump|trace|tcpdump))\d+$", re.IGNORECASE)
# a tcpdump -G strftime time stamp: a date with an optional time, a bare HHMMSS, or %s
_STAMP = re.compile(
    r"(?<!\d)(?:"
    r"(?:19|20)\d\d([-_.]?)[01]\d\1[0-3]\d(?:[T_.\- ]?[0-2]\d[:._\-]?[0-5]\d(?:[:._\-]?[0-5]\d)?)?"
    r"|[0-2]\d[0-5]\d[0-5]\d"
    r"|[0-2]\d:[0-5]\d(?::[0-5]\d)?"
    r"|1\d{9}"
    r")(?!\d)")


def stream_key(path: str | os.PathLike[str]) -> str:
    """The capture point a file belongs to, by name: its directory and its name with a
    rotation counter and time stamps taken out (``web-01.pcap`` and ``web-02.pcap`` are
    two hosts; ``web-01.pcap`` and ``web-01.pcap3`` one)."""
    p = Path(os.path.abspath(path))
    name = _STAMP.sub("*", _COUNTER.sub(r"\1", p.name))
    return str(p.parent / name)


def group_streams(files: Sequence[str | os.PathLike[str]]) -> list[list[int]]:
    """File indexes grouped by :func:`stream_key`, groups in order of their first file."""
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        groups.setdefault(stream_key(f), []).append(i)
    return list(groups.values())


# --------------------------------------------------------------------------------------
# on a worker


@dataclass
class StreamPart:
    """One stream's attempts and what the merge needs to place them among the others."""

    members: list[int]  # file indexes (command line), in the order they were joined
    attempts: Attempts
    v6: list[bytes]  # the stream's IPv6 table (keys of `attempts` index it)
    file_v6: dict[int, list[bytes]] = field(default_factory=dict)  # each file's own table
    file_packets: dict[int, int] = field(default_factory=dict)  # TCP packets kept per file
    file_key: dict[int, tuple[float, int]] = field(default_factory=dict)  # file_order_key
    reports: dict[int, ReadReport] = field(default_factory=dict)
    errors: dict[int, tuple[str, str | None]] = field(default_factory=dict)  # unreadable: message, hint
    packets: int = 0
    t_first: float = float("inf")
    t_last: float = float("-inf")
    timing: dict[str, float] = field(default_factory=dict)


def analyze_stream(members: Sequence[tuple[int, str, str]], n_files: int) -> StreamPart:
    """Read the stream's files ((index among all `n_files`, path to open, path to
    report) each), join them in time order and find their attempts (a Dask task; also
    run in-process). Files that add up to STREAM_MIN_BYTES or more are streamed
    (:func:`_streamed_part`) when that gives the same part."""
    if sum(_size(path) for _i, path, _shown in members) >= analysis.STREAM_MIN_BYTES:
        part = _streamed_part(members)
        if part is not None:
            return part
    t = time.perf_counter()
    part = StreamPart(members=[], attempts=Attempts(), v6=[])
    good: list[tuple[int, Packets, ReadReport]] = []
    shown_names = [""] * n_files
    for i, path, shown in members:
        shown_names[i] = shown
        try:
            pk, rep = _read_one((path, i))
        except CaptureError as e:
            part.errors[i] = (e.message.replace(path, shown), e.hint)
            continue
        rep.path = shown
        good.append((i, pk, rep))
    good.sort(key=lambda g: file_order_key(g[1], g[0]))
    part.timing["read"] = time.perf_counter() - t
    part.members = [i for i, _, _ in good]
    for i, pk, rep in good:
        part.file_v6[i] = list(pk.v6)
        part.file_key[i] = file_order_key(pk, i)
        part.reports[i] = rep
    if not good:
        return part
    pk = Packets.concat([g[1] for g in good])
    pk, att = packet_attempts(pk, [g[2] for g in good], shown_names, part.timing)
    part.attempts, part.v6, part.packets = att, pk.v6, len(pk)
    for i in part.members:
        part.file_packets[i] = int(np.count_nonzero(pk.file == i))
    if len(pk):
        part.t_first, part.t_last = float(pk.ts.min()), float(pk.ts.max())
    return part


def _streamed_part(members: Sequence[tuple[int, str, str]]) -> StreamPart | None:
    """:func:`analyze_stream` by the streamed read (:func:`.analysis.analyze_streamed`:
    the files one after the other in time order, chunk by chunk, in bounded memory),
    with what the merge needs of each file: its IPv6 table, its TCP packets and its
    place in the one-pass order (the median time of its packets, found from a spill of
    them to a temporary file, not kept in memory); None when the streamed read cannot
    give the one-pass result."""
    ordered = sorted(members)  # the streamed read breaks ties by place in its list: by index here too
    paths = [path for _i, path, _shown in ordered]
    extras = analysis.StreamExtras()
    an = analysis.analyze_streamed(paths, extras=extras)
    if an is None:
        return None
    glob = [i for i, _path, _shown in ordered]
    part = StreamPart(members=[], attempts=an.attempts, v6=an.v6, packets=an.packets)
    for k, err in extras.errors.items():
        part.errors[glob[k]] = (err.message.replace(ordered[k][1], ordered[k][2]), err.hint)
    for k, rep in extras.reports.items():
        i = glob[k]
        rep.path = ordered[k][2]
        part.reports[i] = rep
        part.file_v6[i] = extras.file_v6[k]
        part.file_key[i] = (extras.file_median[k], i)
        part.file_packets[i] = extras.file_packets[k]
    part.members = sorted(part.file_key, key=lambda i: part.file_key[i])
    att = part.attempts
    if len(att):
        att.cols["file"] = np.asarray(glob, dtype=np.int64)[att["file"].astype(np.int64)].astype(att["file"].dtype)
    if an.packets:
        part.t_first, part.t_last = an.t_first, an.t_last
    part.timing = dict(an.timing)
    return part


def _size(path: str) -> int:
    from .window import capture_size

    return capture_size(path)


def analyze_one_file(path: str, shown: str) -> CaptureAnalysis | tuple[str, str | None]:
    """``--per-file``: one file on its own (a Dask task), or its read error; streamed
    (:func:`.analysis.analyze_streamed`) from STREAM_MIN_BYTES on, as in-process."""
    if _size(path) >= analysis.STREAM_MIN_BYTES and (an := analysis.analyze_streamed(path)) is not None:
        an.files = [shown]
        for rep in an.reports:
            rep.path = shown
        return an
    try:
        pk, rep = _read_one((path, 0))
    except CaptureError as e:
        return (e.message.replace(path, shown), e.hint)
    rep.path = shown
    return analyze_packets(pk, [rep], [shown])


# --------------------------------------------------------------------------------------
# on the client


def _pairs(part: StreamPart, remap: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The stream's distinct unordered (address, address) pairs, as global keys."""
    a = part.attempts
    if not len(a):
        return np.zeros((0, 2), dtype=np.uint64)
    x, y = remap(a["orig"]), remap(a["resp"])
    pr = np.stack([np.minimum(x, y), np.maximum(x, y)], axis=1)
    return np.unique(pr, axis=0)


def shared_pairs(parts: list[StreamPart]) -> list[list[int]]:
    """Groups of parts (indexes) that share an address pair, each of two or more."""
    table = _global_v6(parts)
    keyed = []
    for j, p in enumerate(parts):
        pr = _pairs(p, _v6_remap(p.v6, table))
        keyed.append(np.column_stack([pr, np.full(len(pr), j, dtype=np.uint64)]))
    allp = np.concatenate(keyed) if keyed else np.zeros((0, 3), dtype=np.uint64)
    parent = list(range(len(parts)))

    def root(j: int) -> int:
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    if len(allp):
        o = np.lexsort((allp[:, 2], allp[:, 1], allp[:, 0]))
        s = allp[o]
        same = (s[1:, 0] == s[:-1, 0]) & (s[1:, 1] == s[:-1, 1])
        for k in np.flatnonzero(same).tolist():
            a, b = root(int(s[k, 2])), root(int(s[k + 1, 2]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for j in range(len(parts)):
        groups.setdefault(root(j), []).append(j)
    return [g for g in groups.values() if len(g) > 1]


def _global_order(parts: list[StreamPart]) -> list[int]:
    """All read files in the order the in-process analysis joins them."""
    keys = {i: k for p in parts for i, k in p.file_key.items()}
    return sorted(keys, key=lambda i: keys[i])


def _global_v6(parts: list[StreamPart]) -> dict[bytes, int]:
    """The IPv6 table Packets.concat builds over all files in the global order."""
    by_file = {i: v for p in parts for i, v in p.file_v6.items()}
    table: dict[bytes, int] = {}
    for i in _global_order(parts):
        for a in by_file[i]:
            table.setdefault(a, len(table))
    return table


def _v6_remap(v6: list[bytes], table: dict[bytes, int]) -> Callable[[np.ndarray], np.ndarray]:
    m = np.asarray([table[a] for a in v6] or [0], dtype=np.uint64)

    def remap(keys: np.ndarray) -> np.ndarray:
        out = keys.astype(np.uint64, copy=True)
        v = out >= V6_BASE
        if v.any():
            out[v] = V6_BASE + m[(out[v] - V6_BASE).astype(np.int64)]
        return out

    return remap


def merge_streams(files: Sequence[str], parts: list[StreamPart],
                  timing: dict[str, float] | None = None) -> CaptureAnalysis:
    """One analysis of all streams' attempts, as the in-process analysis of all files
    would give it: global address keys, packet rows and attempt indexes, rows in flow
    order, then the per-client and per-server statistics over the whole."""
    t = time.perf_counter()
    errors = {i: e for p in parts for i, e in p.errors.items()}
    reports = {i: r for p in parts for i, r in p.reports.items()}
    if not reports:
        msgs = [errors[i] for i in sorted(errors)]
        if len(msgs) == 1:
            raise CaptureError(msgs[0][0], hint=msgs[0][1])
        raise CaptureError("no file could be read: " + "; ".join(m for m, _ in msgs))
    table = _global_v6(parts)
    order = _global_order(parts)
    sizes = {i: p.file_packets.get(i, 0) for p in parts for i in p.members}
    g_off, acc = {}, 0
    for i in order:
        g_off[i], acc = acc, acc + sizes[i]
    cols: dict[str, list[np.ndarray]] = {}
    hist: list[np.ndarray] = []
    base = 0
    for p in parts:
        a = p.attempts
        if not len(a):
            continue
        c = dict(a.cols)
        remap = _v6_remap(p.v6, table)
        c["orig"] = remap(a["orig"]).astype(a["orig"].dtype)
        c["resp"] = remap(a["resp"]).astype(a["resp"].dtype)
        # packet rows: stream rows -> rows of the all-files table
        ends = np.cumsum([p.file_packets[i] for i in p.members])
        starts_s = ends - np.asarray([p.file_packets[i] for i in p.members])
        shift = np.asarray([g_off[i] for i in p.members], dtype=np.int64) - starts_s
        for col in ("pkt", "pkt_tw_enter"):
            row = a[col].astype(np.int64)
            ok = row >= 0
            f = np.searchsorted(ends, np.where(ok, row, 0), side="right")
            c[col] = np.where(ok, row + shift[np.minimum(f, len(shift) - 1)], row).astype(a[col].dtype)
        c["prev"] = np.where(a["prev"] >= 0, a["prev"] + base, a["prev"]).astype(a["prev"].dtype)
        base += len(a)
        for k, v in c.items():
            cols.setdefault(k, []).append(v)
        hist.append(a.history)
    v6 = list(table)
    if cols:
        att = Attempts({k: np.concatenate(v) for k, v in cols.items()}, np.concatenate(hist))
        att = _flow_ordered(att)
    else:
        att = analyze_packets(Packets.empty(), [], []).attempts
    good = [p for p in parts if p.packets]
    n = sum(p.packets for p in parts)
    t_first = min(p.t_first for p in good) if good else 0.0
    t_last = max(p.t_last for p in good) if good else 0.0
    tm: dict[str, float] = {}
    for p in parts:
        for k, secs in p.timing.items():
            tm[k] = tm.get(k, 0.0) + secs
    tm.update(timing or {})
    rep_list = [reports[i] for i in sorted(reports)] + [_unread(files[i], errors[i][0]) for i in sorted(errors)]
    tm["merge"] = time.perf_counter() - t
    return finish_analysis(att, v6, rep_list, list(files), n, t_first, t_last, tm)


def _unread(path: str, message: str) -> ReadReport:
    rep = ReadReport(path=path, complete=False)
    rep.warnings.append(f"not read: {message}")
    return rep


def _flow_ordered(att: Attempts) -> Attempts:
    """Rows in the order :func:`.flows.build` gives them for all packets at once
    (:func:`.flows.flow_ordered`: each flow comes from one stream, so its segments are
    in time order)."""
    return flows.flow_ordered(att)


# --------------------------------------------------------------------------------------
# running it


def analyze_streams(paths: Sequence[str | os.PathLike[str]], *, merge: bool = True,
                    run: Callable[[list[tuple[Callable[..., Any], tuple[Any, ...]]]], list[Any]] | None = None,
                    progress: Callable[[str], None] | None = None) -> list[CaptureAnalysis]:
    """:func:`.analysis.analyze_paths` with the work cut into streams (merge=True) or
    files (merge=False), run by `run` (a list of (function, args) -> their results,
    in order; default: one after the other in this process)."""
    shown = [str(p) for p in paths]
    if not shown:
        raise CaptureError("no capture files given")
    files = [(os.path.abspath(p), p) for p in shown]
    run = run or _run_here
    say = progress or (lambda _m: None)
    t = time.perf_counter()
    if not merge:
        outs = run([(analyze_one_file, f) for f in files])
        good = [o for o in outs if isinstance(o, CaptureAnalysis)]
        bad = [(f, o) for f, o in zip(shown, outs, strict=True) if not isinstance(o, CaptureAnalysis)]
        if not good:
            if len(bad) == 1:
                raise CaptureError(bad[0][1][0], hint=bad[0][1][1])
            raise CaptureError("no file could be read: " + "; ".join(m for _, (m, _h) in bad))
        return good + [analyze_packets(Packets.empty(), [_unread(f, m)], [f]) for f, (m, _h) in bad]
    groups = group_streams(shown)
    say(f"{len(shown)} file(s) in {len(groups)} stream(s)")

    def task(g: list[int]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return analyze_stream, ([(i, *files[i]) for i in g], len(files))

    parts: list[StreamPart] = run([task(g) for g in groups])
    for _round in range(len(parts)):
        joined = shared_pairs(parts)
        if not joined:
            break
        say(f"{sum(len(j) for j in joined)} stream(s) share address pairs: analysing them together")
        merged = [sorted(i for j in grp for i in groups[j]) for grp in joined]
        redo: list[StreamPart] = run([task(g) for g in merged])
        drop = {j for grp in joined for j in grp}
        groups = [g for j, g in enumerate(groups) if j not in drop] + merged
        parts = [p for j, p in enumerate(parts) if j not in drop] + redo
    return [merge_streams(shown, parts, {"wall": time.perf_counter() - t})]


def _run_here(tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    return [fn(*args) for fn, args in tasks]


def probe_scheduler(address: str, timeout_s: float) -> None:
    """Fail at once, in one line, when nothing listens at a tcp:// or tls:// `address`
    (Dask's client would retry until its timeout, and leave its event loop behind)."""
    import socket

    from distributed.comm import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(address, strict=True)
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as e:
        raise CaptureError(f"--scheduler {address!r}: {e}",
                           hint="give tcp://HOST:PORT (`dask scheduler` listens on port 8786) or local") from None
    from distributed.comm.registry import get_backend

    try:
        get_backend(scheme)
    except ValueError as e:
        raise CaptureError(f"--scheduler {address!r}: {e}", hint="give tcp://HOST:PORT or local") from None
    if scheme not in ("tcp", "tls"):
        return  # ucx://, ws://: left to Dask
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise CaptureError(f"cannot reach the Dask scheduler at {address}: {e.strerror or e}",
                           hint="start one with `dask scheduler`, or use --scheduler local") from None


def analyze_on_dask(paths: Sequence[str | os.PathLike[str]], scheduler: str, *, merge: bool = True,
                    workers: int | None = None, timeout_s: float = 10.0,
                    progress: Callable[[str], None] | None = None) -> list[CaptureAnalysis]:
    """:func:`analyze_streams` with each stream (or file) a task on the Dask scheduler at
    `scheduler` (``tcp://host:port``), or on a LocalCluster on loopback (``local``)."""
    from ..sweep import SweepError
    from ..sweep.runner import Pool

    if scheduler != "local":
        probe_scheduler(scheduler, timeout_s)
    try:
        pool = Pool(None if scheduler == "local" else scheduler, workers=workers, timeout_s=timeout_s)
        with pool:
            client = pool.client
            try:
                client.wait_for_workers(1, timeout=timeout_s)
            except TimeoutError:
                raise CaptureError(f"the Dask scheduler at {scheduler} has no workers (waited {timeout_s:g} s)",
                                   hint="start some with `dask worker " + scheduler + "`") from None
            if progress is not None:
                progress(f"analysing on {pool.where}")

            def run(tasks: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
                from distributed import KilledWorker

                futs = [client.submit(fn, *args, pure=False) for fn, args in tasks]
                try:
                    return list(client.gather(futs))
                except ImportError as e:
                    raise CaptureError(f"a Dask worker cannot run the analysis: {e}",
                                       hint="install the same tcpreuse on every worker") from None
                except KilledWorker as e:
                    last = getattr(e.last_worker, "address", e.last_worker)
                    raise CaptureError(f"{e.allowed_failures + 1} Dask workers died analysing one stream "
                                       f"(out of memory?), the last {last}",
                                       hint="give the workers more memory, or fewer threads each") from None

            return analyze_streams(paths, merge=merge, run=run, progress=progress)
    except SweepError as e:
        raise CaptureError(e.message, hint=e.hint) from None
