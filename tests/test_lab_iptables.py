"""The iptables-legacy backend: rules with the nftables rulesets' meaning, conntrack NEW
events parsed from bytes, and (root) the same lab results through iptables as through
nftables on the running kernel. The UML side is in tests/test_kernels_uml.py."""

from __future__ import annotations

import os
import shutil
import socket
import struct

import pytest

from tcpreuse.errors import LabError
from tcpreuse.lab import ctevents
from tcpreuse.lab.iptables import choose, lb_rules, loss_rules, nat_rules, translate
from tcpreuse.lab.plan import build_plan
from tcpreuse.lab.realise import realise
from tcpreuse.validate import suite


def nla(kind: int, payload: bytes, nested: bool = False) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind | (0x8000 if nested else 0)) + payload + b"\0" * (-n % 4)


def tuple_attr(kind: int, src: str, dst: str, sport: int, dport: int, proto: int = 6) -> bytes:
    ip = nla(1, socket.inet_aton(src)) + nla(2, socket.inet_aton(dst))
    pr = nla(1, bytes([proto])) + nla(2, struct.pack("!H", sport)) + nla(3, struct.pack("!H", dport))
    return nla(kind, nla(1, ip, True) + nla(2, pr, True), True)


def ct_new(orig: tuple[str, str, int, int], reply: tuple[str, str, int, int], proto: int = 6) -> bytes:
    body = b"\x02\x00\x00\x00" + tuple_attr(1, *orig, proto=proto) + tuple_attr(2, *reply, proto=proto)
    return struct.pack("=IHHII", 16 + len(body), 1 << 8, 0, 0, 0) + body


def test_a_new_event_gives_the_client_side_key_and_the_server_side_view() -> None:
    # client 10.1.0.1:40000 -> VIP 203.0.113.10:8080, DNAT to 10.100.0.2, SNAT to 192.0.2.1:40000
    m = ct_new(("10.1.0.1", "203.0.113.10", 40000, 8080), ("10.100.0.2", "192.0.2.1", 8080, 40000))
    assert ctevents.parse_message(m) == (("10.1.0.1", 40000), ("10.100.0.2", "192.0.2.1", 40000))
    two = ctevents.split_messages(m + m)
    assert len(two) == 2 and all(ctevents.parse_message(x) for x in two)
    # UDP, other message types and truncated messages are not flows
    assert ctevents.parse_message(ct_new(("1.1.1.1", "2.2.2.2", 1, 2), ("2.2.2.2", "1.1.1.1", 2, 1), 17)) is None
    assert ctevents.parse_message(m[:30]) is None
    # a DESTROY event names the same flow
    d = m[:4] + struct.pack("=H", 1 << 8 | 2) + m[6:]
    assert ctevents.parse_event(d) == ("D", ("10.1.0.1", 40000), ("10.100.0.2", "192.0.2.1", 40000))
    assert ctevents.parse_message(d) is None
    text = ("N 1000000000 10.1.0.1 40000 10.100.0.2 192.0.2.1 40000\n"
            "D 1500000000 10.1.0.1 40000 10.100.0.2 192.0.2.1 40000\n"
            "N 2000000000 10.1.0.1 40000 10.100.0.1 192.0.2.1 40000\n# lost 2\ngarbage\n")
    flows, lost = ctevents.parse_lines(text)
    assert lost == 2
    assert [(f.start, f.end, f.view) for f in flows.by_key[("10.1.0.1", 40000)]] == [
        (1.0, 1.5, ("10.100.0.2", "192.0.2.1", 40000)), (2.0, float("inf"), ("10.100.0.1", "192.0.2.1", 40000))]


def test_rules_say_what_the_nftables_rulesets_say() -> None:
    nat = nat_rules(["198.51.100.1", "198.51.100.2"], (1024, 65535), "fully-random")
    assert "-A POSTROUTING -o up0 -p tcp -j SNAT --to-source 198.51.100.1-198.51.100.2:1024-65535 --random-fully" in nat
    assert nat.startswith("*nat\n") and nat.rstrip().endswith("COMMIT")
    backs = [("10.100.0.1", 80), ("10.100.0.2", 80), ("10.100.0.3", 80)]
    rr = lb_rules("203.0.113.10", 8080, backs, "round_robin", ["192.0.2.1"], (40000, 40999), "")
    lines = [ln for ln in rr.splitlines() if ln.startswith("-A PREROUTING")]
    # nth over the connections the earlier rules left: 1 of 3, then 1 of 2, then the rest
    assert ["--every 3 --packet 0" in lines[0], "--every 2 --packet 0" in lines[1],
            "statistic" not in lines[2]] == [True, True, True]
    assert [ln.rsplit(" ", 1)[1] for ln in lines] == ["10.100.0.1:80", "10.100.0.2:80", "10.100.0.3:80"]
    assert "-m conntrack --ctstatus DNAT -j SNAT --to-source 192.0.2.1:40000-40999" in rr
    rnd = lb_rules("203.0.113.10", 8080, backs, "random", None, (1, 2), "")
    assert "--probability 0.3333333333" in rnd and "--probability 0.5000000000" in rnd
    assert "POSTROUTING -" not in rnd
    with pytest.raises(LabError, match="source_hash"):
        lb_rules("203.0.113.10", 8080, backs, "source_hash", None, (1, 2), "")
    assert "-A FORWARD -m statistic --mode random --probability 0.0100000000 -j DROP" in loss_rules(0.01)


def test_the_plan_is_translated_host_by_host() -> None:
    sc = suite.load("v-dnat-lb")
    r = realise(sc)
    r.netfilter = "iptables"
    plan = build_plan(sc, r, "abc123")
    lb = plan.hosts["lb"]
    assert lb.nft is None and lb.ipt is not None and "DNAT --to-destination" in lb.ipt
    assert not any(h.nft for h in plan.hosts.values())
    r2 = realise(sc)
    plan2 = build_plan(sc, r2, "abc124")
    assert plan2.hosts["lb"].nft and plan2.hosts["lb"].ipt is None
    translate(plan2, sc)  # the same backends, in the same order
    assert plan2.hosts["lb"].ipt == lb.ipt


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(LabError, match="unknown netfilter backend"):
        choose("pf")
    assert choose("iptables") == "iptables"


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
@pytest.mark.skipif(not (shutil.which("ip") and shutil.which("iptables-legacy-restore")),
                    reason="needs ip and iptables-legacy")
def test_nat_and_lb_through_iptables_agree_with_the_model_on_the_running_kernel() -> None:
    from tcpreuse.validate.run import Options, validate_many

    rep = validate_many(["v-dnat-lb", "v-snat"], opts=Options(netfilter="iptables", keep_results=True))
    bad = {o.name: o.error or [(r.metric, r.sim, r.lab) for r in o.rows if r.agree is False]
           for o in rep.outcomes if not o.agree}
    assert not bad, bad
    lb = rep.outcomes[0].lab
    assert lb is not None and "lb" in lb.meta["iptables"] and not lb.meta["nftables"]
    # round robin through the LB, and every attempt's server-side view recorded from conntrack
    assert lb.attempts.counts("server") == {"server-1": 300, "server-2": 300}
    assert all(p for p in lb.attempts.column("srv_dst"))
