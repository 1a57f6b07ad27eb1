"""`tcpreuse analyze` on damaged input, as a user meets it: a gzip stream with flipped
bytes or cut short, a record timestamp far out of range, a truncated file, a capture
of about a second — each read as far as it goes, said plainly, never a traceback."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import Cli

from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.capture.synth import Frame, NgWriter, Seg, frames_of, handshake, pcap_bytes

T0 = 1_700_000_000.0
C, S = "10.0.0.5", "10.0.0.1"


def conns(n: int, span: float, t0: float = T0) -> list[Seg]:
    segs: list[Seg] = []
    for k in range(n):
        segs += handshake(t0 + span * k / max(n - 1, 1), C, 40000 + k, S, 80, 1000 * k + 1, 7000 * k + 3,
                          ts=(100_000 + k, 9_000 + k))
    return sorted(segs, key=lambda s: s.t)


def big_pcap() -> bytes:
    return pcap_bytes(frames_of(conns(400, 8.0)))


def analyze(cli: Cli, path: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = cli(["analyze", str(path), "--json", *extra])
    assert "Traceback" not in err and "Traceback" not in out
    return code, (json.loads(out) if out.strip() else {}), err


def test_gzip_with_flipped_bytes_is_read_up_to_the_damage(cli: Cli, tmp_path: Path) -> None:
    gz = bytearray(gzip.compress(big_pcap()))
    for k in range(6):  # inside the deflate stream, past its first third
        gz[len(gz) // 2 + 97 * k] ^= 0xA5
    p = tmp_path / "flipped.pcap.gz"
    p.write_bytes(bytes(gz))
    code, doc, err = analyze(cli, p)
    assert code == 0, err
    rep = doc["files"][0]
    assert "gzip stream damaged" in rep["gzip_damage"] and not rep["complete"]
    assert 20 <= doc["counts"]["attempts"] <= 400
    assert "gzip stream damaged at compressed byte" in err
    code, _, err = analyze(cli, p, "--strict")
    assert code == 2 and "not read completely" in err and len(err.strip().splitlines()) <= 3


def test_truncated_gzip_is_analysed_as_far_as_it_inflated(cli: Cli, tmp_path: Path) -> None:
    gz = gzip.compress(big_pcap())
    p = tmp_path / "cut.pcap.gz"
    p.write_bytes(gz[: len(gz) * 6 // 10])
    code, doc, err = analyze(cli, p)
    assert code == 0, err
    rep = doc["files"][0]
    assert rep["gzip_damage"].startswith("gzip stream truncated")
    assert 100 <= doc["counts"]["attempts"] < 400  # the first ~60 %, not nothing
    an = analyze_paths([p])[0]
    assert "truncated gzip stream" in an.reports[0].summary() and "100" not in an.reports[0].summary().split("(")[1][:4]
    # nothing at all inflated: one line, exit 2
    (tmp_path / "head.pcap.gz").write_bytes(gz[:12])
    code, _out, err = cli(["analyze", str(tmp_path / "head.pcap.gz")])
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


def test_truncated_file_is_not_rounded_to_100_percent(tmp_path: Path) -> None:
    data = big_pcap()
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:-81])  # inside the last record: 99.97 % of the bytes
    rep = analyze_paths([p])[0].reports[0]
    s = rep.summary()
    assert "100" not in s.split("(")[1] and "99.9 %" in s and "truncated" in s, s
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(data)
    assert "(100 %)" in analyze_paths([whole])[0].reports[0].summary()


def test_absurd_record_timestamp_is_left_out_and_said(cli: Cli, tmp_path: Path,
                                                      reader_path: str) -> None:
    """One EPB whose timestamp is 7e12 s away: the capture still spans ~2 s and the
    rate and timeline are those of the real packets."""
    fr = frames_of(conns(30, 2.0))
    fr[40] = Frame(7_061_644_215_716.0 + T0, fr[40].data)
    p = tmp_path / "far.pcapng"
    p.write_bytes(NgWriter().to_bytes(fr))
    an = analyze_paths([p])[0]
    assert an.t_last - an.t_first < 3
    rep = an.reports[0]
    assert rep.bad_times == 1 and rep.skipped["timestamp far outside the rest of the capture"] == 1
    assert any("left out" in w and "away from the rest of the capture" in w for w in rep.warnings)
    rr = an.to_run_result()
    assert rr.timeline.step_s == 1.0 and len(rr.timeline.t) <= 3
    assert an.sources[0].span_s < 3 and an.sources[0].rate_per_s > 10
    code, out, err = cli(["analyze", str(p)])
    assert code == 0 and "TCP packets over 2.0 s" in out and "left out" in err


@pytest.fixture(params=["c", "python"])
def reader_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The C extension's record walk (when built) and the numpy reference."""
    from tcpreuse.capture import backend

    lib = backend.c_extension()
    if request.param == "c" and lib is None:
        pytest.skip("C extension not built")
    monkeypatch.setattr(backend, "ACTIVE", backend.CBackend(lib) if request.param == "c" and lib is not None
                        else backend.NumpyBackend())
    return str(request.param)


def test_damaged_first_record_time_does_not_lose_the_file(tmp_path: Path, reader_path: str) -> None:
    """The pcap reader bounds times by the first records' median, not by the first alone."""
    data = bytearray(big_pcap())
    struct.pack_into("<I", data, 24, 0x7FFFFFF0)  # the first record's seconds
    p = tmp_path / "first.pcap"
    p.write_bytes(bytes(data))
    an = analyze_paths([p])[0]
    assert an.counts()["attempts"] >= 399 and an.t_last - an.t_first < 9


@pytest.mark.parametrize("n, span", [(100, 0.4), (50, 1.0), (30, 1.3), (2, 0.0)])
def test_peak_rate_is_never_below_the_mean(tmp_path: Path, n: int, span: float) -> None:
    p = tmp_path / "short.pcap"
    p.write_bytes(pcap_bytes(frames_of(conns(n, span, T0 + 0.75))))  # starts mid-second
    s = analyze_paths([p])[0].sources[0]
    assert s.peak_per_s >= s.rate_per_s, s
    if 0 < span <= 1.0:
        assert s.peak_per_s == pytest.approx(s.rate_per_s)  # the capture is the busiest window


def test_syn_retransmissions_counted_as_attempts_and_packets(cli: Cli, tmp_path: Path) -> None:
    segs: list[Seg] = []
    for k in range(2):  # two attempts, each SYN sent three times, never answered
        segs += [Seg(T0 + 10 * k + d, C, 41000 + k, S, 80, "S", 555 + k, mss=1460) for d in (0.0, 1.0, 3.0)]
    segs += handshake(T0 + 30, C, 42000, S, 80, 1, 2)
    p = tmp_path / "rtx.pcap"
    p.write_bytes(pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t))))
    c = analyze_paths([p])[0].counts()
    assert (c["syn_retried"], c["syn_retransmissions"]) == (2, 4)
    code, out, _ = cli(["analyze", str(p)])
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("SYN retransmitted"))
    assert "in 2 attempts" in row and "4 SYN packets resent" in row, row
    assert np.isfinite(c["attempts"])


CRASHERS = Path(__file__).parent / "data" / "pcap" / "crashers"
# found by bench/fuzz_captures.py (gzip kind) before the fix: each raised zlib.error with a
# traceback. Now: analysed as far as the stream inflated, or one error line when nothing did.
CRASHER_EXIT = {"zlib-case581.pcap.gz": 0, "zlib-case834.pcapng.gz": 0,
                "zlib-case328.pcap.gz": 2, "zlib-case295.pcapng.gz": 2}


@pytest.mark.parametrize("name", sorted(CRASHER_EXIT))
def test_fuzz_crashers(cli: Cli, name: str) -> None:
    path = CRASHERS / name
    assert path.stat().st_size < 50_000
    code, doc, err = analyze(cli, path)
    assert code == CRASHER_EXIT[name], err
    if code == 0:
        assert doc["files"][0]["gzip_damage"].startswith("gzip stream damaged at compressed byte")
        assert doc["counts"]["attempts"] > 0
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "nothing could be inflated from this gzip stream" in lines[0], err
