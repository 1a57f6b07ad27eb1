"""The lab's decisions without a kernel: what it refuses, the topology it plans, how it
parses /proc and merges results. (The real-kernel runs are in test_lab_kernel.py.)"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tcpreuse.errors import LabError, TcpreuseError, UnsupportedError
from tcpreuse.lab.flows import Flow, Flows, build_flows, join
from tcpreuse.lab.merge import Observed, Part, merge
from tcpreuse.lab.plan import GW_LB, GW_NAT, GW_ROUTER, MAX_NAMESPACES, build_plan
from tcpreuse.lab.procnet import (
    counters,
    parse_ct_stat,
    parse_listening,
    parse_sockstat,
)
from tcpreuse.lab.realise import realise
from tcpreuse.model.profiles import get_profile
from tcpreuse.result import AttemptTable, RunResult
from tcpreuse.scenario.loader import load_text

K618 = get_profile("linux-6.18")

BASE = """
name = "t"
duration_s = 5
[[host]]
name = "client"
role = "client"
profile = "{cprof}"
{csettings}
[[host]]
name = "server"
role = "server"
count = {scount}
profile = "{sprof}"
port = 8080
{ssettings}
{extra}
[[workload]]
name = "w"
clients = "client"
target = "{target}"
rate = 100
close = "{close}"
"""


def scen(cprof: str = "linux-6.18", sprof: str = "linux-6.18", csettings: str = "",
         ssettings: str = "", scount: int = 1, extra: str = "", target: str = "server",
         close: str = "client", overrides: dict[str, object] | None = None):
    text = BASE.format(cprof=cprof, sprof=sprof, csettings=csettings, ssettings=ssettings,
                       scount=scount, extra=extra, target=target, close=close)
    return load_text(text, "<test>", overrides)


# ---- refusals -----------------------------------------------------------------------

def test_tw_recycle_is_refused_even_with_approximate():
    sc = scen(sprof="linux-4.9", ssettings='[host.settings]\n"net.ipv4.tcp_tw_recycle" = 1')
    r = realise(sc, K618)
    with pytest.raises(UnsupportedError) as e:
        r.check(approximate=True)
    msg = str(e.value)
    assert "tcp_tw_recycle does not exist on Linux 6.18" in msg
    assert "removed in 4.12" in msg
    assert "the lab cannot run this scenario" in msg
    assert "simulate" in msg


def test_other_kernel_profile_needs_approximate_and_says_what_differs():
    sc = scen(sprof="linux-4.9")
    r = realise(sc, K618)
    with pytest.raises(UnsupportedError) as e:
        r.check(approximate=False)
    msg = str(e.value)
    assert "linux-4.9" in msg and "--approximate" in msg
    assert "tcp_tw_reuse timing rule" in msg and "TCP timestamp random offsets" in msg
    r.check(approximate=True)  # runs, with the profile's defaults written
    assert r.sysctls["server"]["net.ipv4.tcp_tw_reuse"] == 0
    assert r.sysctls["server"]["net.core.somaxconn"] == 128


def test_running_kernel_profile_is_exact():
    r = realise(scen(), get_profile("linux-6.18.44"))
    r.check(approximate=False)
    assert not r.differences and not r.refusals


def test_windows_client_is_played_by_the_emulator_with_the_models_parameters():
    from tcpreuse.emulate.profile import EmuProfile

    sc = scen(cprof="windows-2012r2", close="server")
    r = realise(sc, K618)
    r.check(approximate=False)  # no difference to state: the emulator is the profile
    ep = EmuProfile.from_json(r.emulated["client"])
    assert (ep.port_first, ep.port_num, ep.offers_ts, ep.syn_offsets) == (49152, 16384, False, (0.0, 3.0, 9.0))
    p = build_plan(sc, r, "abc123")
    h = p.hosts["client"]
    assert h.emulated and not any(line.startswith("addr add") for line in h.ip_batch())
    assert h.sysctls["net.ipv4.ip_forward"] == "1" and h.sysctls["net.ipv4.conf.all.proxy_arp"] == "1"
    assert p.loads[0].emulated == h.emulated


def test_windows_client_above_the_emulators_ceiling_is_approximated_with_stated_differences():
    sc = scen(cprof="windows-2012r2", close="server", overrides={"workload.rate": 1000})
    r = realise(sc, K618)
    assert not r.emulated
    with pytest.raises(UnsupportedError):
        r.check(approximate=False)
    r.check(approximate=True)
    s = r.sysctls["client"]
    assert s["net.ipv4.tcp_timestamps"] == 0
    assert s["net.ipv4.ip_local_port_range"] == (49152, 65535)
    assert s["net.ipv4.tcp_tw_reuse"] == 0
    text = " ".join(r.differences)
    for words in ("TIME_WAIT lasts 60 s", "ISN generator", "SYN schedule", "port allocation",
                  "above what the packet-level client emulator holds"):
        assert words in text


def test_windows_timestamps_enabled_reaches_emulator_and_stand_in():
    from tcpreuse.emulate.profile import EmuProfile

    ts = '[host.settings]\n"netsh.tcp.timestamps" = "enabled"'
    assert EmuProfile.from_json(realise(scen(cprof="windows-2012r2", csettings=ts), K618)
                                .emulated["client"]).offers_ts
    fast = scen(cprof="windows-2012r2", csettings=ts, overrides={"workload.rate": 1000})
    assert realise(fast, K618).sysctls["client"]["net.ipv4.tcp_timestamps"] == 1


def test_global_sysctl_is_a_difference():
    sc = scen(ssettings='[host.settings]\n"net.netfilter.nf_conntrack_max" = 1000')
    r = realise(sc, K618)
    assert any("nf_conntrack_max is global" in d for d in r.differences)


def test_conflicting_close_policies_on_one_server_group_are_refused():
    extra = """
[[workload]]
name = "w2"
clients = "client"
target = "server"
close = "server"
"""
    r = realise(scen(extra=extra, close="client"), K618)
    with pytest.raises(UnsupportedError, match="close both as"):
        r.check(approximate=True)


def test_close_policies_map_to_serve_and_load():
    for close, srv, ld in (("server", "server", "server"), ("client", "client", "client"),
                           ("client_rst", "client", "rst"), ("server_rst", "rst", "client")):
        r = realise(scen(close=close), K618)
        assert r.serve_close["server"] == srv and r.load_close["w"] == ld


# ---- plan ---------------------------------------------------------------------------

NAT_LB = """
[nat]
clients = ["client"]
addresses = 2
port_policy = "random"
time_wait_s = 30
[lb]
backends = "server"
port = 80
scheduler = "random"
snat = true
snat_port_order = "preserve"
"""


def test_plan_nat_and_lb():
    sc = scen(scount=2, extra=NAT_LB, target="lb")
    r = realise(sc, K618)
    r.check(approximate=False)
    p = build_plan(sc, r, "abc123")
    assert set(p.hosts) == {"router", "nat", "lb", "client", "server-1", "server-2"}
    assert all(h.ns.startswith("tcpr-labc123-") for h in p.hosts.values())
    assert p.hosts["client"].gateway == GW_NAT
    assert p.hosts["server-1"].gateway == GW_LB
    assert p.hosts["nat"].gateway == GW_ROUTER
    # the router routes the NAT pool, never the client's own address
    routed = [a for lst in p.hosts["router"].downlinks.values() for a in lst]
    assert "198.51.100.1" in routed and "198.51.100.2" in routed
    assert p.hosts["client"].addresses[0] not in routed
    assert "fully-random" in (p.hosts["nat"].nft or "")
    assert "198.51.100.1-198.51.100.2" in (p.hosts["nat"].nft or "")
    assert p.hosts["nat"].sysctls["net.netfilter.nf_conntrack_tcp_timeout_time_wait"] == "30"
    lb = p.hosts["lb"].nft or ""
    assert "numgen random mod 2" in lb and "snat ip to 192.0.2.1" in lb
    assert p.vip == ("203.0.113.10", 80)
    (ld,) = p.loads
    assert ld.target == ("203.0.113.10", 80) and ld.close == "client"
    assert {s.host for s in p.serves} == {"server-1", "server-2"}
    # back ends are reachable directly through the LB
    assert any(a == "10.100.0.1" and dev == "lb0" for a, dev, _ in p.hosts["router"].routes_via)


def test_plan_splits_rate_and_count_and_spreads_clients_over_servers():
    sc = scen(scount=2, overrides={"host.client.count": 3, "workload.count": 10})
    r = realise(sc, K618)
    p = build_plan(sc, r, "abc123")
    assert sum(ld.count or 0 for ld in p.loads) == 10
    assert math.isclose(sum(ld.rate for ld in p.loads), 100)
    assert len({ld.seed for ld in p.loads}) == len(p.loads) == len({ld.name for ld in p.loads})


@pytest.mark.parametrize(("clients", "servers"), [(1, 2), (3, 2), (2, 2), (2, 4), (4, 2)])
def test_plan_gives_each_client_server_pair_the_simulators_share(clients, servers):
    """The lab's per-(client, server) rates are the shares the simulator's round robin gives."""
    from collections import Counter

    from tcpreuse.sim.engine import Engine

    sc = scen(scount=servers, overrides={"host.client.count": clients, "duration_s": 1.2})
    plan = build_plan(sc, realise(sc, K618), "abc123")
    lab = {(ld.host, ld.target_host): ld.rate / 100 for ld in plan.loads}
    run = Engine(sc).run()
    a = run.attempts
    pairs = Counter(zip(a.column("client"), a.column("server"), strict=True))
    sim = {k: n / len(a) for k, n in pairs.items()}
    assert set(sim) == set(lab)
    for k in sim:
        assert abs(sim[k] - lab[k]) < 0.01, (k, sim[k], lab[k])
    # ... and each pair's first attempt is due when the simulator sends it: the loads of
    # one workload interleave as its round robin does (load --start-at)
    first: dict[tuple[str, str], float] = {}
    for t, c, s in zip(a.column("t"), a.column("client"), a.column("server"), strict=True):
        first.setdefault((c, s), float(t))
    for ld in plan.loads:
        assert ld.phase_s == pytest.approx(first[(ld.host, ld.target_host)]), ld.name


def test_plan_uses_scenario_addresses_and_refuses_collisions():
    sc = scen(overrides={"host.client.address": "192.0.2.10", "host.server.address": "198.51.100.1"})
    p = build_plan(sc, realise(sc, K618), "abc123")
    assert p.hosts["client"].addresses == ["192.0.2.10"]
    assert p.loads[0].target == ("198.51.100.1", 8080)
    sc = scen(overrides={"host.client.address": "192.0.2.10", "host.server.address": "192.0.2.10"})
    with pytest.raises(TcpreuseError, match="used twice"):
        build_plan(sc, realise(sc, K618), "abc123")


def test_plan_refuses_too_many_namespaces():
    sc = scen(overrides={"host.client.count": MAX_NAMESPACES})
    with pytest.raises(LabError, match="network namespaces"):
        build_plan(sc, realise(sc, K618), "abc123")


def test_plan_loss_uses_nftables_on_the_router():
    sc = scen(overrides={"path.loss": 0.01})
    p = build_plan(sc, realise(sc, K618), "abc123")
    assert "numgen random mod 1000000 < 10000 drop" in (p.hosts["router"].nft or "")


# ---- /proc parsers --------------------------------------------------------------------

NETSTAT = """TcpExt: SyncookiesSent TW TWRecycled PAWSActive
TcpExt: 0 5 2 1
IpExt: InNoRoutes InOctets
IpExt: 0 100
"""
SNMP = """Ip: Forwarding DefaultTTL
Ip: 1 64
Tcp: RtoAlgorithm RtoMin ActiveOpens PassiveOpens CurrEstab OutRsts
Tcp: 1 200 10 3 4 7
"""


def test_counters_use_nstat_names_and_skip_gauges():
    c = counters(NETSTAT, SNMP)
    assert c == {"TcpExtSyncookiesSent": 0, "TcpExtTW": 5, "TcpExtTWRecycled": 2,
                 "TcpExtPAWSActive": 1, "TcpActiveOpens": 10, "TcpPassiveOpens": 3,
                 "TcpOutRsts": 7}


def test_sockstat_conntrack_listening_parsers():
    st = parse_sockstat("sockets: used 9\nTCP: inuse 3 orphan 1 tw 812 alloc 5 mem 2\nUDP: inuse 0\n")
    assert (st.tcp_inuse, st.orphan, st.time_wait) == (3, 1, 812)
    assert parse_ct_stat("entries  clashres found\n0000001f  0 0\n0000001f  0 0\n") == 31
    import sys

    ip = bytes([10, 100, 0, 1])
    h = int.from_bytes(ip, sys.byteorder)
    tcp = ("  sl  local_address rem_address   st\n"
           f"   0: {h:08X}:1F90 00000000:0000 0A 00000000:00000000\n"
           f"   1: {h:08X}:1F91 0100007F:0050 01 00000000:00000000\n")
    assert parse_listening(tcp) == {("10.100.0.1", 8080)}


# ---- the join: which flow served which attempt -------------------------------------------

B = frozenset({"10.100.0.1", "10.100.0.2"})
S1, S2 = ("10.100.0.1", "192.0.2.1", 40001), ("10.100.0.2", "192.0.2.1", 40001)


def test_a_reused_client_tuple_is_joined_by_time_to_the_server_of_each_use():
    # one client (address, port) used three times; the LB sent the uses to S1, S2, S1
    flows = build_flows([("N", 1.0002, ("10.1.0.1", 40001), S1), ("D", 1.5, ("10.1.0.1", 40001), S1),
                         ("N", 2.0003, ("10.1.0.1", 40001), S2), ("D", 2.5, ("10.1.0.1", 40001), S2),
                         ("N", 3.0001, ("10.1.0.1", 40001), S1)])
    q = [("10.1.0.1", 40001, B, t) for t in (3.0, 1.0, 2.0)]
    assert join(flows, q) == [S1, S1, S2]
    # without time it is ambiguous: the same key has two views
    assert flows.views(("10.1.0.1", 40001)) == {S1, S2}
    # a flow toward an address the attempt could not reach is not its flow
    assert join(flows, [("10.1.0.1", 40001, frozenset({"10.9.9.9"}), 1.0)]) == [None]
    assert join(flows, [("10.1.0.9", 1, B, 1.0), None]) == [None, None]


def test_the_join_keeps_the_last_flow_of_an_attempt_and_a_conntrack_entry_that_outlived_one():
    k = ("10.1.0.1", 40001)
    # attempt at 1.0: its first SYN's entry was reset and destroyed, the SYN sent again 3 s
    # later opened a new one (another server), which answered
    flows = build_flows([("N", 1.001, k, S1), ("D", 1.002, k, S1), ("N", 4.001, k, S2)])
    assert join(flows, [("10.1.0.1", 40001, B, 1.0), ("10.1.0.1", 40001, B, 10.0)]) == [S2, S2]
    # the second attempt (10.0) made no new entry: the one alive since 4.001 carried it; one
    # that had ended before the attempt did not
    ended = Flows({k: [Flow(4.001, S2, 9.0)]})
    assert join(ended, [("10.1.0.1", 40001, B, 10.0)]) == [None]
    # events read a little late still fall in the attempt's window
    assert join(build_flows([("N", 1.004, k, S2)]), [("10.1.0.1", 40001, B, 1.0)]) == [S2]
    # shifted onto the run's clock
    assert build_flows([("N", 101.0, k, S1)]).shifted(100.0).by_key[k][0].start == 1.0


# ---- merge ----------------------------------------------------------------------------

def _part_result(host: str, rows: list[tuple[float, str, str, int]]) -> RunResult:
    """A `load` result as load writes it: no `cause` column (load does not know it)."""
    outcomes = sorted({o for _, o, _, _ in rows})
    reasons = ["ok", "local_ports_exhausted"]
    addrs = sorted({a for _, _, a, _ in rows} | {"203.0.113.10"})
    cols = {
        "t": [t for t, _, _, _ in rows],
        "connect_ms": [0.2 if o == "ok" else float("nan") for _, o, _, _ in rows],
        "syn_tries": [1] * len(rows),
        "outcome": [outcomes.index(o) for _, o, _, _ in rows],
        "reason": [reasons.index("ok" if o == "ok" else "local_ports_exhausted") for _, o, _, _ in rows],
        "client": [0] * len(rows), "workload": [0] * len(rows),
        "src": [addrs.index(a) for _, _, a, _ in rows],
        "sport": [p if o == "ok" else 0 for _, o, _, p in rows],
        "dst": [addrs.index("203.0.113.10")] * len(rows), "dport": [80] * len(rows),
    }
    table = AttemptTable.build(cols, {"outcome": outcomes, "reason": reasons, "workload": ["load"],
                                      "host": [host], "addr": addrs})
    return RunResult(source="lab", scenario="x", duration_s=3, attempts=table)


def test_merge_orders_attempts_and_fills_the_server_view_from_conntrack():
    sc = scen(scount=2, extra=NAT_LB, target="lb", overrides={"host.client.count": 2})
    r = realise(sc, K618)
    p = build_plan(sc, r, "abc123")
    l1, l2 = p.loads
    a = _part_result("client-1", [(0.1, "ok", "10.1.0.1", 40001), (1.5, "EADDRNOTAVAIL", "10.1.0.1", 0)])
    b = _part_result("whatever", [(0.05, "ok", "10.1.0.2", 40002)])
    obs = Observed(duration_s=2.2)
    obs.nat = build_flows([("N", 0.6001, ("10.1.0.1", 40001), ("203.0.113.10", "198.51.100.1", 50001)),
                           ("N", 0.0501, ("10.1.0.2", 40002), ("203.0.113.10", "198.51.100.2", 50002))])
    obs.lb = build_flows([("N", 0.6002, ("198.51.100.1", 50001), ("10.100.0.2", "192.0.2.1", 50001))])
    obs.samples = {"server-1": {"time_wait": [1, 2]}}
    obs.counters = {"server-1": {"TcpExtTW": 3}}
    res = merge(p, [Part(l1, a, 0.5), Part(l2, b, 0.0)], obs, seed=1, notes=[], meta={})
    rows = list(res.attempts.rows())
    assert [round(x["t"], 3) for x in rows] == [0.05, 0.6, 2.0]
    assert [x["client"] for x in rows] == ["client-2", "client-1", "client-1"]
    assert [x["workload"] for x in rows] == ["w", "w", "w"]
    assert rows[1]["srv_src"] == "192.0.2.1" and rows[1]["srv_dst"] == "10.100.0.2"
    assert rows[1]["srv_sport"] == 50001 and rows[1]["srv_dport"] == 8080
    # a column the load results lack stays "none" through the merge (not the first name)
    assert [x["cause"] for x in rows] == ["", "", ""]
    assert rows[1]["server"] == "server-2"
    assert rows[0]["srv_src"] == "" and rows[0]["server"] == ""  # the LB recorded no flow: unknown
    assert any("unknown" in n for n in res.notes)
    assert res.timeline.attempts == [2, 0, 1] and res.timeline.failed == [0, 0, 1]
    assert res.timeline.hosts["server-1"]["time_wait"] == [1, 2, 2]
    assert res.counters["server-1"]["TcpExtTW"] == 3
    assert res.outcomes() == {"ok": 2, "EADDRNOTAVAIL": 1}
    assert np.isnan(res.attempts.cols["connect_ms"][2])
    back = RunResult.from_json(res.to_json(records=True))
    assert len(back.attempts) == 3


# ---- the command: refusals are one clear line, before anything is built -------------------

def _cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tcpreuse", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_refuses_tw_recycle_in_one_line(tmp_path):
    f = tmp_path / "recycle.toml"
    f.write_text(BASE.format(cprof="linux-6.18", sprof="linux-4.9", csettings="",
                             ssettings='[host.settings]\n"net.ipv4.tcp_tw_recycle" = 1',
                             scount=1, extra="", target="server", close="server"))
    r = _cli(["lab", str(f), "--approximate"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "tcp_tw_recycle does not exist on Linux" in r.stderr
    assert "use `tcpreuse simulate`" in r.stderr


def test_cli_windows_above_the_emulators_ceiling_without_approximate_says_how(tmp_path):
    f = tmp_path / "win.toml"
    f.write_text(BASE.format(cprof="windows-2016", sprof="linux-6.18", csettings="", ssettings="",
                             scount=1, extra="", target="server", close="server").replace(
                                 "rate = 100", "rate = 1000"))
    r = _cli(["lab", str(f)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--approximate" in r.stderr and "windows-2016" in r.stderr


def test_cli_bad_scenario_and_bad_set_are_clear(tmp_path):
    r = _cli(["lab", str(tmp_path / "missing.toml")])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot read" in r.stderr
    r = _cli(["lab", "client-exhaustion", "--set", "nonsense"])
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr


TWO_PORTS = """
name = "two-ports"
duration_s = 3
[[host]]
name = "client"
role = "client"
profile = "linux-6.18"
[host.settings]
"net.ipv4.ip_local_port_range" = "40000 40099"
[[host]]
name = "db"
role = "server"
profile = "linux-6.18"
ports = [5432, 6432]
[[workload]]
name = "direct"
clients = "client"
target = "db"
port = 5432
rate = 100
count = 150
close = "client"
[[workload]]
name = "pooler"
clients = "client"
target = "db"
port = 6432
rate = 100
count = 150
close = "client"
"""


def test_one_server_address_listens_on_several_ports_in_the_lab_plan():
    sc = load_text(TWO_PORTS, "<test>")
    p = build_plan(sc, realise(sc, K618), "abc123")
    (serve,) = p.serves
    addr = p.hosts["db"].addresses[0]
    assert sorted(serve.listen) == [(addr, 5432), (addr, 6432)]
    assert sorted(ld.target for ld in p.loads) == [(addr, 5432), (addr, 6432)]


def test_several_ports_of_one_server_in_the_simulator():
    """Two destinations on one address: the 100-port range serves each port's 4-tuples on
    its own (100 connects succeed toward each port, 50 fail toward each)."""
    from tcpreuse.sim.engine import Engine

    r = Engine(load_text(TWO_PORTS, "<test>")).run()
    c = r.attempts.cols
    ok = c["outcome"] == r.attempts.vocab["outcome"].index("ok")
    assert {int(p): int((ok & (c["dport"] == p)).sum()) for p in (5432, 6432)} == {5432: 100, 6432: 100}
    assert r.outcomes() == {"ok": 200, "EADDRNOTAVAIL": 100}


def test_a_workload_port_the_server_does_not_listen_on_is_refused():
    with pytest.raises(TcpreuseError, match="does not listen on port 7000"):
        load_text(TWO_PORTS.replace("port = 6432", "port = 7000"), "<test>")
    with pytest.raises(TcpreuseError, match="server groups only"):
        load_text(TWO_PORTS.replace('profile = "linux-6.18"\n[host.settings]', 'profile = "linux-6.18"\nports = [1]\n[host.settings]', 1), "<test>")
