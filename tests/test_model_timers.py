"""Kernel timer rounding (model.timers) and the Linux SYN / data retransmission schedules
(model.stacks), against figures read off real 6.18 captures and the kernel sources."""

from __future__ import annotations

import pytest

from tcpreuse.model.profiles import get_profile
from tcpreuse.model.settings import resolve_settings
from tcpreuse.model.stacks import (
    client_stack,
    linux_data_retry_j,
    linux_syn_rtos,
    syn_sent_expired,
    tcp_model_timeout_ms,
)
from tcpreuse.model.timers import jiffies0, timer_fires_s, wheel_expiry


def test_wheel_rounds_up_to_the_level_granularity() -> None:
    # level 0 (< 63 jiffies away): the jiffy after the expiry
    assert wheel_expiry(1000 + 2, 1000, 250) == 1003
    # level 1 (63..503): the next multiple of 8 strictly after the expiry
    assert wheel_expiry(1000 + 250, 1000, 250) == 1256
    assert wheel_expiry(1008 + 248, 1008, 250) == 1264  # already a multiple: one bucket later
    # level 2 (504..4031): multiples of 64; 1 s at HZ=1000 is 1000 jiffies
    assert wheel_expiry(5000 + 1000, 5000, 1000) == 6016


def test_syn_retransmission_seen_on_a_6_18_capture() -> None:
    """A SYN re-sent by the timer at a tick that is a multiple of 8 jiffies (HZ=250) goes
    out again 1.024 s later, not 1.000 s (captured: 1.919991 -> 2.943959)."""
    j0 = 8 * 1000.0  # the run starts on a bucket boundary
    t = timer_fires_s(0.5, 250, 250, j0, wheel=True)  # armed mid-bucket: up to 32 ms late
    assert 1.5 < t <= 1.532
    assert timer_fires_s(t, 250, 250, j0, wheel=True) - t == pytest.approx(1.024)
    assert timer_fires_s(t, 250, 250, j0, wheel=False) - t == pytest.approx(1.0)  # < 4.8


def test_jiffies_start_five_minutes_before_wrapping_32_bits() -> None:
    assert jiffies0(1000, 0.0) == 2**32 - 300_000
    assert jiffies0(250, 10.0) == 2**32 - 75_000 + 2_500


def test_syn_schedule_is_linear_first_on_6_5_and_later() -> None:
    rtos = linux_syn_rtos(1.0, 6, 4, 1000)
    sends = [sum(rtos[:i]) / 1000 for i in range(len(rtos))]
    assert sends == [0, 1, 2, 3, 4, 5, 7, 11, 19, 35, 67]
    assert sum(rtos) / 1000 == 131  # connect() gives up (tcp_write_timeout)
    old = linux_syn_rtos(1.0, 6, 0, 1000)
    assert [sum(old[:i]) / 1000 for i in range(len(old))] == [0, 1, 3, 7, 15, 31, 63]
    assert sum(old) / 1000 == 127


def test_client_stack_reads_tcp_syn_linear_timeouts_by_version() -> None:
    for name, want in (("linux-6.18", 131.0), ("linux-5.15", 127.0)):
        p = get_profile(name)
        settings, _ = resolve_settings(p, {})
        st = client_stack(p, settings, {"hz": 1000})
        assert st.give_up_s == want
    p = get_profile("linux-6.18")
    settings, _ = resolve_settings(p, {"net.ipv4.tcp_syn_linear_timeouts": 0})
    assert client_stack(p, settings, {"hz": 1000}).give_up_s == 127.0


def test_data_retransmissions_start_with_a_tail_loss_probe() -> None:
    # 6.18 capture (HZ=250, RTT 50 us): request re-sent after 208, 212, 412 ms
    ks = [linux_data_retry_j(k, 50e-6, 250, tlp=True) for k in (1, 2, 3)]
    assert ks == [51, 51, 102]
    assert [linux_data_retry_j(k, 50e-6, 250, tlp=False) for k in (1, 2)] == [51, 102]


def test_tcp_model_timeout_is_the_syn_time_budget() -> None:
    # tcp_model_timeout(sk, tcp_syn_retries, tcp_timeout_init = HZ): ((2 << n) - 1) s up to
    # ilog2(120) = 6 doublings, then TCP_RTO_MAX per retry
    assert [tcp_model_timeout_ms(n, 250, 250) for n in (1, 2, 3, 6, 7)] == [3000, 7000, 15000, 127000, 247000]
    assert tcp_model_timeout_ms(6, 1000, 1000) == 127000


def test_syn_sent_gives_up_on_the_count_or_the_time_budget() -> None:
    assert syn_sent_expired(5, 5, 0, 3000)  # the count
    assert syn_sent_expired(2, 5, 3000, 3000)  # the budget
    assert not syn_sent_expired(2, 5, 2999, 3000)
    assert not syn_sent_expired(0, 5, 9000, 3000)  # no retransmission yet: never on time
    assert not syn_sent_expired(2, 5, 9000, 0)  # before 5.4: the count only


@pytest.mark.parametrize(("retries", "syns", "give_up"), [(1, 3, 3.0), (2, 6, 7.0), (3, 8, 19.0), (6, 11, 131.0)])
def test_6_5_gives_up_on_the_time_budget_with_few_syn_retries(retries: int, syns: int, give_up: float) -> None:
    """6.5+ sends 4 linear retransmissions first: with tcp_syn_retries < 3 the time budget
    (3 s, 7 s) ends the connect before the count (6 SYNs and 7 s, 7 SYNs and 11 s)."""
    p = get_profile("linux-6.18")
    st = client_stack(p, resolve_settings(p, {"net.ipv4.tcp_syn_retries": retries})[0], {"hz": 250})
    assert (len(st.syn_offsets), st.give_up_s) == (syns, give_up)


def test_the_engine_gives_up_when_the_kernel_does() -> None:
    """Each probe of v-syn-give-up meets a full accept queue: r1 (tcp_syn_retries 1) sends 3
    SYNs and frees its one port by 3 s, so its next attempt 4 s later gets it (count only:
    6 SYNs, 7 s, EADDRNOTAVAIL); r2 (retries 2) sends 6 (count only: 7)."""
    from tcpreuse.sim.engine import simulate
    from tcpreuse.validate import suite

    res = simulate(suite.load("v-syn-give-up"))
    c, wl = res.attempts.cols, res.attempts.vocab["workload"]
    tries = {w: sorted(c["syn_tries"][c["workload"] == wl.index(w)].tolist()) for w in ("r1", "r2")}
    assert tries == {"r1": [3, 3], "r2": [6]}
    assert res.outcomes() == {"ETIMEDOUT": 6}  # no EADDRNOTAVAIL: r1's port was free again
    assert res.counters["server"]["TcpExtListenOverflows"] == 2 * 3 + 6
