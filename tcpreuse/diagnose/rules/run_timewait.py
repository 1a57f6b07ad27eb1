"""Rules for SYNs that meet old 4-tuples: server TIME_WAIT, PAWS, tcp_tw_recycle drops.

They read a RunResult (simulate or lab); fixes are expressed as scenario overrides when a
scenario is present, so the what-if engine can prove them.
"""

from __future__ import annotations

from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule
from ..runfacts import (
    cause_stats,
    first_at,
    groups,
    keepalive_fix,
    os_of,
    pct,
    timestamps_on,
    tw_at_role,
)


def _client_ts_fixes(ev: Evidence, offenders: list[str]) -> list[Fix]:
    fixes: list[Fix] = []
    sc = ev.scenario
    for g in groups(sc, "client"):
        if g.name not in offenders:
            continue
        if os_of(g.profile) == "windows":
            fixes.append(Fix(
                id=f"{g.name}-timestamps", title=f"Enable TCP timestamps on the Windows clients ({g.name})",
                set={f"{g.name}:netsh.tcp.timestamps": "enabled"},
                commands=["netsh int tcp set global timestamps=enabled",
                          "PowerShell: Set-NetTCPSetting -SettingName InternetCustom -Timestamps Enabled"],
                caveat="With timestamps the server recycles or accepts the SYN by its newer TSval; "
                "behind a shared NAT address with tcp_tw_recycle=1 this makes things worse "
                "(see the NAT variant)."))
        elif os_of(g.profile) == "linux":
            fixes.append(Fix(
                id=f"{g.name}-timestamps", title=f"Enable TCP timestamps on {g.name}",
                set={f"{g.name}:net.ipv4.tcp_timestamps": 1},
                commands=["sysctl -w net.ipv4.tcp_timestamps=1"]))
        else:
            fixes.append(Fix(
                id=f"{g.name}-timestamps", title=f"Enable RFC 1323 timestamps on {g.name}",
                set={f"{g.name}:net.inet.tcp.rfc1323": 1},
                commands=["sysctl -w net.inet.tcp.rfc1323=1"]))
    return fixes


def _workload_fixes(ev: Evidence) -> list[Fix]:
    sc = ev.scenario
    if sc is None:
        return [Fix(id="keepalive", title="Reuse connections (keep-alive) instead of one per request",
                    commands=["HTTP/1.1 keep-alive or a connection pool in the client"])]
    fixes = [keepalive_fix(sc, w.name) for w in sc.workload]
    return [f for f in fixes if f is not None]


def _more_ports_fixes(ev: Evidence, offenders: list[str], rate: dict[str, float]) -> list[Fix]:
    out = []
    for g in groups(ev.scenario, "client"):
        if g.name not in offenders:
            continue
        if os_of(g.profile) == "windows":
            out.append(Fix(
                id=f"{g.name}-dynamicport", title=f"Widen the Windows dynamic port range on {g.name} to 10000-65534",
                set={f"{g.name}:netsh.ipv4.dynamicport.tcp.start": 10000,
                     f"{g.name}:netsh.ipv4.dynamicport.tcp.num": 55535},
                commands=["netsh int ipv4 set dynamicport tcp start=10000 num=55535"],
                caveat="Ports then cycle in 55,535 / rate seconds; at "
                f"{rate.get(g.name, 0):,.0f}/s per client that is {55535 / max(rate.get(g.name, 1), 1):.0f} s "
                "(must exceed the servers' 60 s TIME_WAIT)."))
        elif os_of(g.profile) == "linux":
            out.append(Fix(
                id=f"{g.name}-portrange", title=f"Widen ip_local_port_range on {g.name} to 1024-65535",
                set={f"{g.name}:net.ipv4.ip_local_port_range": "1024 65535"},
                commands=["sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
                          "and reserve listening ports: net.ipv4.ip_local_reserved_ports"]))
        out.append(Fix(
            id=f"{g.name}-more-hosts", title=f"Spread the load over 3x as many client hosts/addresses ({g.name})",
            set={f"host.{g.name}.count": g.count * 3}, commands=["add load generators or source addresses"]))
    return out


def _writeup_fixes(ev: Evidence) -> list[Fix]:
    """What the seed write-up recommended; re-simulated to show whether they work."""
    sc = ev.scenario
    out: list[Fix] = []
    if sc is None:
        return out
    for g in groups(sc, "server"):
        if int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0)) == 1:
            out.append(Fix(id=f"{g.name}-no-recycle", title=f"Turn tcp_tw_recycle off on {g.name} (the write-up's advice)",
                           set={f"{g.name}:net.ipv4.tcp_tw_recycle": 0},
                           commands=["sysctl -w net.ipv4.tcp_tw_recycle=0"]))
    if sc.lb is not None and not sc.lb.ignore_msl:
        out.append(Fix(id="lb-ignore-msl", title=f"Load balancer: reclaim sessions at close (ignore-tcp-msl on {sc.lb.name})",
                       set={"lb.ignore_msl": True},
                       commands=["A10: slb template virtual-port <t> / ignore-tcp-msl"]))
    return out


@rule("syn-hit-server-timewait", needs={"run"})
def syn_hit_server_timewait(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_hit_timewait")
    paws = cause_stats(run, "syn_paws_timewait")
    if st is None and paws is None:
        return []
    n_att = run.attempt_count()
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
    fixes = (_client_ts_fixes(ev, offenders) + _workload_fixes(ev) + _more_ports_fixes(ev, offenders, rate)
             + _writeup_fixes(ev))
    sev = "critical" if failed else "warning"
    return [Finding(
        id="syn-hit-server-timewait",
        title="Client SYNs land on server TIME_WAIT sockets and get an ACK for the old connection",
        severity=sev, cause=cause, evidence=evidence, confidence=0.95 if sc is not None else 0.8,
        fixes=fixes, hosts=[h for h, i in run.hosts.items() if i.role == "server"])]


@rule("tw-recycle-paws-drop", needs={"run"})
def tw_recycle_drop(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_dropped_recycle")
    passive = run.host_counter("TcpExtPAWSPassive")
    if st is None and not passive:
        return []
    n = run.attempt_count()
    servers = [h for h, c in run.counters.items() if c.get("TcpExtPAWSPassive")]
    evidence = [EvidenceItem("TcpExtPAWSPassive (SYNs dropped)", passive,
                             "passive connections rejected because of time stamp")]
    if st is not None:
        evidence += [
            EvidenceItem("attempts with a dropped SYN", st.attempts, pct(st.attempts / n)),
            EvidenceItem("failed", st.failed, ", ".join(f"{k} x{v:,}" for k, v in st.errnos.items())),
            first_at(st),
        ]
    sc = ev.scenario
    nat_text = ""
    if sc is not None and sc.nat is not None:
        nat_text = (f" The clients reach the servers through {sc.nat.addresses} NAT address(es), so "
                    "hosts with unrelated timestamp clocks share one cache entry.")
    cause = (
        "tcp_tw_recycle=1 on the servers keeps, per peer address, the last TSval seen when a "
        "connection with timestamps entered TIME_WAIT (tcp_remember_stamp). For 60 s (TCP_PAWS_MSL) "
        "a SYN from that address whose TSval is older by more than 1 (TCP_PAWS_WINDOW) — or, on "
        "3.17-4.11, that carries no timestamp — is dropped silently (tcp_conn_request / "
        f"tcp_peer_is_proven): no SYN-ACK, no RST; the client retransmits and times out.{nat_text}"
    )
    fixes = []
    for g in groups(sc, "server"):
        if int(g.effective_settings.get("net.ipv4.tcp_tw_recycle", 0)):
            fixes.append(Fix(id=f"{g.name}-no-recycle", title=f"Turn tcp_tw_recycle off on {g.name}",
                             set={f"{g.name}:net.ipv4.tcp_tw_recycle": 0},
                             commands=["sysctl -w net.ipv4.tcp_tw_recycle=0",
                                       "and remove it from /etc/sysctl.conf (it no longer exists from 4.12)"]))
    if not fixes:
        fixes.append(Fix(id="no-recycle", title="Turn tcp_tw_recycle off on the servers",
                         commands=["sysctl -w net.ipv4.tcp_tw_recycle=0"]))
    return [Finding(id="tw-recycle-paws-drop",
                    title="tcp_tw_recycle silently drops SYNs whose timestamps look old",
                    severity="critical", cause=cause, evidence=evidence, confidence=0.95, fixes=fixes,
                    hosts=servers)]
