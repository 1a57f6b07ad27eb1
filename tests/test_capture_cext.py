"""The C extension (tcpreuse/capture/_ccap.c) gives exactly what the Python reference gives.

Every stage it replaces — the pcap/pcapng walks, header decoding (skip counts and their
order, IPv6 key tables), flow grouping, the per-segment pass — is run both ways on the
crafted captures, the committed fuzz corpus and hypothesis-damaged files, and compared
column by column, report by report, down to the analysis JSON with its findings. The
reference is the numpy backend (tcpreuse/capture/backend.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import frames_state, mutated, odd_captures, packets_state
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpreuse.capture import backend, flows, reuse, zeek
from tcpreuse.capture import decode as decode_mod
from tcpreuse.capture.analysis import analyze_packets
from tcpreuse.capture.decode import decode
from tcpreuse.capture.formats import parse_frames
from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.errors import CaptureError
from tcpreuse.result import dumps

CORPUS = Path(__file__).parent / "data" / "pcap" / "corpus"

LIB = backend.c_extension()
C = backend.CBackend(LIB) if LIB is not None else None
if LIB is None and os.environ.get("TCPREUSE_PURE_PYTHON") == "1":
    pytest.skip("built without the C extension (TCPREUSE_PURE_PYTHON=1)", allow_module_level=True)


def test_the_extension_is_built() -> None:
    assert LIB is not None, "tcpreuse.capture._ccap did not build: see setup.py's warning"
    if os.environ.get("TCPREUSE_CAPTURE_C", "1") != "0":
        assert backend.ACTIVE.name == "c"


def everything(data: bytes) -> Any:
    """Frames, packets, report, attempts and the analysis JSON with findings (or the error)."""
    try:
        fr = parse_frames(data, "t")
        frames = frames_state(fr)
        pk = decode(fr)
        an = analyze_packets(pk, [fr.report], ["t"])
    except CaptureError as e:
        return e.message
    doc = an.to_json()
    doc.pop("timing_s")
    doc["findings"] = [f.to_json() for f in diagnose(Evidence(source="analyze", capture=an))]
    a = an.attempts
    att = {k: [None if x != x else x for x in v.tolist()] for k, v in a.cols.items()}
    return {"frames": frames, "packets": packets_state(pk), "v6": pk.v6, "attempts": att,
            "history": a.history_str(), "json": dumps(doc)}


def both(data: bytes, monkeypatch: pytest.MonkeyPatch, chunk: int | None = None) -> tuple[Any, Any]:
    with monkeypatch.context() as m:
        if chunk:
            m.setattr(decode_mod, "CHUNK", chunk)
            # and the C path's pcap decode in windows of a few records
            m.setattr(decode_mod, "DECODE_WINDOW", 2 * chunk)
        m.setattr(backend, "ACTIVE", C)
        got = everything(data)
        m.setattr(backend, "ACTIVE", backend.NumpyBackend())
        want = everything(data)
    return got, want


@pytest.mark.parametrize("name", sorted(odd_captures()))
def test_c_path_equals_the_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    got, want = both(odd_captures()[name], monkeypatch)
    assert isinstance(want, dict) and len(want["attempts"]["t_start"]) >= 3
    assert got == want


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_c_path_equals_the_reference_in_small_chunks(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip reasons are reported, and IPv6 addresses numbered, chunk by chunk."""
    for name in ("pcapng-two-ifaces", "pcap-be-ns-sll2", "interleaved"):
        got, want = both(odd_captures()[name], monkeypatch, chunk)
        assert got == want, name


def test_c_path_on_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 0
    for f in sorted(CORPUS.iterdir()):
        if f.suffix in (".pcap", ".pcapng"):
            data = f.read_bytes()
            for chunk in (None, 2):
                got, want = both(data, monkeypatch, chunk)
                assert got == want, (f.name, chunk)
            n += 1
    assert n > 20


@settings(max_examples=120, deadline=4000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(mutated())
def test_c_path_on_damage(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    got, want = both(data, monkeypatch, 3)
    assert got == want


@pytest.mark.parametrize("mask", [0, 3])
def test_c_flow_hash_collisions_change_nothing(mask: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C grouping is exact: with every flow (or most) sharing one hash, the attempts
    are the same (rows in another order)."""
    data = odd_captures()["interleaved"]

    def by_frame() -> dict[str, list[Any]]:
        fr = parse_frames(data, "t")
        a = analyze_packets(decode(fr), [fr.report], ["t"]).attempts
        o = np.argsort(a["frame"], kind="stable")
        out = {k: [None if x != x else x for x in v[o].tolist()] for k, v in a.cols.items()
               if k not in ("flow", "first_pos", "prev")}
        out["history"] = [a.history_str()[i] for i in o.tolist()]
        return out

    want = by_frame()
    with monkeypatch.context() as m:
        m.setattr(backend, "ACTIVE", C)
        m.setattr(flows, "C_HASH_MASK", mask)
        assert by_frame() == want


def test_c_functions_refuse_inconsistent_arguments() -> None:
    """Called wrongly (which the Python callers never do), the C functions raise, they do
    not read outside their buffers."""
    lib = LIB
    assert lib is not None
    i8 = np.zeros(4, dtype=np.int64)
    with pytest.raises(ValueError):  # an order pointing past the packets
        lib.segment_facts(np.array([0, 9, 1, 2], dtype=np.int64), np.ones(4, bool), np.zeros(4, np.int8),
                          np.zeros(4, np.uint8), np.zeros(4, np.uint32), np.zeros(4, np.uint32),
                          np.zeros(4, np.int32), np.zeros(4, bool), np.zeros(4, np.uint16),
                          np.zeros(4096, np.uint8))
    out = tuple(np.empty(1, dtype=dt) for _, dt in decode_mod._COLS)
    with pytest.raises(ValueError):  # a frame beyond the buffer
        lib.decode(b"x" * 10, np.array([4]), np.array([20]), np.array([20]), np.array([1], np.int32),
                   np.zeros(1), np.array([1]), 8, out)
    with pytest.raises(ValueError):  # columns of different lengths
        lib.decode(b"x" * 10, i8, i8[:2], i8, np.zeros(4, np.int32), np.zeros(4), i8, 8, out)
    with pytest.raises(ValueError):
        lib.pcap_scan(b"x" * 10, 0, 99, True, 1_000_000, 65535, False, 0.0, 1.0)
    with contextlib.suppress(CaptureError):  # and a tiny file is just a capture error
        parse_frames(b"\xd4\xc3\xb2\xa1" + b"\0" * 30, "t")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.binary(max_size=9), max_size=40))
def test_history_strings_equal_the_reference(hists: list[bytes]) -> None:
    """zeek.strings: each segment's letters as one zero-padded row (empty segments too)."""
    counts = np.array([len(h) for h in hists], dtype=np.int64)
    codes = np.frombuffer(b"".join(hists), dtype=np.uint8)
    assert C is not None
    active = backend.ACTIVE
    try:
        backend.ACTIVE = C
        got = zeek.strings(codes, counts)
        backend.ACTIVE = backend.NumpyBackend()
        want = zeek.strings(codes, counts)
    finally:
        backend.ACTIVE = active
    assert got.dtype == want.dtype and got.tolist() == want.tolist()
    assert got.tolist() == [h.rstrip(b"\0") for h in hists]


def test_history_strings_refuse_counts_that_do_not_fit() -> None:
    assert LIB is not None
    with pytest.raises(ValueError):
        LIB.pad_strings(np.zeros(3, dtype=np.uint8), np.array([2, 2], dtype=np.int64), 2)
    with pytest.raises(ValueError):
        LIB.pad_strings(np.zeros(4, dtype=np.uint8), np.array([3, 1], dtype=np.int64), 2)


def random_attempts(seed: int, n: int = 2000) -> flows.Attempts:
    """An attempt table with what recycle_verdicts reads: few client/server pairs,
    TIME_WAIT entries at the server (some without timestamps), SYNs with and without
    TSvals that go back, wrap around 2^32 and tie in time, over 0-200 s."""
    rng = np.random.default_rng(seed)
    t_syn = 1.7e9 + np.round(rng.uniform(0, 200, n), 1 if seed % 2 else 3)  # ties when rounded coarsely
    base = rng.integers(0, 1 << 32)
    tsval = (base + rng.integers(-5000, 5000, n) * (1 + seed % 3)) % (1 << 32)
    return flows.Attempts(cols={
        "orig": rng.integers(1, 4, n).astype(np.uint64), "resp": rng.integers(1, 3, n).astype(np.uint64),
        "is_attempt": rng.random(n) < 0.9, "tw_verdict": rng.integers(0, 3, n).astype(np.int8),
        "tw_holder": rng.integers(0, 3, n).astype(np.int8), "syn_has_ts": rng.random(n) < 0.8,
        "synack_has_ts": rng.random(n) < 0.9, "orig_ts_seen": rng.random(n) < 0.9,
        "t_start": t_syn, "t_syn": t_syn, "syn_tsval": tsval.astype(np.uint32),
        "t_tw_enter": np.where(rng.random(n) < 0.95, t_syn + rng.uniform(0, 2, n), np.nan),
        "t_orig_last_ts": np.where(rng.random(n) < 0.9, t_syn + rng.uniform(0, 1, n), np.nan),
        "orig_last_tsval": ((tsval + rng.integers(0, 2000, n)) % (1 << 32)).astype(np.uint32),
        "pkt": rng.permutation(2 * n)[:n].astype(np.int64), "pkt_tw_enter": rng.permutation(2 * n)[:n].astype(np.int64),
    })


@pytest.mark.parametrize("seed", range(8))
def test_c_recycle_replay_equals_the_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass C replay of tcp_tw_recycle's cache (writes and checks) gives the
    verdicts of the model's PeerCache replayed event by event, drops of both kinds included."""
    a = random_attempts(seed)
    with monkeypatch.context() as m:
        m.setattr(backend, "ACTIVE", C)
        reuse.recycle_verdicts(a)
    got = a["tw_recycle"].copy()
    with monkeypatch.context() as m:
        m.setattr(backend, "ACTIVE", backend.NumpyBackend())
        reuse.recycle_verdicts(a)
    assert got.tolist() == a["tw_recycle"].tolist()
    assert (got == reuse.RC_DROP).any() and (got == reuse.RC_DROP_4X).any() and (got == reuse.RC_NONE).any()


def test_c_recycle_replay_refuses_inconsistent_arguments() -> None:
    assert LIB is not None
    z8, z1 = np.zeros(3, dtype=np.int64), np.zeros(1, dtype=np.int8)
    with pytest.raises(ValueError):  # more writes than entries
        LIB.recycle_checks(z8, 4, z8, z8, z8, z8, z8, z8, z1, 60, 1, z1)
    with pytest.raises(IndexError):  # an entry beyond the entries
        order = np.array([0, 1, 7], dtype=np.int64)
        LIB.recycle_checks(order, 2, z8, z8[:2], z8[:2], z8[:2], z8[:1], z8[:1], np.zeros(1, np.uint8),
                                  60, 1, z1)


@pytest.mark.parametrize("c_ext", [True, False], ids=["C", "reference"])
def test_recycle_checks_at_the_edges(c_ext: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cache write (TSval 1000, stamp 100 s), then SYNs of the same pair: a TSval
    TCP_PAWS_WINDOW (1) behind is kept, 2 behind dropped; no TSval: drop_4x; an entry
    TCP_PAWS_MSL (60 s) old is stale (whole seconds, as the kernel counts)."""
    monkeypatch.setattr(backend, "ACTIVE", C if c_ext else backend.NumpyBackend())
    syns = [(101.0, True, 999), (101.0, True, 998), (101.0, False, 0), (159.9, True, 998), (160.0, True, 998),
            (160.0, False, 0)]
    n = 1 + len(syns)
    t_syn = np.array([99.0] + [s[0] for s in syns])
    cols = {
        "orig": np.ones(n, np.uint64), "resp": np.full(n, 2, np.uint64), "is_attempt": np.ones(n, bool),
        "tw_verdict": np.array([reuse.V_ACCEPT] + [0] * len(syns), np.int8),
        "tw_holder": np.array([flows.W_RESP] + [0] * len(syns), np.int8),
        "syn_has_ts": np.array([True] + [s[1] for s in syns]), "synack_has_ts": np.ones(n, bool),
        "orig_ts_seen": np.ones(n, bool), "t_start": t_syn, "t_syn": t_syn,
        "syn_tsval": np.array([0] + [s[2] for s in syns], np.uint32),
        "t_tw_enter": np.array([100.0] + [np.nan] * len(syns)), "t_orig_last_ts": np.full(n, 100.0),
        "orig_last_tsval": np.full(n, 1000, np.uint32), "pkt": np.arange(n, dtype=np.int64),
        "pkt_tw_enter": np.arange(n, dtype=np.int64),
    }
    a = flows.Attempts(cols=cols)
    reuse.recycle_verdicts(a)
    assert a["tw_recycle"].tolist() == [0, reuse.RC_NONE, reuse.RC_DROP, reuse.RC_DROP_4X, reuse.RC_DROP,
                                        reuse.RC_NONE, reuse.RC_NONE]
