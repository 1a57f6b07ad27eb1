"""Doctor checks on Windows hosts (from pasted netsh / netstat -ano output).

The seed incident: Windows clients without TCP timestamps, Linux servers that close
first. The clients cycle through their dynamic ports faster than the servers' 60 s
TIME_WAIT, so new SYNs land on server TIME_WAIT entries for the same 4-tuple; without a
timestamp Linux accepts such a SYN only if its sequence number is above the old
connection's (tcp_timewait_state_process), otherwise it answers with an ACK for the old
connection, the client resets and retries a whole SYN RTO later.
"""

from __future__ import annotations

from ...diagnose.base import Evidence, HostFacts, rule
from ...findings import EvidenceItem, Finding, Fix
from ...model.profiles import get_profile
from ...model.stacks import port_range
from ..judge import num

LINUX_TW = 60
SERVER_TW = 100  # TIME_WAIT entries on the service port that show the server closes first


def _pool(h: HostFacts) -> tuple[int, int]:
    """The dynamic port range's first port and size (model.stacks.port_range)."""
    lo, hi = port_range(get_profile("windows-2022"), h.settings)
    return lo, hi - lo + 1


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


@rule("host-windows-timestamps", needs={"hosts"})
def windows_no_timestamps(ev: Evidence) -> list[Finding]:
    out = []
    for h in ev.hosts.values():
        if h.os != "windows":
            continue
        ts = h.settings.get("netsh.tcp.timestamps")
        if ts not in ("disabled", "allowed"):
            continue
        start, n = _pool(h)
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
            fixes=[Fix(id="windows-timestamps-on", title="Turn TCP timestamps on in the Windows clients",
                       set={"client:netsh.tcp.timestamps": "enabled"},
                       commands=["netsh int tcp set global timestamps=enabled",
                                 "PowerShell: Set-NetTCPSetting -SettingName InternetCustom -Timestamps Enabled"],
                       caveat=caveat + (" (tcp_tw_recycle=1 is set on a server here.)" if recycle else "")),
                   Fix(id="reuse-connections", title="Reuse connections (keep-alive / pooling) in the client")],
            hosts=[h.name] + [s.name for s, _ in servers[:3]]))
    return out


@rule("host-windows-port-pool", needs={"hosts"})
def windows_port_pool(ev: Evidence) -> list[Finding]:
    out = []
    for h in ev.hosts.values():
        if h.os != "windows" or (not h.tuples and not h.time_wait):
            continue
        start, n = _pool(h)
        delay = h.settings.get("TcpTimedWaitDelay")
        delay_s = int(delay) if isinstance(delay, int) else 240
        in_pool = sum(t.in_use for t in h.tuples)  # Windows hands each port to one connection
        tw = sum(t.time_wait for t in h.tuples)
        pr = in_pool / n if n else 1.0
        if pr < 0.5:
            continue
        items = [EvidenceItem("dynamic port range", f"{start}-{start + n - 1} ({n:,} ports)"),
                 EvidenceItem("ports in use by outgoing connections", in_pool, f"{pr:.0%} of the pool"),
                 EvidenceItem("of which TIME_WAIT", tw),
                 EvidenceItem("TcpTimedWaitDelay (s)", delay_s,
                              "read from the registry" if isinstance(delay, int) else
                              "not given: 240 per Microsoft's current doc (120 per older ones)"),
                 EvidenceItem("sustainable new connections per s", round(n / delay_s, 1),
                              f"{n:,} ports / {delay_s} s")]
        out.append(Finding(
            id="windows-port-pool-pressure",
            title=f"Windows dynamic port pool {pr:.0%} used ({in_pool:,} of {n:,})",
            severity="critical" if pr >= 0.9 else "warning",
            cause=("Windows gives each outgoing connection its own port from one pool of dynamic ports "
                   "and keeps it through TIME_WAIT (TcpTimedWaitDelay) when it closes first. When the pool "
                   "is used up, connect() fails with WSAEADDRINUSE (10048) or WSAENOBUFS (10055) and the "
                   "System log shows Tcpip events 4227/4231."),
            evidence=items, confidence=0.8,
            fixes=[Fix(id="windows-widen-dynamic-ports", title="Widen the dynamic port range to 10000-65535",
                       set={"client:netsh.ipv4.dynamicport.tcp.start": 10000,
                            "client:netsh.ipv4.dynamicport.tcp.num": 55536},
                       commands=["netsh int ipv4 set dynamicport tcp start=10000 num=55536"],
                       caveat="Keep ports your own services listen on outside the range."),
                   Fix(id="windows-shorter-timewait", title="Shorten TcpTimedWaitDelay to 30 s",
                       set={"client:TcpTimedWaitDelay": 30},
                       commands=[r"reg add HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters "
                                 "/v TcpTimedWaitDelay /t REG_DWORD /d 30 /f (reboot)"]),
                   Fix(id="reuse-connections", title="Reuse connections (keep-alive / pooling)")],
            hosts=[h.name]))
    return out
