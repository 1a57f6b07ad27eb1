"""TIME_WAIT collisions: a new SYN meets a TIME_WAIT socket of the same 4-tuple.

The seed incident: the server closes first and holds each 4-tuple 60 s
(TCP_TIMEWAIT_LEN); a client whose source ports come back sooner sends a SYN that
tcp_timewait_state_process() accepts only with a newer timestamp or a sequence number
after the old rcv_nxt, and otherwise answers with an ACK for the old connection. Read
from a run, a capture (the ACK for the old connection on the wire), live hosts (Windows
clients without timestamps next to Linux servers holding TIME_WAIT) and a kernel trace
(the TCP_TW_ACK and TIME_WAIT PAWS verdicts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import (
    Block,
    both,
    by_client,
    count_where,
    from_client,
    median,
    os_guess,
    retry_delay_text,
    rows_where,
    span,
    values_where,
)
from ...findings import EvidenceItem, Finding, Fix
from ...model.profiles import get_profile
from ...model.stacks import port_range
from ...model.verdicts import VERDICTS
from .. import fixes as fx
from ..base import SEEN, Evidence, Fact, HostFacts, Mechanism
from ..judge import linux_hosts, num, pressure, profile_of, windows_pool
from ..runfacts import cause_stats, first_at, groups, os_of, pct, timestamps_on, tw_at_role
from ..tracefacts import count, hosts, top, window

TIMEWAIT = Mechanism("timewait", "TIME_WAIT collision", {
    "syn-hit-server-timewait": "a run's client SYNs landed on server TIME_WAIT sockets (ACK for the old connection, "
                               "or a PAWS reject)",
    "capture-syn-hit-timewait": "captured SYNs on a 4-tuple the server closed < 60 s earlier got an ACK for the old "
                                "connection",
    "capture-timewait-reuse-accepted": "captured SYNs reused a server TIME_WAIT 4-tuple and were accepted",
    "windows-client-no-timestamps": "a Windows client sends no timestamps toward Linux servers that close first",
    "server-timewait-harmless": "many TIME_WAIT sockets on a server, none of them at risk",
    "trace-syn-hit-timewait": "traced SYNs answered by TCP_TW_ACK at a TIME_WAIT socket",
    "trace-timewait-paws": "traced SYNs dropped by PAWS at a TIME_WAIT socket",
}, ids={"run": "syn-hit-server-timewait", "capture": "capture-syn-hit-timewait", "trace": "trace-syn-hit-timewait"})


@dataclass(frozen=True)
class TimeWaitCollision(Fact):
    """SYNs that met a server TIME_WAIT socket of their 4-tuple, as one kind of evidence shows
    them; None: that evidence cannot know."""

    collisions: int = 0  # SYNs answered by an ACK for the old connection (or PAWS-rejected)
    peer: str = ""  # the client, when the evidence names one
    attempts: int | None = None  # attempts in the evidence (from this client)
    met_timewait: int | None = None  # ... of which met a server TIME_WAIT (accepted or not)
    paws: int | None = None  # collisions rejected by PAWS (an older TSval)
    failed: int | None = None  # never connected
    first: str = ""  # the first attempt that met it
    server_tw: int | None = None  # TIME_WAIT sockets on the servers then
    age: str = ""  # how long after the server closed the 4-tuple it came back
    no_ts: int | None = None  # colliding SYNs without timestamps
    without_ts: tuple[str, ...] = ()  # clients configured without timestamps
    model_agrees: int | None = None  # the model's tcp_timewait_state_process() says ACK too
    client_rst: int | None = None  # the client's RST after that ACK
    retry_ms: float | None = None  # the client's retried SYN, after (median)
    rate_per_s: float | None = None  # each client's new connections per second ...
    ports: int | None = None  # ... from this many ephemeral ports
    client_os: str = "unknown"
    window: str = ""  # the observation window (a trace)
    confidence: float = 0.95  # how surely the evidence shows it


@TIMEWAIT.builder
def build(f: TimeWaitCollision) -> list[Finding]:
    n = f.collisions
    seen = "; ".join(s for s in (
        (f"{pct(n / max(f.attempts, 1))} of SYNs{' from ' + f.peer if f.peer else ''} ({n:,} of {f.attempts:,}"
         + (f"; {pct(n / max(f.met_timewait, 1))} of the {f.met_timewait:,} that met a server TIME_WAIT"
            if f.met_timewait is not None else "") + ")" if f.attempts else f"{n:,} SYNs")
        + (f" reused a 4-tuple the server had closed {f.age} earlier" if f.age else " met a server TIME_WAIT")
        + " and got an ACK for the old connection",
        f"the first at {f.first}" + (f", with {f.server_tw:,} TIME_WAIT sockets on the servers"
                                     if f.server_tw is not None else "") if f.first else "",
        "" if f.no_ts is None else "they carried no timestamps" if f.no_ts == n else
        f"{f.no_ts:,} of them carried no timestamps" if f.no_ts else "they carried timestamps",
        f"the client reset that ACK and retried its SYN {retry_delay_text(f.retry_ms)} later (median)"
        if f.retry_ms is not None else "",
        f"{f.failed:,} never connected (their retried SYNs met another TIME_WAIT for the same 4-tuple, or the "
        "client gave up first)" if f.failed else "") if s)
    cycle = (f" Each client opens {f.rate_per_s:,.0f} connections/s from {f.ports:,} ephemeral ports, so a source "
             f"port comes back every {f.ports / f.rate_per_s:.1f} s, sooner than the servers' 60 s TIME_WAIT."
             if f.rate_per_s and f.ports else "")
    cause = (
        "The server closed first, so it held TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN) for every 4-tuple." + cycle
        + f" {SEEN.get(f.source, 'Here')}{' ' + f.window if f.window else ''}: {seen}."
        + (" This is the seed incident's signature." if f.no_ts is not None and f.no_ts >= 0.5 * n
           and (f.paws or 0) < 0.5 * n else "")
        + (f" The clients ({', '.join(f.without_ts)}) send no TCP timestamps, so the servers' TIME_WAIT is never "
           "recycled and only sequence numbers are compared." if f.without_ts else "")
        + " A SYN for a 4-tuple in TIME_WAIT is accepted only if it carries a newer timestamp or its sequence "
        "number is after the old connection's rcv_nxt (tcp_timewait_state_process()); otherwise the answer is an "
        "ACK for the old connection (TCP_TW_ACK; no counter but TcpExtTW moves), the client sends RST (which "
        "kills the TIME_WAIT with tcp_rfc1337=0), and the connect waits for the next SYN retransmission (1 s "
        "or more)."
        + (f" {f.paws:,} of these SYNs carried a TSval older than the old connection's last one (PAWS reject): "
           "several hosts share the address (NAT), or the client's timestamp offset changed." if f.paws else ""))
    items = [EvidenceItem(label, value, detail) for label, value, detail in (
        ("SYNs answered by an ACK for the old connection", n, pct(n / f.attempts) if f.attempts else ""),
        ("time since the server closed that 4-tuple", f.age or None, ""),
        ("SYNs without timestamps", f.no_ts, ""),
        ("model agrees (tcp_timewait_state_process: ACK, not accept)", f.model_agrees,
         pct(f.model_agrees / max(n, 1)) if f.model_agrees is not None else ""),
        ("first at", f.first or None, ""),
        ("server TIME_WAIT at onset", f.server_tw, ""),
        ("client RST after that ACK", f.client_rst, ""),
        ("SYN retry delay (median)", retry_delay_text(f.retry_ms) or None, ""),
        ("never connected", f.failed, ""),
        ("of which PAWS rejects (older TSval)", f.paws, "TcpExtPAWSEstab / PAWSTimewait"),
        ("clients without TCP timestamps", ", ".join(f.without_ts) or None, "")) if value is not None]
    return [Finding(
        id=TIMEWAIT.ids[f.source],
        title=f"{'SYNs from ' + f.peer if f.peer else 'Client SYNs'} land on the server's TIME_WAIT and get an "
              "ACK for the old connection",
        severity="warning" if f.failed == 0 else "critical", cause=cause, evidence=items + list(f.context),
        confidence=f.confidence, hosts=list(f.hosts),
        fixes=list(f.fixes) or fx.timewait_fixes(f.client_os, f.no_ts is None or f.no_ts > 0))]


TS_CAVEAT_RUN = ("With timestamps the server recycles or accepts the SYN by its newer TSval; behind a shared NAT "
                 "address with tcp_tw_recycle=1 this makes things worse (see the NAT variant).")


def _run_fixes(ev: Evidence, offenders: list[str], rate: dict[str, float]) -> list[Fix]:
    """Timestamps on the clients without them; keep-alive per workload; more ports or
    hosts for those clients; and what the seed write-up recommended (re-simulated to
    show whether it works)."""
    sc = ev.scenario
    clients = [g for g in groups(sc, "client") if g.name in offenders]
    out = [fx.client_timestamps(os_of(g.profile), g.name, caveat=TS_CAVEAT_RUN if os_of(g.profile) == "windows"
                                else "") for g in clients]
    if sc is None:
        out.append(fx.keepalive_advice())
    else:
        out += [k for w in sc.workload if (k := fx.keepalive(sc, w.name)) is not None]
    for g in clients:
        os = os_of(g.profile)
        if os == "windows":
            r = rate.get(g.name, 0)
            out.append(fx.widen_dynamic_ports(g.name, caveat=(
                f"Ports then cycle in {fx.WIN_DYN_NUM:,} / rate seconds; at {r:,.0f}/s per client that is "
                f"{fx.WIN_DYN_NUM / max(rate.get(g.name, 1), 1):.0f} s (must exceed the servers' 60 s TIME_WAIT).")))
        elif os == "linux":
            out.append(fx.widen_port_range(g.name))
        out.append(fx.more_client_hosts(g.name, g.count))
    if sc is None:
        return out
    for g in groups(sc, "server"):
        if int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0)) == 1:
            out.append(fx.recycle_off(g.name, title=f"Turn tcp_tw_recycle off on {g.name} (the write-up's advice)"))
    if sc.lb is not None and not sc.lb.ignore_msl:
        out.append(fx.lb_ignore_msl(["A10: slb template virtual-port <t> / ignore-tcp-msl"], lb_name=sc.lb.name))
    return out


@TIMEWAIT.extractor("run")
def from_run(ev: Evidence) -> TimeWaitCollision | None:
    run = ev.require_run()
    found = [x for x in (cause_stats(run, "syn_hit_timewait"), cause_stats(run, "syn_paws_timewait")) if x]
    if not found:
        return None
    paws = cause_stats(run, "syn_paws_timewait")
    first = min(found, key=lambda x: x.first_index)
    sc = ev.scenario
    clients = groups(sc, "client")
    rate = {g.name: sum(w.connection_rate for w in sc.workload if w.clients == g.name) / g.count
            for g in clients} if sc is not None else {}
    offenders = [g.name for g in clients if not timestamps_on(g.effective_settings, os_of(g.profile))]
    lo, hi = port_range(get_profile(clients[-1].profile), clients[-1].effective_settings) if clients else (0, -1)
    delayed = [x.connect_ms_p50 for x in found if x.connect_ms_p50 is not None]
    return TimeWaitCollision(
        "run", hosts=tuple(h for h, i in run.hosts.items() if i.role == "server"),
        collisions=sum(x.attempts for x in found), attempts=run.attempt_count(), paws=paws.attempts if paws else None,
        failed=sum(x.failed for x in found), first=str(first_at(first).value),
        server_tw=tw_at_role(run, "server", first.first_t), without_ts=tuple(offenders),
        retry_ms=delayed[0] if delayed else None, rate_per_s=rate.get(clients[-1].name) if clients else None,
        ports=hi - lo + 1 if clients else None, confidence=0.95 if sc is not None else 0.8,
        context=(EvidenceItem("delayed (connected after a SYN retry)", sum(x.delayed for x in found)),
                 *(EvidenceItem("errors", e) for e in [", ".join(
                     f"{k} x{v:,}" for x in found for k, v in sorted(x.errnos.items()))] if e)),
        fixes=tuple(_run_fixes(ev, offenders, rate)))


@TIMEWAIT.extractor("capture")
def from_capture(ev: Evidence) -> list[TimeWaitCollision]:
    an = ev.require_capture()
    a = an.attempts

    def met(b: Block) -> np.ndarray:
        return b["is_attempt"] & (b["prev_tw"] == 2) & (b["reuse_age_s"] < 60)

    out = []
    for client, rows in by_client(an, rows_where(an, lambda b: met(b) & (b["answer"] == flows.A_OLD_ACK))):
        ck = a["orig"][rows[0]]
        n = rows.size
        model_ack = int(np.isin(a["tw_verdict"][rows], (reuse.V_ACK_OLD, reuse.V_PAWS)).sum())
        retried = rows[a["n_syn"][rows] > 1]
        first = rows[:200]  # their columns read once (a table in files maps a column per read)
        servers = sorted({f"{an.addr(k)}:{p}" for k, p in zip(a["resp"][first].tolist(), a["resp_port"][first].tolist(),
                                                              strict=True)})
        os = os_guess(an, rows)
        out.append(TimeWaitCollision(
            "capture", hosts=(client,), peer=client, collisions=n,
            attempts=count_where(an, from_client(ck)),
            met_timewait=count_where(an, both(met, from_client(ck))), paws=int((a["tw_verdict"][rows] == reuse.V_PAWS).sum()),
            failed=n - int((~np.isnan(a["t_synack"][rows])).sum()), age=span(a["reuse_age_s"][rows]),
            no_ts=int((~a["syn_has_ts"][rows]).sum()), model_agrees=model_ack,
            client_rst=int((a["n_rst_orig_pre"][rows] > 0).sum()),
            retry_ms=median((a["t_syn2"][retried] - a["t_syn"][retried]) * 1000), client_os=os,
            confidence=0.95 if model_ack >= 0.8 * n else 0.75,
            context=(EvidenceItem("servers", ", ".join(servers[:5]) + (" ..." if len(servers) > 5 else "")),
                     EvidenceItem("client SYNs look like", os))))
    return out


@TIMEWAIT.extractor("trace")
def from_trace(ev: Evidence) -> TimeWaitCollision | None:
    doc = ev.trace or {}
    n = count(doc, "old-ack")
    if not n:
        return None
    return TimeWaitCollision(
        "trace", hosts=tuple(hosts(doc, "old-ack")), collisions=n, window=window(doc),
        context=(EvidenceItem("TCP flags of those segments", ", ".join(
                     f"{r['flags']} {r['count']:,}" for r in doc.get("flags", []) if r["verdict"] == "old-ack")),
                 EvidenceItem("local endpoints (servers)", top(doc, "locals", "endpoint", "old-ack")),
                 EvidenceItem("4-tuples", top(doc, "tuples", "tuple", "old-ack"))))


@TIMEWAIT.rule("capture", "capture-timewait-reuse-accepted", name="accepted")
def accepted_from_capture(ev: Evidence) -> list[Finding]:
    """Reuse of a server TIME_WAIT 4-tuple that Linux accepted: worth knowing, harmless."""
    an = ev.require_capture()

    def m(b: Block) -> np.ndarray:
        return b["is_attempt"] & (b["prev_tw"] == 2) & (b["reuse_age_s"] < 60) & (b["answer"] == flows.A_SYNACK)

    n = count_where(an, m)
    if not n:
        return []
    acc = count_where(an, lambda b: m(b) & (b["tw_verdict"] == reuse.V_ACCEPT))
    with_ts = count_where(an, lambda b: m(b) & b["syn_has_ts"])
    ages = values_where(an, m, "reuse_age_s")
    try:
        age = span(ages)
    finally:
        ages.close()
    if with_ts == n:
        why = ("all of them carried timestamps, and a newer TSval is accepted whatever the sequence number; "
               "this holds as long as the clients keep sending timestamps from one clock.")
    elif with_ts == 0:
        why = ("none carried timestamps, so each was accepted only because its ISN happened to be after the old "
               "rcv_nxt: clients with random ISNs lose that bet about half the time, and the losers get an ACK "
               "for the old connection.")
    else:
        why = (f"{with_ts:,} carried timestamps (accepted by the newer TSval); the others were accepted only "
               "because their ISN was after the old rcv_nxt.")
    return [Finding(
        id="capture-timewait-reuse-accepted",
        title="Clients reuse 4-tuples the server still holds in TIME_WAIT; the server accepted them",
        severity="info",
        cause=(f"{n:,} SYNs reused a 4-tuple the server had closed {age} earlier "
               f"(still in its 60 s TIME_WAIT) and were answered with a SYN-ACK. Linux accepts such a SYN "
               f"when its TSval is newer or its sequence number is after the old rcv_nxt; {why}"),
        evidence=[EvidenceItem("reused while in server TIME_WAIT, accepted", n),
                  EvidenceItem("model says accept", acc, pct(acc / n)),
                  EvidenceItem("with timestamps", with_ts)],
        confidence=0.9)]


LINUX_TW = 60


SERVER_TW = 100  # TIME_WAIT entries on the service port that show the server closes first


def _linux_servers_for(ev: Evidence, ports: set[int]) -> list[tuple[HostFacts, int]]:
    """Linux hosts in the evidence serving one of `ports` (all Linux servers if `ports` is
    empty), with the TIME_WAIT entries they hold on those ports."""
    out = []
    for h in ev.hosts.values():
        if h.os != "linux":
            continue
        by_port: dict[int, int] = h.extra.get("incoming_time_wait_by_port", {})
        lports = {lu.port for lu in h.listeners}
        if ports and ports & lports:
            out.append((h, sum(n for p, n in by_port.items() if p in ports)))
        elif not ports and (h.role == "server" or lports):
            out.append((h, sum(by_port.values()) if by_port else h.time_wait or 0))
    return out


@TIMEWAIT.rule("hosts", "windows-client-no-timestamps", name="windows")
def from_windows_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in ev.hosts.values():
        if h.os != "windows":
            continue
        ts = h.settings.get("netsh.tcp.timestamps")
        if ts not in ("disabled", "allowed"):
            continue
        start, n = windows_pool(h)
        servers = _linux_servers_for(ev, {t.dport for t in h.tuples})
        top = h.tuples[0] if h.tuples else None
        rto = h.settings.get("netsh.tcp.initialrto")
        items = [
            EvidenceItem("RFC 1323 Timestamps", ts, "netsh int tcp show global"
                         + ("; 'allowed' accepts but never offers them in its own SYN" if ts == "allowed" else "")),
            EvidenceItem("dynamic port range", f"{start}-{start + n - 1} ({n:,} ports)"),
            EvidenceItem("new connections/s above which a port returns within a Linux server's 60 s "
                         "TIME_WAIT", round(n / LINUX_TW, 1), f"{n:,} ports / 60 s"),
        ]
        if rto is not None:
            items.append(EvidenceItem("Initial RTO (ms)", rto, "the delay a client pays per SYN that "
                                      "meets a server TIME_WAIT"))
        if top is not None:
            items.append(EvidenceItem("busiest destination", f"{top.dst}:{top.dport}",
                                      f"{top.established:,} established, {top.time_wait:,} TIME_WAIT here"))
            if top.time_wait < top.established:
                items.append(EvidenceItem("who closes first", "the server (few TIME_WAIT on this client)"))
        for s, tw in servers[:3]:
            items.append(EvidenceItem(f"Linux server {s.name}: TIME_WAIT on the service port", tw,
                                      "the server closes first; "
                                      f"tcp_tw_recycle={s.settings.get('net.ipv4.tcp_tw_recycle', 'n/a')}"))
        server_tw = any(tw >= SERVER_TW for _, tw in servers)
        recycle = any(s.settings.get("net.ipv4.tcp_tw_recycle") == 1 for s, _ in servers)
        caveat = ("If the Linux servers run tcp_tw_recycle=1 (kernels before 4.12) and several clients "
                  "reach them through one NAT/SNAT address, turn tcp_tw_recycle off first: with "
                  "timestamps on, clients with unrelated clocks behind one address get their SYNs "
                  "silently dropped.")
        out.append(Finding(
            id="windows-client-no-timestamps",
            title="Windows sends SYNs without TCP timestamps: reused ports collide with Linux server TIME_WAIT"
                  + (f" ({num(max(tw for _, tw in servers))} TIME_WAIT on the server)" if server_tw else ""),
            severity="critical" if server_tw else "warning",
            cause=("This Windows host does not offer TCP timestamps. A Linux server that closes first holds "
                   "each 4-tuple in TIME_WAIT for 60 s; a client opening more than "
                   f"{n / LINUX_TW:,.0f} connections/s through its {n:,} dynamic ports reuses a port within "
                   "that time, and its SYN reaches the server's TIME_WAIT. Without a timestamp Linux "
                   "accepts it only if the SYN's sequence number is above the old connection's rcv_nxt "
                   "(about half the time for unrelated ISNs); otherwise it answers with an ACK for the "
                   "old connection, the client sends RST and retries its SYN a full initial RTO later "
                   f"({rto or 3000} ms), or the request times out. With timestamps the newer timestamp "
                   "makes Linux accept the SYN at once."),
            evidence=items, confidence=0.85 if server_tw else 0.65,
            fixes=[fx.client_timestamps("windows", caveat=caveat + (" (tcp_tw_recycle=1 is set on a server here.)"
                                                                     if recycle else "")),
                   fx.reuse_connections(title="Reuse connections (keep-alive / pooling) in the client")],
            hosts=[h.name] + [s.name for s, _ in servers[:3]]))
    return out


@TIMEWAIT.rule("hosts", "server-timewait-harmless")
def harmless_from_hosts(ev: Evidence) -> list[Finding]:
    """Answers the FAQ "too many TIME_WAIT on my server" when nothing is actually at risk."""
    out = []
    for h in linux_hosts(ev):
        if h.role != "server" or (h.time_wait or 0) < 10000:
            continue
        if any(pressure(t) >= 0.5 for t in h.tuples):
            continue
        maxb = h.settings.get("net.ipv4.tcp_max_tw_buckets")
        p = profile_of(h)
        out.append(Finding(
            id="server-timewait-harmless",
            title=f"{h.time_wait:,} TIME_WAIT sockets on a server: they do not use ephemeral ports",
            severity="info",
            cause=("The server closes first, so it holds the TIME_WAIT. Those sockets sit on the listening "
                   "port, each with a different client address/port: they consume no ephemeral ports and "
                   "about a few hundred bytes each. They only matter if a client (or a NAT/load balancer) "
                   "reuses the same 4-tuple within 60 s: then its SYN meets the TIME_WAIT (see the "
                   "timestamp findings)."),
            evidence=[EvidenceItem("TIME_WAIT sockets", h.time_wait),
                      EvidenceItem("net.ipv4.tcp_max_tw_buckets", maxb),
                      EvidenceItem("kernel", p.name if p else "unknown")],
            confidence=0.8, hosts=[h.name]))
    return out


@TIMEWAIT.rule("trace", "trace-timewait-paws", name="paws")
def paws_from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    paws = count(doc, "tw-paws")
    if not paws:
        return []
    return [Finding(
        id="trace-timewait-paws",
        title="SYNs on TIME_WAIT 4-tuples are dropped by PAWS (older timestamps; kernel trace)",
        severity="critical",
        cause=(f"The kernel dropped {paws:,} SYNs {window(doc)} at TIME_WAIT sockets because their "
               "timestamp was older than the old connection's last one (tcp_timewait_state_process(): "
               "tcp_paws_reject(), SKB_DROP_REASON_TCP_RFC7323_TW_PAWS). Several clients share the source "
               "address (NAT) with unrelated timestamp clocks, or a client's timestamp offset changed."),
        evidence=[EvidenceItem(VERDICTS["tw-paws"], paws),
                  EvidenceItem("local endpoints (servers)", top(doc, "locals", "endpoint", "tw-paws")),
                  EvidenceItem("4-tuples", top(doc, "tuples", "tuple", "tw-paws"))],
        confidence=0.9, fixes=fx.timewait_fixes("unknown", False), hosts=hosts(doc, "tw-paws"))]
