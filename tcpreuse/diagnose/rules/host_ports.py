"""Doctor checks on the live tables: port budgets, TIME_WAIT, listen queues, conntrack.

They read the aggregation of tcpreuse.host.facts (tuples, listeners, counter rates) and
say, with the numbers, what runs out, when, and what to change.
"""

from __future__ import annotations

from ...diagnose.base import Evidence, HostFacts, TupleUse, rule
from ...findings import EvidenceItem, Finding
from ..judge import (
    Fix,
    fix_list,
    linux_hosts,
    num,
    pressure,
    profile_of,
    rate,
    sysctl_fix,
    tuple_label,
)

TOP_TUPLES = 3


# How close a tuple is to running out (rate / sustainable rate, or the share of ports
# connect() cannot take now: facts._load): warn from here, critical from AT_LIMIT.
WARN_LOAD = 0.75
AT_LIMIT = 0.9
SATURATED_FREE = 0.05  # at most this share of the budget free: at the limit


def _tuple_fixes(h: HostFacts, t: TupleUse) -> list[Fix]:
    """Ranked: the root cause when the evidence names one (reuse switched on but unable to
    apply), then removing the churn, then headroom. Settings already in effect are never
    proposed (sysctl_fix)."""
    reuse = h.settings.get("net.ipv4.tcp_tw_reuse", 0)
    ts = h.settings.get("net.ipv4.tcp_timestamps", 1)
    pt = t.peer_timestamps or {}
    root: list[Fix | None] = []
    later: list[Fix | None] = []
    if not t.tw_reuse_applies and t.time_wait:
        wanted = reuse == 1 or (reuse == 2 and "127." in t.dst)
        if not ts:  # tw_reuse needs timestamps on the old connection: the missing piece
            fx = sysctl_fix("timestamps-on", "Turn TCP timestamps on (tcp_tw_reuse needs them on both ends)",
                            h, "client", {"net.ipv4.tcp_timestamps": 1, "net.ipv4.tcp_tw_reuse": 1},
                            caveat="The peers must send timestamps too (Linux does by default; Windows "
                                   "needs `netsh int tcp set global timestamps=enabled`).")
            (root if wanted else later).append(fx)
        elif pt and pt.get("without", 0) > pt.get("with", 0):
            root.append(Fix(id="peer-timestamps-on", title=f"Turn timestamps on at {t.dst}: tcp_tw_reuse needs them",
                            commands=["sysctl -w net.ipv4.tcp_timestamps=1 (Linux peer)",
                                      "netsh int tcp set global timestamps=enabled (Windows peer)"]))
        else:
            why = "loopback-only (2) today" if reuse == 2 else f"{reuse} today"
            later.append(sysctl_fix(
                "tw-reuse", f"Let connect() reuse TIME_WAIT entries older than 1 s (tcp_tw_reuse=1; {why})",
                h, "client", {"net.ipv4.tcp_tw_reuse": 1},
                caveat="Outgoing connections only; needs timestamps on both ends. Never tcp_tw_recycle."))
    b = h.extra.get("port_budget", {})
    lo, hi = b.get("range", [32768, 60999])
    if hi - lo + 1 < 60000:
        later.append(sysctl_fix("widen-port-range", "Widen the ephemeral port range to 1024-65535",
                                h, "client", {"net.ipv4.ip_local_port_range": "1024 65535"},
                                caveat="Reserve every port a service listens on first "
                                       "(net.ipv4.ip_local_reserved_ports)."))
    later.append(Fix(id="more-addresses",
                     title="Spread over more source addresses (bind() with IP_BIND_ADDRESS_NO_PORT) "
                           "or more destination addresses/ports",
                     caveat=f"Each (source, destination) pair has its own {t.budget:,}-port budget; "
                            f"{t.sources_to_destination} source address(es) are used toward "
                            f"{t.dst}:{t.dport} now."))
    keepalive = Fix(id="reuse-connections", title="Reuse connections: HTTP keep-alive or a connection pool",
                    caveat="The only fix that removes the churn itself; everything below buys headroom.")
    return fix_list(*root, keepalive, *later)


def _hold(t: TupleUse, default: float) -> float:
    return t.hold_s if t.hold_s is not None else default


def _tw_detail(t: TupleUse) -> str:
    if not t.time_wait:
        return "none: the peer closes first, so ports come back when sockets close"
    if t.tw_reuse_applies:
        return f"this host closed first; connect() may reuse each after {_hold(t, 1):g} s (tcp_tw_reuse)"
    return f"this host closed first; each holds its port {t.tw_len_s if t.tw_len_s is not None else 60:g} s"


def _secs(x: float) -> str:
    return f"{x:.{1 if x < 10 else 0}f}"


@rule("host-tuple-exhaustion", needs={"hosts"})
def tuple_exhaustion(ev: Evidence) -> list[Finding]:
    """Severity from the rate against the sustainable rate (or, with one sample, from the
    ports connect() cannot take now), never from occupancy alone: with tw_reuse a range
    full of TIME_WAIT is normal."""
    out = []
    for h in linux_hosts(ev):
        active = rate(h, "TcpActiveOpens")
        for t in h.tuples[:TOP_TUPLES]:  # facts from elsewhere may lack the judged fields
            ste = t.seconds_to_exhaustion
            sust = t.sustainable_rate_per_s
            blocked = t.blocked if t.blocked is not None else t.in_use
            load = t.load if t.load is not None else pressure(t)
            r = t.rate_per_s
            exhausted = ste == 0
            # At its limit: (nearly) no port free now while connections keep coming. The rate
            # measured then is the ceiling the budget allows, and attempts above it fail.
            attempts = t.attempts_per_s
            failing = float(t.failed_no_port_per_s or 0.0)
            at_limit = not exhausted and ((t.budget - blocked <= max(2, SATURATED_FREE * t.budget)
                                           and (r is None or r > 0)) or failing > 0)
            soon = ste is not None and ste <= 60
            if not (exhausted or at_limit or soon or load >= WARN_LOAD):
                continue
            critical = exhausted or at_limit or soon or (r is None and load >= AT_LIMIT)
            items = [
                EvidenceItem("tuple", tuple_label(t)),
                EvidenceItem("ports in use", t.in_use, f"{pressure(t):.0%} of the {t.budget:,} connect() may use"),
                EvidenceItem("ports connect() cannot take now", blocked,
                             "established, other states and TIME_WAIT not yet reusable" if t.tw_reuse_applies
                             else "every port in use"),
                EvidenceItem("established", t.established),
                EvidenceItem("TIME_WAIT", t.time_wait, _tw_detail(t)),
                EvidenceItem("other states", t.other),
            ]
            if r is not None:
                items.append(EvidenceItem("new connections per s (this tuple)", round(r, 1),
                                          "connect() calls that got a port; failed ones (EADDRNOTAVAIL) are "
                                          "counted by no kernel counter" + ("" if attempts is not None else
                                                                            " (--trace-connects counts them)")))
            if active is not None:
                items.append(EvidenceItem("TcpActiveOpens per s (host)", round(active, 1)))
            if sust is not None:
                items.append(EvidenceItem("sustainable new connections per s", round(sust, 1),
                                          f"free ports / {_hold(t, 60):g} s hold"))
            if attempts is not None:
                items.append(EvidenceItem("connect() attempts per s (traced)", round(attempts, 1),
                                          "CLOSE -> SYN_SENT, sock:inet_sock_set_state"))
                items.append(EvidenceItem("connect() failed without a port per s (traced)", round(failing, 1),
                                          "EADDRNOTAVAIL: SYN_SENT -> CLOSE before a port was chosen"))
            if attempts is not None and sust:
                items.append(EvidenceItem("attempts / sustainable rate", f"{attempts / sust:.0%}"))
            elif r is not None and sust:
                items.append(EvidenceItem("rate / sustainable rate", f"{r / sust:.0%}"))
            items.append(EvidenceItem("seconds to exhaustion",
                                      "now" if exhausted else (round(ste, 1) if ste is not None else "not at this rate")))
            if t.next_free_in_s is not None:
                items.append(EvidenceItem("oldest TIME_WAIT frees in s", round(t.next_free_in_s, 1),
                                          f"{t.tw_free_within_10s or 0:,} free within 10 s"))
            items.append(EvidenceItem("tcp_tw_reuse applies", t.tw_reuse_applies))
            if exhausted:
                when = "no port is free now"
                title = f"{tuple_label(t)}: {t.in_use:,} of {t.budget:,} local ports in use (exhausted)"
            elif at_limit and attempts is not None and sust:
                when = (f"connect() is called {attempts:,.0f} times/s against the {sust:,.0f}/s this budget "
                        f"sustains; {failing:,.0f}/s fail now")
                title = (f"{tuple_label(t)}: at its limit, {attempts:,.0f} connect()/s attempted against a "
                         f"sustainable {sust:,.0f}/s; {failing:,.0f}/s fail with EADDRNOTAVAIL")
            elif at_limit and r is not None and sust:
                when = (f"new connections succeed at {r:,.0f}/s against the {sust:,.0f}/s this budget sustains: "
                        "it is at its limit, so the measured rate is a ceiling, not the demand; every "
                        "connect() above it fails")
                title = (f"{tuple_label(t)}: at its limit, {r:,.0f} new connections/s against a sustainable "
                         f"{sust:,.0f}/s; connect() beyond that fails")
            elif at_limit:
                when = (f"{blocked:,} of {t.budget:,} ports cannot be taken now; one sample cannot see the "
                        "rate (use --interval)")
                title = f"{tuple_label(t)}: {blocked:,} of {t.budget:,} local ports unavailable to connect()"
            elif soon and r:
                when = f"at {r:,.0f} new connections/s the last free port goes in {_secs(ste or 0)} s"
                title = (f"{tuple_label(t)}: {t.in_use:,} of {t.budget:,} local ports in use, exhausted in "
                         f"{_secs(ste or 0)} s at {r:,.0f}/s")
            else:
                when = ("a burst above the sustainable rate exhausts it" if r is None or not sust else
                        f"{r:,.0f} new connections/s leave {max(0.0, 1 - r / sust):.0%} headroom")
                title = f"{tuple_label(t)}: {blocked:,} of {t.budget:,} local ports unavailable to connect()"
            if t.tw_reuse_applies:
                tw_text = (f"{t.time_wait:,} wait in TIME_WAIT, reusable by connect() after "
                           f"{_hold(t, 1):g} s (tcp_tw_reuse)")
            elif t.time_wait:
                tw_text = f"{t.time_wait:,} wait in TIME_WAIT after this host closed first"
            else:
                tw_text = "none wait in TIME_WAIT (the peer closes first)"
            out.append(Finding(
                id="tuple-port-exhaustion", title=title,
                severity="critical" if critical else "warning",
                cause=(f"connect() from {t.src} to {t.dst}:{t.dport} may choose among {t.budget:,} local "
                       "ports (ip_local_port_range minus reserved and listening ports); the 4-tuple must "
                       f"be unique. {t.established:,} are established and {tw_text}; {when}. Then connect() "
                       "fails with EADDRNOTAVAIL (\"Cannot assign requested address\"), and before that it "
                       "slows down scanning for a free port."),
                evidence=items, confidence=0.9 if r is not None or exhausted else 0.75,
                fixes=_tuple_fixes(h, t), hosts=[h.name]))
    return out


@rule("host-connect-slow-path", needs={"hosts"})
def connect_slow_path(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        b = h.extra.get("port_budget", {})
        if b.get("port_alg") not in ("parity", "perturb256", "perturb64k", "hint_even") or not h.tuples:
            continue
        t = h.tuples[0]
        fast = b.get("fast_parity", 0)
        if not fast or t.in_use <= fast or pressure(t) >= 0.9:
            continue
        out.append(Finding(
            id="connect-slow-path",
            title=f"{tuple_label(t)}: {t.in_use:,} ports in use, more than the {fast:,} of connect()'s "
                  "preferred parity",
            severity="warning",
            cause=("__inet_hash_connect() tries the ports with the parity of the range's low bound first "
                   "(4.2+) and only then the other half. With more connections to one destination than "
                   "that half holds, every connect() walks the whole first half, taking the bind-hash "
                   "lock for each port, before it finds a free one: connect latency and system CPU grow "
                   "with the number of ports in use."),
            evidence=[EvidenceItem("ports in use", t.in_use),
                      EvidenceItem("ports of the preferred parity", fast),
                      EvidenceItem("usable ports", b.get("usable")),
                      EvidenceItem("port selection", b.get("port_alg"))],
            confidence=0.8,
            fixes=_tuple_fixes(h, t), hosts=[h.name]))
    return out


@rule("host-tw-overflow", needs={"hosts"})
def tw_overflow(ev: Evidence) -> list[Finding]:
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
            fixes=fix_list(sysctl_fix("raise-tw-buckets", f"Raise tcp_max_tw_buckets to {new_max:,}", h,
                              "client" if client_side else "server", {"net.ipv4.tcp_max_tw_buckets": new_max},
                              caveat="Each TIME_WAIT mini-socket costs a few hundred bytes; the limit "
                                     "exists against memory exhaustion, not as a TIME_WAIT tuning knob.")),
            hosts=[h.name]))
    return out


@rule("host-listen-overflow", needs={"hosts"})
def listen_overflow(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        ro, rd = rate(h, "TcpExtListenOverflows"), rate(h, "TcpExtListenDrops")
        ao, ad = h.counters_absolute.get("TcpExtListenOverflows"), h.counters_absolute.get("TcpExtListenDrops")
        full = [lu for lu in h.listeners if lu.backlog and lu.queue >= max(1, int(0.9 * lu.backlog))]
        rising = (ro or 0) > 0 or (rd or 0) > 0
        since_boot_only = ro is None and ((ao or 0) > 0 or (ad or 0) > 0)
        if not (rising or full or since_boot_only):
            continue
        somax = h.settings.get("net.core.somaxconn")
        items = []
        for lu in (full or h.listeners)[:5]:
            items.append(EvidenceItem(f"listener {lu.addr}:{lu.port}", f"{lu.queue} queued / backlog {lu.backlog}",
                                      "accept queue (ss Recv-Q / Send-Q)"))
        for n, r, a in (("ListenOverflows", ro, ao), ("ListenDrops", rd, ad)):
            if r is not None:
                items.append(EvidenceItem(f"TcpExt{n} per s", round(r, 1)))
            if a is not None:
                items.append(EvidenceItem(f"TcpExt{n} since boot", a))
        items.append(EvidenceItem("net.core.somaxconn", somax))
        items.append(EvidenceItem("net.ipv4.tcp_abort_on_overflow", h.settings.get("net.ipv4.tcp_abort_on_overflow")))
        items.append(EvidenceItem("net.ipv4.tcp_syncookies", h.settings.get("net.ipv4.tcp_syncookies")))
        worst = full[0] if full else None  # counters alone do not say which listener
        clamp = worst is not None and isinstance(somax, int) and worst.backlog >= somax
        biggest = max((lu.backlog for lu in h.listeners), default=128)
        new_backlog = max(4096, 4 * (worst.backlog if worst else biggest))
        # While the queue is full a handshake completes only when accept() frees a slot, so
        # PassiveOpens/s is the application's accept rate; what arrives is that plus the drops.
        po = rate(h, "TcpPassiveOpens")
        sustained = rising and worst is not None
        if sustained and po is not None:
            arriving = po + (rd or ro or 0.0)
            items.append(EvidenceItem("accepted per s", round(po, 1),
                                      "TcpPassiveOpens while the queue is full: the application's accept rate"))
            items.append(EvidenceItem("arriving per s", round(arriving, 1), "accepted + dropped (SYN retries included)"))
        commands = []
        if not isinstance(somax, int) or somax < new_backlog:
            commands.append(f"sysctl -w net.core.somaxconn={new_backlog}")
        commands.append("raise the backlog the server passes to listen() (nginx: listen ... backlog=N)")
        backlog_fix = Fix(id="raise-backlog",
                          title=f"Raise the listen backlog to {new_backlog:,} (application listen()"
                                + (" and somaxconn)" if len(commands) > 1 else f"; somaxconn is already {somax:,})"),
                          set={"host.server.backlog": new_backlog}, commands=commands,
                          caveat="A bigger queue absorbs bursts; if the server accepts too slowly on average, "
                                 "it only delays the overflow.")
        accept_fix = Fix(id="accept-faster", title="Accept faster: more workers or threads calling accept()",
                         caveat=("The queue stays full while connections keep arriving: the application "
                                 "accepts more slowly than they come, the root cause." if sustained else ""))
        # The root cause first: a queue full during the sample means accept() cannot keep up
        # on average; overflows without a full queue are bursts, which a bigger queue absorbs.
        fixes = [accept_fix, backlog_fix] if sustained else [backlog_fix, accept_fix]
        title_where = f" on {worst.addr}:{worst.port}" if worst else ""
        out.append(Finding(
            id="listen-queue-overflow",
            title=(f"Listen queue overflowing{title_where}: "
                   + (f"{ro:,.1f} overflows/s" if ro else f"{rd:,.1f} drops/s" if rd else
                      f"{worst.queue} of {worst.backlog} queued" if full and worst else
                      f"{num(ao)} overflows since boot")),
            severity="critical" if rising else "warning",
            cause=("The accept queue of a listener holds at most its backlog (min(listen() argument, "
                   "somaxconn)) connections the application has not accept()ed yet. When it is full the "
                   "kernel drops new SYNs and the final ACK of handshakes (ListenOverflows, ListenDrops): "
                   "the client retransmits its SYN (after 1 s, 3 s, ...; every second at first on 6.5+) or, "
                   "having seen the SYN-ACK, thinks it is "
                   "connected while the server retransmits its SYN-ACK."
                   + (f" Here the application accepts {po:,.1f} connections/s while {po + (rd or ro or 0.0):,.1f}/s "
                      "arrive: the queue cannot drain, and a bigger one only fills later."
                      if sustained and po is not None else "")
                   + (" The backlog is clamped by net.core.somaxconn." if clamp else "")
                   + (" Nothing is rising during the sample; the counters show it happened before."
                      if since_boot_only and not full else "")),
            evidence=items, confidence=0.9 if rising or full else 0.6, fixes=fixes, hosts=[h.name]))
    return out


_PAWS = {
    "TcpExtPAWSPassive": "SYNs dropped by tcp_tw_recycle's per-peer timestamp cache",
    "TcpExtPAWSActive": "SYN-ACKs whose echoed timestamp does not match the SYN: the connect() is reset",
    "TcpExtPAWSEstab": "segments of established connections (and, before ~6.15, TIME_WAIT) with an older "
                       "timestamp than the last one seen on that 4-tuple",
    "TcpExtPAWSTimewait": "segments (often new SYNs) reaching a TIME_WAIT socket with an older timestamp",
}


@rule("host-paws", needs={"hosts"})
def paws_rising(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        rising = {n: r for n in _PAWS if (r := rate(h, n)) is not None and r > 0}
        if h.settings.get("net.ipv4.tcp_tw_recycle") == 1:
            rising.pop("TcpExtPAWSPassive", None)  # the tw_recycle finding owns it
        if not rising:
            continue
        items = [EvidenceItem(f"{n} per s", round(r, 2), _PAWS[n]) for n, r in rising.items()]
        items += [EvidenceItem(f"{n} since boot", h.counters_absolute[n]) for n in rising
                  if n in h.counters_absolute]
        absent = sorted(n for n in _PAWS if n in h.counters_absent)
        if absent:
            items.append(EvidenceItem("absent on this kernel", ", ".join(absent)))
        out.append(Finding(
            id="paws-rejects-rising",
            title="PAWS rejections rising: " + ", ".join(f"{n[6:]} {r:,.1f}/s" for n, r in rising.items()),
            severity="warning",
            cause=("PAWS drops segments whose TCP timestamp is older than the last one seen for the same "
                   "4-tuple (or, with tcp_tw_recycle, the same peer). Rising counts mean 4-tuples are "
                   "reused by senders with unrelated timestamp clocks: several clients behind one NAT or "
                   "load-balancer SNAT address, or a load balancer reusing a back-end 4-tuple still in "
                   "TIME_WAIT. The counters are host-wide; a capture names the peers."),
            evidence=items, confidence=0.7,
            fixes=[Fix(id="capture-and-analyze", title="Capture SYNs and let `tcpreuse analyze` name the peers",
                       commands=["tcpdump -ni any -w syn.pcap 'tcp[tcpflags] & (tcp-syn|tcp-rst) != 0' -c 200000",
                                 "tcpreuse analyze syn.pcap"],
                       caveat="Do not turn timestamps off to silence PAWS: it also disables tcp_tw_reuse "
                              "and the protection PAWS gives.")],
            hosts=[h.name]))
    return out


@rule("host-conntrack", needs={"hosts"})
def conntrack_full(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        ct = h.conntrack or {}
        count, cmax = ct.get("count"), ct.get("max")
        if not count or not cmax or count < 0.75 * cmax:
            continue
        tw_to = h.settings.get("net.netfilter.nf_conntrack_tcp_timeout_time_wait")
        values: dict[str, object] = {"net.netfilter.nf_conntrack_max": 2 * cmax}
        out.append(Finding(
            id="conntrack-near-full", title=f"conntrack table {count / cmax:.0%} full ({count:,} of {cmax:,})",
            severity="critical" if count >= 0.9 * cmax else "warning",
            cause=("When nf_conntrack_count reaches nf_conntrack_max, new flows are dropped ('nf_conntrack: "
                   "table full, dropping packet'): SYNs vanish and clients retransmit. Short connections "
                   "keep their entry for nf_conntrack_tcp_timeout_time_wait after closing."),
            evidence=[EvidenceItem("nf_conntrack_count", count), EvidenceItem("nf_conntrack_max", cmax),
                      EvidenceItem("nf_conntrack_tcp_timeout_time_wait", tw_to)],
            confidence=0.9,
            fixes=fix_list(sysctl_fix("raise-conntrack-max", f"Raise nf_conntrack_max to {2 * cmax:,}", h, "server",
                              values, caveat="Each entry costs about 300 bytes of kernel memory."),
                   Fix(id="shorter-conntrack-timewait", title="Shorten conntrack's TIME_WAIT hold",
                       commands=["sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30"])),
            hosts=[h.name]))
    return out


@rule("host-server-timewait", needs={"hosts"})
def server_timewait(ev: Evidence) -> list[Finding]:
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
