"""`tcpreuse serve` on loopback, driven by raw sockets (and curl when installed)."""

from __future__ import annotations

import contextlib
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tcpreuse.load.procs import ServeProcess
from tcpreuse.load.protocol import verification_code

pytestmark = pytest.mark.timeout(120)


def serve(*args: str) -> ServeProcess:
    return ServeProcess(["--listen", "127.0.0.1:0", *args])


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_until_closed(s: socket.socket, timeout: float = 5.0) -> bytes:
    s.settimeout(timeout)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


@pytest.fixture
def default_server() -> Iterator[ServeProcess]:
    with serve() as srv:
        yield srv


def test_line_protocol_answers_and_server_closes_first(default_server: ServeProcess) -> None:
    s = connect(default_server.port)
    s.sendall(b"VERIFY 42\n")
    assert read_until_closed(s) == b"OK " + verification_code(b"42") + b"\n"  # then our EOF
    s.close()
    summary = default_server.stop()
    assert default_server.returncode == 0
    assert summary["connections"] == 1 and summary["answers"] == 1
    assert summary["server_closed_first"] == 1 and summary["client_closed_first"] == 0


def test_line_keep_alive_then_last_request() -> None:
    with serve() as srv:
        s = connect(srv.port)
        s.sendall(b"VERIFY 1 KEEP\nVERIFY 2 KEEP\n")
        time.sleep(0.2)
        s.sendall(b"VERIFY 3\n")
        data = read_until_closed(s)
        s.close()
        assert data.splitlines() == [b"OK " + verification_code(k) for k in (b"1", b"2", b"3")]


def test_http_keep_alive_and_connection_close(default_server: ServeProcess) -> None:
    s = connect(default_server.port)
    s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = read_until_closed(s)
    s.close()
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.endswith(b"Connection: close\r\n\r\nOK " + verification_code(b"/b") + b"\n")
    s = connect(default_server.port)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert b"200 OK" in read_until_closed(s)  # HTTP/1.0 closes without keep-alive
    s.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_200(default_server: ServeProcess) -> None:
    r = subprocess.run(["curl", "-sS", "-i", f"http://127.0.0.1:{default_server.port}/verify?id=7"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HTTP/1.1 200 OK")
    assert r.stdout.endswith("OK " + verification_code(b"/verify?id=7").decode() + "\n")


def test_bad_request_gets_an_error_and_close(default_server: ServeProcess) -> None:
    s = connect(default_server.port)
    s.sendall(b"HELLO\n")
    assert read_until_closed(s).startswith(b"ERR")
    s.close()
    assert default_server.stop()["bad_requests"] == 1


def test_close_client_waits_for_the_client_fin() -> None:
    with serve("--close", "client") as srv:
        s = connect(srv.port)
        s.sendall(b"VERIFY 9\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"OK ")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no FIN from the server: it waits for ours
            s.recv(100)
        s.shutdown(socket.SHUT_WR)
        assert read_until_closed(s) == b""  # after our FIN, the server closes too
        s.close()
        summary = srv.stop()
    assert summary["client_closed_first"] == 1 and summary["server_closed_first"] == 0


def test_close_rst_resets_after_the_answer() -> None:
    with serve("--close", "rst") as srv:
        s = connect(srv.port)
        s.sendall(b"VERIFY 5\n")
        s.settimeout(5)
        got = b""
        with pytest.raises(ConnectionResetError):
            while True:
                chunk = s.recv(100)
                if not chunk:
                    break
                got += chunk
        s.close()
        assert got.startswith(b"OK ")
        assert srv.stop()["rst_sent"] == 1


def test_idle_and_slow_clients_are_cut() -> None:
    with serve("--idle-timeout", "0.5") as srv:
        silent = connect(srv.port)
        slow = connect(srv.port)
        slow.sendall(b"VERI")  # never finishes its request
        t = time.monotonic()
        for s in (silent, slow):
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(100) == b""
            s.close()
        assert 0.4 < time.monotonic() - t < 3
        summary = srv.stop()
    assert summary["idle_timeouts"] == 2 and summary["answers"] == 0


def test_delay_and_max_requests_per_conn() -> None:
    with serve("--delay-ms", "200", "--max-requests-per-conn", "2") as srv:
        s = connect(srv.port)
        t = time.monotonic()
        s.sendall(b"VERIFY 1 KEEP\nVERIFY 2 KEEP\nVERIFY 3 KEEP\n")
        data = read_until_closed(s)
        elapsed = time.monotonic() - t
        s.close()
        assert data.count(b"OK ") == 2  # then the server closed: its cap is 2 per connection
        assert elapsed >= 0.38


def test_workers_share_the_port_and_sum_their_stats() -> None:
    with serve("--workers", "2") as srv:
        assert len(psutil.Process(srv.pid).children()) == 2
        for i in range(40):
            s = connect(srv.port)
            s.sendall(b"VERIFY %d\n" % i)
            assert read_until_closed(s).startswith(b"OK ")
            s.close()
        summary = srv.stop(signal.SIGINT)
    assert srv.returncode == 0
    assert summary["connections"] == 40 and summary["answers"] == 40


def test_bad_listen_address_is_one_clear_line() -> None:
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "serve", "--listen", "192.0.2.1:80"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "cannot listen on 192.0.2.1:80" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "serve", "--listen", "127.0.0.1"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "expected HOST:PORT" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_ten_thousand_idle_connections_and_churn_leak_no_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 500
    if hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    idle: list[socket.socket] = []
    try:
        with serve("--idle-timeout", "60") as srv:
            proc = psutil.Process(srv.pid)
            warm = connect(srv.port)  # the event loop's own descriptors exist by now
            warm.sendall(b"VERIFY 0\n")
            read_until_closed(warm)
            warm.close()
            time.sleep(0.2)
            baseline = proc.num_fds()
            for _ in range(10_000):
                s = socket.socket()
                s.settimeout(10)
                s.connect(("127.0.0.1", srv.port))
                idle.append(s)
            deadline = time.monotonic() + 20
            while proc.num_fds() < baseline + 10_000 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.num_fds() >= baseline + 10_000
            # churn while they sit there: short connections through the load generator
            r = subprocess.run(
                [sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{srv.port}", "--rate", "2000",
                 "--count", "3000", "--workers", "1", "--json"],
                capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            assert '"ok": 3000' in r.stdout
            for s in idle:
                s.close()
            idle.clear()
            deadline = time.monotonic() + 20
            while proc.num_fds() > baseline and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.num_fds() == baseline
            summary = srv.stop()
        assert summary["connections"] == 13_001 and summary["open_max"] >= 10_000
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_sigterm_stops_cleanly_with_connections_open() -> None:
    srv = serve().start()
    s = connect(srv.port)
    summary = srv.stop(signal.SIGTERM, timeout=10)
    s.close()
    assert srv.returncode == 0 and summary["connections"] == 1
    assert not psutil.pid_exists(srv.pid) or psutil.Process(srv.pid).status() == psutil.STATUS_ZOMBIE

