"""A small fleet of capture files (two hosts, rotated files) and the comparison of analyses, shared by the Dask tests."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from tcpreuse.capture.analysis import CaptureAnalysis
from tcpreuse.capture.synth import Seg, frames_of, handshake, pcap_bytes

T0 = 1_765_000_000.0


def _conns(rng: random.Random, server: str, sport: int, clients: list[str], n: int, t0: float,
           span: float) -> list[tuple[float, str, int, str, int]]:
    """n connections over `span` s; every third one reuses an earlier 4-tuple 10-20 s later."""
    out: list[tuple[float, str, int, str, int]] = []
    for k in range(n):
        t = t0 + rng.uniform(0, span)
        if k % 3 == 2 and out:
            _, c, cp, _, _ = rng.choice(out)
            t = max(o[0] for o in out if o[1] == c and o[2] == cp) + rng.uniform(10, 20)
        else:
            c, cp = rng.choice(clients), rng.randrange(32768, 61000)
        out.append((t, c, cp, server, sport))
    return out


def _segs(rng: random.Random, conns: list[tuple[float, str, int, str, int]]) -> list[Seg]:
    segs: list[Seg] = []
    for t, c, cp, s, sp in conns:
        segs += handshake(t, c, cp, s, sp, rng.getrandbits(32), rng.getrandbits(32),
                          ts=(rng.getrandbits(31), rng.getrandbits(31)), server_closes=rng.random() < 0.7)
    segs.sort(key=lambda s: s.t)
    return segs


def _write(path: Path, segs: list[Seg]) -> None:
    path.write_bytes(pcap_bytes(frames_of(segs)))


def _rotate(d: Path, names: list[str], segs: list[Seg]) -> list[Path]:
    """segs cut into len(names) files of equal time spans (as tcpdump -G would)."""
    lo, hi = segs[0].t, segs[-1].t + 1e-6
    step = (hi - lo) / len(names)
    out = []
    for k, name in enumerate(names):
        part = [s for s in segs if lo + k * step <= s.t < lo + (k + 1) * step]
        _write(d / name, part)
        out.append(d / name)
    return out


def make_fleet(d: Path) -> list[Path]:
    rng = random.Random(16)
    nat = "10.9.0.1"  # one NAT address in front of clients of two servers
    web = _segs(rng, _conns(rng, "10.1.0.1", 80, [nat, "10.2.0.2", "10.2.0.3"], 60, T0, 120))
    db = _segs(rng, _conns(rng, "10.3.0.1", 5432, [nat, "10.4.0.2"], 30, T0 + 5, 100))
    v6a = _segs(rng, _conns(rng, "fd00::1", 443, ["fd00::10", "fd00::11"], 20, T0, 90))
    v6b = _segs(rng, _conns(rng, "fd00::2", 443, ["fd00::12", "fd00::10"], 20, T0 + 2, 90))
    edge = _segs(rng, _conns(rng, "10.5.0.1", 8080, ["10.6.0.1"], 30, T0, 100))
    files = _rotate(d, ["web.pcap", "web.pcap1", "web.pcap2", "web.pcap3"], web)
    files += _rotate(d, ["db-20261207-140000.pcap", "db-20261207-140100.pcap"], db)
    (d / "v6").mkdir()
    _write(d / "v6" / "a.pcap", v6a)
    _write(d / "v6" / "b.pcap", v6b)
    files += [d / "v6" / "a.pcap", d / "v6" / "b.pcap"]
    files += _rotate(d, ["edge-first.pcap", "edge-second.pcap"], edge)
    # out of time order on the command line, as a glob of -C names would give them
    order = [3, 1, 0, 2, 5, 4, 6, 7, 9, 8]
    return [files[i] for i in order]


def assert_same(a: CaptureAnalysis, b: CaptureAnalysis) -> None:
    assert a.files == b.files and a.v6 == b.v6
    assert sorted(a.attempts.cols) == sorted(b.attempts.cols)
    for k, x in a.attempts.cols.items():
        y = b.attempts.cols[k]
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), k
    assert np.array_equal(a.attempts.history, b.attempts.history)
    ja, jb = a.to_json(), b.to_json()
    ja.pop("timing_s")
    jb.pop("timing_s")
    assert ja == jb
    assert a.export_columns() == b.export_columns()
