"""v-nat-syn-on-tw-ts-off: with client timestamps off, a SYN at the other NAT'd client's
TIME_WAIT is judged by after(seq, tw_rcv_nxt), and both ISNs are secure_tcp_seq() (a keyed
hash of the pre-NAT 4-tuple plus one clock): one coin per shared port, fixed for the run.
validate compares the counts those coins decide with a band derived from the number of
ports (compare.port_coins()), not as independent tosses. No real kernel."""

from __future__ import annotations

from collections import defaultdict

from tcpreuse.result import RunResult
from tcpreuse.sim.engine import Engine
from tcpreuse.validate import suite
from tcpreuse.validate.compare import chance, compare, port_coins
from tcpreuse.validate.metrics import measure
from tcpreuse.validate.run import native_overrides, ts_offset_overrides

NAME = "v-nat-syn-on-tw-ts-off"


def model(seed: int = 1) -> RunResult:
    native, _ = native_overrides(suite.load(NAME), 100, "linux-6.1")
    return Engine(suite.load(NAME, {**native, "seed": seed})).run()


def rejected_by_port(res: RunResult) -> dict[int, set[str]]:
    a = res.attempts
    out: dict[int, set[str]] = defaultdict(set)
    for h, p, n in zip(a.column("client"), a.cols["sport"], a.cols["syn_tries"], strict=True):
        if n > 1:
            out[int(p)].add(h)
    return out


def test_one_client_is_rejected_per_port_for_the_whole_run_and_the_ports_differ() -> None:
    by_port = rejected_by_port(model())
    assert by_port and all(len(v) == 1 for v in by_port.values())  # a coin per port, not per SYN
    assert set().union(*by_port.values()) == {"client-1", "client-2"}  # ... and not one per run


def test_the_coin_count_matches_the_ports_connect_uses() -> None:
    sc = suite.load(NAME)
    lo, hi = next(g for g in sc.host if g.role == "client").effective_settings["net.ipv4.ip_local_port_range"]
    assert suite.CHANCE_PORTS[NAME] == len(range(lo, hi + 1, 2))  # the even ports, taken first
    assert set(rejected_by_port(model())) <= set(range(lo, hi + 1, 2))
    assert NAME in suite.CHANCE_RETRIES


def test_a_sum_of_port_coins_gets_a_band_from_the_number_of_ports() -> None:
    why = suite.chance_reason(NAME, "hostpair")
    assert why is not None
    tol = port_coins(why, 5)
    assert tol.ok(32, 63) and tol.ok(44, 43)  # two UML runs' retried connects (model, lab)
    assert not chance(why).ok(32, 63)  # as independent tosses they would disagree
    assert not tol.ok(0, 63) and not tol.ok(120, 20)
    assert "P = 5" in tol.reason and "one coin per shared port" in tol.reason


def test_compare_uses_the_port_coins_for_the_retried_connects() -> None:
    a = measure(model())
    b = measure(model())
    b.delayed = a.delayed * 2 + 4  # the kernel's coins picked the busier side of most ports
    why = suite.chance_reason(NAME, "hostpair")
    rows = {r.metric: r for r in compare(a, b, chance_reason=why, chance_retries=True,
                                         coin_ports=suite.CHANCE_PORTS[NAME])}
    row = rows["connected after a SYN retransmission"]
    assert row.agree is True and row.tolerance.startswith("±(3√(n + n²/20)")
    assert rows["connect ms p99"].agree is None and rows["attempts"].tolerance == "exact"
    plain = {r.metric: r for r in compare(a, b, chance_reason=why, chance_retries=True)}
    assert plain["connected after a SYN retransmission"].agree is False


def test_no_timestamp_offsets_are_given_for_clients_without_timestamps() -> None:
    """The loads read 0 (no TSval is sent): that is no draw, and the note must not name a
    client PAWS rejects."""
    native, _ = native_overrides(suite.load(NAME), 100, "linux-6.1")
    lab = RunResult(source="lab", scenario=NAME, duration_s=7.0)
    lab.meta["loads"] = [{"host": h, "workload": "w", "target": "10.100.0.1:8080", "emulated": False,
                          "ts_offsets": {f"10.1.0.{i + 1}": 0}} for i, h in enumerate(("client-1", "client-2"))]
    assert ts_offset_overrides(suite.load(NAME, native), lab, "linux-6.1") == ({}, [])
