"""`tcpreuse doctor` on the real kernel: namespaces put into bad states, diagnosed.

Each test builds a "tcpr-" network namespace, drives it with a small bounded Python
socket loop running inside it, and checks the doctor's finding and numbers against what
the kernel itself did (e.g. the number of connect() calls that succeeded before
EADDRNOTAVAIL equals the budget the doctor computed). Nothing touches the host's own
namespace; namespaces are removed also on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tcpreuse.diagnose.base import diagnose, evidence_of
from tcpreuse.host.source import LinuxSource
from tcpreuse.lab.netns import Namespace, veth_pair

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

REPO = Path(__file__).resolve().parent.parent

# Runs inside a namespace. Modes:
#   churn PORT MAX RATE SECONDS  connect to 127.0.0.1:PORT, close first (client TIME_WAIT);
#                                prints {"t": monotonic, "ok": n} every 50 and a final line
#                                {"ok": n, "errno": name|null, "t_fail": monotonic|null}
#   flood PORT BACKLOG RATE SECONDS  a listener that never accepts, non-blocking connects
TRAFFIC = r"""
import errno, json, socket, sys, time
mode, port, a, rate, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
out = lambda d: print(json.dumps(d), flush=True)
if mode == "churn":
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port)); l.listen(512)
    ok, err, t_fail = 0, None, None
    start = time.monotonic(); end = start + secs
    out({"t": start, "ok": 0})
    while ok < a and time.monotonic() < end:
        due = start + ok / rate if rate > 0 else 0
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        c = socket.socket()
        try:
            c.connect(("127.0.0.1", port))
        except OSError as e:
            c.close(); err = errno.errorcode.get(e.errno, str(e.errno)); t_fail = time.monotonic(); break
        s, _ = l.accept(); c.close(); s.close(); ok += 1
        if ok % 50 == 0:
            out({"t": time.monotonic(), "ok": ok})
    out({"ok": ok, "errno": err, "t_fail": t_fail})
    sys.stdin.read()  # keep the listener until the test is done
elif mode == "serve":  # accept and hold up to A connections on 0.0.0.0:PORT
    l = socket.socket(); l.bind(("0.0.0.0", port)); l.listen(512); l.settimeout(0.2)
    held, end = [], time.monotonic() + secs
    out({"listening": port})
    while time.monotonic() < end and len(held) < a:
        try:
            held.append(l.accept()[0])
        except TimeoutError:
            pass
    out({"held": len(held)})
    sys.stdin.read()
elif mode == "hold":  # open A connections to DST:PORT and keep them (DST in argv[6])
    dst = sys.argv[6]
    held = [socket.create_connection((dst, port), timeout=5) for _ in range(a)]
    out({"held": len(held)})
    sys.stdin.read()
elif mode == "stopped":  # a server that closes first A times on PORT, then stops listening
    l = socket.socket(); l.bind(("127.0.0.1", port)); l.listen(512)
    for _ in range(a):
        c = socket.create_connection(("127.0.0.1", port)); s, _ = l.accept()
        s.close(); c.recv(1); c.close()  # server first: its TIME_WAIT keeps the listening port
    l.close()
    out({"stopped": a})
    sys.stdin.read()
elif mode == "listen":  # a listener with backlog A on 0.0.0.0:PORT that never accepts
    l = socket.socket(); l.bind(("0.0.0.0", port)); l.listen(a)
    out({"listening": port})
    sys.stdin.read()
elif mode == "connect":  # non-blocking connects to DST:PORT (argv[6]) at RATE for SECONDS, kept open
    dst, held = sys.argv[6], []
    start = time.monotonic()
    out({"t": start})
    while time.monotonic() - start < secs and len(held) < a:
        c = socket.socket(); c.setblocking(False)
        c.connect_ex((dst, port)); held.append(c)
        time.sleep(1 / rate)
    out({"sent": len(held)})
    sys.stdin.read()
elif mode == "accept":  # accept on 0.0.0.0:PORT and close at once, until stdin closes
    import threading
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("0.0.0.0", port)); l.listen(4096)
    def loop():
        while True:
            s, _ = l.accept(); s.close()
    threading.Thread(target=loop, daemon=True).start()
    out({"listening": port})
    sys.stdin.read()
elif mode == "churnto":  # connect to DST:PORT (argv[6]) A times, wait for the server's close
    dst, ok, failed, slow = sys.argv[6], 0, 0, 0
    for _ in range(a):
        c = socket.socket(); c.settimeout(1.5); t0 = time.monotonic()
        try:
            c.connect((dst, port)); c.recv(1); ok += 1
            slow += time.monotonic() - t0 > 0.5
        except OSError:
            failed += 1
        c.close()
    out({"ok": ok, "failed": failed, "slow": slow})
    sys.stdin.read()
elif mode == "demand":  # connect() to 127.0.0.1:PORT at RATE for SECONDS whatever fails, client closes first
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", port)); l.listen(4096)
    ok, failed, i = 0, 0, 0
    start = time.monotonic()
    out({"t": start})
    while time.monotonic() - start < secs:
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        i += 1
        c = socket.socket()
        try:
            c.connect(("127.0.0.1", port))
        except OSError:
            c.close(); failed += 1; continue
        s, _ = l.accept(); c.close(); s.close(); ok += 1
    out({"ok": ok, "failed": failed, "secs": time.monotonic() - start})
    sys.stdin.read()
elif mode == "flood":
    l = socket.socket(); l.bind(("127.0.0.1", port)); l.listen(a)
    held = []
    start = time.monotonic()
    while time.monotonic() - start < secs and len(held) < 2000:
        c = socket.socket(); c.setblocking(False)
        c.connect_ex(("127.0.0.1", port)); held.append(c)
        time.sleep(1 / rate)
    out({"sent": len(held)})
    sys.stdin.read()
"""


class Traffic:
    """A TRAFFIC process inside a namespace; stop() ends it (the namespace kills it too)."""

    def __init__(self, ns: Namespace, *args: object) -> None:
        self.p = ns.popen([sys.executable, "-c", TRAFFIC, *map(str, args)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)

    def line(self, timeout: float = 20) -> dict:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ln = self.p.stdout.readline()
            if ln:
                return json.loads(ln)
            if self.p.poll() is not None:
                break
        raise AssertionError("traffic process gave no output")

    def until(self, key: str, timeout: float = 20) -> dict:
        while True:
            d = self.line(timeout)
            if key in d:
                return d

    def stop(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        try:
            self.p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.p.kill()


def doctor(ns: Namespace, interval: float) -> tuple:
    ev = evidence_of([LinuxSource(netns=ns.name, interval=interval).observe()])
    (h,) = ev.hosts.values()
    return h, diagnose(ev)


def by_id(findings: list, fid: str) -> list:
    return [f for f in findings if f.id == fid]


def ev_value(f, label: str):
    return next(e.value for e in f.evidence if e.label == label)


def test_client_exhausting_a_1000_port_range(make_ns, tmp_path: Path) -> None:
    """connect() to one destination with 1,000 ports and client-first closes: the doctor
    gives the budget the kernel enforces, the rate, and when it runs out; the kernel agrees."""
    ns = make_ns("exh", net__ipv4__ip_local_port_range="40000 40999", net__ipv4__tcp_tw_reuse=0)
    t = Traffic(ns, "churn", 8080, 1500, 250, 15)
    try:
        t.until("t")
        while t.line()["ok"] < 200:
            pass
        h, findings = doctor(ns, interval=1.0)
        t_measured = time.monotonic()
        budget = h.extra["port_budget"]
        assert budget["range"] == [40000, 40999] and budget["usable"] == 1000
        top = h.tuples[0]
        assert (top.src, top.dst, top.dport, top.budget) == ("127.0.0.1", "127.0.0.1", 8080, 1000)
        # The loop holds at most one connection between connect() and close(): the snapshot
        # may catch it established.
        assert top.time_wait >= 200 and top.established <= 1
        active = h.counters["TcpActiveOpens"] / h.window_s
        assert top.rate_per_s is not None and top.rate_per_s > 50
        assert abs(top.rate_per_s - active) / active < 0.2  # each connect() is one ActiveOpen
        assert top.next_free_in_s is not None and 45 < top.next_free_in_s <= 60
        ste = top.seconds_to_exhaustion
        assert ste is not None and 0 < ste < 30
        f = by_id(findings, "tuple-port-exhaustion")[0]
        assert f.severity == "critical" and f.hosts == [h.name]
        assert ev_value(f, "ports in use") == top.in_use

        final = t.until("errno", timeout=20)
        # The kernel's verdict: EADDRNOTAVAIL after exactly the doctor's budget ...
        assert final["errno"] == "EADDRNOTAVAIL" and final["ok"] == 1000
        # ... at about the time the doctor predicted from the rate and the TIME_WAIT timers
        # (the loop's rate wobbles on a loaded machine: allow 1 s plus 40 % of the horizon).
        assert abs(final["t_fail"] - (t_measured + ste)) < 1.0 + 0.4 * ste

        h2, findings2 = doctor(ns, interval=0)
        assert h2.tuples[0].in_use == 1000 and h2.tuples[0].time_wait == 1000
        assert h2.tuples[0].seconds_to_exhaustion == 0
        f2 = by_id(findings2, "tuple-port-exhaustion")[0]
        assert f2.severity == "critical" and "(exhausted)" in f2.title
        assert {fx.id for fx in f2.fixes} >= {"reuse-connections", "tw-reuse", "widen-port-range"}
        assert f2.fixes[1].set == {"client:net.ipv4.tcp_tw_reuse": 1}

        # The CLI on the same namespace, with a snapshot that diagnoses the same elsewhere.
        snap = tmp_path / "snap.tar.gz"
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "doctor", "--netns", ns.name, "--interval", "0",
                            "--json", "--save", str(snap)], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        live = json.loads(r.stdout)
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "doctor", "--from", str(snap), "--json"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0, r.stderr
        replay = json.loads(r.stdout)
        ids = lambda d: sorted(f["id"] for f in d["findings"])  # noqa: E731
        assert ids(live) == ids(replay) and "tuple-port-exhaustion" in ids(live)
        (lh,), (rh,) = live["hosts"].values(), replay["hosts"].values()
        assert lh["tuples"][0]["in_use"] == rh["tuples"][0]["in_use"] == 1000
        assert rh["extra"]["netns"] == ns.name
    finally:
        t.stop()


def test_tw_reuse_without_timestamps_never_reuses(make_ns) -> None:
    """tcp_tw_reuse=1 with timestamps off: the kernel still exhausts 200 ports at 150/s
    (TIME_WAIT older than 1 s stays unusable); with timestamps on it does not."""
    bad = make_ns("nots", net__ipv4__ip_local_port_range="41000 41199", net__ipv4__tcp_tw_reuse=1,
                  net__ipv4__tcp_timestamps=0)
    good = make_ns("ts", net__ipv4__ip_local_port_range="41000 41199", net__ipv4__tcp_tw_reuse=1,
                   net__ipv4__tcp_timestamps=1)
    tb, tg = Traffic(bad, "churn", 8080, 400, 150, 6), Traffic(good, "churn", 8080, 400, 150, 6)
    try:
        fb, fg = tb.until("errno"), tg.until("errno")
        assert fb["errno"] == "EADDRNOTAVAIL" and fb["ok"] == 200
        assert fg["errno"] is None and fg["ok"] == 400

        h, findings = doctor(bad, interval=0)
        f = by_id(findings, "tw-reuse-without-timestamps")[0]
        assert f.severity == "critical"  # the busiest tuple is at its budget
        assert ev_value(f, "net.ipv4.tcp_timestamps") == 0
        assert ev_value(f, "TcpExtTWRecycled since boot") == 0
        assert f.fixes[0].set == {"client:net.ipv4.tcp_timestamps": 1}
        assert h.tuples[0].in_use == 200 and h.tuples[0].seconds_to_exhaustion == 0

        hg, findings_g = doctor(good, interval=0)
        assert not by_id(findings_g, "tw-reuse-without-timestamps")
        assert hg.counters_absolute["TcpExtTWRecycled"] > 0  # the kernel did reuse
    finally:
        tb.stop()
        tg.stop()


def test_listener_overflowing_its_backlog(make_ns) -> None:
    """A listener with backlog 2 that never accepts, and connects arriving: the queue holds
    backlog + 1 (sk_acceptq_is_full is '>'), ListenOverflows rises, the finding says so."""
    ns = make_ns("lis")
    t = Traffic(ns, "flood", 9000, 2, 40, 2)
    try:
        time.sleep(0.5)
        h, findings = doctor(ns, interval=1.0)
        lu = next(x for x in h.listeners if x.port == 9000)
        assert (lu.addr, lu.backlog, lu.queue) == ("127.0.0.1", 2, 3)
        f = by_id(findings, "listen-queue-overflow")[0]
        assert f.severity == "critical"
        assert ev_value(f, "TcpExtListenOverflows per s") > 0
        assert "127.0.0.1:9000" in f.title
        # The root cause first: the application accepts nothing while connections arrive.
        assert [fx.id for fx in f.fixes] == ["accept-faster", "raise-backlog"]
        assert ev_value(f, "accepted per s") == 0 and ev_value(f, "arriving per s") > 0
        assert f.fixes[1].set == {"host.server.backlog": 4096}
        # somaxconn is 4096 already in the namespace: not proposed again.
        assert not any("somaxconn" in c for fx in f.fixes for c in fx.commands)
    finally:
        t.stop()


def test_max_tw_buckets_overflow(make_ns) -> None:
    """tcp_max_tw_buckets=100 and 300 client-first closes: TCPTimeWaitOverflow rises and the
    TIME_WAIT table sits at its limit."""
    ns = make_ns("twb", net__ipv4__tcp_max_tw_buckets=100, net__ipv4__tcp_tw_reuse=0)
    t = Traffic(ns, "churn", 8080, 400, 200, 3)
    try:
        t.until("t")
        h, findings = doctor(ns, interval=1.0)
        assert h.extra["tw_minisockets"] <= 100
        assert h.counters["TcpExtTCPTimeWaitOverflow"] > 0
        f = by_id(findings, "timewait-bucket-overflow")[0]
        assert f.severity == "critical"  # the overflowing side opens the connections
        assert ev_value(f, "net.ipv4.tcp_max_tw_buckets") == 100
        assert ev_value(f, "TcpExtTCPTimeWaitOverflow per s") > 0
        assert f.fixes[0].set == {"client:net.ipv4.tcp_max_tw_buckets": 262144}
        assert t.until("errno")["errno"] is None  # overflow frees ports: no EADDRNOTAVAIL
    finally:
        t.stop()


def test_netns_as_non_root_is_a_clear_error(make_ns, tmp_path: Path) -> None:
    """Entering a namespace needs root: one line, no traceback. The host itself (read-only)
    works unprivileged."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv not installed")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
                            "-c", "import tcpreuse.cli"], capture_output=True, text=True, cwd=REPO)
    if probe.returncode != 0:
        pytest.skip("the checkout or interpreter is not readable by nobody")
    ns = make_ns("np")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "tcpreuse",
                 "doctor"]
    env = {**os.environ, "HOME": str(tmp_path)}
    r = subprocess.run([*as_nobody, "--netns", ns.name, "--interval", "0"], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"network namespace {ns.name!r}" in r.stderr and "root" in r.stderr
    r = subprocess.run([*as_nobody, "--interval", "0", "--json"], capture_output=True, text=True, timeout=60,
                       cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    (h,) = json.loads(r.stdout)["hosts"].values()
    assert h["settings"]["net.ipv4.tcp_timestamps"] in (0, 1, 2) and h["time_wait"] is not None


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed")
def test_role_nat_from_forwarding_and_nat_table_and_without_nft(make_ns, monkeypatch: pytest.MonkeyPatch) -> None:
    """ip_forward=1 plus an nftables nat table (inside the namespace) makes the role 'nat';
    without the nft tool the doctor still runs and just cannot tell."""
    ns = make_ns("nat", net__ipv4__ip_forward=1)
    ns.run(["nft", "add table ip tcpr_nat; add chain ip tcpr_nat post { type nat hook postrouting priority 100 ; }"])
    h, _ = doctor(ns, interval=0)
    assert h.role == "nat" and "nft ip tcpr_nat" in h.extra["role_evidence"]
    monkeypatch.setenv("PATH", "/nonexistent")
    h, _ = doctor(ns, interval=0)
    assert h.role is None and h.extra["nat_tables"] == []


def test_reuse_cannot_help_toward_a_peer_without_timestamps(make_ns) -> None:
    """tcp_info of the established connections shows the server does not negotiate
    timestamps, so tw_reuse cannot take over their TIME_WAIT entries: the doctor says so."""
    client = make_ns("cli", net__ipv4__ip_local_port_range="42000 42199", net__ipv4__tcp_tw_reuse=1)
    server = make_ns("srv", net__ipv4__tcp_timestamps=0)
    veth_pair(client, "tcpr-c0", server, "tcpr-s0")
    client.run(["ip", "addr", "add", "10.199.0.1/24", "dev", "tcpr-c0"])
    server.run(["ip", "addr", "add", "10.199.0.2/24", "dev", "tcpr-s0"])
    srv = Traffic(server, "serve", 8443, 150, 0, 10)
    cli_ = None
    try:
        srv.until("listening")
        cli_ = Traffic(client, "hold", 8443, 150, 0, 10, "10.199.0.2")
        assert cli_.until("held")["held"] == 150
        h, findings = doctor(client, interval=0)
        t = h.tuples[0]
        assert (t.dst, t.dport, t.established, t.budget) == ("10.199.0.2", 8443, 150, 200)
        d = h.tuples[0]  # judged fields of the busiest tuple
        assert d.peer_timestamps == {"with": 0, "without": 150} and d.tw_reuse_applies is False
        f = by_id(findings, "tw-reuse-peer-without-timestamps")[0]
        assert f.severity == "warning" and ev_value(f, "established without timestamps") == 150
        assert "10.199.0.2:8443" in f.title
    finally:
        srv.stop()
        if cli_ is not None:
            cli_.stop()


@pytest.mark.parametrize("port", [8080, 45000])
def test_stopped_servers_timewait_is_incoming(make_ns, port: int) -> None:
    """A server that closed first and then stopped leaves TIME_WAIT on its former listening
    port. Those are incoming connections (no port budget, role server), whether the port is
    outside the ephemeral range (8080) or inside it (45000: decided by many peers on one
    local port)."""
    ns = make_ns(f"stop{port}")
    t = Traffic(ns, "stopped", port, 200, 0, 10)
    try:
        assert t.until("stopped")["stopped"] == 200
        h, findings = doctor(ns, interval=0)
        end = time.monotonic() + 10
        while h.time_wait < 200 and time.monotonic() < end:
            # a client still closing (a loaded machine) leaves the server's socket in
            # FIN_WAIT2 for a moment: the subject here is how TIME_WAIT is classified
            time.sleep(0.2)
            h, findings = doctor(ns, interval=0)
        assert not h.listeners and h.time_wait == 200
        assert h.extra["incoming"] == 200 and h.extra["outgoing"] == 0
        assert not h.tuples and not by_id(findings, "tuple-port-exhaustion")
        assert h.role == "server" and f"{port} (200)" in h.extra["role_evidence"]
        assert h.extra["former_listen_ports"] == {port: 200}
        assert h.extra["incoming_time_wait_by_port"] == {port: 200}
    finally:
        t.stop()


@pytest.mark.slow
def test_reuse_that_sustains_the_rate_is_no_alarm(make_ns) -> None:
    """tcp_tw_reuse=1 with timestamps, 200 connections/s over 300 ports: the range fills with
    TIME_WAIT, but connect() takes over entries older than the reuse delay, so 300/s are
    sustainable and the kernel never refuses. The doctor stays silent, during the traffic
    and after it stopped."""
    ns = make_ns("reuse", net__ipv4__ip_local_port_range="43000 43299", net__ipv4__tcp_tw_reuse=1,
                 net__ipv4__tcp_timestamps=1)
    t = Traffic(ns, "churn", 8080, 1600, 200, 8)
    try:
        t.until("t")
        while t.line()["ok"] < 800:  # 4 s: the range is (nearly) full of TIME_WAIT
            pass
        h, findings = doctor(ns, interval=1.0)
        top, d = h.tuples[0], h.tuples[0]
        assert top.in_use >= 240 and d.tw_reuse_applies is True  # 80 %+: an alarm before
        assert d.sustainable_rate_per_s > 250 and 0 < top.rate_per_s < 0.8 * d.sustainable_rate_per_s
        assert not by_id(findings, "tuple-port-exhaustion")
        final = t.until("errno", timeout=30)
        assert final["errno"] is None and final["ok"] == 1600  # the kernel agrees: no EADDRNOTAVAIL
        assert h.counters["TcpExtTWRecycled"] > 0
        h, findings = doctor(ns, interval=1.0)  # traffic stopped, TIME_WAIT still there
        assert h.tuples[0].time_wait > 0 and not by_id(findings, "tuple-port-exhaustion")
    finally:
        t.stop()


@pytest.mark.slow
def test_client_of_an_overflowing_and_a_refusing_server(make_ns) -> None:
    """The client's own tables look healthy while its server drops its SYNs (a listener with
    backlog 2 that never accepts) or refuses them (nothing listens): the doctor on the
    client reads its SYN retransmissions and refused handshakes and says so."""
    client = make_ns("hcli")
    server = make_ns("hsrv")
    veth_pair(client, "tcpr-hc0", server, "tcpr-hs0")
    client.run(["ip", "addr", "add", "10.199.1.1/24", "dev", "tcpr-hc0"])
    server.run(["ip", "addr", "add", "10.199.1.2/24", "dev", "tcpr-hs0"])
    srv = Traffic(server, "listen", 9000, 2, 0, 0)
    procs = [srv]
    try:
        srv.until("listening")
        full = Traffic(client, "connect", 9000, 400, 40, 8, "10.199.1.2")
        refused = Traffic(client, "connect", 9001, 400, 20, 8, "10.199.1.2")
        procs += [full, refused]
        full.until("t")
        time.sleep(3.5)  # the first dropped SYNs are retransmitted after 1 s
        h, findings = doctor(client, interval=1.0)
        assert not h.listeners and not by_id(findings, "listen-queue-overflow")  # nothing wrong here itself
        (f,) = by_id(findings, "connect-handshakes-failing")
        assert f.severity == "critical" and "10.199.1.2:9000" in f.title
        assert ev_value(f, "TcpExtTCPSynRetrans per s") > 5
        assert ev_value(f, "TcpAttemptFails per s") > 5  # the RSTs from port 9001
        waiting = {d["dport"]: d for d in h.extra["syn_sent_by_destination"]}
        assert waiting[9000]["retransmitted"] > 10 and 9001 not in waiting
        assert ev_value(f, "SYN_SENT toward 10.199.1.2:9000") == waiting[9000]["syn_sent"]
    finally:
        for p in procs:
            p.stop()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nft") is None, reason="nft not installed")
def test_snat_pool_full_on_a_router(make_ns, tmp_path: Path) -> None:
    """A router masquerading to a 1,000-port pool (`masquerade to :20000-20999`): 1,050
    short connections through it fill the pool with conntrack TIME_WAIT while
    nf_conntrack_count stays far below its max. The doctor on the router reads the rule and
    the conntrack table and finds the pool full, with its budget; the kernel agrees (the
    connections beyond the pool were slow or failed)."""
    client, router, server = make_ns("ncli"), make_ns("nrtr", net__ipv4__ip_forward=1), make_ns("nsrv")
    veth_pair(client, "tcpr-nc0", router, "tcpr-nr0")
    veth_pair(router, "tcpr-nr1", server, "tcpr-ns0")
    client.run(["ip", "addr", "add", "10.199.2.1/24", "dev", "tcpr-nc0"])
    client.run(["ip", "route", "add", "default", "via", "10.199.2.2"])
    router.run(["ip", "addr", "add", "10.199.2.2/24", "dev", "tcpr-nr0"])
    router.run(["ip", "addr", "add", "10.199.3.2/24", "dev", "tcpr-nr1"])
    server.run(["ip", "addr", "add", "10.199.3.1/24", "dev", "tcpr-ns0"])
    router.nft('table ip tcpr_nat {\n chain post {\n  type nat hook postrouting priority 100;\n'
               '  oifname "tcpr-nr1" meta l4proto tcp masquerade to :20000-20999\n }\n}\n')
    srv = Traffic(server, "accept", 8080, 0, 0, 0)
    procs = [srv]
    try:
        srv.until("listening")
        cli_ = Traffic(client, "churnto", 8080, 1050, 0, 0, "10.199.3.1")
        procs.append(cli_)
        done = cli_.until("ok", timeout=60)
        assert done["failed"] + done["slow"] > 0  # past the pool the kernel could not translate at once
        h, findings = doctor(router, interval=0)
        assert h.role == "nat"
        snat = h.extra["snat"]
        assert snat["pools"][0]["ports"] == (20000, 20999) and snat["pools"][0]["kind"] == "masquerade"
        top = snat["tuples"][0]
        assert (top["nat_addr"], top["dst"], top["dport"], top["budget"]) == ("10.199.3.2", "10.199.3.1", 8080, 1000)
        assert top["in_use"] >= 900 and top["time_wait"] >= 850
        (f,) = by_id(findings, "snat-pool-exhaustion")
        assert f.severity == "critical" and "20000-20999" in f.title and "10.199.3.1:8080" in f.title
        assert ev_value(f, "translated ports in use") == top["in_use"]
        assert ev_value(f, "sustainable new flows per s") == round(1000 / 120, 1)
        assert not by_id(findings, "conntrack-near-full")  # the table itself is far from full
        # A snapshot keeps the rules and the table: diagnosed elsewhere, the same finding.
        snap = tmp_path / "router.tar.gz"
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "doctor", "--netns", router.name, "--interval", "0",
                            "--save", str(snap)], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 0 and "snat-pool-exhaustion" in r.stdout and "20000-20999" in r.stdout, r.stderr
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "doctor", "--from", str(snap), "--json"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
        (rh,) = json.loads(r.stdout)["hosts"].values()
        assert rh["extra"]["snat"]["tuples"][0]["budget"] == 1000
        assert "snat-pool-exhaustion" in [x["id"] for x in json.loads(r.stdout)["findings"]]
    finally:
        for p in procs:
            p.stop()


@pytest.mark.slow
def test_at_the_limit_attempts_are_traced(make_ns) -> None:
    """450 connect()/s against 300 ports with tcp_tw_reuse (sustainable ~300/s): a third of
    the calls fail with EADDRNOTAVAIL, which no counter counts. With --trace-connects the
    doctor counts the attempts and failures (sock:inet_sock_set_state) and shows them
    against the sustainable rate; the successes alone sit at the ceiling."""
    if not os.path.isdir("/sys/kernel/tracing/instances"):
        pytest.skip("tracefs not mounted")
    ns = make_ns("lim", net__ipv4__ip_local_port_range="45000 45299", net__ipv4__tcp_tw_reuse=1)
    t = Traffic(ns, "demand", 8383, 0, 450, 6)
    try:
        t.until("t")
        time.sleep(2)
        ev = evidence_of([LinuxSource(netns=ns.name, interval=1.0, trace_connects=True).observe()])
        (h,) = ev.hosts.values()
        findings = diagnose(ev)
        d = h.tuples[0]  # judged fields of the busiest tuple
        sust = d.sustainable_rate_per_s
        assert d.attempts_per_s > 1.2 * sust and d.failed_no_port_per_s > 0.1 * sust
        assert h.tuples[0].rate_per_s < 1.1 * sust  # what succeeds is capped by the budget
        (f,) = by_id(findings, "tuple-port-exhaustion")
        assert f.severity == "critical" and "at its limit" in f.title and "fail with EADDRNOTAVAIL" in f.title
        assert ev_value(f, "connect() attempts per s (traced)") == round(d.attempts_per_s, 1)
        final = t.until("failed", timeout=20)
        assert final["failed"] > 0.1 * (final["ok"] + final["failed"])  # the kernel's verdict
        assert not [p for p in os.listdir("/sys/kernel/tracing/instances") if p == f"tcpr-doctor-{os.getpid()}"]
    finally:
        t.stop()
