"""`load`'s numbers against targets that misbehave on purpose, on loopback: the rate is
taken over the scheduling window, a reset after the handshake is a reset (with its
connect time), percentiles are nearest-rank over the per-attempt records, the answer
latency counts from the due time, --duration + --drain bounds the wall-clock time, and
a rate the generator cannot hold is refused before anything starts."""

from __future__ import annotations

import json
import math
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcpreuse.load import arrival
from tcpreuse.load.procs import ServeProcess
from tcpreuse.result import RunResult

pytestmark = pytest.mark.timeout(120)


def load(*args: str, timeout: float = 60) -> tuple[dict[str, Any], float]:
    """The --json summary and the command's wall-clock time."""
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "load", *args, "--json"], capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout)), time.monotonic() - t


@pytest.fixture
def dropping_port() -> Iterator[int]:
    """A listener whose accept queue (backlog 0: one slot) is full and never drained:
    tcp_conn_request() drops every further SYN (ListenOverflows), so the client's SYNs go
    unanswered and it retransmits them, as toward a silent firewall."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fill = [socket.create_connection(("127.0.0.1", port), timeout=5)]  # the one slot: now full
    try:
        yield port
    finally:
        for s in fill:
            s.close()
        lsock.close()


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """A server that accepts and at once closes with SO_LINGER {1, 0}: a RST right after
    the handshake, before the client's request was read."""
    lsock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = lsock.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        lsock.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    try:
        yield port
    finally:
        stop.set()
        th.join(2)
        lsock.close()


def test_rate_divides_by_the_scheduling_window(dropping_port: int) -> None:
    # 100 attempts due over 2 s, every one waiting 2 s for a SYN-ACK that never comes:
    # they finish 2 s after their due time, the last at ~4 s. The generator kept its rate.
    s, _ = load(f"127.0.0.1:{dropping_port}", "--rate", "50", "--count", "100", "--workers", "1",
                "--connect-timeout", "2")
    assert s["attempts"] == 100 and s["reasons"] == {"connect_timeout": 100}
    assert s["duration_s"] == pytest.approx(2.0) and s["attempts_per_s"] == pytest.approx(50.0)
    assert s["wall_s"] > 3.5  # what the old figure divided by (100 / 4 s = 25/s)
    # the same with --duration: the window is the duration, whatever the timeouts do
    s, _ = load(f"127.0.0.1:{dropping_port}", "--rate", "40", "--duration", "1", "--workers", "2",
                "--connect-timeout", "1.5")
    assert s["attempts"] == 40 and s["attempts_per_s"] == pytest.approx(40.0) and s["ok_per_s"] == 0


def test_reset_after_the_handshake_is_a_reset_with_its_connect_time(resetting_port: int,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    s, _ = load(f"127.0.0.1:{resetting_port}", "--rate", "200", "--count", "200", "--workers", "1",
                "--result", str(out))
    # however early the RST came (before the first send(), during it, or after it), the
    # connection had been established: tcp_reset() says ECONNREFUSED only in SYN_SENT
    assert s["outcomes"]["ECONNRESET"]["count"] == 200 and s["reasons"] == {"reset": 200}
    assert s["connect_ms"]["count"] == 200
    rr = RunResult.from_json(json.loads(out.read_text()))
    cms = rr.attempts.cols["connect_ms"]
    assert not np.isnan(cms).any() and (cms > 0).all()
    assert set(rr.attempts.column("reason")) == {"reset"}
    assert np.isnan(rr.attempts.cols["answer_ms"]).all()  # no answer ever came


def _nearest_rank(values: np.ndarray, p: float) -> float:
    v = sorted(float(x) for x in values if not math.isnan(x))
    return v[math.ceil(p / 100 * len(v)) - 1]


def test_percentiles_are_nearest_rank_over_the_records_and_answer_counts_from_due(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    with ServeProcess(["--listen", "127.0.0.1:0", "--delay-ms", "20"]) as srv:
        s, _ = load(f"127.0.0.1:{srv.port}", "--rate", "400", "--count", "777", "--workers", "2",
                    "--result", str(out))
    assert s["ok"] == 777
    rr = RunResult.from_json(json.loads(out.read_text()))
    cms, ams = rr.attempts.cols["connect_ms"], rr.attempts.cols["answer_ms"]
    assert len(cms) == len(ams) == 777
    for key, vals in (("connect_ms", cms), ("answer_ms", ams)):
        got = s[key]
        assert got["count"] == 777
        for name, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
            assert got[name] == round(_nearest_rank(vals, p), 3), (key, name)
        assert got["max"] == round(float(np.nanmax(vals)), 3)
    # p99 of 777 is the 770th smallest: rounding the rank half-up would take the 769th
    assert s["connect_ms"]["p99"] == round(float(np.sort(cms)[769]), 3)
    # what a user waits: from the due time through the connect and the 20 ms the server
    # takes to answer (its event loop's timers may fire up to a millisecond early)
    assert (ams >= cms + 19.0).all() and (ams < cms + 1000).all()
    assert s["answer_ms"]["p50"] >= s["connect_ms"]["p50"] + 19.0


def test_duration_plus_drain_bounds_the_wall_clock(dropping_port: int) -> None:
    # attempts with a 30 s connect timeout toward a target that never answers: without a
    # bound the run would last 31 s; it ends at 1 s + 1 s of drain (plus start-up)
    s, took = load(f"127.0.0.1:{dropping_port}", "--rate", "100", "--duration", "1", "--drain", "1",
                   "--connect-timeout", "30", "--workers", "1")
    assert s["wall_s"] < 2.5  # from t = 0 to the end of the last worker
    assert took < 2.0 + 10.0, took  # plus python start-up, fork, merge (seconds on a busy machine)
    assert s["attempts"] == 100 and s["unfinished"] == 100 and s["failed"] == 0
    assert s["reasons"] == {"unfinished": 100} and s["outcomes"]["ECANCELED"]["count"] == 100
    assert any("--drain 1 s" in n for n in s["notes"])


def test_a_rate_beyond_the_generator_is_refused_with_the_estimate(dropping_port: int) -> None:
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{dropping_port}", "--rate", "1e9",
                        "--duration", "2"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 10
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1
    assert "--rate 1e+09/s" in msg and "generator can start: about" in msg and "--force" in msg
    assert "2,000,000,000 attempts would need about" in msg  # and the memory estimate


@pytest.mark.parametrize("kind", ["constant", "ramp", "poisson"])
def test_remaining_arrivals_are_counted_without_drawing_them(kind: str) -> None:
    for rate, dur, count, workers in ((1000.0, 2.0, None, 1), (333.0, 1.5, None, 3), (1000.0, 2.0, 1500, 2),
                                      (7.0, 3.0, None, 2)):
        for index in range(workers):
            sched = arrival.Schedule(kind, rate, dur, count, workers=workers, index=index, ramp_from=10.0, seed=1)
            dues = list(sched.times())
            for started in (0, 1, len(dues) // 2, len(dues) - 1):
                got = sched.remaining(started=started, next_due=dues[started])
                want = len(dues) - started
                if kind == "poisson":  # the expected number: within a few standard deviations
                    assert abs(got - want) <= 4 * math.sqrt(want) + 2, (rate, dur, started)
                else:
                    assert got == want, (kind, rate, dur, count, workers, index, started)
    t = time.monotonic()
    assert arrival.Schedule("constant", 1e9, 2.0, None, workers=2, index=1).remaining(started=10, next_due=2e-8) \
        == 1_000_000_000 - 10
    assert time.monotonic() - t < 0.1
