"""Kernel counters a load run samples, named as `nstat` prints them.

/proc/net/netstat and /proc/net/snmp are per network namespace, so inside the lab each
host's numbers are its own. The TIME_WAIT count comes from /proc/net/sockstat's `tw`
field: one small read per second, per namespace (the kernel keeps the count in the
namespace's tcp_death_row), where a sock_diag dump would walk every TIME_WAIT socket —
50,000 of them at the rates we care about. Its one limit: a server in the *same*
namespace (loopback tests) adds its own TIME_WAIT sockets to the count.
"""

from __future__ import annotations

from ..host.procfs import ProcFS, parse_counters, parse_sockstat

PREFIXES = ("Tcp", "TcpExt")


def parse_nstat(text: str, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, int]:
    """Pairs of `Prefix: names` / `Prefix: values` lines to {PrefixName: value}
    (host.procfs.parse_counters)."""
    return parse_counters(text, sections=prefixes)[0]


def parse_sockstat_tw(text: str) -> int:
    """The `tw` field of the `TCP:` line of /proc/net/sockstat."""
    return parse_sockstat(text).time_wait


def read_counters(proc: ProcFS | None = None) -> dict[str, int]:
    """Tcp and TcpExt counters of this thread's namespace (or of `proc`'s)."""
    return (proc or ProcFS()).counters(PREFIXES)


def read_time_wait(proc: ProcFS | None = None) -> int:
    return (proc or ProcFS()).sockstat().time_wait


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """after - before for every counter in `after`, zeros included (a zero is a finding too)."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items())}


SYSCTLS = (
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_syn_retries",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
)


def read_sysctls(names: tuple[str, ...] = SYSCTLS, proc: ProcFS | None = None) -> dict[str, str]:
    """The sysctls that decide a short-connection run, as this namespace sees them."""
    return (proc or ProcFS()).sysctls(names)
