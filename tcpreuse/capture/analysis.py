"""One capture (or several merged) -> attempts, per-source statistics, counts, exports.

:func:`analyze_paths` is the entry point: it reads files (in parallel processes when
there are several), decodes them, and runs the flow analysis. The result,
:class:`CaptureAnalysis`, is what the diagnosis rules read (``Evidence.capture``) and
what the CLI renders; it also exports per-attempt rows (CSV, Parquet) under tshark's
field names and converts to the project's :class:`~tcpreuse.result.RunResult`.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import struct
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CaptureError
from ..result import AttemptTable, HostInfo, RunResult, Timeline
from . import flows, reuse, sources
from .decode import Packets, addr_str, decode
from .flows import ANSWERS, CLOSES, WHO, Attempts
from .formats import ReadReport, read_frames
from .reuse import PREV_TW, RECYCLE, TW_VERDICTS
from .sources import ServerStats, SourceStats
from .zeek import CONN_STATES

if TYPE_CHECKING:
    from .chunked import ChunkBuilder

# export column -> description; tshark's field name where one exists
EXPORT_COLUMNS: dict[str, str] = {
    "frame.number": "frame of the attempt's first SYN (first packet for midstream traffic)",
    "file": "capture file",
    "frame.time_epoch": "time of the first packet, seconds since the epoch",
    "ip.src": "originator (client) address (IPv4 or IPv6)",
    "tcp.srcport": "originator port",
    "ip.dst": "responder (server) address",
    "tcp.dstport": "responder port",
    "tcp.seq_raw": "the SYN's sequence number (ISN)",
    "tcp.options.timestamp.tsval": "the SYN's TSval (empty: no timestamp option)",
    "tcp.options.mss_val": "the SYN's MSS option",
    "tcp.options.wscale.shift": "the SYN's window scale shift",
    "tcp.options.sack_perm": "the SYN offered SACK",
    "tcp.completeness": "tshark's bitmask: 1 SYN, 2 SYN-ACK, 4 ACK, 8 data, 16 FIN, 32 RST",
    "conn_state": "Zeek conn_state",
    "history": "Zeek history",
    "packets": "packets in the attempt",
    "syn_retries": "SYN retransmissions",
    "syn_rtx_ms": "delay of the first SYN retransmission, ms",
    "answer": "first answer to the SYN: synack, rst, old_ack (an ACK for an older connection), none",
    "answer_ms": "delay of that answer, ms",
    "connect_ms": "first SYN to first SYN-ACK, ms",
    "established": "the client acknowledged a SYN-ACK",
    "orig_bytes": "payload bytes from the client",
    "resp_bytes": "payload bytes from the server",
    "duration_s": "first to last packet, s",
    "close": "first close: fin or rst",
    "closed_by": "who closed first: client or server",
    "tw_holder": "who held TIME_WAIT afterwards (first FIN, both FINs seen)",
    "reuse_age_s": "time since the previous connection on this 4-tuple ended, s",
    "prev_tw": "who held TIME_WAIT from that previous connection",
    "tw_verdict": "what a Linux server in TIME_WAIT decides for this SYN: accept, ack_old, paws_reject",
    "tw_recycle": "drop: a tcp_tw_recycle server would drop this SYN; drop_4x: only 3.x-4.11 kernels",
}


@dataclass
class CaptureAnalysis:
    files: list[str]
    reports: list[ReadReport]
    attempts: Attempts
    v6: list[bytes]
    sources: list[SourceStats]
    servers: list[ServerStats]
    packets: int
    t_first: float
    t_last: float
    timing: dict[str, float] = field(default_factory=dict)

    # ---- helpers -------------------------------------------------------------------------
    def addr(self, key: int) -> str:
        return addr_str(int(key), self.v6)

    def key_of(self, addr: str) -> int | None:
        """The address key of a formatted address (as in sources/servers), or None."""
        cache = self.__dict__.setdefault("_keys", {})
        if not cache:
            a = self.attempts
            keys = np.zeros(0, dtype=np.uint64)
            for sl in flows.row_blocks(len(a)):
                keys = flows.distinct(np.concatenate([keys, a["orig"][sl], a["resp"][sl]]))
            for k in keys.tolist():
                cache[self.addr(int(k))] = int(k)
        return cache.get(addr)

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.reports)

    @property
    def warnings(self) -> list[str]:
        return [f"{Path(r.path).name}: {w}" for r in self.reports for w in r.warnings]

    def attempt_mask(self) -> np.ndarray:
        return np.asarray(self.attempts["is_attempt"])

    def counts(self) -> dict[str, Any]:
        """Counts over the attempt table, read ROW_BLOCK rows at a time."""
        a = self.attempts
        sums = dict.fromkeys(("attempts", "established", "syn_retried", "syn_retransmissions", "reused",
                              "reused_server_timewait"), 0)
        bins = {"conn_state": np.zeros(len(CONN_STATES), dtype=np.int64),
                "conn_state_midstream": np.zeros(len(CONN_STATES), dtype=np.int64)}
        voc = {"answer": ANSWERS, "tw_verdict": TW_VERDICTS, "tw_recycle": RECYCLE, "closed_by": WHO, "close": CLOSES}
        for col, names in voc.items():
            bins[col] = np.zeros(len(names), dtype=np.int64)

        def add(key: str, codes: np.ndarray) -> None:
            b = np.bincount(codes.astype(np.int64), minlength=bins[key].size)
            if b.size > bins[key].size:  # a code past the names: kept, as one pass counts it
                bins[key] = np.r_[bins[key], np.zeros(b.size - bins[key].size, dtype=np.int64)]
            bins[key] += b

        for sl in flows.row_blocks(len(a)):
            m = np.asarray(a["is_attempt"][sl])
            sums["attempts"] += int(m.sum())
            sums["established"] += int(a["established"][sl][m].sum())
            add("conn_state", a["conn_state"][sl][m])
            add("conn_state_midstream", a["conn_state"][sl][~m])
            for col in voc:
                add(col, a[col][sl][m])
            n_syn = a["n_syn"][sl][m].astype(np.int64)
            sums["syn_retried"] += int((n_syn > 1).sum())  # attempts that sent their SYN more than once
            sums["syn_retransmissions"] += int(np.maximum(n_syn - 1, 0).sum())  # SYN packets
            del n_syn
            sums["reused"] += int((a["prev"][sl][m] >= 0).sum())
            sums["reused_server_timewait"] += int(((a["prev_tw"][sl][m] == 2) & (a["reuse_age_s"][sl][m] < 60)).sum())

        def cnt(key: str, names: tuple[str, ...]) -> dict[str, int]:
            return {names[i]: int(c) for i, c in enumerate(bins[key].tolist()) if c and names[i]}

        n = sums["attempts"]
        return {
            "packets": self.packets,
            "segments": len(a),
            "attempts": n,
            "midstream": len(a) - n,
            "established": sums["established"],
            "conn_state": cnt("conn_state", CONN_STATES),
            "conn_state_midstream": cnt("conn_state_midstream", CONN_STATES),
            "answer": cnt("answer", ANSWERS),
            "syn_retried": sums["syn_retried"],
            "syn_retransmissions": sums["syn_retransmissions"],
            "reused": sums["reused"],
            "reused_server_timewait": sums["reused_server_timewait"],
            "tw_verdict": cnt("tw_verdict", TW_VERDICTS),
            "tw_recycle": cnt("tw_recycle", RECYCLE),
            "closed_by": cnt("closed_by", WHO),
            "close": cnt("close", CLOSES),
        }

    # ---- exports -------------------------------------------------------------------------
    def export_columns(self) -> dict[str, list[Any]]:
        """Per-segment rows, decoded to Python values (NaN/absent -> None)."""
        a = self.attempts
        n = len(a)
        keys = np.concatenate([a["orig"], a["resp"]])
        uniq, inv = np.unique(keys, return_inverse=True)
        names = [self.addr(k) for k in uniq.tolist()]
        inv = inv.ravel()
        src = [names[i] for i in inv[:n].tolist()]
        dst = [names[i] for i in inv[n:].tolist()]
        files = [Path(f).name for f in self.files] or [""]

        def f(x: np.ndarray, nd: int = 3) -> list[Any]:
            return [None if v != v else round(v, nd) for v in x.tolist()]

        def voc(col: str, names_: tuple[str, ...]) -> list[str]:
            return [names_[c] for c in a[col].tolist()]

        syn_ts = a["syn_has_ts"]
        att = a["is_attempt"]
        return {
            "frame.number": a["frame"].tolist(),
            "file": [files[i] if 0 <= i < len(files) else "" for i in a["file"].tolist()],
            "frame.time_epoch": f(a["t_start"], 6),
            "ip.src": src,
            "tcp.srcport": a["orig_port"].tolist(),
            "ip.dst": dst,
            "tcp.dstport": a["resp_port"].tolist(),
            "tcp.seq_raw": [v if ok else None for v, ok in zip(a["isn"].tolist(), att.tolist(), strict=True)],
            "tcp.options.timestamp.tsval": [
                v if ok else None for v, ok in zip(a["syn_tsval"].tolist(), syn_ts.tolist(), strict=True)
            ],
            "tcp.options.mss_val": [v or None for v in a["syn_mss"].tolist()],
            "tcp.options.wscale.shift": [None if v < 0 else v for v in a["syn_wscale"].tolist()],
            "tcp.options.sack_perm": a["syn_sackok"].tolist(),
            "tcp.completeness": a["completeness"].tolist(),
            "conn_state": voc("conn_state", CONN_STATES),
            "history": a.history_str(),
            "packets": a["packets"].tolist(),
            "syn_retries": np.maximum(a["n_syn"] - 1, 0).tolist(),
            "syn_rtx_ms": f((a["t_syn2"] - a["t_syn"]) * 1000),
            "answer": voc("answer", ANSWERS),
            "answer_ms": f((a["t_answer"] - a["t_syn"]) * 1000),
            "connect_ms": f((a["t_synack"] - a["t_syn"]) * 1000),
            "established": a["established"].tolist(),
            "orig_bytes": a["orig_bytes"].tolist(),
            "resp_bytes": a["resp_bytes"].tolist(),
            "duration_s": f(a["t_end"] - a["t_start"], 6),
            "close": voc("close", CLOSES),
            "closed_by": voc("closed_by", WHO),
            "tw_holder": voc("tw_holder", WHO),
            "reuse_age_s": f(a["reuse_age_s"]),
            "prev_tw": voc("prev_tw", PREV_TW),
            "tw_verdict": voc("tw_verdict", TW_VERDICTS),
            "tw_recycle": voc("tw_recycle", RECYCLE),
        }

    def write_csv(self, path: str | os.PathLike[str]) -> int:
        cols = self.export_columns()
        names = list(cols)
        try:
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(names)
                w.writerows(zip(*(cols[k] for k in names), strict=True))
        except OSError as e:
            raise CaptureError(f"cannot write {path}: {e.strerror or e}") from None
        return len(self.attempts)

    def write_parquet(self, path: str | os.PathLike[str]) -> int:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CaptureError("--parquet needs pyarrow", hint="pip install 'tcpreuse[parquet]'") from None
        cols = self.export_columns()
        table = pa.table({k: pa.array(v) for k, v in cols.items()})
        try:
            pq.write_table(table, str(path))
        except OSError as e:
            raise CaptureError(f"cannot write {path}: {e}") from None
        return len(self.attempts)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": [r.to_json() for r in self.reports],
            "complete": self.complete,
            "capture": {
                "first": self.t_first,
                "last": self.t_last,
                "duration_s": round(self.t_last - self.t_first, 6) if self.packets else 0.0,
            },
            "counts": self.counts(),
            "sources": [s.to_json() for s in self.sources],
            "servers": [s.to_json() for s in self.servers],
            "timing_s": {k: round(v, 4) for k, v in self.timing.items()},
        }

    def timeline(self) -> tuple[Timeline, float | None]:
        """The RunResult's timeline (:meth:`to_run_result`) and when the first attempt
        that failed began (s from the first packet; None: none failed), counted a block
        of the attempt table at a time: the text report draws them without building the
        per-attempt table (a table in files is read a block's pages at a time). The
        first failure is the earliest one, whatever the order of the table's rows."""
        a = self.attempts
        blocks = [np.flatnonzero(a["is_attempt"][sl]) + sl.start for sl in flows.row_blocks(len(a))]
        blocks = [m for m in blocks if m.size]
        if not blocks:
            return Timeline(step_s=1.0), None

        def rel_t(m: np.ndarray) -> np.ndarray:
            return np.asarray(np.nan_to_num(a["t_syn"][m] - self.t_first, nan=0.0))

        lo = min(float(rel_t(m).min()) for m in blocks)
        span = max(float((rel_t(m) - lo).max()) for m in blocks)
        step = 1.0 if span < MAX_BUCKETS else float(np.ceil(span / MAX_BUCKETS))
        size = int(np.floor(span / step)) + 1
        attempts, failed, delayed = (np.zeros(size, dtype=np.int64) for _ in range(3))
        onset: float | None = None
        for m in blocks:
            t = rel_t(m)
            sec = np.floor((t - lo) / step).astype(np.int64)
            synack, retried, reset = _answered(a, m)
            fail = ~synack | reset
            attempts += np.bincount(sec, minlength=size)
            failed += np.bincount(sec[fail], minlength=size)
            delayed += np.bincount(sec[synack & retried & ~reset], minlength=size)
            if fail.any():
                first = round(float(t[fail].min()), 6)
                onset = first if onset is None else min(onset, first)
        tl = Timeline(step_s=step)
        tl.t = [float(i * step) for i in range(size)]
        tl.attempts, tl.failed, tl.delayed = attempts.tolist(), failed.tolist(), delayed.tolist()
        tl.ok = (attempts - failed).tolist()
        return tl, onset

    # ---- RunResult ----------------------------------------------------------------------
    def to_run_result(self, scenario: str = "") -> RunResult:
        """The attempts (segments that began with a SYN) as a RunResult(source="analyze").

        Outcome as the client's connect() would have seen it: "ok" once a SYN-ACK came,
        ECONNREFUSED for a RST answer, ETIMEDOUT when no SYN-ACK came and the client
        stopped retransmitting its SYN (the capture went on past when the next
        retransmission was due), "EINPROGRESS" when the capture ended sooner.
        """
        a = self.attempts
        m = np.flatnonzero(a["is_attempt"])
        k = m.size
        t0 = self.t_first
        voc: dict[str, list[str]] = {"outcome": [], "reason": [], "workload": [], "host": [], "addr": []}
        idx: dict[str, dict[str, int]] = {v: {} for v in voc}

        def code(vocab: str, name: str) -> int:
            d = idx[vocab]
            if name not in d:
                d[name] = len(voc[vocab])
                voc[vocab].append(name)
            return d[name]

        synack, retried, reset_by_server = _answered(a, m)
        ans = a["answer"][m]
        refused = ~synack & (ans == flows.A_RST)
        # Still retrying when the capture ended? With exponential backoff the next SYN
        # would come at least (last SYN - first SYN) after the last one, and >= 1 s.
        t_last_syn = np.where(np.isnan(a["t_syn_last"][m]), a["t_syn"][m], a["t_syn_last"][m])
        next_syn = t_last_syn + np.maximum(t_last_syn - a["t_syn"][m], 1.0) + 1.0
        in_flight = ~synack & ~refused & (self.t_last < next_syn)
        outcome = np.full(k, code("outcome", "ETIMEDOUT"), dtype=np.int16)
        outcome[synack] = code("outcome", "ok")
        outcome[refused] = code("outcome", "ECONNREFUSED")
        outcome[in_flight] = code("outcome", "EINPROGRESS")
        outcome[reset_by_server] = code("outcome", "ECONNRESET")
        # cause: the first problem the attempt met (even if it then succeeded)
        cause = np.full(k, -1, dtype=np.int16)
        cause[retried] = code("reason", "syn_dropped_path")  # unanswered SYN, cause unknown
        cause[retried & _server_answered_nearby(a, m)] = code("reason", "syn_dropped_listen_overflow")
        cause[(a["tw_recycle"][m] != 0) & retried] = code("reason", "syn_dropped_recycle")
        cause[(a["tw_recycle"][m] != 0) & ~synack] = code("reason", "syn_dropped_recycle")
        old = ans == flows.A_OLD_ACK
        prev_open = old & (a["prev_tw"][m] == 0) & (a["prev"][m] >= 0)
        cause[old] = code("reason", "syn_hit_timewait")
        cause[old & (a["tw_verdict"][m] == reuse.V_PAWS)] = code("reason", "syn_paws_timewait")
        cause[prev_open & _prev_still_open(a, m)] = code("reason", "syn_hit_established")
        cause[refused] = code("reason", "refused")
        reason = np.full(k, code("reason", "connect_timeout"), dtype=np.int16)
        reason[synack] = code("reason", "ok")
        reason[synack & retried] = code("reason", "ok_after_syn_retry")
        reason[refused] = code("reason", "refused")
        reason[in_flight] = code("reason", "other")
        reason[reset_by_server] = code("reason", "reset")
        failed_with_cause = ~synack & ~refused & ~in_flight & (cause >= 0)
        reason[failed_with_cause] = cause[failed_with_cause]
        cause = np.where((cause < 0) & (outcome != code("outcome", "ok")), reason, cause)
        addr_keys = np.concatenate([a["orig"][m], a["resp"][m]])
        uniq, inv = np.unique(addr_keys, return_inverse=True)
        inv = inv.ravel()
        names = [self.addr(x) for x in uniq.tolist()]
        addr_codes = np.asarray([code("addr", s) for s in names], dtype=np.int32)
        host_codes = np.asarray([code("host", s) for s in names], dtype=np.int32)
        src = addr_codes[inv[:k]]
        dst = addr_codes[inv[k:]]
        cols: dict[str, np.ndarray] = {
            "t": a["t_syn"][m] - t0,
            "connect_ms": (a["t_synack"][m] - a["t_syn"][m]) * 1000,
            "syn_tries": a["n_syn"][m].astype(np.int64),  # 32 bits in a compact table
            "outcome": outcome,
            "reason": reason,
            "cause": cause,
            "workload": np.full(k, -1),
            "client": host_codes[inv[:k]],
            "server": np.where(synack | refused, host_codes[inv[k:]], -1),
            "src": src,
            "sport": a["orig_port"][m],
            "dst": dst,
            "dport": a["resp_port"][m],
            "srv_src": src,
            "srv_sport": a["orig_port"][m],
            "srv_dst": dst,
            "srv_dport": a["resp_port"][m],
        }
        table = AttemptTable.build(cols, voc)
        hosts = {}
        for s in self.sources:
            hosts[s.addr] = HostInfo(name=s.addr, group="clients", role="client", profile="unknown",
                                     addresses=[s.addr])
        for sv in self.servers:
            if sv.addr not in hosts:
                hosts[sv.addr] = HostInfo(name=sv.addr, group="servers", role="server", profile="unknown",
                                          addresses=[sv.addr])
        rr = RunResult(
            source="analyze",
            scenario=scenario or ",".join(Path(f).name for f in self.files),
            duration_s=round(self.t_last - self.t_first, 6) if self.packets else 0.0,
            attempts=table,
            timeline=self.timeline()[0],
            hosts=hosts,
            notes=self.warnings,
            meta={"files": [r.to_json() for r in self.reports], "packets": self.packets,
                  "capture_start_epoch": self.t_first},
        )
        return rr


def _answered(a: Attempts, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For attempts in `m`: a SYN-ACK came (outcome ok, unless reset); more than one SYN
    was sent; the server reset the connection before sending any data (ECONNRESET)."""
    synack = ~np.isnan(a["t_synack"][m])
    retried = a["n_syn"][m] > 1
    reset_by_server = synack & (a["close"][m] == 2) & (a["closed_by"][m] == flows.W_RESP) & (
        a["resp_bytes"][m] == 0)
    return synack, retried, reset_by_server


def _server_answered_nearby(a: Attempts, m: np.ndarray, window_s: float = 5.0) -> np.ndarray:
    """For attempts in `m`: did the same server (address, port) send a SYN-ACK to
    another attempt within `window_s` of this attempt's first SYN? Then it was alive and
    a dropped SYN points at a full listen queue."""
    key = a["resp"][m].astype(np.uint64) << np.uint64(16) | a["resp_port"][m].astype(np.uint64)
    _, kid = np.unique(key, return_inverse=True)
    kid = kid.ravel().astype(np.float64)
    t0 = float(np.nanmin(a["t_start"])) if len(a) else 0.0
    span = 2.0 * (float(np.nanmax(a["t_end"])) - t0 + window_s) + 1.0 if len(a) else 1.0
    ok = ~np.isnan(a["t_synack"][m])
    answered = np.sort(kid[ok] * span + (a["t_synack"][m][ok] - t0))
    if not answered.size:
        return np.zeros(m.size, dtype=bool)
    x = kid * span + (a["t_syn"][m] - t0)
    i = np.searchsorted(answered, x)
    near = np.zeros(m.size, dtype=bool)
    for j in (i - 1, i):
        jj = np.clip(j, 0, answered.size - 1)
        near |= np.abs(answered[jj] - x) <= window_s
    return near


def _prev_still_open(a: Attempts, m: np.ndarray) -> np.ndarray:
    """For attempts in `m`: was the previous connection on the 4-tuple still open (no
    RST and not both FINs) — so a bare ACK answer was a challenge ACK (RFC 5961)?"""
    p = a["prev"][m]
    pi = np.where(p >= 0, p, 0)
    ended = (a["tw_holder"][pi] != 0) | ~np.isnan(a["t_rst_orig"][pi]) | ~np.isnan(a["t_rst_resp"][pi])
    return (p >= 0) & ~ended


MAX_BUCKETS = 100_000


# --------------------------------------------------------------------------------------
# running it


def file_order_key(pk: Packets, index: int) -> tuple[float, int]:
    """Where a file goes when files are joined into one capture: by the median time of
    its packets (not thrown by one damaged record time), then by its place on the
    command line. Rotated files (tcpdump -C/-W/-G) are so read in time order however
    their names sort (``cap.pcap10`` before ``cap.pcap2`` in a shell glob; a -W ring
    that wrapped around). A file without packets keeps its place among the last."""
    ts = pk.ts[np.isfinite(pk.ts)]
    return (flows.median(ts) if ts.size else float("inf"), index)


def time_ordered(good: list[tuple[str, Packets, ReadReport]]) -> list[tuple[str, Packets, ReadReport]]:
    """`good` (files with their packets, in command-line order) in :func:`file_order_key` order."""
    return [good[i] for i in sorted(range(len(good)), key=lambda i: file_order_key(good[i][1], i))]


def read_packets(path: str | os.PathLike[str], file_index: int = 0) -> tuple[Packets, ReadReport]:
    """Read and decode one file. Damage is reported in the ReadReport, not raised."""
    return _read_one((str(path), file_index))


def _read_one(args: tuple[str, int]) -> tuple[Packets, ReadReport]:
    path, i = args
    fr = read_frames(path)
    rep = fr.report
    try:
        pk = decode(fr, i)
    finally:
        buf = fr.buf
        del fr
        close = getattr(buf, "close", None)
        if close is not None:
            with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
                close()
    return pk, rep


FAR_GAP_S = 86_400.0  # packets further than this from the rest of the capture are suspect
R_FAR_TIME = "timestamp far outside the rest of the capture"


def far_times(ts: np.ndarray) -> np.ndarray:
    """Packets whose timestamp cannot belong to the capture: not finite, or in a group of
    times more than a day away from the busiest group that holds too few packets to be a
    part of the capture (fewer than 3, or than 1 % of all). A flipped bit in a record
    header gives such a time ("233 TCP packets over 7061644215716.9 s"); rotated files of
    days apart keep all their packets."""
    n = ts.size
    if n < 2:
        return ~np.isfinite(ts)
    lo, hi = float(ts.min()), float(ts.max())  # NaN if any is
    if hi - lo <= FAR_GAP_S:  # the usual capture: one pass, no sort
        return np.zeros(n, dtype=bool)
    bad = ~np.isfinite(ts)
    if bad.all():
        return bad
    idx = np.flatnonzero(~bad)
    o = idx[np.argsort(ts[idx], kind="stable")]
    grp = np.r_[0, np.cumsum(np.diff(ts[o]) > FAR_GAP_S)]
    cnt = np.bincount(grp)
    if cnt.size == 1:
        return bad
    small = cnt < max(3, int(np.ceil(0.01 * n)))
    small[int(np.argmax(cnt))] = False
    bad[o[small[grp]]] = True
    return bad


def _drop_far_times(pk: Packets, reports: list[ReadReport], files: Sequence[str]) -> Packets:
    """Leave out packets with impossible times (far_times), counted and warned in their
    file's report, so that no rate, span or timeline is built on them."""
    bad = far_times(pk.ts)
    if not bad.any():
        return pk
    keep = ~bad
    main_t = pk.ts[keep]
    lo, hi = (float(main_t.min()), float(main_t.max())) if main_t.size else (0.0, 0.0)
    by_path = {r.path: r for r in reports}
    for fi in flows.distinct(pk.file[bad].astype(np.int64)).tolist():
        sel = bad & (pk.file == fi)
        k = int(sel.sum())
        rep = by_path.get(files[fi]) if 0 <= fi < len(files) else None
        if rep is None:
            rep = reports[0] if reports else None
        if rep is None:
            continue
        t = pk.ts[sel]
        fin = t[np.isfinite(t)]
        far = float(np.max(np.maximum(lo - fin, fin - hi))) if fin.size and main_t.size else float("inf")
        first = int(pk.frame[sel][0])
        rep.skip(R_FAR_TIME, k)
        rep.bad_times += k
        rep.tcp_packets -= k
        rep.warn(f"{k:,} TCP packet(s) left out (first: frame {first:,}): timestamp "
                 + (f"{far:,.0f} s away from the rest of the capture" if np.isfinite(far) else "not a number")
                 + " (a damaged record header?); rates and the timeline use the others")
    return pk.take(np.flatnonzero(keep))


def analyze_packets(pk: Packets, reports: list[ReadReport], files: Sequence[str],
                    timing: dict[str, float] | None = None) -> CaptureAnalysis:
    timing = dict(timing or {})
    pk, att = packet_attempts(pk, reports, files, timing)
    n = len(pk)
    return finish_analysis(att, pk.v6, reports, files, n, float(pk.ts.min()) if n else 0.0,
                           float(pk.ts.max()) if n else 0.0, timing)


def packet_attempts(pk: Packets, reports: list[ReadReport], files: Sequence[str],
                    timing: dict[str, float]) -> tuple[Packets, Attempts]:
    """The per-connection part of :func:`analyze_packets`: packets with impossible times
    left out, attempts with their 4-tuple reuse and recycle verdicts (timed in `timing`)."""
    pk = _drop_far_times(pk, reports, files)
    t = time.perf_counter()
    att, _q, _seg = flows.build(pk)
    timing["flows"] = time.perf_counter() - t
    t = time.perf_counter()
    reuse.tuple_reuse(att)
    reuse.recycle_verdicts(att)
    timing["reuse"] = time.perf_counter() - t
    return pk, att


def finish_analysis(att: Attempts, v6: list[bytes], reports: list[ReadReport], files: Sequence[str],
                    packets: int, t_first: float, t_last: float, timing: dict[str, float]) -> CaptureAnalysis:
    """The per-client and per-server part of :func:`analyze_packets`, on attempts (of one
    capture, or merged from several streams by :mod:`.distributed`)."""
    t = time.perf_counter()

    def fmt(k: Any) -> str:
        return addr_str(int(k), v6)

    src = sources.source_stats(att, fmt)
    srv = sources.server_stats(att, fmt)
    if not isinstance(att.cols, dict):  # a table in files: the statistics' freed heap back to the kernel
        from .chunked import release_freed

        release_freed()
    timing["sources"] = time.perf_counter() - t
    return CaptureAnalysis(
        files=list(files),
        reports=reports,
        attempts=att,
        v6=v6,
        sources=src,
        servers=srv,
        packets=packets,
        t_first=t_first,
        t_last=t_last,
        timing=timing,
    )


def analyze_paths(paths: Sequence[str | os.PathLike[str]], *, merge: bool = True, jobs: int | None = None,
                  progress: Callable[[str], None] | None = None, per_attempt: bool = True) -> list[CaptureAnalysis]:
    """Analyse captures. merge=True: one analysis of all packets together (rotated files
    of one capture point); merge=False: one analysis per file. Files are read in
    parallel processes (`jobs`, default: cores). A file that is not a capture at all is
    reported and skipped; if none can be read, CaptureError. per_attempt=False: the
    caller will not export per-attempt rows (CSV, Parquet, RunResult, HTML), so a
    streamed analysis may keep a compact attempt table (:func:`analyze_streamed`).

    Inputs of STREAM_MIN_BYTES or more are streamed (:func:`analyze_streamed`) when that
    gives the same result: merged, all the files together as one stream; per file, each
    such file by itself, in this process (the others are read as below)."""
    files = [str(p) for p in paths]
    if not files:
        raise CaptureError("no capture files given")
    if (merge or len(files) == 1) and sum(_size(f) for f in files) >= STREAM_MIN_BYTES:
        one = analyze_streamed(files, per_attempt=per_attempt)
        if one is not None:
            return [one]
    streamed: dict[int, CaptureAnalysis] = {}
    if not merge and len(files) > 1:
        for i, f in enumerate(files):
            if _size(f) >= STREAM_MIN_BYTES and (an := analyze_streamed(f, per_attempt=per_attempt)) is not None:
                streamed[i] = an
    todo = [(i, f) for i, f in enumerate(files) if i not in streamed]
    t = time.perf_counter()
    results: list[tuple[Packets, ReadReport] | CaptureError] = []
    jobs = max(1, min(jobs or (os.cpu_count() or 1), len(todo)))
    if jobs == 1:
        for i, f in todo:
            try:
                results.append(_read_one((f, i)))
            except CaptureError as e:
                results.append(e)
    else:
        # imported here: ~15 ms that reading a single file does not need
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futs = [ex.submit(_read_one, (f, i)) for i, f in todo]
            for fu in futs:
                try:
                    results.append(fu.result())
                except CaptureError as e:
                    results.append(e)
    read_s = time.perf_counter() - t
    errors: list[tuple[str, CaptureError]] = []
    good: list[tuple[str, Packets, ReadReport]] = []
    good_at: list[int] = []  # their command-line places
    for (i, f), r in zip(todo, results, strict=True):
        if isinstance(r, CaptureError):
            errors.append((f, r))
        else:
            good.append((f, r[0], r[1]))
            good_at.append(i)
    if not good and not streamed:
        if len(errors) == 1:
            raise errors[0][1]
        raise CaptureError("no file could be read: " + "; ".join(str(err) for _, err in errors))

    unread = _unread_report
    if merge:
        pk = Packets.concat([g[1] for g in time_ordered(good)])
        reports = [g[2] for g in good] + [unread(f, err) for f, err in errors]
        return [analyze_packets(pk, reports, files, {"read": read_s})]
    done = dict(streamed)
    for i, (f, pk, rep) in zip(good_at, good, strict=True):
        pk.file = np.zeros(len(pk), dtype=np.int16)
        done[i] = analyze_packets(pk, [rep], [f], {"read": read_s})
    out = [done[i] for i in sorted(done)]
    for f, err in errors:
        out.append(analyze_packets(Packets.empty(), [unread(f, err)], [f]))
    return out


def _unread_report(path: str, err: CaptureError) -> ReadReport:
    """The report of a file that is not a capture at all (skipped, the others analysed)."""
    rep = ReadReport(path=path, complete=False)
    rep.warnings.append(f"not read: {err.message}")
    return rep


CHUNK_PACKETS = 1 << 19  # packets per chunk of a streamed analysis
# Files smaller than this are read in one pass: what one pass holds is then bounded
# anyway (~1.8x the file), and it is ~25 % less CPU than the chunked build at ~1 M
# packets (the carried packets are built twice, the rows put in order at the end).
STREAM_MIN_BYTES = 192 << 20


def _size(path: str) -> int:
    """A file's size, or its estimated inflated size when it is gzip (:func:`.window.capture_size`)."""
    from .window import capture_size

    return capture_size(path)


@dataclass
class StreamExtras:
    """What a streamed read of several files passes on besides the analysis, for a Dask
    worker's part of a fleet (:mod:`.distributed` merges parts as the one-pass read of
    all files would join them), by the files' places in the list read: each file's
    IPv6 table (its one-pass decode's), the median time of its packets
    (:func:`file_order_key`: inf without packets), its TCP packets, its report, and
    the error of a file that is not a capture."""

    file_v6: dict[int, list[bytes]] = field(default_factory=dict)
    file_median: dict[int, float] = field(default_factory=dict)
    file_packets: dict[int, int] = field(default_factory=dict)
    reports: dict[int, ReadReport] = field(default_factory=dict)
    errors: dict[int, CaptureError] = field(default_factory=dict)


def analyze_streamed(paths: str | Sequence[str], chunk_packets: int | None = None,
                     builder: ChunkBuilder | None = None, window: int | None = None,
                     per_attempt: bool = True, extras: StreamExtras | None = None) -> CaptureAnalysis | None:
    """One pcap or pcapng file (plain, or gzip-compressed: inflated a window at a time),
    or several merged (rotated files of one capture point), read and built chunk
    by chunk (:mod:`.chunked`): what is resident follows the live
    connections, not the file or the set. The result is :func:`analyze_paths`'s
    (merge=True) over the same files; None when this way cannot give it, and the caller
    reads the files in one pass: a file that is neither pcap nor pcapng (plain or gzip),
    the numpy backend, packets that the one-pass read leaves out for their far times
    (:func:`far_times`; the groups of times are kept as the chunks come, so a capture or
    a set of days without such packets is streamed) or a packet
    :class:`.chunked.Inexact` names.
    ``TCPREUSE_CAPTURE_CHUNKED=0`` turns it off (the benchmarks compare the two that
    way). `per_attempt` False: no per-attempt export will be asked of the result, so the
    attempt table keeps only the columns the counts, per-source statistics and findings
    read (:data:`.chunked.EXPORT_ONLY` and :data:`.chunked.REUSE_ONLY` left out, no Zeek
    histories), in column files rather than in memory (:class:`.spill.ColumnStore`; the
    passes over it read blocks of rows).

    Several files are one stream: file after file, their packets go to one
    :class:`.chunked.ChunkBuilder` (a 4-tuple reused across a file boundary is joined
    as in one pass) and one IPv6 address table. The order is each file's start
    (:func:`.formats.pcap_start_time`: its first records' times, read before any file is
    decoded; :func:`.formats.pcapng_start_time` for pcapng), then its place on the
    command line. The one-pass merge orders files by the
    median time of their packets (:func:`file_order_key`), which needs a whole file; the
    two orders agree when no file has a packet older than one of a file streamed before
    it (rotated files), and that is checked as the packets come: the first packet that
    breaks it (files overlapping in time, or a damaged first record time) raises
    Inexact, so files are never joined in another order than the one-pass merge's.
    Each file keeps its own :class:`ReadReport` (damage, how far it was read) and its
    command-line index in the attempts' ``file`` column."""
    from . import backend, chunked
    from .decode import STREAM_WINDOW, stream_pcap, stream_pcapng
    from .formats import NotStreamable, pcap_start_time, pcapng_start_time

    files = [paths] if isinstance(paths, str) else [str(p) for p in paths]
    chunk_packets = chunk_packets or CHUNK_PACKETS
    lib = backend.c_extension() if backend.ACTIVE.name == "c" else None
    if not files or lib is None or os.environ.get("TCPREUSE_CAPTURE_CHUNKED", "1") == "0":
        return None
    starts: list[float] = []
    unread: dict[int, ReadReport] = {}  # files that are not captures at all: reported, skipped
    for i, f in enumerate(files):
        with _stream_source(f, pcapng=True) as buf:
            if buf is None:
                err = _not_a_capture(f)
                if err is None or len(files) == 1:
                    return None  # a capture this way does not read, or nothing to stream
                unread[i] = _unread_report(f, err)
                if extras is not None:
                    extras.errors[i] = err
                starts.append(np.inf)
                continue
            starts.append(pcapng_start_time(buf) if buf.kind == "pcapng" else pcap_start_time(buf))
    if len(unread) == len(files):
        return None
    order = sorted((i for i in range(len(files)) if i not in unread), key=lambda i: (starts[i], i))
    reports = [ReadReport(path=f) for f in files]
    timing = {"read": 0.0, "flows": 0.0}
    b = builder or chunked.ChunkBuilder(per_attempt=per_attempt)
    table: dict[bytes, int] = {}  # IPv6 addresses, numbered over all files
    acc: list[Packets] = []
    n_acc = n = 0
    lo, hi = np.inf, -np.inf
    before_hi = -np.inf  # the newest packet of the files streamed so far
    spans: list[_FileSpan] = []  # the files that had packets, in stream order
    groups = _TimeGroups()
    try:
        for i in order:
            with _stream_source(files[i], pcapng=True) as buf:
                if buf is None:  # changed since it was looked at: the one-pass read says how
                    return None
                rep = reports[i]
                span = _FileSpan(i)
                t = time.perf_counter()
                stream = stream_pcapng if buf.kind == "pcapng" else stream_pcap
                file_table: dict[bytes, int] | None = {} if extras is not None else None
                spill = tempfile.TemporaryFile() if extras is not None else None  # noqa: SIM115 (closed below)
                for pk in stream(lib, buf, rep, i, window or STREAM_WINDOW, table, file_table):
                    c_lo, c_hi = float(pk.ts.min()), float(pk.ts.max())
                    if not (np.isfinite(c_lo) and np.isfinite(c_hi)):
                        return None
                    if c_lo < before_hi:
                        raise chunked.Inexact("a packet older than one of a file read before (files overlap in time)")
                    span.add(pk.ts, c_lo, c_hi)
                    groups.add(pk.ts, c_lo, c_hi)
                    if spill is not None:  # the file's packet times, for its median
                        np.ascontiguousarray(pk.ts, dtype=np.float64).tofile(spill)
                    if len(groups.groups) > _TimeGroups.MAX:  # times all over: damage the one-pass read reports
                        return None
                    lo, hi = min(lo, c_lo), max(hi, c_hi)
                    n += len(pk)
                    while len(pk):  # pieces (views) of exactly chunk_packets
                        take = min(len(pk), chunk_packets - n_acc)
                        acc.append(pk.take(slice(0, take)) if take < len(pk) else pk)
                        pk = pk.take(slice(take, len(pk))) if take < len(pk) else Packets.empty()
                        n_acc += take
                        if n_acc == chunk_packets:
                            t2 = time.perf_counter()
                            timing["read"] += t2 - t
                            b.add(acc)
                            acc, n_acc = [], 0
                            t = time.perf_counter()
                            timing["flows"] += t - t2
                timing["read"] += time.perf_counter() - t
                if span.n:
                    before_hi = span.hi
                    spans.append(span)
                if extras is not None and spill is not None and file_table is not None:
                    extras.file_median[i] = spilled_median(spill, span.n, span.lo, span.hi)
                    spill.close()
                    extras.file_v6[i] = list(file_table)
                    extras.file_packets[i] = span.n
                    extras.reports[i] = rep
        if groups.far_times():
            return None
        if any(x.may_tie(y) for x, y in itertools.pairwise(spans)):
            raise chunked.Inexact("two files may have the same median time, the one-pass merge takes them in another order")
        t = time.perf_counter()
        b.add(acc)
        del acc
        att = b.finish()
        timing["flows"] += time.perf_counter() - t
    except (chunked.Inexact, NotStreamable, CaptureError):  # the one-pass read says what is wrong
        return None
    t = time.perf_counter()
    reuse.tuple_reuse(att)
    chunked.release_freed()
    reuse.recycle_verdicts(att)
    if not b.per_attempt:
        for k in chunked.REUSE_ONLY:
            del att.cols[k]
    chunked.release_freed()
    timing["reuse"] = time.perf_counter() - t
    # as the one-pass merge has them: the files read, then those that are not captures
    reports = [r for i, r in enumerate(reports) if i not in unread] + list(unread.values())
    return finish_analysis(att, b.v6, reports, files, n, lo if n else 0.0, hi if n else 0.0, timing)


def spilled_median(fh: Any, n: int, lo: float, hi: float) -> float:
    """:func:`.flows.median` of the `n` float64 values written to the file `fh` (all in
    lo..hi), in bounded memory: each value of the middle rank(s) is found by counting the
    values into SPILL_BINS bins between the bounds (one read of the file), then
    narrowing to the bin that holds it until it holds few enough to be read and
    partitioned; inf when n is 0 (:func:`file_order_key` of a file without packets)."""
    if n == 0:
        return float("inf")
    k = n // 2
    if n % 2:
        return _spilled_rank(fh, k, lo, hi)
    return float((np.float64(_spilled_rank(fh, k - 1, lo, hi)) + np.float64(_spilled_rank(fh, k, lo, hi))) / 2)


SPILL_BLOCK = 1 << 20  # values read at a time, and the most a bin may hold to be read whole
SPILL_BINS = 1 << 16


def _spilled_in(fh: Any, lo: float, hi: float) -> Iterator[np.ndarray]:
    """The values of `fh` in lo..hi, a block at a time."""
    fh.seek(0)
    while True:
        v = np.fromfile(fh, dtype=np.float64, count=SPILL_BLOCK)
        if not v.size:
            return
        yield v[(v >= lo) & (v <= hi)]


def _spilled_rank(fh: Any, rank: int, lo: float, hi: float) -> float:
    """The value of 0-based `rank` in sorted order among the values of `fh` (all in lo..hi)."""
    below = 0  # values under lo
    while True:
        width = (hi - lo) / SPILL_BINS
        if not (width > 0 and lo + width > lo):  # nothing left to split
            inside = np.concatenate(list(_spilled_in(fh, lo, hi)))
            return float(np.partition(inside, rank - below)[rank - below])

        def bins(v: np.ndarray, lo: float = lo, width: float = width) -> np.ndarray:
            return np.minimum(((v - lo) / width).astype(np.int64), SPILL_BINS - 1)

        counts = np.zeros(SPILL_BINS, dtype=np.int64)
        for v in _spilled_in(fh, lo, hi):
            counts += np.bincount(bins(v), minlength=SPILL_BINS)
        cum = np.cumsum(counts)
        b = int(np.searchsorted(cum, rank - below, side="right"))
        before = below + (int(cum[b - 1]) if b else 0)
        if counts[b] <= SPILL_BLOCK:
            inside = np.concatenate([v[bins(v) == b] for v in _spilled_in(fh, lo, hi)])
            return float(np.partition(inside, rank - before)[rank - before])
        lo2, hi2 = np.inf, -np.inf
        for v in _spilled_in(fh, lo, hi):
            v = v[bins(v) == b]
            if v.size:
                lo2, hi2 = min(lo2, float(v.min())), max(hi2, float(v.max()))
        if lo2 == hi2:  # all the same value
            return float(lo2)
        # bins are ranges of values: the values in lo2..hi2 are exactly those of bin b
        lo, hi, below = lo2, hi2, before


class _TimeGroups:
    """The packet times seen so far as :func:`far_times` groups them (runs without a gap
    of more than FAR_GAP_S), each with its packet count: kept chunk by chunk, so a
    streamed read can tell at the end whether the one-pass read would leave packets out
    for their far times, without holding the times. Usually one group (a chunk within a
    day of the others is merged in without a sort)."""

    MAX = 64  # more groups than this: the streamed read gives up (at most 100 can hold 1 % each)

    def __init__(self) -> None:
        self.groups: list[list[float]] = []  # [lo, hi, packets], in time order, > FAR_GAP_S apart

    def add(self, ts: np.ndarray, lo: float, hi: float) -> None:
        if hi - lo <= FAR_GAP_S:
            self._merge(lo, hi, ts.size)
            return
        o = np.sort(ts)
        cut = np.flatnonzero(np.diff(o) > FAR_GAP_S) + 1
        for a, b in itertools.pairwise([0, *cut.tolist(), o.size]):
            self._merge(float(o[a]), float(o[b - 1]), b - a)

    def _merge(self, lo: float, hi: float, n: int) -> None:
        # a run without such a gap joins every group it comes within FAR_GAP_S of
        keep = []
        for g in self.groups:
            if g[0] - hi <= FAR_GAP_S and lo - g[1] <= FAR_GAP_S:
                lo, hi, n = min(lo, g[0]), max(hi, g[1]), n + int(g[2])
            else:
                keep.append(g)
        keep.append([lo, hi, float(n)])
        keep.sort()
        self.groups = keep

    def far_times(self) -> bool:
        """Would :func:`far_times` over all the packets leave some out?"""
        if len(self.groups) < 2:
            return False
        cnt = np.asarray([g[2] for g in self.groups])
        small = cnt < max(3, int(np.ceil(0.01 * cnt.sum())))
        small[int(np.argmax(cnt))] = False
        return bool(small.any())


@dataclass
class _FileSpan:
    """The times of one file's packets as far as they tell its place in the one-pass
    merge (:func:`file_order_key`) against the file streamed next: its oldest and newest
    packet and how many packets carry each of those times."""

    index: int
    n: int = 0
    lo: float = np.inf
    n_lo: int = 0
    hi: float = -np.inf
    n_hi: int = 0

    def add(self, ts: np.ndarray, lo: float, hi: float) -> None:
        self.n += ts.size
        if lo <= self.lo:
            self.n_lo = (self.n_lo if lo == self.lo else 0) + int((ts == lo).sum())
            self.lo = lo
        if hi >= self.hi:
            self.n_hi = (self.n_hi if hi == self.hi else 0) + int((ts == hi).sum())
            self.hi = hi

    def may_tie(self, nxt: _FileSpan) -> bool:
        """Streamed before `nxt` (so no packet of `nxt` is older than this file's newest),
        may this file still go after it in the one-pass merge? Only when both medians are
        the one time where they meet (half of this file's packets at its newest time, half
        of `nxt`'s at its oldest; counted loosely, the mean of two middle values being
        rounded) and `nxt` came first on the command line."""
        return (self.hi == nxt.lo and nxt.index < self.index
                and self.n_hi >= self.n - self.n // 2 and nxt.n_lo >= nxt.n // 2)


def _not_a_capture(path: str) -> CaptureError | None:
    """What the one-pass read raises for `path` when it is not a capture at all (missing,
    empty, another kind of file); None when it is one (pcapng, gzip, a pcap too short for
    its header), which the one-pass read takes."""
    from .formats import PCAP_MAGIC, PCAPNG_SHB

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if head in PCAP_MAGIC or head[:2] == b"\x1f\x8b" or (len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB):
        return None
    try:
        _read_one((path, 0))
    except CaptureError as e:
        return e
    return None


@contextlib.contextmanager
def _stream_source(path: str, pcapng: bool = False) -> Iterator[Any]:
    """What the streamed read reads a file from: a pcap file (or, `pcapng`, a pcapng
    file) memory-mapped (:class:`.window.WholeBuffer`), or gzip-compressed and inflated
    a window at a time (:class:`.window.InflatingWindow`); closed after.
    Its `kind`: "pcap" or "pcapng". None when it is not one the streamed read takes
    (another format, unreadable, shorter than its header)."""
    import mmap

    from .formats import PCAP_MAGIC, PCAPNG_SHB, open_buffer
    from .window import InflatingWindow, WholeBuffer

    src: Any = None
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        ng = pcapng and len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB
        if head in PCAP_MAGIC or ng:
            buf, _nbytes, _damage = open_buffer(path)
            if isinstance(buf, mmap.mmap) and len(buf) >= 24:
                src = WholeBuffer(buf, "pcapng" if ng else "pcap")
            elif isinstance(buf, mmap.mmap):
                buf.close()
        elif head[:2] == b"\x1f\x8b":
            src = InflatingWindow(path)
            inner = bytes(src.buf[:4]) if src.ensure(24) >= 24 else b""
            if pcapng and len(inner) == 4 and struct.unpack("<I", inner)[0] == PCAPNG_SHB:
                src.kind = "pcapng"
            elif inner not in PCAP_MAGIC:
                src.close()  # too short or not a capture inside: the one-pass read says how
                src = None
    except (OSError, CaptureError):
        src = None  # the one-pass read says what is wrong
    try:
        yield src
    finally:
        if isinstance(src, InflatingWindow):
            src.close()
        elif src is not None:
            with contextlib.suppress(BufferError):
                src.buf.close()
