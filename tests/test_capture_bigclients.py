"""Clients too busy to hold their attempts at once (capture/bigclients.py): their
statistics, streamed in capture and time order a part at a time (capture/ordered.py),
are those source_stats makes with the rows in memory — from a table in memory and in
files, in blocks and parts of a few rows, port cycles and retry delays past what is kept
in memory (their medians then found in a file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.captures import many_flows, nat_two_clocks, windows_reuse, write_pcap
from helpers.chunked import one_pass, reuse_capture

from tcpreuse.capture import analysis, bigclients, flows, ordered, sources, spill
from tcpreuse.capture.flows import Attempts
from tcpreuse.capture.spill import ColumnStore
from tcpreuse.capture.synth import Seg

CAPTURES = {
    "windows-port-cycles": lambda: windows_reuse(n_conn=400, ports=60),
    "reconnections-off-their-clock": lambda: reuse_capture(rounds=12, ports=6),
    "nat-two-clocks": nat_two_clocks,
    "many-clients": lambda: many_flows(60),
    "all-together": lambda: windows_reuse(n_conn=200, ports=40) + reuse_capture(rounds=10) + nat_two_clocks(),
}


def stats(an: analysis.CaptureAnalysis, att: Attempts) -> list[dict[str, object]]:
    return [s.to_json() for s in sources.source_stats(att, an.addr)]


@pytest.mark.parametrize("name", list(CAPTURES))
@pytest.mark.parametrize("small", [False, True])
def test_streamed_clients_are_the_clients_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                                                    small: bool) -> None:
    segs: list[Seg] = CAPTURES[name]()
    an = one_pass(write_pcap(tmp_path / "c.pcap", segs))
    want = [s.to_json() for s in an.sources]
    assert want and all(s["attempts"] < bigclients.BIG_CLIENT for s in want)  # made in memory
    monkeypatch.setattr(bigclients, "BIG_CLIENT", 0)
    if small:
        monkeypatch.setattr(flows, "ROW_BLOCK", 7)
        monkeypatch.setattr(ordered, "PART_ROWS", 5)
        monkeypatch.setattr(ordered, "FINE", 16)
        monkeypatch.setattr(spill, "SPILL_VALUES", 3)
        monkeypatch.setattr(analysis, "SPILL_BLOCK", 5)
        monkeypatch.setattr(analysis, "SPILL_BINS", 4)
    assert stats(an, an.attempts) == want
    store = ColumnStore()
    try:
        for k, v in an.attempts.cols.items():
            store[k] = v
        assert stats(an, Attempts(store, an.attempts.history)) == want
    finally:
        store.close()


def test_the_checks_see_what_they_should(tmp_path: Path) -> None:
    """The captures above reach the streamed paths worth comparing: reconnections off
    their clock (all SYNs' clocks counted again), port cycles, retried SYNs."""
    an = one_pass(write_pcap(tmp_path / "c.pcap", CAPTURES["reconnections-off-their-clock"]()))
    assert any(s.ts_off_clock for s in an.sources)
    an = one_pass(write_pcap(tmp_path / "w.pcap", CAPTURES["windows-port-cycles"]()))
    s = an.sources[0]
    assert s.ports and s.ports[0].cycle_median_s is not None and s.first_retry_ms_median is not None


def test_spilled_values_median_and_percentiles_in_memory_and_in_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40):
        v = rng.uniform(0, 100, n).round(1)
        for keep in (1 << 20, 3):
            monkeypatch.setattr(spill, "SPILL_VALUES", keep)
            monkeypatch.setattr(analysis, "SPILL_BLOCK", 5)
            monkeypatch.setattr(analysis, "SPILL_BINS", 4)
            vals = spill.SpilledValues()
            for part in np.array_split(v, 3):
                vals.add(part)
            assert vals.median() == flows.median(v) and vals.lo == v.min()
            for q in (10, 50, 90):
                assert vals.percentile(q) == flows.percentile(v, q)
            vals.add(np.array([np.nan]))
            assert np.isnan(vals.median()) and vals.n == n
            vals.close()


def test_rows_in_order_by_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """ordered.in_order: parts in key order, equal keys in table order."""
    rng = np.random.default_rng(5)
    n = 200
    t = rng.integers(0, 20, n).astype(np.float64)
    cols = {"t": t, "i": np.arange(n)}
    monkeypatch.setattr(flows, "ROW_BLOCK", 13)
    for store in (False, True):
        src: dict[str, np.ndarray] | ColumnStore = ColumnStore() if store else {}
        for k, v in cols.items():
            src[k] = v
        got = list(ordered.in_order(src, n, lambda sl, src=src: np.asarray(src["t"][sl]),
                                    lambda sl, src=src: {k: np.asarray(src[k][sl]) for k in ("t", "i")},
                                    ("t",), block=17))
        assert len(got) > 3
        i = np.concatenate([p["i"] for p in got])
        assert i.tolist() == np.argsort(t, kind="stable").tolist()
        if isinstance(src, ColumnStore):
            src.close()


@pytest.mark.parametrize("small", [False, True])
def test_flow_order_by_parts_is_flow_ordered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool) -> None:
    """ordered.flow_ordered_in_parts (a table in files) gives flows.flow_ordered's rows,
    flow numbers, first packet positions and histories, from rows whose flows come in
    another order (as chunks emit them), each flow's segments in time order."""
    from tcpreuse.capture.decode import decode
    from tcpreuse.capture.formats import read_frames

    path = write_pcap(tmp_path / "c.pcap", reuse_capture(rounds=10) + windows_reuse(n_conn=300, ports=50))
    att, _, _ = flows.build(decode(read_frames(path)))
    flow = att["flow"]
    key = np.random.default_rng(1).permutation(int(flow.max()) + 1)[flow]
    o = np.argsort(key, kind="stable")  # flows shuffled, a flow's segments kept in order
    mixed = att.take(o)
    del mixed.cols["flow"]
    want = flows.flow_ordered(Attempts(dict(mixed.cols), mixed.history))
    if small:
        monkeypatch.setattr(flows, "ROW_BLOCK", 11)
        monkeypatch.setattr(ordered, "FINE", 16)
        monkeypatch.setattr(ordered, "PART_ROWS", 7)
    store = ColumnStore()
    for k, v in mixed.cols.items():
        store[k] = v
    got = ordered.flow_ordered_in_parts(Attempts(store, mixed.history))
    try:
        assert list(got.cols) == list(want.cols)
        for k in want.cols:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k], equal_nan=want[k].dtype.kind == "f"), k
        assert got.history.tolist() == want.history.tolist()
        assert np.array_equal(got["flow"], att["flow"]) and np.array_equal(got["first_pos"], att["first_pos"])
    finally:
        assert isinstance(got.cols, ColumnStore)
        got.cols.close()
