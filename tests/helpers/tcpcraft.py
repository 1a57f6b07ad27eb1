"""Hand-made TCP segments for the trace tests: a raw-socket sender and a loopback sniffer.

Only for use inside a test's own network namespace (on its loopback)."""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from tcpreuse.emulate.packet import ACK, FIN, PSH, RST, SYN, NotTcp, checksum, parse

__all__ = ["ACK", "FIN", "PSH", "RST", "SYN", "Sniffer", "segment", "send"]
ETH_P_ALL = 0x0003


def segment(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
            tsval: int | None = None, tsecr: int = 0) -> bytes:
    """A TCP header (with a timestamp option if `tsval` is given), checksummed for src/dst."""
    opts = b"" if tsval is None else struct.pack("!BBBBII", 1, 1, 8, 10, tsval & 0xFFFFFFFF, tsecr)
    off = (20 + len(opts)) // 4
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags,
                      65535, 0, 0) + opts
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(hdr))
    c = checksum(pseudo + hdr)
    return hdr[:16] + struct.pack("!H", c) + hdr[18:]


def send(src: str, dst: str, sport: int, dport: int, seq: int, ack: int = 0, flags: int = SYN,
         tsval: int | None = None) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    try:
        s.sendto(segment(src, dst, sport, dport, seq, ack, flags, tsval), (dst, 0))
    finally:
        s.close()


@dataclass
class Seen:
    saddr: str
    sport: int
    daddr: str
    dport: int
    seq: int
    ack: int
    flags: int
    tsval: int | None


class Sniffer:
    """Every TCP segment on the namespace's loopback, from when it was opened."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind(("lo", 0))
        self.sock.setblocking(False)
        self.seen: list[Seen] = []

    def drain(self) -> list[Seen]:
        while True:
            try:
                frame = self.sock.recv(65535)
            except BlockingIOError:
                return self.seen
            try:
                seg = parse(frame[14:], verify=False)
            except NotTcp:
                continue
            sport, dport, seq, ack, flags = seg.sport, seg.dport, seg.seq, seg.ack, seg.flags
            tsval = seg.options.ts[0] if seg.options.ts else None
            ip = frame[14:]
            self.seen.append(Seen(socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport,
                                  seq, ack, flags, tsval))

    def mark(self) -> int:
        """Where the segments seen from now on start (for find's `since`)."""
        return len(self.drain())

    def find(self, sport: int, dport: int, flags: int, timeout: float = 2.0, since: int = 0,
             exact: bool = False) -> Seen:
        end = time.monotonic() + timeout
        while True:
            for s in self.drain()[since:]:
                if s.sport == sport and s.dport == dport and (s.flags == flags if exact else s.flags & flags == flags):
                    return s
            if time.monotonic() > end:
                raise AssertionError(f"no segment {sport}->{dport} with flags {flags:#x} on lo")
            time.sleep(0.01)

    def close(self) -> None:
        self.sock.close()
