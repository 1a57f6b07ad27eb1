"""TIME_WAIT table overflow: with tcp_max_tw_buckets mini-sockets in use, inet_twsk_alloc()
fails and tcp_time_wait() closes the socket at once (TCPTimeWaitOverflow). Read from a run
and from live hosts."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import fix_list, linux_hosts, num, rate

TW_BUCKETS = Mechanism("tw_buckets", "TIME_WAIT table overflow", {
    "tw-bucket-overflow": "a run's hosts overflowed tcp_max_tw_buckets",
    "timewait-bucket-overflow": "a live host's TIME_WAIT table is full or its overflow counter rises",
})


@TW_BUCKETS.rule("run", "tw-bucket-overflow")
def from_run(ev: Evidence) -> list[Finding]:
    run = ev.require_run()
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
            fixes.append(fx.tw_buckets(g.name, cur))
    return [Finding(
        id="tw-bucket-overflow", title="tcp_max_tw_buckets overflows: connections close without TIME_WAIT",
        severity="warning",
        cause=("The TIME_WAIT table is full (tcp_max_tw_buckets); inet_twsk_alloc() fails and "
               "tcp_time_wait() closes the socket at once (TCPTimeWaitOverflow, 'time wait bucket table "
               "overflow'). Its 4-tuple is free immediately; a retransmitted FIN from the peer then gets a RST."),
        evidence=[EvidenceItem("TcpExtTCPTimeWaitOverflow", n), EvidenceItem("hosts", ", ".join(hosts))],
        confidence=0.95, fixes=fixes, hosts=hosts)]


@TW_BUCKETS.rule("hosts", "timewait-bucket-overflow")
def from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        maxb = h.settings.get("net.ipv4.tcp_max_tw_buckets")
        mini = h.extra.get("tw_minisockets", h.time_wait)
        name = "TcpExtTCPTimeWaitOverflow"
        r = rate(h, name)
        total = h.counters_absolute.get(name)
        absent = name in h.counters_absent
        full_now = isinstance(maxb, int) and mini is not None and mini >= maxb
        if not ((r or 0) > 0 or full_now or (r is None and (total or 0) > 0)):
            continue
        rising = (r or 0) > 0
        client_side = bool(h.tuples) and h.tuples[0].time_wait > 0
        items = [EvidenceItem("net.ipv4.tcp_max_tw_buckets", maxb),
                 EvidenceItem("TIME_WAIT + FIN_WAIT2 mini-sockets now", mini)]
        if absent:
            items.append(EvidenceItem(name, "absent on this kernel",
                                      "look for 'TCP: time wait bucket table overflow' in dmesg"))
        else:
            items.append(EvidenceItem(f"{name} since boot", total))
            if r is not None:
                items.append(EvidenceItem(f"{name} per s", round(r, 1)))
        new_max = max(262144, 2 * int(mini or 0), 2 * int(maxb or 0))
        out.append(Finding(
            id="timewait-bucket-overflow",
            title=(f"TIME_WAIT table full ({num(mini)} of {num(maxb)}): "
                   + (f"{r:,.0f} sockets/s close without TIME_WAIT" if rising else
                      "closing sockets skip TIME_WAIT" if full_now else
                      f"overflowed {num(total)} times since boot")),
            severity="critical" if rising and client_side else "warning" if (rising or full_now) else "info",
            cause=("When tcp_max_tw_buckets mini-sockets exist, tcp_time_wait() cannot allocate one and the "
                   "closing socket is destroyed at once (TCPTimeWaitOverflow): no TIME_WAIT, no packet. "
                   "The 4-tuple is free immediately, so a retransmitted FIN from the peer is answered "
                   "with RST, and old duplicates can reach a new connection on the same 4-tuple. "
                   + ("Here the closing side opens the connections, so ports come back unprotected."
                      if client_side else "On a server this mainly trades safety for memory.")),
            evidence=items, confidence=0.9 if rising else 0.7,
            fixes=fix_list(fx.raise_tw_buckets(h, new_max, client_side)),
            hosts=[h.name]))
    return out
