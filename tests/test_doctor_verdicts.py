"""The doctor's verdicts on synthetic observations (issue 11, item 10): severity from the
rate against the sustainable rate, not from occupancy; the limit shown as a ceiling; fixes
without settings already in effect, root cause first; texts that are true where shown."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from tcpreuse.diagnose.base import diagnose, evidence_of
from tcpreuse.findings import Finding
from tcpreuse.host.observed import CounterSample, Observed, SocketSample
from tcpreuse.host.paste import parse_text, to_observed
from tcpreuse.host.render import render
from tcpreuse.host.sockets import (
    SOCK_DTYPE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    TCP_TIME_WAIT,
    SockTable,
    addr_bytes,
)
from tcpreuse.model.timewait import tw_reuse_enabled, tw_reuse_hold_s

RANGE = "40000 40299"  # 300 ports


def _tw(n: int, first_cookie: int, age_s: tuple[float, float], port0: int = 40000) -> np.ndarray:
    """n client-side TIME_WAIT entries 127.0.0.1:port -> 127.0.0.1:8080, aged evenly in age_s."""
    r = np.zeros(n, dtype=SOCK_DTYPE)
    r["family"], r["state"], r["timer"] = 2, TCP_TIME_WAIT, 3
    r["src"], r["dst"], r["dport"] = addr_bytes("127.0.0.1"), addr_bytes("127.0.0.1"), 8080
    r["sport"] = np.arange(n) + port0
    r["cookie"] = np.arange(n) + first_cookie
    r["expires"] = (60.0 - np.linspace(age_s[0], age_s[1], n)) * 1000
    r["ts"] = -1
    return r


def _host(young: int, old: int, *, reuse: int = 1, ts: int = 1, new_young: bool = True,
          extra: dict[str, str] | None = None) -> Observed:
    """A 6.18 client over 300 ports: `young` TIME_WAIT entries closed within the last second
    (new since the first sample when `new_young`), `old` older ones; samples 1 s apart."""
    first = _tw(old, 1, (2.0, 50.0), port0=40000 + young)
    young_rows = _tw(young, 100000 if new_young else 1000, (0.0, 0.95))
    t1 = np.concatenate([young_rows, first])
    t0 = first if new_young else t1
    sysctls = {"net.ipv4.ip_local_port_range": RANGE, "net.ipv4.tcp_tw_reuse": str(reuse),
               "net.ipv4.tcp_timestamps": str(ts), **(extra or {})}
    return Observed(name="cli", kernel_release="6.18.0", sysctls=sysctls,
                    counters=[CounterSample(0.0, {"TcpActiveOpens": 0}),
                              CounterSample(1.0, {"TcpActiveOpens": young if new_young else 0})],
                    sockets=[SocketSample(0.0, SockTable(t0)), SocketSample(1.0, SockTable(t1))])


def _run(obs: Observed) -> tuple[object, list[Finding]]:
    ev = evidence_of([obs])
    (h,) = ev.hosts.values()
    return h, diagnose(ev)


def _ids(findings: list[Finding], fid: str) -> list[Finding]:
    return [f for f in findings if f.id == fid]


def _val(f: Finding, label: str) -> object:
    return next(e.value for e in f.evidence if e.label == label)


def _detail(f: Finding, label: str) -> str:
    return next(e.detail for e in f.evidence if e.label == label)


def test_the_model_owns_the_reuse_rules() -> None:
    assert tw_reuse_enabled(2, True, loopback_mode=True) and not tw_reuse_enabled(2, False, loopback_mode=True)
    assert tw_reuse_enabled(2, False, loopback_mode=False)  # before 4.18 any non-zero value enabled it
    assert not tw_reuse_enabled(1, True, loopback_mode=True, fin_wait2=True)  # 6.14+: FIN_WAIT2 never
    assert tw_reuse_hold_s("gt1s") == 2.0 and tw_reuse_hold_s("after_s") == 1.0
    assert tw_reuse_hold_s("delay_ms", 5000) == pytest.approx(5.001)


def test_reuse_sustaining_the_rate_is_not_an_alarm() -> None:
    """200/s over 300 ports with tw_reuse and timestamps: the range is full of TIME_WAIT but
    connect() can take any entry older than 1 s; 300/s are sustainable. No finding, and none
    after the traffic stopped either."""
    h, findings = _run(_host(young=200, old=100))
    t, d = h.tuples[0], h.tuples[0]
    assert t.in_use == 300 and t.rate_per_s == 200 and d.tw_reuse_applies is True
    assert d.sustainable_rate_per_s == pytest.approx(300 / 1.001, rel=1e-3) and d.blocked == 200
    assert not _ids(findings, "tuple-port-exhaustion")
    h, findings = _run(_host(young=0, old=300))  # stopped: old TIME_WAIT, nothing new
    assert h.tuples[0].in_use == 300 and not _ids(findings, "tuple-port-exhaustion")


def test_on_kernels_before_4_19_reuse_waits_up_to_two_seconds() -> None:
    obs = _host(young=200, old=100)
    obs.kernel_release = "4.15.0"
    h, findings = _run(obs)
    d = h.tuples[0]  # judged fields of the busiest tuple
    assert d.hold_s == 2.0 and d.sustainable_rate_per_s == 150.0  # 300 ports / 2 s
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert f.severity == "critical"  # 200/s > 150/s: runs out


def test_at_the_limit_the_rate_is_a_ceiling_not_a_countdown() -> None:
    """297 new connections/s against a sustainable 300/s with 3 ports free: at its limit,
    connect() beyond that fails; not "exhausted in 0.8 s"."""
    _, findings = _run(_host(young=297, old=3))
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert f.severity == "critical" and "at its limit" in f.title and "exhausted in" not in f.title
    assert "297 new connections/s against a sustainable 300/s" in f.title
    assert _val(f, "rate / sustainable rate") == "99%"
    assert "EADDRNOTAVAIL" in _detail(f, "new connections per s (this tuple)")
    assert _val(f, "ports connect() cannot take now") == 297


def test_timewait_text_is_true_where_shown() -> None:
    _, findings = _run(_host(young=297, old=3))
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert "60 s" not in _detail(f, "TIME_WAIT") and "reuse each after 1.001 s" in _detail(f, "TIME_WAIT")
    _, findings = _run(_host(young=300, old=0, reuse=0))
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert _detail(f, "TIME_WAIT") == "this host closed first; each holds its port 60 s"
    est = np.zeros(290, dtype=SOCK_DTYPE)  # the peer closes first: no TIME_WAIT here
    est["family"], est["state"], est["dport"] = 2, TCP_ESTABLISHED, 8080
    est["src"], est["dst"], est["sport"] = addr_bytes("10.0.0.1"), addr_bytes("10.0.0.9"), np.arange(290) + 40000
    obs = Observed(name="cli", kernel_release="6.18.0", sysctls={"net.ipv4.ip_local_port_range": RANGE},
                   sockets=[SocketSample(0.0, SockTable(est))])
    _, findings = _run(obs)
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert _detail(f, "TIME_WAIT").startswith("none: the peer closes first")


def test_exhaustion_with_reuse_on_but_timestamps_off_leads_with_timestamps() -> None:
    _, findings = _run(_host(young=300, old=0, reuse=1, ts=0))
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert f.fixes[0].id == "timestamps-on" and f.fixes[0].set == {"client:net.ipv4.tcp_timestamps": 1}
    # tcp_tw_reuse is 1 already: no fix sets it
    assert not any("net.ipv4.tcp_tw_reuse" in k for fx in f.fixes for k in fx.set)
    assert not any("tcp_tw_reuse=1" in c for fx in f.fixes for c in fx.commands)


def test_a_setting_in_effect_is_never_a_fix() -> None:
    """A wide range already: no widen fix; reuse off: proposed."""
    _, findings = _run(_host(young=300, old=0, reuse=0, extra={}))
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert [fx.id for fx in f.fixes] == ["reuse-connections", "tw-reuse", "widen-port-range", "more-addresses"]
    obs = _host(young=300, old=0, reuse=0)
    obs.sysctls["net.ipv4.ip_local_port_range"] = "1024 65535"
    h, findings = _run(obs)
    for f in findings:
        for fx in f.fixes:
            for k, v in fx.set.items():
                name = k.split(":", 1)[-1]
                assert name not in h.settings or str(h.settings[name]) != str(v), (f.id, fx.id)


def test_listen_overflow_leads_with_the_accept_rate_and_keeps_somaxconn() -> None:
    """Accepting 20/s while 150/s arrive, backlog 128 full, somaxconn already 4096."""
    lis = np.zeros(1, dtype=SOCK_DTYPE)
    lis["family"], lis["state"], lis["sport"], lis["rqueue"], lis["wqueue"] = 2, TCP_LISTEN, 8080, 129, 128
    c0 = {"TcpPassiveOpens": 0, "TcpExtListenOverflows": 0, "TcpExtListenDrops": 0}
    c1 = {"TcpPassiveOpens": 40, "TcpExtListenOverflows": 260, "TcpExtListenDrops": 260}
    obs = Observed(name="srv", kernel_release="6.18.0", sysctls={"net.core.somaxconn": "4096"},
                   counters=[CounterSample(0.0, c0), CounterSample(2.0, c1)],
                   sockets=[SocketSample(0.0, SockTable(lis)), SocketSample(2.0, SockTable(lis))])
    _, findings = _run(obs)
    (f,) = _ids(findings, "listen-queue-overflow")
    assert [fx.id for fx in f.fixes] == ["accept-faster", "raise-backlog"]
    assert _val(f, "accepted per s") == 20.0 and _val(f, "arriving per s") == 150.0
    assert "accepts 20.0 connections/s while 150.0/s arrive" in f.cause
    assert not any("somaxconn" in c for c in f.fixes[1].commands)
    assert "somaxconn is already 4,096" in f.fixes[1].title


def test_reserved_ports_are_printed_as_ranges() -> None:
    lis = np.zeros(1, dtype=SOCK_DTYPE)
    lis["family"], lis["state"], lis["sport"], lis["wqueue"] = 2, TCP_LISTEN, 40050, 128
    obs = Observed(name="h", kernel_release="6.18.0",
                   sysctls={"net.ipv4.ip_local_port_range": RANGE, "net.ipv4.ip_local_reserved_ports": "8000-8099"},
                   sockets=[SocketSample(0.0, SockTable(lis))])
    ev = evidence_of([obs])
    (f,) = _ids(diagnose(ev), "port-range-overlaps-listeners")
    assert _val(f, "net.ipv4.ip_local_reserved_ports") == "8000-8099"
    assert f.fixes[0].set == {"client:net.ipv4.ip_local_reserved_ports": "8000-8099,40050"}
    text = _text(ev, diagnose(ev))
    assert "8000-8099" in text and "8000,8001" not in text


def _text(ev: object, findings: list[Finding]) -> str:
    con = Console(width=200, record=True, markup=False, emoji=False, highlight=False)
    with con.capture() as cap:
        con.print(render(ev, findings))  # type: ignore[arg-type]
    return cap.get()


def test_one_sample_says_it_cannot_see_a_rate() -> None:
    obs = Observed(name="h", kernel_release="6.18.0", sysctls={"net.ipv4.tcp_tw_reuse": "2"},
                   counters=[CounterSample(0.0, {"TcpActiveOpens": 5})],
                   sockets=[SocketSample(0.0, SockTable.empty())])
    ev = evidence_of([obs])
    findings = diagnose(ev)
    assert not findings
    assert "One sample cannot see a rate" in _text(ev, findings)
    obs.counters.append(CounterSample(1.0, {"TcpActiveOpens": 5}))
    ev = evidence_of([obs])
    assert "No problems found for short-lived connections." in _text(ev, diagnose(ev))


def test_ordinary_sysctl_a_lines_are_understood() -> None:
    text = ("abi.vsyscall32 = 1\ncrypto.fips_enabled = 0\ndebug.exception-trace = 1\ndev.tty.ldisc_autoload = 1\n"
            "fs.file-max = 9223372036854775807\nsunrpc.transports = tcp 1048576\nuser.max_inotify_watches = 8192\n"
            "net.ipv4.conf.veth-a.b/c.forwarding = 0\nnet.ipv4.ip_local_port_range = 32768\t60999\n")
    p = parse_text(text, "sysctl.txt")
    assert p.unrecognised == [] and p.sysctls["net.ipv4.ip_local_port_range"] == "32768\t60999"
    obs = to_observed([p])
    assert not any("not understood" in n for n in obs.notes)


TRACE = """# tracer: nop
          python-11744   [000] .....  1738.570857: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP \
sport=0 dport=8080 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 \
oldstate=TCP_CLOSE newstate=TCP_SYN_SENT
          python-11744   [000] .....  1738.570860: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP \
sport=0 dport=8080 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 \
oldstate=TCP_SYN_SENT newstate=TCP_CLOSE
          python-11744   [000] .....  1738.570990: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP \
sport=40001 dport=8080 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 \
oldstate=TCP_SYN_SENT newstate=TCP_CLOSE
# lost 0
# window 0.5
"""


def test_traced_attempts_and_failures_count_against_the_sustainable_rate() -> None:
    """Failed connect() calls are counted by no kernel counter; the trace counts them: a
    CLOSE -> SYN_SENT per attempt, SYN_SENT -> CLOSE with source port 0 per EADDRNOTAVAIL
    (a failure after a port was chosen, sport 40001, is not one)."""
    from tcpreuse.host.trace import parse_trace

    c = parse_trace(TRACE)
    key = ("127.0.0.1", "127.0.0.1", 8080)
    assert (c.attempts[key], c.no_port[key], c.lost, c.window_s) == (1, 1, 0, 0.5)
    obs = _host(young=200, old=100)  # 200/s succeed: no alarm by itself ...
    c.attempts[key], c.no_port[key] = 200, 100  # ... but 400 attempts/s and 200/s fail over 0.5 s
    obs.connect_trace, obs.connect_trace_s = c, 0.5
    _, findings = _run(obs)
    (f,) = _ids(findings, "tuple-port-exhaustion")
    assert f.severity == "critical"
    assert "at its limit, 400 connect()/s attempted against a sustainable 300/s; 200/s fail" in f.title
    assert _val(f, "attempts / sustainable rate") == "133%"


def test_direction_from_evidence_when_no_listener_says() -> None:
    """Ports all inside the ephemeral range and no listener: a client's many connections to
    one destination stay outgoing; a stopped server's TIME_WAIT on one local port toward
    many peers is incoming."""
    from tcpreuse.host.facts import classify_direction

    n = 120
    cli = np.zeros(n, dtype=SOCK_DTYPE)
    cli["family"], cli["state"], cli["dport"] = 2, TCP_ESTABLISHED, 45000
    cli["src"], cli["dst"], cli["sport"] = addr_bytes("10.0.0.1"), addr_bytes("10.0.0.9"), np.arange(n) + 40000
    srv = np.zeros(n, dtype=SOCK_DTYPE)
    srv["family"], srv["state"], srv["sport"] = 2, TCP_TIME_WAIT, 46000
    srv["src"], srv["dst"], srv["dport"] = addr_bytes("10.0.0.1"), addr_bytes("10.0.0.7"), np.arange(n) + 50000
    tab = np.concatenate([cli, srv])
    incoming, outgoing, why = classify_direction(tab, set(), (32768, 60999))
    assert outgoing[:n].all() and incoming[n:].all()
    assert why == {"many peers on one local port": n, "many connections to one destination": n}
    # a listener's port decides first; the ephemeral range next
    incoming, _, why = classify_direction(tab, {46000}, (40000, 40999))
    assert incoming[n:].all() and not incoming[:n].any() and why["local port is a listener's"] == n


def test_handshake_failures_against_the_connect_rate() -> None:
    """SYN retransmissions and refused handshakes as a share of connect() calls: an odd lost
    SYN is noise, a fifth of connects retried is critical."""
    def client(retrans: int, fails: int) -> Observed:
        c0 = {"TcpActiveOpens": 0, "TcpExtTCPSynRetrans": 0, "TcpAttemptFails": 0, "TcpEstabResets": 0}
        c1 = {"TcpActiveOpens": 1000, "TcpExtTCPSynRetrans": retrans, "TcpAttemptFails": fails, "TcpEstabResets": 0}
        return Observed(name="cli", kernel_release="6.18.0", counters=[CounterSample(0.0, c0), CounterSample(1.0, c1)])
    _, findings = _run(client(5, 0))
    assert not _ids(findings, "connect-handshakes-failing")
    _, findings = _run(client(150, 50))
    (f,) = _ids(findings, "connect-handshakes-failing")
    assert f.severity == "critical" and _val(f, "retried or refused per connect()") == "20%"
    assert "150.0 SYN retransmissions/s" in f.title and "50.0 handshakes/s refused" in f.title
