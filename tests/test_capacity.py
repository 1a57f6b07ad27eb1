"""`tcpreuse capacity`: the search finds the rate the port arithmetic predicts, and each
diagnosed fix gets its own search. A Linux client with 500 ports closes first (60 s
TIME_WAIT) at a constant rate: in steady state it sustains 500 / 60 s = 8.3/s, whatever
the scenario's own 10 s duration (where 50/s would pass before any TIME_WAIT expires)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import Cli
from helpers.scenarios import client_first

from tcpreuse.sweep import SweepError
from tcpreuse.sweep.cache import Cache
from tcpreuse.sweep.capacity import Search, find_capacity, round_sig
from tcpreuse.sweep.runner import Pool

SCENARIO = client_first("cap-ports")


@pytest.fixture
def scenario(tmp_path: Path) -> str:
    p = tmp_path / "cap.toml"
    p.write_text(SCENARIO)
    return str(p)


def test_search_steps() -> None:
    assert round_sig(1234.5) == 1230 and round_sig(0.012345) == 0.0123 and round_sig(56.78) == 56.8
    s = Search("x")
    assert s.next_rate(100, 1600, 0.1, 0.05) == 100
    from tcpreuse.sweep.capacity import Probe

    s.probes.append(Probe(100, passed=True))
    assert s.next_rate(100, 1600, 0.1, 0.05) == 200  # doubles while it passes
    s.probes.append(Probe(200, passed=False))
    assert s.next_rate(100, 1600, 0.1, 0.05) == 141  # then bisects geometrically
    s.probes += [Probe(141, passed=True), Probe(168, passed=False), Probe(154, passed=True), Probe(161, passed=False)]
    assert s.next_rate(100, 1600, 0.1, 0.05) is None and s.status == "found" and s.capacity == 154
    down = Search("y")
    down.probes.append(Probe(100, passed=False))
    assert down.next_rate(100, 1600, 0.1, 0.05) == 50  # halves while it fails


@pytest.mark.slow
def test_capacity_matches_the_port_arithmetic_and_searches_each_fix(scenario: str, tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    res = find_capacity(scenario, max_failure=0.001, resolution=0.05, cache=cache, cap=160,
                        make_pool=lambda: Pool(None, workers=2))
    base = res.baseline
    assert base.status == "found"
    assert 7.9 <= base.capacity <= 8.34 < base.hi  # 500 ports / 60 s, not 500 / 10 s
    assert res.steady is not None and (res.steady.hold_s, res.steady.window_s) == (60.0, 60.0)
    assert res.steady.holds[0] == ("TIME_WAIT on client", 60.0)
    assert all(p.duration_s >= 120 for p in base.probes)
    assert res.diagnosed_at == base.hi or res.diagnosed_at is not None
    fixes = {s.fix_id: s for s in res.searches[1:]}
    assert fixes, "the diagnosis proposed no fix with settings"
    for s in fixes.values():
        assert s.status in ("found", "capped", "error"), (s.label, s.status, s.error)
    # a wider port range and connection reuse both lift the limit by far more than 5 %
    wide = [s for s in fixes.values() if "ip_local_port_range" in json.dumps(s.set)]
    assert wide and wide[0].capacity is not None and wide[0].capacity >= 10 * base.capacity
    reuse = [s for s in fixes.values() if s.set.get("client:net.ipv4.tcp_tw_reuse") == 1]
    assert reuse and reuse[0].capacity is not None and reuse[0].capacity > 2 * base.capacity
    # the second time everything comes from the cache: no cluster at all
    def no_pool() -> Pool:
        raise AssertionError("a pool was started though every probe is cached")
    again = find_capacity(scenario, max_failure=0.001, resolution=0.05, cache=cache, cap=160, make_pool=no_pool)
    assert again.computed == 0 and [s.capacity for s in again.searches] == [s.capacity for s in res.searches]


@pytest.mark.slow
def test_capacity_cli_markdown_and_errors(cli: Cli, scenario: str, tmp_path: Path) -> None:
    md, html = tmp_path / "capacity.md", tmp_path / "capacity.html"
    code, out, err = cli(["capacity", scenario, "--max-failure", "0.1%", "--no-fixes", "--workers", "1",
                          "--cache", str(tmp_path / "c"), "--markdown", str(md), "--html", str(html)])
    assert code == 0, err
    text = md.read_text()
    assert "| **as it is** |" in text and "/s |" in text and "--max-failure 0.1%" in text
    assert "--cache" not in text and "--workers" not in text  # how it was run is not what it says
    assert 'data-plot="capacity"' in html.read_text()
    code, out, err = cli(["capacity", scenario, "--no-fixes", "--cache", str(tmp_path / "c"), "--json"])
    doc = json.loads(out)
    assert doc["kind"] == "capacity" and doc["computed"] == 0 and 7.9 <= doc["searches"][0]["capacity"] <= 8.34
    assert "warms up for 60 s, the longest-lived state (TIME_WAIT on client 60 s)" in doc["steady_state"]["text"]
    assert "Steady state: each probe warms up for 60 s" in text
    for argv, msg in ((["--max-failure", "lots"], "expected a share"),
                      (["--max-failure", "150%"], "between 0 % and 100 %"),
                      (["--max-rate", "10"], "below the scenario's rate"),
                      (["--set", "bogus=1"], "unknown key"),
                      (["--no-cache", "--scheduler", "tcp://127.0.0.1:9"], "cannot reach the Dask scheduler")):
        code, _, err = cli(["capacity", scenario, *argv])
        assert code == 2 and msg in err and "Traceback" not in err, (argv, err)
    with pytest.raises(SweepError):
        find_capacity(scenario, max_failure=0.001, seeds=0, cache=Cache(None), make_pool=Pool)


def test_capacity_refuses_a_search_that_will_not_fit(cli: Cli, scenario: str) -> None:
    code, _, err = cli(["capacity", scenario, "--no-cache", "--max-rate", "1e8"])
    assert code == 2 and "the capacity search (probes up to 100,000,000/s for 120 s each) will not fit" in err
    assert "--force" in err and "Traceback" not in err


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
def test_a_probe_stops_once_certain_to_fail_with_the_whole_runs_verdict(tmp_path: Path, arrival: str) -> None:
    """20/s against 500 ports / 60 s = 8.3/s fails over half of its judged window (the
    ports come back in waves, so failures resume at t = 85 s): the stopped probe ends
    well before the window does, and says what the whole run says (fails, over the same
    window's attempts, first failure at the same time); 5/s passes and runs whole, equal
    to the plain run."""
    from tcpreuse.scenario.loader import load_scenario
    from tcpreuse.sim.engine import simulate
    from tcpreuse.sweep.early import run_until_verdict, window_arrivals
    from tcpreuse.sweep.point import summarize

    p = tmp_path / "cap.toml"
    p.write_text(client_first("cap-early", arrival=arrival))
    for rate, fails in ((20, True), (5, False)):
        sc = load_scenario(str(p), {"workload.w.rate": rate, "duration_s": 120})
        whole = summarize(simulate(sc, records=False), sc)
        n = sum(whole["attempts_per_s"][60:])
        f = sum(whole["failed_per_s"][60:])
        assert window_arrivals(sc, 60) == n  # the count the verdict divides by, known before the run
        assert (f / n > 0.001) is fails
        got = run_until_verdict(sc, 60, 0.001, None)
        if not fails:
            assert "stopped_s" not in got and got["failed_per_s"] == whole["failed_per_s"]
            continue
        assert 60 <= got["stopped_s"] < 100, got["stopped_s"]
        seen = sum(got["failed_per_s"][60:])
        assert 0.001 * n < seen <= f and got["window_attempts"] == n
        assert got["first_failure_s"] == whole["first_failure_s"]


@pytest.mark.slow
def test_early_verdicts_leave_the_capacity_table_as_it_was(scenario: str, tmp_path: Path) -> None:
    """The same search with every probe run to its end: the same probes, verdicts,
    capacities, and the same lowest failing probe (rate, failed share, onset) per
    configuration; some probes stopped early, and only failing ones."""
    from tcpreuse.report.sweep import capacity_markdown, first_fail_text

    kw = dict(max_failure=0.001, resolution=0.05, cap=160, make_pool=lambda: Pool(None, workers=2), workers=2)
    fast = find_capacity(scenario, cache=Cache(tmp_path / "a"), **kw)  # type: ignore[arg-type]
    slow = find_capacity(scenario, cache=Cache(tmp_path / "b"), early_stop=False, **kw)  # type: ignore[arg-type]
    assert [s.label for s in fast.searches] == [s.label for s in slow.searches]
    for a, b in zip(fast.searches, slow.searches, strict=True):
        assert (a.status, a.capacity) == (b.status, b.capacity), a.label
        assert sorted((p.rate, p.passed) for p in a.probes) == sorted((p.rate, p.passed) for p in b.probes)
        assert first_fail_text(a.to_json()) == first_fail_text(b.to_json())
    stopped = [p for s in fast.searches for p in s.probes if p.stopped_s is not None]
    assert stopped and all(not p.passed for p in stopped)
    md = capacity_markdown(fast.to_json(), "tcpreuse capacity cap.toml")
    assert f"{stopped[0].rate:,.0f} ✗ ≥ " in md and "stopped once it was certain to fail" in md
    assert all(p.stopped_s is None for s in slow.searches for p in s.probes)


# The seed with 1,000 Windows ports per client: it fails near 100/s instead of 1,600/s, so
# its capacity search, and the fixes its diagnosis proposes, are small.
SMALL_SEED = {"winclient:netsh.ipv4.dynamicport.tcp.num": 1000, "workload.loadtest.rate": 200}
RECYCLE_OFF = {"server:net.ipv4.tcp_tw_recycle": 0}
IGNORE_MSL = {"lb.ignore_msl": True}


def _run(overrides: dict[str, object]) -> dict[str, object]:
    from tcpreuse.scenario.loader import load_scenario
    from tcpreuse.sweep.point import run_point

    sc = load_scenario("seed", {**SMALL_SEED, "duration_s": 60, **overrides})
    out = run_point(sc.model_dump(mode="json"))
    out.pop("wall_s")
    return out


def test_a_fix_its_runs_never_consulted_is_the_same_run() -> None:
    """tcp_tw_recycle off, with Windows clients that send no timestamps, and the A10's
    ignore-MSL, with no tuple back within its 2 s hold: the run's evidence proves neither
    setting was consulted, and the fix's run is indeed the same run (every count, every
    second). When a run does consult them (timestamps on; a 30 s hold the port cycle comes
    back within), the evidence says so and nothing is shared."""
    from tcpreuse.sweep.inert import why_same

    base = _run({})
    assert base["failed"] > 0 and base["evidence"]["recycle_stamped"]["server"] == 0
    for fix in (RECYCLE_OFF, IGNORE_MSL):
        assert why_same(fix, base) is not None
        assert _run(fix) == base, fix

    held = _run({"lb.session_hold_s": 30.0})
    assert held["evidence"]["lb_held_met"] > 0 and why_same(IGNORE_MSL, held) is None
    assert _run({"lb.session_hold_s": 30.0, **IGNORE_MSL})["failed_per_s"] != held["failed_per_s"]
    stamped = _run({"winclient:netsh.tcp.timestamps": "enabled"})
    assert stamped["evidence"]["recycle_stamped"]["server"] > 0 and why_same(RECYCLE_OFF, stamped) is None
    assert why_same({"server:net.ipv4.tcp_tw_reuse": 0}, base) is None  # any other setting: simulated


def test_what_a_run_consulted_is_judged_by_the_model() -> None:
    """The engine hands over the figures (Engine.consulted(), typed), the model says what
    they prove (model/recycle.py, model/lb.py), and the run's summary keeps them as they
    are: a run whose LB translates sources is never shared with ignore-MSL (a held session
    keeps its SNAT port), even when no SYN met a held session."""
    from tcpreuse.model.lb import ignore_msl_consulted
    from tcpreuse.model.recycle import PeerCache, recycle_consulted, stamps_remembered
    from tcpreuse.scenario.loader import load_scenario
    from tcpreuse.sim.engine import Engine
    from tcpreuse.sweep.inert import evidence, why_same

    assert stamps_remembered(None) == 0 and not recycle_consulted(0) and recycle_consulted(1)
    cache = PeerCache("addr_pair")
    cache.remember_stamp(1, 2, 100, 5, 5)
    assert stamps_remembered(cache) == 1
    assert not ignore_msl_consulted(0, False) and ignore_msl_consulted(1, False) and ignore_msl_consulted(0, True)

    eng = Engine(load_scenario("seed", {**SMALL_SEED, "duration_s": 10, "lb.snat": True}), None, False)
    eng.run()
    got = eng.consulted()
    assert got["lb_snat"] is True and got["lb_held_met"] == 0 and got["recycle_stamped"]["server"] == 0
    assert evidence(eng) == got and why_same(IGNORE_MSL, {"evidence": got}) is None
    assert why_same(RECYCLE_OFF, {"evidence": got}) is not None


@pytest.mark.slow
def test_shared_fix_runs_leave_the_capacity_table_as_it_was(tmp_path: Path) -> None:
    """The same search with every fix simulated on its own: the same probes, verdicts,
    capacities and lowest failing probes; the two fixes the seed's runs never consult take
    the baseline's runs (fewer simulations), and the steady-state text says so, also when
    the search is served from the cache."""
    from tcpreuse.report.sweep import first_fail_text

    kw = dict(max_failure=0.001, resolution=0.05, cap=400, overrides=SMALL_SEED,
              make_pool=lambda: Pool(None, workers=2), workers=2)
    fast = find_capacity("seed", cache=Cache(tmp_path / "a"), **kw)  # type: ignore[arg-type]
    slow = find_capacity("seed", cache=Cache(tmp_path / "b"), share=False, **kw)  # type: ignore[arg-type]
    assert [s.label for s in fast.searches] == [s.label for s in slow.searches]
    for a, b in zip(fast.searches, slow.searches, strict=True):
        assert (a.status, a.capacity) == (b.status, b.capacity), a.label
        assert sorted((p.rate, p.passed) for p in a.probes) == sorted((p.rate, p.passed) for p in b.probes)
        assert first_fail_text(a.to_json()) == first_fail_text(b.to_json())
    shared = {s.fix_id: s.shared for s in fast.searches if s.shared}
    assert len(shared) == 2 and slow.shared == 0
    assert fast.computed + fast.shared == slow.computed
    assert "2 fix(es) took the runs of the configuration as it is" in fast.steady_text()
    again = find_capacity("seed", cache=Cache(tmp_path / "a"), **kw)  # type: ignore[arg-type]
    assert again.computed == 0 and again.shared == fast.shared  # a cached shared run still says so
    assert again.steady_text() == fast.steady_text()
