"""Property tests: invariants of the engine over random small scenarios.

The engine's audit mode checks, as each socket is created, that no live socket or
TIME_WAIT holds the 4-tuple (unless that TIME_WAIT is legally taken over), and that a
takeover happens only under the rule that allows it (timestamps; tcp_tw_reuse and age
for autoselected ports)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpreuse.scenario.loader import load_text
from tcpreuse.sim.engine import Engine

LINUX = ["centos-6", "linux-3.10", "linux-4.4", "linux-4.9", "linux-5.4", "linux-5.15", "linux-6.18"]


@st.composite
def scenarios(draw: st.DrawFn) -> str:
    prof = draw(st.sampled_from([*LINUX, "windows-2016", "windows-2022", "macos"]))
    linux = prof not in ("windows-2016", "windows-2022", "macos")
    srv = draw(st.sampled_from(LINUX))
    lo = draw(st.integers(30000, 60000))
    n = draw(st.integers(8, 300))
    settings_c = []
    if linux:
        settings_c.append(f'"net.ipv4.ip_local_port_range" = "{lo} {lo + n - 1}"')
        settings_c.append(f'"net.ipv4.tcp_tw_reuse" = {draw(st.sampled_from([0, 1]))}')
        settings_c.append(f'"net.ipv4.tcp_timestamps" = {draw(st.sampled_from([0, 1]))}')
        if draw(st.booleans()):
            settings_c.append(f'"net.ipv4.ip_local_reserved_ports" = "{lo + 1},{lo + 3}-{lo + 5}"')
    elif prof.startswith("windows"):
        settings_c.append(f'"netsh.ipv4.dynamicport.tcp.num" = {max(255, n)}')
        settings_c.append(f'"netsh.tcp.timestamps" = "{draw(st.sampled_from(["disabled", "enabled"]))}"')
        settings_c.append('"TcpTimedWaitDelay" = 30')
    settings_s = []
    if srv in ("centos-6", "linux-3.10", "linux-4.4", "linux-4.9"):
        settings_s.append(f'"net.ipv4.tcp_tw_recycle" = {draw(st.sampled_from([0, 1]))}')
    settings_s.append(f'"net.ipv4.tcp_rfc1337" = {draw(st.sampled_from([0, 1]))}')
    close = draw(st.sampled_from(["client", "server", "client_rst", "server_rst"]))
    bind = draw(st.sampled_from(["none", "address_no_port", "bind0"])) if linux else "none"
    nclients = draw(st.integers(1, 3))
    nservers = draw(st.integers(1, 2))
    use_lb = draw(st.booleans())
    use_nat = draw(st.booleans())
    rate = draw(st.sampled_from([50, 300, 1500]))
    text = f"""
name = "prop"
seed = {draw(st.integers(0, 1000))}
duration_s = {draw(st.sampled_from([2, 4]))}
[[host]]
name = "c"
role = "client"
count = {nclients}
profile = "{prof}"
addresses_per_host = {draw(st.integers(1, 3))}
[host.settings]
{chr(10).join(settings_c)}
[[host]]
name = "s"
role = "server"
count = {nservers}
profile = "{srv}"
backlog = {draw(st.sampled_from([4, 128]))}
workers = {draw(st.sampled_from([2, 256]))}
service_ms = {draw(st.sampled_from([0.1, 5.0]))}
[host.settings]
{chr(10).join(settings_s)}
[[workload]]
clients = "c"
target = "{'lb' if use_lb else 's'}"
rate = {rate}
close = "{close}"
bind = "{bind}"
connect_timeout_s = 5
"""
    if use_lb:
        text += f"""
[lb]
backends = "s"
snat = {str(draw(st.booleans())).lower()}
snat_port_range = [1024, {1024 + draw(st.integers(20, 2000))}]
session_hold_s = {draw(st.sampled_from([0.0, 2.0]))}
held_session_syn = "{draw(st.sampled_from(["same_backend", "new_session", "drop", "drop_then_new"]))}"
"""
    if use_nat:
        text += f"""
[nat]
clients = ["c"]
port_policy = "{draw(st.sampled_from(["preserve", "sequential", "random"]))}"
port_range = [1024, {1024 + draw(st.integers(20, 3000))}]
time_wait_s = {draw(st.sampled_from([0.0, 5.0, 120.0]))}
"""
    return text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants_hold_for_random_scenarios(text: str) -> None:
    e = Engine(load_text(text))
    e.audit = True
    r = e.run()
    assert not e.violations, e.violations[:3]
    n = len(r.attempts)
    assert sum(r.outcomes().values()) == n
    # every attempt ended: an outcome, and a reason
    assert (r.attempts.cols["outcome"] >= 0).all() and (r.attempts.cols["reason"] >= 0).all()
    ok = ~r.attempts.failed_mask()
    assert (r.attempts.cols["connect_ms"][ok] > 0).all()
    # the per-second timeline adds up to the attempts started within the run
    assert sum(r.timeline.attempts) == n
    # port use never exceeds the budget
    for p in r.timeline.ports.values():
        assert max(p.in_use, default=0) <= p.budget
