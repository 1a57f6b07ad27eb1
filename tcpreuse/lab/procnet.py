"""Reading a namespace's /proc/net files: counters, socket counts, conntrack.

/proc/PID/net/* shows the network namespace of process PID, so the lab reads any
namespace through the "anchor" process it keeps there, without spawning anything. The
parsers are pure functions of the file text (tested on recorded text).
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

# Sections kept as counters, and the values in them that are gauges or constants, not
# counters (a delta of them means nothing). Names as nstat prints them: section + field.
COUNTER_SECTIONS = ("TcpExt", "Tcp")
NOT_COUNTERS = frozenset({"TcpRtoAlgorithm", "TcpRtoMin", "TcpRtoMax", "TcpMaxConn", "TcpCurrEstab"})


def parse_pairs(text: str, sections: tuple[str, ...] | None = None) -> dict[str, int]:
    """/proc/net/netstat or /proc/net/snmp: header/value line pairs -> {nstat name: value},
    optionally only for some sections ("TcpExt", "Tcp", ...)."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        hp, vp = head.split(), vals.split()
        if not hp or not vp or hp[0] != vp[0]:
            continue
        section = hp[0].rstrip(":")
        if sections is not None and section not in sections:
            continue
        for k, v in zip(hp[1:], vp[1:], strict=False):
            try:
                out[section + k] = int(v)
            except ValueError:
                continue
    return out


def counters(netstat: str, snmp: str) -> dict[str, int]:
    both = {**parse_pairs(netstat, COUNTER_SECTIONS), **parse_pairs(snmp, COUNTER_SECTIONS)}
    return {k: v for k, v in both.items() if k not in NOT_COUNTERS}


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


@dataclass
class SockStat:
    tcp_inuse: int
    time_wait: int
    orphan: int


def parse_sockstat(text: str) -> SockStat:
    """/proc/net/sockstat "TCP: inuse N orphan N tw N alloc N mem N" (tw is per namespace)."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            d = {f[i]: int(f[i + 1]) for i in range(0, len(f) - 1, 2)}
            return SockStat(tcp_inuse=d.get("inuse", 0), time_wait=d.get("tw", 0),
                            orphan=d.get("orphan", 0))
    return SockStat(0, 0, 0)


def parse_ct_stat(text: str) -> int:
    """/proc/net/stat/nf_conntrack: the first column ("entries", hex) is the namespace's
    conntrack count, repeated on every per-CPU line."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("entries"):
        return 0
    return int(lines[1].split()[0], 16)


class ProcNet:
    """The /proc/net of the namespace that process `pid` lives in."""

    def __init__(self, pid: int) -> None:
        self.base = Path(f"/proc/{pid}/net")

    def _read(self, name: str) -> str:
        try:
            return (self.base / name).read_text()
        except OSError:
            return ""

    def counters(self) -> dict[str, int]:
        return counters(self._read("netstat"), self._read("snmp"))

    def sockstat(self) -> SockStat:
        return parse_sockstat(self._read("sockstat"))

    def conntrack_count(self) -> int:
        return parse_ct_stat(self._read("stat/nf_conntrack"))

    def listening(self) -> set[tuple[str, int]]:
        return parse_listening(self._read("tcp"))


def parse_listening(text: str) -> set[tuple[str, int]]:
    """/proc/net/tcp: (address, port) of sockets in LISTEN (state 0A)."""
    out = set()
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4 or f[3] != "0A":
            continue
        h, _, p = f[1].partition(":")
        try:
            addr = socket.inet_ntoa(int(h, 16).to_bytes(4, sys.byteorder))
            out.add((addr, int(p, 16)))
        except (ValueError, OSError):
            continue
    return out
