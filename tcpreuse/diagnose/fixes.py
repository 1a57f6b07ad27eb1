"""The fix catalogue: one builder per fix, one stable id per fix.

Every rule takes its fixes from here, so a fix reads the same whichever evidence found
the problem. A builder gives a :class:`Fix` with

- `id`: the catalogue id (documented in docs/findings.md). A fix proposed for one host
  group of a scenario carries the group as a prefix (``winclient-timestamps``), and the
  timestamp fix for clients of one OS a suffix (``client-timestamps-linux``);
- `set`: scenario overrides (``"<group>:<sysctl>"``, ``"host.<group>.<field>"``,
  ``"workload[.<name>].<field>"``, ``"nat.*"``, ``"lb.*"``) when the fix can be
  expressed in a scenario, so what-if (diagnose/whatif.py) re-simulates it; empty otherwise;
- `commands`: what to run, per OS where they differ.

Builders that take a HostFacts (`sysctl_fix`) leave out values already in effect and
give None when nothing would change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..findings import Fix
from .judge import fix_list, sysctl_fix

if TYPE_CHECKING:
    from ..host.records import HostFacts, TupleUse
    from ..scenario.schema import Scenario

# -- the values and commands more than one fix uses ------------------------------------

PORT_RANGE = "1024 65535"  # Linux ip_local_port_range, widened
LINUX_WIDEN = f"sysctl -w net.ipv4.ip_local_port_range='{PORT_RANGE}'"
WIDEN_TITLE = f"Widen ip_local_port_range to {PORT_RANGE.replace(' ', '-')}"
LINUX_RESERVE = "reserve the ports services listen on first: net.ipv4.ip_local_reserved_ports"
WIN_DYN_START, WIN_DYN_NUM = 10000, 55535  # Windows dynamic ports, widened: 10000-65534
WINDOWS_WIDEN = f"netsh int ipv4 set dynamicport tcp start={WIN_DYN_START} num={WIN_DYN_NUM}"
WIN_TS_ON = ["netsh int tcp set global timestamps=enabled",
             "PowerShell: Set-NetTCPSetting -SettingName InternetCustom -Timestamps Enabled"]
LINUX_TS_ON = "sysctl -w net.ipv4.tcp_timestamps=1"
RECYCLE_OFF = "sysctl -w net.ipv4.tcp_tw_recycle=0"
SOMAXCONN = 4096
CAPTURE_SYNS = "tcpdump -ni any -w syn.pcap 'tcp[tcpflags] & (tcp-syn|tcp-rst) != 0' -c 200000"


def _scoped(base: str, group: str | None) -> str:
    return f"{group}-{base}" if group else base


# -- ports -------------------------------------------------------------------------------

def widen_port_range(group: str | None = None, scoped: bool = True) -> Fix:
    """Linux: ip_local_port_range to 1024-65535 (a scenario group, or advice for any host)."""
    where = f" on {group}" if group else ""
    return Fix(id=_scoped("widen-port-range", group if scoped else None), title=f"{WIDEN_TITLE}{where}",
               set={f"{group}:net.ipv4.ip_local_port_range": PORT_RANGE} if group else {},
               commands=[LINUX_WIDEN, LINUX_RESERVE])


def widen_port_range_on(h: HostFacts) -> Fix | None:
    """The same on a live Linux host (nothing if its range is already that wide)."""
    return sysctl_fix("widen-port-range", WIDEN_TITLE, h, "client", {"net.ipv4.ip_local_port_range": PORT_RANGE},
                      caveat=f"{LINUX_RESERVE.capitalize()}.")


def widen_dynamic_ports(group: str | None = None, caveat: str = "", scoped: bool = True) -> Fix:
    """Windows: the dynamic port range to 10000-65534."""
    where = f" on {group}" if group else ""
    return Fix(id=_scoped("widen-dynamic-ports", group if scoped else None),
               title=f"Widen the Windows dynamic port range{where} to 10000-65534",
               set={f"{group or 'client'}:netsh.ipv4.dynamicport.tcp.start": WIN_DYN_START,
                    f"{group or 'client'}:netsh.ipv4.dynamicport.tcp.num": WIN_DYN_NUM},
               commands=[WINDOWS_WIDEN], caveat=caveat or "Keep ports your own services listen on outside the range.")


def any_os_port_range() -> Fix:
    """Widen the clients' range, whatever their OS (capture, trace: the OS is a guess)."""
    return Fix(id="widen-port-range", title="Widen the clients' ephemeral port range",
               commands=[f"Linux: {LINUX_WIDEN} ({LINUX_RESERVE})", f"Windows: {WINDOWS_WIDEN}"])


def timed_wait_delay(group: str | None = None) -> Fix:
    """Windows: TcpTimedWaitDelay 30 s."""
    where = f" on {group}" if group else ""
    return Fix(id="timedwaitdelay", title=f"Shorten TcpTimedWaitDelay to 30 s{where}",
               set={f"{group or 'client'}:TcpTimedWaitDelay": 30},
               commands=[r"reg add HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters "
                         "/v TcpTimedWaitDelay /t REG_DWORD /d 30 /f (reboot)"])


def tw_reuse(group: str | None = None) -> Fix:
    """Linux: tcp_tw_reuse=1 (connect() takes over its own TIME_WAIT; needs timestamps)."""
    if group:
        return Fix(id="tw-reuse", title=f"tcp_tw_reuse=1 on {group} (connect() takes over TIME_WAIT "
                   "4-tuples older than 1 s; needs timestamps on both ends)",
                   set={f"{group}:net.ipv4.tcp_tw_reuse": 1}, commands=["sysctl -w net.ipv4.tcp_tw_reuse=1"])
    return Fix(id="tw-reuse", title="Client closes first and reuses its own TIME_WAIT (Linux, with timestamps)",
               commands=["sysctl -w net.ipv4.tcp_tw_reuse=1", LINUX_TS_ON],
               caveat="tcp_tw_reuse only helps outgoing connections and only with timestamps on both ends.")


def more_addresses(group: str | None = None, workload_key: str = "", caveat: str = "") -> Fix:
    """More source addresses (IP_BIND_ADDRESS_NO_PORT) or destination ports: more 4-tuples."""
    if group:
        return Fix(id="more-addresses", title=f"4 source addresses per host with IP_BIND_ADDRESS_NO_PORT ({group})",
                   set={f"host.{group}.addresses_per_host": 4, workload_key: "address_no_port"},
                   commands=["bind(addr, 0) with setsockopt(IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1) before connect()"])
    return Fix(id="more-addresses", title="Spread over more source addresses (bind() with IP_BIND_ADDRESS_NO_PORT) "
                                          "or more destination addresses/ports",
               commands=["add addresses to the client and bind() each connection to one "
                         "(IP_BIND_ADDRESS_NO_PORT), or add server ports/back ends"], caveat=caveat)


def more_client_hosts(group: str, count: int) -> Fix:
    return Fix(id=f"{group}-more-hosts", title=f"Spread the load over 3x as many client hosts/addresses ({group})",
               set={f"host.{group}.count": count * 3}, commands=["add load generators or source addresses"])


def tuple_fixes(h: HostFacts, t: TupleUse) -> list[Fix]:
    """For a live host's busiest tuple, ranked: the root cause when the evidence names one
    (reuse switched on but unable to apply), then removing the churn, then headroom."""
    reuse = h.settings.get("net.ipv4.tcp_tw_reuse", 0)
    ts = h.settings.get("net.ipv4.tcp_timestamps", 1)
    pt = t.peer_timestamps or {}
    root: list[Fix | None] = []
    later: list[Fix | None] = []
    if not t.tw_reuse_applies and t.time_wait:
        wanted = reuse == 1 or (reuse == 2 and "127." in t.dst)
        if not ts:  # tw_reuse needs timestamps on the old connection: the missing piece
            fx = timestamps_on(h, with_reuse=True)
            (root if wanted else later).append(fx)
        elif pt and pt.get("without", 0) > pt.get("with", 0):
            root.append(peer_timestamps_on(t.dst, "tcp_tw_reuse needs them"))
        else:
            why = "loopback-only (2) today" if reuse == 2 else f"{reuse} today"
            later.append(sysctl_fix(
                "tw-reuse", f"Let connect() reuse TIME_WAIT entries older than 1 s (tcp_tw_reuse=1; {why})",
                h, "client", {"net.ipv4.tcp_tw_reuse": 1},
                caveat="Outgoing connections only; needs timestamps on both ends. Never tcp_tw_recycle."))
    b = h.extra.get("port_budget", {})
    lo, hi = b.get("range", [32768, 60999])
    if hi - lo + 1 < 60000:
        later.append(widen_port_range_on(h))
    later.append(more_addresses(caveat=f"Each (source, destination) pair has its own {t.budget:,}-port budget; "
                                       f"{t.sources_to_destination} source address(es) are used toward "
                                       f"{t.dst}:{t.dport} now."))
    keep = reuse_connections("The only fix that removes the churn itself; everything below buys headroom.",
                             title="Reuse connections: HTTP keep-alive or a connection pool")
    return fix_list(*root, keep, *later)


# -- timestamps --------------------------------------------------------------------------

def client_timestamps(os: str, group: str | None = None, caveat: str = "") -> Fix:
    """Turn TCP timestamps on in clients of one OS (windows, linux, macos), in a scenario
    group or as advice. The id is `<group>-timestamps` or `client-timestamps-<os>`."""
    fid = f"{group}-timestamps" if group else f"client-timestamps-{os}"
    target = group or "client"
    if os == "windows":
        return Fix(id=fid, title=f"Turn TCP timestamps on in the Windows clients{f' ({group})' if group else ''}",
                   set={f"{target}:netsh.tcp.timestamps": "enabled"}, commands=list(WIN_TS_ON),
                   caveat=caveat or ("With a newer TSval Linux accepts the SYN on its TIME_WAIT (and with "
                                     "tcp_tw_recycle, recycles it); if the servers run tcp_tw_recycle=1 behind a "
                                     "NAT, turn that off first."))
    if os == "macos":
        return Fix(id=fid, title=f"Turn RFC 1323 timestamps on in the macOS clients{f' ({group})' if group else ''}",
                   set={f"{target}:net.inet.tcp.rfc1323": 1}, commands=["sysctl -w net.inet.tcp.rfc1323=1"],
                   caveat=caveat)
    return Fix(id=fid, title=f"Turn TCP timestamps on in the Linux clients{f' ({group})' if group else ''}",
               set={f"{target}:net.ipv4.tcp_timestamps": 1} if group else {}, commands=[LINUX_TS_ON], caveat=caveat)


def client_timestamps_for(os_guess: str) -> list[Fix]:
    """The timestamp fix for clients whose OS a capture guessed ("unknown": both)."""
    if os_guess in ("windows", "linux"):
        return [client_timestamps(os_guess)]
    return [client_timestamps("windows"), client_timestamps("linux")]


def timestamps_on(h: HostFacts, with_reuse: bool = False) -> Fix | None:
    """Timestamps back on on this Linux host (tcp_tw_reuse cannot apply without them)."""
    values: dict[str, object] = {"net.ipv4.tcp_timestamps": 1}
    if with_reuse:
        values["net.ipv4.tcp_tw_reuse"] = 1
    return sysctl_fix("timestamps-on", "Turn TCP timestamps on (tcp_tw_reuse needs them on both ends)"
                      if with_reuse else "Turn TCP timestamps back on", h, "client", values,
                      caveat="The peers must send timestamps too (Linux does by default; Windows "
                             "needs `netsh int tcp set global timestamps=enabled`).")


def peer_timestamps_on(dst: str, why: str = "") -> Fix:
    return Fix(id="peer-timestamps-on", title=f"Turn timestamps on at {dst}" + (f": {why}" if why else ""),
               commands=[f"{LINUX_TS_ON} (Linux peer)", "netsh int tcp set global timestamps=enabled (Windows peer)"])


# -- connections and close ---------------------------------------------------------------

def keepalive_advice() -> Fix:
    """Reuse connections, as advice (no scenario to express it in)."""
    return Fix(id="keepalive", title="Reuse connections (HTTP keep-alive / a connection pool)",
               commands=["a connection pool or HTTP keep-alive in the client: fewer new 4-tuples per second"])


def keepalive(sc: Scenario, workload: str | None = None, n: int = 20) -> Fix | None:
    """Keep-alive as a scenario fix: N requests per connection for a workload (the only
    one if not named); None when the scenario cannot say which."""
    if workload is None and len(sc.workload) != 1:
        return None
    name = workload or sc.workload[0].name
    key = "workload.requests_per_connection" if len(sc.workload) == 1 else f"workload.{name}.requests_per_connection"
    return Fix(id=f"{name}-keepalive" if workload else "keepalive",
               title=f"Keep connections alive: {n} requests per connection" + (f" ({workload})" if workload else ""),
               set={key: n}, commands=["a connection pool / HTTP keep-alive in the client"])


def reuse_connections(caveat: str = "", title: str = "Reuse connections (keep-alive / pooling)") -> Fix:
    """The same advice on a live host (id reuse-connections)."""
    return Fix(id="reuse-connections", title=title, caveat=caveat)


def server_closes(workload_key: str) -> Fix:
    return Fix(id="server-closes", title="Let the server close first (TIME_WAIT moves to the server)",
               set={workload_key: "server"}, commands=["HTTP: have the server send Connection: close"],
               caveat="Moves TIME_WAIT to the server, where Linux accepts a new SYN on it if its "
               "timestamp or ISN is newer (harmless for Linux clients; see the seed incident for "
               "clients without timestamps).")


def client_closes_first() -> Fix:
    return Fix(id="client-closes-first", title="Let the client close first, so TIME_WAIT stays on the client",
               commands=["client: close() after reading the whole response; server: wait for the client's FIN"],
               caveat="The client then needs ports for 60 s per connection (Linux: tcp_tw_reuse=1 with "
                      "timestamps lets connect() take over its own TIME_WAIT).")


def more_ports() -> Fix:
    return Fix(id="more-ports", title="More source ports or addresses per server 4-tuple",
               commands=[f"Windows: {WINDOWS_WIDEN}", f"Linux: {LINUX_WIDEN}",
                         "or spread the clients over more source addresses / server ports"],
               caveat="A port must not come back toward the same server within 60 s.")


def linger0(workload_key: str) -> Fix:
    return Fix(id="linger0", title="Close with RST (SO_LINGER {1, 0}): no TIME_WAIT",
               set={workload_key: "client_rst"}, commands=["setsockopt(SO_LINGER, {l_onoff=1, l_linger=0})"],
               caveat="Unsent data is discarded and the peer sees ECONNRESET; TIME_WAIT's protection "
               "against delayed segments is lost.")


def graceful_close() -> Fix:
    return Fix(id="graceful-close", title="Close gracefully: read to EOF, then close(); no SO_LINGER{1,0}",
               commands=["remove setsockopt(SO_LINGER, {l_onoff=1, l_linger=0})",
                         "read the peer's data before close() so none is left unread"],
               caveat="The side that closes first then holds TIME_WAIT; plan ports for it.")


def timewait_fixes(os_guess: str, no_ts: bool) -> list[Fix]:
    """For SYNs that meet a server's TIME_WAIT (capture, trace): timestamps when they lack
    them, then fewer new 4-tuples, TIME_WAIT on the client, or more 4-tuples."""
    return (client_timestamps_for(os_guess) if no_ts else []) + [keepalive_advice(), client_closes_first(),
                                                                  more_ports()]


# -- tcp_tw_recycle ----------------------------------------------------------------------

def recycle_off(group: str | None = None, title: str = "") -> Fix:
    """tcp_tw_recycle=0 on servers (removed in 4.12: it breaks clients behind NAT)."""
    where = f" on {group}" if group else " on the servers"
    return Fix(id=_scoped("no-recycle", group), title=title or f"Turn tcp_tw_recycle off{where}",
               set={f"{group}:net.ipv4.tcp_tw_recycle": 0} if group else {},
               commands=[RECYCLE_OFF, "and remove net.ipv4.tcp_tw_recycle from /etc/sysctl.conf and "
                         "/etc/sysctl.d/* (it no longer exists from 4.12)"])


def recycle_off_on(h: HostFacts) -> Fix | None:
    return sysctl_fix("no-recycle", "Turn tcp_tw_recycle off", h, "server", {"net.ipv4.tcp_tw_recycle": 0},
                      caveat="Keep tcp_timestamps=1: turning timestamps off instead (an old RHEL workaround) "
                             "also disables PAWS and tcp_tw_reuse. Remove the line from /etc/sysctl.conf so "
                             "it does not come back at boot.")


def recycle_advice() -> list[Fix]:
    """For a capture: tcp_tw_recycle off, and what to do about server TIME_WAIT instead."""
    return [
        Fix(id="no-recycle", title="Turn tcp_tw_recycle off on the servers (kernels <= 4.11)",
            commands=[RECYCLE_OFF, "and remove net.ipv4.tcp_tw_recycle from /etc/sysctl.conf and /etc/sysctl.d/*"],
            caveat="It was removed in Linux 4.12 because it breaks clients behind NAT; without it the "
                   "server keeps TIME_WAIT for 60 s (harmless on the server side)."),
        Fix(id="tw-reuse-instead", title="If TIME_WAIT on the server was the worry: let clients close first",
            commands=["client-side: sysctl -w net.ipv4.tcp_tw_reuse=1 (needs timestamps)"]),
    ]


# -- listen queue ------------------------------------------------------------------------

def backlog(group: str | None = None) -> Fix:
    """A longer accept queue: listen() argument and net.core.somaxconn."""
    if group:
        return Fix(id=f"{group}-backlog", title=f"Raise the backlog on {group} to {SOMAXCONN} (listen() and somaxconn)",
                   set={f"host.{group}.backlog": SOMAXCONN, f"{group}:net.core.somaxconn": SOMAXCONN},
                   commands=[f"sysctl -w net.core.somaxconn={SOMAXCONN}", f"listen(fd, {SOMAXCONN}) in the server"],
                   caveat="A longer queue absorbs bursts; it does not add capacity.")
    return Fix(id="backlog", title="Raise the listen backlog (listen() argument and net.core.somaxconn)",
               commands=[f"sysctl -w net.core.somaxconn={SOMAXCONN}",
                         f"sysctl -w net.ipv4.tcp_max_syn_backlog={SOMAXCONN}",
                         f"listen(fd, {SOMAXCONN}) in the server (nginx: listen ... backlog={SOMAXCONN})"],
               caveat="A longer queue absorbs bursts; if accept() is slower than the arrival rate, add workers "
                      "or servers.")


def accept_faster(caveat: str = "") -> Fix:
    return Fix(id="accept-faster", title="Accept faster: more workers or threads calling accept()",
               commands=["more server processes or an accept loop that never blocks"], caveat=caveat)


def more_workers(group: str, workers: int) -> Fix:
    return Fix(id=f"{group}-workers", title=f"Double the application workers on {group}",
               set={f"host.{group}.workers": workers * 2})


def more_servers(group: str, count: int) -> Fix:
    return Fix(id=f"{group}-more-servers", title=f"Add back ends ({group} x2)", set={f"host.{group}.count": count * 2})


# -- TIME_WAIT table ---------------------------------------------------------------------

TW_BUCKETS_CAVEAT = ("Overflowing sockets skip TIME_WAIT, which hides port exhaustion but loses its protection; "
                     "fix the connection churn instead where possible.")


def tw_buckets(group: str, current: int) -> Fix:
    return Fix(id=f"{group}-tw-buckets", title=f"Raise tcp_max_tw_buckets on {group}",
               set={f"{group}:net.ipv4.tcp_max_tw_buckets": max(current * 4, 262144)},
               commands=["sysctl -w net.ipv4.tcp_max_tw_buckets=262144"], caveat=TW_BUCKETS_CAVEAT)


# -- NAT, load balancers, conntrack --------------------------------------------------------

def lb_ignore_msl(commands: list[str] | None = None, caveat: str = "", lb_name: str = "") -> Fix:
    """The load balancer reclaims a session at close instead of holding it (ignore-tcp-msl)."""
    return Fix(id="lb-ignore-msl", title="Reclaim sessions at close (ignore-tcp-msl" + (f" on {lb_name})" if lb_name
                                                                                        else ")"),
               set={"lb.ignore_msl": True}, commands=commands or [], caveat=caveat)


def shorter_conntrack_timewait(h: HostFacts, default_group: str) -> Fix | None:
    """conntrack's TIME_WAIT hold (120 s) to 30 s: translations and entries come back sooner."""
    return sysctl_fix("shorter-conntrack-timewait", "Shorten conntrack's TIME_WAIT hold to 30 s", h, default_group,
                      {"net.netfilter.nf_conntrack_tcp_timeout_time_wait": 30},
                      caveat="Ports come back 4x sooner; a late segment of an old flow may then meet a new one.")


def nat_addresses(addresses: int) -> Fix:
    return Fix(id="nat-addresses", title=f"Give the NAT {addresses * 4} addresses", set={"nat.addresses": addresses * 4},
               commands=["add SNAT/MASQUERADE pool addresses (cloud: secondary IPs)"])


def nat_tw_hold() -> Fix:
    return Fix(id="nat-tw-hold", title="Shorten the NAT's TIME_WAIT hold to 30 s", set={"nat.time_wait_s": 30.0},
               commands=["sysctl -w net.netfilter.nf_conntrack_tcp_timeout_time_wait=30", "GCP: tcpTimeWaitTimeoutSec=30"])


def more_nat_addresses(lo: int, hi: int) -> Fix:
    return Fix(id="more-nat-addresses", title=f"Give the rule more NAT addresses or a wider port range than {lo}-{hi}",
               commands=["nft: ... snat to 192.0.2.10-192.0.2.13:1024-65535 (or masquerade to :1024-65535)",
                         "iptables: -j SNAT --to-source 192.0.2.10-192.0.2.13:1024-65535"],
               caveat="Each NAT address adds a whole pool per destination.")


def lb_snat_addresses(addresses: int) -> Fix:
    return Fix(id="lb-snat-addresses", title=f"{addresses * 4} SNAT addresses on the LB",
               set={"lb.snat_addresses": addresses * 4})


def nat_timeouts() -> Fix:
    return Fix(id="nat-timeouts", title="Keep NAT/LB idle timeouts above the connections' idle time",
               commands=["sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=432000",
                         "or TCP keep-alives shorter than the NAT's idle timeout"])


def capture_and_analyze(title: str, caveat: str = "") -> Fix:
    return Fix(id="capture-and-analyze", title=title, commands=[CAPTURE_SYNS, "tcpreuse analyze syn.pcap"],
               caveat=caveat)


def raise_backlog(new_backlog: int, somaxconn: object) -> Fix:
    """A live server's backlog to `new_backlog` (somaxconn too unless already that high)."""
    commands = []
    if not isinstance(somaxconn, int) or somaxconn < new_backlog:
        commands.append(f"sysctl -w net.core.somaxconn={new_backlog}")
    commands.append("raise the backlog the server passes to listen() (nginx: listen ... backlog=N)")
    return Fix(id="raise-backlog",
               title=f"Raise the listen backlog to {new_backlog:,} (application listen()"
                     + (" and somaxconn)" if len(commands) > 1 else f"; somaxconn is already {somaxconn:,})"),
               set={"host.server.backlog": new_backlog}, commands=commands,
               caveat="A bigger queue absorbs bursts; if the server accepts too slowly on average, "
                      "it only delays the overflow.")


def raise_tw_buckets(h: HostFacts, new_max: int, client_side: bool) -> Fix | None:
    return sysctl_fix("raise-tw-buckets", f"Raise tcp_max_tw_buckets to {new_max:,}", h,
                      "client" if client_side else "server", {"net.ipv4.tcp_max_tw_buckets": new_max},
                      caveat="Each TIME_WAIT mini-socket costs a few hundred bytes; the limit exists against memory "
                             "exhaustion, not as a TIME_WAIT tuning knob.")


def raise_conntrack_max(h: HostFacts, cmax: int) -> Fix | None:
    return sysctl_fix("raise-conntrack-max", f"Raise nf_conntrack_max to {2 * cmax:,}", h, "server",
                      {"net.netfilter.nf_conntrack_max": 2 * cmax},
                      caveat="Each entry costs about 300 bytes of kernel memory.")


# -- ports a host picks and binds -----------------------------------------------------------

def reserve_listener_ports(h: HostFacts, ports: str) -> Fix | None:
    return sysctl_fix("reserve-listener-ports", "Reserve the listening ports", h, "client",
                      {"net.ipv4.ip_local_reserved_ports": ports})


def port_range_parity(h: HostFacts, lo: int, hi: int) -> Fix | None:
    return sysctl_fix("port-range-parity", f"Use {lo} {hi}", h, "client", {"net.ipv4.ip_local_port_range": f"{lo} {hi}"})


def bind_address_no_port() -> Fix:
    return Fix(id="bind-address-no-port", title="IP_BIND_ADDRESS_NO_PORT before bind() in clients",
               commands=["setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1) before bind(addr, 0)"])


def reuseaddr() -> Fix:
    return Fix(id="reuseaddr", title="SO_REUSEADDR on servers that restart",
               commands=["setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1) before bind()"])


# -- settings and limits ---------------------------------------------------------------------

def fin_timeout_default(h: HostFacts) -> Fix | None:
    return sysctl_fix("fin-timeout-default", "Put it back to 60 and address TIME_WAIT where it costs (see the port "
                      "findings: keep-alive, tcp_tw_reuse, wider range)", h, "client", {"net.ipv4.tcp_fin_timeout": 60},
                      caveat="Harmless to keep if short FIN_WAIT2 is wanted for other reasons.")


def raise_file_max(h: HostFacts, fmax: int) -> Fix | None:
    return sysctl_fix("raise-file-max", "Raise fs.file-max", h, "server", {"fs.file-max": fmax * 2})


def raise_nofile(pid: int, soft: int) -> Fix:
    return Fix(id="raise-nofile", title="Raise the process's open-file limit",
               commands=["LimitNOFILE=1048576 in the systemd unit (or ulimit -n before start)",
                         f"prlimit --pid {pid} --nofile={max(soft * 4, 65536)}"])


def check_the_server(where: str) -> Fix:
    """A client sees the effect only: look at the server (doctor there)."""
    return Fix(id="check-the-server", title=f"Run `tcpreuse doctor` on {where}: listen queue, SYN queue, conntrack",
               commands=["tcpreuse doctor --interval 2   # on the server",
                         "nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPReqQFullDrop"])
