"""The engine end to end: what a user of `simulate` would notice."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tcpreuse.result import RunResult
from tcpreuse.scenario.loader import load_scenario, load_text, parse_sets
from tcpreuse.sim.engine import Engine

CLIENT_FIRST = """\
name = "cf"
duration_s = {duration}
[[host]]
name = "client"
role = "client"
profile = "{profile}"
[host.settings]
"net.ipv4.ip_local_port_range" = "40000 40999"
"net.ipv4.tcp_tw_reuse" = {reuse}
{extra}
[[host]]
name = "server"
role = "server"
count = {servers}
profile = "linux-6.18"
port = 8080
[[workload]]
clients = "client"
target = "server"
rate = {rate}
close = "client"
"""


def run(text: str, **over: Any) -> RunResult:
    e = Engine(load_text(text, overrides=over or None))
    e.audit = True
    r = e.run()
    assert not e.violations, e.violations[:5]
    return r


def cf(duration: float = 8, profile: str = "linux-6.18", reuse: int = 0, extra: str = "", servers: int = 1,
       rate: float = 500) -> str:
    return CLIENT_FIRST.format(duration=duration, profile=profile, reuse=reuse, extra=extra, servers=servers,
                               rate=rate)


def test_the_1001st_connection_to_one_destination_fails_with_eaddrnotavail() -> None:
    r = run(cf())
    assert r.outcomes() == {"ok": 1000, "EADDRNOTAVAIL": 3000}
    ff = r.first_failure()
    assert ff is not None and ff["index"] == 1000 and ff["outcome"] == "EADDRNOTAVAIL"
    assert r.counters["client"]["TcpExtTW"] == 1000  # counted when scheduled on >= 5.18
    assert r.meta["end_state"]["client"]["time_wait"] == 1000
    # the ports used are exactly the range, even ones first (parity of `low`)
    a = r.attempts
    ok = ~a.failed_mask()
    ports = a.cols["sport"][ok]
    assert sorted(ports.tolist()) == list(range(40000, 41000))
    assert (ports[:500] % 2 == 0).all() and (ports[500:] % 2 == 1).all()


def test_a_second_destination_still_works() -> None:
    r = run(cf(servers=2, rate=1000))
    a = r.attempts
    ok = ~a.failed_mask()
    assert int(ok.sum()) == 2000  # 1,000 ports per destination
    per_dst = {d: int(((a.cols["dst"] == a.code("dst", d)) & ok).sum()) for d in a.vocab["addr"]
               if a.code("dst", d) >= 0 and d.startswith("10.100.")}
    assert sorted(per_dst.values()) == [1000, 1000]


@pytest.mark.slow
def test_tw_reuse_caps_the_rate_near_ports_per_reuse_delay() -> None:
    for delay_ms, expect in ((1000, 1000), (2000, 500)):
        extra = f'"net.ipv4.tcp_tw_reuse_delay" = {delay_ms}'
        r = run(cf(duration=10, reuse=1, extra=extra, rate=2000))
        a = r.attempts
        t = a.cols["t"]
        ok = ~a.failed_mask()
        steady = (t >= 4) & (t < 10)
        rate = int((ok & steady).sum()) / 6
        assert abs(rate - expect) / expect < 0.05, (delay_ms, rate)
        assert r.counters["client"]["TcpExtTWRecycled"] > 0


@pytest.mark.slow
def test_old_kernels_reuse_after_more_than_one_wall_second() -> None:
    r = run(cf(duration=10, profile="linux-4.9", reuse=1, rate=2000))
    ok = ~r.attempts.failed_mask()
    t = r.attempts.cols["t"]
    rate = int((ok & (t >= 4)).sum()) / 6
    # get_seconds() - stamp > 1: reusable 1-2 s after the last timestamp, ~1.5 s on average
    assert 1000 / 2.0 * 0.95 < rate < 1000 / 1.0, rate


@pytest.mark.slow
def test_tw_reuse_needs_timestamps_on_both_ends() -> None:
    extra = '"net.ipv4.tcp_timestamps" = 0'
    r = run(cf(duration=6, reuse=1, extra=extra, rate=500))
    assert r.outcomes()["ok"] == 1000
    assert r.counters["client"]["TcpExtTWRecycled"] == 0


def test_server_first_close_puts_time_wait_on_the_server() -> None:
    wide = parse_sets(["workload.close=server", "client:net.ipv4.ip_local_port_range=32768 60999"])
    r = run(cf(duration=3, rate=200), **wide)
    assert r.outcomes() == {"ok": 600}
    assert r.meta["end_state"]["server"]["time_wait"] == 600
    assert r.meta["end_state"]["client"]["time_wait"] == 0
    # With 1,000 ports they come back within 3 s; their SYNs carry newer timestamps, so the
    # server accepts them on its TIME_WAIT sockets (docs/kernel.md §3.1) and nothing fails.
    r = run(cf(duration=6, rate=400), **parse_sets(["workload.close=server"]))
    assert r.failure_rate() == 0 and r.delayed_rate() == 0
    assert r.meta["end_state"]["server"]["time_wait"] < 1000


def test_linger0_leaves_no_time_wait() -> None:
    for close in ("client_rst", "server_rst"):
        r = run(cf(duration=3, rate=200), **parse_sets([f"workload.close={close}",
                                                         "client:net.ipv4.ip_local_port_range=32768 60999"]))
        assert r.outcomes() == {"ok": 600}
        assert all(s["time_wait"] == 0 for s in r.meta["end_state"].values())
    assert r.counters["server"]["TcpExtTCPAbortOnData"] == 600


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    def ports(seed: int) -> list[int]:
        sc = load_scenario("client-exhaustion", {"seed": seed, "duration_s": 2})
        return Engine(sc).run().attempts.column("sport")

    assert ports(1) == ports(1)
    assert ports(1) != ports(2)


def test_max_tw_buckets_overflow_frees_ports_at_once() -> None:
    r = run(cf(duration=6, extra='"net.ipv4.tcp_max_tw_buckets" = 100', rate=500))
    assert r.outcomes() == {"ok": 3000}  # overflowing sockets skip TIME_WAIT: no exhaustion
    assert r.counters["client"]["TcpExtTCPTimeWaitOverflow"] == 2900
    assert r.meta["end_state"]["client"]["time_wait"] == 100


def test_tcp_tw_recycle_is_rejected_on_modern_kernels() -> None:
    from tcpreuse.errors import UnknownSettingError

    with pytest.raises(UnknownSettingError, match=r"does not exist on linux-6\.18"):
        load_scenario("seed", parse_sets(["host.server.profile=linux-6.18"]))


def test_listen_backlog_overflow() -> None:
    r = Engine(load_scenario("listen-overflow", {"duration_s": 6})).run()
    c = r.counters["server"]
    assert c["TcpExtListenOverflows"] > 0 and c["TcpExtListenDrops"] >= c["TcpExtListenOverflows"]
    # Retransmitted SYNs arrive in bursts that all pass the SYN-time test; final ACKs that
    # then meet a full accept queue leave request socks behind, the SYN queue fills and
    # later SYNs get cookies (and some are still dropped for the full accept queue).
    assert 0 < c["TcpExtSyncookiesSent"] < c["TcpExtTCPReqQFullDoCookies"]
    reasons = r.reasons()
    assert reasons.get("ok_after_syn_retry", 0) > 0
    c = r.attempts.cols
    second = c["syn_tries"] == 2
    retried = c["connect_ms"][second]
    # 1 s SYN RTO + RTT, fired by the timer wheel up to one level-2 bucket (64 jiffies at
    # HZ=1000) late ...
    assert retried.size and retried.min() > 1000.5 and retried.max() <= 1000.5 + 64 + 1
    # ... so SYNs dropped one by one are re-sent together, a bucket at a time
    sent = np.round(c["t"][second] + (retried - 0.5) / 1000.0, 6)
    assert len(np.unique(sent)) * 5 < retried.size


@pytest.fixture(scope="module")
def seed() -> RunResult:
    return Engine(load_scenario("seed", {"duration_s": 70})).run()


@pytest.mark.slow
class TestSeed:
    """`tcpreuse simulate seed` reproduces the write-up's observables."""

    def test_no_failures_at_first_then_a_small_share(self, seed: RunResult) -> None:
        ff = seed.first_failure()
        assert ff is not None
        assert ff["index"] > 20_000  # "after some tens of thousands of requests"
        assert ff["outcome"] == "WSAETIMEDOUT" and ff["reason"] == "syn_hit_timewait"
        t = seed.attempts.cols["t"]
        failed = seed.attempts.failed_mask()
        late = t >= 60
        share = failed[late].mean()
        assert 0.005 < share < 0.15  # "a small share"

    def test_servers_hold_tens_of_thousands_of_time_wait_at_onset(self, seed: RunResult) -> None:
        from tcpreuse.diagnose.runfacts import tw_at_role

        ff = seed.first_failure()
        assert ff is not None
        assert 30_000 <= tw_at_role(seed, "server", ff["time_s"]) <= 90_000

    def test_the_mechanism_is_syns_meeting_server_time_wait(self, seed: RunResult) -> None:
        causes = seed.attempts.counts("cause")
        assert causes.get("syn_hit_timewait", 0) > 10_000
        assert "syn_dropped_recycle" not in causes  # 2.6.32 does not drop TS-less SYNs
        assert seed.host_counter("TcpExtPAWSPassive") == 0

    def test_client_timestamps_remove_the_failures(self) -> None:
        r = Engine(load_scenario("seed-client-timestamps", {"duration_s": 70})).run()
        assert r.failure_rate() == 0 and r.delayed_rate() == 0
        assert r.host_counter("TcpExtTWKilled", "server") > 0  # recycled TIME_WAIT

    def test_linux_client_direct_at_40000_per_second_has_no_failures(self) -> None:
        r = Engine(load_scenario("seed-linux-direct", {"duration_s": 2})).run()
        assert len(r.attempts) == 80_000 and r.failure_rate() == 0 and r.delayed_rate() == 0

    def test_timestamped_clients_behind_one_nat_lose_syns_silently(self) -> None:
        r = Engine(load_scenario("seed-nat-timestamps", {"duration_s": 10})).run()
        assert r.host_counter("TcpExtPAWSPassive") > 0
        assert r.attempts.counts("reason").get("syn_dropped_recycle", 0) > 0
        assert r.failure_rate() > 0.3


def test_the_end_of_the_run_is_one_moment_for_state_and_counters() -> None:
    """Connections open at duration_s close after it (service 0.5 s): their TIME_WAITs are
    counted in TcpExtTW (6.18 counts at schedule), so the TIME_WAIT left at the end must
    include them too -- both are taken at meta.end_s, when the last attempt finished."""
    text = cf(duration=2, rate=100).replace('port = 8080', 'port = 8080\nservice_ms = 500.0')
    r = run(text)
    assert r.outcomes() == {"ok": 200}
    assert 2.49 <= r.meta["end_s"] < 2.6  # the last arrival (1.99 s) + 0.5 s
    assert r.meta["end_state"]["client"]["time_wait"] == r.counters["client"]["TcpExtTW"] == 200


def test_a_run_that_is_done_before_duration_ends_at_duration() -> None:
    r = run(cf(duration=3, rate=100).replace("rate = 100", "rate = 100\ncount = 10"))
    assert r.meta["end_s"] == 3.0
    assert r.meta["end_state"]["client"]["time_wait"] == 10
