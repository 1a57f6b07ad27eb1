"""Record every TCP flow's NAT mapping, with its time, from conntrack's events (ctnetlink).

A process in the NAT or LB namespace (either netfilter backend) subscribes to
NFNLGRP_CONNTRACK_NEW and NFNLGRP_CONNTRACK_DESTROY. The kernel emits NEW when a
connection is confirmed, in the path of its first packet after the NAT hooks ran, so the
reply tuple holds the translated addresses (nf_conntrack_core.c __nf_conntrack_confirm(),
nf_conntrack_netlink.c ctnetlink_conntrack_event(); Linux 2.6.14 on), and DESTROY when the
entry is removed (a timeout, or a SYN re-opening a closed entry, which then gets a new NEW).
Each event becomes one line

    N|D  TIME_NS  osrc osport  rsrc rdst rdport

(client side source; the server's address, and the source address and port it saw; TIME_NS
the wall clock, CLOCK_REALTIME, when the event was read). The kernel's own start stamp
(CTA_TIMESTAMP, nf_conntrack_timestamp) comes only with DESTROY and needs
CONFIG_NF_CONNTRACK_TIMESTAMP, which Debian's UML 6.1 lacks, so the time is taken on
receipt for every kernel: the events arrive in the kernel's order, milliseconds late at
most on this lab's load (flows.py says how the join tolerates that).

    python -m tcpreuse.lab.ctevents OUTFILE     # prints "ready", stops on SIGTERM

Parsing is pure (parse_message, parse_lines) and tested on bytes; needs nf_conntrack_netlink.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LabError
from .flows import FlowKey, Flows, FlowVal, build_flows

if TYPE_CHECKING:
    from .netns import Namespace

NETLINK_NETFILTER = 12
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY = 1, 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE = 0, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY = 1, 2
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLMSG_HDR = struct.Struct("=IHHII")
NFGENMSG = 4
RCVBUF = 32 << 20
KINDS = {NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW: "N",
         NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE: "D"}


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


def parse_event(msg: bytes) -> tuple[str, FlowKey, FlowVal] | None:
    """One netlink message (header included) -> ("N" new | "D" destroyed, key, view), for an
    IPv4 TCP flow."""
    if len(msg) < NLMSG_HDR.size + NFGENMSG:
        return None
    _len, kind, _flags, _seq, _pid = NLMSG_HDR.unpack_from(msg)
    what = KINDS.get(kind)
    if what is None:
        return None
    a = _attrs(msg[NLMSG_HDR.size + NFGENMSG:])
    orig, reply = _tuple(a.get(CTA_TUPLE_ORIG, b"")), _tuple(a.get(CTA_TUPLE_REPLY, b""))
    if orig is None or reply is None or orig[2] != socket.IPPROTO_TCP:
        return None
    return what, (orig[0], orig[3]), (reply[0], reply[1], reply[4])


def parse_message(msg: bytes) -> tuple[FlowKey, FlowVal] | None:
    """A NEW event -> (key, view); anything else -> None."""
    ev = parse_event(msg)
    return (ev[1], ev[2]) if ev is not None and ev[0] == "N" else None


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


def parse_lines(text: str) -> tuple[Flows, int]:
    """The recorder's file -> (flows with times in wall-clock seconds, event batches lost)."""
    events: list[tuple[str, float, FlowKey, FlowVal]] = []
    lost = 0
    for line in text.splitlines():
        f = line.split()
        if len(f) == 3 and f[:2] == ["#", "lost"]:
            with contextlib.suppress(ValueError):
                lost += int(f[2])
            continue
        if len(f) != 7 or f[0] not in ("N", "D"):
            continue
        with contextlib.suppress(ValueError):
            events.append((f[0], int(f[1]) / 1e9, (f[2], int(f[3])), (f[4], f[5], int(f[6]))))
    return build_flows(events), lost


@dataclass
class Recorder:
    """This module running in a NAT/LB namespace, writing to `path`."""

    proc: subprocess.Popen[bytes]
    path: Path

    @classmethod
    def start(cls, ns: Namespace, python: str, path: Path, timeout_s: float = 30.0) -> Recorder:
        p = ns.popen([python, "-m", "tcpreuse.lab.ctevents", str(path)], stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        rec = cls(p, path)
        assert p.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = p.stdout.readline()  # "ready" once subscribed (or an error and EOF)
        if line.strip() != b"ready" or time.monotonic() > deadline:
            rec.stop()
            raise LabError(f"[{ns.name}] the conntrack event recorder did not start: "
                           f"{line.decode(errors='replace').strip() or 'no output'} (needs "
                           "nf_conntrack_netlink)")
        return rec

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def flows(self) -> tuple[Flows, int]:
        """Stop, then the recorded flows and how many event batches the kernel dropped."""
        self.stop()
        try:
            text = self.path.read_text()
        except OSError:
            return Flows(), 0
        return parse_lines(text)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tcpreuse.lab.ctevents OUTFILE", file=sys.stderr)
        return 2
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
    s.bind((0, 1 << (NFNLGRP_CONNTRACK_NEW - 1) | 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
    s.settimeout(0.2)  # a stop request is seen within this; then what is queued is read
    lost = 0
    with Path(argv[0]).open("w") as out:
        print("ready", flush=True)
        while True:
            try:
                buf = s.recv(1 << 16)
            except (TimeoutError, BlockingIOError):
                if stopping:
                    break
                continue
            except OSError:  # ENOBUFS: events were dropped
                lost += 1
                continue
            now = time.time_ns()
            for m in split_messages(buf):
                ev = parse_event(m)
                if ev:
                    what, (src, sport), (a, b, port) = ev
                    out.write(f"{what} {now} {src} {sport} {a} {b} {port}\n")
            if stopping:
                s.setblocking(False)  # drain what the kernel queued before the stop
        if lost:
            out.write(f"# lost {lost}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
