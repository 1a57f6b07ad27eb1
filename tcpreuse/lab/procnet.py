"""Reading a namespace's /proc/net files: counters, socket counts, conntrack.

/proc/PID/net/* shows the network namespace of process PID, so the lab reads any
namespace through the "anchor" process it keeps there, without spawning anything. The
files are read and parsed by host.procfs (the one reader of /proc); this module keeps
the lab's view of them: which counters are counters, and deltas.
"""

from __future__ import annotations

from ..host.procfs import (
    ProcFS,
    SockStat,
    parse_counters,
    parse_ct_stat,
    parse_listening,
    parse_sockstat,
)

__all__ = ["COUNTER_SECTIONS", "NOT_COUNTERS", "ProcNet", "SockStat", "counters", "deltas", "parse_ct_stat",
           "parse_listening", "parse_pairs", "parse_sockstat"]

# Sections kept as counters, and the values in them that are gauges or constants, not
# counters (a delta of them means nothing). Names as nstat prints them: section + field.
COUNTER_SECTIONS = ("TcpExt", "Tcp")
NOT_COUNTERS = frozenset({"TcpRtoAlgorithm", "TcpRtoMin", "TcpRtoMax", "TcpMaxConn", "TcpCurrEstab"})


def parse_pairs(text: str, sections: tuple[str, ...] | None = None) -> dict[str, int]:
    """/proc/net/netstat or /proc/net/snmp -> {nstat name: value} (host.procfs.parse_counters)."""
    return parse_counters(text, sections=sections)[0]


def _keep(values: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in values.items() if k not in NOT_COUNTERS}


def counters(netstat: str, snmp: str) -> dict[str, int]:
    return _keep({**parse_pairs(netstat, COUNTER_SECTIONS), **parse_pairs(snmp, COUNTER_SECTIONS)})


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


class ProcNet:
    """The /proc/net of the namespace that process `pid` lives in."""

    def __init__(self, pid: int) -> None:
        self.proc = ProcFS.of_pid(pid)
        self.base = self.proc.net

    def counters(self) -> dict[str, int]:
        return _keep(self.proc.counters(COUNTER_SECTIONS))

    def sockstat(self) -> SockStat:
        return self.proc.sockstat()

    def conntrack_count(self) -> int:
        return self.proc.conntrack_count()

    def listening(self) -> set[tuple[str, int]]:
        return self.proc.listening()
