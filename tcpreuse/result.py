"""RunResult: the one schema every source of evidence produces.

`simulate` (the model), `lab` (the real kernel) and `analyze` (a capture, per attempt)
all end in a :class:`RunResult`, so diagnosis and reports never care where the numbers
came from. Attempts are stored columnar (numpy arrays plus small vocabularies), because
a run holds millions of them.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

OK = "ok"
SCHEMA_VERSION = 1

# Column name -> (numpy dtype, vocabulary name or None). Vocabulary columns hold
# small integer codes into RunResult.attempts.vocab[<vocabulary name>]; -1 means "none".
COLUMNS: dict[str, tuple[str, str | None]] = {
    "t": ("f8", None),  # start time of the attempt, s since run start
    "connect_ms": ("f8", None),  # connect() latency in ms; NaN if it never connected
    "syn_tries": ("i2", None),  # SYNs sent by the client for this attempt
    "outcome": ("i2", "outcome"),  # "ok" or the errno name the application saw
    "reason": ("i2", "reason"),  # reason code (see REASONS)
    "cause": ("i2", "reason"),  # first problem met, even if the attempt then succeeded
    "workload": ("i2", "workload"),
    "client": ("i4", "host"),  # client host instance
    "server": ("i4", "host"),  # back end that answered (-1: none)
    "src": ("i4", "addr"),  # client address as the client sees it
    "sport": ("i4", None),  # client port (0: none was allocated)
    "dst": ("i4", "addr"),  # address the client connected to (VIP or server)
    "dport": ("i4", None),
    "srv_src": ("i4", "addr"),  # source address as the server saw it (after NAT/LB)
    "srv_sport": ("i4", None),
    "srv_dst": ("i4", "addr"),
    "srv_dport": ("i4", None),
}

# Reason codes shared by sim, lab and analyze. Keep them stable: they are in JSON output.
REASONS: dict[str, str] = {
    "ok": "connected at the first SYN and completed",
    "ok_after_syn_retry": "connected, but only after at least one SYN retransmission",
    "ok_after_app_retry": "completed by an application-level retry of a failed attempt",
    "local_ports_exhausted": "connect() found no usable local port for this 4-tuple",
    "syn_hit_timewait": "SYN reached a TIME_WAIT socket for the same 4-tuple and was answered "
    "with an ACK for the old connection",
    "syn_hit_established": "SYN reached a 4-tuple the server still had open (a NAT/LB reused it) "
    "and got a challenge ACK",
    "syn_paws_timewait": "SYN rejected by PAWS at a TIME_WAIT socket (older TSval)",
    "syn_dropped_recycle": "SYN silently dropped by tcp_tw_recycle's per-peer timestamp check",
    "syn_dropped_listen_overflow": "SYN dropped: listen queue full",
    "ack_dropped_listen_overflow": "handshake completed by the client but the server's accept "
    "queue was full",
    "syn_dropped_nat": "SYN dropped by a NAT/SNAT device (no free port or table full)",
    "syn_dropped_lb": "SYN dropped by the load balancer",
    "syn_dropped_path": "SYN lost on the path",
    "refused": "SYN answered with RST (no listener)",
    "reset": "connection reset after it was established",
    "connect_timeout": "no SYN-ACK before the SYN retries or the application's timeout ran out",
    "request_timeout": "connected, but no complete answer before the application's timeout",
    "unfinished": "still in flight when the run stopped (its wall-clock bound, --duration plus --drain, "
    "or Ctrl-C); not a verdict on the target",
    "other": "other failure",
}


# Percentiles as per mille, so that the rank is computed in integers (exactly).
PERCENTILES: tuple[tuple[str, int], ...] = (("p50", 500), ("p90", 900), ("p99", 990), ("p99.9", 999))


def nearest_rank(values: Any, digits: int = 3) -> dict[str, Any]:
    """count, p50, p90, p99, p99.9 and max of `values` (NaN ignored) by the nearest-rank
    method: the p-th percentile is the smallest value with at least p % of the values at
    or below it, i.e. the ceil(p/100 * n)-th smallest (1-based). p99 of 777 values is the
    770th. Every percentile is then one of the values (no interpolation); None when empty."""
    v = np.asarray(values, dtype=np.float64)
    v = np.sort(v[~np.isnan(v)])
    n = int(v.size)
    out: dict[str, Any] = {"count": n}
    for name, permille in PERCENTILES:
        out[name] = round(float(v[-(-permille * n // 1000) - 1]), digits) if n else None
    out["max"] = round(float(v[-1]), digits) if n else None
    return out


# Columns only some sources have; a table carries them when its producer gave them.
OPTIONAL_COLUMNS: dict[str, tuple[str, str | None]] = {
    "answer_ms": ("f8", None),  # from the due time to the first complete answer, ms (load, lab)
    "close_ms": ("f8", None),  # from the due time to the client's close() of the socket, ms (load, lab)
}


def _empty(dtype: str) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


def empty_column(name: str, n: int) -> np.ndarray:
    """A column with no value in any of n rows: NaN, -1 ("none") for vocabulary columns, 0."""
    dtype, voc = COLUMNS.get(name) or OPTIONAL_COLUMNS[name]
    return np.full(n, math.nan if dtype == "f8" else (-1 if voc else 0), dtype=dtype)


@dataclass
class AttemptTable:
    """Per-attempt records, columnar. Row i is the i-th attempt in start order."""

    cols: dict[str, np.ndarray] = field(
        default_factory=lambda: {k: _empty(d) for k, (d, _) in COLUMNS.items()}
    )
    vocab: dict[str, list[str]] = field(
        default_factory=lambda: {"outcome": [], "reason": [], "workload": [], "host": [], "addr": []}
    )

    def __len__(self) -> int:
        return int(self.cols["t"].shape[0])

    def name(self, column: str, code: int) -> str:
        voc = COLUMNS[column][1]
        assert voc is not None
        return "" if code < 0 else self.vocab[voc][code]

    def column(self, column: str) -> list[Any]:
        """A column decoded to Python values (names for vocabulary columns)."""
        arr = self.cols[column]
        voc = (COLUMNS.get(column) or OPTIONAL_COLUMNS[column])[1]
        if voc is None:
            return arr.tolist()
        names = self.vocab[voc]
        return ["" if c < 0 else names[c] for c in arr.tolist()]

    def names(self) -> list[str]:
        """The columns this table has: every one of COLUMNS, then the optional ones it carries."""
        return list(COLUMNS) + [k for k in OPTIONAL_COLUMNS if k in self.cols]

    def rows(self) -> Iterator[dict[str, Any]]:
        names = self.names()
        decoded = {k: self.column(k) for k in names}
        for i in range(len(self)):
            yield {k: decoded[k][i] for k in names}

    def code(self, column: str, name: str) -> int:
        """The code of `name` in a vocabulary column, or -2 if it never occurs."""
        voc = self.vocab[COLUMNS[column][1] or ""]
        return voc.index(name) if name in voc else -2

    def failed_mask(self) -> np.ndarray:
        ok = self.code("outcome", OK)
        return np.asarray(self.cols["outcome"] != ok)

    def counts(self, column: str) -> dict[str, int]:
        arr = self.cols[column]
        if arr.size == 0:
            return {}
        codes, n = np.unique(arr, return_counts=True)
        return {self.name(column, int(c)): int(k) for c, k in zip(codes, n, strict=True)}

    def write_csv(self, out: IO[str]) -> None:
        w = csv.writer(out)
        w.writerow(self.names())
        decoded = [self.column(k) for k in self.names()]
        for row in zip(*decoded, strict=True):
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])

    def to_json(self) -> dict[str, Any]:
        return {
            "vocab": self.vocab,
            "cols": {
                k: [None if isinstance(v, float) and math.isnan(v) else v for v in a.tolist()]
                for k, a in self.cols.items()
            },
        }

    @classmethod
    def build(cls, cols: dict[str, Any], vocab: dict[str, list[str]], sort: bool = True) -> AttemptTable:
        """A table from columns as any producer has them: dtypes as in COLUMNS, absent
        columns empty (empty_column), rows in start order (stable) unless sort=False."""
        n = len(cols["t"])
        out = {k: (np.asarray(cols[k], dtype=d) if k in cols else empty_column(k, n))
               for k, (d, _) in COLUMNS.items()}
        out.update({k: np.asarray(cols[k], dtype=d) for k, (d, _) in OPTIONAL_COLUMNS.items()
                    if k in cols and len(cols[k]) == n})
        if sort and n:
            order = np.argsort(out["t"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        voc = {k: list(vocab.get(k, [])) for k in ("outcome", "reason", "workload", "host", "addr")}
        return cls(cols=out, vocab=voc)

    def write_parquet(self, path: Path, metadata: dict[str, str], chunk_rows: int = 1 << 20) -> None:
        """The table as Parquet, one row group per `chunk_rows` rows (only one chunk's
        Arrow arrays exist at a time). Vocabulary columns are dictionary-encoded (null for
        "none"), so any Parquet reader sees names; `metadata` goes into the file's
        key-value metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.names()
        known = COLUMNS | OPTIONAL_COLUMNS
        dicts = {k: pa.array(self.vocab[v], type=pa.string()) for k in names if (v := known[k][1])}
        fields = [pa.field(k, pa.dictionary(pa.int32(), pa.string()) if k in dicts
                           else pa.from_numpy_dtype(self.cols[k].dtype)) for k in names]
        schema = pa.schema(fields, metadata=metadata)
        with pq.ParquetWriter(str(path), schema) as w:
            n = len(self)
            for lo in range(0, max(n, 1), chunk_rows):
                arrays = []
                for k in names:
                    col = self.cols[k][lo:lo + chunk_rows]
                    if k in dicts:
                        idx = pa.array(np.maximum(col, 0).astype(np.int32), mask=col < 0)
                        arrays.append(pa.DictionaryArray.from_arrays(idx, dicts[k]))
                    else:
                        arrays.append(pa.array(col))
                w.write_table(pa.Table.from_arrays(arrays, schema=schema))

    @classmethod
    def read_parquet(cls, path: Path) -> tuple[AttemptTable, dict[bytes, bytes]]:
        """A table written by write_parquet(), and the file's key-value metadata."""
        import pyarrow.parquet as pq

        t = pq.read_table(str(path))
        known = COLUMNS | OPTIONAL_COLUMNS
        cols: dict[str, Any] = {}
        vocab: dict[str, list[str]] = {}
        for k in t.column_names:
            if k not in known:
                continue
            voc = known[k][1]
            arr = t.column(k).combine_chunks()
            if voc is None:
                cols[k] = arr.to_numpy(zero_copy_only=False)
                continue
            names = arr.dictionary.to_pylist()
            if vocab.setdefault(voc, names) != names:
                raise ValueError(f"column {k}: its vocabulary differs from the other {voc} column's")
            cols[k] = np.asarray(arr.indices.fill_null(-1).to_numpy(zero_copy_only=False))
        cols.setdefault("t", [])
        return cls.build(cols, vocab, sort=False), dict(t.schema.metadata or {})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptTable:
        known = COLUMNS | OPTIONAL_COLUMNS
        cols = {k: [math.nan if v is None else v for v in vals] if known[k][0] == "f8" else vals
                for k, vals in data["cols"].items() if k in known}
        cols.setdefault("t", [])  # a file with no attempts
        return cls.build(cols, data["vocab"], sort=False)


def nearest_rank_counts(counts: dict[float, int], digits: int = 3) -> dict[str, Any]:
    """nearest_rank() of values given as value -> how many times it occurs."""
    keys = sorted(counts)
    n = sum(counts.values())
    out: dict[str, Any] = {"count": n}
    ranks = [(name, -(-permille * n // 1000)) for name, permille in PERCENTILES]
    cum, j = 0, 0
    got: dict[str, float] = {}
    for k in keys:
        cum += counts[k]
        while j < len(ranks) and ranks[j][1] <= cum:
            got[ranks[j][0]] = k
            j += 1
    for name, _ in PERCENTILES:
        out[name] = round(float(got[name]), digits) if n else None
    out["max"] = round(float(keys[-1]), digits) if n else None
    return out


@dataclass
class CauseSummary:
    """One problem (a reason code met as an attempt's reason or cause), summed over a run."""

    attempts: int
    failed: int
    delayed: int
    first_index: int  # the first attempt (in start order) that met it
    first_t: float
    first_client: str = ""  # the first attempt's client host, destination address and port
    first_dst: str = ""
    first_dport: int = 0
    ok_before: int = 0  # attempts before the first that succeeded
    errnos: dict[str, int] = field(default_factory=dict)  # outcomes of the failed ones
    delayed_ms: dict[float, int] = field(default_factory=dict)  # connect() ms of the others (1 us)

    def delayed_median_ms(self) -> float | None:
        """The median (as numpy's: the mean of the two middle values for an even count)."""
        n = sum(self.delayed_ms.values())
        if not n:
            return None
        want = [(n - 1) // 2, n // 2]  # 0-based ranks of the middle value(s)
        vals: list[float] = []
        cum = 0
        for k in sorted(self.delayed_ms):
            c = self.delayed_ms[k]
            while want and want[0] < cum + c:
                vals.append(k)
                want.pop(0)
            cum += c
        return (vals[0] + vals[1]) / 2


@dataclass
class Aggregates:
    """A run summed up, for a run kept without per-attempt rows (simulate's aggregates-only
    mode): every figure RunResult reports and the diagnosis reads, equal to what the rows
    would give (latencies counted per value rounded to 1 us, as the percentiles are)."""

    attempts: int
    outcomes: dict[str, int]  # in the order AttemptTable.counts() gives
    reasons: dict[str, int]
    failed: int
    delayed: int
    first_failure: dict[str, Any] | None
    ok_connect_ms: dict[float, int]  # connect() ms of the successful attempts -> count
    causes: dict[str, CauseSummary] = field(default_factory=dict)


@dataclass
class PortSeries:
    """Local ports in use toward one destination from one source address, over time."""

    host: str
    src: str
    dst: str  # "addr:port"
    budget: int  # usable ports for this (src, dst) under the host's rules
    in_use: list[int] = field(default_factory=list)


@dataclass
class Timeline:
    """Per-step series (default 1 s). Index k covers [t[k], t[k] + step_s)."""

    step_s: float = 1.0
    t: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    ok: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    delayed: list[int] = field(default_factory=list)
    # host -> series name ("time_wait", "established", ...) -> values sampled at t[k] + step
    hosts: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    ports: dict[str, PortSeries] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step_s": self.step_s,
            "t": self.t,
            "attempts": self.attempts,
            "ok": self.ok,
            "failed": self.failed,
            "delayed": self.delayed,
            "hosts": self.hosts,
            "ports": {
                k: {"host": p.host, "src": p.src, "dst": p.dst, "budget": p.budget, "in_use": p.in_use}
                for k, p in self.ports.items()
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timeline:
        return cls(
            step_s=d.get("step_s", 1.0),
            t=d.get("t", []),
            attempts=d.get("attempts", []),
            ok=d.get("ok", []),
            failed=d.get("failed", []),
            delayed=d.get("delayed", []),
            hosts=d.get("hosts", {}),
            ports={k: PortSeries(**v) for k, v in d.get("ports", {}).items()},
        )

    @classmethod
    def per_second(cls, table: AttemptTable, nsec: int) -> Timeline:
        """Attempts, ok, failed and delayed (connected only after a SYN retransmission) per
        second of due time, for `nsec` seconds; attempts due later count in the last one.
        How a single load or emulated client reports its attempts."""
        sec = np.clip(np.floor(table.cols["t"]).astype(np.int64), 0, nsec - 1)
        failed = table.failed_mask()
        delayed = (table.cols["reason"] == table.code("reason", "ok_after_syn_retry")) & ~failed
        return cls(step_s=1.0, t=[float(i) for i in range(nsec)],
                   attempts=np.bincount(sec, minlength=nsec).tolist(),
                   ok=np.bincount(sec[~failed], minlength=nsec).tolist(),
                   failed=np.bincount(sec[failed], minlength=nsec).tolist(),
                   delayed=np.bincount(sec[delayed], minlength=nsec).tolist())


@dataclass
class HostInfo:
    name: str
    group: str
    role: str  # client | server | nat | lb
    profile: str  # profile name, e.g. "linux-2.6.32-el6", "windows-2012r2"
    addresses: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # effective sysctls / OS settings


@dataclass
class RunResult:
    source: str  # "simulate" | "lab" | "analyze"
    scenario: str
    duration_s: float
    attempts: AttemptTable = field(default_factory=AttemptTable)
    timeline: Timeline = field(default_factory=Timeline)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # host -> nstat name -> delta
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    seed: int | None = None
    notes: list[str] = field(default_factory=list)  # warnings worth showing a person
    meta: dict[str, Any] = field(default_factory=dict)  # kernel version, engine stats, ...
    # Set when the run kept no per-attempt rows (then `attempts` is empty): the summaries
    # below come from here.
    aggregates: Aggregates | None = None

    def attempt_count(self) -> int:
        return self.aggregates.attempts if self.aggregates is not None else len(self.attempts)

    # ---- summaries -------------------------------------------------------------------
    def outcomes(self) -> dict[str, int]:
        if self.aggregates is not None:
            return dict(self.aggregates.outcomes)
        return self.attempts.counts("outcome")

    def reasons(self) -> dict[str, int]:
        if self.aggregates is not None:
            return dict(self.aggregates.reasons)
        return self.attempts.counts("reason")

    def failed_count(self) -> int:
        if self.aggregates is not None:
            return self.aggregates.failed
        return int(self.attempts.failed_mask().sum()) if len(self.attempts) else 0

    def failure_rate(self) -> float:
        if self.aggregates is not None:
            ag = self.aggregates
            return ag.failed / ag.attempts if ag.attempts else 0.0
        n = len(self.attempts)
        return float(self.attempts.failed_mask().sum()) / n if n else 0.0

    def delayed_rate(self) -> float:
        """Share of attempts that succeeded only after a SYN retransmission or retry."""
        if self.aggregates is not None:
            ag = self.aggregates
            return ag.delayed / ag.attempts if ag.attempts else 0.0
        n = len(self.attempts)
        if not n:
            return 0.0
        codes = [self.attempts.code("reason", r) for r in ("ok_after_syn_retry", "ok_after_app_retry")]
        return float(np.isin(self.attempts.cols["reason"], codes).sum()) / n

    def first_failure(self) -> dict[str, Any] | None:
        if self.aggregates is not None:
            ff = self.aggregates.first_failure
            return None if ff is None else dict(ff)
        mask = self.attempts.failed_mask()
        if not mask.any():
            return None
        i = int(np.argmax(mask))
        return {
            "index": i,
            "time_s": round(float(self.attempts.cols["t"][i]), 6),
            "outcome": self.attempts.name("outcome", int(self.attempts.cols["outcome"][i])),
            "reason": self.attempts.name("reason", int(self.attempts.cols["reason"][i])),
        }

    def connect_percentiles(self, outcome_ok_only: bool = True) -> dict[str, float | None]:
        if self.aggregates is not None:
            if not outcome_ok_only:
                raise ValueError("a run kept as aggregates has the latencies of successful attempts only")
            agg = nearest_rank_counts(self.aggregates.ok_connect_ms)
            del agg["count"]
            return agg
        lat = self.attempts.cols["connect_ms"]
        if outcome_ok_only:
            lat = lat[~self.attempts.failed_mask()]
        out = nearest_rank(lat)
        del out["count"]
        return out

    def host_counter(self, name: str, role: str | None = None) -> int:
        """Sum of one counter over all hosts (optionally of one role)."""
        return sum(
            c.get(name, 0)
            for h, c in self.counters.items()
            if role is None or (h in self.hosts and self.hosts[h].role == role)
        )

    # ---- serialisation ---------------------------------------------------------------
    def to_json(self, records: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "source": self.source,
            "scenario": self.scenario,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "attempts": self.attempt_count(),
            "outcomes": self.outcomes(),
            "reasons": self.reasons(),
            "failure_rate": round(self.failure_rate(), 6),
            "delayed_rate": round(self.delayed_rate(), 6),
            "first_failure": self.first_failure(),
            "connect_ms": self.connect_percentiles(),
            "timeline": self.timeline.to_json(),
            "counters": self.counters,
            "hosts": {k: vars(v) for k, v in self.hosts.items()},
            "notes": self.notes,
            "meta": self.meta,
        }
        if records and self.aggregates is None:
            d["records"] = self.attempts.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunResult:
        attempts = AttemptTable.from_json(d["records"]) if "records" in d else AttemptTable()
        return cls(
            source=d["source"],
            scenario=d["scenario"],
            duration_s=d["duration_s"],
            attempts=attempts,
            timeline=Timeline.from_json(d.get("timeline", {})),
            counters=d.get("counters", {}),
            hosts={k: HostInfo(**v) for k, v in d.get("hosts", {}).items()},
            seed=d.get("seed"),
            notes=d.get("notes", []),
            meta=d.get("meta", {}),
        )

    def save_parquet(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        """The attempt table as Parquet (AttemptTable.write_parquet), with the rest of the
        result (to_json() without records, plus `extra`) as JSON in the file's metadata
        under "tcpreuse.result". For runs too large for a JSON file of records."""
        doc = {**self.to_json(records=False), **(extra or {})}
        self.attempts.write_parquet(path, {"tcpreuse.result": dumps(doc)})

    @classmethod
    def load_parquet(cls, path: Path) -> tuple[RunResult, dict[str, Any]]:
        """A result written by save_parquet(), and its JSON document (with `extra`)."""
        table, meta = AttemptTable.read_parquet(path)
        raw = meta.get(b"tcpreuse.result")
        if raw is None:
            raise ValueError("a Parquet file without tcpreuse's result metadata")
        doc = json.loads(raw)
        run = cls.from_json(doc)
        run.attempts = table
        return run, doc

    def save(self, path: Path, records: bool = True) -> None:
        path.write_text(json.dumps(self.to_json(records=records), default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_json_default, indent=None)
