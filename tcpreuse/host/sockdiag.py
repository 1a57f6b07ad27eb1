"""Read the TCP socket table from the kernel over netlink sock_diag (what `ss` uses).

Why not pyroute2's ``DiagSocket``: it decodes every message into Python objects (NLA
trees), tens of microseconds per socket; a busy client holds 100,000 TIME_WAIT entries
and the doctor must read them in about the time `ss` takes. The wire format is small and
stable (``struct nlmsghdr`` + ``struct inet_diag_msg``, include/uapi/linux/inet_diag.h),
so this module receives the whole dump and lets numpy find and decode the messages.
Not /proc/net/tcp: the kernel documents it as deprecated, it is slower, and it has no
socket cookies.

Finding message boundaries without a Python loop: every message starts with its length,
so the starts form a chain 0 -> 0 + len0 -> ... Candidate starts are the 4-byte words
that look like a header (a plausible length and a sock_diag/DONE/ERROR type); the true
starts are the candidates reachable from offset 0, found by pointer doubling (log2(n)
numpy steps). A candidate that merely looks like a header inside a message's payload is
never on the chain, so it cannot be mistaken for a message.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import numpy as np

from ..errors import HostError
from .sockets import SOCK_DTYPE, SockTable, fold_v4mapped

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2  # attribute carrying struct tcp_info
TCPI_OPT_TIMESTAMPS = 1
ALL_STATES = (1 << 13) - 1  # TCP_ESTABLISHED .. TCP_NEW_SYN_RECV (and bit 0)
MAX_MSG = 1 << 16  # no sock_diag message is near this; bounds the candidate test

_NLMSGHDR = struct.Struct("=IHHII")
_HDR = struct.Struct("=IH")
_ATTR = struct.Struct("=HH")
_MSG_OFF = 16  # struct inet_diag_msg follows struct nlmsghdr
_MSG_WORDS = 72 // 4

# struct inet_diag_msg (72 bytes) as numpy sees it: ports big-endian, the rest host order.
DIAG_MSG = np.dtype(
    {
        "names": ["family", "state", "timer", "retrans", "sport", "dport", "src", "dst",
                  "cookie", "expires", "rqueue", "wqueue", "uid", "inode"],
        "formats": ["u1", "u1", "u1", "u1", ">u2", ">u2", "V16", "V16",
                    "=u8", "=u4", "=u4", "=u4", "=u4", "=u4"],
        "offsets": [0, 1, 2, 3, 4, 6, 8, 24, 44, 52, 56, 60, 64, 68],
        "itemsize": 72,
    }
)


def _request(family: int, states: int, ext: int, seq: int) -> bytes:
    # struct inet_diag_req_v2: family, protocol, idiag_ext, pad, idiag_states, inet_diag_sockid
    body = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, ext, states) + b"\x00" * 48
    return _NLMSGHDR.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def message_starts(buf: bytes | memoryview) -> np.ndarray:
    """Word offsets of the netlink messages in `buf`, in order (see the module docstring).

    The chain stops at the end of `buf` or at a position that is not a candidate (which
    means a malformed buffer; the caller checks the last message is NLMSG_DONE).
    """
    nw = len(buf) // 4
    if nw < 4:
        return np.zeros(0, dtype=np.int64)
    w = np.frombuffer(buf, dtype=np.uint32, count=nw)
    h = np.frombuffer(buf, dtype=np.uint16, count=2 * nw)[2::2]  # nlmsg_type of a header at word p
    # Fast path: the socket messages plus a final NLMSG_DONE, every one where the previous
    # one's length says. Nearly always true; checked exactly, so never wrong.
    cand = np.nonzero(h == SOCK_DIAG_BY_FAMILY)[0]
    cand = cand[(w[cand] >= 16) & (w[cand] < MAX_MSG)]
    if len(buf) >= 20 and h[nw - 5] == NLMSG_DONE and w[nw - 5] == 20:
        cand = np.append(cand, nw - 5)
    if len(cand) and cand[0] == 0:
        nxt = cand + (w[cand].astype(np.int64) + 3) // 4
        if np.array_equal(nxt[:-1], cand[1:]) and nxt[-1] == nw:
            return cand.astype(np.int64)
    # General path: any header type, pointer doubling along the chain.
    cand = np.nonzero((h == SOCK_DIAG_BY_FAMILY) | (h == NLMSG_DONE) | (h == NLMSG_ERROR))[0]
    ln = w[cand]
    cand = cand[(ln >= 16) & (ln < MAX_MSG)]
    if not len(cand) or cand[0] != 0:
        return np.zeros(0, dtype=np.int64)
    ln = w[cand]
    m = len(cand)
    nxt_pos = cand + (ln.astype(np.int64) + 3) // 4
    j = np.searchsorted(cand, nxt_pos)
    hit = (j < m) & (cand[np.minimum(j, m - 1)] == nxt_pos)
    sink = m  # where a chain leaves the candidates (end of buffer, or garbage)
    jump = np.append(np.where(hit, j, sink), sink)
    on = np.zeros(m + 1, dtype=bool)
    on[0] = True
    frontier = np.array([0])
    while True:  # pointer doubling: after k rounds the first 2**k chain nodes are marked
        frontier = np.concatenate([frontier, jump[frontier]])
        new = frontier[~on[frontier]]
        on[frontier] = True
        if not new.size or (new == sink).all():
            break
        jump = jump[jump]
    on[sink] = False
    return cand[on[:m]].astype(np.int64)


def _recv_dump(sock: socket.socket, family: int, states: int, ext: int,
               seq: int) -> tuple[memoryview, np.ndarray, bool]:
    """Send one dump request and receive it whole into one growing buffer (no per-recv
    bytes objects, no final join): (bytes, starts of sock_diag messages, interrupted)."""
    sock.send(_request(family, states, ext, seq))
    buf = bytearray(1 << 20)
    pos = 0
    while True:
        if len(buf) - pos < (1 << 16):
            buf.extend(bytes(len(buf)))  # double; no memoryview is alive here
        with memoryview(buf) as view:
            n = sock.recv_into(view[pos:], 1 << 16)
        if not n:
            raise HostError("sock_diag: netlink socket closed during the dump")
        first, pos = pos, pos + n
        # NLMSG_DONE (20 bytes) ends the last recv of a dump; an error comes alone.
        if n >= 20:
            ln, typ = _HDR.unpack_from(buf, pos - 20)
            if ln == 20 and typ == NLMSG_DONE:
                with memoryview(buf) as whole, whole[:pos] as data:
                    starts = message_starts(data)
                if len(starts) and starts[-1] * 4 == pos - 20:
                    return _finish(memoryview(buf)[:pos], starts, family)
                # else: a payload that merely ended like NLMSG_DONE; keep receiving
        ln, typ = _HDR.unpack_from(buf, first)
        if typ == NLMSG_ERROR:
            return _finish(memoryview(buf)[first:pos], np.zeros(1, dtype=np.int64), family)


def _finish(buf: memoryview, starts: np.ndarray, family: int) -> tuple[memoryview, np.ndarray, bool]:
    h = np.frombuffer(buf, dtype=np.uint16, count=len(buf) // 2)
    types, flags = h[2 * starts + 2], h[2 * starts + 3]  # nlmsg_type, nlmsg_flags
    err_at = np.nonzero(types == NLMSG_ERROR)[0]
    if err_at.size:
        err = -struct.unpack_from("=i", buf, int(starts[err_at[0]]) * 4 + 16)[0]
        if err == errno.ENOENT and family == socket.AF_INET6:
            return memoryview(b""), np.zeros(0, dtype=np.int64), False  # IPv6 not built in / disabled
        raise HostError(f"sock_diag: the kernel answered {errno.errorcode.get(err, err)} ({os.strerror(err)})")
    intr = bool((flags & NLM_F_DUMP_INTR).any())
    return buf, starts[types == SOCK_DIAG_BY_FAMILY], intr


def decode(buf: bytes | memoryview, starts: np.ndarray) -> np.ndarray:
    """The inet_diag_msg of every message, as SOCK_DTYPE rows (one numpy gather)."""
    n = len(starts)
    out = np.zeros(n, dtype=SOCK_DTYPE)
    if n:
        w = np.frombuffer(buf, dtype=np.uint32, count=len(buf) // 4)
        first = np.asarray(starts, dtype=np.intp) + _MSG_OFF // 4
        idx = first[:, None] + np.arange(_MSG_WORDS, dtype=np.intp)
        msgs = w.take(idx).view(DIAG_MSG).ravel()
        for name in DIAG_MSG.names or ():
            out[name] = msgs[name]
    out["ts"] = -1
    return out


def _tcp_info_ts(buf: bytes | memoryview, starts: np.ndarray) -> np.ndarray:
    """Per message: 1/0 if struct tcp_info says timestamps were negotiated, -1 if absent."""
    out = np.full(len(starts), -1, dtype=np.int8)
    unpack_hdr, unpack_attr = _HDR.unpack_from, _ATTR.unpack_from
    for i, s in enumerate(starts.tolist()):
        off = s * 4
        end = off + unpack_hdr(buf, off)[0]
        a = off + _MSG_OFF + 72
        while a + 4 <= end:
            alen, atype = unpack_attr(buf, a)
            if alen < 4:
                break
            if atype & 0x3FFF == INET_DIAG_INFO and alen >= 4 + 6:
                out[i] = 1 if buf[a + 4 + 5] & TCPI_OPT_TIMESTAMPS else 0  # tcpi_options
                break
            a += (alen + 3) & ~3
    return out


def read_sockets(states: int = ALL_STATES, with_info: bool = False) -> tuple[SockTable, list[str]]:
    """Dump every TCP socket (IPv4 and IPv6) of the caller's network namespace.

    `with_info` asks the kernel for tcp_info too (only timestamps negotiation is kept);
    it makes full sockets' messages about 250 bytes longer, so it is off by default.
    Returns the table and notes (e.g. a dump interrupted by concurrent changes).
    """
    notes: list[str] = []
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    except OSError as e:
        raise HostError(f"cannot open a netlink sock_diag socket: {e.strerror}",
                        hint="the kernel needs CONFIG_INET_DIAG / the inet_diag and tcp_diag modules") from None
    parts = []
    try:
        sock.settimeout(10.0)
        ext = (1 << (INET_DIAG_INFO - 1)) if with_info else 0
        for seq, fam in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            try:
                buf, starts, intr = _recv_dump(sock, fam, states, ext, seq)
            except TimeoutError:
                raise HostError("sock_diag: no answer from the kernel within 10 s") from None
            if intr:
                notes.append("the socket dump was interrupted by concurrent changes; counts may be off by a few")
            rows = decode(buf, starts)
            if with_info and len(starts):
                est = np.nonzero(rows["state"] == 1)[0]  # only established sockets matter
                rows["ts"][est] = _tcp_info_ts(buf, starts[est])
            parts.append(rows)
    finally:
        sock.close()
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=SOCK_DTYPE)
    fold_v4mapped(rows)
    return SockTable(rows), notes
