"""The lab's start barrier (lab/run.py _start_loads, load/barrier.py): the loads of a run
start together even when one of them is slow to start up, and a load that never gets
ready fails the run with one line naming it.

A load is made slow by the lab's own hook for the interpreter (LabOptions.python): a
wrapper that sleeps before it becomes the real interpreter, for one client's `load` only.
The real-kernel tests need root and network namespaces; the stdin protocol is checked
without them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.scenarios import native_lab

from tcpreuse.errors import TcpreuseError
from tcpreuse.lab.netns import list_namespaces
from tcpreuse.lab.run import LOAD_LEAD_S, LabOptions, run_lab, scratch_leftovers
from tcpreuse.load.barrier import READY_LINE, await_go, parse_start_at
from tcpreuse.result import RunResult
from tcpreuse.scenario.loader import load_text

RATE = 100.0

TWO_CLIENTS = native_lab("barrier", duration_s=2, rate=RATE, count=60, close="server", clients=2)


def slow_python(tmp_path: Path, host: str, sleep_s: float) -> str:
    """An interpreter that starts `load --host-name HOST` sleep_s late (then execs the real
    one: the lab's kill reaches the same process)."""
    w = tmp_path / "slowpy"
    w.write_text(f"""#!{sys.executable}
import os, sys, time
a = sys.argv[1:]
if "load" in a and "--host-name" in a and a[a.index("--host-name") + 1] == {host!r}:
    time.sleep({sleep_s!r})
os.execv({sys.executable!r}, [{sys.executable!r}, *a])
""")
    w.chmod(0o755)
    return str(w)


def _first_attempts(res: RunResult) -> dict[str, float]:
    t = res.attempts.cols["t"]
    clients = res.attempts.column("client")
    return {c: float(min(tt for tt, cc in zip(t, clients, strict=True) if cc == c)) for c in set(clients)}


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft")
def test_a_slow_load_holds_the_others_and_all_start_together(tmp_path):
    slow = LOAD_LEAD_S + 1.0  # well past the lead: without the barrier client-2 starts >= 1 s late
    res = run_lab(load_text(TWO_CLIENTS, "<barrier>"),
                  LabOptions(python=slow_python(tmp_path, "client-2", slow)))
    b = res.meta["start_barrier"]
    assert b["slowest"] == "load-client-2-w-server"
    assert b["ready_s"]["load-client-2-w-server"] >= slow
    assert b["waited_s"] >= slow and b["late_s"] > 0
    firsts = _first_attempts(res)
    # the planned interleaving: client-2's first attempt one interval after client-1's
    gap = firsts["client-2"] - firsts["client-1"]
    assert abs(gap - 1.0 / RATE) < 0.005, firsts
    # both began their schedules at the start they were given, not late
    for ld in res.meta["loads"]:
        assert (ld["start_lag"] or {}).get("p50", 0.0) < 5.0, ld
    assert res.attempt_count() == 60 and res.failed_count() == 0, res.reasons()


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft")
def test_a_load_that_never_gets_ready_fails_the_run_naming_it(tmp_path):
    before_ns, before_scratch = set(list_namespaces()), set(scratch_leftovers())
    t = time.monotonic()
    with pytest.raises(TcpreuseError, match=r"^load on client-2 \(w\) not ready 2 s after its launch "
                                            r"\(start barrier; 1 of 2 loads ready\)"):
        run_lab(load_text(TWO_CLIENTS, "<barrier>"),
                LabOptions(python=slow_python(tmp_path, "client-2", 60.0), start_timeout_s=2.0))
    assert time.monotonic() - t < 30
    assert set(list_namespaces()) <= before_ns and set(scratch_leftovers()) <= before_scratch
    # the sleeping load was killed with its run, not left behind
    out = subprocess.run(["pgrep", "-f", str(tmp_path / "slowpy")], capture_output=True, text=True)
    assert not out.stdout.strip()


def test_start_at_wait_says_ready_then_reads_the_start_from_stdin():
    out = io.StringIO()
    at = time.time() + 2.0
    assert await_go(io.StringIO(f"{at:.6f}\n"), out) == pytest.approx(at, abs=1e-6)
    assert out.getvalue() == READY_LINE + "\n"
    assert parse_start_at("wait") == (None, True)
    assert parse_start_at(None) == (None, False)


@pytest.mark.parametrize(("stdin", "msg"), [
    ("", "stdin closed before a start time arrived"),
    ("soon\n", "not a Unix time on stdin"),
    ("1\n", "within an hour of now"),
])
def test_start_at_wait_rejects_what_is_not_a_start_time(stdin, msg):
    with pytest.raises(TcpreuseError, match=msg):
        await_go(io.StringIO(stdin), io.StringIO())


def test_load_cli_start_at_wait_with_closed_stdin_is_one_line_exit_2():
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "load", "127.0.0.1:9", "--rate", "10",
                        "--duration", "1", "--workers", "1", "--start-at", "wait", "--quiet"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 2, r.stderr
    assert READY_LINE in r.stdout
    assert "stdin closed before a start time arrived" in r.stderr
    assert "Traceback" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "tcpreuse", "load", "127.0.0.1:9", "--rate", "10",
                          "--duration", "1", "--start-at", "later"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert bad.returncode == 2 and "--start-at must be a Unix time or 'wait'" in bad.stderr


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft")
@pytest.mark.parametrize("phase", [0.3, 0.8])
def test_the_first_attempt_falls_where_in_the_second_it_was_asked(phase):
    res = run_lab(load_text(TWO_CLIENTS, "<barrier>"), LabOptions(start_phase_s=phase))
    first = float(res.meta["t0_monotonic"]) + min(_first_attempts(res).values())
    off = (first - phase + 0.5) % 1.0 - 0.5  # signed distance on the circle of the second
    assert abs(off) < 0.05, (first, phase)
