"""The socket table: one row per TCP socket, columnar (numpy), whatever it was read from.

A live host fills it from netlink sock_diag (:mod:`.sockdiag`), a snapshot from JSON, a
pasted ``ss -tan`` / ``netstat -ano`` from text (:mod:`.paste`). Rows keep the kernel's
own numbers: ``state`` is the kernel's TCP state (``TCP_TIME_WAIT`` = 6), ``expires`` is
``idiag_expires`` in ms (the TIME_WAIT time left), ``cookie`` is the socket cookie, which a
TIME_WAIT mini-socket inherits from its full socket (``inet_twsk_alloc``), so two samples
can tell a new connection from an old one that changed state.

Addresses are 16 raw bytes; IPv4 sits in the first four (the kernel's ``idiag_src[0]``),
and IPv4-mapped IPv6 addresses are folded to IPv4 so that one destination is one key.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import HostError

# include/net/tcp_states.h
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12

STATE_NAMES = {
    TCP_ESTABLISHED: "ESTAB", TCP_SYN_SENT: "SYN-SENT", TCP_SYN_RECV: "SYN-RECV",
    TCP_FIN_WAIT1: "FIN-WAIT-1", TCP_FIN_WAIT2: "FIN-WAIT-2", TCP_TIME_WAIT: "TIME-WAIT",
    TCP_CLOSE: "UNCONN", TCP_CLOSE_WAIT: "CLOSE-WAIT", TCP_LAST_ACK: "LAST-ACK",
    TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING", TCP_NEW_SYN_RECV: "SYN-RECV",
}

# idiag_timer values (ss: tmr_name[])
TIMER_OFF, TIMER_ON, TIMER_KEEPALIVE, TIMER_TIMEWAIT, TIMER_PERSIST = 0, 1, 2, 3, 4

AF_INET, AF_INET6 = socket.AF_INET, socket.AF_INET6

SOCK_DTYPE = np.dtype(
    [
        ("family", "u1"),
        ("state", "u1"),
        ("timer", "u1"),
        ("retrans", "u1"),
        ("sport", "u2"),
        ("dport", "u2"),
        ("src", "V16"),
        ("dst", "V16"),
        ("expires", "u4"),  # ms until the socket's timer fires (TIME_WAIT: time left)
        ("rqueue", "u4"),  # LISTEN: accept-queue length; else bytes unread
        ("wqueue", "u4"),  # LISTEN: backlog (sk_max_ack_backlog); else bytes unacked
        ("uid", "u4"),
        ("inode", "u4"),  # 0 for TIME_WAIT and request sockets
        ("cookie", "u8"),
        ("ts", "i1"),  # timestamps negotiated (tcp_info): 1 yes, 0 no, -1 unknown
    ]
)

_V4MAPPED = b"\x00" * 10 + b"\xff\xff"
_ZERO16 = b"\x00" * 16


@dataclass
class SockTable:
    rows: np.ndarray  # structured, SOCK_DTYPE
    has_timers: bool = True  # False when read from text without timers (ss -tan)
    has_cookies: bool = True  # False when cookies were synthesised (pasted text)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def empty(cls) -> SockTable:
        return cls(np.zeros(0, dtype=SOCK_DTYPE))

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.rows["state"] == state))

    # ---- JSON (snapshots) -----------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Columnar JSON: addresses through a small table, everything else as int lists."""
        r = self.rows
        addrs, inv = np.unique(np.concatenate([r["src"], r["dst"]]), return_inverse=True)
        n = len(r)
        cols: dict[str, Any] = {
            k: r[k].tolist() for k in SOCK_DTYPE.names or () if k not in ("src", "dst")
        }
        cols["src"] = inv[:n].tolist()
        cols["dst"] = inv[n:].tolist()
        return {
            "addrs": [addr_text(a.tobytes()) for a in addrs],
            "columns": cols,
            "has_timers": self.has_timers,
            "has_cookies": self.has_cookies,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SockTable:
        try:
            addrs = [addr_bytes(a) for a in d["addrs"]]
            cols = d["columns"]
            n = len(cols["state"])
            rows = np.zeros(n, dtype=SOCK_DTYPE)
            for k in SOCK_DTYPE.names or ():
                if k in ("src", "dst"):
                    table = np.array(addrs, dtype="V16") if addrs else np.zeros(0, "V16")
                    rows[k] = table[np.asarray(cols[k], dtype=np.int64)] if n else rows[k]
                elif k in cols:
                    rows[k] = np.asarray(cols[k])
                elif k == "ts":
                    rows[k] = -1
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise HostError(f"socket table in snapshot is malformed ({type(e).__name__}: {e})") from None
        return cls(rows, has_timers=bool(d.get("has_timers", True)),
                   has_cookies=bool(d.get("has_cookies", True)))


def addr_bytes(text: str) -> bytes:
    """'10.0.0.1' or '::1' -> 16 bytes (IPv4 and IPv4-mapped in the first four)."""
    text = text.strip().strip("[]").split("%")[0]
    if text in ("*", ""):
        return _ZERO16
    a = ipaddress.ip_address(text)
    if isinstance(a, ipaddress.IPv6Address):
        if a.ipv4_mapped is not None:
            return a.ipv4_mapped.packed + b"\x00" * 12
        return a.packed
    return a.packed + b"\x00" * 12


def addr_text(b: bytes, family: int | None = None) -> str:
    """16 bytes -> text: IPv4 when the last 12 bytes are zero; a wildcard is "*" unless
    the family says which ("0.0.0.0" or "::")."""
    if b == _ZERO16:
        return "0.0.0.0" if family == AF_INET else "::" if family == AF_INET6 else "*"
    if family == AF_INET or (family is None and b[4:] == _ZERO16[4:]):
        return socket.inet_ntop(AF_INET, b[:4])
    return socket.inet_ntop(AF_INET6, b)


_MAPPED_WORD = np.frombuffer(b"\x00\x00\xff\xff", dtype=np.uint32)[0]


def fold_v4mapped(rows: np.ndarray) -> None:
    """Rewrite ::ffff:a.b.c.d (AF_INET6 sockets talking IPv4) as IPv4 keys, in place."""
    v6 = np.nonzero(rows["family"] == AF_INET6)[0]
    if not v6.size:
        return
    for col in ("src", "dst"):
        w = np.ascontiguousarray(rows[col][v6]).view(np.uint32).reshape(-1, 4).copy()
        mapped = (w[:, 0] == 0) & (w[:, 1] == 0) & (w[:, 2] == _MAPPED_WORD)
        if mapped.any():
            w[mapped, 0] = w[mapped, 3]
            w[mapped, 1:] = 0
            rows[col][v6] = w.view("V16").ravel()
            if col == "src":
                rows["family"][v6[mapped]] = AF_INET  # an IPv4 connection on an IPv6 socket
