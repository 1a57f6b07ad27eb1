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

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import by_client, median, os_guess, retry_delay_text, span
from ...findings import EvidenceItem, Finding, Fix
from ...model.verdicts import VERDICTS
from .. import fixes as fx
from ..base import Evidence, HostFacts, Mechanism
from ..judge import linux_hosts, num, pressure, profile_of, windows_pool
from ..runfacts import cause_stats, groups, os_of, pct, timestamps_on, tw_at_role
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
})

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


@TIMEWAIT.rule("run", "syn-hit-server-timewait")
def from_run(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_hit_timewait")
    paws = cause_stats(run, "syn_paws_timewait")
    if st is None and paws is None:
        return []
    n_att = len(run.attempts)
    s = st or paws
    assert s is not None
    hits = (st.attempts if st else 0) + (paws.attempts if paws else 0)
    failed = (st.failed if st else 0) + (paws.failed if paws else 0)
    delayed = (st.delayed if st else 0) + (paws.delayed if paws else 0)
    first_t = min(x.first_t for x in (st, paws) if x is not None)
    first_i = min(x.first_index for x in (st, paws) if x is not None)
    tw_onset = tw_at_role(run, "server", first_t)
    sc = ev.scenario
    offenders: list[str] = []
    rate: dict[str, float] = {}
    ts_text = ""
    cycle_text = ""
    if sc is not None:
        for g in groups(sc, "client"):
            os = os_of(g.profile)
            r = sum(w.connection_rate for w in sc.workload if w.clients == g.name) / g.count
            rate[g.name] = r
            if not timestamps_on(g.effective_settings, os):
                offenders.append(g.name)
        if offenders:
            ts_text = (" The clients (" + ", ".join(offenders) + ") send no TCP timestamps, so the "
                       "servers' TIME_WAIT is never recycled and tcp_timewait_state_process() can only "
                       "compare sequence numbers: a SYN is accepted only if its ISN is after the old "
                       "connection's rcv_nxt; otherwise the server answers with an ACK for the old "
                       "connection (TCP_TW_ACK).")
        from ...model.profiles import get_profile
        from ...model.settings import resolve_settings
        from ...model.stacks import port_range
        for g in groups(sc, "client"):
            lo, hi = port_range(get_profile(g.profile), resolve_settings(get_profile(g.profile), g.settings)[0])
            if rate.get(g.name):
                cyc = (hi - lo + 1) / rate[g.name]
                cycle_text = (f" Each {g.name} host opens {rate[g.name]:,.0f} connections/s from "
                              f"{hi - lo + 1:,} ephemeral ports, so a source port comes back every "
                              f"{cyc:.1f} s, sooner than the servers' 60 s TIME_WAIT.")
    retry_text = ""
    if s.connect_ms_p50 is not None:
        retry_text = (f" The client resets that ACK (RST, which kills the TIME_WAIT with tcp_rfc1337=0) "
                      f"and re-sends its SYN when its SYN timer fires: the delayed connects took "
                      f"{s.connect_ms_p50 / 1000:.1f} s (median).")
    fail_text = ""
    if failed:
        errs = ", ".join(f"{k} x{v:,}" for k, v in sorted((st.errnos if st else {}).items()))
        fail_text = (f" {failed:,} attempts failed ({errs or 'timeouts'}): their retried SYNs met "
                     "another TIME_WAIT for the same 4-tuple, or the client gave up first.")
    cause = (
        f"The servers close first, so they hold TIME_WAIT (60 s, TCP_TIMEWAIT_LEN) for every "
        f"4-tuple.{cycle_text} From attempt #{first_i + 1:,} (t = {first_t:.1f} s, with {tw_onset:,} "
        f"TIME_WAIT sockets on the servers) new SYNs reached a server TIME_WAIT socket for the same "
        f"4-tuple.{ts_text}{retry_text}{fail_text}"
    )
    evidence = [
        EvidenceItem("SYNs that hit a server TIME_WAIT", hits, f"{pct(hits / n_att)} of attempts"),
        EvidenceItem("first at", f"attempt #{first_i + 1:,}, t = {first_t:.1f} s"),
        EvidenceItem("server TIME_WAIT at onset", tw_onset),
        EvidenceItem("delayed (connected after a SYN retry)", delayed),
        EvidenceItem("failed", failed),
    ]
    if paws is not None:
        evidence.append(EvidenceItem("of which PAWS rejects (older TSval)", paws.attempts,
                                     "TcpExtPAWSEstab / PAWSTimewait"))
    if offenders:
        evidence.append(EvidenceItem("clients without TCP timestamps", ", ".join(offenders)))
    fixes = _run_fixes(ev, offenders, rate)
    sev = "critical" if failed else "warning"
    return [Finding(
        id="syn-hit-server-timewait",
        title="Client SYNs land on server TIME_WAIT sockets and get an ACK for the old connection",
        severity=sev, cause=cause, evidence=evidence, confidence=0.95 if sc is not None else 0.8,
        fixes=fixes, hosts=[h for h, i in run.hosts.items() if i.role == "server"])]


@TIMEWAIT.rule("capture", "capture-syn-hit-timewait")
def from_capture(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    a = an.attempts
    att = a["is_attempt"]
    old = att & (a["answer"] == flows.A_OLD_ACK)
    tw = old & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60)
    out: list[Finding] = []
    for client, rows in by_client(an, np.flatnonzero(tw)):
        mine = att & (a["orig"] == a["orig"][rows[0]])
        n_client = int(mine.sum())
        n_tw = int((mine & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60)).sum())
        n = rows.size
        no_ts = int((~a["syn_has_ts"][rows]).sum())
        paws = int((a["tw_verdict"][rows] == reuse.V_PAWS).sum())
        model_ack = int(np.isin(a["tw_verdict"][rows], (reuse.V_ACK_OLD, reuse.V_PAWS)).sum())
        rst = int((a["n_rst_orig_pre"][rows] > 0).sum())
        retried = rows[a["n_syn"][rows] > 1]
        delay = median((a["t_syn2"][retried] - a["t_syn"][retried]) * 1000)
        ok = int((~np.isnan(a["t_synack"][rows])).sum())
        servers = sorted({f"{an.addr(int(a['resp'][r]))}:{int(a['resp_port'][r])}" for r in rows[:200].tolist()})
        os = os_guess(an, rows)
        ts_text = ("they carried no timestamps" if no_ts == n else
                   f"{no_ts:,} of them carried no timestamps" if no_ts else "they carried timestamps")
        retry_text = (f"; the client reset it and retried its SYN {retry_delay_text(delay)} later" if delay is not None
                      else "")
        seed = no_ts >= 0.5 * n and paws < 0.5 * n
        cause = (
            f"{pct(n / max(n_client, 1))} of SYNs from {client} ({n:,} of {n_client:,}; {pct(n / max(n_tw, 1))} "
            f"of the {n_tw:,} that met a server TIME_WAIT) reused a 4-tuple the server had closed "
            f"{span(a['reuse_age_s'][rows])} earlier; {ts_text}; the server answered with an ACK for the "
            f"old connection{retry_text}."
            + (" This is the seed incident's signature." if seed else "")
            + " The server closed first, so it held TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN); a SYN for "
            "that 4-tuple is accepted only if it carries a newer timestamp or its sequence number is "
            "after the old connection's rcv_nxt (tcp_timewait_state_process()); otherwise the answer "
            "is an ACK for the old connection (TCP_TW_ACK), the client sends RST, and the connect "
            "waits for the next SYN retransmission."
        )
        if paws:
            cause += (f" {paws:,} of these SYNs carried a TSval older than the old connection's last "
                      "one (PAWS reject): several hosts share the address (NAT), or the client's "
                      "timestamp offset changed.")
        evidence = [
            EvidenceItem("SYNs answered by an ACK for the old connection", n, pct(n / max(n_client, 1))),
            EvidenceItem("time since the server closed that 4-tuple", span(a["reuse_age_s"][rows])),
            EvidenceItem("SYNs without timestamps", no_ts),
            EvidenceItem("model agrees (tcp_timewait_state_process: ACK, not accept)", model_ack,
                         pct(model_ack / n)),
            EvidenceItem("client RST after that ACK", rst),
            EvidenceItem("SYN retry delay (median)", retry_delay_text(delay) or "-"),
            EvidenceItem("connected in the end", ok, f"{n - ok:,} never connected"),
            EvidenceItem("servers", ", ".join(servers[:5]) + (" ..." if len(servers) > 5 else "")),
            EvidenceItem("client SYNs look like", os),
        ]
        fixes = fx.timewait_fixes(os, bool(no_ts))
        out.append(Finding(
            id="capture-syn-hit-timewait",
            title=f"SYNs from {client} land on the server's TIME_WAIT and get an ACK for the old connection",
            severity="critical" if ok < n else "warning",
            cause=cause, evidence=evidence,
            confidence=0.95 if model_ack >= 0.8 * n else 0.75,
            fixes=fixes, hosts=[client]))
    return out


@TIMEWAIT.rule("capture", "capture-timewait-reuse-accepted", name="accepted")
def accepted_from_capture(ev: Evidence) -> list[Finding]:
    """Reuse of a server TIME_WAIT 4-tuple that Linux accepted: worth knowing, harmless."""
    an = ev.require_capture()
    a = an.attempts
    m = a["is_attempt"] & (a["prev_tw"] == 2) & (a["reuse_age_s"] < 60) & (a["answer"] == flows.A_SYNACK)
    n = int(m.sum())
    if not n:
        return []
    rows = np.flatnonzero(m)
    acc = int((a["tw_verdict"][rows] == reuse.V_ACCEPT).sum())
    with_ts = int(a["syn_has_ts"][rows].sum())
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
        cause=(f"{n:,} SYNs reused a 4-tuple the server had closed {span(a['reuse_age_s'][rows])} earlier "
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


@TIMEWAIT.rule("trace", ("trace-syn-hit-timewait", "trace-timewait-paws"))
def from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    n, paws = count(doc, "old-ack"), count(doc, "tw-paws")
    if not n and not paws:
        return []
    out: list[Finding] = []
    if n:
        out.append(Finding(
            id="trace-syn-hit-timewait",
            title="SYNs land on TIME_WAIT sockets and get an ACK for the old connection (kernel trace)",
            severity="critical",
            cause=(f"The kernel answered {n:,} SYNs {window(doc)} with an ACK for the previous connection on the "
                   "same 4-tuple: each met a TIME_WAIT socket (tcp_timewait_state_process() -> TCP_TW_ACK) "
                   "because it carried no newer timestamp and its sequence number was not after the old "
                   "connection's rcv_nxt; the packet was then freed with SKB_DROP_REASON_NOT_SPECIFIED. "
                   "The client resets that ACK and its connect() waits for the next SYN retransmission "
                   "(1 s or more). No counter but TcpExtTW moves for this."),
            evidence=[EvidenceItem(VERDICTS["old-ack"], n),
                      EvidenceItem("TCP flags of those segments", ", ".join(
                          f"{r['flags']} {r['count']:,}" for r in doc.get("flags", []) if r["verdict"] == "old-ack")),
                      EvidenceItem("local endpoints (servers)", top(doc, "locals", "endpoint", "old-ack")),
                      EvidenceItem("4-tuples", top(doc, "tuples", "tuple", "old-ack"))],
            confidence=0.95,
            fixes=fx.timewait_fixes("unknown", True),
            hosts=hosts(doc, "old-ack")))
    if paws:
        out.append(Finding(
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
            confidence=0.9, fixes=fx.timewait_fixes("unknown", False), hosts=hosts(doc, "tw-paws")))
    return out
