"""`tcpreuse lab` end to end on the real kernel: scenarios run with the real `serve` and
`load` in network namespaces, and the merged RunResult says what the kernel did.

Needs root, iproute2, nftables (and tcpdump for the capture check); skipped otherwise.
Every run is bounded (count and duration) and removes its namespaces; the last tests
kill runs with SIGTERM and SIGKILL and prove nothing is left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tcpreuse.lab.netns import list_namespaces
from tcpreuse.lab.run import LOAD_LEAD_S, LabOptions, run_lab
from tcpreuse.lab.state import LAB_NS
from tcpreuse.result import RunResult
from tcpreuse.scenario.loader import load_text

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft")), reason="needs ip and nft"),
    pytest.mark.skipif(
        importlib.util.find_spec("tcpreuse.commands.serve") is None
        or importlib.util.find_spec("tcpreuse.commands.load") is None,
        reason="needs the serve and load verbs",
    ),
]


def toml(client: str = "", server: str = "", extra: str = "", workload: str = "",
         server_count: int = 1, target: str = "server", close: str = "client",
         duration: float = 5) -> str:
    return f"""
name = "lab-test"
duration_s = {duration}
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
{server}
{extra}
[[workload]]
name = "w"
clients = "client"
target = "{target}"
close = "{close}"
{workload}
"""


def lab(text: str, **kw: object) -> RunResult:
    res = run_lab(load_text(text, "<lab-test>"), LabOptions(**kw))  # type: ignore[arg-type]
    assert not [n for n in list_namespaces() if n.startswith(f"tcpr-l{res.meta['run_id']}-")]
    return res


RANGE_1000 = '[host.settings]\n"net.ipv4.ip_local_port_range" = "40000 40999"\n'


def test_client_port_exhaustion_exactly_the_range():
    res = lab(toml(client=RANGE_1000 + '"net.ipv4.tcp_tw_reuse" = 0',
                   workload="rate = 500\ncount = 1200", close="client"))
    assert res.outcomes() == {"ok": 1000, "EADDRNOTAVAIL": 200}
    ff = res.first_failure()
    assert ff is not None and ff["index"] == 1000 and ff["outcome"] == "EADDRNOTAVAIL"
    assert res.reasons().get("local_ports_exhausted") == 200
    assert res.meta["end"]["client"]["time_wait"] == 1000  # the client closed first
    assert res.meta["end"]["server"]["time_wait"] == 0
    assert res.counters["client"]["TcpActiveOpens"] == 1000
    assert res.counters["server"]["TcpPassiveOpens"] == 1000
    assert res.hosts["client"].settings["net.ipv4.ip_local_port_range"] == (40000, 40999)
    assert res.hosts["client"].role == "client" and res.hosts["server"].role == "server"
    assert res.source == "lab" and res.meta["kernel"]
    assert max(res.timeline.hosts["client"]["time_wait"]) >= 990


def predicted_ok(ports: int, rate: float, window_s: float, delay_s: float) -> int:
    """Attempts at `rate` for `window_s`; a port is usable again `delay_s` after its
    connection (which closes at once) entered TIME_WAIT: the tcp_tw_reuse_delay rule."""
    free_at = [0.0] * ports
    ok = 0
    for i in range(int(rate * window_s)):
        t = i / rate
        j = min(range(ports), key=free_at.__getitem__) if ok >= ports else ok
        if free_at[j] <= t:
            free_at[j] = t + delay_s
            ok += 1
    return ok


@pytest.mark.slow
def test_tw_reuse_and_its_delay_change_successes_as_predicted():
    """tcp_tw_reuse=1 lets connect() take over TIME_WAIT 4-tuples, but only
    tcp_tw_reuse_delay after they entered TIME_WAIT: ≈ ports per delay once the range is used."""
    runs = {}
    for delay_ms in (1000, 5000):
        res = lab(toml(client=RANGE_1000 + '"net.ipv4.tcp_tw_reuse" = 1\n'
                       f'"net.ipv4.tcp_tw_reuse_delay" = {delay_ms}',
                       workload="rate = 500\nduration_s = 6", close="client", duration=6))
        runs[delay_ms] = res
    fast, slow = runs[1000], runs[5000]
    n_fast, n_slow = fast.outcomes().get("ok", 0), slow.outcomes().get("ok", 0)
    assert n_fast > 1000 and n_slow > 1000  # reuse: successes continue past the range
    want_fast, want_slow = predicted_ok(1000, 500, 6, 1.0), predicted_ok(1000, 500, 6, 5.0)
    assert want_fast == 3000 and 1400 <= want_slow <= 1600
    assert abs(n_fast - want_fast) <= 0.03 * want_fast
    assert abs(n_slow - want_slow) <= 0.08 * want_slow
    assert set(slow.outcomes()) == {"ok", "EADDRNOTAVAIL"}
    # at least every success past the range took over a TIME_WAIT socket (connect() may
    # also take one over while free ports remain: it walks the range from a hashed offset)
    assert n_fast - 1000 - 5 <= fast.counters["client"]["TcpExtTWRecycled"] <= n_fast


def test_server_first_close_puts_time_wait_on_the_server():
    res = lab(toml(workload="rate = 400\ncount = 600", close="server"))
    assert res.outcomes() == {"ok": 600}
    # Every connection put a TIME_WAIT on the server (counted when scheduled, 5.18+) ...
    assert res.counters["server"]["TcpExtTW"] == pytest.approx(600, abs=3)
    assert res.meta["end"]["client"]["time_wait"] <= 3
    # ... but a few may be gone at the end: when the port secret is re-salted (every 10 s,
    # 5.18+) connect() can start over recently used ports, and their SYNs take over the
    # server's TIME_WAIT (newer timestamp, tcp_timewait_state_process()).
    assert 450 <= res.meta["end"]["server"]["time_wait"] <= 603


@pytest.mark.parametrize("close", ["client_rst", "server_rst"])
def test_so_linger_zero_leaves_no_time_wait_anywhere(close):
    res = lab(toml(workload="rate = 400\ncount = 400", close=close))
    assert res.outcomes().get("ok", 0) == 400
    assert all(e["time_wait"] == 0 for e in res.meta["end"].values())
    assert all(c.get("TcpExtTW", 0) == 0 for c in res.counters.values())
    rst_side = "client" if close == "client_rst" else "server"
    assert res.counters[rst_side]["TcpOutRsts"] >= 400
    assert res.counters[rst_side]["TcpExtTCPAbortOnData"] >= 400


def test_snat_the_server_sees_the_nat_address(tmp_path):
    dpkt = pytest.importorskip("dpkt")
    if shutil.which("tcpdump") is None:
        pytest.skip("needs tcpdump")
    extra = '[nat]\nclients = ["client"]\naddresses = 1\naddress = "198.51.100.7"'
    res = lab(toml(extra=extra, workload="rate = 300\ncount = 150"), capture=tmp_path / "pcap")
    assert res.outcomes() == {"ok": 150}
    ok_rows = [r for r in res.attempts.rows() if r["outcome"] == "ok"]
    assert {r["src"] for r in ok_rows} == {"10.1.0.1"}
    assert {r["srv_src"] for r in ok_rows} == {"198.51.100.7"}
    assert {r["server"] for r in ok_rows} == {"server"}
    # the packets the server's interface carried: SYNs from the NAT address only
    pcap = tmp_path / "pcap" / "server-eth0.pcap"
    sources = {}
    with pcap.open("rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP) and isinstance(ip.data, dpkt.tcp.TCP):
                tcp = ip.data
                if tcp.flags & dpkt.tcp.TH_SYN and not tcp.flags & dpkt.tcp.TH_ACK:
                    src = ".".join(map(str, ip.src))
                    sources[src] = sources.get(src, 0) + 1
    assert sources == {"198.51.100.7": 150}
    names = {Path(p).name for p in res.meta["captures"]}
    assert {"client-eth0.pcap", "nat-up0.pcap", "router-nat0.pcap", "server-eth0.pcap"} <= names


def test_dnat_load_balancer_splits_across_two_servers():
    extra = '[lb]\nbackends = "server"\nport = 80\nscheduler = "round_robin"'
    res = lab(toml(extra=extra, server_count=2, target="lb", workload="rate = 400\ncount = 400",
                   close="server"))
    assert res.outcomes() == {"ok": 400}
    opens = {h: res.counters[h]["TcpPassiveOpens"] for h in ("server-1", "server-2")}
    assert opens == {"server-1": 200, "server-2": 200}
    by_server = res.attempts.counts("server")
    assert by_server == {"server-1": 200, "server-2": 200}
    assert {r["dst"] for r in res.attempts.rows()} == {"203.0.113.10"}
    assert res.meta["end"]["server-1"]["time_wait"] == pytest.approx(200, abs=3)


@pytest.mark.parametrize("netfilter", ["nft", "iptables"])
def test_a_client_tuple_reused_across_two_servers_is_attributed_per_connection(netfilter):
    """One client port: every connection has the same 4-tuple, and the LB (round robin, a new
    session each time: the server closed first) sends them to server-1, server-2, server-1...
    Only the time of each flow can tell which server served which attempt."""
    if netfilter == "iptables" and not shutil.which("iptables-legacy-restore"):
        pytest.skip("needs iptables-legacy")
    extra = '[lb]\nbackends = "server"\nport = 80\nscheduler = "round_robin"'
    one_port = '[host.settings]\n"net.ipv4.ip_local_port_range" = "40000 40000"\n'
    res = lab(toml(client=one_port, extra=extra, server_count=2, target="lb",
                   workload="rate = 10\ncount = 12", close="server"), netfilter=netfilter)
    assert res.outcomes() == {"ok": 12}
    assert set(res.attempts.column("sport")) == {40000}
    servers = res.attempts.column("server")
    assert "" not in servers and not any("4-tuple is unknown" in n for n in res.notes), res.notes
    assert all(a != b for a, b in itertools.pairwise(servers)), servers  # alternating
    opens = {h: res.counters[h]["TcpPassiveOpens"] for h in ("server-1", "server-2")}
    assert res.attempts.counts("server") == opens == {"server-1": 6, "server-2": 6}


def test_windows_client_runs_emulated():
    text = toml(workload="rate = 200\ncount = 50", close="server").replace(
        'profile = "linux-native"', 'profile = "windows-2012r2"', 1)
    res = lab(text)
    assert res.outcomes() == {"ok": 50}
    s = res.hosts["client"].settings
    assert s["emulated"] is True and s["isn"] == "rfc6528" and s["offers_ts"] is False
    assert res.attempts.column("sport")[0] == 49152  # Windows' first dynamic port, not Linux's


def test_windows_client_above_the_emulators_ceiling_runs_only_approximated():
    text = toml(workload="rate = 1000\ncount = 50", close="server").replace(
        'profile = "linux-native"', 'profile = "windows-2012r2"', 1)
    res = lab(text, approximate=True)
    assert res.outcomes() == {"ok": 50}
    s = res.hosts["client"].settings
    assert s["net.ipv4.tcp_timestamps"] == 0 and s["net.ipv4.ip_local_port_range"] == (49152, 65535)
    assert any(n.startswith("approximation:") and "TIME_WAIT lasts 60 s" in n for n in res.notes)
    assert res.meta["approximate"] is True


# ---- killing a run --------------------------------------------------------------------

def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str, list[int], Path]:
    scen = tmp_path / "long.toml"
    scen.write_text(toml(workload="rate = 100", close="server", duration=30))
    result = tmp_path / "result.json"
    before = set(list_namespaces())
    p = subprocess.Popen([sys.executable, "-m", "tcpreuse", "lab", str(scen), "--result", str(result),
                          "--no-diagnose"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    run_ns: list[str] = []

    def pids_in(names: list[str]) -> list[int]:
        return [int(x) for n in names for x in subprocess.run(["ip", "netns", "pids", n], capture_output=True,
                                                               text=True).stdout.split()]

    while time.monotonic() < end:
        # this run's namespaces (another run may be going: tell them apart by run id)
        run_ns = [n for n in list_namespaces() if n not in before and LAB_NS.match(n)]
        if run_ns:
            run_ns = [n for n in run_ns if n.startswith(run_ns[0][: len("tcpr-l") + 7])]
            loads = [x for x in psutil.process_iter(["cmdline"])
                     if "load" in (x.info["cmdline"] or []) and any(run_ns[0][6:12] in a
                                                                    for a in x.info["cmdline"] or [])]
            if loads:
                break
        time.sleep(0.1)
    assert run_ns, "the lab run never created its namespaces"
    time.sleep(LOAD_LEAD_S + 1.5)  # the load starts its schedule LOAD_LEAD_S after launch; let it make attempts
    prefix = run_ns[0][: len("tcpr-l") + 7]
    pids = pids_in(run_ns)
    assert len(pids) >= 4  # anchors, serve, load
    return p, prefix, pids, result


def _alive(pids: list[int], wait_s: float = 5.0) -> list[int]:
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


def test_sigterm_mid_run_cleans_up_and_keeps_partial_results(tmp_path):
    p, prefix, pids, result = _start(tmp_path)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143, err.decode()  # 128 + SIGTERM, as a shell reports it
    assert b"Traceback" not in err
    assert not [n for n in list_namespaces() if n.startswith(prefix)]
    assert not _alive(pids)
    res = RunResult.from_json(json.loads(result.read_text()))
    assert res.meta["interrupted"] == "SIGTERM"
    assert 50 <= len(res.attempts) < 3000 and res.outcomes().get("ok", 0) >= 50
    assert any("interrupted" in n for n in res.notes)


def test_sigkill_mid_run_then_lab_cleanup_leaves_nothing(tmp_path):
    p, prefix, pids, _ = _start(tmp_path)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert [n for n in list_namespaces() if n.startswith(prefix)]  # left behind by the kill
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "lab", "cleanup"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "removed" in r.stdout
    assert not [n for n in list_namespaces() if n.startswith(prefix)]
    assert not _alive(pids)
    assert not list(Path(tempfile.gettempdir()).glob(f"tcpr-lab-{prefix[6:12]}-*"))


def test_a_run_after_a_sigkill_removes_the_dead_runs_leftovers_and_not_a_live_runs(tmp_path):
    """kill -9 leaves namespaces and the serve/load inside them; the next lab run removes
    them before it starts (and says so), while a run still going is left alone."""
    (tmp_path / "live").mkdir()
    (tmp_path / "dead").mkdir()
    live, live_prefix, live_pids, _ = _start(tmp_path / "live")
    try:
        dead, dead_prefix, dead_pids, _ = _start(tmp_path / "dead")
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=10)
        assert [n for n in list_namespaces() if n.startswith(dead_prefix)]  # left behind by the kill
        assert len(_alive(dead_pids, wait_s=0)) >= 3  # serve, load, anchors still running
        scen = tmp_path / "short.toml"
        scen.write_text(toml(workload="rate = 20", duration=1))
        r = subprocess.run([sys.executable, "-m", "tcpreuse", "lab", str(scen), "--no-diagnose", "--json"],
                           capture_output=True, text=True, timeout=90)
        assert r.returncode == 0, r.stderr
        notes = json.loads(r.stdout)["notes"]
        said = [n for n in notes if n.startswith("removed what dead lab runs left")]
        assert said and f"run {dead_prefix[6:12]} (pid {dead.pid})" in said[0], notes
        assert not [n for n in list_namespaces() if n.startswith(dead_prefix)]
        assert not _alive(dead_pids)
        # the live run was not touched: its namespaces and processes are there, it finishes
        assert [n for n in list_namespaces() if n.startswith(live_prefix)]
        assert live.poll() is None and not set(live_pids) - set(_alive(live_pids, wait_s=0))
    finally:
        live.send_signal(signal.SIGTERM)
        live.communicate(timeout=30)
    assert not [n for n in list_namespaces() if n.startswith(live_prefix)]


def test_a_load_beyond_the_machine_is_refused_before_anything_is_built():
    before = set(list_namespaces())
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "lab", "client-exhaustion", "--duration", "2",
                        "--set", "workload.rate=1e9"], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 30
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lab run refused before starting" in r.stderr and "--force" in r.stderr
    assert "1e+09/s is more than one generator process starts" in r.stderr
    assert set(list_namespaces()) <= before


def test_loads_end_within_duration_plus_drain(tmp_path):
    """90 % of packets lost and a 60 s connect timeout: attempts would go on for a minute
    after the duration; with --drain 1 every load ends 1 s after its duration and what was
    still in flight is counted as unfinished, not as a failure of the target."""
    scen = tmp_path / "lossy.toml"
    scen.write_text(toml(workload="rate = 20\nconnect_timeout_s = 60", duration=2,
                         extra="[path]\nloss = 0.9"))
    out = tmp_path / "r.json"
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "tcpreuse", "lab", str(scen), "--drain", "1", "--no-diagnose",
                        "--result", str(out)], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert "ending within" in r.stderr  # the bound is stated up front
    res = RunResult.from_json(json.loads(out.read_text()))
    reasons = res.reasons()
    assert reasons.get("unfinished", 0) > 0, reasons
    assert len(res.attempts) == 40
    assert took < 45, took  # set-up and teardown included; unbounded it would be > 60 s
