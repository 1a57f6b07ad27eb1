"""`tcpreuse simulate` and `tcpreuse scenarios` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tcpreuse.result import RunResult


def tcpreuse(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "tcpreuse", *args], capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}: {r.stderr}")
    return r


def test_scenarios_lists_builtins_with_one_line_each() -> None:
    out = tcpreuse("scenarios").stdout
    for name in ("seed", "client-exhaustion", "seed-client-timestamps", "php-mysql"):
        assert name in out
    assert "[[host]]" in tcpreuse("scenarios", "seed").stdout


def test_simulate_json_has_the_documented_keys() -> None:
    d = json.loads(tcpreuse("simulate", "client-exhaustion", "--json", "--duration", "8").stdout)
    for key in ("scenario", "attempts", "outcomes", "first_failure", "timeline", "counters", "findings"):
        assert key in d
    assert d["outcomes"] == {"ok": 1000, "EADDRNOTAVAIL": 600}
    assert d["first_failure"] == {"index": 1000, "time_s": 5.0, "outcome": "EADDRNOTAVAIL",
                                  "reason": "local_ports_exhausted"}
    f = d["findings"][0]
    assert f["id"] == "client-port-exhaustion" and f["evidence"] and f["fixes"]
    assert d["counters"]["client"]["TcpExtTW"] == 1000


def test_fixes_are_proven_by_resimulation() -> None:
    d = json.loads(tcpreuse("simulate", "client-exhaustion", "--json", "--duration", "8", "--fixes",
                            "--workers", "2").stdout)
    ranked = d["fixes_ranked"]
    by_id = {f["id"]: f for f in ranked}
    assert by_id["tw-reuse"]["effect"]["failure_rate_after"] == 0.0
    assert by_id["tw-reuse"]["effect"]["failure_rate_before"] == pytest.approx(600 / 1600)
    # ranked: the first fix removes the failures
    assert ranked[0]["effect"]["failure_rate_after"] == 0.0
    assert d["findings"][0]["fixes"][0]["effect"] is not None


def test_set_overrides_and_human_output() -> None:
    r = tcpreuse("simulate", "client-exhaustion", "--duration", "3", "--set",
                 "client:net.ipv4.ip_local_port_range=40000 40099")
    assert "EADDRNOTAVAIL" in r.stdout and "client runs out of local ports" in r.stdout


def test_result_file_round_trips_and_csv(tmp_path: Path) -> None:
    res, csv = tmp_path / "r.json", tmp_path / "a.csv"
    tcpreuse("simulate", "client-exhaustion", "--duration", "6", "--result", str(res), "--attempts-csv", str(csv),
             "--json")
    run = RunResult.from_json(json.loads(res.read_text()))
    assert len(run.attempts) == 1200 and run.outcomes()["EADDRNOTAVAIL"] == 200
    lines = csv.read_text().splitlines()
    assert len(lines) == 1201 and lines[0].startswith("t,connect_ms")


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch"], "no scenario file or built-in scenario named 'nosuch'"),
    (["seed", "--set", "host.server.profile=linux-6.18"], "net.ipv4.tcp_tw_recycle does not exist on linux-6.18"),
    (["seed", "--set", "bogus=1"], "unknown key"),
    (["seed", "--set", "workload.rate=-5"], "greater than 0"),
])
def test_bad_input_is_one_clear_line(args: list[str], message: str) -> None:
    r = tcpreuse("simulate", *args, check=False)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_file_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n\n[[host]]\nname = "c"\nrole = "client"\ncount = "three"\n')
    r = tcpreuse("simulate", str(p), check=False)
    assert r.returncode == 2 and f"{p}:6: host[0].count" in r.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--duration", "inf"], "'--duration': 'inf': give a finite number of seconds above 0"),
    (["--duration", "nan"], "'--duration': 'nan': give a finite number of seconds above 0"),
    (["--set", "duration_s=inf"], "duration_s: Input should be a finite number"),
    (["--duration", "1e9"], "will not fit this machine's memory: ≈2.0 T attempts"),
    (["--set", "workload.rate=1e9"], "will not fit this machine's memory: ≈90.0 G attempts"),
    (["--duration", "1800", "--time-limit", "1"], "would take too long: ≈3.6 M attempts"),
])
def test_a_run_that_cannot_fit_is_refused_at_once_with_its_estimate(args: list[str], message: str) -> None:
    """Before: MemoryError after a minute, or OverflowError, each with a traceback."""
    import time

    t0 = time.monotonic()
    r = tcpreuse("simulate", "seed", *args, check=False)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert "--force" in r.stderr or "finite" in message
    assert time.monotonic() - t0 < 30


def test_simulate_shows_progress_on_a_terminal() -> None:
    """stderr a terminal: a rich progress line names the phase; piped: nothing."""
    import os
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "tcpreuse", "simulate", "client-exhaustion", "--duration", "20"],
                         stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.communicate(timeout=300)
    os.close(master)
    shown = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0
    assert "simulating client-exhaustion" in shown and "attempts" in shown
    assert "simulating" not in tcpreuse("simulate", "client-exhaustion", "--duration", "2").stderr
