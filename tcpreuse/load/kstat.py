"""Kernel counters a load run samples, named as `nstat` prints them.

/proc/net/netstat and /proc/net/snmp are per network namespace, so inside the lab each
host's numbers are its own. The TIME_WAIT count comes from /proc/net/sockstat's `tw`
field: one small read per second, per namespace (the kernel keeps the count in the
namespace's tcp_death_row), where a sock_diag dump would walk every TIME_WAIT socket —
50,000 of them at the rates we care about. Its one limit: a server in the *same*
namespace (loopback tests) adds its own TIME_WAIT sockets to the count.
"""

from __future__ import annotations

from pathlib import Path

PREFIXES = ("Tcp", "TcpExt")


def parse_nstat(text: str, prefixes: tuple[str, ...] = PREFIXES) -> dict[str, int]:
    """Pairs of `Prefix: names` / `Prefix: values` lines to {PrefixName: value}."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for names_line, values_line in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = names_line.partition(":")
        vprefix, _, values = values_line.partition(":")
        if prefix != vprefix or prefix not in prefixes:
            continue
        for n, v in zip(names.split(), values.split(), strict=False):
            try:
                out[prefix + n] = int(v)
            except ValueError:
                continue
    return out


def parse_sockstat_tw(text: str) -> int:
    """The `tw` field of the `TCP:` line of /proc/net/sockstat."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            f = line.split()
            for k, v in zip(f[1::2], f[2::2], strict=False):
                if k == "tw":
                    return int(v)
    return 0


def read_counters(root: Path = Path("/proc/net")) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        try:
            out.update(parse_nstat((root / name).read_text()))
        except OSError:
            continue
    return out


def read_time_wait(root: Path = Path("/proc/net")) -> int:
    try:
        return parse_sockstat_tw((root / "sockstat").read_text())
    except OSError:
        return 0


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


def read_sysctls(names: tuple[str, ...] = SYSCTLS) -> dict[str, str]:
    """The sysctls that decide a short-connection run, as this namespace sees them."""
    out = {}
    for n in names:
        try:
            out[n] = " ".join(Path("/proc/sys", *n.split(".")).read_text().split())
        except OSError:
            continue
    return out
