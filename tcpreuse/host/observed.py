"""What was observed on one host, before any judgement: the doctor's intermediate form.

Every source ends here: the live Linux collector and a snapshot (both from raw /proc files
and socket tables, through :func:`from_raw`), and pasted command output (``sysctl -a``,
``netstat -s``, ``ss -tan``, ``netsh ...``, through :mod:`.paste`). :mod:`.facts` turns an
:class:`Observed` into the shared :class:`~tcpreuse.diagnose.base.HostFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .procfs import NETSTAT, SNMP, parse_counters, sysctl_rel
from .sockets import SockTable

# The sysctls the doctor reads (each a file under /proc/sys). Per network namespace unless
# noted by the kernel: fs.*, kernel.* and (in child namespaces) nf_conntrack_max are global.
SYSCTLS: tuple[str, ...] = (
    "kernel.osrelease",
    "kernel.hostname",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_rfc1337",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_ehash_entries",
    "net.core.somaxconn",
    "net.ipv4.ip_forward",
    "net.netfilter.nf_conntrack_count",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_buckets",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait",
    "net.nf_conntrack_max",
    "fs.file-max",
    "fs.file-nr",
    "fs.nr_open",
)

COUNTER_FILES = ("/proc/" + SNMP, "/proc/" + NETSTAT)
# The counter lines ("sections") each file holds, for telling "unreadable" from "absent".
COUNTER_SECTIONS = {"/proc/net/snmp": {"Ip", "Icmp", "IcmpMsg", "Tcp", "Udp", "UdpLite"},
                    "/proc/net/netstat": {"TcpExt", "IpExt", "MPTcpExt"}}


def sysctl_path(name: str) -> str:
    """The key a sysctl's file is recorded under ("/proc/sys/net/ipv4/...")."""
    return "/proc/" + sysctl_rel(name)


@dataclass
class CounterSample:
    t: float  # seconds (monotonic on the observing host)
    values: dict[str, int]  # nstat names
    complete: bool = True  # False for `netstat -s` (it omits zeros)
    unread: set[str] = field(default_factory=set)  # sections whose file was unreadable (TcpExt ...)


@dataclass
class SocketSample:
    t: float
    table: SockTable


@dataclass
class ProcessInfo:
    pid: int
    name: str
    nofile_soft: int | None = None
    nofile_hard: int | None = None
    fds: int | None = None
    inodes: list[int] = field(default_factory=list)  # socket inodes it holds


@dataclass
class Observed:
    name: str
    os: str = "linux"  # linux | windows
    kernel_release: str | None = None  # "6.18.4-...", "2.6.32-279.el6.x86_64"
    profile: str | None = None  # explicit profile name (overrides kernel_release)
    sysctls: dict[str, str] = field(default_factory=dict)  # raw text by sysctl name
    unreadable: dict[str, str] = field(default_factory=dict)  # name/path -> why
    counters: list[CounterSample] = field(default_factory=list)
    sockets: list[SocketSample] = field(default_factory=list)
    rlimit_nofile: tuple[int, int] | None = None  # of the observing shell/process
    processes: list[ProcessInfo] | None = None
    nat_tables: list[str] | None = None  # nat tables seen (iptables/nftables); None: unknown
    ipvs_services: int | None = None  # IPVS virtual services; None: IPVS not loaded / unknown
    role: str | None = None  # given by the user (--role)
    netns: str | None = None
    taken_at: float | None = None  # wall clock (epoch s)
    windows: dict[str, Any] = field(default_factory=dict)  # netsh facts by setting name
    snat_pools: list[Any] | None = None  # host.nat.SnatPool of the NAT rules; None: not read
    conntrack: list[Any] | None = None  # host.nat.CtEntry (TCP); None: not read
    connect_trace: Any = None  # host.trace.ConnectCounts over connect_trace_s; None: not traced
    connect_trace_s: float | None = None
    inputs: list[str] = field(default_factory=list)  # what it was built from
    notes: list[str] = field(default_factory=list)  # partial results, skipped lines...


def parse_proc_counters(text: str, origin: str) -> tuple[dict[str, int], list[str]]:
    """/proc/net/snmp and /proc/net/netstat -> nstat names, with notes (host.procfs)."""
    return parse_counters(text, origin)
