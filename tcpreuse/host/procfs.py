"""The one reader of the /proc files tcpreuse parses, with a relocatable root.

/proc/net/snmp, /proc/net/netstat (counters, as ``nstat`` names them), /proc/net/sockstat
(socket and TIME_WAIT counts), /proc/net/stat/nf_conntrack (the conntrack count),
/proc/net/tcp (listening sockets) and /proc/sys/* (sysctls) are parsed here and nowhere
else: the doctor (host/), the lab (lab/procnet.py) and a load run (load/kstat.py) all
read them through a :class:`ProcFS`.

Like psutil's ``get_procfs_path()``, the root moves:

* ``ProcFS()``: this thread's network namespace (``/proc/thread-self/net`` where the
  kernel has it, so a thread that entered another namespace with setns() reads that one;
  ``/proc/net`` otherwise);
* ``ProcFS.of_pid(pid)``: the namespace process ``pid`` lives in (``/proc/PID/net``: the
  lab reads each namespace through its anchor process without entering it);
* ``ProcFS(root)``: a directory laid out like /proc (recorded files in tests);
* ``ProcFS.recorded(files)``: files recorded by absolute path (a snapshot's
  ``{"/proc/net/snmp": text, ...}``), so a replay goes through the same parsers.

sysctls are per namespace but /proc/PID/ has no sys/: read them at the root of a thread
inside the namespace, or from a recording. The parsers are pure functions of the text.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SNMP = "net/snmp"
NETSTAT = "net/netstat"
SOCKSTAT = "net/sockstat"
CONNTRACK_STAT = "net/stat/nf_conntrack"
TCP4 = "net/tcp"


def sysctl_rel(name: str) -> str:
    """net.ipv4.tcp_tw_reuse -> sys/net/ipv4/tcp_tw_reuse (relative to the proc root)."""
    return "sys/" + name.replace(".", "/")


# ---- parsers -----------------------------------------------------------------------------

def parse_counters(text: str, origin: str = "", sections: tuple[str, ...] | None = None
                   ) -> tuple[dict[str, int], list[str]]:
    """/proc/net/snmp and /proc/net/netstat: header/value line pairs -> {nstat name: value},
    optionally only for some sections ("TcpExt", "Tcp", ...), and notes on what was
    skipped. "TcpExt: SyncookiesSent ..." / "TcpExt: 0 ..." gives TcpExtSyncookiesSent = 0."""
    out: dict[str, int] = {}
    notes: list[str] = []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i in range(0, len(lines) - 1, 2):
        h, v = lines[i], lines[i + 1]
        hp, _, names = h.partition(":")
        vp, _, values = v.partition(":")
        if hp != vp or not hp:
            notes.append(f"{origin}: unexpected line pair {h[:30]!r} / {v[:30]!r}; skipped")
            continue
        if sections is not None and hp not in sections:
            continue
        ns, vs = names.split(), values.split()
        if len(ns) != len(vs):
            notes.append(f"{origin}: {hp} has {len(ns)} names but {len(vs)} values; skipped")
            continue
        for n, x in zip(ns, vs, strict=True):
            try:
                out[hp + n] = int(x)
            except ValueError:
                notes.append(f"{origin}: {hp}{n} is not a number ({x!r})")
    if len(lines) % 2:
        notes.append(f"{origin}: trailing line without values ignored")
    return out, notes


@dataclass
class SockStat:
    tcp_inuse: int
    time_wait: int
    orphan: int


def parse_sockstat(text: str) -> SockStat:
    """/proc/net/sockstat "TCP: inuse N orphan N tw N alloc N mem N" (tw is per namespace:
    the namespace's tcp_death_row count)."""
    for line in text.splitlines():
        if line.startswith("TCP:"):
            f = line.split()[1:]
            d: dict[str, int] = {}
            for k, v in zip(f[::2], f[1::2], strict=False):
                try:
                    d[k] = int(v)
                except ValueError:
                    continue
            return SockStat(tcp_inuse=d.get("inuse", 0), time_wait=d.get("tw", 0), orphan=d.get("orphan", 0))
    return SockStat(0, 0, 0)


def parse_ct_stat(text: str) -> int:
    """/proc/net/stat/nf_conntrack: the first column ("entries", hex) is the namespace's
    conntrack count, repeated on every per-CPU line."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("entries"):
        return 0
    return int(lines[1].split()[0], 16)


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


# ---- the reader --------------------------------------------------------------------------

class ProcFS:
    """The /proc files of one network namespace (see the module docstring for the roots)."""

    def __init__(self, root: str | Path = "/proc", *, net: str | Path | None = None,
                 files: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        if net is None:
            net = self.root / "net"
            if str(root) == "/proc" and os.path.isdir("/proc/thread-self/net"):
                net = "/proc/thread-self/net"
        self.net = Path(net)
        self.files = files

    @classmethod
    def of_pid(cls, pid: int) -> ProcFS:
        return cls(f"/proc/{pid}")

    @classmethod
    def recorded(cls, files: Mapping[str, str]) -> ProcFS:
        """Files recorded by their absolute /proc path (a snapshot sample)."""
        return cls("/proc", net="/proc/net", files=files)

    def path(self, rel: str) -> Path:
        """net/... under the namespace's net directory, anything else under the root."""
        if rel.startswith("net/"):
            return self.net / rel[4:]
        return self.root / rel

    def read(self, rel: str) -> str:
        """The text of one file; OSError (FileNotFoundError for a recording without it)."""
        if self.files is not None:
            key = "/proc/" + rel
            if key not in self.files:
                raise FileNotFoundError(key)
            return self.files[key]
        with open(self.path(rel), encoding="utf-8", errors="replace") as f:
            return f.read()

    def read_or_empty(self, rel: str) -> str:
        try:
            return self.read(rel)
        except OSError:
            return ""

    def counters(self, sections: tuple[str, ...] | None = None) -> dict[str, int]:
        """snmp then netstat, merged; a file that cannot be read contributes nothing."""
        out: dict[str, int] = {}
        for rel in (SNMP, NETSTAT):
            out.update(parse_counters(self.read_or_empty(rel), "/proc/" + rel, sections)[0])
        return out

    def sockstat(self) -> SockStat:
        return parse_sockstat(self.read_or_empty(SOCKSTAT))

    def conntrack_count(self) -> int:
        return parse_ct_stat(self.read_or_empty(CONNTRACK_STAT))

    def listening(self) -> set[tuple[str, int]]:
        return parse_listening(self.read_or_empty(TCP4))

    def sysctl(self, name: str) -> str:
        """A sysctl's value with white space folded ("32768\\t60999\\n" -> "32768 60999")."""
        return " ".join(self.read(sysctl_rel(name)).split())

    def sysctls(self, names: tuple[str, ...] | list[str]) -> dict[str, str]:
        out = {}
        for n in names:
            try:
                out[n] = self.sysctl(n)
            except OSError:
                continue
        return out
