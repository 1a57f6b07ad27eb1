"""Which process owns each listener, from the socket table and /proc/PID/fd.

Receive-path events (drops, resets, SYN-ACK retransmits) run in whatever context the
packet arrived in, so the kernel's pid there means nothing; the listener the packet was
for is attributed to the process that holds its socket.
"""

from __future__ import annotations

import ipaddress
import os

from ..host.sockets import TCP_LISTEN


def listener_owners(netns: str | None = None) -> dict[tuple[str, int], str]:
    """(address, port) -> "comm[pid]" for the IPv4 listeners of the namespace."""
    from ..host.sockdiag import read_sockets
    from ..host.source import entered_netns

    try:
        with entered_netns(netns):
            table, _ = read_sockets(states=1 << TCP_LISTEN)
    except OSError:
        return {}
    rows = table.rows
    by_inode: dict[int, tuple[str, int]] = {}
    for r in rows.tolist() if len(rows) else []:
        rec = dict(zip(rows.dtype.names or (), r, strict=True))
        if rec["family"] != 2 or not rec["inode"]:
            continue
        addr = str(ipaddress.IPv4Address(bytes(rec["src"])[:4]))
        by_inode[int(rec["inode"])] = (addr, int(rec["sport"]))
    out: dict[tuple[str, int], str] = {}
    if not by_inode:
        return out
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.scandir(f"/proc/{pid}/fd")
            for ent in fds:
                try:
                    link = os.readlink(ent.path)
                except OSError:
                    continue
                if link.startswith("socket:[") and int(link[8:-1]) in by_inode:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                    out.setdefault(by_inode[int(link[8:-1])], f"{comm}[{pid}]")
        except OSError:
            continue
    return out
