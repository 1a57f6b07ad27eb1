"""A capture read and built chunk by chunk (analysis.analyze_streamed, capture/chunked.py)
gives the one-pass analysis exactly: every attempt column in the same rows, the Zeek
histories, the counts, sources, servers and the read report — with 4-tuples reused
across chunk boundaries, connections carried over several chunks or retired and coming
back, packets reordered in time across boundaries, and the record scan itself cut in
small windows."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import T0, many_flows, nat_two_clocks, odd_captures
from helpers.chunked import (
    check_set_fallback,
    comparable,
    merged_one_pass,
    one_pass,
    reuse_capture,
    reused_across_files,
    rotated,
    spy_streamed,
    terminal_and_json,
    write,
)

from tcpreuse.capture import analysis, backend, bigclients, chunked, flows, formats, ordered, reuse
from tcpreuse.capture.analysis import analyze_paths, analyze_streamed
from tcpreuse.capture.spill import ColumnStore
from tcpreuse.capture.synth import Seg, frames_of, handshake, pcap_bytes

pytestmark = pytest.mark.skipif(backend.c_extension() is None, reason="the streamed read needs the C extension")


def check(path: Path, chunk: int, closed_idle_s: float = chunked.CLOSED_IDLE_S,
          open_idle_s: float = chunked.OPEN_IDLE_S, window: int | None = None) -> chunked.ChunkBuilder:
    b = chunked.ChunkBuilder(closed_idle_s, open_idle_s)
    got = analyze_streamed(str(path), chunk, b, window)
    assert got is not None, "the chunked build gave up"
    assert comparable(got) == comparable(one_pass(path))
    return b


@pytest.mark.parametrize("chunk", [7, 16, 61, 1000])
@pytest.mark.parametrize("idle", [(0.5, 2.0), (5.0, 300.0)])
def test_reuse_across_chunk_boundaries(tmp_path: Path, chunk: int, idle: tuple[float, float]) -> None:
    path = write(tmp_path, "reuse.pcap", pcap_bytes(frames_of(reuse_capture())))
    b = check(path, chunk, *idle)
    if idle[0] < 1:  # 4-tuples were retired between rounds and came back
        assert b.r_lo.size


@pytest.mark.parametrize("chunk", [5, 13, 64])
def test_odd_segments_and_many_flows(tmp_path: Path, chunk: int) -> None:
    odd = {k: v for k, v in odd_captures().items() if v[:4] in formats.PCAP_MAGIC}
    assert len(odd) >= 2
    for name, data in odd.items():
        check(write(tmp_path, f"{name}.pcap", data), chunk, 0.5, 3.0)
    check(write(tmp_path, "many.pcap", pcap_bytes(frames_of(many_flows(60, gap=0.0001)))), chunk)


@pytest.mark.parametrize("chunk", [6, 17, 40])
def test_reordered_in_time_across_chunk_boundaries(tmp_path: Path, chunk: int) -> None:
    """Records out of time order (as captured on several CPUs): neighbours swapped,
    within a connection and between connections, across boundaries."""
    segs = reuse_capture(rounds=4)
    rng = random.Random(chunk)
    for i in range(1, len(segs) - 1, 3):
        if rng.random() < 0.6:
            segs[i], segs[i + 1] = segs[i + 1], segs[i]
    fr = frames_of(segs)
    ts = np.asarray([f.t for f in fr])
    assert (np.diff(ts) < 0).sum() > 10
    check(write(tmp_path, "reordered.pcap", pcap_bytes(fr)), chunk)


def test_what_one_pass_would_join_falls_back(tmp_path: Path) -> None:
    """A 4-tuple retired after its close, then a bare ACK of it (a retransmitted last
    ACK): one pass puts it in the old connection, a chunked build cannot; the analysis
    falls back to one pass and still gives its result."""
    segs = handshake(T0, "10.0.0.5", 40000, "10.0.0.1", 80, 1, 2)
    last = segs[7]
    segs += handshake(T0 + 0.5, "10.0.0.5", 40001, "10.0.0.1", 80, 1, 2)
    segs += handshake(T0 + 10, "10.0.0.5", 40002, "10.0.0.1", 80, 1, 2)  # 40000 retired after this chunk
    segs += [Seg(T0 + 20, last.src, last.sport, last.dst, last.dport, "A", last.seq, last.ack)]
    segs += handshake(T0 + 20.5, "10.0.0.5", 40003, "10.0.0.1", 80, 1, 2)
    path = write(tmp_path, "late.pcap", pcap_bytes(frames_of(segs)))
    assert analyze_streamed(str(path), 8, chunked.ChunkBuilder(1.0, 2.0)) is None
    got = check_fallback(path)
    assert sorted(got["cols"]["packets"]) == [8, 8, 8, 9]  # the late ACK in the first connection


def check_fallback(path: Path) -> dict[str, Any]:
    got = comparable(analyze_paths([path])[0])
    assert got == comparable(one_pass(path))
    return got


def test_packet_older_than_the_carried_falls_back(tmp_path: Path) -> None:
    """A packet recorded after a new SYN of its 4-tuple but older than it belongs to
    the previous connection, which was emitted: the chunked build refuses."""
    segs = handshake(T0, "10.0.0.5", 40000, "10.0.0.1", 80, 1, 2)
    segs += handshake(T0 + 1, "10.0.0.5", 40000, "10.0.0.1", 80, 500, 600)
    late = Seg(T0 + 0.9, "10.0.0.1", 80, "10.0.0.5", 40000, "A", 3, 2)  # recorded last
    fr = frames_of(segs) + frames_of([late])
    path = write(tmp_path, "old.pcap", pcap_bytes(fr))
    assert analyze_streamed(str(path), 10) is None
    check_fallback(path)


def test_scan_in_windows_equals_one_scan(tmp_path: Path) -> None:
    """The record scan cut in windows of a few records finds the same records, and
    reports the same damage, truncation and resynchronisation."""
    good = pcap_bytes(frames_of(many_flows(30)))
    damaged = bytearray(good)
    damaged[900:904] = b"\xff\xff\xff\x7f"  # a record length that cannot be right
    lib = backend.c_extension()
    for data in (good, bytes(damaged), good[:-7], good + b"\x01\x02"):

        def scan(window: int | None, data: bytes = data) -> tuple[list[int], dict[str, Any]]:
            rep = formats.ReadReport(path="t", bytes_total=len(data))
            hdr = formats.pcap_header(data, rep)
            offs = [int(x) for a in formats.scan_pcap(lib, data, rep, hdr, window) for x in a.tolist()]
            return offs, rep.to_json()

        want = scan(None)
        for w in (40, 97, 300, 5000):
            assert scan(w) == want
        path = write(tmp_path, "d.pcap", data)  # and the whole analysis, report included
        for w in (97, 5000):
            check(path, 11, window=w)


def test_long_span_streamed_and_far_times_use_one_pass(tmp_path: Path) -> None:
    """Packets days apart in groups that the far-time check keeps (a -G rotated set over
    days, traffic stopping overnight) are streamed, with the one-pass result; a few
    packets more than a day from the rest (a damaged record time), which the one-pass
    read leaves out with a warning, make the streamed read give up for it."""
    segs: list[Seg] = []
    for day in range(3):
        for k in range(3):
            segs += handshake(T0 + day * 2 * 86_400 + k, "10.0.0.5", 40000, "10.0.0.1", 80, 1 + day * 1000 + k, 2)
    path = write(tmp_path, "days.pcap", pcap_bytes(frames_of(segs)))
    for chunk in (4, 30):
        check(path, chunk)
    paths = rotated(tmp_path, segs, [24, 48])  # one file a day
    check_set(paths, 5)
    got = check_set(paths[::-1], 5)
    assert reused_across_files(got) == 2
    far = [*segs, Seg(T0 + 6 * 86_400, "10.0.0.5", 40001, "10.0.0.1", 80, "S", 5)]  # two days after the rest
    path = write(tmp_path, "far.pcap", pcap_bytes(frames_of(far)))
    assert analyze_streamed(str(path), 4) is None
    check_fallback(path)
    assert one_pass(path).reports[0].bad_times == 1


@pytest.mark.parametrize("blocks", [None, (5, 3), (1, 1)])
def test_compact_attempt_table_gives_the_same_report(tmp_path: Path, blocks: tuple[int, int] | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """No per-attempt output asked (the CLI without --csv/--parquet/--save/--html): the
    attempt table leaves out the export-only and reuse-only columns and is kept in files
    (spill.ColumnStore), which the reuse passes, counts and statistics read a block of
    rows at a time (here also blocks of a few rows, and tw_recycle windows of a few
    events), and the JSON, the findings and the RunResult timeline are still those of
    the full analysis in memory."""
    from tcpreuse.diagnose.base import Evidence, diagnose

    def report(an: analysis.CaptureAnalysis) -> dict[str, Any]:
        js = an.to_json()
        js.pop("timing_s")
        rr = an.to_run_result()
        return {"json": js, "findings": [f.to_json() for f in diagnose(Evidence(source="analyze", capture=an))],
                "timeline": rr.timeline.to_json() if hasattr(rr.timeline, "to_json") else vars(rr.timeline)}

    path = write(tmp_path, "reuse.pcap", pcap_bytes(frames_of(sorted(reuse_capture(rounds=8) + nat_two_clocks(), key=lambda g: g.t))))
    full = one_pass(path)  # in memory, default blocks
    want = report(full)
    if blocks is not None:
        monkeypatch.setattr(flows, "ROW_BLOCK", blocks[0])
        monkeypatch.setattr(reuse, "REUSE_BLOCK", blocks[0])
        monkeypatch.setattr(reuse, "TW_BLOCK", blocks[1])
        monkeypatch.setattr(reuse, "RECYCLE_WINDOW", blocks[1])
        monkeypatch.setattr(ordered, "PART_ROWS", blocks[1])  # the build order and the clients by parts
        monkeypatch.setattr(ordered, "FINE", 16)
        monkeypatch.setattr(bigclients, "BIG_CLIENT", blocks[0])  # clients streamed
    small = analyze_streamed(str(path), 23, per_attempt=False)
    assert small is not None
    store = small.attempts.cols
    assert isinstance(store, ColumnStore) and isinstance(full.attempts.cols, dict)
    assert len(list(store.path.iterdir())) == len(store) > 20  # one file a column
    with pytest.raises(ValueError, match="read-only"):
        small.attempts["t_syn"][0] = 0.0
    assert (full.attempts["tw_recycle"] != 0).any()  # the replay has drops to carry between windows
    dropped = set(chunked.EXPORT_ONLY) | set(chunked.REUSE_ONLY)
    assert dropped <= set(full.attempts.cols) and not dropped & set(small.attempts.cols)
    assert small.attempts.history.dtype.itemsize == 1 < full.attempts.history.dtype.itemsize
    for k in chunked.NARROW:  # counters in 32 bits, same values
        assert small.attempts[k].dtype == np.int32 and full.attempts[k].dtype == np.int64
        assert int(small.attempts[k].sum()) == int(full.attempts[k].sum())

    got = report(small)
    assert want["findings"], "the capture should give findings to compare"
    assert got == want


def test_command_output_is_the_one_pass_output(seed_pcap: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcpreuse analyze FILE` (terminal and --json) on a file read in chunks, with the
    compact attempt table, says what the one-pass read says (files from
    STREAM_MIN_BYTES on are read in chunks; lowered here to take the seed capture)."""
    # streamed, and compact
    used = spy_streamed(monkeypatch, lambda got: got is not None and "frame" not in got.attempts.cols)
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)

    chunked_out = terminal_and_json(cli, [str(seed_pcap)])
    assert used == [True, True]
    monkeypatch.setenv("TCPREUSE_CAPTURE_CHUNKED", "0")
    assert terminal_and_json(cli, [str(seed_pcap)]) == chunked_out


# ---- rotated files (tcpdump -C/-G/-W) read as one stream --------------------------------


def check_set(paths: list[Path], chunk: int, closed_idle_s: float = chunked.CLOSED_IDLE_S,
              open_idle_s: float = chunked.OPEN_IDLE_S) -> analysis.CaptureAnalysis:
    got = analyze_streamed([str(p) for p in paths], chunk, chunked.ChunkBuilder(closed_idle_s, open_idle_s), 97)
    assert got is not None, "the streamed read of the set gave up"
    assert comparable(got) == comparable(merged_one_pass(paths))
    return got


@pytest.mark.parametrize("chunk", [7, 40, 1000])
@pytest.mark.parametrize("idle", [(0.5, 2.0), (5.0, 300.0)])
def test_rotated_set_is_one_capture(tmp_path: Path, chunk: int, idle: tuple[float, float]) -> None:
    """A capture rotated into files at arbitrary packets (inside connections, between a
    connection and the reuse of its 4-tuple): streamed as one, it gives the one-pass
    merge's analysis, and the reuses across files are joined."""
    segs = reuse_capture(rounds=6)
    n = len(segs)
    cuts = sorted({3, n // 5, n // 2 + 1, n // 2 + 2, n - 4})
    paths = rotated(tmp_path, segs, cuts)
    got = check_set(paths, chunk, *idle)
    assert reused_across_files(got) > 0
    assert {0, 1, 2, 4} <= set(got.attempts["file"].tolist())  # file 3: one packet, inside a connection
    assert got.counts()["reused"] == one_pass(write(tmp_path, "whole.pcap", pcap_bytes(frames_of(segs)))).counts()["reused"]


def test_rotated_set_in_any_command_line_order(tmp_path: Path) -> None:
    """A shell glob puts cap.pcap10 before cap.pcap2; a -W ring wraps around: the files
    are streamed in time order whatever order they are given in, with the `file` column
    naming each attempt's file."""
    segs = reuse_capture(rounds=12, ports=4)
    paths = rotated(tmp_path, segs, list(range(9, len(segs) - 1, len(segs) // 11)))
    assert len(paths) >= 11
    in_order = check_set(paths, 13)
    for seed in (1, 2):
        shuffled = paths[:]
        random.Random(seed).shuffle(shuffled)
        got = check_set(shuffled, 13)
        assert reused_across_files(got) > 0
        for k in got.attempts.cols:  # the same attempts; `file` is the index on the command line
            want = in_order.attempts[k]
            if k == "file":
                want = np.asarray([shuffled.index(paths[i]) for i in want.tolist()])
            assert np.array_equal(got.attempts[k], want, equal_nan=want.dtype.kind == "f"), k
        names = got.export_columns()["file"]
        assert names == in_order.export_columns()["file"]


def test_truncated_file_in_a_rotated_set(tmp_path: Path) -> None:
    """One file of the set cut short (a crash while rotating): its report says how far
    it was read, the files after it are analysed, all as the one-pass merge does."""
    segs = reuse_capture(rounds=6)
    paths = rotated(tmp_path, segs, [len(segs) // 3, 2 * len(segs) // 3])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:len(data) * 2 // 3 + 5])
    got = check_set(paths, 11)
    reps = got.reports
    assert [r.complete for r in reps] == [True, False, True]
    assert 0 < reps[1].bytes_read < reps[1].bytes_total == len(data) * 2 // 3 + 5
    assert reps[1].warnings and "(" in reps[1].summary()
    assert (got.attempts["file"] == 2).sum() > 0


def test_overlapping_files_fall_back_to_the_one_pass_merge(tmp_path: Path) -> None:
    """Files that overlap in time (two interfaces captured side by side, or files
    given twice) cannot be one stream in file order: the streamed read gives up at the
    first packet older than one already read, and `analyze` reads them in one pass."""
    segs = reuse_capture(rounds=6)
    even = write(tmp_path, "eth0.pcap", pcap_bytes(frames_of(segs[0::2])))
    odd = write(tmp_path, "eth1.pcap", pcap_bytes(frames_of(segs[1::2])))
    assert analyze_streamed([str(even), str(odd)], 16) is None
    whole = write(tmp_path, "whole.pcap", pcap_bytes(frames_of(segs)))
    again = write(tmp_path, "whole-again.pcap", whole.read_bytes())
    assert analyze_streamed([str(whole), str(again)], 16) is None
    for files in ([even, odd], [whole, again]):
        check_set_fallback(files)


def test_pcapng_in_a_set_falls_back_and_non_captures_are_skipped(tmp_path: Path) -> None:
    """A pcapng file in the set that overlaps the others in time: the whole set is read
    in one pass (sets of pcap, pcapng and gzip files in time order are streamed:
    tests/test_capture_stream_pcapng.py). A file that is not a capture at all (a stray
    file the glob took, an empty file, a missing one) is reported and skipped by both
    ways alike, and the rest is streamed."""
    segs = reuse_capture(rounds=4)
    paths = rotated(tmp_path, segs, [len(segs) // 2, len(segs) // 2 + 7])
    ng = odd_captures()
    ng_name = next(k for k, v in ng.items() if v[:4] not in formats.PCAP_MAGIC)
    other = write(tmp_path, "b.pcapng", ng[ng_name])
    files = [*paths, other]
    assert analyze_streamed([str(p) for p in files], 16) is None
    check_set_fallback(files)
    junk = write(tmp_path, "cap.pcap.txt", b"not a capture at all")
    empty = write(tmp_path, "cap.pcap9", b"")
    files = [paths[2], junk, paths[0], empty, tmp_path / "gone.pcap", paths[1]]
    got = check_set(files, 9)
    assert [Path(r.path).name for r in got.reports][3:] == ["cap.pcap.txt", "cap.pcap9", "gone.pcap"]
    assert all(not r.complete and "not read" in r.warnings[0] for r in got.reports[3:])
    assert reused_across_files(got) > 0
    assert analyze_streamed([str(junk), str(empty)], 9) is None  # nothing to stream: one pass says why


def test_analyze_command_on_a_rotated_set(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcpreuse analyze cap.pcap*` (terminal and --json) on a set read as one stream
    says what the one-pass merge says."""

    segs = reuse_capture(rounds=8)
    paths = rotated(tmp_path, segs, [len(segs) // 4, len(segs) // 2, 3 * len(segs) // 4])
    args = [str(p) for p in sorted(paths, key=lambda p: p.name)]
    used = spy_streamed(monkeypatch)
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)

    streamed = terminal_and_json(cli, args)
    assert used == [True, True]
    assert streamed[1]["counts"]["reused"] > 0
    monkeypatch.setenv("TCPREUSE_CAPTURE_CHUNKED", "0")
    assert terminal_and_json(cli, args) == streamed


def test_files_meeting_at_one_time_in_the_one_pass_order(tmp_path: Path) -> None:
    """Files that meet at one time: the one-pass merge orders them by median time, then
    command-line place. When both medians are that time and the later file on the command
    line starts earlier, the stream (in start order) would join them in the other order:
    it gives up, and the one-pass merge is used. When the medians differ, the tie at the
    boundary is harmless and the set is streamed."""
    t = T0 + 10
    early = [Seg(T0 + k * 0.1, "10.0.0.5", 30000 + k, "10.0.0.1", 80, "S", 1) for k in range(9)]
    at_t = [Seg(t, "10.0.0.5", 31000 + k, "10.0.0.1", 80, "S", 1) for k in range(10)]
    a = write(tmp_path, "a.pcap", pcap_bytes(frames_of(early + at_t)))  # starts at T0, median t
    b = write(tmp_path, "b.pcap", pcap_bytes(frames_of([Seg(t, "10.0.0.6", 32000 + k, "10.0.0.1", 80, "S", 1)
                                                         for k in range(3)])))  # all at t
    assert analyze_streamed([str(b), str(a)], 8) is None
    check_set_fallback([b, a])
    check_set([a, b], 8)  # command-line order = time order
    a.write_bytes(pcap_bytes(frames_of(early + at_t[:8])))  # median before t: a goes first either way
    check_set([b, a], 8)


def test_per_file_streams_each_large_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--per-file` (merge=False): each file of STREAM_MIN_BYTES or more is streamed by
    itself, the others read whole; the analyses, one per file in command-line order and
    the unreadable one last, are those of the one-pass reads."""
    big = write(tmp_path, "big.pcap", pcap_bytes(frames_of(reuse_capture(rounds=8))))
    small = write(tmp_path, "small.pcap", pcap_bytes(frames_of(reuse_capture(rounds=2))))
    big2 = write(tmp_path, "big2.pcap", pcap_bytes(frames_of(reuse_capture(rounds=7))))
    junk = write(tmp_path, "junk.pcap", b"not a capture at all")
    files = [big, junk, small, big2]
    want = [comparable(an) for an in analyze_paths(files, merge=False, jobs=1)]
    streamed: list[str] = []
    real = analysis.analyze_streamed

    def spy(*a: Any, **kw: Any) -> Any:
        got = real(*a, **kw)
        if got is not None:
            streamed.extend(Path(f).name for f in got.files)
        return got

    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", min(big.stat().st_size, big2.stat().st_size))
    monkeypatch.setattr(analysis, "analyze_streamed", spy)
    got = analyze_paths(files, merge=False, jobs=2)
    assert streamed == ["big.pcap", "big2.pcap"]
    assert [Path(an.files[0]).name for an in got] == ["big.pcap", "small.pcap", "big2.pcap", "junk.pcap"]
    assert [comparable(an) for an in got] == want


def test_rotated_set_carries_what_one_file_carries(tmp_path: Path) -> None:
    """What a streamed set holds between chunks follows the live connections, as for the
    same packets in one file: the same chunks, the same carried packets at their peak,
    a small part of the capture; the result is the one file's but for the file names
    and frame numbers."""
    from helpers.captures import windows_reuse

    segs = sorted(windows_reuse(n_conn=1500, ports=150, gap=0.05), key=lambda s: s.t)
    whole = write(tmp_path, "whole.pcap", pcap_bytes(frames_of(segs)))
    paths = rotated(tmp_path, segs, [len(segs) * k // 7 + k for k in range(1, 7)])
    b1, b2 = chunked.ChunkBuilder(), chunked.ChunkBuilder()
    one = analyze_streamed(str(whole), 500, b1)
    got = analyze_streamed([str(p) for p in paths[::-1]], 500, b2)
    assert one is not None and got is not None
    assert b1.rows == b2.rows == len(segs)
    assert 0 < b2.peak_carry == b1.peak_carry < len(segs) // 8
    assert reused_across_files(got) > 20
    assert comparable(got)["json"]["counts"] == comparable(one)["json"]["counts"]
    for k in got.attempts.cols:
        if k not in ("file", "frame"):  # frame numbers count from each file's start
            assert np.array_equal(got.attempts[k], one.attempts[k], equal_nan=got.attempts[k].dtype.kind == "f"), k
