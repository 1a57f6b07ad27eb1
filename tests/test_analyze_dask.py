"""`analyze --scheduler`: a fleet's captures analysed one capture point per task, merged.

The merged result must be the in-process one (`analyze FILES`), attempt for attempt:
the fleet below has rotated files of one host given out of time order (a 4-tuple reused
across each file boundary), tcpdump -G names, IPv6 hosts whose address tables differ
per file, a NAT address seen by several servers, and two files of one capture point
whose names do not say so (joined because they share an address pair). The slow test
runs it on a real `dask scheduler` with two `dask worker` processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cli
from helpers.dask import deploy
from helpers.fleet import _conns, _rotate, _segs, assert_same, make_fleet

from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.capture.distributed import analyze_streams, group_streams, stream_key

T0 = 1_765_000_000.0


@pytest.fixture
def fleet(tmp_path: Path) -> list[Path]:
    return make_fleet(tmp_path)


def test_stream_names() -> None:
    same = [("d/cap.pcap", "d/cap.pcap12"), ("d/cap.pcap00", "d/cap.pcap07"),
            ("d/h-20261207-140000.pcap", "d/h-20261207-150000.pcap"),
            ("d/h_2026-12-07_14:00:00.pcapng", "d/h_2026-12-08_09:30:00.pcapng"),
            ("d/h.1765000000.pcap", "d/h.1765003600.pcap"), ("d/h-140000.pcap2", "d/h-150000.pcap")]
    for x, y in same:
        assert stream_key(x) == stream_key(y), (x, y)
    apart = [("d/web1.pcap", "d/web2.pcap"), ("d/web-01.pcap", "d/web-02.pcap"), ("a/cap.pcap", "b/cap.pcap"),
             ("d/10.0.0.1.pcap", "d/10.0.0.2.pcap"), ("d/cap.pcap", "d/cap2.pcap")]
    for x, y in apart:
        assert stream_key(x) != stream_key(y), (x, y)
    assert group_streams(["w.pcap1", "db.pcap", "w.pcap", "w.pcap2"]) == [[0, 2, 3], [1]]


def test_streams_equal_in_process(fleet: list[Path]) -> None:
    notes: list[str] = []
    got = analyze_streams(fleet, progress=notes.append)
    want = analyze_paths(fleet, jobs=1)
    assert len(got) == len(want) == 1
    assert_same(got[0], want[0])
    # 10 files, 6 streams by name; the two edge files share their address pair: joined
    assert notes[0] == "10 file(s) in 6 stream(s)"
    assert notes[1] == "2 stream(s) share address pairs: analysing them together"
    c = got[0].counts()
    assert c["attempts"] == 160 and c["reused"] > 40
    # the 4-tuple reuse across the rotated files' boundaries is seen: web alone, as one
    # stream, finds the reuses of all its files together
    web = [f for f in fleet if f.name.startswith("web")]
    per_file = sum(an.counts()["reused"] for an in analyze_paths(web, merge=False, jobs=1))
    joined = analyze_streams(web)[0].counts()["reused"]
    assert joined == 21 and per_file == 12


def test_per_file_equal_in_process(fleet: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "junk.pcap"
    bad.write_bytes(b"not a capture at all")
    files = [*fleet[:3], bad]
    got = analyze_streams(files, merge=False)
    want = analyze_paths(files, merge=False, jobs=1)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert_same(a, b)


def test_unreadable_file_reported_like_in_process(fleet: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "junk.pcap"
    bad.write_bytes(b"not a capture at all")
    files = [fleet[0], bad, fleet[4]]
    got, want = analyze_streams(files)[0], analyze_paths(files, jobs=1)[0]
    assert_same(got, want)
    assert not got.complete


def test_bad_scheduler_address_exits_2(cli: Cli, fleet: list[Path]) -> None:
    t = time.monotonic()
    code, out, err = cli(["analyze", "--scheduler", "tcp://127.0.0.1:9", str(fleet[0])])
    assert code == 2 and not out, err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err.splitlines()[0]
    assert "Traceback" not in err and time.monotonic() - t < 5  # refused: no retries until a timeout
    for bad in ("nonsense://x:1", "127.0.0.1:8786", "tcp://127.0.0.1"):
        code, out, err = cli(["analyze", "--scheduler", bad, str(fleet[0])])
        assert code == 2 and err.startswith(f"tcpreuse: error: --scheduler {bad!r}: "), err


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[str]:
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1, always
    terminated (then killed) at the end."""
    with deploy(tmp_path, workers=2) as d:
        yield d.address


def _cli_json(cli: Cli, args: list[str]) -> dict[str, object]:
    code, out, err = cli(["analyze", "--json", *args])
    assert code == 0, err
    doc = json.loads(out)
    doc.pop("timing_s", None)
    for an in doc.get("analyses", []):
        an.pop("timing_s", None)
    return dict(doc)


@pytest.mark.slow
def test_analyze_on_dask_deployment(cli: Cli, deployment: str, fleet: list[Path], tmp_path: Path) -> None:
    files = [str(f) for f in fleet]
    want = _cli_json(cli, files)
    got = _cli_json(cli, ["--scheduler", deployment, *files])
    assert got == want
    assert want["counts"]["attempts"] == 160  # type: ignore[index]
    # the same rows as CSV, and --per-file gives the same analyses
    for where, extra in (("here", []), ("dask", ["--scheduler", deployment])):
        code, _out, err = cli(["analyze", *extra, "--csv", str(tmp_path / f"{where}.csv"), *files])
        assert code == 0, err
    assert (tmp_path / "dask.csv").read_text() == (tmp_path / "here.csv").read_text()
    assert (_cli_json(cli, ["--per-file", "--scheduler", deployment, *files[:3]])
            == _cli_json(cli, ["--per-file", *files[:3]]))


@pytest.mark.slow
def test_analyze_on_local_cluster(cli: Cli, fleet: list[Path]) -> None:
    files = [str(f) for f in fleet[:6]]
    assert _cli_json(cli, ["--scheduler", "local", "-j", "2", *files]) == _cli_json(cli, files)


@pytest.mark.slow
def test_scheduler_without_workers_is_an_error(cli: Cli, tmp_path: Path, fleet: list[Path]) -> None:
    with deploy(tmp_path, workers=0) as d:
        address = d.address
        t = time.monotonic()
        code, out, err = cli(["analyze", "--scheduler", address, str(fleet[0])])
    assert code == 2 and not out, err
    assert err.startswith(f"tcpreuse: error: the Dask scheduler at {address} has no workers"), err
    assert time.monotonic() - t < 30


def test_rotated_files_joined_in_time_order(tmp_path: Path) -> None:
    """In-process too: the command-line order of rotated files (a glob puts cap.pcap10
    before cap.pcap2) changes nothing, not even the row order of IPv6 attempts."""
    rng = random.Random(3)
    segs = _segs(rng, _conns(rng, "fd00::1", 443, [f"fd00::{k:x}" for k in range(16, 40)], 90, T0, 300))
    files = _rotate(tmp_path, ["cap.pcap", "cap.pcap1", "cap.pcap2", "cap.pcap10"], segs)
    want = analyze_paths(files, jobs=1)[0]
    for order in (sorted(files, key=str), files[::-1]):
        got = analyze_paths(order, jobs=1)[0]
        assert got.export_columns() == want.export_columns()
        assert got.counts() == want.counts() and got.counts()["reused"] > 20
        assert [s.to_json() for s in got.sources] == [s.to_json() for s in want.sources]
