"""Captures recorded from the real kernel, in network namespaces, then analysed.

Each scenario builds its own namespaces (named tcpr-cap-<pid>-...), runs tcpdump inside
the server namespace, drives bounded traffic with small Python socket loops, and removes
everything afterwards. The analysis must find what the kernel did: port exhaustion,
SYNs on the server's TIME_WAIT, RST closes, a full listen queue, SNAT'd clients. Each
capture is also read by tshark, and the per-attempt outcomes must agree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.netns import namespace

from tcpreuse.capture import flows, reuse
from tcpreuse.capture.analysis import CaptureAnalysis, analyze_paths
from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.lab.netns import Namespace, veth_pair

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("tcpdump") is None,
                       reason="needs iproute2 and tcpdump"),
    pytest.mark.timeout(120),
]

PY = sys.executable
SERVER_IP, CLIENT_IP = "10.77.0.1", "10.77.0.2"


@dataclass
class Topo:
    client: Namespace
    server: Namespace
    extra: list[Namespace]


class Capture:
    """tcpdump inside a namespace, started and known to be listening, stopped cleanly."""

    def __init__(self, ns: Namespace, iface: str, path: Path) -> None:
        self.path = path
        self.dropped = 0
        self.p = ns.popen(["tcpdump", "-i", iface, "--immediate-mode", "-B", "32768", "-U", "-s", "0", "-Z", "root",
                           "-w", str(path), "tcp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        assert self.p.stderr is not None
        line = b""
        while time.monotonic() < deadline:
            line = self.p.stderr.readline()
            if b"listening on" in line or not line:
                break
        if b"listening on" not in line:
            self.stop()
            pytest.skip(f"tcpdump did not start: {line!r}")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                _, err = self.p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                _, err = self.p.communicate()
            for line in err.decode(errors="replace").splitlines():
                if "dropped by kernel" in line:
                    self.dropped = int(line.split()[0])


SERVER = textwrap.dedent("""
    import socket, sys, threading
    mode, port, backlog = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(backlog)
    print("ready", flush=True)
    if mode == "noaccept":
        sys.stdin.read(); sys.exit(0)
    def serve(c):
        try:
            c.settimeout(5)
            need = 1
            while need:
                d = c.recv(65536)
                if not d: break
                if d.endswith(b"\\n"): need = 0
            c.sendall(b"ok\\n")
            if mode == "client_closes":
                while c.recv(65536): pass
        except OSError:
            pass
        c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
""")

CLIENT = textwrap.dedent("""
    import errno, json, socket, struct, sys, time
    host, port, n, size, close, gap, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
        int(sys.argv[4]), sys.argv[5], float(sys.argv[6]), float(sys.argv[7])
    res = {"ok": 0, "errors": {}, "ports": []}
    body = b"x" * size + b"\\n"
    deadline = time.monotonic() + 20
    for i in range(n):
        if time.monotonic() > deadline: break
        c = socket.socket(); c.settimeout(timeout)
        if close == "linger":  # abortive close: RST, no TIME_WAIT
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            c.connect((host, port))
            res["ports"].append(c.getsockname()[1])
            c.sendall(body)
            got = b""
            while not got.endswith(b"\\n"):
                d = c.recv(65536)
                if not d: break
                got += d
            if close == "client":  # the client's FIN goes first
                c.shutdown(socket.SHUT_WR)
            if close != "linger":
                while c.recv(65536): pass
            res["ok"] += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
            res["errors"][name] = res["errors"].get(name, 0) + 1
        finally:
            c.close()
        if gap: time.sleep(gap)
    print(json.dumps(res))
""")

PARALLEL = textwrap.dedent("""
    import json, select, socket, sys, time
    host, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    socks = []
    for i in range(n):
        c = socket.socket(); c.setblocking(False)
        c.connect_ex((host, port)); socks.append(c)
        time.sleep(0.05)
    time.sleep(wait)
    print(json.dumps({"opened": len(socks)}))
""")


def run_client(ns: Namespace, *args: Any, script: str = CLIENT, timeout: float = 60) -> dict[str, Any]:
    r = ns.run([PY, "-c", script, *map(str, args)], timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_server(ns: Namespace, mode: str, port: int = 8080, backlog: int = 128) -> subprocess.Popen[bytes]:
    p = ns.popen([PY, "-c", SERVER, mode, str(port), str(backlog)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == b"ready"
    return p


def two_hosts(tag: str, client_sysctls: dict[str, Any] | None = None) -> Topo:
    c = namespace(f"cap{tag}c", **(client_sysctls or {}))
    s = namespace(f"cap{tag}s")
    c.create()
    s.create()
    veth_pair(c, "eth0", s, "eth0")
    c.run(["ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0"])
    s.run(["ip", "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"])
    return Topo(c, s, [])


def teardown(t: Topo, *procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for ns in (t.client, t.server, *t.extra):
        ns.delete()


@dataclass
class Recorded:
    path: Path
    client: dict[str, Any]
    an: CaptureAnalysis

    @property
    def findings(self) -> dict[str, Any]:
        return {f.id: f for f in diagnose(Evidence(source="analyze", capture=self.an))}


DROPS: list[int] = []  # what the last Capture.stop() reported


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Recorded]]:
    """All five scenarios, recorded once (about 10 s in all). A capture in which tcpdump
    lost packets (a busy machine) is recorded again, twice at most."""
    d = tmp_path_factory.mktemp("netns-captures")
    out: dict[str, Recorded] = {}
    for name, fn in SCENARIOS.items():
        path = d / f"{name}.pcap"
        for _ in range(3):
            DROPS.clear()
            client = fn(path)
            if not any(DROPS):
                break
        out[name] = Recorded(path, client, analyze_paths([path])[0])
    yield out


def sc_port_exhaustion(path: Path) -> dict[str, Any]:
    t = two_hosts("px", {"net__ipv4__ip_local_port_range": "40000 40009"})
    srv = start_server(t.server, "client_closes")
    try:
        cap = Capture(t.server, "eth0", path)
        res = run_client(t.client, SERVER_IP, 8080, 30, 10, "client", 0.01, 2)
        time.sleep(0.3)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, srv)
    return res


def sc_timewait(path: Path) -> dict[str, Any]:
    # no client timestamps, two ports, 512 KB per connection: the ISN of the next
    # connection on the same 4-tuple is not after the old rcv_nxt (ISNs grow 15.6 M/s,
    # so that holds while reconnecting within ~30 ms)
    t = two_hosts("tw", {"net__ipv4__ip_local_port_range": "40000 40001", "net__ipv4__tcp_timestamps": 0})
    srv = start_server(t.server, "server_closes")
    try:
        cap = Capture(t.server, "eth0", path)
        res = run_client(t.client, SERVER_IP, 8080, 40, 512 * 1024, "server", 0, 5)
        time.sleep(0.3)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, srv)
    return res


def sc_rst_close(path: Path) -> dict[str, Any]:
    t = two_hosts("rs")
    srv = start_server(t.server, "client_closes")
    try:
        cap = Capture(t.server, "eth0", path)
        res = run_client(t.client, SERVER_IP, 8080, 20, 10, "linger", 0.005, 2)
        time.sleep(0.3)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, srv)
    return res


def sc_backlog(path: Path) -> dict[str, Any]:
    t = two_hosts("bl")
    srv = start_server(t.server, "noaccept", backlog=1)
    try:
        cap = Capture(t.server, "eth0", path)
        res = run_client(t.client, SERVER_IP, 8080, 8, 2.5, script=PARALLEL)
        time.sleep(0.2)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, srv)
    return res


def sc_snat(path: Path, pool: str = "") -> dict[str, Any]:
    """Two client namespaces behind one masquerading NAT namespace."""
    if shutil.which("nft") is None:
        pytest.skip("needs nft")
    tag = "np" if pool else "nt"
    s = namespace(f"cap{tag}s")
    nat = namespace(f"cap{tag}n", net__ipv4__ip_forward=1)
    c1, c2 = namespace(f"cap{tag}1"), namespace(f"cap{tag}2")
    t = Topo(c1, s, [nat, c2])
    for ns in (s, nat, c1, c2):
        ns.create()
    srv = None
    try:
        veth_pair(nat, "wan", s, "eth0")
        veth_pair(nat, "lan1", c1, "eth0")
        veth_pair(nat, "lan2", c2, "eth0")
        nat.run(["ip", "addr", "add", "10.77.0.254/24", "dev", "wan"])
        s.run(["ip", "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"])
        for i, c in ((1, c1), (2, c2)):
            nat.run(["ip", "addr", "add", f"192.168.{i}.1/24", "dev", f"lan{i}"])
            c.run(["ip", "addr", "add", f"192.168.{i}.2/24", "dev", "eth0"])
            c.run(["ip", "route", "add", "default", "via", f"192.168.{i}.1"])
            c.sysctl("net.ipv4.ip_local_port_range", "50000 50099")
        rule = f"meta l4proto tcp masquerade to {pool}" if pool else "masquerade"
        nat.run(["nft", "-f", "-"], input=(
            "table ip tcpr_nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
            f"  oifname \"wan\" {rule}\n }}\n}}\n"))
        if pool:
            nat.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        srv = start_server(s, "server_closes")
        cap = Capture(s, "eth0", path)
        p1 = c1.popen([PY, "-c", CLIENT, SERVER_IP, "8080", "60", "10", "server", "0.01", "2"],
                      stdout=subprocess.PIPE)
        res = run_client(c2, SERVER_IP, 8080, 60, 10, "server", 0.01, 2)
        out1, _ = p1.communicate(timeout=60)
        r1 = json.loads(out1.strip().splitlines()[-1])
        time.sleep(0.3)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, *([srv] if srv else []))
    return {"c1": r1, "c2": res}


def sc_snat_pool(path: Path) -> dict[str, Any]:
    """Two clients behind a NAT whose pool is 4 ports, its conntrack TIME_WAIT 1 s: the
    NAT gives one public 4-tuple to both hosts in turn, as a busy SNAT does."""
    return sc_snat(path, pool=":20000-20003")


def _linux_reuse(path: Path, close: str) -> dict[str, Any]:
    """One Linux client reusing 50 ports toward one server. Client-first close needs
    tcp_tw_reuse=1 to reuse its own TIME_WAIT ports (after 1 s)."""
    t = two_hosts(f"l{close[0]}", {"net__ipv4__ip_local_port_range": "40000 40049", "net__ipv4__tcp_tw_reuse": 1})
    srv = start_server(t.server, "client_closes" if close == "client" else "server_closes")
    try:
        cap = Capture(t.server, "eth0", path)
        res = run_client(t.client, SERVER_IP, 8080, 150, 10, close, 0.01, 2)
        time.sleep(0.3)
        cap.stop()
        DROPS.append(cap.dropped)
    finally:
        teardown(t, srv)
    return res


def sc_linux_client_close(path: Path) -> dict[str, Any]:
    return _linux_reuse(path, "client")


def sc_linux_server_close(path: Path) -> dict[str, Any]:
    return _linux_reuse(path, "server")


SCENARIOS = {
    "port_exhaustion": sc_port_exhaustion,
    "timewait": sc_timewait,
    "rst_close": sc_rst_close,
    "backlog": sc_backlog,
    "snat": sc_snat,
    "snat_pool": sc_snat_pool,
    "linux_client_close": sc_linux_client_close,
    "linux_server_close": sc_linux_server_close,
}


# ---- what the analysis must show ---------------------------------------------------------


def test_port_exhaustion_shows_the_whole_range_then_nothing(captures: dict[str, Recorded]) -> None:
    r = captures["port_exhaustion"]
    assert r.client["ok"] == 10 and r.client["errors"] == {"EADDRNOTAVAIL": 20}
    c = r.an.counts()
    # EADDRNOTAVAIL sends nothing: the capture holds exactly the connections that worked
    assert c["attempts"] == 10 and c["conn_state"] == {"SF": 10}
    assert c["closed_by"] == {"client": 10}
    pp = r.an.sources[0].ports[0]
    assert (pp.port_min, pp.port_max, pp.distinct_ports) == (40000, 40009, 10)
    assert pp.even_share == 0.5  # connect() walks the even ports first, then the odd ones
    f = r.findings["capture-port-exhaustion"]
    assert "40000-40009" in f.cause and "EADDRNOTAVAIL" in f.cause and "10 source ports" in f.cause
    assert sorted(r.client["ports"][:5]) == [40000, 40002, 40004, 40006, 40008]


def test_syns_on_server_timewait_get_the_old_ack(captures: dict[str, Recorded]) -> None:
    r = captures["timewait"]
    a = r.an.attempts
    assert r.client["ok"] == 40, r.client
    hit = a["answer"] == flows.A_OLD_ACK
    n_hit = int(hit.sum())
    assert n_hit >= 20, r.an.counts()
    assert (a["prev_tw"][hit] == 2).all() and (a["reuse_age_s"][hit] < 60).all()
    # the model predicts exactly what the kernel did, SYN by SYN
    assert (a["tw_verdict"][hit] == reuse.V_ACK_OLD).all()
    assert ((a["tw_verdict"] == reuse.V_ACCEPT) == ((a["prev_tw"] == 2) & ~hit)).all()
    assert (a["n_rst_orig_pre"][hit] >= 1).all()  # the client reset the old ACK
    assert a["established"][hit].all()
    gap_ms = (a["t_syn2"] - a["t_syn"])[hit] * 1000
    assert np.nanmedian(gap_ms) < 1100  # 2 ms on kernels with the SYN-SENT re-arm, else 1 s
    assert (~a["syn_has_ts"]).all()
    f = r.findings["capture-syn-hit-timewait"]
    assert "carried no timestamps" in f.cause and "ACK for the old connection" in f.cause
    assert f.evidence[3].value == n_hit  # model agreement count
    rr = r.an.to_run_result()
    assert rr.attempts.counts("cause")["syn_hit_timewait"] == n_hit
    assert rr.outcomes() == {"ok": 40}


def test_rst_close(captures: dict[str, Recorded]) -> None:
    r = captures["rst_close"]
    assert r.client["ok"] == 20
    c = r.an.counts()
    assert c["conn_state"] == {"RSTO": 20} and c["close"] == {"rst": 20} and c["closed_by"] == {"client": 20}
    assert (r.an.attempts["tw_holder"] == 0).all()  # an abortive close leaves no TIME_WAIT anywhere
    f = r.findings["capture-rst-close"]
    assert f.title == "The client ends connections with RST (abortive close)" and f.evidence[0].value == 20


def test_backlog_overflow(captures: dict[str, Recorded]) -> None:
    r = captures["backlog"]
    a = r.an.attempts
    c = r.an.counts()
    assert c["attempts"] == 8
    answered_first = int((a["answer"] == flows.A_SYNACK).sum())
    assert 1 <= answered_first <= 7
    assert c["syn_retried"] >= 3
    f = r.findings["capture-listen-overflow"]
    assert f.title.startswith(f"{SERVER_IP}:8080 drops SYNs while it answers others")
    gaps = (a["t_syn2"] - a["t_syn"])[a["n_syn"] > 1]
    assert np.nanmin(gaps) == pytest.approx(1.0, abs=0.3)  # the first SYN retransmission after ~1 s
    assert r.an.to_run_result().attempts.counts("cause")["syn_dropped_listen_overflow"] >= 3


def test_snat_clients_share_one_address(captures: dict[str, Recorded]) -> None:
    r = captures["snat"]
    assert r.client["c1"]["ok"] == 60 and r.client["c2"]["ok"] == 60
    src = r.an.sources
    assert [s.addr for s in src] == ["10.77.0.254"]  # the server sees only the NAT address
    s = src[0]
    assert s.attempts == 120 and s.syn_with_ts == 120
    # two hosts with per host-pair offsets: two clocks, each used by many ports (a NAT). With
    # per-4-tuple offsets (this kernel) every public 4-tuple has its own clock, and a NAT that
    # keeps the hosts' 4-tuples apart leaves nothing that separates them: no claim either way
    # unless the NAT moved a connection's clock onto other ports
    per_4tuple_kernel = captures["linux_server_close"].an.sources[0].ts_per_connection
    if s.ts_nat:
        assert "timestamp clocks each used by several 4-tuples" in s.ts_evidence, s
    else:
        assert per_4tuple_kernel and "separates hosts" in s.ts_note, s
    f = r.findings
    assert "capture-tw-recycle-risk" in f or "capture-tw-recycle-drops" in f


def test_snat_pool_gives_two_hosts_one_4tuple(captures: dict[str, Recorded]) -> None:
    """The NAT hands one public 4-tuple to both hosts: its TSval leaves its clock (backwards
    for half of them, which the server's TIME_WAIT rejects by PAWS), whatever the kernel's
    offsets are per (host pair or 4-tuple)."""
    r = captures["snat_pool"]
    assert r.client["c1"]["ok"] + r.client["c2"]["ok"] >= 100, r.client
    s = r.an.sources[0]
    assert s.addr == "10.77.0.254" and s.ts_nat, s
    assert s.ts_off_clock >= 10 and "left that 4-tuple's clock" in s.ts_evidence, s
    assert s.ts_note.startswith("NAT: several hosts share this address")
    f = r.findings
    risk = f.get("capture-tw-recycle-risk") or f["capture-tw-recycle-drops"]
    assert "10.77.0.254" in risk.cause and "NAT" in risk.cause
    assert "capture-syn-hit-timewait" in f  # the PAWS rejects NAT 4-tuple reuse brings


@pytest.mark.parametrize("name", ["linux_client_close", "linux_server_close"])
def test_one_linux_client_reusing_ports_is_not_a_nat(captures: dict[str, Recorded], name: str) -> None:
    """One host: per-4-tuple offsets (4.10, 2026+ kernels) give a clock per port and every
    reused 4-tuple keeps its clock; per host-pair offsets give one clock. Neither is a NAT."""
    r = captures[name]
    assert r.client["ok"] >= 60, r.client
    s = r.an.sources[0]
    assert s.ts_reconnects >= 20 and s.ts_off_clock == 0, s
    assert not s.ts_nat and "NAT" not in s.ts_note, s
    assert s.ts_per_connection or s.ts_clocks == 1, s
    if s.ts_per_connection:  # this kernel: a clock per port
        assert s.ts_clocks == s.ports[0].distinct_ports
        assert "per 4-tuple" in s.ts_note and "nothing here separates hosts" in s.ts_note
    for f in r.findings.values():
        assert "NAT" not in f.cause.replace("NAT or", "") or f.id == "capture-tw-recycle-risk", (f.id, f.cause)
    risk = r.findings.get("capture-tw-recycle-risk")
    if risk is not None:
        assert "Addresses behind a NAT" not in risk.cause
        assert "one host's SYNs then go backwards" in risk.cause


# ---- tshark agrees ----------------------------------------------------------------------------


def tshark_outcomes(path: Path) -> Counter[str]:
    """Per connection attempt, from tshark: answered (SYN-ACK), reset (RST, no SYN-ACK),
    unanswered. tshark streams are merged by (4-tuple, SYN sequence number), because it
    may split an attempt whose SYN was retransmitted after a RST."""
    r = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-E", "separator=,", "-e", "tcp.stream",
                        "-e", "ip.src", "-e", "tcp.srcport", "-e", "ip.dst", "-e", "tcp.dstport",
                        "-e", "tcp.flags.syn", "-e", "tcp.flags.ack", "-e", "tcp.flags.reset", "-e", "tcp.seq_raw"],
                       capture_output=True, text=True, timeout=60, check=True)
    streams: dict[str, dict[str, Any]] = {}
    for line in r.stdout.splitlines():
        st, src, sp, dst, dp, syn, ack, rst, seq = line.split(",")
        d = streams.setdefault(st, {"syn": None, "synack": False, "rst": False})
        if syn in ("1", "True") and ack in ("0", "False") and d["syn"] is None:
            d["syn"] = (src, sp, dst, dp, seq)
        if syn in ("1", "True") and ack in ("1", "True"):
            d["synack"] = True
        if rst in ("1", "True"):
            d["rst"] = True
    attempts: dict[tuple[str, ...], dict[str, bool]] = {}
    for d in streams.values():
        if d["syn"] is None:
            continue
        m = attempts.setdefault(d["syn"], {"synack": False, "rst": False})
        m["synack"] |= d["synack"]
        m["rst"] |= d["rst"]
    return Counter("answered" if m["synack"] else ("reset" if m["rst"] else "unanswered")
                   for m in attempts.values())


def our_outcomes(an: CaptureAnalysis) -> Counter[str]:
    """Per attempt, merged by (4-tuple, ISN) as tshark's streams are: when a NAT hands one
    4-tuple to two hosts in turn, one host's retransmitted SYN can follow the other's, and
    the analysis then sees two attempts where tshark's key sees one."""
    a = an.attempts
    merged: dict[tuple[int, ...], dict[str, bool]] = {}
    for i in np.flatnonzero(a["is_attempt"]).tolist():
        key = (int(a["orig"][i]), int(a["orig_port"][i]), int(a["resp"][i]), int(a["resp_port"][i]), int(a["isn"][i]))
        m = merged.setdefault(key, {"synack": False, "rst": False})
        m["synack"] |= not np.isnan(a["t_synack"][i])
        m["rst"] |= bool(a["completeness"][i] & 32)
    return Counter("answered" if m["synack"] else ("reset" if m["rst"] else "unanswered")
                   for m in merged.values())


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_tshark_agrees_on_every_capture(captures: dict[str, Recorded], name: str) -> None:
    r = captures[name]
    assert our_outcomes(r.an) == tshark_outcomes(r.path)
