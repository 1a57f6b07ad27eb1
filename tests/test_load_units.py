"""Pure parts of `load` and `serve`: protocol parsing, arrival schedules, address specs,
/proc parsing and histogram merging. No sockets."""

from __future__ import annotations

import errno
import socket
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tcpreuse.errors import TcpreuseError, UnsupportedError
from tcpreuse.load import arrival, kstat, protocol, sockopt
from tcpreuse.load.errors import LoadError
from tcpreuse.load.target import parse_port_range, parse_sources, resolve, split_host_port
from tcpreuse.load.worker import hist_of, merge_hists, percentiles

# ---- protocol ------------------------------------------------------------------------


def test_line_exchange_round_trip() -> None:
    req, used = protocol.parse_request(b"VERIFY 42\nVERIFY 43 KEEP\n")  # type: ignore[misc]
    assert (req.kind, req.key, req.keep_alive, used) == ("line", b"42", False, 10)
    ans = protocol.answer(req, closing=True)
    assert ans == b"OK " + protocol.verification_code(b"42") + b"\n"
    assert protocol.parse_line_answer(ans + b"extra") == len(ans)
    req2, _ = protocol.parse_request(b"VERIFY 43 KEEP\n")  # type: ignore[misc]
    assert req2.keep_alive


def test_line_partial_and_bad_requests() -> None:
    assert protocol.parse_request(b"VERI") is None
    assert protocol.parse_request(b"VERIFY 4") is None
    with pytest.raises(protocol.BadRequest) as e:
        protocol.parse_request(b"VERIFY\n")
    assert e.value.answer.startswith(b"ERR")
    with pytest.raises(protocol.BadRequest):
        protocol.parse_request(b"HELLO there\n")
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_line_answer(b"NO 123\n")
    assert protocol.parse_line_answer(b"OK 12") == -1


def test_http_requests_keep_alive_rules() -> None:
    r11, n = protocol.parse_request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")  # type: ignore[misc]
    assert r11.kind == "http" and r11.keep_alive and n == 28
    close, _ = protocol.parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")  # type: ignore[misc]
    assert not close.keep_alive
    r10, _ = protocol.parse_request(b"GET / HTTP/1.0\r\n\r\n")  # type: ignore[misc]
    assert not r10.keep_alive and r10.http10
    r10k, _ = protocol.parse_request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")  # type: ignore[misc]
    assert r10k.keep_alive
    # a body announced by Content-Length is part of the request
    assert protocol.parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab") is None
    _, used = protocol.parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdeGET")  # type: ignore[misc]
    assert used == len(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcde")
    with pytest.raises(protocol.BadRequest) as e:
        protocol.parse_request(b"GET /\r\n\r\n")
    assert e.value.answer.startswith(b"HTTP/1.1 400")


def test_http_answer_parsing_from_both_sides() -> None:
    req = protocol.Request("http", b"/", keep_alive=True)
    ans = protocol.answer(req, closing=False)
    status, length, closes = protocol.parse_http_answer(ans + b"HTTP/1.1 200")  # type: ignore[misc]
    assert (status, length, closes) == (200, len(ans), False)
    closing = protocol.answer(req, closing=True)
    assert protocol.parse_http_answer(closing)[2] is True  # type: ignore[index]
    # body split across reads
    assert protocol.parse_http_answer(closing[:-3]) is None
    # nginx spelling, lower-case spelling, chunked, EOF-delimited, HTTP/1.0
    ng = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    assert protocol.parse_http_answer(ng) == (200, len(ng), True)
    lc = b"HTTP/1.1 503 x\r\ncontent-length: 1\r\nconnection: close\r\n\r\nz"
    assert protocol.parse_http_answer(lc) == (503, len(lc), True)
    ch = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    assert protocol.parse_http_answer(ch) == (200, len(ch), False)
    eofd = b"HTTP/1.0 200 OK\r\n\r\nhello"
    assert protocol.parse_http_answer(eofd) is None
    assert protocol.parse_http_answer(eofd, eof=True) == (200, len(eofd), True)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_http_answer(ng[:-1], eof=True)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_http_answer(b"SSH-2.0-x\r\n\r\n")


def test_http_request_builder_is_what_the_server_parses() -> None:
    for keep in (True, False):
        req, _used = protocol.parse_request(protocol.http_request("/v?id=1", "h:1", keep))  # type: ignore[misc]
        assert req.keep_alive is keep and req.key == b"/v?id=1"


# ---- arrival schedules ---------------------------------------------------------------


def test_constant_schedule_split_across_workers_is_the_same_sequence() -> None:
    one = list(arrival.Schedule("constant", 100.0, 1.0, None).times())
    assert len(one) == 100 and one[1] - one[0] == pytest.approx(0.01)
    three = sorted(t for i in range(3) for t in arrival.Schedule("constant", 100.0, 1.0, None, workers=3, index=i).times())
    assert three == pytest.approx(one)


def test_count_bounds_schedule_and_split() -> None:
    parts = [list(arrival.Schedule("constant", 1000.0, None, 10, workers=3, index=i).times()) for i in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert len(list(arrival.Schedule("poisson", 1000.0, 5.0, 7).times())) == 7
    with pytest.raises(ValueError):
        list(arrival.Schedule("constant", 1.0, None, None).times())


def test_poisson_schedule_rate_and_dispersion() -> None:
    ts = list(arrival.Schedule("poisson", 1000.0, 20.0, None, seed=3).times())
    assert len(ts) == pytest.approx(20000, rel=0.03)
    gaps = np.diff(ts)
    # exponential gaps: standard deviation equals the mean (a constant schedule has 0)
    assert statistics.pstdev(gaps) == pytest.approx(float(np.mean(gaps)), rel=0.05)
    assert ts == list(arrival.Schedule("poisson", 1000.0, 20.0, None, seed=3).times())


def test_ramp_schedule_integrates_the_rate() -> None:
    ts = np.array(list(arrival.Schedule("ramp", 200.0, 10.0, None, ramp_from=0.0).times()))
    assert len(ts) == pytest.approx(1000, abs=2)  # (0 + 200) / 2 * 10
    first, last = (ts < 1.0).sum(), (ts >= 9.0).sum()
    assert first == pytest.approx(10, abs=2) and last == pytest.approx(190, abs=2)
    down = list(arrival.Schedule("ramp", 10.0, 10.0, None, ramp_from=100.0).times())
    assert len(down) == pytest.approx(550, abs=2)


# ---- addresses -----------------------------------------------------------------------


def test_host_port_forms() -> None:
    assert split_host_port("10.0.0.1:80") == ("10.0.0.1", 80)
    assert split_host_port("[::1]:8080") == ("::1", 8080)
    for bad in ("10.0.0.1", "10.0.0.1:x", "10.0.0.1:70000", "::1:80", "[::1]80"):
        with pytest.raises(LoadError):
            split_host_port(bad)
    ep = resolve("localhost:9")
    assert ep.port == 9 and ep.family in (socket.AF_INET, socket.AF_INET6)
    with pytest.raises(LoadError, match="cannot resolve"):
        resolve("no-such-host.invalid:80")
    with pytest.raises(LoadError, match="port 0"):
        resolve("127.0.0.1:0")


def test_source_specs_expand() -> None:
    assert parse_sources(["10.0.0.1-10.0.0.3", "10.0.0.2"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert parse_sources(["192.168.1.0/30"]) == ["192.168.1.1", "192.168.1.2"]
    assert parse_sources(["10.1.1.1/32"]) == ["10.1.1.1"]
    assert parse_sources(["fd00::1-fd00::2"]) == ["fd00::1", "fd00::2"]
    for bad in (["10.0.0.3-10.0.0.1"], ["10.0.0.300"], ["10.0.0.0/8"], ["10.0.0.1-fd00::1"]):
        with pytest.raises(LoadError):
            parse_sources(bad)


def test_port_range_spec() -> None:
    assert parse_port_range("40000-40999") == (40000, 40999)
    for bad in ("40000", "5-1", "0-10", "a-b", "1-70000"):
        with pytest.raises(LoadError):
            parse_port_range(bad)


def test_local_port_range_unsupported_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class OldKernelSocket(socket.socket):
        def setsockopt(self, *a: object) -> None:  # type: ignore[override]
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    monkeypatch.setattr(sockopt.socket, "socket", OldKernelSocket)
    with pytest.raises(UnsupportedError, match="IP_LOCAL_PORT_RANGE") as e:
        sockopt.check_local_port_range(40000, 40010)
    assert isinstance(e.value, TcpreuseError)


def test_source_not_local_is_a_clear_error() -> None:
    with pytest.raises(LoadError, match=r"192\.0\.2\.7 is not an address of this host"):
        sockopt.check_sources_local(["127.0.0.1", "192.0.2.7"], socket.AF_INET)


# ---- /proc parsing ---------------------------------------------------------------------

NETSTAT = """TcpExt: SyncookiesSent TW TWRecycled PAWSActive ListenOverflows
TcpExt: 0 17 2 0 5
IpExt: InNoRoutes InOctets
IpExt: 0 1234
"""
SNMP = """Tcp: RtoAlgorithm ActiveOpens AttemptFails OutRsts CurrEstab
Tcp: 1 100 3 7 2
Udp: InDatagrams
Udp: 9
"""


def test_nstat_names_and_deltas() -> None:
    before = kstat.parse_nstat(NETSTAT) | kstat.parse_nstat(SNMP)
    assert before["TcpExtTW"] == 17 and before["TcpActiveOpens"] == 100
    assert "IpExtInOctets" not in before and "UdpInDatagrams" not in before
    after = dict(before, TcpExtTW=27, TcpActiveOpens=150)
    d = kstat.deltas(before, after)
    assert d["TcpExtTW"] == 10 and d["TcpActiveOpens"] == 50 and d["TcpExtPAWSActive"] == 0


def test_sockstat_time_wait() -> None:
    text = "sockets: used 19\nTCP: inuse 3 orphan 0 tw 14189 alloc 3 mem 15\nUDP: inuse 0 mem 0\n"
    assert kstat.parse_sockstat_tw(text) == 14189
    assert kstat.parse_sockstat_tw("") == 0


# ---- histograms ------------------------------------------------------------------------


def test_worker_histograms_merge_to_the_histogram_of_all_values() -> None:
    rng = np.random.default_rng(1)
    a = rng.lognormal(6, 1, 5000)  # us
    b = rng.lognormal(8, 0.5, 3000)
    merged = merge_hists([hist_of(a).encode().decode(), hist_of(b).encode().decode(), ""])
    whole = hist_of(np.concatenate([a, b]))
    assert merged.get_total_count() == 8000
    for q in (50, 90, 99, 99.9):
        assert merged.get_value_at_percentile(q) == whole.get_value_at_percentile(q)
    p = percentiles(merged)
    exact = np.percentile(np.concatenate([a, b]), 99) / 1000.0
    assert p["p99"] == pytest.approx(exact, rel=0.01)  # 3 significant digits
    assert percentiles(merge_hists([]))["p50"] is None
    assert hist_of(np.array([float("nan"), 5.0])).get_total_count() == 1


# ---- scheduling hint -------------------------------------------------------------------


def test_short_slice_sets_the_eevdf_slice_and_keeps_nice() -> None:
    """In a child process (it changes the caller's scheduling): the kernel's own view of
    the task (/proc/self/sched, se.slice in ns) shows the 0.1 ms slice; nice stays."""
    import os
    import subprocess
    import sys

    code = ("import os\nfrom tcpreuse.load.worker import short_slice\n"
            "os.nice(3)\nok = short_slice()\n"
            "sl = [ln.split(':')[1].strip() for ln in open('/proc/self/sched') if ln.startswith('se.slice')]\n"
            "print(ok, sl[0] if sl else '-', os.getpriority(os.PRIO_PROCESS, 0))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))).stdout.split()
    took, slice_ns, nice = out[0] == "True", out[1], int(out[2])
    assert nice == 3  # sched_setattr was given the nice value, not 0
    if slice_ns == "-":
        pytest.skip("this kernel does not show se.slice (before EEVDF)")
    if took:
        assert int(slice_ns) == 100_000
    else:
        assert int(slice_ns) != 100_000


def test_name_process_sets_the_command_name() -> None:
    """Load workers show as tcpr-load-N in top/ps/perf (prctl PR_SET_NAME, 15 bytes)."""
    import multiprocessing as mp

    from tcpreuse.load.worker import name_process

    def child(q: Any) -> None:
        name_process("tcpr-load-12345678")
        q.put(Path("/proc/self/comm").read_text().strip())

    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=child, args=(q,))
    p.start()
    got = q.get(timeout=10)
    p.join(10)
    assert got == "tcpr-load-12345"
