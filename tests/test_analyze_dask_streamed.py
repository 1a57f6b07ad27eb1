"""`analyze --scheduler` with streams of STREAM_MIN_BYTES or more: the worker reads a
stream's files by the streamed read (chunk by chunk, in bounded memory) and passes on
what the merge needs of each file — its IPv6 table, its TCP packets, the median time of
its packets (from a spill to a temporary file) — so the merged result is still the
in-process one, attempt for attempt (threshold lowered here to take the small fleet;
the task function is the one Dask workers run)."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.fleet import assert_same, make_fleet

from tcpreuse.capture import analysis, backend, distributed, flows
from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.capture.distributed import analyze_streams

pytestmark = pytest.mark.skipif(backend.c_extension() is None, reason="the streamed read needs the C extension")


def test_streamed_parts_merge_as_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = make_fleet(tmp_path)
    web = [f for f in fleet if f.name.startswith("web")]
    gz = web[1].with_name(web[1].name + ".gz")  # one rotated file compressed (tcpdump -z gzip)
    gz.write_bytes(gzip.compress(web[1].read_bytes(), mtime=0))
    web[1].unlink()
    junk = tmp_path / "web.pcap9"  # a stray file in the web stream: reported, skipped
    junk.write_bytes(b"not a capture at all")
    files = [gz if f == web[1] else f for f in fleet] + [junk]
    want = analyze_paths(files, jobs=1)[0]  # under the threshold: one pass
    streamed: list[int] = []
    real = distributed._streamed_part

    def spy(*a: Any) -> Any:
        got = real(*a)
        if got is not None:
            streamed.append(len(got.members))
        return got

    monkeypatch.setattr(analysis, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(analysis, "SPILL_BINS", 4)  # medians found by narrowing, several reads
    monkeypatch.setattr(analysis, "SPILL_BLOCK", 5)
    monkeypatch.setattr(distributed, "_streamed_part", spy)
    got = analyze_streams(files)[0]
    assert_same(got, want)
    assert 4 in streamed and len(streamed) >= 5  # web (4 files + the stray one), db, v6 a/b, edge (joined)
    assert got.counts()["reused"] > 40 and not got.complete
    per_file = analyze_streams(files[:3], merge=False)
    with monkeypatch.context() as m:
        m.setattr(analysis, "STREAM_MIN_BYTES", 1 << 40)
        for a, b in zip(per_file, analyze_paths(files[:3], merge=False, jobs=1), strict=True):
            assert_same(a, b)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 1001])
def test_spilled_median(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The median of values spilled to a file is flows.median's, found in bounded memory
    (bins narrowed until one holds few values), for spread, tied and repeated times."""
    monkeypatch.setattr(analysis, "SPILL_BINS", 4)
    monkeypatch.setattr(analysis, "SPILL_BLOCK", 7)
    rng = np.random.default_rng(n)
    for v in (rng.normal(1.7e9, 50, n), 1.7e9 + rng.integers(0, 3, n) * 1e-6, np.full(n, 1.7e9),
              np.round(rng.uniform(0, 5, n), 1) + 1.7e9):
        with tempfile.TemporaryFile() as fh:
            for part in np.array_split(v, 3):
                part.tofile(fh)
            assert analysis.spilled_median(fh, n, float(v.min()), float(v.max())) == flows.median(v)
