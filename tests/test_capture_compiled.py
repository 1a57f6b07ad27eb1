"""The fast paths of the capture reader give exactly what the plain paths give.

Speed comes from three things a plain reading would not do: the record walks run in C
(the C backend, tcpreuse/capture/backend.py), decoding and the attempt reductions work
on chunks of packets, and fields are gathered as whole headers. These tests force each
fast path on and off — with tiny chunks, so records, blocks, flows and IPv6 address
tables straddle chunk boundaries — and compare every column and every report field, on
good captures and on damaged ones (hypothesis mutations of the fuzz seeds). The
tcp_tw_recycle cache the capture replays is the model's (tcpreuse.model.recycle),
checked here against the kernel rule written out once more.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import (
    SEEDS,
    captures,
    frames_state,
    many_flows,
    mutated,
    odd_captures,
    packets_state,
    seq_end_before_base,
)
from hypothesis import HealthCheck, given, settings

from tcpreuse.capture import backend, flows
from tcpreuse.capture import decode as decode_mod
from tcpreuse.capture.analysis import analyze_packets
from tcpreuse.capture.decode import decode
from tcpreuse.capture.formats import parse_frames
from tcpreuse.capture.synth import (
    Frame,
    Iface,
    NgWriter,
    Seg,
    frames_of,
    handshake,
    pcap_bytes,
)
from tcpreuse.errors import CaptureError
from tcpreuse.model.recycle import PeerCache

T0 = 1_700_000_000.0


LIB = backend.c_extension()
BACKENDS = [backend.NumpyBackend()] + ([backend.CBackend(LIB)] if LIB is not None else [])


def read(data: bytes | bytearray, be: backend.Backend, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setattr(backend, "ACTIVE", be)
        try:
            return frames_state(parse_frames(data, "t"))
        except CaptureError as e:
            return e.message


@pytest.mark.parametrize("name", sorted(captures()))
def test_c_walk_equals_the_numpy_walk(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = captures()[name]
    want = read(data, BACKENDS[0], monkeypatch)
    assert isinstance(want, dict) and want["report"]["complete"] and want["report"]["records"] >= 8
    for be in BACKENDS:
        assert read(data, be, monkeypatch) == want, be.name
        assert read(bytearray(data), be, monkeypatch) == want, be.name  # not bytes: a buffer
        # cut anywhere: the truncation report is the same
        for cut in (len(data) - 1, len(data) - 7, len(data) // 2 + 3):
            assert read(data[:cut], be, monkeypatch) == read(data[:cut], BACKENDS[0], monkeypatch)


@settings(max_examples=200, deadline=4000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(mutated())
def test_c_walk_equals_the_numpy_walk_on_damage(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    want = read(data, BACKENDS[0], monkeypatch)
    for be in BACKENDS[1:]:
        assert read(data, be, monkeypatch) == want
        assert read(bytearray(data), be, monkeypatch) == want


def decoded(data: bytes, chunk: int, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    with monkeypatch.context() as m:
        m.setattr(decode_mod, "CHUNK", chunk)
        fr = parse_frames(data, "t")
        p = decode(fr)
        return packets_state(p), fr.report.to_json()


@pytest.mark.parametrize("name", sorted(captures()))
def test_decoding_in_chunks_equals_decoding_at_once(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = captures()[name]
    want = decoded(data, 1 << 30, monkeypatch)
    assert len(want[0]["ts"]) > 8
    for chunk in (1, 3, 7):
        assert decoded(data, chunk, monkeypatch) == want, chunk


def test_decoding_in_chunks_counts_unsupported_link_types_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fr = frames_of(many_flows(6))
    data = NgWriter(ifaces=[Iface(1), Iface(147)]).to_bytes([Frame(f.t, f.data, iface=i % 2) for i, f in enumerate(fr)])
    got, rep = decoded(data, 2, monkeypatch)
    assert rep["skipped"] == {"unsupported link type 147": len(fr) // 2}
    assert sum("link type 147" in w for w in rep["warnings"]) == 1
    assert (got, rep) == decoded(data, 1 << 30, monkeypatch)


@settings(max_examples=100, deadline=4000, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(mutated())
def test_decoding_in_chunks_on_damage(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    with contextlib.suppress(CaptureError):
        assert decoded(data, 2, monkeypatch) == decoded(data, 1 << 30, monkeypatch)


def test_seeds_still_read_completely() -> None:
    for data in SEEDS:
        fr = parse_frames(data, "t")
        assert fr.report.complete and len(decode(fr)) == len(fr)


def replay_reference(key: list[int], ts: list[int], stamp: list[int], now: list[int]) -> tuple[list[int], list[int]]:
    """tcp_remember_stamp() one write at a time, written out once more from the kernel
    (net/ipv4/tcp_metrics.c, 3.5-4.11): the first write of a key creates its entry."""
    cache: dict[int, tuple[int, int]] = {}
    out_ts, out_st = [], []
    for k, t, st, nw in zip(key, ts, stamp, now, strict=True):
        if k in cache:
            c_ts, c_st = cache[k]
            d = (c_ts - t) & 0xFFFFFFFF
            s32 = d - (1 << 32) if d >= 1 << 31 else d
            if s32 <= 0 or (nw - c_st > 60 and c_st <= st):
                cache[k] = (t, st)
        else:
            cache[k] = (t, st)
        out_ts.append(cache[k][0])
        out_st.append(cache[k][1])
    return out_ts, out_st


def model_replay(key: Any, ts: Any, stamp: Any, now: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's PeerCache after each write (what the capture's replay uses)."""
    cache = PeerCache("addr_pair")
    out_ts, out_st = [], []
    for k, t, st, nw in zip(*(np.asarray(x).tolist() for x in (key, ts, stamp, now)), strict=True):
        cache.remember_stamp(0, k, t, st, nw)
        e = cache.entries[(0, k)]
        out_ts.append(e.ts)
        out_st.append(e.stamp)
    return np.array(out_ts), np.array(out_st)


@pytest.mark.parametrize("seed", range(6))
def test_recycle_cache_replay_equals_the_per_write_rule(seed: int) -> None:
    """model.recycle.PeerCache (the C extension's recycle_checks() is compared with it in
    test_capture_cext.py)."""
    rng = np.random.default_rng(seed)
    m = 3000
    key = np.sort(rng.integers(0, 7, m))
    now = np.sort(rng.integers(1_700_000_000, 1_700_000_000 + 400, m))
    stamp = now - rng.integers(0, 3, m)
    if seed % 3 == 0:  # clocks that mostly advance, jump back a little and wrap around 2^32
        ts = (rng.integers(0, 1 << 32) + np.cumsum(rng.integers(-3000, 5000, m))) % (1 << 32)
    elif seed % 3 == 1:  # per-connection offsets
        ts = rng.integers(0, 1 << 32, m)
    else:  # always going back: only an entry older than 60 s is replaced (and the edges)
        ts = (rng.integers(0, 1 << 32) - np.cumsum(rng.integers(1, 50, m))) % (1 << 32)
        stamp = now - rng.integers(0, 2, m) * rng.integers(0, 90, m)  # stamps from long ago too
    got_ts, got_st = model_replay(key, ts.astype(np.int64), stamp, now)
    want_ts, want_st = replay_reference(key.tolist(), ts.tolist(), stamp.tolist(), now.tolist())
    assert got_ts.tolist() == want_ts and got_st.tolist() == want_st
    assert len(set(want_ts)) < m  # some writes lost: the replay was exercised


def test_recycle_cache_replay_edges() -> None:
    """Each write against an entry (TSval 1000, stamp 100): who wins, and why."""
    cases = [  # (write TSval, write stamp, now, replaces the entry?)
        (1000, 101, 101, True),  # same TSval: not older
        (999, 101, 101, False),  # older TSval, fresh entry
        (999, 160, 160, False),  # entry exactly TCP_PAWS_MSL old: still fresh
        (999, 161, 161, True),  # entry older than TCP_PAWS_MSL, write's stamp newer
        (999, 100, 161, True),  # ... write's stamp equal to the entry's
        (999, 99, 161, False),  # ... write's stamp older than the entry's
        ((1000 + (1 << 31)) % (1 << 32), 101, 101, True),  # s32(entry - TSval) = -2^31 <= 0
        ((1000 + (1 << 31) + 1) % (1 << 32), 101, 101, False),  # 2^31 + 1 ahead is behind (s32)
    ]
    for t, st, nw, wins in cases:
        # a losing write first, so the key's TSvals go back and it is replayed write by write
        key, ts_, stamp, now = [0, 0, 0], [1000, 998, t], [100, 100, st], [100, 100, nw]
        got_ts, got_st = model_replay(key, ts_, stamp, now)
        assert (got_ts[2], got_st[2]) == ((t, st) if wins else (1000, 100)), (t, st, nw)
        assert (got_ts.tolist(), got_st.tolist()) == replay_reference(key, ts_, stamp, now)


def attempts_by_frame(data: bytes) -> dict[str, list[Any]]:
    fr = parse_frames(data, "t")
    att = analyze_packets(decode(fr), [fr.report], ["t"]).attempts
    o = np.argsort(att["frame"], kind="stable")
    cols = {k: [None if x != x else x for x in v[o].tolist()]  # NaN -> None, comparable
            for k, v in att.cols.items() if k not in ("flow", "first_pos", "prev")}
    cols["history"] = att.history_str()
    cols["history"] = [cols["history"][i] for i in o.tolist()]
    return cols


@pytest.mark.parametrize("weak", [lambda lo, hi: np.zeros(lo.size, dtype=np.uint32),
                                  lambda lo, hi: (lo & np.uint64(3)).astype(np.uint32)])
def test_flow_hash_collisions_change_nothing(weak: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows are grouped by a 32-bit hash; flows sharing it (interleaved in time) must
    still come apart exactly."""
    segs = many_flows(60, gap=0.00005)  # flows interleaved in time
    # the same 4-tuple reused later: two attempts of one flow
    segs += handshake(T0 + 2, "10.0.0.5", 40003, "10.0.0.1", 80, 777, 888, ts=(5, 6))
    data = pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t)))
    want = attempts_by_frame(data)
    assert len(want["frame"]) == 61
    with monkeypatch.context() as m:
        m.setattr(flows, "_flow_hash", weak)
        assert attempts_by_frame(data) == want


def facts_both(data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """SegFacts by the active backend's pass (C when built) and by numpy, for one capture."""
    fr = parse_frames(data, "t")
    p = decode(fr)
    order, fstart, d_all, ts_o = flows.flow_order(p)
    q = flows._FlowCols(p, order, ts_o)
    d = d_all[order]

    def plain(fa: flows.SegFacts) -> dict[str, Any]:
        return {k: getattr(fa, k).tolist() for k in flows.SegFacts.__dataclass_fields__}

    return plain(BACKENDS[-1].segment_facts(q, d, fstart)), plain(flows._facts_numpy(q, d, fstart))


@pytest.mark.parametrize("name", sorted(odd_captures()))
def test_c_attempt_facts_equal_numpy(name: str) -> None:
    got, want = facts_both(odd_captures()[name])
    assert len(want["starts"]) >= 3
    assert got == want


def test_sequence_end_before_the_base_is_kept() -> None:
    """Each side's sequence space may end before its base (see seq_end_before_base()).
    The end is still where that side stopped — the TIME_WAIT verdict rebuilds
    tw_rcv_nxt from it — not "no end"."""
    got, want = facts_both(pcap_bytes(frames_of(seq_end_before_base())))
    assert (want["orig_end_seq"], want["resp_end_seq"]) == ([910], [6999])
    assert got == want


@settings(max_examples=150, deadline=4000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_c_attempt_facts_equal_numpy_on_damage(data: bytes) -> None:
    with contextlib.suppress(CaptureError):
        got, want = facts_both(data)
        assert got == want


def test_c_attempt_facts_on_the_corpus() -> None:
    corpus = Path(__file__).parent / "data" / "pcap" / "corpus"
    n = 0
    for f in sorted(corpus.iterdir()):
        if f.suffix in (".pcap", ".pcapng"):
            with contextlib.suppress(CaptureError):
                got, want = facts_both(f.read_bytes())
                assert got == want, f.name
                n += 1
    assert n > 10


@pytest.mark.parametrize("seed", range(4))
def test_time_order_is_a_stable_argsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.concatenate([1.7e9 + rng.random(500) * 100, rng.random(50) * -3.0, [0.0, -0.0, 5e-324],
                        np.round(1.7e9 + rng.random(300) * 3, 2)])  # ties from rounding
    rng.shuffle(t)
    assert flows.time_order(t).tolist() == np.argsort(t, kind="stable").tolist()
    same = np.full(40, 1.7e9)
    assert flows.time_order(same).tolist() == list(range(40))


def test_ties_in_time_follow_capture_order_not_the_flow_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections opened and closed at the same microseconds (the tw_recycle cache
    replay and the port patterns order them by time): the result must not depend on
    how flows happen to be hashed, which orders attempt rows."""
    rng = np.random.default_rng(7)
    segs: list[Seg] = []
    for i in range(240):  # groups of 4 connections with identical times
        segs += handshake(T0 + (i // 4) * 0.01, "10.0.0.2", 1000 + 2 * i, "10.0.0.1", 80, 10 * i, 7 * i,
                          ts=(int(rng.integers(0, 1 << 31)), 5))
    data = pcap_bytes(frames_of(sorted(segs, key=lambda x: x.t)))

    def result() -> tuple[Any, ...]:
        fr = parse_frames(data, "t")
        an = analyze_packets(decode(fr), [fr.report], ["t"])
        a = an.attempts
        o = np.argsort(a["frame"])
        return a["tw_recycle"][o].tolist(), [s.to_json() for s in an.sources]

    want = result()
    assert 0 < want[0].count(1) < 240  # the replay dropped some SYNs and not others
    with monkeypatch.context() as m:
        m.setattr(flows, "_flow_hash", lambda lo, hi: (hi & np.uint64(0xFFFF)).astype(np.uint32) ^ np.uint32(0xABCD))
        assert result() == want
