"""Capture helpers shared by the chunked, gzip-stream and pcapng-stream tests: one-pass references, comparable columns, rotated sets, a spy on the streamed read."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from helpers.captures import T0
from tcpreuse.capture import analysis
from tcpreuse.capture.analysis import analyze_packets, analyze_paths
from tcpreuse.capture.decode import decode
from tcpreuse.capture.formats import read_frames
from tcpreuse.capture.synth import Seg, frames_of, handshake, pcap_bytes


def one_pass(path: Path) -> analysis.CaptureAnalysis:
    fr = read_frames(path)
    return analyze_packets(decode(fr), [fr.report], [str(path)])


def comparable(an: analysis.CaptureAnalysis) -> dict[str, Any]:
    a = an.attempts
    cols = {k: [None if x != x else x for x in v.tolist()] for k, v in a.cols.items()}
    dtypes = {k: str(v.dtype) for k, v in a.cols.items()}
    js = an.to_json()
    js.pop("timing_s")
    return {"cols": cols, "dtypes": dtypes, "history": a.history_str(), "json": js, "v6": an.v6}


def reuse_capture(rounds: int = 6, ports: int = 5, gap: float = 3.0) -> list[Seg]:
    """Clients cycling through a few ports to two servers, round after round: every
    4-tuple reused (server-side TIME_WAIT, timestamps for the recycle replay), some
    attempts retried or refused, IPv6 beside IPv4."""
    segs: list[Seg] = []
    for r in range(rounds):
        for i in range(ports):
            t = T0 + r * gap + i * 0.01
            c, s = ("2001:db8::5", "2001:db8::1") if i % 3 == 0 else ("10.0.0.5", "10.0.0.1")
            isn = 1000 + r * 100_000 + i * 7 if r % 2 == 0 else 900 - r  # ISNs going back: paws / old ACKs
            segs += handshake(t, c, 40000 + i, s, 80 + (i % 2), isn, 5000 + r, ts=(r * 1000 + i, 7 + r),
                              server_closes=(i + r) % 2 == 0)
            if i == 1:  # a retransmitted SYN of another attempt, unanswered
                segs += [Seg(t + 0.001, c, 41000 + r, s, 80, "S", 55), Seg(t + 1.001, c, 41000 + r, s, 80, "S", 55)]
            if i == 2:  # refused
                segs += [Seg(t, c, 42000, s, 9, "S", 10 + r), Seg(t + 0.0001, s, 9, c, 42000, "RA", 0, 11 + r)]
    segs.sort(key=lambda s: s.t)
    return segs


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def spy_streamed(monkeypatch: pytest.MonkeyPatch, note: Any = lambda got: got is not None) -> list[Any]:
    """analysis.analyze_streamed watched: the list gets note(its result) at each call."""
    seen: list[Any] = []
    real = analysis.analyze_streamed

    def spy(*a: Any, **kw: Any) -> Any:
        got = real(*a, **kw)
        seen.append(note(got))
        return got

    monkeypatch.setattr(analysis, "analyze_streamed", spy)
    return seen


def terminal_and_json(cli: Any, args: list[str]) -> tuple[str, dict[str, Any]]:
    """`analyze ARGS` as the terminal shows it and as --json gives it (less its timings)."""
    code, text, err = cli(["analyze", *args])
    assert code == 0, err
    code, out, err = cli(["analyze", *args, "--json"])
    assert code == 0, err
    js = json.loads(out)
    js.pop("timing_s")
    return text, js


def rotated(tmp_path: Path, segs: list[Seg], cuts: list[int], name: str = "cap.pcap") -> list[Path]:
    """One capture cut into files at packet indexes `cuts`, named as tcpdump -C names
    them (cap.pcap, cap.pcap1, cap.pcap2, ...)."""
    fr = frames_of(segs)
    bounds = [0, *cuts, len(fr)]
    return [write(tmp_path, name + (str(k) if k else ""), pcap_bytes(fr[a:b]))
            for k, (a, b) in enumerate(itertools.pairwise(bounds))]


def merged_one_pass(paths: list[Path]) -> analysis.CaptureAnalysis:
    """Today's merge of several files: each read whole, joined in file_order_key order."""
    assert sum(p.stat().st_size for p in paths if p.exists()) < analysis.STREAM_MIN_BYTES
    return analyze_paths(paths, jobs=1)[0]


def reused_across_files(an: analysis.CaptureAnalysis) -> int:
    """Attempts whose previous connection on the 4-tuple is in another file."""
    a = an.attempts
    m = a["prev"] >= 0
    return int((a["file"][m] != a["file"][a["prev"][m]]).sum())


def check_set_fallback(paths: list[Path]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analysis, "STREAM_MIN_BYTES", 0)
        got = analyze_paths(paths, jobs=1)[0]
    assert comparable(got) == comparable(merged_one_pass(paths))
