"""The doctor's pure parts, without sockets: parsers, netlink decoding, aggregation math."""

from __future__ import annotations

import socket
import struct

import numpy as np
import pytest

from tcpreuse.host import facts as facts_mod
from tcpreuse.host import sockdiag
from tcpreuse.host.facts import (
    build,
    group_tuples,
    parse_sysctl,
    port_budget,
    profile_for,
    time_to_exhaustion,
)
from tcpreuse.host.observed import CounterSample, Observed, SocketSample, parse_proc_counters
from tcpreuse.host.paste import parse_ms, parse_text, to_observed
from tcpreuse.host.sockets import (
    SOCK_DTYPE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    TCP_TIME_WAIT,
    SockTable,
    addr_bytes,
    addr_text,
    fold_v4mapped,
)
from tcpreuse.model.profiles import get_profile


@pytest.mark.parametrize(("text", "ms"), [
    ("59sec", 59000), ("1min", 60000), ("1min5sec", 65000), ("9.501sec", 9501), ("476ms", 476),
    ("9.501ms", 9501),  # iproute2 before the 2024 fix printed seconds.millis with "ms"
    ("garbage", None), ("", None),
])
def test_ss_timer_text(text: str, ms: int | None) -> None:
    assert parse_ms(text) == ms


def _diag_msg(state: int, src: str, sport: int, dst: str, dport: int, expires: int = 0, cookie: int = 1,
              attrs: bytes = b"", family: int = socket.AF_INET) -> bytes:
    fam_len = 4 if family == socket.AF_INET else 16
    s, d = socket.inet_pton(family, src).ljust(16, b"\0"), socket.inet_pton(family, dst).ljust(16, b"\0")
    assert len(s) == 16 and fam_len
    body = struct.pack("=BBBB", family, state, 3 if state == TCP_TIME_WAIT else 0, 0)
    body += struct.pack(">HH", sport, dport) + s + d + struct.pack("=IQIIIII", 0, cookie, expires, 0, 0, 0, 0)
    assert len(body) == 72
    payload = body + attrs
    return struct.pack("=IHHII", 16 + len(payload), sockdiag.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + payload


DONE = struct.pack("=IHHIIi", 20, sockdiag.NLMSG_DONE, 2, 1, 0, 0)


def _attr(t: int, payload: bytes) -> bytes:
    a = struct.pack("=HH", 4 + len(payload), t) + payload
    return a + b"\0" * (-len(a) % 4)


def test_netlink_messages_of_mixed_sizes_are_found_and_decoded() -> None:
    msgs = [
        _diag_msg(TCP_TIME_WAIT, "10.0.0.1", 40000, "10.0.0.9", 80, expires=59000, cookie=7),
        _diag_msg(TCP_ESTABLISHED, "10.0.0.1", 40001, "10.0.0.9", 80, cookie=8, attrs=_attr(8, b"\x00") + _attr(21, b"\1" * 8)),
        _diag_msg(TCP_LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, cookie=9, attrs=_attr(8, b"\x00")),
        _diag_msg(TCP_TIME_WAIT, "::ffff:10.0.0.2", 40002, "::ffff:10.0.0.9", 443, expires=1000, cookie=10,
                  family=socket.AF_INET6),
    ]
    buf = b"".join(msgs) + DONE
    starts = sockdiag.message_starts(buf)
    assert starts.tolist() == [0, len(msgs[0]) // 4, sum(map(len, msgs[:2])) // 4, sum(map(len, msgs[:3])) // 4,
                               sum(map(len, msgs)) // 4]
    rows = sockdiag.decode(buf, starts[:-1])
    fold_v4mapped(rows)
    assert rows["state"].tolist() == [TCP_TIME_WAIT, TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT]
    assert rows["sport"].tolist() == [40000, 40001, 8080, 40002]
    assert rows["dport"].tolist() == [80, 80, 0, 443]
    assert rows["expires"].tolist() == [59000, 0, 0, 1000]
    assert rows["cookie"].tolist() == [7, 8, 9, 10]
    assert [addr_text(r["src"].tobytes(), int(r["family"])) for r in rows] == ["10.0.0.1", "10.0.0.1", "0.0.0.0", "10.0.0.2"]
    assert addr_text(rows[3]["dst"].tobytes()) == "10.0.0.9"  # v4-mapped folded to one key


def test_a_header_lookalike_inside_a_payload_is_not_a_message() -> None:
    """A payload word that reads like a header (len 96, type 20) must not be taken for one:
    the fast check fails, and the pointer-doubling walk only follows real lengths."""
    fake = struct.pack("=IHH", 96, sockdiag.SOCK_DIAG_BY_FAMILY, 0) + b"\0" * 8
    m1 = _diag_msg(TCP_ESTABLISHED, "10.0.0.1", 1, "10.0.0.2", 2, attrs=_attr(30, fake))
    m2 = _diag_msg(TCP_TIME_WAIT, "10.0.0.1", 3, "10.0.0.2", 4)
    buf = m1 + m2 + DONE
    assert sockdiag.message_starts(buf).tolist() == [0, len(m1) // 4, (len(m1) + len(m2)) // 4]


def test_tcp_info_timestamps_flag() -> None:
    info = bytes([1, 0, 0, 0, 0, 1]) + b"\0" * 98  # tcpi_state .. tcpi_options = TCPI_OPT_TIMESTAMPS
    no_ts = bytes([1, 0, 0, 0, 0, 0]) + b"\0" * 98
    buf = (_diag_msg(TCP_ESTABLISHED, "1.1.1.1", 1, "2.2.2.2", 2, attrs=_attr(2, info))
           + _diag_msg(TCP_ESTABLISHED, "1.1.1.1", 3, "2.2.2.2", 2, attrs=_attr(2, no_ts))
           + _diag_msg(TCP_TIME_WAIT, "1.1.1.1", 4, "2.2.2.2", 2) + DONE)
    starts = sockdiag.message_starts(buf)[:-1]
    assert sockdiag._tcp_info_ts(buf, starts).tolist() == [1, 0, -1]


def test_proc_counter_pairs_and_malformed_lines() -> None:
    text = ("TcpExt: SyncookiesSent TW PAWSPassive\nTcpExt: 0 17 4\n"
            "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 99\n"
            "IpExt: A B\nIpExt: 1\n")
    values, notes = parse_proc_counters(text, "/proc/net/netstat")
    assert values == {"TcpExtSyncookiesSent": 0, "TcpExtTW": 17, "TcpExtPAWSPassive": 4,
                      "TcpRtoAlgorithm": 1, "TcpMaxConn": -1, "TcpActiveOpens": 99}
    assert any("IpExt has 2 names but 1 values" in n for n in notes)


def test_netstat_s_old_and_new_spellings() -> None:
    old = ("Tcp:\n    12 active connections openings\n    3 segments retransmited\n"
           "TcpExt:\n    5 packets rejects in established connections because of timestamp\n"
           "    7 SYNs to LISTEN sockets ignored\n    TCPTimeWaitOverflow: 9\n")
    new = ("Tcp:\n    12 active connection openings\n    3 segments retransmitted\n"
           "TcpExt:\n    5 packetes rejected in established connections because of timestamp\n"
           "    7 SYNs to LISTEN sockets dropped\n    TCPTimeWaitOverflow: 9\n")
    for text in (old, new):
        p = parse_text(text, "x")
        assert p.counters == {"TcpActiveOpens": 12, "TcpRetransSegs": 3, "TcpExtPAWSEstab": 5,
                              "TcpExtListenDrops": 7, "TcpExtTCPTimeWaitOverflow": 9}
        assert not p.counters_complete and not p.unrecognised


def test_counters_netstat_omits_zeros_but_the_kernel_decides_absence() -> None:
    """netstat -s prints no zero counters: on EL6 a missing TCPTimeWaitOverflow is absent
    (the kernel has none), a missing TcpExtTW is 0."""
    obs = Observed(name="h", kernel_release="2.6.32-642.el6.x86_64",
                   counters=[CounterSample(t=0, values={"TcpExtPAWSPassive": 3}, complete=False)])
    f = build(obs)
    assert f.profile == "linux-2.6.32-el6"
    assert f.counters_absolute["TcpExtPAWSPassive"] == 3 and f.counters_absolute["TcpExtTW"] == 0
    assert {"TcpExtTCPTimeWaitOverflow", "TcpExtPAWSTimewait"} <= f.counters_absent
    assert "TcpExtTW" not in f.counters_absent
    # /proc or nstat -az on 6.18: a name not in the file does not exist there
    obs = Observed(name="h", kernel_release="6.18.2", counters=[CounterSample(t=0, values={"TcpExtTW": 1})])
    f = build(obs)
    assert "TcpExtPAWSPassive" in f.counters_absent and "TcpCurrEstab" not in f.counters_absent


def test_rates_are_deltas_over_the_window() -> None:
    obs = Observed(name="h", kernel_release="5.15.0", counters=[
        CounterSample(t=10.0, values={"TcpActiveOpens": 100, "TcpCurrEstab": 5}),
        CounterSample(t=12.5, values={"TcpActiveOpens": 600, "TcpCurrEstab": 9})])
    f = build(obs)
    assert f.window_s == 2.5 and f.counters["TcpActiveOpens"] == 500 and "TcpCurrEstab" not in f.counters
    assert facts_mod.rate(f, "TcpActiveOpens") == 200.0


@pytest.mark.parametrize(("release", "profile"), [
    ("2.6.32-279.el6.x86_64", "linux-2.6.32-el6"), ("2.6.32-5-amd64", "linux-2.6.32"),
    ("3.10.0-1160.el7.x86_64", "linux-3.10"), ("6.18.44-fc-v595", "linux-6.18.44"),
    ("7.2.0", "linux-6.18.99"), ("2.6.18-398.el5", None), ("weird", None),
])
def test_profile_from_kernel_release(release: str, profile: str | None) -> None:
    p, _ = profile_for(Observed(name="h", kernel_release=release))
    assert (p.name if p else None) == profile


def test_sysctl_values() -> None:
    assert parse_sysctl("net.ipv4.ip_local_port_range", "32768\t60999\n") == (32768, 60999)
    assert parse_sysctl("net.ipv4.ip_local_reserved_ports", "8080,9000-9002") == frozenset({8080, 9000, 9001, 9002})
    assert parse_sysctl("net.ipv4.ip_local_reserved_ports", "") == frozenset()
    assert parse_sysctl("fs.file-nr", "2816\t0\t6553560") == (2816, 0, 6553560)
    assert parse_sysctl("net.ipv4.tcp_congestion_control", "bbr") == "bbr"


def test_port_budget_subtracts_reserved_and_listeners_and_splits_parity() -> None:
    settings = {"net.ipv4.ip_local_port_range": (40000, 40999),
                "net.ipv4.ip_local_reserved_ports": frozenset({40010, 40011, 50000})}
    b = port_budget(settings, get_profile("linux-6.1"), {40100, 22})
    assert b["size"] == 1000 and b["reserved_in_range"] == 2 and b["listener_ports_in_range"] == [40100]
    assert b["usable"] == 997
    assert b["fast_parity"] == 500 - 2 and b["other_parity"] == 499  # 40010, 40100 even; 40011 odd
    assert b["listener_ports_unreserved"] == [40100] and b["port_alg"] == "perturb64k"


def test_time_to_exhaustion_counts_timewait_expiry() -> None:
    # 100 ports, 50 in TIME_WAIT freeing at 10 s, 30 established, 5 new/s holding 60 s each
    tw = np.full(50, 10.0)
    assert time_to_exhaustion(30, tw, 5.0, 100, 60.0) == pytest.approx(4.0, abs=0.11)
    # steady state 30 + 5*60 = 330 > 100, but after the TW expire it is 30 + 5 t: t = 14
    assert time_to_exhaustion(30, tw, 0.5, 100, 60.0) is None  # 30 + 0.5*60 = 60 < 100
    assert time_to_exhaustion(60, np.full(40, 5.0), 0.0, 100, 60.0) == 0.0  # full now
    assert time_to_exhaustion(60, np.full(30, 5.0), 0.0, 100, 60.0) is None  # no new connections


def test_grouping_falls_back_on_a_hash_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.zeros(6, dtype=SOCK_DTYPE)
    rows["src"] = [addr_bytes(a) for a in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2", "::1")]
    rows["dst"] = addr_bytes("10.0.0.9")
    rows["dport"] = [80, 80, 80, 443, 80, 80]
    _keys, _inv, counts = group_tuples(rows)
    expect = sorted(counts.tolist())
    monkeypatch.setattr(facts_mod, "_MIX", np.zeros(5, dtype=np.uint64))  # every key hashes alike
    _keys2, inv2, counts2 = group_tuples(rows)
    assert sorted(counts2.tolist()) == expect == [1, 1, 2, 2]
    assert (inv2[0] == inv2[1]) and (inv2[2] == inv2[4]) and len({inv2[3], inv2[5], inv2[0], inv2[2]}) == 4


def test_sock_table_json_round_trip() -> None:
    p = parse_text("State Recv-Q Send-Q Local Address:Port Peer Address:Port\n"
                   "ESTAB 0 0 [::ffff:10.0.0.1]:5000 [::ffff:10.0.0.2]:80\n"
                   "LISTEN 0 511 [::]:80 [::]:*\n"
                   "TIME-WAIT 0 0 10.0.0.1%eth0:5001 10.0.0.2:80 timer:(timewait,12sec,0) ino:0 sk:1f\n"
                   "ESTAB 0 0 2001:db8::1:5002 2001:db8::2:443\n", "ss")
    assert p.sockets is not None
    t = p.sockets.table()
    back = SockTable.from_json(t.to_json())
    assert back.rows.tobytes() == t.rows.tobytes() and back.has_timers and not back.has_cookies
    assert [addr_text(r["src"].tobytes(), int(r["family"])) for r in back.rows] == \
        ["10.0.0.1", "::", "10.0.0.1", "2001:db8::1"]
    assert back.rows["expires"].tolist()[2] == 12000 and back.rows["wqueue"].tolist()[1] == 511


def test_two_samples_give_the_per_tuple_rate_from_cookies() -> None:
    def table(cookies: list[int], states: list[int]) -> SockTable:
        r = np.zeros(len(cookies), dtype=SOCK_DTYPE)
        r["src"], r["dst"], r["dport"] = addr_bytes("10.0.0.1"), addr_bytes("10.0.0.9"), 80
        r["sport"] = np.arange(len(cookies)) + 40000
        r["cookie"], r["state"], r["expires"], r["ts"] = cookies, states, 30000, -1
        return SockTable(r)
    t0 = table([1, 2, 3], [TCP_ESTABLISHED] * 3)
    t1 = table([1, 2, 3, 4, 5, 6, 7], [TCP_TIME_WAIT] * 3 + [TCP_ESTABLISHED] * 4)  # 3 went to TW, 4 new
    obs = Observed(name="h", kernel_release="6.8.0", sysctls={"net.ipv4.ip_local_port_range": "40000 40009",
                                                              "net.ipv4.tcp_tw_reuse": "0"},
                   sockets=[SocketSample(0.0, t0), SocketSample(2.0, t1)])
    f = build(obs)
    (t,) = f.tuples
    assert (t.established, t.time_wait, t.budget, t.rate_per_s) == (4, 3, 10, 2.0)
    assert t.next_free_in_s == 30.0
    # 7 in use + 2/s x 60 s hold: 3 free ports last 1.5 s
    assert t.seconds_to_exhaustion == pytest.approx(1.5, abs=0.11)


def test_windows_netstat_and_netsh() -> None:
    text = ("\r\nActive Connections\r\n\r\n  Proto  Local Address          Foreign Address        State           PID\r\n"
            "  TCP    0.0.0.0:135            0.0.0.0:0              LISTENING       812\r\n"
            "  TCP    10.0.0.5:50000         10.0.0.9:443           TIME_WAIT       0\r\n"
            "  TCP    [::1]:50001            [::1]:5985             ESTABLISHED     33\r\n"
            "  UDP    0.0.0.0:123            *:*                                    1124\r\n"
            "TCP Global Parameters\r\n-----\r\nRFC 1323 Timestamps                 : allowed\r\n"
            "Initial RTO                         : 1000\r\nMax SYN Retransmissions             : 4\r\n"
            "Protocol udp Dynamic Port Range\r\n------\r\nStart Port      : 1000\r\nNumber of Ports : 500\r\n"
            "Protocol tcp Dynamic Port Range\r\n------\r\nStart Port      : 10000\r\nNumber of Ports : 55536\r\n"
            "    TcpTimedWaitDelay    REG_DWORD    0x1e\r\n")
    p = parse_text(text, "win")
    assert p.os == "windows" and not p.unrecognised
    assert p.windows == {"netsh.tcp.timestamps": "allowed", "netsh.tcp.initialrto": 1000,
                         "netsh.tcp.maxsynretransmissions": 4, "netsh.ipv4.dynamicport.tcp.start": 10000,
                         "netsh.ipv4.dynamicport.tcp.num": 55536, "TcpTimedWaitDelay": 30}
    obs = to_observed([p])
    f = build(obs)
    assert f.os == "windows" and f.profile == "windows-2022"
    assert f.extra["port_budget"]["range"] == [10000, 65535]
    assert [(t.dst, t.dport, t.time_wait) for t in f.tuples] == [("10.0.0.9", 443, 1), ("::1", 5985, 0)]


def test_garbage_lines_are_reported_not_fatal() -> None:
    p = parse_text("net.ipv4.tcp_tw_reuse = 1\n\x07\x08 ??? \nhello world\nnet.core.somaxconn = 128\n", "x")
    assert p.sysctls == {"net.ipv4.tcp_tw_reuse": "1", "net.core.somaxconn": "128"}
    assert len(p.unrecognised) == 2 and p.unrecognised[0].startswith("2:")
