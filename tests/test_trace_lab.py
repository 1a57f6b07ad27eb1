"""`tcpreuse lab --trace`: the kernel's verdict for each attempt of a real lab run."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
from helpers.scenarios import native_lab

from tcpreuse.lab.run import LabOptions, run_lab
from tcpreuse.scenario.loader import load_text
from tcpreuse.trace.kernel import problems

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
    pytest.mark.skipif(importlib.util.find_spec("tcpreuse.commands.load") is None, reason="needs the load verb"),
]

SCENARIO = native_lab("trace-lab", duration_s=5, rate=300, count=400, close="client",
                      settings={"net.ipv4.ip_local_port_range": "40000 40299", "net.ipv4.tcp_tw_reuse": 0})


def test_each_eaddrnotavail_attempt_gets_the_kernels_connect_error() -> None:
    found = problems()
    if found:
        pytest.skip(f"cannot trace here: {found[0]}")
    res = run_lab(load_text(SCENARIO, "<trace-lab>"), LabOptions(trace=True))
    kt = res.meta.get("kernel_trace")
    assert kt is not None, res.notes
    assert res.outcomes() == {"ok": 300, "EADDRNOTAVAIL": 100}
    reasons = [kt["reasons"][c] if c >= 0 else "" for c in kt["per_attempt"]]
    failed = [i for i, o in enumerate(res.attempts.column("outcome")) if o == "EADDRNOTAVAIL"]
    assert {reasons[i] for i in failed} == {"local_ports_exhausted"}
    assert sum(r == "local_ports_exhausted" for r in reasons) == 100
    ag = kt["agreement"]
    assert (ag["checked"], ag["agree"]) == (400, 400)
    assert kt["summary"]["verdicts"]["connect-error"] == 100
    assert kt["summary"]["lost_events"] == 0
