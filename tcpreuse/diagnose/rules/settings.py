"""Settings lint: sysctls and limits that do not do what they are set for on this kernel
(tcp_tw_reuse without timestamps, tcp_fin_timeout for TIME_WAIT) or are near their end
(file descriptors). Read from live hosts; each check knows the kernel through the
host's profile."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import fix_list, linux_hosts, pressure, tuple_label

SETTINGS = Mechanism("settings", "Settings lint", {
    "tw-reuse-without-timestamps": "tcp_tw_reuse on, tcp_timestamps off: reuse can never apply",
    "tw-reuse-peer-without-timestamps": "tcp_tw_reuse cannot help toward a peer that sends no timestamps",
    "fin-timeout-does-not-shorten-timewait": "tcp_fin_timeout lowered in the belief it shortens TIME_WAIT",
    "file-table-near-full": "the system file table (fs.file-max) is nearly full",
    "process-near-fd-limit": "a process is near its RLIMIT_NOFILE",
})


TW_LEN = 60


@SETTINGS.rule("hosts", ("tw-reuse-without-timestamps", "tw-reuse-peer-without-timestamps"), name="tw-reuse")
def tw_reuse_from_hosts(ev: Evidence) -> list[Finding]:
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
                fixes=fix_list(fx.timestamps_on(h)),
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
                fixes=[fx.peer_timestamps_on(t.dst)],
                hosts=[h.name]))
    return out


@SETTINGS.rule("hosts", "fin-timeout-does-not-shorten-timewait", name="fin-timeout")
def fin_timeout_from_hosts(ev: Evidence) -> list[Finding]:
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
            fixes=fix_list(fx.fin_timeout_default(h)),
            hosts=[h.name]))
    return out


@SETTINGS.rule("hosts", ("file-table-near-full", "process-near-fd-limit"), name="fd-limits")
def fd_limits_from_hosts(ev: Evidence) -> list[Finding]:
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
                fixes=fix_list(fx.raise_file_max(h, fmax)),
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
                fixes=[fx.raise_nofile(p["pid"], soft)],
                hosts=[h.name]))
    return out
