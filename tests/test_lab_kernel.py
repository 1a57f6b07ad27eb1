"""The lab's topology on the real kernel, driven by tiny socket programs of the test's own
(independent of `serve`/`load`): routing, per-namespace sysctls, SNAT, DNAT, cleanup.

Needs root, iproute2 and nftables; skipped otherwise. Everything lives in tcpr-* namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tcpreuse.lab import state
from tcpreuse.lab.netns import list_namespaces
from tcpreuse.lab.plan import build_plan
from tcpreuse.lab.realise import realise
from tcpreuse.lab.topology import Topology
from tcpreuse.scenario.loader import load_text
from tcpreuse.scenario.schema import Scenario

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft"),
]

# A server that answers with the peer address it saw, and a client that connects N times
# as fast as it can and counts outcomes by errno name (the first EADDRNOTAVAIL index too).
PEER = r'''
import errno, json, socket, sys
mode = sys.argv[1]
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[2], int(sys.argv[3]))); s.listen(4096)
    print("ready", flush=True)
    while True:
        c, peer = s.accept()
        c.recv(100); c.sendall(("%s\n" % peer[0]).encode())
        c.recv(100); c.close()          # the client closes first: TIME_WAIT on the client
else:
    dst, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    out, peers, first_fail = {}, {}, None
    for i in range(n):
        s = socket.socket()
        try:
            s.connect((dst, port)); s.sendall(b"x\n"); r = s.recv(100).decode().strip()
            out["ok"] = out.get("ok", 0) + 1; peers[r] = peers.get(r, 0) + 1
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e)); out[k] = out.get(k, 0) + 1
            if first_fail is None: first_fail = i
        finally:
            s.close()
    print(json.dumps({"outcomes": out, "peers": peers, "first_fail": first_fail}))
'''


def scenario(extra: str = "", client: str = "", server_count: int = 1, target: str = "server") -> Scenario:
    text = f"""
name = "kernel-test"
duration_s = 5
[[host]]
name = "client"
role = "client"
profile = "linux-native"
{client}
[[host]]
name = "server"
role = "server"
count = {server_count}
port = 8080
profile = "linux-native"
{extra}
[[workload]]
clients = "client"
target = "{target}"
close = "client"
"""
    return load_text(text, "<kernel-test>")


@contextlib.contextmanager
def topology(sc: Scenario, tmp_path: Path) -> Iterator[tuple[Topology, Path]]:
    r = realise(sc)
    r.check(approximate=False)
    topo = Topology(build_plan(sc, r, os.urandom(3).hex()))
    peer = tmp_path / "peer.py"
    peer.write_text(PEER)
    try:
        topo.build()
        yield topo, peer
    finally:
        topo.teardown()
    assert not [n for n in list_namespaces() if n.startswith(topo.plan.hosts["router"].ns[:13])]


def start_servers(topo: Topology, peer: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for s in topo.plan.serves:
        a, p = s.listen[0]
        pr = topo.ns[s.host].popen([sys.executable, str(peer), "server", a, str(p)],
                                   stdout=subprocess.PIPE)
        assert pr.stdout is not None and pr.stdout.readline().strip() == b"ready"
        procs.append(pr)
    return procs


def client(topo: Topology, peer: Path, dst: str, port: int, n: int) -> dict:
    r = topo.ns["client"].run([sys.executable, str(peer), "client", dst, str(port), str(n)], timeout=60)
    return json.loads(r.stdout)


def host_state() -> tuple[str, str, str, str]:
    """What the lab must never change in the host's own namespace."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = "\n".join(sorted(line.split(":")[1].strip() for line in links.splitlines()))
    rules = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    return (names, rules, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(),
            Path("/proc/sys/net/ipv4/tcp_tw_reuse").read_text())


def test_port_range_of_one_namespace_gives_exactly_its_ports(tmp_path):
    """1,000 ports, tw_reuse=0, the client closes first: 1,000 connects, then EADDRNOTAVAIL.
    The host's own links, nftables tables and sysctls are untouched."""
    before = host_state()
    sc = scenario(client='[host.settings]\n"net.ipv4.ip_local_port_range" = "40000 40999"\n'
                  '"net.ipv4.tcp_tw_reuse" = 0')
    with topology(sc, tmp_path) as (topo, peer):
        start_servers(topo, peer)
        (ld,) = topo.plan.loads
        out = client(topo, peer, ld.target[0], ld.target[1], 1100)
        assert out["outcomes"] == {"ok": 1000, "EADDRNOTAVAIL": 100}
        assert out["first_fail"] == 1000
        assert topo.procnet("client").sockstat().time_wait == 1000
        assert topo.procnet("server").sockstat().time_wait == 0
    assert host_state() == before


def test_snat_server_sees_the_nat_address(tmp_path):
    sc = scenario(extra='[nat]\nclients = ["client"]\naddresses = 1\naddress = "198.51.100.7"')
    with topology(sc, tmp_path) as (topo, peer):
        start_servers(topo, peer)
        (ld,) = topo.plan.loads
        out = client(topo, peer, ld.target[0], ld.target[1], 20)
        assert out["outcomes"] == {"ok": 20}
        assert out["peers"] == {"198.51.100.7": 20}  # never the client's own 10.x address
        assert topo.procnet("nat").conntrack_count() >= 20
        # the NAT's recorder (conntrack events) has every flow with the address and port
        # the server saw, in time order
        flows, lost = topo.flows("nat")
        assert lost == 0 and len(flows.by_key) == 20 and len(flows) == 20
        assert {(f.view[0], f.view[1]) for v in flows.by_key.values() for f in v} == {
            (ld.target[0], "198.51.100.7")}
        assert all(f.start > 1e9 for v in flows.by_key.values() for f in v)  # wall-clock times


def test_dnat_round_robin_and_lb_snat(tmp_path):
    extra = '[lb]\nbackends = "server"\nport = 80\nsnat = true\nsnat_port_order = "preserve"'
    sc = scenario(extra=extra, server_count=2, target="lb")
    with topology(sc, tmp_path) as (topo, peer):
        start_servers(topo, peer)
        before = {h: topo.procnet(h).counters()["TcpPassiveOpens"] for h in ("server-1", "server-2")}
        out = client(topo, peer, "203.0.113.10", 80, 40)
        assert out["outcomes"] == {"ok": 40}
        assert out["peers"] == {"192.0.2.1": 40}  # back ends see the LB's SNAT address
        got = {h: topo.procnet(h).counters()["TcpPassiveOpens"] - before[h] for h in before}
        assert got == {"server-1": 20, "server-2": 20}


def test_killed_builder_is_cleaned_up_by_lab_cleanup(tmp_path):
    """A run killed with SIGKILL leaves namespaces and processes; `lab cleanup` removes them."""
    script = tmp_path / "build.py"
    script.write_text(
        "import sys, time\n"
        "from tcpreuse.lab import state\n"
        "from tcpreuse.lab.plan import build_plan\n"
        "from tcpreuse.lab.realise import realise\n"
        "from tcpreuse.lab.topology import Topology\n"
        "from tcpreuse.scenario.loader import load_scenario\n"
        "sc = load_scenario(sys.argv[1])\n"
        "p = build_plan(sc, realise(sc), sys.argv[2])\n"
        "state.register(sys.argv[2], p.ns_names(), '')\n"
        "Topology(p).build()\n"
        "print('built', flush=True)\n"
        "time.sleep(60)\n"
    )
    scen = tmp_path / "s.toml"
    scen.write_text('name = "k"\n[[host]]\nname = "c"\nrole = "client"\n[[host]]\nname = "s"\n'
                    'role = "server"\n[[workload]]\nclients = "c"\ntarget = "s"\n')
    run_id = os.urandom(3).hex()
    p = subprocess.Popen([sys.executable, str(script), str(scen), run_id], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"built"
    mine = [n for n in list_namespaces() if n.startswith(f"tcpr-l{run_id}-")]
    assert len(mine) == 3
    pids = [int(x) for n in mine for x in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                                          text=True).stdout.split()]
    assert pids  # the anchors
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [n for n in list_namespaces() if n.startswith(f"tcpr-l{run_id}-")] == mine  # left behind
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "lab", "cleanup"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert not [n for n in list_namespaces() if n.startswith(f"tcpr-l{run_id}-")]
    assert not still_running(pids)


def still_running(pids: list[int], wait_s: float = 5.0) -> list[int]:
    """The pids that are still alive (zombies count as dead) after up to wait_s."""
    end = time.monotonic() + wait_s
    while True:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


def test_a_run_that_fails_to_start_removes_everything():
    """serve cannot start (here: no such interpreter): a clear LabError, and the namespaces,
    state file and scratch directory are gone."""
    from tcpreuse.errors import LabError
    from tcpreuse.lab.run import LabOptions, run_lab

    def lab_ns() -> set[str]:
        return {n for n in list_namespaces() if state.LAB_NS.match(n)}

    before = lab_ns()
    runs_before = {r.run_id for r in state.runs()}
    with pytest.raises(LabError, match="serve on server exited at start"):
        run_lab(scenario(), LabOptions(python="/nonexistent/python"))
    assert lab_ns() <= before
    assert {r.run_id for r in state.runs()} <= runs_before


def test_a_topology_being_built_is_never_taken_for_a_dead_runs(tmp_path):
    """Whoever builds namespaces owns a state file (Topology claims one when no LabRun did),
    so the stale cleanup every lab run starts with leaves them alone."""
    with topology(scenario(), tmp_path) as (topo, _):
        mine = topo.plan.ns_names()
        assert set(mine) <= set(list_namespaces())
        done = state.cleanup()
        assert not set(done.namespaces) & set(mine)
        assert set(mine) <= set(list_namespaces())
        assert topo.plan.run_id in {r.run_id for r in state.runs()}
    assert topo.plan.run_id not in {r.run_id for r in state.runs()}  # released with the namespaces
