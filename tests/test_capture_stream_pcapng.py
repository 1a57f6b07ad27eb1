"""pcapng captures read in bounded memory: a pcapng file of STREAM_MIN_BYTES or more is
walked block by block in windows (formats.scan_pcapng: SHB, IDB, EPB, SPB, the obsolete
PB, other blocks counted; several sections, each with its byte order and interfaces,
each interface with its link type, time resolution and offset), decoded in whole
chunks and built chunk by chunk. The records, frame numbers, times, report, warnings
and resynchronisation are those of the one-pass read — with tiny windows, damaged,
truncated and mutated files (a block that fails the checks makes the window be walked
again carefully, as the one-pass read then walks the whole file carefully)."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import SEEDS, mutated
from helpers.chunked import (
    comparable,
    one_pass,
    reuse_capture,
    spy_streamed,
    terminal_and_json,
)
from hypothesis import HealthCheck, given, settings

from tcpreuse.capture import analysis, backend, chunked, formats
from tcpreuse.capture import window as capwin
from tcpreuse.capture.analysis import analyze_paths, analyze_streamed
from tcpreuse.capture.synth import Frame, Iface, NgExtra, NgWriter, frame, frames_of, pcap_bytes
from tcpreuse.errors import CaptureError

LIB = backend.c_extension()
pytestmark = pytest.mark.skipif(LIB is None, reason="the streamed read needs the C extension")

COLS = ("data_off", "caplen", "origlen", "ts", "linktype", "frame")


def sections() -> bytes:
    """The reuse capture in four sections: little-endian with an Ethernet and a Linux
    cooked interface (nanoseconds), big-endian with a time offset and a binary time
    resolution, Simple Packet Blocks (no time: the previous packet's), little-endian
    again; name resolution, statistics and custom blocks between packets."""
    segs = reuse_capture(rounds=6)
    n = len(segs)
    a, b, c = n // 3, n // 2, n // 2 + 6
    fr = frames_of(segs)
    first = [Frame(f.t, f.data if i % 3 else frame(segs[i], 113), iface=0 if i % 3 else 1)
             for i, f in enumerate(fr[:a])]
    return (NgWriter(ifaces=[Iface(1), Iface(113, tsresol=9)]).to_bytes(
                first, extra=[NgExtra(2, 4, b"\x00" * 8), NgExtra(5, 5, b"\x00" * 12)])
            + NgWriter(ifaces=[Iface(1, tsresol=0x80 | 20, tsoffset=1000)], big_endian=True).to_bytes(
                fr[a:b], extra=[NgExtra(3, 0x0BAD, b"\x00" * 20)])
            + NgWriter(ifaces=[Iface(1)], simple=True).to_bytes(fr[b:c])
            + NgWriter(ifaces=[Iface(1)]).to_bytes(fr[c:]))


def frames_one_pass(data: bytes) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    fr = formats.parse_frames(data, "t")
    return {c: getattr(fr, c).tolist() for c in COLS}, fr.report.to_json()


def frames_streamed(data: bytes, window: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    rep = formats.ReadReport(path="t", bytes_total=len(data))
    got = list(formats.scan_pcapng(data, rep, window))
    cols = {c: [x for f in got for x in getattr(f, c).tolist()] for c in COLS}
    return cols, rep.to_json()


def same_frames(data: bytes, windows: tuple[int, ...] = (1, 50, 333, 4096)) -> None:
    """The streamed walk, at every window, finds the one-pass read's records and report;
    or both refuse the file, or the streamed walk says it cannot tell (NotStreamable)."""
    agree_over_windows(lambda: frames_one_pass(data), lambda w: frames_streamed(data, w), windows)


def agree_over_windows(one_pass_read: Any, streamed_read: Any, windows: tuple[int, ...]) -> int:
    """streamed_read(window) gives one_pass_read()'s result, or the same error, at every
    window it can stream; returns how many windows were compared."""
    try:
        want: Any = one_pass_read()
    except CaptureError as e:
        want = str(e)
    compared = 0
    for w in windows:
        try:
            got: Any = streamed_read(w)
        except formats.NotStreamable:
            continue
        except CaptureError as e:
            got = str(e)
        assert got == want, w
        compared += 1
    return compared


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def check(path: Path, chunk: int, window: int, idle: tuple[float, float] | None = None) -> analysis.CaptureAnalysis:
    b = chunked.ChunkBuilder(*idle) if idle else None
    got = analyze_streamed(str(path), chunk, b, window)
    assert got is not None, "the streamed read gave up"
    assert comparable(got) == comparable(one_pass(path))
    return got


def test_sections_interfaces_and_blocks_walked_in_windows() -> None:
    data = sections()
    same_frames(data)
    cols, rep = frames_streamed(data, 200)
    lt = np.asarray(cols["linktype"])
    assert rep["linktypes"] == {"1": int((lt == 1).sum()), "113": int((lt == 113).sum())}
    assert (lt == 113).sum() > 3 and rep["other_blocks"] == {"NRB": 1, "ISB": 1, "custom": 1}
    ts = np.asarray(cols["ts"])
    assert np.isfinite(ts).all() and (ts > 1e9).all()
    assert len(set(np.diff(ts).tolist())) > 3 and (np.diff(ts) == 0).sum() >= 5  # the SPBs: the time before


@pytest.mark.parametrize("chunk", [7, 61, 1000])
@pytest.mark.parametrize("window", [64, 900, 1 << 20])
def test_pcapng_streamed_is_the_one_pass_read(tmp_path: Path, chunk: int, window: int) -> None:
    got = check(write(tmp_path, "sections.pcapng", sections()), chunk, window, (0.5, 2.0))
    assert got.counts()["reused"] > 0 and got.reports[0].format == "pcapng"


def bad_trailer(data: bytes) -> tuple[list[int], bytearray]:
    """The offsets of the file's EPBs, and the file with one EPB's trailing length (a third
    of the way in) not repeating its leading one."""
    epbs = [m for m in range(len(data) - 8) if data[m:m + 4] == b"\x06\x00\x00\x00"
            and struct.unpack_from("<I", data, m + 4)[0] in range(32, 400)]
    bad = bytearray(data)
    k = epbs[len(epbs) // 3]
    blen = struct.unpack_from("<I", bad, k + 4)[0]
    struct.pack_into("<I", bad, k + blen - 4, blen + 4)
    return epbs, bad


def test_damaged_and_truncated_pcapng(tmp_path: Path) -> None:
    """An EPB whose trailer does not repeat its length (the trusting run takes it: the
    window is walked again carefully), a block length that cannot be right
    (resynchronised), garbage between blocks, a file cut inside a block."""
    data = bytearray(sections())
    epbs, bad_tail = bad_trailer(bytes(data))
    bad_len = bytearray(data)
    struct.pack_into("<I", bad_len, epbs[len(epbs) // 2] + 4, 0x7FFFFFF0)
    garbage = bytes(data[:epbs[10]]) + b"\x17" * 37 + bytes(data[epbs[10]:])
    cases = {"tail": bytes(bad_tail), "len": bytes(bad_len), "garbage": garbage,
             "cut": bytes(data[:len(data) * 2 // 3 + 5])}
    for name, case in cases.items():
        same_frames(case)
        for size in (100, 2000):
            got = check(write(tmp_path, f"{name}.pcapng", case), 13, size)
            assert not got.reports[0].complete, name
    cut = one_pass(tmp_path / "cut.pcapng").reports[0]
    assert cut.warnings[0].startswith("truncated at byte") and cut.bytes_read < cut.bytes_total


def test_undescribed_interface(tmp_path: Path) -> None:
    """Packets naming an interface their section never describes are left out, as the
    one-pass read leaves them out, once the section has ended; an IDB that comes after
    packets naming it (legal: the one-pass read looks at the whole section) makes the
    streamed read give up, and `analyze` reads the file in one pass."""
    segs = reuse_capture(rounds=3)
    fr = frames_of(segs)
    lost = NgWriter(ifaces=[Iface(1), Iface(1)]).to_bytes([Frame(f.t, f.data, iface=i % 2) for i, f in enumerate(fr)])
    idb2 = struct.pack("<II", 1, 20) + struct.pack("<HHI", 1, 0, 262144) + struct.pack("<I", 20)
    second = lost.index(idb2, lost.index(idb2) + 1)
    no_second = lost[:second] + lost[second + 20:]  # its second IDB taken out
    later = frames_of([dataclasses.replace(x, t=x.t + 100) for x in segs[:12]])
    data = no_second + NgWriter(ifaces=[Iface(1)]).to_bytes(later)  # and a section after it
    same_frames(data, (100, 1 << 20))
    got = check(write(tmp_path, "lost.pcapng", data), 11, 1 << 20)
    assert got.reports[0].skipped["packet for an undeclared interface"] == len(fr) // 2
    late = no_second[:no_second.index(idb2) + 20]  # SHB and the first IDB
    rest = no_second[len(late):]
    late_idb = late + rest[:len(rest) // 2] + idb2 + rest[len(rest) // 2:]
    path = write(tmp_path, "late.pcapng", late_idb)
    assert analyze_streamed(str(path), 11, None, 200) is None
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis, "STREAM_MIN_BYTES", 0)
        assert comparable(analyze_paths([path], jobs=1)[0]) == comparable(one_pass(path))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_files_walk_as_one_pass(data: bytes) -> None:
    """Bit flips, truncation, random lengths, garbage and stray blocks: the streamed walk
    finds what the one-pass walk finds, window by window."""
    if len(data) >= 4 and struct.unpack("<I", data[:4])[0] == formats.PCAPNG_SHB:
        same_frames(data, (1, 37, 256))


def test_seed_pcapng_is_a_seed() -> None:
    assert any(struct.unpack("<I", s[:4])[0] == formats.PCAPNG_SHB for s in SEEDS)


def test_command_streams_a_large_pcapng(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcpreuse analyze FILE.pcapng` (terminal and --json) of STREAM_MIN_BYTES or more
    is streamed, with the one-pass output; in a set, pcapng is still read in one pass."""
    p = write(tmp_path, "sections.pcapng", sections())
    used = spy_streamed(monkeypatch)
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    streamed = terminal_and_json(cli, [str(p)])
    assert used == [True, True]
    monkeypatch.setenv("TCPREUSE_CAPTURE_CHUNKED", "0")
    assert terminal_and_json(cli, [str(p)]) == streamed


def test_rotated_set_of_pcapng_pcap_and_gzip(tmp_path: Path) -> None:
    """A capture rotated into files of several kinds (dumpcap's pcapng ring buffer, a
    tcpdump pcap, a compressed one), given in any order: one stream in time order, the
    one-pass merge's result; reuses across files joined."""
    segs = reuse_capture(rounds=8)
    n = len(segs)
    cuts = [0, n // 4, n // 2 + 1, 3 * n // 4, n]
    kinds = ["pcapng", "pcap", "pcapng", "gz"]
    paths = []
    for k, (a, b) in enumerate(itertools.pairwise(cuts)):
        fr = frames_of(segs[a:b])
        if kinds[k] == "pcapng":
            data = NgWriter(ifaces=[Iface(1, tsresol=9)], big_endian=k == 2).to_bytes(fr)
        else:
            data = pcap_bytes(fr)
        name = f"cap_{k:05d}.{'pcapng' if kinds[k] == 'pcapng' else 'pcap'}"
        if kinds[k] == "gz":
            data, name = gzip.compress(data, mtime=0), name + ".gz"
        paths.append(write(tmp_path, name, data))
    files = [paths[2], paths[0], paths[3], paths[1]]
    got = analyze_streamed([str(p) for p in files], 9, None, 300)
    assert got is not None
    assert comparable(got) == comparable(analyze_paths(files, jobs=1)[0])
    a = got.attempts
    m = a["prev"] >= 0
    assert (a["file"][m] != a["file"][a["prev"][m]]).sum() > 0
    assert [r.format for r in got.reports] == ["pcapng", "pcapng", "pcap", "pcap"]  # command-line order


# ---- gzip-compressed pcapng, inflated a window at a time --------------------------------


def frames_streamed_gz(path: Path, window: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    rep = formats.ReadReport(path=str(path))
    src = capwin.InflatingWindow(path)
    try:
        got = list(formats.scan_pcapng(src, rep, window))
    finally:
        src.close()
    cols = {c: [x for f in got for x in getattr(f, c).tolist()] for c in COLS}
    return cols, rep.to_json()


def same_frames_gz(tmp_path: Path, data: bytes, windows: tuple[int, ...] = (1, 50, 333, 4096),
                   cut: int | None = None) -> int:
    """:func:`same_frames` for the file compressed (and the compressed bytes cut at
    `cut`): the one-pass read inflates it whole. Returns how many windows were compared."""
    raw = gzip.compress(data, mtime=0)
    path = write(tmp_path, "x.pcapng.gz", raw[:cut])

    def one_pass_read() -> tuple[dict[str, list[Any]], dict[str, Any]]:
        fr = formats.read_frames(path)
        return {c: getattr(fr, c).tolist() for c in COLS}, fr.report.to_json()

    return agree_over_windows(one_pass_read, lambda w: frames_streamed_gz(path, w), windows)


@pytest.fixture
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capwin, "GZIP_STEP", 256)  # pieces end inside blocks
    monkeypatch.setattr(formats, "NG_AHEAD", 64)  # the window is a few blocks
    monkeypatch.setattr(formats, "MAX_LOOKAHEAD", 1 << 12)  # a long length is looked ahead for or refused
    monkeypatch.setattr(formats, "MAX_RESYNC_SCAN", 2048)  # (both reads) a resynchronisation within the window


def test_gzip_pcapng_walked_in_windows(tmp_path: Path, small_steps: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sections, interfaces and blocks; damaged (a bad EPB trailer: the window walked
    again; garbage: resynchronised), truncated compressed streams. A resynchronisation
    that meets a length reaching past what may be inflated ahead (MAX_LOOKAHEAD; a
    timestamp read as a length) cannot be decided: the streamed read gives up."""
    data = sections()
    assert same_frames_gz(tmp_path, data) == 4
    raw_len = len(gzip.compress(data, mtime=0))
    assert same_frames_gz(tmp_path, data, cut=raw_len * 2 // 3) == 4
    epbs, bad_tail = bad_trailer(data)
    garbage = data[:epbs[10]] + b"\x17" * 37 + data[epbs[10]:]
    for case in (bytes(bad_tail), garbage):
        same_frames_gz(tmp_path, case)  # compared where it can be decided
        with monkeypatch.context() as m:
            m.setattr(formats, "MAX_LOOKAHEAD", 1 << 20)
            assert same_frames_gz(tmp_path, case) == 4


@pytest.mark.parametrize("chunk", [7, 1000])
def test_gzip_pcapng_analysis(tmp_path: Path, chunk: int, small_steps: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole analysis of a .pcapng.gz streamed is the one-pass one; a damaged length
    that would have to be looked for further ahead than MAX_LOOKAHEAD in the inflating
    file makes the streamed read give up, and `analyze` reads it in one pass."""
    p = write(tmp_path, "s.pcapng.gz", gzip.compress(sections(), mtime=0))
    got = check(p, chunk, 500, (0.5, 2.0))
    assert got.reports[0].format == "pcapng" and got.counts()["reused"] > 0
    data = bytearray(sections())
    epbs = [m for m in range(len(data) - 8) if data[m:m + 4] == b"\x06\x00\x00\x00"
            and struct.unpack_from("<I", data, m + 4)[0] in range(32, 400)]
    struct.pack_into("<I", data, epbs[len(epbs) // 2] + 4, 0x7FFFFFF0)
    p = write(tmp_path, "len.pcapng.gz", gzip.compress(bytes(data), mtime=0))
    assert analyze_streamed(str(p), chunk, None, 500) is None
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    assert comparable(analyze_paths([p], jobs=1)[0]) == comparable(one_pass(p))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(mutated())
def test_mutated_gzip_pcapng_walks_as_one_pass(tmp_path: Path, data: bytes) -> None:
    if len(data) >= 4 and struct.unpack("<I", data[:4])[0] == formats.PCAPNG_SHB:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(capwin, "GZIP_STEP", 64)
            mp.setattr(formats, "NG_AHEAD", 32)
            mp.setattr(formats, "MAX_LOOKAHEAD", 1 << 10)
            mp.setattr(formats, "MAX_RESYNC_SCAN", 700)
            same_frames_gz(tmp_path, data, (1, 37, 256))
