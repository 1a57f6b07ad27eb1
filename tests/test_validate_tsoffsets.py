"""validate starts the model's TCP timestamp offsets from the kernel's where they are per
host pair (6.1): the lab's loads read them (getsockopt TCP_TIMESTAMP), validate hands
them to the model (model parameter ts_offsets), and they decide which of two NAT'd
clients PAWS rejects at the other's TIME_WAITs (v-nat-syn-on-tw)."""

from __future__ import annotations

import socket
import time
from array import array
from collections import Counter

import pytest

from tcpreuse.errors import ScenarioError
from tcpreuse.load.runner import _ts_offsets
from tcpreuse.load.sockopt import ts_offset
from tcpreuse.load.worker import WorkerResult
from tcpreuse.model.profiles import get_profile
from tcpreuse.model.settings import resolve_params
from tcpreuse.result import RunResult
from tcpreuse.sim.engine import Engine
from tcpreuse.validate import suite
from tcpreuse.validate.run import native_overrides, ts_offset_overrides

NAME = "v-nat-syn-on-tw"
OLD, NEW = 1_000, 2_000_000_000  # as s32 differences: NEW's TSvals are the newer


def lab_with(offsets: dict[str, int | None], emulated: bool = False) -> RunResult:
    """A lab result as far as validate reads it for offsets: meta["loads"]."""
    r = RunResult(source="lab", scenario=NAME, duration_s=7.0)
    r.meta["loads"] = [{"host": h, "workload": "w", "target": "10.100.0.1:8080", "emulated": emulated,
                        "ts_offsets": {f"10.1.0.{i + 1}": off} if off is not None else {}}
                       for i, (h, off) in enumerate(offsets.items())]
    return r


def model_run(lab: RunResult, kernel_profile: str = "linux-6.1.176") -> tuple[Counter[tuple[str, str]], list[str]]:
    native, _ = native_overrides(suite.load(NAME), 100)
    native = {k: (kernel_profile if k.endswith(".profile") else v) for k, v in native.items()}
    sc = suite.load(NAME, native)
    ov, notes = ts_offset_overrides(sc, lab, kernel_profile)
    # one kernel, one ms clock: validate gives every host the kernel's uptime (clock_overrides())
    up = {f"host.{g}.model.uptime_s": 500.0 for g in ("client", "server")}
    res = Engine(suite.load(NAME, {**native, **up, **ov})).run()
    return Counter(zip(res.attempts.column("client"), res.attempts.column("cause"), strict=True)), notes


def rejected(c: Counter[tuple[str, str]]) -> set[str]:
    return {h for (h, cause), n in c.items() if cause == "syn_paws_timewait" and n}


def test_the_measured_offsets_decide_which_client_paws_rejects() -> None:
    a, notes = model_run(lab_with({"client-1": OLD, "client-2": NEW}))
    assert rejected(a) == {"client-1"}
    assert "client-1's TSvals are the older" in notes[0] and "2,000,000,000" in notes[0]
    b, notes = model_run(lab_with({"client-1": NEW, "client-2": OLD}))
    assert rejected(b) == {"client-2"}
    assert "client-2's TSvals are the older" in notes[0]


def test_per_4tuple_kernels_and_unmeasured_clients_keep_the_draw() -> None:
    lab = lab_with({"client-1": OLD, "client-2": NEW})
    sc = suite.load(NAME)
    assert ts_offset_overrides(sc, lab, "linux-6.18") == ({}, [])  # one connection's offset is not the host's
    assert ts_offset_overrides(sc, lab_with({"client-1": None, "client-2": None}), "linux-6.1") == ({}, [])
    assert ts_offset_overrides(sc, lab_with({"client-1": OLD}, emulated=True), "linux-6.1") == ({}, [])
    ov, _ = ts_offset_overrides(sc, lab_with({"client-1": OLD, "client-2": NEW}), "linux-6.1")
    assert ov == {"host.client.model.ts_offsets": {"client-1": OLD, "client-2": NEW}}
    # two source addresses of one instance: two host pairs, one parameter: not given
    lab.meta["loads"][0]["ts_offsets"] = {"10.1.0.1": OLD, "10.1.0.9": NEW}
    ov, _ = ts_offset_overrides(sc, lab, "linux-6.1")
    assert ov == {"host.client.model.ts_offsets": {"client-2": NEW}}


def test_ts_offsets_parameter_is_a_table_of_u32() -> None:
    p = get_profile("linux-6.1")
    assert resolve_params(p, {"ts_offsets": {"client-1": 5}})["ts_offsets"] == {"client-1": 5}
    assert resolve_params(p, {"ts_offsets.client-2": 6})["ts_offsets"] == {"client-2": 6}  # --set form
    assert resolve_params(p, {})["ts_offsets"] is None
    for bad in ({"client-1": -1}, {"client-1": 1 << 32}, {"client-1": "x"}, 5):
        with pytest.raises(ValueError):
            resolve_params(p, {"ts_offsets": bad})
    with pytest.raises(ScenarioError, match="ts_offsets"):
        suite.load(NAME, {"host.client.model.ts_offsets": {"client-1": -5}})


def test_the_earliest_workers_offset_per_source_address() -> None:
    def part(t0: float, offs: dict[str, int | None]) -> WorkerResult:
        return WorkerResult(index=0, t=array("d", [t0]), connect_ms=array("d"), syn_tries=array("h"),
                            outcome=array("h"), reason=array("h"), src=array("i"), sport=array("i"),
                            outcomes=[], reasons=[], addrs=[], connect_hist="", request_hist="",
                            lag_hist="", requests=0, http_status={}, lag_max_ms=0.0, late_starts=0,
                            not_started=0, end=0.0, interrupted=False, ts_offsets=offs)
    parts = [part(0.5, {"10.0.0.1": 2, "10.0.0.2": None}), part(0.1, {"10.0.0.1": 1})]
    assert _ts_offsets(parts) == {"10.0.0.1": 1}


def test_ts_offset_of_a_real_socket_is_its_tsval_minus_the_ms_clock() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    c = socket.socket()
    try:
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        a = ts_offset(c)
        time.sleep(0.05)  # the TS clock moves on; the offset does not
        b = ts_offset(c)
        assert a is not None and b is not None and 0 <= a < 1 << 32
        assert min((a - b) % (1 << 32), (b - a) % (1 << 32)) <= 2  # within the ms rounding
    finally:
        c.close()
        srv.close()


def test_chained_retries_compare_the_parity_split_as_a_rate() -> None:
    from tcpreuse.validate.compare import CHAIN_PARITY, compare
    from tcpreuse.validate.metrics import measure

    native, _ = native_overrides(suite.load(NAME), 100)
    a = measure(Engine(suite.load(NAME, native)).run())
    b = measure(Engine(suite.load(NAME, native)).run())
    b.ports_even, b.ports_odd = a.ports_even - 6, a.ports_odd + 6  # six connects found no even port
    why = suite.chance_reason(NAME, "hostpair")
    assert why is not None and NAME in suite.CHANCE_RETRIES
    plain = {r.metric: r for r in compare(a, b, chance_reason=why)}
    assert plain["attempts on odd ports"].agree is False and plain["attempts on odd ports"].tolerance == "exact"
    rows = {r.metric: r for r in compare(a, b, chance_reason=why, chance_retries=True)}
    assert rows["attempts on odd ports"].agree and rows["attempts on odd ports"].reason == CHAIN_PARITY
    assert rows["attempts"].tolerance == "exact" and rows["connect ms p99"].agree is None
    b.ports_odd = a.ports_odd + 40  # beyond 3√n + 2
    assert {r.metric: r for r in compare(a, b, chance_reason=why, chance_retries=True)}[
        "attempts on odd ports"].agree is False


@pytest.mark.parametrize(("offsets", "older"), [((OLD, NEW), "client-1"), ((NEW, OLD), "client-2")])
def test_compare_one_hands_the_labs_offsets_to_the_model(offsets: tuple[int, int], older: str) -> None:
    """The whole path in validate: a lab result (here a simulated one, as the lab would
    record it: t0_monotonic and each load's ts_offsets) -> compare_one() -> the model's run."""
    from tcpreuse.kernels.jobs import JobOutcome, KernelFacts
    from tcpreuse.validate.run import compare_one

    facts = KernelFacts(release="6.1.176", hz=100, hz_source="/proc/config.gz")
    native, _ = native_overrides(suite.load(NAME), 100)
    native = {k: (facts.profile if k.endswith(".profile") else v) for k, v in native.items()}
    lab = Engine(suite.load(NAME, native)).run()
    lab.meta["t0_monotonic"] = 500.0
    lab.meta["loads"] = lab_with(dict(zip(("client-1", "client-2"), offsets, strict=True))).meta["loads"]
    out = compare_one(NAME, None, JobOutcome(result=lab, overrides=native), facts, keep_results=True)
    assert out.sim is not None
    sim = Counter(zip(out.sim.attempts.column("client"), out.sim.attempts.column("cause"), strict=True))
    assert rejected(sim) == {older}
    assert any(f"{older}'s TSvals are the older" in n for n in out.notes)
    assert out.cross is not None and out.cross.profile == "linux-6.18"  # per 4-tuple there: drawn
