"""`tcpreuse trace` on the real kernel: one test per row of the table in docs/trace.md.

Each test provokes one kernel verdict inside its own "tcpr-tr-" namespace (on its
loopback, with hand-made segments where a real stack would not send them) and asserts
the event, the kernel's reason and the 4-tuple (and the pid for connect()/bind()). One
bpftrace runs for the module; each test keeps only the events of its own namespace.
Tests skip with the reason where this host cannot trace.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Cli, tcpcraft
from helpers.netns import namespace
from helpers.tcpcraft import ACK, FIN, RST, SYN, Sniffer

from tcpreuse.host.source import entered_netns
from tcpreuse.lab.netns import Namespace
from tcpreuse.trace.aggregate import Summary
from tcpreuse.trace.events import TraceEvent
from tcpreuse.trace.kernel import TraceUnavailable, netns_inode, problems
from tcpreuse.trace.program import Filter
from tcpreuse.trace.runner import Tracer, open_trace

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LO = "127.0.0.1"


class Collector:
    """Events of the module's tracer, classified as `tcpreuse trace` does."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.summary = Summary()
        self.events: list[TraceEvent] = []

    def pump(self, timeout: float) -> None:
        items, _ = self.tracer.poll(timeout)
        for it in items:
            if isinstance(it, TraceEvent):
                shown = self.summary.add(it)
                if shown is not None:
                    self.events.append(shown)

    def wait(self, pred: Callable[[TraceEvent], bool], timeout: float = 10.0) -> TraceEvent:
        end = time.monotonic() + timeout
        while True:
            for e in self.events:
                if pred(e):
                    return e
            if time.monotonic() > end:
                raise AssertionError("no such event; saw: " + "; ".join(
                    f"{e.verdict} {e.reason} {e.tuple} {e.netns}" for e in self.events[-20:]))
            self.pump(0.1)


def _open(flt: Filter) -> Iterator[Collector]:
    found = problems()
    if found:
        pytest.skip(f"cannot trace here: {found[0]}")
    try:
        with open_trace(flt) as (tracer, _info):
            yield Collector(tracer)
    except TraceUnavailable as e:
        if "bpftrace failed" in e.message:
            raise  # the program did not compile or load: a bug, not this host's limit
        pytest.skip(f"cannot trace here: {e.message}")


@pytest.fixture(scope="module")
def module_tracer() -> Iterator[Collector]:
    yield from _open(Filter())


@pytest.fixture
def tracer(module_tracer: Collector) -> Collector:
    """The module's tracer with the earlier tests' events dropped: a deleted namespace's
    inode number is reused by the next one, and its last events may still arrive."""
    module_tracer.pump(0.2)
    module_tracer.events.clear()
    return module_tracer


@pytest.fixture
def ns() -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    n = namespace("tr")
    with n:
        yield n


def _mine(ns: Namespace, verdict: str) -> Callable[[TraceEvent], bool]:
    ino = netns_inode(ns.name)
    return lambda e: e.netns == ino and e.verdict == verdict


def _server_timewait(sn: Sniffer) -> tuple[socket.socket, int, int, tcpcraft.Seen, tcpcraft.Seen]:
    """A closed connection whose *server* side is in TIME_WAIT: (listener, P, Q, client SYN, client FIN)."""
    lst = socket.socket()
    lst.bind((LO, 0))
    lst.listen(8)
    p = lst.getsockname()[1]
    c = socket.socket()
    c.connect((LO, p))
    q = c.getsockname()[1]
    s, _ = lst.accept()
    s.close()  # the server closes first: it will hold TIME_WAIT
    assert c.recv(1) == b""
    c.close()
    syn = sn.find(q, p, SYN)
    fin = sn.find(q, p, FIN)
    return lst, p, q, syn, fin


def test_seed_syn_on_timewait_gets_old_ack(tracer: Collector, ns: Namespace) -> None:
    """The seed: a timestamp-less SYN whose ISN is below the old rcv_nxt, at a server TIME_WAIT."""
    with entered_netns(ns.name):
        sn = Sniffer()
        lst, p, q, syn, fin = _server_timewait(sn)
        isn = syn.seq  # the old connection's ISN: before its rcv_nxt (fin.seq + 1)
        mark = sn.mark()
        tcpcraft.send(LO, LO, q, p, seq=isn, flags=SYN)
        ack = sn.find(p, q, ACK, since=mark, exact=True)  # the TIME_WAIT answered with an ACK for the old connection
        sn.close()
        lst.close()
    assert ack.ack == (fin.seq + 1) & 0xFFFFFFFF
    ev = tracer.wait(_mine(ns, "old-ack"))
    assert ev.probe == "skb:kfree_skb"
    assert (ev.reason, ev.state) == ("NOT_SPECIFIED", "TIME_WAIT")
    assert "S" in ev.flags and "R" not in ev.flags
    assert ev.tuple == (LO, q, LO, p)
    assert ev.seq == isn


def test_paws_at_timewait(tracer: Collector, ns: Namespace) -> None:
    """A SYN with an older timestamp than the old connection's last one: PAWS drop at TIME_WAIT."""
    with entered_netns(ns.name):
        sn = Sniffer()
        lst, p, q, _syn, fin = _server_timewait(sn)
        assert fin.tsval is not None, "the connection negotiated no timestamps"
        tcpcraft.send(LO, LO, q, p, seq=fin.seq + 100_000, flags=SYN, tsval=fin.tsval - 1000)
        sn.close()
        lst.close()
    ev = tracer.wait(_mine(ns, "tw-paws"))
    assert (ev.reason, ev.state) == ("TCP_RFC7323_TW_PAWS", "TIME_WAIT")
    assert "S" in ev.flags
    assert ev.tuple == (LO, q, LO, p)


def test_rst_kills_timewait(tracer: Collector, ns: Namespace) -> None:
    with entered_netns(ns.name):
        sn = Sniffer()
        lst, p, q, _syn, fin = _server_timewait(sn)
        tcpcraft.send(LO, LO, q, p, seq=fin.seq + 1, flags=RST)
        sn.close()
        lst.close()
    ev = tracer.wait(lambda e: _mine(ns, "tw-rst")(e) and e.sport == q)
    assert (ev.reason, ev.state, ev.flags) == ("NOT_SPECIFIED", "TIME_WAIT", "R")
    assert ev.tuple == (LO, q, LO, p)


def test_syn_accepted_on_timewait_is_inferred(tracer: Collector, ns: Namespace) -> None:
    """A SYN with a newer timestamp is let through the server's TIME_WAIT: no event marks
    it; the trace infers it from the state changes of that 4-tuple."""
    with entered_netns(ns.name):
        sn = Sniffer()
        lst, p, q, _syn, _fin = _server_timewait(sn)
        sn.close()
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind((LO, q))
        c.connect((LO, p))  # timestamps on: a newer TSval than the TIME_WAIT's ts_recent
        s, _ = lst.accept()
        c.close(), s.close(), lst.close()
    ev = tracer.wait(_mine(ns, "tw-accepted"))
    assert ev.tuple == (LO, p, LO, q)  # the server's view: local port first
    assert ev.reason.startswith("TIME_WAIT ")


def test_listen_overflow_and_synack_retransmit(tracer: Collector, ns: Namespace) -> None:
    """Two handshakes admitted while the accept queue had room; the second final ACK finds
    it full (backlog 1, one connection already waiting): TCP_LISTEN_OVERFLOW, and the
    server retransmits that SYN-ACK. The clients are hand-made (their stack's RSTs are
    dropped by nftables in the namespace, so the request socks stay)."""
    with entered_netns(ns.name):
        lst = socket.socket()
        lst.bind((LO, 0))
        lst.listen(1)
        p = lst.getsockname()[1]
        first = socket.socket()
        first.connect((LO, p))  # waits in the accept queue
        q1, q2 = 41001, 41002
    ns.nft(f"table inet tcpr-tr {{\n chain out {{\n  type filter hook output priority 0;\n"
           f"  tcp sport {{ {q1}, {q2} }} tcp flags rst drop\n }}\n}}\n")
    with entered_netns(ns.name):
        sn = Sniffer()
        tcpcraft.send(LO, LO, q1, p, seq=1000, flags=SYN)
        tcpcraft.send(LO, LO, q2, p, seq=2000, flags=SYN)
        sa1 = sn.find(p, q1, SYN | ACK)
        sa2 = sn.find(p, q2, SYN | ACK)
        tcpcraft.send(LO, LO, q1, p, seq=1001, ack=sa1.seq + 1, flags=ACK)
        tcpcraft.send(LO, LO, q2, p, seq=2001, ack=sa2.seq + 1, flags=ACK)
        sn.close()
    try:
        ev = tracer.wait(_mine(ns, "listen-overflow"))
        assert ev.reason == "TCP_LISTEN_OVERFLOW"
        assert ev.tuple == (LO, q2, LO, p)
        assert ev.state == "LISTEN"
        rtx = tracer.wait(_mine(ns, "synack-retransmit"), timeout=8)
        assert rtx.tuple == (LO, p, LO, q2)
    finally:
        first.close()
        lst.close()


def test_connect_eaddrnotavail_with_pid(tracer: Collector, ns: Namespace) -> None:
    ns.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
    held = []
    with entered_netns(ns.name):
        lst = socket.socket()
        lst.bind((LO, 8080))  # outside the two-port range
        lst.listen(8)
        p = 8080
        for _ in range(2):
            c = socket.socket()
            c.connect((LO, p))
            held.append(c)
        c = socket.socket()
        with pytest.raises(OSError) as e:
            c.connect((LO, p))
        assert e.value.errno == 99
        for s in (*held, c, lst):
            s.close()
    ev = tracer.wait(_mine(ns, "connect-error"))
    assert ev.reason == "EADDRNOTAVAIL"
    assert ev.pid == os.getpid()
    assert (ev.daddr, ev.dport) == (LO, p)


def test_bind_eaddrinuse_with_pid(tracer: Collector, ns: Namespace) -> None:
    with entered_netns(ns.name):
        a = socket.socket()
        a.bind((LO, 0))
        port = a.getsockname()[1]
        b = socket.socket()
        with pytest.raises(OSError):
            b.bind((LO, port))
        a.close(), b.close()
    ev = tracer.wait(_mine(ns, "bind-error"))
    assert ev.reason == "EADDRINUSE"
    assert ev.pid == os.getpid()
    assert (ev.saddr, ev.sport) == (LO, port)


def test_refused_async_error_and_reset(tracer: Collector, ns: Namespace) -> None:
    """A non-blocking connect() to a closed port: the RST the kernel sends (NO_SOCKET), the
    SYN it dropped, and the error reported on the client socket."""
    with entered_netns(ns.name):
        probe = socket.socket()
        probe.bind((LO, 0))
        p = probe.getsockname()[1]
        probe.close()  # a port nobody listens on
        c = socket.socket()
        c.setblocking(False)
        assert c.connect_ex((LO, p)) in (115, 111)
        q = c.getsockname()[1]
        time.sleep(0.1)
        assert c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 111
        c.close()
    err = tracer.wait(lambda e: _mine(ns, "async-error")(e) and e.dport == p)
    assert err.reason == "ECONNREFUSED" and err.tuple == (LO, q, LO, p)
    rst = tracer.wait(lambda e: _mine(ns, "reset-sent")(e) and e.sport == p)
    assert rst.reason == "NO_SOCKET" and rst.tuple == (LO, p, LO, q)
    drop = tracer.wait(_mine(ns, "no-socket"))
    assert drop.reason == "NO_SOCKET" and drop.tuple == (LO, q, LO, p) and drop.flags == "S"


def test_netns_and_port_filters_in_kernel(ns: Namespace) -> None:
    """--netns and --port filter in the kernel: another namespace's event, or another
    port's, never reaches user space."""
    other = namespace("tro")
    with other, entered_netns(ns.name):
        probe = socket.socket()
        probe.bind((LO, 0))
        port = probe.getsockname()[1]
        probe.close()
    with other:
        for col in _open(Filter(netns=netns_inode(ns.name), ports=(port,))):
            for n, p in ((other, port), (ns, port + 1), (ns, port)):
                with entered_netns(n.name):
                    a = socket.socket()
                    a.bind((LO, p))
                    b = socket.socket()
                    with pytest.raises(OSError):
                        b.bind((LO, p))
                    a.close(), b.close()
            col.wait(_mine(ns, "bind-error"))
            col.pump(0.3)
            assert {(e.netns, e.sport) for e in col.events} == {(netns_inode(ns.name), port)}


def _fail_binds(ns: Namespace, stop: threading.Event) -> None:
    """bind() EADDRINUSE every 50 ms in `ns` until stopped (bpftrace's start-up time varies)."""
    with entered_netns(ns.name):
        a = socket.socket()
        a.bind((LO, 0))
        while not stop.wait(0.05):
            b = socket.socket()
            with contextlib.suppress(OSError):
                b.bind(a.getsockname())
            b.close()
        a.close()


def test_doctor_trace_diagnoses_the_kernels_verdicts(cli: Cli, ns: Namespace) -> None:
    """`doctor --trace S`: the trace's findings come with the host's, same shape and fixes."""
    import json

    if problems():
        pytest.skip(f"cannot trace here: {problems()[0]}")
    stop = threading.Event()
    t = threading.Thread(target=_fail_binds, args=(ns, stop), daemon=True)
    t.start()
    try:
        code, out, err = cli(["doctor", "--netns", ns.name, "--trace", "2", "--interval", "0", "--json"])
    finally:
        stop.set()
        t.join(5)
    assert code == 0, err
    doc = json.loads(out)
    f = next(f for f in doc["findings"] if f["id"] == "trace-bind-eaddrinuse")
    assert f["source"] == "doctor" and f"[{os.getpid()}]" in str(f["evidence"])  # the process that failed
    assert {x["id"] for x in f["fixes"]} == {"bind-address-no-port", "reuseaddr"}


def test_ipv6_refused_connect(tracer: Collector, ns: Namespace) -> None:
    """The same events over IPv6: the RST sent, the SYN dropped, the errors, with IPv6 4-tuples."""
    with entered_netns(ns.name):
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        p = probe.getsockname()[1]
        probe.close()
        c = socket.socket(socket.AF_INET6)
        with pytest.raises(ConnectionRefusedError):
            c.connect(("::1", p))
        q = c.getsockname()[1]
        c.close()
    drop = tracer.wait(_mine(ns, "no-socket"))
    assert (drop.reason, drop.tuple, drop.flags) == ("NO_SOCKET", ("::1", q, "::1", p), "S")
    rst = tracer.wait(_mine(ns, "reset-sent"))
    assert (rst.reason, rst.tuple) == ("NO_SOCKET", ("::1", p, "::1", q))
    err = tracer.wait(_mine(ns, "async-error"))
    assert (err.reason, err.tuple) == ("ECONNREFUSED", ("::1", q, "::1", p))
    ce = tracer.wait(_mine(ns, "connect-error"))
    assert (ce.reason, ce.daddr, ce.dport, ce.pid) == ("ECONNREFUSED", "::1", p, os.getpid())


def test_dual_stack_listener_sees_ipv4_tuples(tracer: Collector, ns: Namespace) -> None:
    """An IPv6 listener on [::] serving an IPv4 client: its sockets' state changes carry
    IPv4-mapped addresses, folded to the IPv4 4-tuple the packets have, so a SYN accepted
    on its TIME_WAIT is still inferred."""
    with entered_netns(ns.name):
        lst = socket.socket(socket.AF_INET6)
        lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        lst.bind(("::", 0))
        lst.listen(8)
        p = lst.getsockname()[1]
        c = socket.socket()
        c.connect((LO, p))
        q = c.getsockname()[1]
        s, _ = lst.accept()
        s.close()  # the server closes first: TIME_WAIT on the IPv6 socket
        assert c.recv(1) == b""
        c.close()
        time.sleep(0.05)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind((LO, q))
        c.connect((LO, p))
        s, _ = lst.accept()
        c.close(), s.close(), lst.close()
    ev = tracer.wait(_mine(ns, "tw-accepted"))
    assert ev.tuple == (LO, p, LO, q)


def test_trace_verb_json_lines_summary_and_html(cli: Cli, ns: Namespace, tmp_path: Path) -> None:
    """`tcpreuse trace --netns --json --html`: one line per event, the summary with its
    findings last, and the HTML page."""
    import json

    if problems():
        pytest.skip(f"cannot trace here: {problems()[0]}")
    stop = threading.Event()
    t = threading.Thread(target=_fail_binds, args=(ns, stop), daemon=True)
    t.start()
    html = tmp_path / "trace.html"
    try:
        code, out, err = cli(["trace", "--netns", ns.name, "--duration", "2", "--json", "--html", str(html)])
    finally:
        stop.set()
        t.join(5)
    assert code == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    events, summary = lines[:-1], lines[-1]
    assert events and {e["verdict"] for e in events} == {"bind-error"}
    assert all(e["pid"] == os.getpid() and e["netns"] == netns_inode(ns.name) for e in events)
    assert summary["kind"] == "tcpreuse-trace" and summary["verdicts"] == {"bind-error": len(events)}
    assert summary["lost_events"] == 0
    assert [f["id"] for f in summary["findings"]] == ["trace-bind-eaddrinuse"]
    page = html.read_text()
    assert "kernel trace" in page and "bind-error" in page and "EADDRINUSE" in page
