"""Version-discriminating scenarios and their cross-checks (no root: the model stands in
for the lab), and the kernel's jiffies phase the model now counts its port re-salt from."""

from __future__ import annotations

from typing import Any

import pytest

from tcpreuse.kernels.jobs import JobOutcome, KernelFacts
from tcpreuse.lab.clockphase import jiffies_lag, parse_timer_list
from tcpreuse.model.clocks import port_shuffle_epoch
from tcpreuse.model.timers import jiffies0
from tcpreuse.result import RunResult
from tcpreuse.sim.engine import Engine
from tcpreuse.validate import render, suite
from tcpreuse.validate.kernel import Hz
from tcpreuse.validate.metrics import measure
from tcpreuse.validate.run import Report, compare_one, native_overrides


def facts(release: str, hz: int) -> KernelFacts:
    return KernelFacts(release=release, hz=hz, hz_source="test")


def as_kernel(name: str, profile: str, hz: int, **more: Any) -> tuple[dict[str, Any], RunResult]:
    """What a lab job on a kernel with `profile` would hand validate (its overrides, its
    result), with the model of that version standing in for the kernel."""
    ov, _ = native_overrides(suite.load(name), hz, profile)
    return ov, Engine(suite.load(name, {**ov, **more})).run()


def test_every_discriminating_scenario_exists_and_its_versions_differ_in_the_model() -> None:
    assert set(suite.DISCRIMINATING) <= set(suite.names())
    assert suite.cross_profile((6, 1, 176)) == "linux-6.18"
    assert suite.cross_profile((6, 18, 44)) == "linux-6.1"
    for name in suite.DISCRIMINATING:
        m = {p: measure(as_kernel(name, p, 100)[1]) for p in suite.CROSS_PROFILES}
        a, b = m["linux-6.1"], m["linux-6.18"]
        assert (a.outcomes, a.gave_up_by_tries, a.delayed, a.first_failures, a.counters) != \
               (b.outcomes, b.gave_up_by_tries, b.delayed, b.first_failures, b.counters), name


@pytest.mark.parametrize(("release", "own", "other"), [("6.1.176", "linux-6.1.176", "linux-6.18"),
                                                        ("6.18.44", "linux-6.18.44", "linux-6.1")])
@pytest.mark.parametrize("name", ["v-syn-give-up", "v-ts-offset-nat"])
def test_the_own_profile_agrees_and_the_cross_check_disagrees(name: str, release: str, own: str,
                                                             other: str) -> None:
    ov, lab = as_kernel(name, own, 100)
    o = compare_one(name, None, JobOutcome(result=lab, overrides=ov), facts(release, 100))
    assert o.agree, [r for r in o.rows if r.agree is False]
    assert o.cross is not None and o.cross.profile == other and o.cross.rule == suite.DISCRIMINATING[name]
    assert o.cross.discriminates, "the other version's rule must change what the kernel showed"
    # where the offsets are per 4-tuple, how many SYN tries a connect takes is coin tosses
    p90 = {r.metric: r.tolerance for r in o.rows}.get("connect ms p90")
    if name == "v-ts-offset-nat":
        assert (p90 == "not compared") == release.startswith("6.18")
    # an explicit --model-profile is itself the cross-check: no second one
    assert compare_one(name, None, JobOutcome(result=lab, overrides=ov), facts(release, 100),
                       model_profile=other).cross is None


def test_ts_offsets_per_host_pair_never_fail_paws_and_per_4tuple_do() -> None:
    old = measure(as_kernel("v-ts-offset-nat", "linux-6.1", 250)[1])
    new = measure(as_kernel("v-ts-offset-nat", "linux-6.18", 250)[1])
    assert old.delayed == 0 and old.counters["server"].get("TcpExtPAWSEstab", 0) == 0
    assert new.delayed > 20 and new.counters["server"]["TcpExtPAWSTimewait"] > 20
    # exact where the offsets are per host pair, a rate where the hashes toss coins
    assert suite.chance_reason("v-ts-offset-nat", "hostpair") is None
    assert suite.chance_reason("v-ts-offset-nat", "4tuple")


def test_a_cross_check_that_agrees_is_reported_as_not_discriminating() -> None:
    ov, lab = as_kernel("v-reuse1-seconds", "linux-6.1.176", 100)
    o = compare_one("v-reuse1-seconds", None, JobOutcome(result=lab, overrides=ov), facts("6.1.176", 100))
    assert o.cross is not None
    o.cross.disagree = []  # as if both versions had decided alike on this run
    rep = Report(kernel="6.1.176", hz=Hz(100, "test"), kernel_name="uml", outcomes=[o])
    md = render.markdown_kernels([rep], "tcpreuse validate --kernel uml v-reuse1-seconds")
    assert "## Version-discriminating scenarios and their cross-checks" in md
    assert "does not discriminate on this run" in md
    assert rep.to_json()["scenarios"][0]["cross_check"]["discriminates"] is False


def test_port_resalt_epochs_turn_on_jiffies_not_on_the_uptime() -> None:
    # INITIAL_JIFFIES = 2^32 - 300 HZ: at HZ 100 the 10 s epochs turn at uptime 7.04 s mod 10
    def epoch(up: float, hz: int, lag: float = 0.0) -> int:
        return port_shuffle_epoch(jiffies0(hz, up - lag), hz, 10.0)

    assert epoch(567.03, 100) != epoch(567.05, 100) == epoch(570.5, 100) == epoch(577.03, 100)
    assert epoch(577.03, 100) != epoch(577.05, 100)
    # at HZ 250 at 0.816 s mod 10, and later by the jiffies' lag behind CLOCK_MONOTONIC
    assert epoch(560.81, 250) != epoch(560.82, 250) == epoch(570.81, 250)
    assert epoch(561.11, 250, lag=0.3) == epoch(560.81, 250) != epoch(561.12, 250, lag=0.3)


def test_the_server_tw_buckets_run_on_uml_is_reproduced_with_the_kernels_jiffies() -> None:
    # docs/validation.md, v-tw-buckets-server on UML 6.1: 600 distinct ports, 100 TIME_WAITs,
    # 500 overflows in the lab; the model, re-salting on uptime // 10 (570 s, inside the paced
    # run), took 67 freed ports again (533, 123, 477). On jiffies there is no re-salt in it.
    ov, _ = native_overrides(suite.load("v-tw-buckets-server"), 100, "linux-6.1.176")
    ov |= {"duration_s": 10.12, "workload.w.rate": 148.2,
           "host.client.settings.net.ipv4.tcp_max_tw_buckets": 4096}
    ov |= {f"host.{g}.model.uptime_s": 568.008 for g in ("client", "server")}
    m = measure(Engine(suite.load("v-tw-buckets-server", ov)).run())
    assert (m.ports_distinct, m.counters["server"]["TcpExtTW"],
            m.counters["server"]["TcpExtTCPTimeWaitOverflow"]) == (600, 100, 500)
    # started 3 s earlier the run crosses the epoch at 567.04 s and the re-salt shows
    ov |= {f"host.{g}.model.uptime_s": 565.0 for g in ("client", "server")}
    assert measure(Engine(suite.load("v-tw-buckets-server", ov)).run()).ports_distinct < 600


def test_jiffies_lag_from_a_timer_list_read() -> None:
    text = "Timer List Version: v0.10\nnow at 11732894615003 nsecs\n\ncpu: 0\n jiffies: 1\njiffies: 4297825441\n"
    mono, j = parse_timer_list(text) or (0.0, 0)
    assert (mono, j) == (11732.894615003, 4297825441)
    lag = jiffies_lag(mono, j, 250, 0.0004)
    assert 0.31 < lag < 0.32  # the 6.18 host: jiffies ~0.3 s behind CLOCK_MONOTONIC
    # the model's jiffies at that instant are the kernel's
    assert int(jiffies0(250, mono - lag)) == j
    assert parse_timer_list("no clock here") is None


def test_a_discriminating_run_starts_where_in_the_second_the_versions_differ() -> None:
    from tcpreuse.kernels.pace import pace_overrides
    from tcpreuse.validate.phase import STEPS, discriminating_phase

    name = "v-reuse1-seconds"
    ov, _ = native_overrides(suite.load(name), 100, "linux-6.1.176")
    ov.update(pace_overrides(suite.load(name), 0.914))  # as UML paced it
    found = discriminating_phase(name, ov, "linux-6.1.176", "linux-6.18")
    assert found is not None
    phase, rows = found
    assert rows > 0 and 0 <= phase < 1 and round(phase * STEPS) == phase * STEPS
    # started there, the two versions' models disagree on the successes
    first = measure(Engine(suite.load(name, ov)).run()).first_t
    ok = {}
    for p in ("linux-6.1.176", "linux-6.18"):
        up = 1000.0 + (phase - first) % 1.0
        more = {**ov, "host.client.profile": p, "host.server.profile": p,
                "host.client.model.uptime_s": up, "host.server.model.uptime_s": up}
        ok[p] = measure(Engine(suite.load(name, more)).run()).outcomes["ok"]
    assert ok["linux-6.1.176"] != ok["linux-6.18"], ok
    # a rule the seconds clock does not decide: no phase is better than another
    give_up, _ = native_overrides(suite.load("v-syn-give-up"), 100, "linux-6.1.176")
    assert discriminating_phase("v-syn-give-up", give_up, "linux-6.1.176", "linux-6.18") is None
