"""`tcpreuse validate` without root: HZ detection, metrics, tolerances, the suite's
scenarios, what the model is told about the lab, rendering, and the CLI's errors."""

from __future__ import annotations

import json

import pytest

from tcpreuse.cli import main
from tcpreuse.result import HostInfo, RunResult
from tcpreuse.sim.engine import Engine
from tcpreuse.validate import kernel, render, suite
from tcpreuse.validate.compare import compare, series_agree, verdict
from tcpreuse.validate.kernel import Hz
from tcpreuse.validate.metrics import measure
from tcpreuse.validate.run import (
    Outcome,
    Report,
    app_limited,
    model_overrides,
    native_overrides,
    racy_counters,
)


def sim(name: str, **sets: object) -> RunResult:
    native, _ = native_overrides(suite.load(name), 250)
    return Engine(suite.load(name, {**native, **sets})).run()


def test_hz_from_kernel_config_and_timer_list() -> None:
    assert kernel.parse_config_hz("# CONFIG_HZ_1000 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n") == 250
    assert kernel.parse_config_hz("CONFIG_HZ_PERIODIC=y\n") is None
    assert kernel.parse_jiffies("now at 1 nsecs\njiffies: 4295123456\n") == 4295123456
    assert kernel.nearest_hz(247.9) == 250 and kernel.nearest_hz(1003) == 1000
    hz = kernel.running_hz()
    assert hz.value in kernel.KNOWN_HZ and hz.source


def test_suite_has_at_least_20_bounded_linux_scenarios() -> None:
    names = suite.names()
    assert len(names) >= 20
    assert set(suite.QUICK) <= set(names) and set(suite.CHANCE) <= set(names)
    for n in names:
        sc = suite.load(n)
        assert sc.name == n and sc.summary
        assert all(w.count is not None for w in sc.workload), n  # bounded in count
        assert sc.duration_s <= 10, n  # and short
        # Linux hosts; Windows/macOS only as clients, which the lab's emulator plays
        assert all(g.profile.startswith("linux") or g.role == "client" for g in sc.host)
    with pytest.raises(Exception, match="no validation suite"):
        suite.suite("nightly")


def test_native_overrides_put_every_group_on_the_running_kernel() -> None:
    sc = suite.load("v-two-destinations")
    ov, _notes = native_overrides(sc, 250)
    assert ov["host.a.profile"] == ov["host.b.profile"] == ov["host.client.profile"] == "linux-native"
    assert ov["host.client.model.hz"] == 250
    native = suite.load("v-two-destinations", ov)
    assert all(g.params["hz"] == 250 for g in native.host)


def test_a_windows_client_keeps_its_profile_for_the_emulator() -> None:
    sc = suite.load("seed-modern-kernel")
    ov, notes = native_overrides(sc, 250)
    assert "host.winclient.profile" not in ov and ov["host.server.profile"] == "linux-native"
    assert any("played by the packet-level emulator" in n for n in notes)


def test_the_model_gets_the_labs_machine_defaults_and_rtt() -> None:
    sc = suite.load("v-tw-buckets")
    lab = RunResult(source="lab", scenario=sc.name, duration_s=1.0,
                    notes=["path.rtt_ms = 0.1 not realised (netem unavailable: ...)"])
    lab.hosts = {
        "client": HostInfo("client", "client", "client", "linux-6.18",
                           settings={"net.ipv4.tcp_max_tw_buckets": 131072,
                                     "net.ipv4.tcp_max_syn_backlog": 2048}),
        "server": HostInfo("server", "server", "server", "linux-6.18",
                           settings={"net.ipv4.tcp_max_tw_buckets": 131072}),
    }
    ov, notes = model_overrides(sc, lab)
    # the scenario sets the client's limit itself: kept; the server's comes from the lab
    assert "host.client.settings.net.ipv4.tcp_max_tw_buckets" not in ov
    assert ov["host.server.settings.net.ipv4.tcp_max_tw_buckets"] == 131072
    assert ov["host.client.settings.net.ipv4.tcp_max_syn_backlog"] == 2048
    assert ov["path.rtt_ms"] == 0.05 and any("netem" in n for n in notes)


def test_metrics_of_an_exhaustion_run() -> None:
    m = measure(sim("v-exhaust-even"))
    assert m.attempts == 1200 and m.outcomes == {"ok": 1000, "EADDRNOTAVAIL": 200}
    assert m.first_failures["w"] is not None and m.first_failures["w"][0] == 1000
    assert m.ports_distinct == 1000 and m.ports_even == 500 and m.ports_odd == 500
    assert m.time_wait_end == {"client": 1000, "server": 0}
    assert m.counters["client"]["TcpExtTW"] == 1000


def test_two_destinations_share_local_ports_and_fail_per_workload() -> None:
    m = measure(sim("v-two-destinations"))
    assert m.outcomes == {"ok": 1000, "EADDRNOTAVAIL": 200}
    assert m.ports_distinct == 500  # the same 500 ports toward both servers
    assert {w: f[0] if f else None for w, f in m.first_failures.items()} == {"to-a": 500, "to-b": 500}


def test_identical_runs_agree_and_a_changed_count_disagrees() -> None:
    a = measure(sim("v-exhaust-even"))
    rows = compare(a, a)
    assert verdict(rows) and all(r.tolerance and r.reason for r in rows)
    b = measure(sim("v-exhaust-even", **{"host.client.settings.net.ipv4.ip_local_port_range": "40000 40998"}))
    bad = [r.metric for r in compare(a, b) if r.agree is False]
    assert "outcome ok" in bad and "client: TcpExtTW" in bad


def test_latency_and_one_sided_and_chance_tolerances() -> None:
    a = measure(sim("v-server-rst"))
    b = measure(sim("v-server-rst"))
    b.connect_ms = {"p50": a.connect_ms["p50"] + 8.0, "p90": a.connect_ms["p90"] + 8.0,
                    "p99": (a.connect_ms["p99"] or 0) + 1000.0}  # the 1 s RTO
    by = {r.metric: r for r in compare(a, b)}
    assert by["connect ms p50"].agree and by["connect ms p90"].agree
    assert by["connect ms p99"].agree is False
    # a RST racing the client's close: fewer EstabResets in the lab is no disagreement
    b.counters["client"]["TcpEstabResets"] = a.counters["client"]["TcpEstabResets"] - 100
    racy = racy_counters(suite.load("v-server-rst"))
    assert racy == frozenset({("client", "TcpEstabResets"), ("server", "TcpOutRsts")})
    assert {r.metric: r for r in compare(a, b, racy=racy)}["client: TcpEstabResets"].agree
    assert {r.metric: r for r in compare(a, b)}["client: TcpEstabResets"].agree is False
    b.counters["client"]["TcpEstabResets"] += 200  # more than the model is never a race
    assert {r.metric: r for r in compare(a, b, racy=racy)}["client: TcpEstabResets"].agree is False
    # ... seen from the server: a late client FIN draws one more RST, never one fewer
    b.counters["server"]["TcpOutRsts"] = a.counters["server"]["TcpOutRsts"] + 1
    assert {r.metric: r for r in compare(a, b, racy=racy)}["server: TcpOutRsts"].agree
    b.counters["server"]["TcpOutRsts"] = a.counters["server"]["TcpOutRsts"] - 1
    assert {r.metric: r for r in compare(a, b, racy=racy)}["server: TcpOutRsts"].agree is False
    # chance: counts drawn by secret hashes agree within 3 sqrt(n) + 2
    a.delayed, b.delayed = 57, 40
    rows = {r.metric: r for r in compare(a, b, chance_reason="hashes")}
    assert rows["connected after a SYN retransmission"].agree
    a.delayed, b.delayed = 57, 20
    rows = {r.metric: r for r in compare(a, b, chance_reason="hashes")}
    assert rows["connected after a SYN retransmission"].agree is False


def test_an_app_limited_server_compares_queue_counts_statistically() -> None:
    assert app_limited(suite.load("v-listen-overflow")) is not None
    assert app_limited(suite.load("v-server-close")) is None
    a = measure(sim("v-listen-overflow"))
    b = measure(sim("v-listen-overflow", seed=2))
    b.counters["server"]["TcpExtListenOverflows"] = int(a.counters["server"]["TcpExtListenOverflows"] * 1.15)
    b.connect_ms = {"p50": a.connect_ms["p50"], "p90": 3000.0, "p99": 3000.0}
    exact = {r.metric: r for r in compare(a, b)}
    queue = {r.metric: r for r in compare(a, b, queue_reason="accept() timing")}
    assert exact["server: TcpExtListenOverflows"].agree is False
    assert queue["server: TcpExtListenOverflows"].agree
    assert queue["connect ms p90"].agree is None  # on one SYN-retransmission cluster or the next
    assert any(m.startswith("connected at SYN try") for m in queue)
    b.counters["server"]["TcpExtListenOverflows"] = a.counters["server"]["TcpExtListenOverflows"] * 2
    queue = {r.metric: r for r in compare(a, b, queue_reason="accept() timing")}
    assert queue["server: TcpExtListenOverflows"].agree is False  # the old model's error


def test_a_retried_connect_may_move_by_one_jiffy() -> None:
    a = measure(sim("v-nat-syn-on-tw"))
    b = measure(sim("v-nat-syn-on-tw"))
    assert a.retried_connect_ms is not None
    b.retried_connect_ms = a.retried_connect_ms + 5.0
    rows = {r.metric: r for r in compare(a, b)}
    assert rows["connect ms p50 of those"].agree is False
    rows = {r.metric: r for r in compare(a, b, jiffy_ms=4.0)}
    assert rows["connect ms p50 of those"].agree
    b.retried_connect_ms = a.retried_connect_ms + 1000.0  # the 1 s RTO instead of 2 jiffies
    assert {r.metric: r for r in compare(a, b, jiffy_ms=4.0)}["connect ms p50 of those"].agree is False


def test_time_wait_series_is_compared_at_the_same_moment() -> None:
    sim_s = [300, 600, 900, 1000, 1000]
    # the lab starts 0.5 s later: its samples sit between the model's
    assert series_agree(sim_s, 1.0, [150, 450, 750, 950, 1000, 1000], 1.0, 0.5)[0]
    ok, worst, at = series_agree(sim_s, 1.0, [150, 450, 750, 700, 1000], 1.0, 0.5)
    assert not ok and worst > 100 and at == 4.0
    # a miss by less than one socket past the slack (2 % of 130 = 2.6) is shown as such,
    # not as "off by 0"
    assert series_agree([127, 127], 1.0, [130, 130], 1.0, 0.0)[:2] == (False, 0.4)
    # the rounding to 0.1 never turns a miss into "off by 0" (the slack is 3 * sqrt(100) = 30)
    assert series_agree([70, 70], 1.0, [100.02, 100.02], 1.0, 0.0, by_chance=True)[:2] == (False, 0.1)  # type: ignore[list-item]
    # after the model's last sample its connections went on closing up to the end state
    # (1,200): a lab sample there is bracketed by the last sample and that end
    later = [150, 450, 750, 950, 1000, 1100, 1180]
    assert not series_agree(sim_s, 1.0, later, 1.0, 0.5)[0]
    assert series_agree(sim_s, 1.0, later, 1.0, 0.5, sim_end=1200)[0]
    assert not series_agree(sim_s, 1.0, [*later, 1400], 1.0, 0.5, sim_end=1200)[0]
    # within the simulated series the end state changes nothing
    assert not series_agree(sim_s, 1.0, [150, 450, 750, 700, 1000], 1.0, 0.5, sim_end=700)[0]


def test_markdown_names_the_kernel_and_the_command() -> None:
    rep = Report(kernel="6.18.44", hz=Hz(250, "/proc/config.gz"), suite="full")
    a = measure(sim("v-exhaust-even"))
    rep.outcomes = [Outcome(name="v-exhaust-even", summary="s", rows=compare(a, a)),
                    Outcome(name="v-bad", summary="t", error="lab failed")]
    md = render.markdown(rep, "tcpreuse validate --suite full --markdown docs/validation.md")
    assert "Linux 6.18.44" in md and "CONFIG_HZ=250" in md
    assert "tcpreuse validate --suite full --markdown docs/validation.md" in md
    assert "1 of 2 scenarios agree" in md and "| exact |" in md and "Tolerances and why" in md
    assert "/work/" not in md and "/root/" not in md
    assert not rep.agree
    assert json.loads(json.dumps(rep.to_json()))["scenarios"][1]["error"] == "lab failed"


def test_cli_needs_one_scenario_or_a_suite(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["validate"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "give one SCENARIO" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["validate", "--suite", "nightly"])
    assert e.value.code == 2 and "no validation suite" in capsys.readouterr().err
    main(["validate", "--list"])
    out = capsys.readouterr().out
    assert "v-exhaust-even" in out and "quick" in out


def test_odd_sized_ranges_get_the_scan_wrap_tolerance() -> None:
    from tcpreuse.validate.run import scan_wrap

    assert scan_wrap(suite.load("v-range-odd-size")) is not None
    assert scan_wrap(suite.load("v-exhaust-even")) is None
