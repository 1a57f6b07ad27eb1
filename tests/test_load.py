"""`tcpreuse load` on loopback against `tcpreuse serve`: rates, bounds, outcome accounting,
JSON and RunResult shapes, keep-alive, source rotation, errors and Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcpreuse.load.procs import ServeProcess
from tcpreuse.load.worker import merge_hists
from tcpreuse.result import RunResult

pytestmark = pytest.mark.timeout(120)


def load(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "load", *args], capture_output=True,
                       text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def load_json(*args: str) -> dict[str, Any]:
    return dict(json.loads(load(*args, "--json").stdout))


@pytest.fixture(scope="module")
def server() -> Iterator[ServeProcess]:
    with ServeProcess(["--listen", "127.0.0.1:0"]) as srv:
        yield srv


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port with no listener (bound, so nobody else takes it meanwhile)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield int(s.getsockname()[1])
    s.close()


def test_open_loop_rate_is_kept(server: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    s = load_json(f"127.0.0.1:{server.port}", "--rate", "400", "--duration", "2", "--workers", "2",
                  "--result", str(out))
    assert s["attempts"] == 800 and s["ok"] == 800 and s["failed"] == 0
    assert s["per_second"]["attempts"] == [400, 400]
    assert s["attempts_per_s"] == pytest.approx(400, rel=0.02)
    t = RunResult.from_json(json.loads(out.read_text())).attempts.cols["t"]
    # due times, not start times: exactly the schedule, merged from both workers in order
    assert np.all(np.diff(t) >= 0)
    assert np.diff(t) == pytest.approx(np.full(799, 1 / 400), abs=1e-9)


def test_start_at_sets_when_the_schedule_begins(server: ServeProcess, tmp_path: Path) -> None:
    """Several load processes told one --start-at interleave their schedules (the lab)."""
    import time

    out = tmp_path / "r.json"
    at = time.time() + 5.0  # well after start-up, even on a busy machine
    s = load_json(f"127.0.0.1:{server.port}", "--rate", "100", "--count", "5", "--workers", "1",
                  "--start-at", f"{at:.6f}", "--result", str(out))
    assert s["ok"] == 5
    meta = RunResult.from_json(json.loads(out.read_text())).meta
    assert meta["t0_unix"] == pytest.approx(at, abs=1e-3)
    bad = load(f"127.0.0.1:{server.port}", "--rate", "100", "--count", "5", "--start-at", "1", check=False)
    assert bad.returncode != 0 and "--start-at" in bad.stderr and "Traceback" not in bad.stderr


def test_start_at_wait_forks_says_ready_then_starts_at_the_time_it_reads(server: ServeProcess,
                                                                          tmp_path: Path) -> None:
    """The lab's start barrier: ready only once the workers are forked, and no attempt
    before the start time arrives on stdin; then t = 0 is exactly that time."""
    import psutil

    from tcpreuse.load.barrier import READY_LINE

    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{server.port}", "--rate", "100",
                          "--count", "6", "--workers", "2", "--start-at", "wait", "--result", str(out), "--quiet"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline().strip() == READY_LINE
        assert len(psutil.Process(p.pid).children()) == 2  # both workers forked before "ready"
        time.sleep(0.5)  # held: nothing starts while the barrier is closed
        assert not out.exists() and p.poll() is None
        at = time.time() + 0.3
        p.stdin.write(f"{at:.6f}\n")
        p.stdin.close()
        assert p.wait(timeout=60) == 0, p.stderr.read() if p.stderr else ""
    finally:
        if p.poll() is None:
            p.kill()
    res = RunResult.from_json(json.loads(out.read_text()))
    assert res.meta["t0_unix"] == pytest.approx(at, abs=1e-3)
    assert res.attempt_count() == 6 and res.failed_count() == 0
    assert res.meta["load"]["start_lag"]["p50"] < 20.0  # ms: the workers were waiting, not forking


@pytest.mark.slow
def test_ramp_and_poisson_arrivals(server: ServeProcess) -> None:
    s = load_json(f"127.0.0.1:{server.port}", "--arrival", "ramp", "--ramp-from", "0", "--rate", "400",
                  "--duration", "2", "--workers", "1")
    per = s["per_second"]["attempts"]
    assert sum(per) == pytest.approx(400, abs=2) and per[1] > 2 * per[0]
    s = load_json(f"127.0.0.1:{server.port}", "--arrival", "poisson", "--rate", "500", "--duration", "2",
                  "--seed", "7")
    assert s["attempts"] == pytest.approx(1000, rel=0.12) and s["failed"] == 0


def test_count_bounds_both_loops(server: ServeProcess) -> None:
    s = load_json(f"127.0.0.1:{server.port}", "--rate", "5000", "--count", "37", "--duration", "30")
    assert s["attempts"] == 37 and s["duration_s"] < 5
    s = load_json(f"127.0.0.1:{server.port}", "--concurrency", "5", "--count", "25")
    assert s["attempts"] == 25 and s["ok"] == 25 and s["mode"] == "closed"


def test_refused_is_counted_with_a_sample_tuple(closed_port: int, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    s = load_json(f"127.0.0.1:{closed_port}", "--rate", "200", "--count", "20", "--result", str(out))
    assert s["ok"] == 0 and s["failed"] == 20
    d = s["outcomes"]["ECONNREFUSED"]
    assert d["count"] == 20 and 0 <= d["first_s"] <= d["last_s"] < 0.2
    m = re.fullmatch(r"127\.0\.0\.1:(\d+) -> 127\.0\.0\.1:(\d+)", d["sample"])
    assert m and int(m[1]) > 0 and int(m[2]) == closed_port
    assert s["reasons"] == {"refused": 20}
    rr = RunResult.from_json(json.loads(out.read_text()))
    rows = list(rr.attempts.rows())
    assert {r["outcome"] for r in rows} == {"ECONNREFUSED"}
    assert all(r["sport"] > 0 and r["src"] == "127.0.0.1" and r["dport"] == closed_port for r in rows)
    assert all(r["syn_tries"] == 1 for r in rows)
    assert rr.counters[s["host"]]["TcpAttemptFails"] >= 20 or rr.counters[s["host"]]["TcpOutRsts"] >= 20


def test_json_and_result_contract(server: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "r.json"
    before = time.time()
    s = load_json(f"127.0.0.1:{server.port}", "--rate", "300", "--duration", "2", "--workers", "2",
                  "--host-name", "client-1", "--scenario", "seedling", "--workload", "verify",
                  "--result", str(out))
    for key in ("target", "attempts", "ok", "failed", "outcomes", "reasons", "connect_ms", "request_ms",
                "per_second", "counters", "start_lag", "notes"):
        assert key in s
    assert s["connect_ms"]["count"] == s["ok"] == 600 and s["request_ms"]["count"] == 600
    assert s["connect_ms"]["p50"] <= s["connect_ms"]["p99"] <= s["connect_ms"]["max"]
    data = json.loads(out.read_text())
    rr = RunResult.from_json(data)
    assert RunResult.from_json(rr.to_json(records=True)).to_json(records=True) == rr.to_json(records=True)
    assert rr.source == "load" and rr.scenario == "seedling" and len(rr.attempts) == 600
    assert before < rr.meta["t0_unix"] < before + 5  # wall-clock time of t = 0, for merging
    assert [p.name for p in out.parent.iterdir()] == ["r.json"]  # written atomically, no leftovers
    assert set(rr.counters) == {"client-1"} and rr.counters["client-1"]["TcpActiveOpens"] >= 600
    assert "TcpExtTW" in rr.counters["client-1"] and "TcpExtPAWSActive" in rr.counters["client-1"]
    tl = rr.timeline
    assert tl.t == [0.0, 1.0] and tl.attempts == [300, 300] and tl.ok == [300, 300]
    assert len(tl.hosts["client-1"]["time_wait"]) == len(tl.t)
    assert rr.hosts["client-1"].role == "client" and "net.ipv4.tcp_tw_reuse" in rr.hosts["client-1"].settings
    row = next(rr.attempts.rows())
    assert row["client"] == "client-1" and row["workload"] == "verify" and row["reason"] == "ok"
    assert row["srv_src"] == "" and row["srv_sport"] == 0 and row["server"] == ""
    assert row["syn_tries"] == 1 and row["connect_ms"] > 0
    # the merged histogram in the result is the sum of the two workers' histograms
    h = merge_hists([data["meta"]["histograms"]["connect_us"]])
    assert h.get_total_count() == 600
    # (its buckets keep 3 significant digits; the summary's percentiles are exact, from the
    # records: test_load_numbers.py)
    assert h.get_value_at_percentile(99) / 1000 == pytest.approx(s["connect_ms"]["p99"], rel=0.002, abs=0.002)
    recs = rr.attempts.cols["connect_ms"]
    assert np.percentile(recs, 50) == pytest.approx(s["connect_ms"]["p50"], rel=0.05, abs=0.01)


def test_keep_alive_http_requests_per_connection(tmp_path: Path) -> None:
    with ServeProcess(["--listen", "127.0.0.1:0"]) as srv:
        s = load_json(f"127.0.0.1:{srv.port}", "--protocol", "http", "--requests-per-conn", "3",
                      "--rate", "100", "--count", "30", "--close", "server")
        summary = srv.stop()
    assert s["ok"] == 30 and s["requests"] == 90 and s["http_status"] == {"200": 90}
    assert summary["connections"] == 30 and summary["answers"] == 90
    assert summary["server_closed_first"] == 30  # the last request said Connection: close


def test_line_keep_alive_and_client_close(tmp_path: Path) -> None:
    with ServeProcess(["--listen", "127.0.0.1:0", "--close", "client"]) as srv:
        s = load_json(f"127.0.0.1:{srv.port}", "--requests-per-conn", "4", "--rate", "100",
                      "--count", "20", "--close", "client")
        time.sleep(0.3)
        summary = srv.stop()
    assert s["ok"] == 20 and s["requests"] == 80
    assert summary["answers"] == 80 and summary["client_closed_first"] == 20


def test_sources_rotate_with_address_no_port(server: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    s = load_json(f"127.0.0.1:{server.port}", "--source", "127.0.0.2-127.0.0.4", "--rate", "300",
                  "--count", "30", "--workers", "1", "--result", str(out))
    assert s["ok"] == 30 and s["bind"] == "address_no_port" and s["sources"] == 3
    rr = RunResult.from_json(json.loads(out.read_text()))
    srcs = rr.attempts.column("src")
    assert srcs[:6] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"] * 2
    assert srcs.count("127.0.0.3") == 10


def test_user_errors_are_one_line(server: ServeProcess) -> None:
    cases = [
        (["127.0.0.1:1", "--rate", "10"], "bounded"),
        (["127.0.0.1:1", "--rate", "10", "--count", "1", "--result", "/proc/x/y.json"], "--result"),
        (["127.0.0.1:1", "--duration", "1"], "--rate R"),
        (["127.0.0.1:1", "--rate", "10", "--concurrency", "2", "--count", "1"], "exclude"),
        (["no-such-host.invalid:80", "--rate", "1", "--count", "1"], "cannot resolve"),
        (["127.0.0.1:99999", "--rate", "1", "--count", "1"], "out of range"),
        ([f"127.0.0.1:{server.port}", "--rate", "1", "--count", "1", "--source", "192.0.2.9"],
         "not an address of this host"),
        ([f"127.0.0.1:{server.port}", "--rate", "1", "--count", "1", "--local-port-range", "9-2"],
         "--local-port-range"),
        ([f"127.0.0.1:{server.port}", "--rate", "1", "--count", "1", "--source", "127.0.0.1",
          "--bind", "none"], "--bind none"),
    ]
    for args, text in cases:
        r = load(*args, check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert text in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 2


def test_sigint_keeps_partial_results(server: ServeProcess, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{server.port}",
                          "--rate", "200", "--duration", "30", "--json", "--result", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import psutil

    end = time.monotonic() + 30  # until the workers are forked (start-up takes seconds on a busy machine)
    while not psutil.Process(p.pid).children() and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 130, stderr  # results kept, and the status says it was cut short
    s = json.loads(stdout)
    assert s["interrupted"] and 150 < s["attempts"] < 600
    assert any("interrupted" in n for n in s["notes"])
    rr = RunResult.from_json(json.loads(out.read_text()))
    assert len(rr.attempts) == s["attempts"]


@pytest.mark.slow
def test_request_timeout_and_server_without_answer() -> None:
    with ServeProcess(["--listen", "127.0.0.1:0", "--delay-ms", "1500"]) as srv:
        s = load_json(f"127.0.0.1:{srv.port}", "--rate", "50", "--count", "3", "--request-timeout", "0.3")
    assert s["outcomes"]["ETIMEDOUT"]["count"] == 3 and s["reasons"] == {"request_timeout": 3}
    assert s["connect_ms"]["count"] == 3  # they did connect
    # a server that closes without answering, and one that answers something else
    for reply in (b"", b"HELLO\n"):
        lsock = socket.create_server(("127.0.0.1", 0))
        port = lsock.getsockname()[1]

        def rude(lsock: socket.socket = lsock, reply: bytes = reply) -> None:
            for _ in range(2):
                c, _ = lsock.accept()
                c.recv(100)
                c.sendall(reply)
                c.close()

        th = threading.Thread(target=rude, daemon=True)
        th.start()
        s = load_json(f"127.0.0.1:{port}", "--rate", "50", "--count", "2", "--request-timeout", "3")
        th.join(5)
        lsock.close()
        assert s["ok"] == 0 and s["outcomes"]["EPROTO"]["count"] == 2 and s["reasons"] == {"other": 2}


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_ipv6_loopback() -> None:
    try:
        srv = ServeProcess(["--listen", "[::1]:0"]).start()
    except Exception as e:  # ::1 not configured here
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        s = load_json(f"[::1]:{srv.port}", "--rate", "100", "--count", "10", "--protocol", "http")
    finally:
        srv.stop()
    assert s["ok"] == 10 and s["outcomes"]["ok"]["sample"].startswith("[::1]:")


def test_overloaded_open_loop_stays_bounded_and_says_so(closed_port: int) -> None:
    t = time.monotonic()
    s = load_json(f"127.0.0.1:{closed_port}", "--rate", "1000000", "--duration", "0.5", "--workers", "1",
                  "--force")  # beyond the generator: refused without --force (test_load_numbers.py)
    assert time.monotonic() - t < 10
    assert s["attempts"] + s["not_started"] == 500_000 and s["not_started"] > 0
    assert s["start_lag"]["late_starts"] > 0 and s["start_lag"]["max"] > 100
    assert any("never started" in n for n in s["notes"])


@pytest.mark.parametrize("rate", [3000.0, 12000.0])  # gaps of 333 us (select) and 83 us (sleep)
def test_sub_ms_gaps_answer_and_record_every_attempt(server: ServeProcess, rate: float) -> None:
    """An open loop whose gaps are shorter than epoll_wait's 1 ms: both ways of waiting
    them (select on the epoll fd, or a sleep) start every attempt, keep its due time in
    its record and collect every answer."""
    from tcpreuse.load.target import resolve
    from tcpreuse.load.worker import Worker, WorkerPlan

    n = 300
    plan = WorkerPlan(target=resolve(f"127.0.0.1:{server.port}"), rate=rate, count=n, duration=10.0,
                      drain=5.0, t0=time.monotonic() + 0.02)
    r = Worker(plan).run()
    assert r.outcomes == ["ok"] and list(r.outcome) == [0] * n
    assert r.requests == n and len(r.lag_s) == n
    t = np.sort(np.frombuffer(r.t, dtype="f8"))  # records come in the order attempts end
    assert np.allclose(t, np.arange(n) / rate)  # every due time once: none lost or repeated
    cms, ams = np.frombuffer(r.connect_ms, dtype="f8"), np.frombuffer(r.answer_ms, dtype="f8")
    assert (cms >= 0).all() and (ams >= cms).all()
    assert (np.frombuffer(r.lag_s, dtype="f8") >= 0).all()


@pytest.mark.slow
def test_an_overloaded_open_loop_finishes_connections_as_fast_as_it_starts_them(server: ServeProcess) -> None:
    """Far above what one worker can start, it falls behind (and says so), but it does not
    let finished connections pile up unclosed: each round handles at least as many events
    as it started attempts. Before, a round handled at most 32 events after up to 256
    starts, so thousands of answered connections waited in CLOSE_WAIT, each holding a
    local port that connect()'s port search had to skip, and the worker got slower."""
    s = load_json(f"127.0.0.1:{server.port}", "--rate", "40000", "--duration", "1.5", "--workers", "1",
                  "--force", "--drain", "5")
    g = s["generator"]
    started = s["attempts"]
    # it did fall behind: late starts (whether some due attempts were never started before
    # the duration ran out depends on the machine's speed: a quiet CI run started all 60,000)
    assert s["start_lag"]["late_starts"] > 0
    assert s["attempts"] + s["not_started"] == 60_000
    assert started > 1000 and s["ok"] == started  # and still finished what it started
    # How many stay open at once depends on the machine as much as on the worker (a server
    # that overflows its queue holds SYNs for a second: 15,016 of 31,385 in one CI run, 4,408
    # of 30,110 on a quiet one), so that figure is the benchmark's (bench/load_vs_wrk.py
    # --overload-rate), not a pass mark here; the summary must report it.
    assert g["in_flight_max"] > 0 and g["cpu_us_per_attempt"] > 0 and g["preempted"] >= 0
    assert 0 < g["sys_us_per_attempt"] < g["cpu_us_per_attempt"] and g["wakeups"] >= 0


def test_start_lag_is_read_before_every_start_of_a_burst(server: ServeProcess) -> None:
    """A worker behind its schedule starts what is due in a burst; each start's lag is
    taken on the clock read just before it, so the starts before it in the burst count.
    (Read once per 16 starts, consecutive lags of a burst fell by exactly one gap each,
    as if all 16 had started at the same instant.)"""
    import time

    from tcpreuse.load.target import resolve
    from tcpreuse.load.worker import Worker, WorkerPlan

    rate = 50_000.0  # far above one worker: always behind, bursts all the way
    plan = WorkerPlan(target=resolve(f"127.0.0.1:{server.port}"), rate=rate, duration=0.3,
                      t0=time.monotonic() + 0.02, drain=3.0)
    res = Worker(plan).run()
    lags = np.frombuffer(res.lag_s, dtype="f8")
    assert lags.size > 200 and res.late_starts > 0
    step = np.diff(lags)
    same_instant = np.isclose(step, -1.0 / rate, rtol=0, atol=1e-9)
    assert same_instant.mean() < 0.05, same_instant.mean()
    # (whether it also left attempts unstarted depends on the machine's speed: not asserted)
    assert res.in_flight_max > 0 and res.cpu_s > 0



def test_a_fast_open_loop_wakes_once_per_quantum_not_once_per_attempt(server: ServeProcess,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts due closer together than WAKE_QUANTUM_S (0.5 ms) are started in small
    batches: the worker wakes at most once per quantum and starts what came due meanwhile,
    instead of sleeping until each attempt, or (gaps of 0.2-1 ms) waiting in select() and waking for
    each answer too. Every attempt still starts, with its own due time and lag."""
    import select as select_mod

    from tcpreuse.load import worker
    from tcpreuse.load.target import resolve

    woke: list[float] = []  # when each sleep ended
    selects: list[float] = []
    real_sleep, real_select, mono = time.sleep, select_mod.select, time.monotonic

    def sleep(s: float) -> None:
        real_sleep(s)
        woke.append(mono())

    def select(r: Any, w: Any, x: Any, timeout: float) -> Any:
        selects.append(timeout)
        return real_select(r, w, x, timeout)

    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(select_mod, "select", select)
    rate, n = 2500.0, 1000  # gaps of 400 us: the loop before select()ed each one
    plan = worker.WorkerPlan(target=resolve(f"127.0.0.1:{server.port}"), rate=rate, count=n, duration=10.0,
                             drain=5.0, t0=time.monotonic() + 0.05)
    r = worker.Worker(plan).run()
    monkeypatch.undo()
    assert r.outcomes == ["ok"] and r.requests == n and len(r.lag_s) == n
    t = np.sort(np.frombuffer(r.t, dtype="f8"))
    assert np.allclose(t, np.arange(n) / rate)  # every due time once
    assert (np.frombuffer(r.lag_s, dtype="f8") >= 0).all()  # none started early
    # (a worker that ran late all along would neither sleep nor select: nothing to check)
    assert not selects  # no wake-up per answer
    gaps = np.diff(woke[1:])  # (the first sleep waits for t0)
    assert (gaps >= worker.WAKE_QUANTUM_S).all(), np.sort(gaps)[:5]  # nor per attempt
    assert r.wakeups > 0  # the summary counts them (voluntary context switches)
