"""tcp_tw_recycle's cache, the listener's queues, NAT and the L4 load balancer."""

from __future__ import annotations

import random

from tcpreuse.model.lb import L4LoadBalancer, client_key
from tcpreuse.model.listener import (
    COOKIE,
    DROP,
    SYNACK,
    Listener,
    ListenRules,
    conn_request,
    syn_recv_sock_ok,
)
from tcpreuse.model.nat import SourceNat
from tcpreuse.model.profiles import get_profile
from tcpreuse.model.recycle import PeerCache


def test_recycle_cache_keeps_the_largest_tsval_and_drops_older_syns() -> None:
    c = PeerCache("peer")
    c.remember_stamp(1, 9, ts_recent=1000, ts_recent_stamp=500, now_sec=500)
    c.remember_stamp(1, 9, ts_recent=400, ts_recent_stamp=501, now_sec=501)  # older: ignored
    assert c.entries[(0, 9)].ts == 1000
    # 2.6.32: timestamped SYN older by > 1 within 60 s -> drop; TS-less SYN never checked
    assert c.syn_rejected(1, 9, True, 997, 530, drops_tsless=False)
    assert not c.syn_rejected(1, 9, True, 999, 530, drops_tsless=False)  # TCP_PAWS_WINDOW
    assert not c.syn_rejected(1, 9, False, 0, 530, drops_tsless=False)
    assert not c.syn_rejected(1, 9, True, 997, 560, drops_tsless=False)  # 60 s later
    # 3.17-4.11: TS-less SYNs from a fresh peer are dropped too
    assert c.syn_rejected(1, 9, False, 0, 530, drops_tsless=True)
    # an older stamp is overwritten once the stored one is more than 60 s old
    c.remember_stamp(1, 9, ts_recent=10, ts_recent_stamp=600, now_sec=600)
    assert c.entries[(0, 9)].ts == 10


def test_recycle_cache_key_by_version() -> None:
    assert PeerCache("addr_pair").key(1, 9) == (1, 9)
    assert PeerCache("peer").key(1, 9) == (0, 9)
    assert get_profile("linux-4.9").recycle_cache_key == "addr_pair"
    assert get_profile("centos-6").recycle_cache_key == "peer"
    assert get_profile("linux-4.9").recycle_drops_tsless_syn
    assert not get_profile("centos-6").recycle_drops_tsless_syn


def test_listener_accept_queue_overflow_drops_syns_with_counters() -> None:
    p = get_profile("linux-5.15")
    lst = Listener(backlog=2, somaxconn=4096)
    assert lst.max_ack_backlog == 2
    assert conn_request(lst, ListenRules(p), from_timewait=False, syncookies=1, recycle_reject=False).verdict == SYNACK
    lst.accept_queue = 3  # backlog + 1: strictly greater than max -> full
    v = conn_request(lst, ListenRules(p), from_timewait=False, syncookies=1, recycle_reject=False)
    assert v.verdict == DROP and v.counters == ("TcpExtListenOverflows", "TcpExtListenDrops")
    ok, counters = syn_recv_sock_ok(lst)
    assert not ok and "TcpExtListenOverflows" in counters
    # 2.6.32: the same drop is silent
    v = conn_request(lst, ListenRules(get_profile("centos-6")), from_timewait=False, syncookies=1, recycle_reject=False)
    assert v.counters == ()


def test_syn_queue_full_uses_cookies_unless_converted_from_timewait() -> None:
    p = get_profile("linux-6.18")
    lst = Listener(backlog=4, somaxconn=4096, syn_queue=4)
    assert conn_request(lst, ListenRules(p), from_timewait=False, syncookies=1, recycle_reject=False).verdict == COOKIE
    assert conn_request(lst, ListenRules(p), from_timewait=True, syncookies=1, recycle_reject=False).verdict == SYNACK
    v = conn_request(lst, ListenRules(p), from_timewait=False, syncookies=0, recycle_reject=False)
    assert v.verdict == DROP and "TcpExtTCPReqQFullDrop" in v.counters
    # tcp_syn_flood_action() counts the cookie decision; a full accept queue then drops the
    # SYN anyway (6.18: TCPReqQFullDoCookies 36 with SyncookiesSent 33 in one lab run)
    lst.accept_queue = 5
    v = conn_request(lst, ListenRules(p), from_timewait=False, syncookies=1, recycle_reject=False)
    assert v.verdict == DROP
    assert v.counters == ("TcpExtTCPReqQFullDoCookies", "TcpExtListenOverflows", "TcpExtListenDrops")


def test_recycle_reject_counts_paws_passive() -> None:
    v = conn_request(Listener(100, 128), ListenRules(get_profile("linux-4.9")), from_timewait=False, syncookies=1,
                     recycle_reject=True)
    assert v.verdict == DROP and v.reason == "syn_dropped_recycle"
    assert v.counters == ("TcpExtPAWSPassive", "TcpExtListenDrops")


def nat(policy: str, lo: int = 2000, hi: int = 2003, hold: float = 120.0) -> SourceNat:
    return SourceNat([100], policy, (lo, hi), hold, 10.0, None, random.Random(1))


def test_nat_preserves_ports_and_holds_closed_flows() -> None:
    n = nat("preserve")
    e = n.translate((1, 2001, 9, 80), 0.0)
    assert e is not None and e.nat_port == 2001
    # another client with the same port gets another port toward the same destination
    e2 = n.translate((2, 2001, 9, 80), 0.0)
    assert e2 is not None and e2.nat_port != 2001
    n.close(e, 1.0, rst=False)
    # the held translation blocks port 2001 toward 9:80 for 120 s ...
    e3 = n.translate((3, 2001, 9, 80), 50.0)
    assert e3 is not None and e3.nat_port != 2001
    # ... but the same client reopening its own tuple takes it over (sTW -> sSS)
    e4 = n.translate((1, 2001, 9, 80), 60.0)
    assert e4 is not None and e4.nat_port == 2001 and n.stats["reopened"] == 1


def test_nat_runs_out_while_flows_are_held() -> None:
    n = nat("sequential")
    entries = [n.translate((k, 5000 + k, 9, 80), 0.0) for k in range(4)]
    assert all(entries)
    for e in entries:
        assert e is not None
        n.close(e, 1.0, rst=False)
    assert n.translate((10, 6000, 9, 80), 60.0) is None
    assert n.translate((10, 6000, 9, 80), 121.5) is not None
    assert n.translate((11, 6001, 8, 80), 60.0) is not None  # another destination is unaffected


def lb(**kw: object) -> L4LoadBalancer:
    args = {"backends": [(10, 80), (11, 80)], "scheduler": "round_robin", "snat": None,
            "snat_port_order": "sequential", "snat_port_range": (1024, 1027), "session_hold_s": 5.0,
            "ignore_msl": False, "held_session_syn": "same_backend", "rst_ends_session": True,
            "drop_server_ack_to_syn": False, "rng": random.Random(1)}
    args.update(kw)
    return L4LoadBalancer(**args)  # type: ignore[arg-type]


def test_lb_round_robin_hold_and_ignore_msl() -> None:
    b = lb()
    s1, s2 = b.syn(1, 100, 0.0), b.syn(1, 101, 0.0)
    assert s1 is not None and s2 is not None and {s1.backend, s2.backend} == {0, 1}
    assert b.syn(1, 100, 0.1) is s1  # retransmission: same session
    b.close(s1, 1.0)
    again = b.syn(1, 100, 3.0)  # held: same back end
    assert again is s1 and again.backend == s1.backend
    b2 = lb(ignore_msl=True)
    s = b2.syn(1, 100, 0.0)
    assert s is not None
    b2.close(s, 1.0)
    assert client_key(1, 100) not in b2.sessions


def test_lb_snat_ports_are_held_after_close() -> None:
    b = lb(snat=[50], backends=[(10, 80)])
    got = [b.syn(1, 100 + k, 0.0) for k in range(4)]
    assert [s.sport for s in got if s] == [1024, 1025, 1026, 1027]
    assert b.syn(1, 200, 0.0) is None and b.stats["snat_failed"] == 1
    for s in got:
        assert s is not None
        b.close(s, 1.0)
    assert b.syn(1, 201, 3.0) is None  # still held (5 s)
    assert b.syn(1, 201, 6.5) is not None


def test_lb_recycles_a_removed_session_as_a_new_life() -> None:
    b = lb()
    s1 = b.syn(1, 100, 0.0)
    assert s1 is not None
    gen = s1.gen
    b.client_rst(s1, 0.5)  # rst_ends_session: removed at once
    s2 = b.syn(1, 101, 1.0)
    assert s2 is s1 and s2.gen == gen + 1 and (s2.cport, s2.state) == (101, 0)
    assert b.sessions == {client_key(1, 101): s2} and sum(b.active) == 1


def test_lb_keeps_a_removed_session_while_its_expiry_entry_is_pending() -> None:
    b = lb(held_session_syn="drop_then_new")
    s = b.syn(1, 100, 0.0)
    assert s is not None
    b.close(s, 1.0)  # held until 6.0, an expiry entry filed
    assert b.syn(1, 100, 2.0) is None  # dropped, the session removed
    other = b.syn(1, 101, 2.5)
    assert other is not None and other is not s  # not reused: the entry still refers to it
    again = b.syn(1, 102, 7.0)  # the entry consumed: now it is free
    assert again is s and again.cport == 102 and b.stats["held_dropped"] == 1
