"""`load` and `serve` judged by the real kernel, each case in a network namespace of its own
(own loopback, TIME_WAIT table and sysctls; the host's are never touched)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.netns import namespace

from tcpreuse.lab.netns import Namespace
from tcpreuse.load.procs import ServeProcess
from tcpreuse.load.sockopt import IP_LOCAL_PORT_RANGE, local_port_range_value

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

PORT = 8080


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> Iterator[Namespace]:
    sysctls = getattr(request, "param", {})
    with namespace("ld", **sysctls) as n:
        yield n


def serve(ns: Namespace, *args: str) -> ServeProcess:
    return ServeProcess(["--listen", f"127.0.0.1:{PORT}", *args], prefix=ns.cmd([]))


def load(ns: Namespace, *args: str) -> dict[str, Any]:
    r = ns.run([sys.executable, "-m", "tcpreuse", "load", *args, "--json", "--workers", "1"], check=False)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def time_wait(ns: Namespace) -> tuple[int, int]:
    """TIME_WAIT sockets in `ns`: (client side: peer is the server port, server side)."""
    out = ns.run(["ss", "-Htan", "state", "time-wait"]).stdout
    client = server = 0
    for line in out.splitlines():
        f = line.split()
        local, peer = f[-2], f[-1]
        if local.endswith(f":{PORT}"):
            server += 1
        elif peer.endswith(f":{PORT}"):
            client += 1
    return client, server


@pytest.mark.parametrize(
    ("load_close", "serve_close", "expect"),
    [
        ("client", "client", "client"),  # client FIN first: TIME_WAIT on the client
        ("server", "server", "server"),  # server FIN first: TIME_WAIT on the server
        ("rst", "client", "none"),  # SO_LINGER {1,0}: RST, TIME_WAIT nowhere
    ],
)
def test_close_policy_decides_where_time_wait_lands(ns: Namespace, load_close: str, serve_close: str,
                                                     expect: str) -> None:
    with serve(ns, "--close", serve_close) as srv:
        s = load(ns, f"127.0.0.1:{PORT}", "--rate", "200", "--count", "50", "--close", load_close)
        assert s["ok"] == 50
        client_tw, server_tw = time_wait(ns)
        summary = srv.stop()
    assert (client_tw, server_tw) == {"client": (50, 0), "server": (0, 50), "none": (0, 0)}[expect]
    assert s["counters"].get("TcpExtTW", 0) == (0 if expect == "none" else 50)  # nonzero only
    if expect == "none":
        assert summary["resets_received"] == 50  # the server saw ECONNRESET
        assert s["counters"]["TcpOutRsts"] >= 50
    assert max(s["per_second"]["time_wait"]) == (0 if expect == "none" else 50)


@pytest.mark.parametrize("ns", [{"net.ipv4.ip_local_port_range": "50000 50019",
                                 "net.ipv4.tcp_tw_reuse": "0"}], indirect=True)
def test_ephemeral_ports_run_out_with_eaddrnotavail(ns: Namespace) -> None:
    with serve(ns, "--close", "client"):
        s = load(ns, f"127.0.0.1:{PORT}", "--rate", "1000", "--count", "30", "--close", "client")
        # one more source address is another 20 ports toward the same server
        two = load(ns, f"127.0.0.1:{PORT}", "--rate", "1000", "--count", "50", "--close", "client",
                   "--source", "127.0.0.2-127.0.0.3")
    assert s["ok"] == 20 and s["outcomes"]["EADDRNOTAVAIL"]["count"] == 10
    d = s["outcomes"]["EADDRNOTAVAIL"]
    assert re.fullmatch(rf"\S+ -> 127\.0\.0\.1:{PORT}", d["sample"])  # no local port: none was free
    assert not re.match(r"\S+:\d+ ->", d["sample"])
    assert s["reasons"]["local_ports_exhausted"] == 10
    assert d["first_s"] >= 0.019  # the 21st attempt, at 1000/s
    assert two["ok"] == 40 and two["outcomes"]["EADDRNOTAVAIL"]["count"] == 10
    assert re.fullmatch(rf"127\.0\.0\.[23] -> 127\.0\.0\.1:{PORT}", two["outcomes"]["EADDRNOTAVAIL"]["sample"])


def _has_ip_local_port_range() -> bool:
    s = socket.socket()
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, local_port_range_value(50100, 50109))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.skipif(not _has_ip_local_port_range(), reason="kernel without IP_LOCAL_PORT_RANGE (< 6.3)")
@pytest.mark.parametrize("ns", [{"net.ipv4.tcp_tw_reuse": "0"}], indirect=True)
def test_local_port_range_per_socket(ns: Namespace) -> None:
    with serve(ns, "--close", "client"):
        s = load(ns, f"127.0.0.1:{PORT}", "--rate", "1000", "--count", "15", "--close", "client",
                 "--local-port-range", "50100-50109")
    assert s["ok"] == 10 and s["outcomes"]["EADDRNOTAVAIL"]["count"] == 5
    assert re.fullmatch(rf"127\.0\.0\.1:501(0\d) -> 127\.0\.0\.1:{PORT}", s["outcomes"]["ok"]["sample"])


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed")
def test_syn_retransmissions_and_connect_timeouts(ns: Namespace) -> None:
    # Inside the namespace only: drop every other SYN to PORT, and every SYN to PORT + 1.
    ns.run(["nft", "add table inet tcpr"])
    ns.run(["nft", "add chain inet tcpr input { type filter hook input priority 0 ; }"])
    ns.run(["nft", f"add rule inet tcpr input tcp dport {PORT} tcp flags syn numgen inc mod 2 == 0 drop"])
    ns.run(["nft", f"add rule inet tcpr input tcp dport {PORT + 1} tcp flags syn drop"])
    with serve(ns):
        s = load(ns, f"127.0.0.1:{PORT}", "--concurrency", "1", "--count", "2", "--connect-timeout", "5")
    assert s["ok"] == 2 and s["ok_after_syn_retry"] == 2 and s["reasons"] == {"ok_after_syn_retry": 2}
    assert s["connect_ms"]["p50"] >= 900  # the first SYN's 1 s retransmission timer
    assert s["per_second"]["delayed"][0] >= 1
    t = load(ns, f"127.0.0.1:{PORT + 1}", "--rate", "100", "--count", "3", "--connect-timeout", "0.3")
    assert t["outcomes"]["ETIMEDOUT"]["count"] == 3 and t["reasons"] == {"connect_timeout": 3}
    assert re.fullmatch(rf"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{PORT + 1}", t["outcomes"]["ETIMEDOUT"]["sample"])


@pytest.mark.parametrize("ns", [{"net.ipv4.ip_local_port_range": "50000 50019",
                                 "net.ipv4.tcp_tw_reuse": "0"}], indirect=True)
def test_address_no_port_shares_ports_per_destination_and_bind0_does_not(ns: Namespace) -> None:
    with ServeProcess(["--listen", f"127.0.0.1:{PORT}", "--listen", f"127.0.0.1:{PORT + 1}",
                       "--close", "client"], prefix=ns.cmd([])):
        a = [load(ns, f"127.0.0.1:{p}", "--rate", "1000", "--count", "25", "--source", "127.0.0.1")
             for p in (PORT, PORT + 1)]
        # every port now sits in TIME_WAIT under a connect()-made bind bucket: bind(addr, 0)
        # cannot take any of them, toward any destination
        b = load(ns, f"127.0.0.1:{PORT + 1}", "--rate", "1000", "--count", "5", "--source", "127.0.0.1",
                 "--bind", "bind0")
    assert [s["ok"] for s in a] == [20, 20]  # the 20-port budget is per destination
    assert all(s["outcomes"]["EADDRNOTAVAIL"]["count"] == 5 for s in a)
    assert b["ok"] == 0 and b["outcomes"]["EADDRINUSE"]["count"] == 5
    assert b["reasons"] == {"local_ports_exhausted": 5}


def test_unreachable_target_is_refused_up_front(ns: Namespace) -> None:
    # the namespace has only its loopback: no route to anything else
    r = ns.run([sys.executable, "-m", "tcpreuse", "load", "192.0.2.1:80", "--rate", "10", "--count", "5"],
               check=False)
    assert r.returncode == 2 and "192.0.2.1:80 is unreachable" in r.stderr
    assert "Traceback" not in r.stderr
