"""The seed's mechanism on the real kernel: emulated Windows clients through the lab's load
balancer to servers on the running kernel (issue 15), against `simulate` of the same scenario.

seed-lab scaled once more for a test: 255 dynamic ports per client at 100 attempts/s (a
2.55 s port cycle against the servers' 60 s TIME_WAIT), 14 s.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.diagnose.base import Evidence, diagnose
from tcpreuse.lab.run import LOAD_LEAD_S, LabOptions, run_lab
from tcpreuse.scenario.loader import load_scenario, parse_sets
from tcpreuse.sim.engine import simulate

pytestmark = [
    pytest.mark.netns, pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None
                       or not os.path.exists("/dev/net/tun"),
                       reason="needs root, iproute2, nftables and /dev/net/tun"),
]

CYCLE_S = 255 / 100.0


def _scenario(timestamps: str):  # type: ignore[no-untyped-def]
    return load_scenario("seed-lab", overrides=parse_sets([
        f'host.winclient.settings={{"netsh.tcp.timestamps"="{timestamps}",'
        '"netsh.ipv4.dynamicport.tcp.num"=255}', "duration_s=14"]))


def _delayed_first(res) -> float:  # type: ignore[no-untyped-def]
    a = res.attempts
    mask = a.cols["cause"] == a.code("reason", "syn_hit_timewait")
    return float(a.cols["t"][mask].min()) if mask.any() else float("inf")


def test_seed_mechanism_on_the_real_kernel_and_its_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sc = _scenario("disabled")
    lab = run_lab(sc, LabOptions(capture=tmp_path))
    sim = simulate(sc)
    offset = LOAD_LEAD_S  # the lab's t = 0 is this long before the first attempt
    # the kernel's TIME_WAIT answered SYNs with the old ACK: delayed ~3 s (InitialRto) connects
    cause = lab.attempts.cols["cause"]
    hit = cause == lab.attempts.code("reason", "syn_hit_timewait")
    assert hit.sum() > 0.1 * len(lab.attempts)
    ok_retry = lab.attempts.cols["reason"] == lab.attempts.code("reason", "ok_after_syn_retry")
    ms = lab.attempts.cols["connect_ms"][ok_retry]
    assert 2900 < float(np.median(ms)) < 3300
    # ... only after the first port cycle
    assert _delayed_first(lab) - offset >= CYCLE_S - 0.1
    # and some retried SYNs met another TIME_WAIT: WSAETIMEDOUT at the 5 s application timeout
    out = lab.outcomes()
    assert out.get("WSAETIMEDOUT", 0) > 0
    # the simulator predicts the same within stated tolerances (random ISNs: statistical)
    assert abs(lab.delayed_rate() - sim.delayed_rate()) < 0.06
    assert abs(lab.failure_rate() - sim.failure_rate()) < 0.04

    # the server's capture shows the signature and `analyze` names the seed's mechanism
    an = analyze_paths([tmp_path / "server-1-eth0.pcap"])[0]
    found = {f.id: f for f in diagnose(Evidence(source="analyze", capture=an))}
    assert "capture-syn-hit-timewait" in found
    assert "seed incident's signature" in found["capture-syn-hit-timewait"].cause

    # client timestamps on: the TIME_WAIT accepts the newer TSval, the mechanism is gone
    # (a failure here would be the loaded machine's, not the kernel's: say which)
    fixed = run_lab(_scenario("enabled"), LabOptions())
    a = fixed.attempts
    assert not (a.cols["cause"] == a.code("reason", "syn_hit_timewait")).any()
    assert fixed.failure_rate() < 0.01, (fixed.reasons(), fixed.notes)
