"""Doctor checks on settings: sysctls that are wrong for this kernel and this role.

Each check reads HostFacts (from a live host, a snapshot or pasted `sysctl -a`) and knows
the kernel version through the host's profile.
"""

from __future__ import annotations

from ...diagnose.base import Evidence, rule
from ...findings import EvidenceItem, Finding
from ..judge import (
    Fix,
    fix_list,
    linux_hosts,
    port_list_text,
    pressure,
    profile_of,
    rate,
    sysctl_fix,
    tuple_label,
)

TW_LEN = 60


@rule("host-tw-recycle", needs={"hosts"})
def tw_recycle(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        if h.settings.get("net.ipv4.tcp_tw_recycle") != 1:
            continue
        p = profile_of(h)
        ts = h.settings.get("net.ipv4.tcp_timestamps", 1)
        paws = h.counters_absolute.get("TcpExtPAWSPassive")
        paws_rate = rate(h, "TcpExtPAWSPassive")
        drops = h.counters_absolute.get("TcpExtListenDrops")
        evidence = [
            EvidenceItem("net.ipv4.tcp_tw_recycle", 1),
            EvidenceItem("net.ipv4.tcp_timestamps", ts),
            EvidenceItem("kernel", h.extra.get("kernel_release") or h.profile or "unknown"),
            EvidenceItem("TcpExtPAWSPassive since boot",
                         paws if paws is not None else
                         "absent on this kernel" if "TcpExtPAWSPassive" in h.counters_absent else "not read",
                         "SYNs dropped by the per-peer timestamp check"),
        ]
        if paws_rate is not None:
            evidence.append(EvidenceItem("TcpExtPAWSPassive per s", round(paws_rate, 2)))
        if drops is not None:
            evidence.append(EvidenceItem("TcpExtListenDrops since boot", drops))
        evidence.append(EvidenceItem("role", h.role or "unknown", h.extra.get("role_evidence", "")))
        keyed = "the peer's IP address (inet_peer)" if p and not p.at_least(3, 5) else \
            "the (local, remote) address pair (tcp_metrics)"
        cause = (
            "tcp_tw_recycle is on. For every peer the kernel remembers the last TCP timestamp it saw, "
            f"keyed by {keyed}, and for 60 s (TCP_PAWS_MSL) silently drops a SYN whose timestamp is "
            "lower (tcp_peer_is_proven() in tcp_conn_request, counted in PAWSPassive): no SYN-ACK, no "
            "RST, the client retransmits and times out. Clients behind one NAT or load-balancer SNAT "
            "address have unrelated timestamp clocks, so all but the fastest clock get dropped."
        )
        if p and p.recycle_drops_tsless_syn:
            cause += (" On this kernel a SYN without timestamps from a recently seen peer is dropped "
                      "too.")
        if p and p.at_least(4, 10):
            cause += " Since 4.10 random timestamp offsets break it even without NAT."
        if not ts:
            cause += (" Timestamps are off here, so recycling does nothing now, but turning "
                      "tcp_timestamps on (a common fix for other problems) will arm it.")
        severity = "critical" if (paws or 0) > 0 or h.role in (None, "server", "lb", "nat") else "warning"
        if not ts and not paws:
            severity = "warning"
        out.append(Finding(
            id="tw-recycle-enabled",
            title="tcp_tw_recycle is on: SYNs from clients sharing an address are silently dropped"
                  + (f" ({paws:,} so far)" if paws else ""),
            severity=severity, cause=cause, evidence=evidence,
            confidence=0.95 if (paws or 0) > 0 else 0.75,
            fixes=fix_list(sysctl_fix("tw-recycle-off", "Turn tcp_tw_recycle off", h, "server",
                              {"net.ipv4.tcp_tw_recycle": 0},
                              caveat="Keep tcp_timestamps=1: turning timestamps off instead (an old "
                                     "RHEL workaround) also disables PAWS and tcp_tw_reuse. Remove the "
                                     "line from /etc/sysctl.conf so it does not come back at boot.")),
            hosts=[h.name]))
    return out


@rule("host-tw-reuse-timestamps", needs={"hosts"})
def tw_reuse_without_timestamps(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        reuse = h.settings.get("net.ipv4.tcp_tw_reuse")
        ts = h.settings.get("net.ipv4.tcp_timestamps")
        if reuse not in (1, 2) or ts is None:
            continue
        top = h.tuples[0] if h.tuples else None
        if ts == 0:
            recycled = h.counters_absolute.get("TcpExtTWRecycled")
            ev_items = [EvidenceItem("net.ipv4.tcp_tw_reuse", reuse), EvidenceItem("net.ipv4.tcp_timestamps", 0),
                        EvidenceItem("TcpExtTWRecycled since boot", "not read" if recycled is None else recycled,
                                     "TIME_WAIT entries reused by connect()")]
            if h.time_wait is not None:
                ev_items.append(EvidenceItem("TIME_WAIT sockets now", h.time_wait))
            if top is not None:
                ev_items.append(EvidenceItem("most used tuple", tuple_label(top),
                                             f"{top.in_use:,} of {top.budget:,} ports"))
            # Severe when the busiest tuple nears its limit: its load (rate / sustainable rate,
            # or with one sample the ports connect() cannot take), occupancy only without details.
            severe = top is not None and (top.load if top.load is not None else pressure(top)) >= 0.8
            out.append(Finding(
                id="tw-reuse-without-timestamps",
                title="tcp_tw_reuse is on but tcp_timestamps is off: reuse can never apply",
                severity="critical" if severe else "warning",
                cause=("tcp_twsk_unique() lets connect() take over a TIME_WAIT 4-tuple only if the old "
                       "connection carried timestamps (tw_ts_recent_stamp != 0), so that PAWS can reject "
                       "its stray segments. With tcp_timestamps=0 this host never sends them, no "
                       "connection has them, and tcp_tw_reuse has no effect: outgoing TIME_WAIT entries "
                       "hold their ports for the full 60 s."),
                evidence=ev_items, confidence=0.95,
                fixes=fix_list(sysctl_fix("timestamps-on", "Turn TCP timestamps back on", h, "client",
                                  {"net.ipv4.tcp_timestamps": 1},
                                  caveat="The peers must send timestamps too (Linux does by default; "
                                         "Windows needs `netsh int tcp set global timestamps=enabled`).")),
                hosts=[h.name]))
            continue
        # Timestamps on here: does the peer of the busiest tuple negotiate them?
        for t in h.tuples[:3]:
            pt = t.peer_timestamps
            if not pt or pressure(t) < 0.5 or pt["without"] <= pt["with"]:
                continue
            if reuse == 2 and not t.tw_reuse_applies and "127." not in t.dst:
                continue  # loopback-only reuse: the tuple fix says so
            out.append(Finding(
                id="tw-reuse-peer-without-timestamps",
                title=f"tcp_tw_reuse cannot help toward {t.dst}:{t.dport}: that peer does not use timestamps",
                severity="warning",
                cause=("tcp_tw_reuse needs the old connection to have carried timestamps. The "
                       f"established connections toward {t.dst}:{t.dport} ({pt['without']:,} of "
                       f"{pt['with'] + pt['without']:,}) negotiated none, so their TIME_WAIT entries "
                       "keep their ports for 60 s whatever tcp_tw_reuse says."),
                evidence=[EvidenceItem("tuple", tuple_label(t), f"{t.in_use:,} of {t.budget:,} ports"),
                          EvidenceItem("established without timestamps", pt["without"]),
                          EvidenceItem("established with timestamps", pt["with"])],
                confidence=0.85,
                fixes=[Fix(id="peer-timestamps-on", title=f"Turn timestamps on at {t.dst}",
                           commands=["sysctl -w net.ipv4.tcp_timestamps=1 (Linux peer)",
                                     "netsh int tcp set global timestamps=enabled (Windows peer)"])],
                hosts=[h.name]))
    return out


@rule("host-fin-timeout", needs={"hosts"})
def fin_timeout(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        v = h.settings.get("net.ipv4.tcp_fin_timeout")
        if not isinstance(v, int) or v >= TW_LEN:
            continue
        tw = h.time_wait
        states = h.extra.get("states", {})
        busy = (tw or 0) >= 10000
        out.append(Finding(
            id="fin-timeout-does-not-shorten-timewait",
            title=f"tcp_fin_timeout={v} does not shorten TIME_WAIT (it stays 60 s)",
            severity="warning" if busy else "info",
            cause=("tcp_fin_timeout bounds how long an orphaned socket waits in FIN_WAIT2 for the peer's "
                   "FIN (tcp_fin_time()). TIME_WAIT is TCP_TIMEWAIT_LEN, 60 s, compiled into the kernel; "
                   "a FIN arriving in the FIN_WAIT2 substate starts a full 60 s TIME_WAIT. Lowering it "
                   "is a common belief that leaves the TIME_WAIT build-up exactly as it was."),
            evidence=[EvidenceItem("net.ipv4.tcp_fin_timeout", v, "default 60"),
                      EvidenceItem("TIME_WAIT sockets now", "n/a" if tw is None else tw),
                      EvidenceItem("FIN_WAIT2 sockets now", states.get(5, 0))],
            confidence=0.9,
            fixes=fix_list(sysctl_fix("fin-timeout-default", "Put it back to 60 and address TIME_WAIT where it "
                              "costs (see the port findings: keep-alive, tcp_tw_reuse, wider range)",
                              h, "client", {"net.ipv4.tcp_fin_timeout": 60},
                              caveat="Harmless to keep if short FIN_WAIT2 is wanted for other reasons.")),
            hosts=[h.name]))
    return out


@rule("host-port-range", needs={"hosts"})
def port_range(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        b = h.extra.get("port_budget")
        if not b:
            rng = h.settings.get("net.ipv4.ip_local_port_range")
            if not isinstance(rng, tuple):
                continue
            b = {"range": list(rng), "listener_ports_unreserved": [], "port_alg": None}
        lo, hi = b["range"]
        unreserved = b.get("listener_ports_unreserved", [])
        if unreserved:
            reserved = h.settings.get("net.ipv4.ip_local_reserved_ports") or frozenset()
            want = port_list_text(set(reserved) | set(unreserved))
            out.append(Finding(
                id="port-range-overlaps-listeners",
                title=f"Listening port{'s' if len(unreserved) > 1 else ''} "
                      f"{', '.join(map(str, unreserved[:5]))} inside ip_local_port_range {lo}-{hi}, not reserved",
                severity="warning",
                cause=("connect() never takes a port a listener holds, but while the service is down "
                       "(restart, deploy) an outgoing connection can take it, and the service then fails "
                       "to bind with EADDRINUSE. Ports listed in ip_local_reserved_ports are never "
                       "autoselected."),
                evidence=[EvidenceItem("net.ipv4.ip_local_port_range", f"{lo} {hi}"),
                          EvidenceItem("listening ports in the range", ", ".join(map(str, unreserved))),
                          EvidenceItem("net.ipv4.ip_local_reserved_ports", port_list_text(reserved) or "(empty)")],
                confidence=0.9,
                fixes=fix_list(sysctl_fix("reserve-listener-ports", "Reserve the listening ports", h, "client",
                                  {"net.ipv4.ip_local_reserved_ports": want})),
                hosts=[h.name]))
        alg = b.get("port_alg")
        if alg in ("parity", "perturb256", "perturb64k", "hint_even") and lo % 2 == hi % 2 and hi > lo:
            new_hi = hi - 1
            out.append(Finding(
                id="port-range-same-parity",
                title=f"ip_local_port_range {lo} {hi}: both bounds {'even' if lo % 2 == 0 else 'odd'}",
                severity="info",
                cause=("Since 4.2/4.6 (and in the RHEL 6 backport) connect() walks the ports with the "
                       "parity of the low bound first and leaves the other half to bind(0); the kernel "
                       "documentation asks for bounds "
                       "of different parity so that the two halves are equal. With the same parity the "
                       "connect() half has one more port and the ranges do not split cleanly."),
                evidence=[EvidenceItem("net.ipv4.ip_local_port_range", f"{lo} {hi}"),
                          EvidenceItem("ports of connect()'s parity", b.get("fast_parity", "n/a")),
                          EvidenceItem("ports of the other parity", b.get("other_parity", "n/a"))],
                confidence=0.9,
                fixes=fix_list(sysctl_fix("port-range-parity", f"Use {lo} {new_hi}", h, "client",
                                  {"net.ipv4.ip_local_port_range": f"{lo} {new_hi}"})),
                hosts=[h.name]))
    return out


@rule("host-fd-limits", needs={"hosts"})
def fd_limits(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        nr = h.settings.get("fs.file-nr")
        fmax = h.settings.get("fs.file-max")
        if isinstance(nr, tuple) and isinstance(fmax, int) and fmax > 0 and nr[0] >= 0.8 * fmax:
            out.append(Finding(
                id="file-table-near-full", title=f"System file table {nr[0] / fmax:.0%} full",
                severity="critical" if nr[0] >= 0.95 * fmax else "warning",
                cause="Every socket is a file; at fs.file-max socket() and accept() fail with ENFILE.",
                evidence=[EvidenceItem("fs.file-nr (allocated)", nr[0]), EvidenceItem("fs.file-max", fmax)],
                confidence=0.9,
                fixes=fix_list(sysctl_fix("raise-file-max", "Raise fs.file-max", h, "server", {"fs.file-max": fmax * 2})),
                hosts=[h.name]))
        for p in h.extra.get("processes", []) or []:
            soft, fds = p.get("nofile_soft"), p.get("fds")
            if not soft or fds is None or fds < 0.8 * soft:
                continue
            out.append(Finding(
                id="process-near-fd-limit",
                title=f"{p['name']} (pid {p['pid']}) uses {fds:,} of {soft:,} file descriptors",
                severity="critical" if fds >= 0.95 * soft else "warning",
                cause=("At RLIMIT_NOFILE socket() and accept() fail with EMFILE ('Too many open files'); "
                       "a server then stops accepting and its listen queue overflows."),
                evidence=[EvidenceItem("open fds", fds), EvidenceItem("RLIMIT_NOFILE soft", soft),
                          EvidenceItem("RLIMIT_NOFILE hard", p.get("nofile_hard")),
                          EvidenceItem("TCP sockets", p.get("sockets"))],
                confidence=0.9,
                fixes=[Fix(id="raise-nofile", title="Raise the process's open-file limit",
                           commands=["LimitNOFILE=1048576 in the systemd unit (or ulimit -n before start)",
                                     f"prlimit --pid {p['pid']} --nofile={max(soft * 4, 65536)}"])],
                hosts=[h.name]))
    return out

