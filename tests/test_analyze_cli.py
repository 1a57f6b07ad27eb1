"""`tcpreuse analyze` as a user runs it: terminal summary, --json, exports, several
files, and bad input as one clear line (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import Cli
from helpers.captures import nat_two_clocks

from tcpreuse.capture.synth import frames_of, handshake, pcap_bytes
from tcpreuse.result import RunResult


@pytest.fixture
def run(cli: Cli) -> Cli:
    """`tcpreuse analyze ARGV` in-process."""
    return lambda argv: cli(["analyze", *argv])


def test_terminal_report_names_cause_and_fix(seed_pcap: Path, run: Cli) -> None:
    code, out, err = run([str(seed_pcap)])
    assert code == 0, err
    assert "400 SYNs opened an attempt" in out
    assert "SYNs from 10.0.0.5 land on the server's TIME_WAIT" in out
    assert "seed incident's signature" in out
    assert "netsh int tcp set global timestamps=enabled" in out
    assert "10.0.0.1:9313" in out  # the servers table


def test_json_csv_parquet_and_runresult(seed_pcap: Path, tmp_path: Path,
                                        run: Cli) -> None:
    csv_p, save_p = tmp_path / "a.csv", tmp_path / "run.json"
    argv = [str(seed_pcap), "--json", "--csv", str(csv_p), "--save", str(save_p)]
    try:
        import pyarrow  # noqa: F401

        argv += ["--parquet", str(tmp_path / "a.parquet")]
    except ImportError:
        pass
    code, out, err = run(argv)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["counts"]["attempts"] == 400
    assert doc["files"][0]["complete"] is True
    ids = {f["id"] for f in doc["findings"]}
    assert "capture-syn-hit-timewait" in ids
    assert doc["sources"][0]["addr"] == "10.0.0.5"
    assert len(csv_p.read_text().splitlines()) == 401
    rr = RunResult.from_json(json.loads(save_p.read_text()))
    assert rr.source == "analyze" and len(rr.attempts) == 400
    assert rr.attempts.counts("cause")["syn_hit_timewait"] > 50


def test_several_files_merged_or_per_file(tmp_path: Path, run: Cli) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    segs = sorted(nat_two_clocks(), key=lambda s: s.t)
    a.write_bytes(pcap_bytes(frames_of(segs[: len(segs) // 2])))
    b.write_bytes(pcap_bytes(frames_of(segs[len(segs) // 2:])))
    code, out, _ = run([str(a), str(b), "--json", "-j", "2"])
    merged: dict[str, Any] = json.loads(out)
    assert code == 0 and merged["counts"]["attempts"] == 40
    assert "capture-tw-recycle-drops" in {f["id"] for f in merged["findings"]}
    code, out, _ = run([str(a), str(b), "--json", "--per-file"])
    per = json.loads(out)["analyses"]
    assert [len(x["files"]) for x in per] == [1, 1]
    assert sum(x["counts"]["attempts"] for x in per) >= 40  # an attempt cut in two counts in both


def test_bad_input_is_one_clear_line(tmp_path: Path, run: Cli) -> None:
    code, _, err = run([str(tmp_path / "missing.pcap")])
    assert code == 2 and err.startswith("tcpreuse: error: ") and "no such file" in err
    assert "Traceback" not in err
    junk = tmp_path / "junk.pcap"
    junk.write_text("GET / HTTP/1.1\r\n")
    code, _, err = run([str(junk)])
    assert code == 2 and "not a pcap or pcapng file" in err and "hint:" in err


def test_truncated_file_warns_and_strict_fails(tmp_path: Path, run: Cli) -> None:
    data = pcap_bytes(frames_of(handshake(1.7e9, "10.0.0.2", 1000, "10.0.0.1", 80, 1, 2)))
    p = tmp_path / "cut.pcap"
    p.write_bytes(data[:-20])
    code, out, err = run([str(p), "--json"])
    assert code == 0
    doc = json.loads(out)
    assert doc["complete"] is False and doc["counts"]["packets"] == 7
    assert "capture-incomplete" in {f["id"] for f in doc["findings"]}
    assert "warning: cut.pcap: truncated at byte" in err
    code, _, err = run([str(p), "--strict"])
    assert code == 2 and "not read completely" in err


def test_exports_need_one_analysis(seed_pcap: Path, tmp_path: Path, run: Cli) -> None:
    code, _, err = run([str(seed_pcap), str(seed_pcap), "--per-file", "--csv", str(tmp_path / "x.csv")])
    assert code == 2 and "drop --per-file" in err
