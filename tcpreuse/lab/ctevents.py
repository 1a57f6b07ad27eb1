"""Record every new TCP flow's NAT mapping from conntrack's NEW events (ctnetlink).

The iptables backend's counterpart of the nftables `flows` set (flows.py): a process in
the NAT or LB namespace subscribes to NFNLGRP_CONNTRACK_NEW, which the kernel emits when
a connection is confirmed, after the NAT hooks ran, so the reply tuple holds the
translated addresses (nf_conntrack_netlink.c ctnetlink_conntrack_event()). Each event
becomes one line "osrc osport rsrc rdst rdport" (client side source; the server's
address, and the source address and port it saw), the same five fields as the nft set.

    python -m tcpreuse.lab.ctevents OUTFILE     # prints "ready", stops on SIGTERM

Parsing is pure (parse_message) and tested on bytes; needs nf_conntrack_netlink.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import sys
from pathlib import Path

from .flows import FlowKey, FlowVal

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_NEW = 1
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSG_HDR = struct.Struct("=IHHII")
NFGENMSG = 4
RCVBUF = 32 << 20


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def _tuple(data: bytes) -> tuple[str, str, int, int, int] | None:
    """(src, dst, proto, sport, dport) of a CTA_TUPLE_* attribute."""
    a = _attrs(data)
    ip, proto = _attrs(a.get(CTA_TUPLE_IP, b"")), _attrs(a.get(CTA_TUPLE_PROTO, b""))
    try:
        return (socket.inet_ntoa(ip[CTA_IP_V4_SRC]), socket.inet_ntoa(ip[CTA_IP_V4_DST]),
                proto[CTA_PROTO_NUM][0], struct.unpack("!H", proto[CTA_PROTO_SRC_PORT])[0],
                struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0])
    except (KeyError, IndexError, OSError, struct.error):
        return None


def parse_message(msg: bytes) -> tuple[FlowKey, FlowVal] | None:
    """One netlink message (header included) -> the flow record, for a new IPv4 TCP flow."""
    if len(msg) < NLMSG_HDR.size + NFGENMSG:
        return None
    _len, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(msg)
    if kind != (NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW):
        return None
    a = _attrs(msg[NLMSG_HDR.size + NFGENMSG:])
    orig, reply = _tuple(a.get(CTA_TUPLE_ORIG, b"")), _tuple(a.get(CTA_TUPLE_REPLY, b""))
    if orig is None or reply is None or orig[2] != socket.IPPROTO_TCP:
        return None
    return (orig[0], orig[3]), (reply[0], reply[1], reply[4])


def split_messages(buf: bytes) -> list[bytes]:
    out = []
    off = 0
    while off + NLMSG_HDR.size <= len(buf):
        length = NLMSG_HDR.unpack_from(buf, off)[0]
        if length < NLMSG_HDR.size:
            break
        out.append(buf[off:off + length])
        off += (length + 3) & ~3
    return out


def parse_lines(text: str) -> dict[FlowKey, set[FlowVal]]:
    """The recorder's file -> the same mapping as flows.parse_flows()."""
    out: dict[FlowKey, set[FlowVal]] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) != 5:
            continue
        with contextlib.suppress(ValueError):
            out.setdefault((f[0], int(f[1])), set()).add((f[2], f[3], int(f[4])))
    return out


class _Stop(Exception):
    pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tcpreuse.lab.ctevents OUTFILE", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
    s.bind((0, 1 << (NFNLGRP_CONNTRACK_NEW - 1)))
    lost = 0
    with Path(argv[0]).open("w") as out:
        print("ready", flush=True)
        try:
            while True:
                try:
                    buf = s.recv(1 << 16)
                except OSError:  # ENOBUFS: events were dropped
                    lost += 1
                    continue
                for m in split_messages(buf):
                    rec = parse_message(m)
                    if rec:
                        (src, sport), (a, b, port) = rec
                        out.write(f"{src} {sport} {a} {b} {port}\n")
        except (_Stop, KeyboardInterrupt):
            pass
        if lost:
            out.write(f"# lost {lost}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
