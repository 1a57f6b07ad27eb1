"""Every diagnosis rule, fed the evidence it reads: it finds its mechanism where the
evidence shows it, and says nothing where the evidence is healthy.

Each module under tcpreuse/diagnose/rules/ is one mechanism with one rule per kind of
evidence (run, capture, hosts, trace): an extractor feeding the mechanism's one builder,
or a plain rule. CASES gives each rule a positive case (evidence
that shows the mechanism, and the finding ids it must give) and the harness adds the
negative one (healthy evidence of the same kind). A rule registered without a case fails
test_every_rule_has_a_case; a finding id a rule emits without declaring it fails in
FunctionRule.check; docs/findings.md must list exactly the declared ids.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tcpreuse.capture.synth import Seg, handshake
from tcpreuse.diagnose.base import Evidence, declared_findings, diagnose, load_rules
from tcpreuse.host.records import HostFacts, ListenerUse, TupleUse

T0 = 1_700_000_000.0
C, S = "10.0.0.5", "10.0.0.1"
Builders = dict[str, Callable[..., Evidence]]


@dataclass(frozen=True)
class Case:
    kind: str  # the evidence kind the rule reads
    make: Callable[[Builders], Evidence]
    expect: tuple[str, ...]  # finding ids the positive case gives (at least these)


# ---- crafted captures -------------------------------------------------------------------

def seed_reuse(n: int = 90, ports: int = 30, gap: float = 0.4) -> list[Seg]:
    """Clients without timestamps, sequential ports coming back within 60 s; the server
    closes first. A reused SYN whose ISN is not after the old rcv_nxt gets an ACK for the
    old connection (then RST, retry 3 s later); the others are accepted."""
    rng = random.Random(7)
    segs: list[Seg] = []
    last: dict[int, tuple[int, int, float]] = {}
    t = T0
    for k in range(n):
        t += gap
        port = 49152 + k % ports
        isn, sisn = rng.randrange(1 << 32), rng.randrange(1 << 32)
        start = t
        old = last.get(port)
        if old is not None and t - old[2] < 60 and not (0 < ((isn - old[0]) & 0xFFFFFFFF) < 0x80000000):
            rcv_nxt, snd_nxt, _ = old
            segs += [Seg(t, C, port, S, 9313, "S", isn, 0, win=8192, mss=1460, wscale=8, sackok=True),
                     Seg(t + 0.0002, S, 9313, C, port, "A", snd_nxt, rcv_nxt),
                     Seg(t + 0.0004, C, port, S, 9313, "R", rcv_nxt, 0)]
            start = t + 3.0
        conn = handshake(start, C, port, S, 9313, isn, sisn, ts=None, wscale=8)
        segs += conn
        last[port] = ((isn + 12) & 0xFFFFFFFF, (sisn + 22) & 0xFFFFFFFF, start + 0.001)
    return segs


def two_clocks(answered: bool) -> list[Seg]:
    """Hosts with unrelated TSval clocks behind 203.0.113.7; the server closes first. Not
    `answered`: the slow clock's SYNs go unanswered, as tcp_tw_recycle drops them."""
    nat, segs, port = "203.0.113.7", [], 30000
    for k in range(40):
        t = T0 + k * 0.5
        fast = k % 2 == 1
        tsv = int((5_000_000 if fast else 100_000) + 1000 * (t - T0))
        port += 1
        if answered or fast or k == 0:
            segs += handshake(t, nat, port, S, 80, 1000 * k + 7, 50_000 + k, ts=(tsv, 9_000_000 + k))
        else:
            segs += [Seg(t + d, nat, port, S, 80, "S", 1000 * k + 7, 0, ts=(tsv + int(d * 1000), 0), mss=1460)
                     for d in (0.0, 1.0, 3.0)]
    return segs


def full_queue() -> list[Seg]:
    """A listener that answers most SYNs but drops every third until its retransmission."""
    segs: list[Seg] = []
    for k in range(30):
        t, port, tsv = T0 + k * 0.1, 41000 + k, 100 * k
        if k % 3 == 2:
            segs += [Seg(t, C, port, S, 8080, "S", 7 + k, 0, ts=(tsv, 0), mss=1460)]
            segs += handshake(t + 1.0, C, port, S, 8080, 7 + k, 70 + k, ts=(tsv + 1000, 5))
        else:
            segs += handshake(t, C, port, S, 8080, 7 + k, 70 + k, ts=(tsv, 5))
    return segs


def refused() -> list[Seg]:
    return [Seg(T0 + k, C, 42000 + k, S, 8081, "S", 1, 0) for k in range(3)] + \
        [Seg(T0 + k + 0.0001, S, 8081, C, 42000 + k, "RA", 0, 2) for k in range(3)]


def unanswered() -> list[Seg]:
    """SYNs to a server that answers none, then a later connection elsewhere (so the
    capture runs on after them)."""
    dead = "10.0.0.9"
    segs = [Seg(T0 + k + d, C, 43000 + k, dead, 80, "S", 5, 0) for k in range(3) for d in (0.0, 1.0, 3.0)]
    return segs + handshake(T0 + 10, C, 44000, S, 80, 1, 2)


def rst_close() -> list[Seg]:
    """Established connections the client ends with RST after the exchange."""
    segs: list[Seg] = []
    for k in range(10):
        conn = handshake(T0 + k, C, 45000 + k, S, 80, 100 * k, 900 + k)[:5]
        segs += [*conn, Seg(T0 + k + 0.01, C, 45000 + k, S, 80, "RA", 100 * k + 11, 900 + k + 21)]
    return segs


def still_open_reuse() -> list[Seg]:
    """A connection that is never closed, then a SYN on its 4-tuple: a challenge ACK."""
    segs: list[Seg] = []
    for k in range(3):
        port = 46000 + k
        segs += handshake(T0 + k, C, port, S, 80, 100, 900)[:5]
        segs += [Seg(T0 + 20 + k, C, port, S, 80, "S", 5000, 0),
                 Seg(T0 + 20 + k + 0.0002, S, 80, C, port, "A", 900 + 21, 111),
                 Seg(T0 + 20 + k + 0.0004, C, port, S, 80, "R", 111, 0)]
    return segs


def client_block() -> list[Seg]:
    """A client that closes first and uses each port of a dense block once."""
    segs: list[Seg] = []
    for k in range(20):
        segs += handshake(T0 + 0.1 * k, C, 40000 + k, S, 80, 100 + k, 900 + k, ts=(k, 7), server_closes=False)
    return segs + handshake(T0 + 10, "10.0.0.6", 50000, S, 80, 1, 2)


def healthy_capture() -> list[Seg]:
    return [s for k in range(4) for s in handshake(T0 + k, C, 47000 + k, S, 80, 10 * k, 90 + k, ts=(k, 5))]


# ---- hosts ------------------------------------------------------------------------------

def linux(name: str = "h", **kw: Any) -> HostFacts:
    settings = {"net.ipv4.tcp_timestamps": 1, "net.ipv4.tcp_tw_reuse": 2, **kw.pop("settings", {})}
    return HostFacts(name=name, profile="linux-6.8", settings=settings, **kw)


def windows(name: str = "w", ts: str = "disabled", **kw: Any) -> HostFacts:
    return HostFacts(name=name, os="windows", profile="windows-2022", settings={"netsh.tcp.timestamps": ts}, **kw)


def tup(established: int, time_wait: int, budget: int, **kw: Any) -> TupleUse:
    return TupleUse(src=C, dst=S, dport=80, established=established, time_wait=time_wait, budget=budget, **kw)


SNAT = {"pools": [], "time_wait_s": 120,
        "tuples": [{"budget": 1000, "in_use": 950, "dst": S, "dport": 80, "nat_addr": "203.0.113.1",
                    "ports": [1024, 2023], "established": 10, "other": 0, "time_wait": 940, "sources": 5,
                    "pool": None}]}


def healthy_hosts(b: Builders) -> Evidence:
    """An idle Linux host and a Windows client with timestamps on: nothing to say."""
    return b["hosts"](linux("quiet", window_s=1.0, counters={"TcpActiveOpens": 10}, time_wait=5,
                            tuples=[tup(3, 2, 28232)]),
                      windows("win", ts="enabled", tuples=[tup(3, 2, 16384)]))


# ---- the cases --------------------------------------------------------------------------

CASES: dict[str, Case | tuple[Case, ...]] = {
    # ports
    "ports.run": Case("run", lambda b: b["run"]({"local_ports_exhausted": (30, 0)}), ("client-port-exhaustion",)),
    "ports.capture": (Case("capture", lambda b: b["capture"](seed_reuse()), ("capture-port-cycle",)),
                      Case("capture", lambda b: b["capture"](client_block()), ("capture-port-exhaustion",))),
    "ports.hosts": Case("hosts", lambda b: b["hosts"](linux(tuples=[tup(10, 290, 300, seconds_to_exhaustion=0)])),
                        ("tuple-port-exhaustion",)),
    "ports.hosts.windows": Case("hosts", lambda b: b["hosts"](windows(tuples=[tup(1000, 14000, 16384)])),
                                ("windows-port-pool-pressure",)),
    "ports.trace": Case("trace", lambda b: b["trace"](reasons={("connect-error", "EADDRNOTAVAIL"): 40}),
                        ("trace-connect-eaddrnotavail",)),
    # port_alloc
    "port_alloc.hosts.slow-path": Case("hosts", lambda b: b["hosts"](linux(
        tuples=[tup(150, 0, 200)], extra={"port_budget": {"port_alg": "parity", "fast_parity": 100, "usable": 200}})),
        ("connect-slow-path",)),
    "port_alloc.hosts": Case("hosts", lambda b: b["hosts"](linux(extra={"port_budget": {
        "range": [32768, 60998], "listener_ports_unreserved": [40000], "port_alg": "parity"}})),
        ("port-range-overlaps-listeners", "port-range-same-parity")),
    "port_alloc.trace": Case("trace", lambda b: b["trace"](reasons={("bind-error", "EADDRINUSE"): 3}),
                             ("trace-bind-eaddrinuse",)),
    # timewait
    "timewait.run": Case("run", lambda b: b["run"]({"syn_hit_timewait": (2, 10)}), ("syn-hit-server-timewait",)),
    "timewait.capture": Case("capture", lambda b: b["capture"](seed_reuse()), ("capture-syn-hit-timewait",)),
    "timewait.capture.accepted": Case("capture", lambda b: b["capture"](seed_reuse()),
                                      ("capture-timewait-reuse-accepted",)),
    "timewait.hosts.windows": Case("hosts", lambda b: b["hosts"](
        windows(tuples=[tup(100, 5, 16384)]),
        linux("srv", role="server", listeners=[ListenerUse("0.0.0.0", 80, 0, 128)],
              extra={"incoming_time_wait_by_port": {80: 5000}})), ("windows-client-no-timestamps",)),
    "timewait.hosts": Case("hosts", lambda b: b["hosts"](linux(role="server", time_wait=20000)),
                           ("server-timewait-harmless",)),
    "timewait.trace": Case("trace", lambda b: b["trace"]({"old-ack": 5, "tw-paws": 2}), ("trace-syn-hit-timewait",)),
    "timewait.trace.paws": Case("trace", lambda b: b["trace"]({"old-ack": 5, "tw-paws": 2}), ("trace-timewait-paws",)),
    # recycle
    "recycle.run": Case("run", lambda b: b["run"]({"syn_dropped_recycle": (5, 5)},
                                                  counters={"srv": {"TcpExtPAWSPassive": 12}}), ("tw-recycle-paws-drop",)),
    "recycle.capture": Case("capture", lambda b: b["capture"](two_clocks(answered=False)),
                            ("capture-tw-recycle-drops",)),
    "recycle.capture.risk": Case("capture", lambda b: b["capture"](two_clocks(answered=True)),
                                 ("capture-tw-recycle-risk",)),
    "recycle.hosts": Case("hosts", lambda b: b["hosts"](linux(role="server", settings={"net.ipv4.tcp_tw_recycle": 1})),
                          ("tw-recycle-enabled",)),
    "recycle.hosts.paws": Case("hosts", lambda b: b["hosts"](linux(window_s=1.0, counters={"TcpExtPAWSEstab": 10})),
                               ("paws-rejects-rising",)),
    # listen
    "listen.run": Case("run", lambda b: b["run"]({"syn_dropped_listen_overflow": (0, 8)},
                                                 counters={"srv": {"TcpExtListenOverflows": 8}}), ("listen-overflow",)),
    "listen.capture": Case("capture", lambda b: b["capture"](full_queue()), ("capture-listen-overflow",)),
    "listen.hosts": Case("hosts", lambda b: b["hosts"](linux(role="server",
                                                             listeners=[ListenerUse("0.0.0.0", 80, 128, 128)])),
                         ("listen-queue-overflow",)),
    "listen.trace": Case("trace", lambda b: b["trace"]({"listen-overflow": 7, "synack-retransmit": 7}),
                         ("trace-listen-overflow",)),
    # tw_buckets
    "tw_buckets.run": Case("run", lambda b: b["run"](counters={"srv": {"TcpExtTCPTimeWaitOverflow": 50}}),
                           ("tw-bucket-overflow",)),
    "tw_buckets.hosts": Case("hosts", lambda b: b["hosts"](linux(settings={"net.ipv4.tcp_max_tw_buckets": 1000},
                                                                 extra={"tw_minisockets": 1000})),
                             ("timewait-bucket-overflow",)),
    # nat_lb
    "nat_lb.run.nat": Case("run", lambda b: b["run"]({"syn_dropped_nat": (10, 0)}), ("nat-port-exhaustion",)),
    "nat_lb.run.lb": (Case("run", lambda b: b["run"]({"syn_dropped_lb": (10, 0)}), ("lb-snat-exhaustion",)),
                      Case("run", lambda b: b["run"]({"syn_dropped_lb": (0, 10)}, scenario="ipvs-conn-reuse"),
                           ("lb-held-session-drop",))),
    "nat_lb.run.reuse": Case("run", lambda b: b["run"]({"syn_hit_established": (0, 4)}), ("syn-hit-established",)),
    "nat_lb.capture": Case("capture", lambda b: b["capture"](still_open_reuse()), ("capture-syn-hit-established",)),
    "nat_lb.hosts.snat": Case("hosts", lambda b: b["hosts"](linux(role="nat", extra={"snat": SNAT})),
                              ("snat-pool-exhaustion",)),
    "nat_lb.hosts.conntrack": Case("hosts", lambda b: b["hosts"](linux(conntrack={"count": 950, "max": 1000})),
                                   ("conntrack-near-full",)),
    # handshake
    "handshake.hosts": Case("hosts", lambda b: b["hosts"](linux(role="client", window_s=1.0, counters={
        "TcpActiveOpens": 100, "TcpExtTCPSynRetrans": 50})), ("connect-handshakes-failing",)),
    "handshake.capture.refused": Case("capture", lambda b: b["capture"](refused()), ("capture-refused",)),
    "handshake.capture": Case("capture", lambda b: b["capture"](unanswered()), ("capture-syn-unanswered",)),
    "handshake.trace": Case("trace", lambda b: b["trace"](reasons={("connect-error", "ECONNREFUSED"): 4}),
                            ("trace-connect-failures",)),
    # close
    "close.capture": Case("capture", lambda b: b["capture"](rst_close()), ("capture-rst-close",)),
    # settings
    "settings.hosts.tw-reuse": (
        Case("hosts", lambda b: b["hosts"](linux(settings={"net.ipv4.tcp_tw_reuse": 1, "net.ipv4.tcp_timestamps": 0})),
             ("tw-reuse-without-timestamps",)),
        Case("hosts", lambda b: b["hosts"](linux(settings={"net.ipv4.tcp_tw_reuse": 1}, tuples=[
            tup(50, 200, 300, peer_timestamps={"with": 0, "without": 50}, tw_reuse_applies=False)])),
             ("tw-reuse-peer-without-timestamps",))),
    "settings.hosts.fin-timeout": Case("hosts", lambda b: b["hosts"](linux(settings={"net.ipv4.tcp_fin_timeout": 30})),
                                       ("fin-timeout-does-not-shorten-timewait",)),
    "settings.hosts.fd-limits": Case("hosts", lambda b: b["hosts"](linux(
        settings={"fs.file-nr": (950, 0, 1000), "fs.file-max": 1000},
        extra={"processes": [{"name": "srv", "pid": 7, "nofile_soft": 1024, "nofile_hard": 4096, "fds": 1000}]})),
        ("file-table-near-full", "process-near-fd-limit")),
    # coverage
    "coverage.capture": Case("capture", lambda b: b["capture"](healthy_capture(), truncate=7), ("capture-incomplete",)),
    "coverage.trace": Case("trace", lambda b: b["trace"]({"tw-accepted": 3}, lost=12), ("trace-lost-events",)),
}

HEALTHY: dict[str, Callable[[Builders], Evidence]] = {
    "run": lambda b: b["run"](),
    "capture": lambda b: b["capture"](healthy_capture()),
    "hosts": healthy_hosts,
    "trace": lambda b: b["trace"]({"tw-accepted": 3}),  # a reuse the kernel accepted: nothing wrong
}

RULES = load_rules()
POSITIVE = [(rid, i, c) for rid, cs in CASES.items() for i, c in enumerate(cs if isinstance(cs, tuple) else (cs,))]


def test_every_rule_has_a_case_for_each_finding() -> None:
    assert sorted(CASES) == sorted(RULES)
    for rid, _, case in POSITIVE:
        assert RULES[rid].evidence == case.kind, rid
    for rid, r in RULES.items():
        assert set(r.emits) == {f for x, _, c in POSITIVE if x == rid for f in c.expect}, rid


@pytest.mark.parametrize(("rid", "i", "case"), POSITIVE, ids=[f"{rid}-{i}" for rid, i, _ in POSITIVE])
def test_rule_finds_its_mechanism(rid: str, i: int, case: Case, evidence: Builders) -> None:
    r = RULES[rid]
    ev = case.make(evidence)
    got = r.check(ev)  # raises if it emits an id it does not declare
    ids = {f.id for f in got}
    assert set(case.expect) <= ids, (rid, ids)
    for f in got:
        assert f.source == ev.source and f.cause and f.evidence, (rid, f.id)
        assert len({fx.id for fx in f.fixes}) == len(f.fixes), (rid, f.id, [fx.id for fx in f.fixes])


@pytest.mark.parametrize("rid", sorted(CASES))
def test_rule_is_silent_on_healthy_evidence(rid: str, evidence: Builders) -> None:
    r = RULES[rid]
    assert r.check(HEALTHY[r.evidence](evidence)) == []


def test_finding_ids_are_declared_once_and_documented() -> None:
    """docs/findings.md is the JSON contract: every declared finding id, under its
    mechanism, with the evidence kinds whose rules emit it."""
    declared = declared_findings()  # raises if two mechanisms declare one id
    doc = (Path(__file__).parent.parent / "docs" / "findings.md").read_text()
    doc = doc.split("## Finding ids")[1].split("## Fixes")[0]
    rows: dict[str, tuple[str, str]] = {}
    mech = ""
    for line in doc.splitlines():
        if m := re.match(r"### `(\w+)`", line):
            mech = m.group(1)
        elif m := re.match(r"\| `([a-z0-9-]+)` \| ([a-z, ]+) \|", line):
            rows[m.group(1)] = (mech, m.group(2))
    assert sorted(rows) == sorted(declared)
    for fid, m in declared.items():
        kinds = ", ".join(sorted({r.evidence for r in RULES.values() if fid in r.emits}))
        assert rows[fid] == (m.name, kinds), fid


def test_every_declared_finding_has_a_rule_that_emits_it() -> None:
    emitted = {fid for r in RULES.values() for fid in r.emits}
    assert emitted == set(declared_findings())


def test_diagnose_runs_the_rules_of_the_evidence_present_and_only_those_asked(evidence: Builders) -> None:
    """One Evidence with a trace and a run: each mechanism's rule for each kind fires; `only`
    narrows by mechanism, rule id or finding id."""
    ev = evidence["run"]({"syn_dropped_listen_overflow": (0, 8)}, counters={"srv": {"TcpExtTCPTimeWaitOverflow": 5}})
    ev.trace = evidence["trace"]({"listen-overflow": 7}).trace
    ids = {f.id for f in diagnose(ev)}
    assert ids == {"listen-overflow", "trace-listen-overflow", "tw-bucket-overflow"}
    assert {f.id for f in diagnose(ev, only={"listen"})} == {"listen-overflow", "trace-listen-overflow"}
    assert {f.id for f in diagnose(ev, only={"tw_buckets.run"})} == {"tw-bucket-overflow"}
    assert {f.id for f in diagnose(ev, only={"trace-listen-overflow"})} == {"trace-listen-overflow"}


def test_a_new_evidence_kind_is_an_extractor_not_a_rule(evidence: Builders, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of fact records: teach `timewait` to read live hosts (TcpExtPAWSTimewait: SYNs
    a TIME_WAIT socket rejected by PAWS, answered with an ACK for the old connection) with one
    extractor and a declared finding id; the mechanism's one builder words the finding."""
    from tcpreuse.diagnose.base import REGISTRY
    from tcpreuse.diagnose.rules.timewait import TIMEWAIT, TimeWaitCollision

    monkeypatch.setitem(TIMEWAIT.findings, "host-timewait-paws", "a live host's TIME_WAIT sockets reject SYNs by PAWS")
    monkeypatch.setitem(TIMEWAIT.ids, "hosts", "host-timewait-paws")

    def from_hosts(ev: Evidence) -> list[TimeWaitCollision]:
        return [TimeWaitCollision("hosts", hosts=(h.name,), collisions=n, paws=n, window=f"in {h.window_s:g} s")
                for h in ev.hosts.values() if (n := h.counters.get("TcpExtPAWSTimewait", 0))]

    rule = TIMEWAIT.extractor("hosts", name="paws-counter")(from_hosts)
    try:
        ev = evidence["hosts"](linux("srv", role="server", window_s=2.0, counters={"TcpExtPAWSTimewait": 14}))
        (f,) = [x for x in diagnose(ev) if x.id == "host-timewait-paws"]
        assert f.source == "doctor" and f.hosts == ["srv"] and f.severity == "critical"
        assert "On this host in 2 s: 14 SYNs met a server TIME_WAIT" in f.cause
        assert "14 of these SYNs carried a TSval older than the old connection's last one" in f.cause
        assert {(e.label, e.value) for e in f.evidence} >= {("SYNs answered by an ACK for the old connection", 14),
                                                             ("of which PAWS rejects (older TSval)", 14)}
        assert {"keepalive", "client-timestamps-linux"} <= {x.id for x in f.fixes}
        assert rule.check(HEALTHY["hosts"](evidence)) == []
    finally:
        del REGISTRY[rule.id]
