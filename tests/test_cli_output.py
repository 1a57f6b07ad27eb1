"""Output a person and a pipeline can use, the same for every verb (tcpreuse.cli,
tcpreuse.report.console): files get the umask's permissions, piped tables are neither cut
nor wrapped, a reader that stops early (`| head`) is no error and loses no file, small
latencies keep their digits, signals give the shell's exit status (128 + signal)."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Cli

from tcpreuse.report import html
from tcpreuse.scenario.loader import builtin_names


def tcpreuse(*args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tcpreuse", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_html_report_follows_the_umask_like_json(cli: Cli, umask: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        code, _, err = cli(["simulate", "client-exhaustion", "--duration", "2", "--html", str(tmp_path / "r.html"),
                            "--result", str(tmp_path / "r.json")])
    finally:
        os.umask(old)
    assert code == 0, err
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "r.html").stat().st_mode) == want
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tcpr-")]  # no temporary left


def test_piped_scenarios_are_one_line_each() -> None:
    p = tcpreuse("scenarios")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    names = builtin_names()
    assert len(lines) == 1 + len(names), out  # the header, then one line per scenario
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(names)


def test_piped_tables_are_not_cut(seed_pcap: Path) -> None:
    p = tcpreuse("analyze", str(seed_pcap))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert not re.search(r"\S…", out)  # rich's cut ("127.0.…", "attemp…"); the timeline's "0 … 34 s" is no cut
    row = next(ln for ln in out.splitlines() if ln.startswith("│ 10.0.0.5 "))
    assert "sequential +1" in row and "cycle" in row  # the client's row in one line
    assert any("attempts" in ln and "address" in ln for ln in out.splitlines())


def test_reader_that_stops_early_loses_no_file(seed_pcap: Path, tmp_path: Path) -> None:
    page = tmp_path / "out.html"
    p = tcpreuse("analyze", str(seed_pcap), "--html", str(page))
    assert p.stdout is not None
    first = p.stdout.readline()
    p.stdout.close()  # as `| head -1` does
    err = p.stderr.read() if p.stderr else ""
    assert p.wait(timeout=60) == 0, err
    assert "pcap" in first and err == ""
    assert page.stat().st_size > 10_000 and "</html>" in page.read_text()


def test_small_latencies_keep_their_digits(cli: Cli, tmp_path: Path) -> None:
    res = tmp_path / "r.json"
    code, _, err = cli(["simulate", "client-exhaustion", "--duration", "2", "--set", "path.rtt_ms=0.05",
                        "--result", str(res)])
    assert code == 0, err
    code, out, err = cli(["report", str(res)])
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "p50" in ln)
    assert "µs" in line and "0.0 ms" not in line, line


def test_thousands_separators_from_one_thousand() -> None:
    assert [html.num(x) for x in (999, 1000, 28232, 1234.0, 65535.5)] == [999, "1,000", "28,232", "1,234", "65,536"]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_give_128_plus_the_signal(sig: int, status: int) -> None:
    p = tcpreuse("doctor", "--watch", "0.2", "--interval", "0", "--json")
    assert p.stdout is not None
    p.stdout.readline()  # running: one refresh printed
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == status, err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_a_simulation(sig: int, status: int) -> None:
    p = tcpreuse("simulate", "seed", "--duration", "600")
    time.sleep(2.5)
    assert p.poll() is None
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == status, err
    assert err.strip() in ("interrupted", "terminated by SIGTERM") and "Traceback" not in err
