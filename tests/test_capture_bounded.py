"""Decoding a pcap file in windows: the same result, and the file's pages given back.

The C backend decodes a pcap file DECODE_WINDOW records at a time, releasing the
memory-mapped pages behind each window (window.release_pages), so that while the packet
table fills, the file's share of resident memory shrinks to the window. Windows down to
one record must change nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.captures import windows_reuse

from tcpreuse.capture import backend, formats
from tcpreuse.capture import decode as decode_mod
from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.capture.synth import frames_of, pcap_bytes

LIB = backend.c_extension()
pytestmark = pytest.mark.skipif(LIB is None, reason="C extension not built")


def result(path: Path) -> dict[str, Any]:
    an = analyze_paths([path], jobs=1)[0]
    doc = an.to_json()
    doc.pop("timing_s")
    return {"json": doc, "rows": an.export_columns()}


@pytest.mark.parametrize("records", [1, 5, 64])
def test_windows_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: int) -> None:
    data = bytearray(pcap_bytes(frames_of(windows_reuse(n_conn=300, ports=60))))
    path = tmp_path / "reuse.pcap"
    path.write_bytes(data[: len(data) - 5])  # and cut inside the last record
    monkeypatch.setattr(backend, "ACTIVE", backend.CBackend(LIB))
    want = result(path)
    assert want["json"]["counts"]["reused"] > 100 and not want["json"]["complete"]
    with monkeypatch.context() as m:
        m.setattr(decode_mod, "CHUNK", records)
        m.setattr(decode_mod, "DECODE_WINDOW", 3 * records)
        assert result(path) == want
    monkeypatch.setattr(backend, "ACTIVE", backend.NumpyBackend())
    assert result(path) == want


def rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_pages_behind_the_window_are_given_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 24 MB capture decoded in windows of 8,192 records leaves a few MB of it resident
    (the scan before it maps the whole file: it stays the reference for what is there)."""
    one = pcap_bytes(frames_of(windows_reuse(n_conn=300, ports=60)))
    body = one[24:]
    path = tmp_path / "big.pcap"
    with open(path, "wb") as f:
        f.write(one[:24])
        for _ in range((24 << 20) // len(body) + 1):
            f.write(body)
    monkeypatch.setattr(backend, "ACTIVE", backend.CBackend(LIB))
    monkeypatch.setattr(decode_mod, "DECODE_WINDOW", 1 << 13)
    before = rss_file_kb()
    fr = formats.read_frames(path)
    after_scan = rss_file_kb() - before
    pk = decode_mod.decode(fr)
    after_decode = rss_file_kb() - before
    assert len(pk) > 200_000 and np.all(np.diff(pk.frame) > 0)
    size_kb = path.stat().st_size // 1024
    assert after_scan > size_kb // 2, (after_scan, size_kb)  # the measurement sees the mapping
    assert after_decode < size_kb // 4, (after_decode, size_kb)
    fr.buf.close()
