"""IPv4/TCP segments as bytes: what the emulated client sends and parses (RFC 791, 793, 7323).

Only what a client of short connections needs: no IP options or fragments (a fragment is
reported as not parsable), TCP options MSS, window scale, SACK-permitted and timestamps.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
PROTO_TCP = 6
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@dataclass(frozen=True)
class Options:
    """TCP options of a segment, in the order a sender puts them (`layout`)."""

    mss: int | None = None
    wscale: int | None = None
    sack_perm: bool = False
    ts: tuple[int, int] | None = None  # (TSval, TSecr)
    # option kinds in sending order, NOP padding included (Windows: mss,nop,ws,nop,nop,sok)
    layout: tuple[str, ...] = ()

    def encode(self) -> bytes:
        out = b""
        for kind in self.layout or _default_layout(self):
            if kind == "nop":
                out += b"\x01"
            elif kind == "mss" and self.mss is not None:
                out += struct.pack("!BBH", 2, 4, self.mss)
            elif kind == "ws" and self.wscale is not None:
                out += struct.pack("!BBB", 3, 3, self.wscale)
            elif kind == "sok" and self.sack_perm:
                out += b"\x04\x02"
            elif kind == "ts" and self.ts is not None:
                out += struct.pack("!BBII", 8, 10, self.ts[0] & 0xFFFFFFFF, self.ts[1] & 0xFFFFFFFF)
        return out + b"\0" * (-len(out) % 4)


def _default_layout(o: Options) -> tuple[str, ...]:
    out: list[str] = []
    if o.mss is not None:
        out.append("mss")
    if o.ts is not None:
        out += ["nop", "nop", "ts"]
    if o.wscale is not None:
        out += ["nop", "ws"]
    if o.sack_perm:
        out += ["nop", "nop", "sok"]
    return tuple(out)


def parse_options(raw: bytes) -> Options:
    mss = ws = None
    sok = False
    ts: tuple[int, int] | None = None
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            break  # a malformed option ends the parse, as in tcp_parse_options()
        length = raw[i + 1]
        body = raw[i + 2:i + length]
        if kind == 2 and length == 4:
            mss = struct.unpack("!H", body)[0]
        elif kind == 3 and length == 3:
            ws = body[0]
        elif kind == 4 and length == 2:
            sok = True
        elif kind == 8 and length == 10:
            tsval, tsecr = struct.unpack("!II", body)
            ts = (tsval, tsecr)
        i += length
    return Options(mss=mss, wscale=ws, sack_perm=sok, ts=ts)


@dataclass(frozen=True)
class Segment:
    """One TCP segment with the IPv4 addresses it travels between (addresses as ints)."""

    src: int
    dst: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int = 0
    options: Options = Options()
    payload: bytes = b""
    ttl: int = 128
    ip_id: int = 0

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def end_seq(self) -> int:
        """seq + payload + SYN + FIN, as the receiver's window tests count it."""
        return (self.seq + len(self.payload) + self.has(SYN) + self.has(FIN)) & 0xFFFFFFFF

    def encode(self) -> bytes:
        opts = self.options.encode()
        off = (20 + len(opts)) // 4
        tcp = _TCP.pack(self.sport, self.dport, self.seq & 0xFFFFFFFF, self.ack & 0xFFFFFFFF,
                        off << 4, self.flags, self.window, 0, 0) + opts + self.payload
        src, dst = self.src.to_bytes(4, "big"), self.dst.to_bytes(4, "big")
        csum = checksum(src + dst + struct.pack("!BBH", 0, PROTO_TCP, len(tcp)) + tcp)
        tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
        total = 20 + len(tcp)
        # DF set, as Windows and Linux send TCP
        ip = _IP.pack(0x45, 0, total, self.ip_id & 0xFFFF, 0x4000, self.ttl, PROTO_TCP, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
        return ip + tcp


class NotTcp(ValueError):
    """A packet that is not an unfragmented IPv4 TCP segment with valid lengths."""


def parse(pkt: bytes, verify: bool = True) -> Segment:
    """An IPv4 packet as a Segment; NotTcp for anything else (or a bad checksum)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        raise NotTcp("not IPv4")
    ver_ihl, _tos, total, ip_id, frag, ttl, proto, _csum, src, dst = _IP.unpack_from(pkt)
    ihl = (ver_ihl & 0xF) * 4
    if proto != PROTO_TCP:
        raise NotTcp(f"IP protocol {proto}")
    if frag & 0x3FFF:
        raise NotTcp("fragment")
    if ihl < 20 or total > len(pkt) or total < ihl + 20:
        raise NotTcp("bad IP lengths")
    tcp = pkt[ihl:total]
    sport, dport, seq, ack, off, flags, window, _c, _urg = _TCP.unpack_from(tcp)
    doff = (off >> 4) * 4
    if doff < 20 or doff > len(tcp):
        raise NotTcp("bad TCP data offset")
    if verify and checksum(src + dst + struct.pack("!BBH", 0, PROTO_TCP, len(tcp)) + tcp) != 0:
        raise NotTcp("bad TCP checksum")
    return Segment(src=int.from_bytes(src, "big"), dst=int.from_bytes(dst, "big"), sport=sport,
                   dport=dport, seq=seq, ack=ack, flags=flags, window=window,
                   options=parse_options(tcp[20:doff]), payload=bytes(tcp[doff:]), ttl=ttl,
                   ip_id=ip_id)
