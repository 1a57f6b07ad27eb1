"""Rules for the server's queues and the TIME_WAIT table limit."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule
from ..runfacts import cause_stats, groups, pct


@rule("listen-overflow", needs={"run"})
def listen_overflow(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    syn = cause_stats(run, "syn_dropped_listen_overflow")
    ack = cause_stats(run, "ack_dropped_listen_overflow")
    overflows = run.host_counter("TcpExtListenOverflows")
    drops = run.host_counter("TcpExtListenDrops")
    if syn is None and ack is None and not overflows:
        return []
    n = run.attempt_count()
    hit = (syn.attempts if syn else 0) + (ack.attempts if ack else 0)
    failed = (syn.failed if syn else 0) + (ack.failed if ack else 0)
    sc = ev.scenario
    fixes: list[Fix] = []
    detail = ""
    for g in groups(sc, "server"):
        somax = int(g.effective_settings.get("net.core.somaxconn", 4096))
        eff = min(g.backlog, somax)
        detail = (f" The listen backlog is min(listen({g.backlog}), net.core.somaxconn={somax}) = {eff}; "
                  f"{g.workers} application workers at {g.service_ms:g} ms per request accept at most "
                  f"{g.workers / max(g.service_ms / 1000, 1e-9):,.0f} connections/s per server.")
        fixes += [
            Fix(id=f"{g.name}-backlog", title=f"Raise the backlog on {g.name} to 4096 (listen() and somaxconn)",
                set={f"host.{g.name}.backlog": 4096, f"{g.name}:net.core.somaxconn": 4096},
                commands=["sysctl -w net.core.somaxconn=4096", "listen(fd, 4096) in the server"],
                caveat="A longer queue absorbs bursts; it does not add capacity."),
            Fix(id=f"{g.name}-workers", title=f"Double the application workers on {g.name}",
                set={f"host.{g.name}.workers": g.workers * 2}),
            Fix(id=f"{g.name}-more-servers", title=f"Add back ends ({g.name} x2)",
                set={f"host.{g.name}.count": g.count * 2}),
        ]
    cause = ("The server accepts connections more slowly than they arrive, so its accept queue "
             "fills (sk_acceptq_is_full: ack_backlog > max_ack_backlog). Then tcp_conn_request() "
             "drops new SYNs and tcp_v4_syn_recv_sock() refuses final ACKs (ListenOverflows, "
             "ListenDrops); clients retransmit their SYN (Linux before 6.5 after 1, 3, 7 s; 6.5+ every "
             "second at first, tcp_syn_linear_timeouts) or, connected, wait for their request."
             + detail)
    return [Finding(
        id="listen-overflow", title="The server's listen queue overflows", severity="critical" if failed else "warning",
        cause=cause,
        evidence=[EvidenceItem("TcpExtListenOverflows", overflows), EvidenceItem("TcpExtListenDrops", drops),
                  EvidenceItem("attempts delayed or failed by it", hit, pct(hit / n) if n else ""),
                  EvidenceItem("failed", failed)],
        confidence=0.9, fixes=fixes)]


@rule("tw-bucket-overflow", needs={"run"})
def tw_bucket_overflow(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    n = run.host_counter("TcpExtTCPTimeWaitOverflow")
    if not n:
        return []
    hosts = [h for h, c in run.counters.items() if c.get("TcpExtTCPTimeWaitOverflow")]
    sc = ev.scenario
    fixes = []
    for h in hosts:
        g = sc.group(run.hosts[h].group) if sc is not None else None
        if g is not None:
            cur = int(g.effective_settings.get("net.ipv4.tcp_max_tw_buckets", 0))
            fixes.append(Fix(id=f"{g.name}-tw-buckets", title=f"Raise tcp_max_tw_buckets on {g.name}",
                             set={f"{g.name}:net.ipv4.tcp_max_tw_buckets": max(cur * 4, 262144)},
                             commands=["sysctl -w net.ipv4.tcp_max_tw_buckets=262144"],
                             caveat="Overflowing sockets skip TIME_WAIT, which hides port exhaustion but "
                             "loses its protection; fix the connection churn instead where possible."))
    return [Finding(
        id="tw-bucket-overflow", title="tcp_max_tw_buckets overflows: connections close without TIME_WAIT",
        severity="warning",
        cause=("The TIME_WAIT table is full (tcp_max_tw_buckets); inet_twsk_alloc() fails and "
               "tcp_time_wait() closes the socket at once (TCPTimeWaitOverflow, 'time wait bucket table "
               "overflow'). Its 4-tuple is free immediately; a retransmitted FIN from the peer then gets a RST."),
        evidence=[EvidenceItem("TcpExtTCPTimeWaitOverflow", n), EvidenceItem("hosts", ", ".join(hosts))],
        confidence=0.95, fixes=fixes, hosts=hosts)]
