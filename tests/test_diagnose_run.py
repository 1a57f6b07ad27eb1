"""Run-based diagnosis rules on the incident scenarios, and the what-if proof of fixes."""

from __future__ import annotations

import pytest

from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.diagnose.whatif import prove_fixes, summarize
from tcpreuse.scenario.loader import load_scenario
from tcpreuse.sim.engine import Engine


def findings(name: str, **over: object) -> list:  # type: ignore[type-arg]
    sc = load_scenario(name, dict(over))
    return diagnose(Evidence(source="simulate", run=Engine(sc).run(), scenario=sc))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "over", "expect"), [
    ("client-exhaustion", {}, "client-port-exhaustion"),
    ("windows-httpclient", {}, "client-port-exhaustion"),
    ("seed-nat-timestamps", {"duration_s": 10}, "tw-recycle-paws-drop"),
    ("cgnat-recycle", {"duration_s": 10}, "tw-recycle-paws-drop"),
    ("listen-overflow", {"duration_s": 6}, "listen-overflow"),
    ("tw-bucket-overflow", {}, "tw-bucket-overflow"),
    ("azure-snat", {}, "nat-port-exhaustion"),
    ("gcp-cloud-nat", {}, "nat-port-exhaustion"),
    ("ipvs-conn-reuse", {"duration_s": 8}, "lb-held-session-drop"),
    ("f5-syncookie-bug", {"duration_s": 40}, "syn-hit-server-timewait"),
])
def test_each_incident_gets_its_finding(name: str, over: dict[str, object], expect: str) -> None:
    fs = findings(name, **over)
    assert expect in [f.id for f in fs], [f.id for f in fs]
    f = next(f for f in fs if f.id == expect)
    assert f.cause and f.evidence and f.fixes


@pytest.mark.slow
def test_healthy_runs_have_no_findings() -> None:
    assert findings("seed-client-timestamps", duration_s=40) == []
    assert findings("seed-linux-direct", duration_s=1) == []


def test_windows_exhaustion_names_the_winsock_error_and_windows_fixes() -> None:
    f = findings("windows-httpclient")[0]
    assert "WSAEADDRINUSE" in f.title
    cmds = " ".join(c for fx in f.fixes for c in fx.commands)
    assert "netsh int ipv4 set dynamicport tcp" in cmds and "TcpTimedWaitDelay" in cmds


@pytest.mark.slow
def test_seed_fixes_rank_client_timestamps_first_and_the_writeups_advice_last() -> None:
    sc = load_scenario("seed", {"duration_s": 60})
    run = Engine(sc).run()
    fs = diagnose(Evidence(source="simulate", run=run, scenario=sc))
    assert fs[0].id == "syn-hit-server-timewait"
    assert "rcv_nxt" in fs[0].cause and "timestamps" in fs[0].cause
    ranked = prove_fixes("seed", {"duration_s": 60}, summarize(run), fs, workers=2)
    by_id = {f.id: f for f in ranked}
    ts = by_id["winclient-timestamps"].effect
    assert ts is not None and ts.failure_rate_after == 0 and ts.delayed_rate_after == 0
    for useless in ("server-no-recycle", "lb-ignore-msl"):
        e = by_id[useless].effect
        assert e is not None
        assert e.failure_rate_after == e.failure_rate_before and e.delayed_rate_after == e.delayed_rate_before
    assert ranked.index(by_id["winclient-timestamps"]) < ranked.index(by_id["server-no-recycle"])
