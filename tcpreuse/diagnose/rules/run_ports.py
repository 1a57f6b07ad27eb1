"""Rules for running out of ports: on the client, in a NAT, in a load balancer's SNAT."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule
from ..runfacts import cause_stats, first_at, keepalive_fix, os_of, pct, tw_at


def _budget_series(ev: Evidence) -> list[tuple[str, int, int]]:
    """(series key, budget, peak in use) of the client port series at their peak."""
    run = ev.run
    assert run is not None
    out = []
    for k, p in run.timeline.ports.items():
        peak = max(p.in_use) if p.in_use else 0
        out.append((k, p.budget, peak))
    return sorted(out, key=lambda x: -x[2] / max(x[1], 1))


@rule("client-port-exhaustion", needs={"run"})
def client_port_exhaustion(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "local_ports_exhausted")
    if st is None:
        return []
    n = run.attempt_count()
    client, dst, dport, ok_before = st.first_client, st.first_dst, st.first_dport, st.ok_before
    series = _budget_series(ev)
    budget = series[0][1] if series else None
    tw_client = tw_at(run, client, st.first_t)
    sc = ev.scenario
    errno = next(iter(st.errnos), "EADDRNOTAVAIL")
    closer_text = ""
    os = "linux"
    tw_len = 60.0
    offered = None
    if sc is not None:
        g = sc.group(run.hosts[client].group)
        os = os_of(g.profile)
        wls = [w for w in sc.workload if w.clients == g.name]
        offered = sum(w.connection_rate for w in wls) / g.count
        closes = {w.close for w in wls}
        if os == "windows":
            tw_len = float(g.effective_settings.get("TcpTimedWaitDelay", 240))
        elif os == "macos":
            tw_len = 2 * int(g.effective_settings.get("net.inet.tcp.msl", 15000)) / 1000
        if "client" in closes:
            closer_text = (f"The client closes first, so it keeps every 4-tuple in TIME_WAIT for "
                           f"{tw_len:.0f} s{' (TCP_TIMEWAIT_LEN, not tunable)' if os == 'linux' else ''}. ")
    scope = ("toward one destination (address, port): connect() needs a unique 4-tuple "
             "(__inet_hash_connect / __inet_check_established) and shares a local port only across "
             "different destinations" if os == "linux" else
             "for the whole host: the ephemeral pool is shared by all destinations")
    sustain = f"{budget / tw_len:,.1f}" if budget else "?"
    cause = (
        f"{closer_text}{client} has {budget:,} usable ports {scope}, so it can open at most "
        f"{budget:,} / {tw_len:.0f} s = {sustain} new connections/s"
        + (f" but the workload asks for {offered:,.0f}/s" if offered else "")
        + f". After {ok_before:,} connections (t = {st.first_t:.1f} s, {tw_client or 0:,} TIME_WAIT on the "
        f"client) connect() failed with {errno}: {st.failed:,} attempts ({pct(st.failed / n)})."
        if budget else f"connect() failed with {errno} on {client}: no free local port."
    )
    evidence = [
        EvidenceItem("failed connects", st.failed, f"{errno}, {pct(st.failed / n)} of attempts"),
        EvidenceItem("first failure", f"attempt #{st.first_index + 1:,} at t = {st.first_t:.1f} s ({client} -> {dst}:{dport})"),
        EvidenceItem("successful connections before it", ok_before),
        EvidenceItem("port budget", budget, series[0][0] if series else ""),
        EvidenceItem("client TIME_WAIT at first failure", tw_client),
    ]
    fixes: list[Fix] = []
    if sc is not None:
        g = sc.group(run.hosts[client].group)
        wl = [w for w in sc.workload if w.clients == g.name]
        wkey = (lambda f: f"workload.{f}") if len(sc.workload) == 1 else (lambda f: f"workload.{wl[0].name}.{f}")
        if os == "linux":
            fixes += [
                Fix(id="tw-reuse", title=f"tcp_tw_reuse=1 on {g.name} (connect() takes over TIME_WAIT "
                    "4-tuples older than 1 s; needs timestamps on both ends)",
                    set={f"{g.name}:net.ipv4.tcp_tw_reuse": 1}, commands=["sysctl -w net.ipv4.tcp_tw_reuse=1"]),
                Fix(id="port-range", title=f"Widen ip_local_port_range on {g.name} to 1024-65535",
                    set={f"{g.name}:net.ipv4.ip_local_port_range": "1024 65535"},
                    commands=["sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
                              "reserve service ports in net.ipv4.ip_local_reserved_ports"]),
                Fix(id="source-addresses", title=f"4 source addresses per host with IP_BIND_ADDRESS_NO_PORT ({g.name})",
                    set={f"host.{g.name}.addresses_per_host": 4, wkey("bind"): "address_no_port"},
                    commands=["bind(addr, 0) with setsockopt(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1) before connect()"]),
            ]
        elif os == "windows":
            fixes += [
                Fix(id="dynamicport", title=f"Widen the dynamic port range on {g.name} to 10000-65534",
                    set={f"{g.name}:netsh.ipv4.dynamicport.tcp.start": 10000,
                         f"{g.name}:netsh.ipv4.dynamicport.tcp.num": 55535},
                    commands=["netsh int ipv4 set dynamicport tcp start=10000 num=55535"]),
                Fix(id="timedwaitdelay", title=f"TcpTimedWaitDelay=30 on {g.name}",
                    set={f"{g.name}:TcpTimedWaitDelay": 30},
                    commands=["reg add HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters "
                              "/v TcpTimedWaitDelay /t REG_DWORD /d 30"]),
            ]
        ka = keepalive_fix(sc, wl[0].name if len(sc.workload) > 1 else None)
        if ka is not None:
            fixes.append(ka)
        fixes += [
            Fix(id="server-closes", title="Let the server close first (TIME_WAIT moves to the server)",
                set={wkey("close"): "server"}, commands=["HTTP: have the server send Connection: close"],
                caveat="Moves TIME_WAIT to the server, where Linux accepts a new SYN on it if its "
                "timestamp or ISN is newer (harmless for Linux clients; see the seed incident for "
                "clients without timestamps)."),
            Fix(id="linger0", title="Close with RST (SO_LINGER {1, 0}): no TIME_WAIT",
                set={wkey("close"): "client_rst"}, commands=["setsockopt(SO_LINGER, {l_onoff=1, l_linger=0})"],
                caveat="Unsent data is discarded and the peer sees ECONNRESET; TIME_WAIT's protection "
                "against delayed segments is lost."),
        ]
    return [Finding(id="client-port-exhaustion",
                    title=f"The client runs out of local ports ({errno})",
                    severity="critical", cause=cause, evidence=evidence, confidence=0.97, fixes=fixes,
                    hosts=[client])]


@rule("nat-port-exhaustion", needs={"run"})
def nat_port_exhaustion(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_dropped_nat")
    if st is None:
        return []
    sc = ev.scenario
    n = run.attempt_count()
    nat = sc.nat if sc is not None else None
    hold = nat.time_wait_s if nat else 120.0
    naddr = nat.addresses if nat else 1
    lo, hi = nat.port_range if nat else (1024, 65535)
    budget = naddr * (hi - lo + 1)
    cause = (
        f"The NAT translates every connection to one of {naddr} address(es) x {hi - lo + 1:,} ports "
        f"per destination, and a closed flow keeps its translation for {hold:.0f} s (conntrack "
        f"TIME_WAIT; nf_nat_used_tuple() counts held entries). That allows about {budget / hold:,.0f} "
        f"new connections/s per destination; beyond it SYNs are dropped at the NAT and clients "
        f"time out: {st.attempts:,} attempts hit it, {st.failed:,} failed."
    )
    fixes: list[Fix] = []
    if nat is not None:
        fixes = [
            Fix(id="nat-addresses", title=f"Give the NAT {naddr * 4} addresses", set={"nat.addresses": naddr * 4},
                commands=["add SNAT/MASQUERADE pool addresses (cloud: secondary IPs)"]),
            Fix(id="nat-tw-hold", title="Shorten the NAT's TIME_WAIT hold to 30 s", set={"nat.time_wait_s": 30.0},
                commands=["sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30",
                          "GCP: tcpTimeWaitTimeoutSec=30"]),
        ]
        ka = keepalive_fix(sc)
        if ka is not None:
            fixes.append(ka)
    return [Finding(id="nat-port-exhaustion", title="The NAT runs out of ports toward a destination",
                    severity="critical", cause=cause,
                    evidence=[EvidenceItem("SYNs dropped at the NAT", st.attempts, pct(st.attempts / n)),
                              first_at(st),
                              EvidenceItem("NAT translations available per destination", budget)],
                    confidence=0.9, fixes=fixes)]


@rule("lb-snat-exhaustion", needs={"run"})
def lb_snat_exhaustion(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_dropped_lb")
    if st is None:
        return []
    sc = ev.scenario
    lb = sc.lb if sc is not None else None
    fixes: list[Fix] = []
    text = f"The load balancer dropped {st.attempts:,} SYNs."
    if lb is not None and lb.snat:
        lo, hi = lb.snat_port_range
        text = (f"The load balancer source-NATs to {lb.snat_addresses} address(es) x {hi - lo + 1:,} ports "
                f"per back end and holds a closed session for {lb.session_hold_s:.0f} s; new sessions "
                f"found no free SNAT port: {st.attempts:,} SYNs dropped, {st.failed:,} attempts failed.")
        fixes = [Fix(id="lb-snat-addresses", title=f"{lb.snat_addresses * 4} SNAT addresses on the LB",
                     set={"lb.snat_addresses": lb.snat_addresses * 4}),
                 Fix(id="lb-ignore-msl", title="Reclaim sessions at close (ignore-tcp-msl)",
                     set={"lb.ignore_msl": True},
                     caveat="the real servers may still hold the 4-tuple in TIME_WAIT")]
    elif lb is not None and lb.held_session_syn in ("drop", "drop_then_new"):
        again = (" It drops the first SYN and expires the old entry, so the client's SYN "
                 "retransmission gets through a second later (IPVS conn_reuse_mode=1 before 5.9: "
                 "\"ipvs: drop first packet to redirect conntrack\")." if lb.held_session_syn == "drop_then_new"
                 else "")
        text = (f"New SYNs arrived on client 4-tuples whose session the load balancer still held "
                f"{lb.session_hold_s:.0f} s after close: {st.attempts:,} SYNs dropped, {st.failed:,} attempts "
                f"failed.{again}")
        fixes = [Fix(id="lb-ignore-msl", title="Reclaim sessions at close (ignore-tcp-msl)", set={"lb.ignore_msl": True},
                     commands=["IPVS: kernel >= 5.9, or sysctl net.ipv4.vs.conn_reuse_mode=0 (see caveat)"],
                     caveat="With IPVS conn_reuse_mode=0, reused ports stick to the old real server, even a "
                     "deleted one (kubernetes#81775).")]
        ka = keepalive_fix(sc)
        if ka is not None:
            fixes.append(ka)
        return [Finding(id="lb-held-session-drop", title="The load balancer drops SYNs on 4-tuples it still holds",
                        severity="warning" if not st.failed else "critical", cause=text,
                        evidence=[EvidenceItem("SYNs dropped at the LB", st.attempts),
                                  EvidenceItem("connects delayed by it", st.delayed),
                                  first_at(st)],
                        confidence=0.85, fixes=fixes)]
    return [Finding(id="lb-snat-exhaustion", title="The load balancer drops new SYNs",
                    severity="critical", cause=text,
                    evidence=[EvidenceItem("SYNs dropped at the LB", st.attempts),
                              first_at(st)],
                    confidence=0.85, fixes=fixes)]


@rule("syn-hit-established", needs={"run"})
def syn_hit_established(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    st = cause_stats(run, "syn_hit_established")
    if st is None:
        return []
    return [Finding(
        id="syn-hit-established", title="A NAT or load balancer reused a 4-tuple the server still has open",
        severity="warning",
        cause=("SYNs arrived on 4-tuples the server still had ESTABLISHED (a path element forgot the "
               "flow and reused its port). The server's challenge ACK made the client send a RST that "
               f"reset the old connection, then the SYN was retried: {st.attempts:,} attempts."),
        evidence=[EvidenceItem("SYNs on an open 4-tuple", st.attempts), EvidenceItem("failed", st.failed)],
        confidence=0.8, fixes=[])]

