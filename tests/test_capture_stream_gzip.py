"""gzip-compressed captures read in bounded memory: a .pcap.gz of STREAM_MIN_BYTES or
more (its size estimated from the gzip trailer) is inflated a window at a time into the
same windowed record scan and chunked build as a plain pcap file
(capwin.InflatingWindow, analysis.analyze_streamed). The result is the one-pass read
of the file inflated whole: every attempt column, the JSON and the read report — with
tiny windows, inflation steps and chunks putting boundaries everywhere, several gzip
members, zero padding, a truncated or damaged gzip stream and damaged records inside."""

from __future__ import annotations

import gzip
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import windows_reuse
from helpers.chunked import (
    check_set_fallback,
    comparable,
    one_pass,
    reuse_capture,
    reused_across_files,
    rotated,
    spy_streamed,
    terminal_and_json,
)

from tcpreuse.capture import analysis, backend, chunked, formats
from tcpreuse.capture import decode as decode_mod
from tcpreuse.capture import window as capwin
from tcpreuse.capture.analysis import analyze_paths, analyze_streamed
from tcpreuse.capture.decode import decode, stream_pcap
from tcpreuse.capture.synth import frames_of, pcap_bytes

LIB = backend.c_extension()
pytestmark = pytest.mark.skipif(LIB is None, reason="the streamed read needs the C extension")


@pytest.fixture(autouse=True)
def small_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inflate 256 compressed bytes at a time (for both reads: a damaged stream's message
    names the step where inflating failed), so pieces end inside records."""
    monkeypatch.setattr(capwin, "GZIP_STEP", 256)


def gz(path: Path, data: bytes, level: int = 6) -> Path:
    path.write_bytes(gzip.compress(data, compresslevel=level, mtime=0))
    return path


def check(path: Path, chunk: int, window: int | None = None, idle: tuple[float, float] | None = None
          ) -> analysis.CaptureAnalysis:
    b = chunked.ChunkBuilder(*idle) if idle else None
    got = analyze_streamed(str(path), chunk, b, window)
    assert got is not None, "the streamed read gave up"
    assert comparable(got) == comparable(one_pass(path))
    return got


@pytest.mark.parametrize("chunk", [7, 61, 1000])
@pytest.mark.parametrize("window", [97, 5000, None])
def test_gzip_streamed_is_the_one_pass_read(tmp_path: Path, chunk: int, window: int | None) -> None:
    """4-tuples reused across chunk, scan-window and inflation boundaries; the report
    (format, bytes read of the inflated size) is the one-pass one."""
    data = pcap_bytes(frames_of(reuse_capture()))
    got = check(gz(tmp_path / "reuse.pcap.gz", data), chunk, window, (0.5, 2.0))
    rep = got.reports[0]
    assert rep.bytes_total == rep.bytes_read == len(data) and rep.complete and rep.format == "pcap"
    assert got.counts()["reused"] > 0


def test_gzip_members_padding_and_damaged_records(tmp_path: Path) -> None:
    """Several gzip members (`cat a.gz b.gz`), zero padding after the last one, and
    damaged records inside (a length that cannot be right, resynchronised after)."""
    data = bytearray(pcap_bytes(frames_of(reuse_capture(rounds=8))))
    cut = len(data) // 3
    members = gzip.compress(bytes(data[:cut]), mtime=0) + gzip.compress(bytes(data[cut:]), mtime=0)
    p = tmp_path / "members.pcap.gz"
    p.write_bytes(members + b"\0" * 700)
    for size in (61, 4000):
        check(p, 13, size)
    data[cut + 40:cut + 44] = b"\xff\xff\xff\x7f"
    data[2 * cut:2 * cut + 200] = bytes(200)
    got = check(gz(tmp_path / "damaged.pcap.gz", bytes(data)), 17, 300)
    assert got.reports[0].garbage_bytes > 0 and any("resynchronised" in w for w in got.reports[0].warnings)


def test_truncated_gzip(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .pcap.gz cut short (a capture still being written, a copy that stopped): what
    inflated is analysed, the report says how far it got, as the one-pass read does;
    the command warns in one line."""
    data = pcap_bytes(frames_of(reuse_capture(rounds=8)))
    whole = gzip.compress(data, mtime=0)
    p = tmp_path / "cut.pcap.gz"
    p.write_bytes(whole[:len(whole) * 3 // 5])
    got = check(p, 11, 200)
    rep = got.reports[0]
    assert not rep.complete and rep.gzip_damage.startswith("gzip stream truncated")
    assert 0 < rep.bytes_read <= rep.bytes_total < len(data)
    assert "truncated gzip stream inflated to" in rep.summary()
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    text, js = terminal_and_json(cli, [str(p)])
    assert js["files"][0]["gzip_damage"] == rep.gzip_damage
    warned = [line for line in text.splitlines() if line.lstrip().startswith("! gzip stream truncated")]
    assert len(warned) == 1 and rep.gzip_damage in warned[0]


def test_damaged_gzip_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gzip stream damaged inside: what inflated before the damage is analysed and
    the damage position reported, as the one-pass read reports it. Stored (level 0)
    blocks with a broken block header cut the output there; compressed bytes flipped
    in the middle inflate to garbage first (copies of older packets), which the
    streamed read cannot build as one pass does: `analyze` then reads it in one pass."""
    data = pcap_bytes(frames_of(reuse_capture(rounds=30)))
    raw = bytearray(zlib.compress(data, 0, wbits=31))
    first = struct.unpack_from("<HH", raw, 11)  # gzip header (10 bytes), a stored block: 1 + LEN + NLEN
    assert first[0] ^ first[1] == 0xFFFF and first[0] < len(data)
    second = 10 + 5 + first[0]
    raw[second + 3] ^= 0x10  # its NLEN no longer the complement of its LEN
    p = tmp_path / "stored.pcap.gz"
    p.write_bytes(bytes(raw))
    got = check(p, 9, 150)
    rep = got.reports[0]
    assert rep.gzip_damage.startswith("gzip stream damaged at compressed byte ")
    at = int(rep.gzip_damage.split()[6].replace(",", ""))
    assert second - 64 < at <= second  # the 64-byte piece where inflating failed
    assert not rep.complete and first[0] - 64 < rep.bytes_total <= first[0] and rep.bytes_read <= rep.bytes_total
    raw = bytearray(zlib.compress(data, 6, wbits=31))
    mid = len(raw) // 2
    raw[mid:mid + 8] = bytes(b ^ 0x5A for b in raw[mid:mid + 8])
    p = tmp_path / "flipped.pcap.gz"
    p.write_bytes(bytes(raw))
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    got = analyze_paths([p], jobs=1)[0]
    assert comparable(got) == comparable(one_pass(p))
    assert got.reports[0].gzip_damage.startswith("gzip stream damaged")


def test_rotated_gzip_set(tmp_path: Path) -> None:
    """`tcpdump -C 100 -z gzip` leaves cap.pcap.gz, cap.pcap1.gz, ...: a set given in any
    order, plain and compressed files mixed, is one stream in time order; a set holding
    a gzip file that is not pcap inside is read in one pass."""
    segs = reuse_capture(rounds=6)
    n = len(segs)
    paths = rotated(tmp_path, segs, [n // 5, n // 2 + 1, n - 4])
    files = [gz(p.with_name(p.name + ".gz"), p.read_bytes()) if k % 2 == 0 else p for k, p in enumerate(paths)]
    random.Random(3).shuffle(files)
    got = analyze_streamed([str(p) for p in files], 11, None, 97)
    assert got is not None
    want = analyze_paths(files, jobs=1)[0]  # under STREAM_MIN_BYTES: the one-pass merge
    assert comparable(got) == comparable(want)
    assert reused_across_files(got) > 0
    other = gz(tmp_path / "text.pcap.gz", b"not a capture, compressed" * 10)
    assert analyze_streamed([str(p) for p in [*files, other]], 11) is None
    check_set_fallback([*files, other])


def test_command_streams_a_large_gzip(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tcpreuse analyze FILE.pcap.gz` (terminal and --json): streamed when its estimated
    inflated size reaches STREAM_MIN_BYTES, with the one-pass output."""
    p = gz(tmp_path / "reuse.pcap.gz", pcap_bytes(frames_of(reuse_capture(rounds=8))))
    used = spy_streamed(monkeypatch)
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", capwin.capture_size(p))
    streamed = terminal_and_json(cli, [str(p)])
    assert used == [True, True]
    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", capwin.capture_size(p) + 1)
    assert terminal_and_json(cli, [str(p)]) == streamed
    assert used == [True, True]  # under the threshold: not streamed


def test_inflated_size_estimate(tmp_path: Path) -> None:
    """The trailer's ISIZE is the inflated size of a one-member file; several members
    (ISIZE smaller than the compressed bytes) count as large; plain files are their size."""
    data = pcap_bytes(frames_of(reuse_capture(rounds=3)))
    one = gz(tmp_path / "one.pcap.gz", data)
    assert capwin.capture_size(one) == len(data)
    plain = tmp_path / "one.pcap"
    plain.write_bytes(data)
    assert capwin.capture_size(plain) == len(data)
    tiny = gzip.compress(b"x", mtime=0)
    members = tmp_path / "members.gz"
    members.write_bytes(gzip.compress(data, mtime=0) + tiny)
    assert capwin.capture_size(members) >= 1 << 32
    assert capwin.capture_size(tmp_path / "missing.gz") == 0
    assert struct.unpack("<I", one.read_bytes()[-4:])[0] == len(data)


def test_window_not_file_is_held(tmp_path: Path) -> None:
    """A 24 MB capture compressed: streamed in 1 MB scan windows, the inflated bytes held
    at once stay a few MB (the window and the records not yet decoded), and the packets
    are those of the one-pass decode."""
    one = pcap_bytes(frames_of(windows_reuse(n_conn=300, ports=60)))
    body = one[24:]
    data = one[:24] + body * ((24 << 20) // len(body) + 1)
    p = gz(tmp_path / "big.pcap.gz", data, level=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capwin, "GZIP_STEP", 1 << 16)
        src = capwin.InflatingWindow(p)
        rep = formats.ReadReport(path=str(p))
        try:
            got = list(stream_pcap(LIB, src, rep, 0, 1 << 20))
        finally:
            src.close()
        fr = formats.read_frames(p)
    want = decode(fr)
    assert rep.to_json() == fr.report.to_json()
    assert sum(len(pk) for pk in got) == len(want) > 200_000
    assert np.array_equal(np.concatenate([pk.seq for pk in got]), want.seq)
    assert np.array_equal(np.concatenate([pk.frame for pk in got]), want.frame)
    assert src.peak < len(data) // 4, (src.peak, len(data))


def test_damage_resynchronised_inside_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Damaged records early in a compressed file much longer than a resynchronisation
    looks ahead: the window is inflated only as far as the one-pass scan may look (not to
    the end), and the records, report and analysis are the one-pass read's."""
    monkeypatch.setattr(formats, "MAX_RESYNC_SCAN", 4096)  # both reads
    monkeypatch.setattr(decode_mod, "CHUNK", 4096)  # records decoded (and let go) together, both reads
    data = bytearray(pcap_bytes(frames_of(sorted(windows_reuse(n_conn=6000, ports=300, gap=0.02),
                                                 key=lambda s: s.t))))
    assert len(data) > 4 * (formats.MAX_RESYNC_SCAN + 3 * (16 + formats.MAX_RECORD))
    rec = formats.read_frames(write_tmp(tmp_path, bytes(data))).data_off - 16
    for at in (5000, 90_000):  # a record length that cannot be right, in a record header
        h = int(rec[np.searchsorted(rec, at)])
        data[h + 8:h + 12] = b"\xff\xff\xff\x7f"
    data[200_000:200_300] = bytes(300)
    p = gz(tmp_path / "damaged.pcap.gz", bytes(data))
    src = capwin.InflatingWindow(p)
    rep = formats.ReadReport(path=str(p))
    try:
        got = list(stream_pcap(LIB, src, rep, 0, 20_000))
    finally:
        src.close()
    fr = formats.read_frames(p)
    want = decode(fr)
    assert rep.to_json() == fr.report.to_json() and rep.garbage_bytes > 0 and len(rep.warnings) == 3, rep.warnings
    assert np.array_equal(np.concatenate([pk.frame for pk in got]), want.frame)
    assert np.array_equal(np.concatenate([pk.seq for pk in got]), want.seq)
    assert src.peak < len(data) // 3, (src.peak, len(data))
    check(p, 500, 20_000)


def write_tmp(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "plain.pcap"
    p.write_bytes(data)
    return p
