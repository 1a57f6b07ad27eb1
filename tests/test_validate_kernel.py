"""The quick validation suite on the real kernel: the model must agree with it.

Needs root, iproute2 and nftables (skipped otherwise). Seven scenarios of a few seconds
each (ports and parity, an odd-sized range, tw_reuse with its delay, SYNs on TIME_WAIT,
SO_LINGER 0, tcp_max_tw_buckets, timestamp offsets per 4-tuple behind a NAT); every lab
run removes its namespaces.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tcpreuse.lab import state
from tcpreuse.lab.netns import list_namespaces
from tcpreuse.lab.plan import ns_prefix
from tcpreuse.validate import suite
from tcpreuse.validate.run import Options, validate_many

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not (shutil.which("ip") and shutil.which("nft") and shutil.which("sysctl")),
                       reason="needs ip, nft and sysctl"),
]


def test_quick_suite_agrees_with_the_running_kernel() -> None:
    rep = validate_many(suite.suite("quick"), opts=Options(keep_results=True), suite_name="quick")
    assert [o.name for o in rep.outcomes] == list(suite.QUICK)
    bad = {o.name: o.error or [(r.metric, r.sim, r.lab) for r in o.rows if r.agree is False]
           for o in rep.outcomes if not o.agree}
    assert not bad, bad
    assert rep.agree
    by = {o.name: {r.metric: r for r in o.rows} for o in rep.outcomes}
    # the rows that pin the kernel's decisions are there and exact
    assert by["v-exhaust-even"]["outcome ok"].lab == 1000
    assert by["v-exhaust-even"]["attempts on odd ports"].tolerance == "exact"
    assert by["v-reuse1-delay1000"]["client: TcpExtTWRecycled"].lab > 0
    assert by["v-client-rst"]["client: TcpEstabResets"].lab == 600
    assert by["v-tw-buckets"]["client: TcpExtTCPTimeWaitOverflow"].lab == 400
    # every lab run of this suite removed what it created (and only its own: other labs may
    # run on this host at the same time, their namespaces are none of this test's business)
    run_ids = [o.lab.meta["run_id"] for o in rep.outcomes if o.lab is not None]
    assert len(run_ids) == len(rep.outcomes)
    left = [n for n in list_namespaces() if n.startswith(tuple(ns_prefix(r) for r in run_ids))]
    assert not left, left
    assert not {st.run_id for st in state.runs()} & set(run_ids)
