"""Write small pcap / pcapng files from TCP segments (struct-packed, no scapy).

For what a modern kernel cannot produce on demand — Windows-style SYNs without
timestamps and with random ISNs, hosts with unrelated timestamp clocks behind one NAT
address — and for the format corner cases (byte orders, nanosecond pcap, several pcapng
interfaces, VLAN tags, Linux cooked headers, IPv6 extension headers). Checksums are left
zero: the analyser does not read them and tshark does not check them by default.
"""

from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FLAG_BITS = {"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32, "E": 64, "C": 128}


@dataclass
class Seg:
    """One TCP segment as a test describes it."""

    t: float
    src: str
    sport: int
    dst: str
    dport: int
    flags: str  # letters of FLAG_BITS, e.g. "S", "SA", "A", "PA", "FA", "R", "RA"
    seq: int = 0
    ack: int = 0
    win: int = 65535
    payload: int | bytes = 0  # bytes, or a length of zero bytes
    ts: tuple[int, int] | None = None  # (TSval, TSecr)
    mss: int | None = None
    wscale: int | None = None
    sackok: bool = False
    v6_ext: Sequence[int] = ()  # IPv6 extension headers before TCP: 0, 60, 43, 44 (first fragment)
    ttl: int = 64

    @property
    def flag_bits(self) -> int:
        return sum(FLAG_BITS[c] for c in self.flags)


def tcp_options(s: Seg) -> bytes:
    o = b""
    if s.mss is not None:
        o += struct.pack("!BBH", 2, 4, s.mss)
    if s.sackok:
        o += b"\x04\x02"
    if s.ts is not None:
        if s.mss is None and not s.sackok:
            o += b"\x01\x01"
        o += struct.pack("!BBII", 8, 10, s.ts[0] & 0xFFFFFFFF, s.ts[1] & 0xFFFFFFFF)
    if s.wscale is not None:
        o += b"\x01" + struct.pack("!BBB", 3, 3, s.wscale)
    while len(o) % 4:
        o += b"\x00"
    return o


def tcp_segment(s: Seg) -> bytes:
    opts = tcp_options(s)
    payload = s.payload if isinstance(s.payload, bytes) else b"\x00" * s.payload
    off = (20 + len(opts)) // 4
    hdr = struct.pack("!HHIIBBHHH", s.sport, s.dport, s.seq & 0xFFFFFFFF, s.ack & 0xFFFFFFFF,
                      off << 4, s.flag_bits, s.win, 0, 0)
    return hdr + opts + payload


def ip_packet(s: Seg) -> bytes:
    tcp = tcp_segment(s)
    src, dst = ipaddress.ip_address(s.src), ipaddress.ip_address(s.dst)
    if src.version == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, s.ttl, 6, 0,
                           src.packed, dst.packed) + tcp
    ext = b""
    kinds = [*s.v6_ext, 6]
    for k, nxt in itertools.pairwise(kinds):
        if k == 44:  # fragment header, offset 0, more fragments 0: a whole "first" fragment
            ext += struct.pack("!BBHI", nxt, 0, 0, 0x1234)
        else:  # 8-byte hop-by-hop / destination options / routing with padding
            ext += struct.pack("!BB", nxt, 0) + b"\x01\x04\x00\x00\x00\x00"
    first = kinds[0]
    return struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(tcp), first, s.ttl,
                       src.packed, dst.packed) + ext + tcp


ETHERTYPE = {4: 0x0800, 6: 0x86DD}


def frame(s: Seg, linktype: int = 1, vlans: Sequence[tuple[int, int]] = (), null_le: bool = True) -> bytes:
    """The packet wrapped in a link-layer header. vlans: (TPID, VLAN id) outermost first."""
    ip = ip_packet(s)
    ver = ip[0] >> 4
    et = ETHERTYPE[ver]
    if linktype == 1:
        tags = b"".join(struct.pack("!HH", tpid, vid) for tpid, vid in vlans)
        return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + tags + struct.pack("!H", et) + ip
    if linktype == 113:  # Linux cooked v1: packet type, ARPHRD, addr len, addr(8), protocol
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00", et) + ip
    if linktype == 276:  # Linux cooked v2: protocol, reserved, ifindex, ARPHRD, pkttype, addr len, addr(8)
        return struct.pack("!HHIHBB8s", et, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + ip
    if linktype in (101, 12, 14, 228, 229):
        return ip
    if linktype == 0:  # BSD loopback: AF in the writer's byte order
        af = 2 if ver == 4 else 30
        return struct.pack("<I" if null_le else ">I", af) + ip
    if linktype == 108:  # OpenBSD loopback: AF in network order
        return struct.pack(">I", 2 if ver == 4 else 24) + ip
    raise ValueError(f"synth cannot write link type {linktype}")


@dataclass
class Frame:
    t: float
    data: bytes
    orig_len: int | None = None  # on the wire (defaults to len(data))
    iface: int = 0


def frames_of(segs: Iterable[Seg], linktype: int = 1, snaplen: int | None = None, **kw: object) -> list[Frame]:
    out = []
    for s in segs:
        d = frame(s, linktype, **kw)  # type: ignore[arg-type]
        cut = d[:snaplen] if snaplen else d
        out.append(Frame(s.t, cut, len(d)))
    return out


def pcap_bytes(frames: Iterable[Frame], linktype: int = 1, nsec: bool = False, big_endian: bool = False,
               snaplen: int = 262144) -> bytes:
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    div = 1_000_000_000 if nsec else 1_000_000
    for f in frames:
        sec = int(f.t)
        frac = round((f.t - sec) * div)
        if frac >= div:
            sec, frac = sec + 1, frac - div
        out.append(struct.pack(e + "IIII", sec, frac, len(f.data), f.orig_len or len(f.data)) + f.data)
    return b"".join(out)


@dataclass
class Iface:
    linktype: int
    tsresol: int | None = None  # if_tsresol byte (None: default microseconds)
    snaplen: int = 262144
    tsoffset: int = 0


def _block(btype: int, body: bytes, e: str) -> bytes:
    pad = b"\x00" * (-len(body) % 4)
    n = 12 + len(body) + len(pad)
    return struct.pack(e + "II", btype, n) + body + pad + struct.pack(e + "I", n)


def _opt(code: int, val: bytes, e: str) -> bytes:
    return struct.pack(e + "HH", code, len(val)) + val + b"\x00" * (-len(val) % 4)


@dataclass
class NgExtra:
    """A non-packet block inserted before packet number `before` (NRB, ISB, custom ...)."""

    before: int
    btype: int
    body: bytes = b"\x00" * 8


@dataclass
class NgWriter:
    ifaces: list[Iface] = field(default_factory=lambda: [Iface(1)])
    big_endian: bool = False
    simple: bool = False  # write Simple Packet Blocks (no timestamp, interface 0)

    def to_bytes(self, frames: Sequence[Frame], extra: Sequence[NgExtra] = ()) -> bytes:
        e = ">" if self.big_endian else "<"
        out = [_block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)]
        for f in self.ifaces:
            opts = b""
            if f.tsresol is not None:
                opts += _opt(9, bytes([f.tsresol]), e)
            if f.tsoffset:
                opts += _opt(14, struct.pack(e + "q", f.tsoffset), e)
            if opts:
                opts += _opt(0, b"", e)
            out.append(_block(1, struct.pack(e + "HHI", f.linktype, 0, f.snaplen) + opts, e))
        by_pos: dict[int, list[NgExtra]] = {}
        for x in extra:
            by_pos.setdefault(x.before, []).append(x)
        for i, fr in enumerate(frames):
            for x in by_pos.get(i, []):
                out.append(_block(x.btype, x.body, e))
            if self.simple:
                out.append(_block(3, struct.pack(e + "I", fr.orig_len or len(fr.data)) + fr.data, e))
                continue
            iface = self.ifaces[fr.iface]
            r = iface.tsresol
            units = 10 ** (r & 0x7F) if r is not None and not r & 0x80 else (
                2 ** (r & 0x7F) if r is not None else 10**6)
            ts = round((fr.t - iface.tsoffset) * units)
            body = struct.pack(e + "IIIII", fr.iface, ts >> 32, ts & 0xFFFFFFFF, len(fr.data),
                               fr.orig_len or len(fr.data)) + fr.data
            out.append(_block(6, body, e))
        for x in by_pos.get(len(frames), []):
            out.append(_block(x.btype, x.body, e))
        return b"".join(out)


def handshake(t: float, c: str, cp: int, s: str, sp: int, isn: int, sisn: int, *, ts: tuple[int, int] | None = None,
              data: int = 10, reply: int = 20, server_closes: bool = True, rtt: float = 0.0002,
              mss: int = 1460, wscale: int | None = 7) -> list[Seg]:
    """A complete short connection: handshake, request, response, FIN exchange.

    ts = (client TSval, server TSval) at the start; both tick by 1 per packet pair."""
    c_ts, s_ts = ts if ts is not None else (0, 0)

    def cts(k: int, ecr: int) -> tuple[int, int] | None:
        return (c_ts + k, ecr) if ts is not None else None

    def sts(k: int, ecr: int) -> tuple[int, int] | None:
        return (s_ts + k, ecr) if ts is not None else None

    cs, ss = isn + 1, sisn + 1
    out = [
        Seg(t, c, cp, s, sp, "S", isn, 0, ts=cts(0, 0), mss=mss, wscale=wscale, sackok=True),
        Seg(t + rtt, s, sp, c, cp, "SA", sisn, cs, ts=sts(0, c_ts), mss=mss, wscale=wscale, sackok=True),
        Seg(t + 2 * rtt, c, cp, s, sp, "A", cs, ss, ts=cts(1, s_ts)),
        Seg(t + 2 * rtt, c, cp, s, sp, "PA", cs, ss, payload=data, ts=cts(1, s_ts)),
        Seg(t + 3 * rtt, s, sp, c, cp, "PA", ss, cs + data, payload=reply, ts=sts(1, c_ts + 1)),
    ]
    cs += data
    ss += reply
    t4 = t + 4 * rtt
    if server_closes:
        out += [
            Seg(t4, s, sp, c, cp, "FA", ss, cs, ts=sts(2, c_ts + 1)),
            Seg(t4 + rtt, c, cp, s, sp, "FA", cs, ss + 1, ts=cts(2, s_ts + 2)),
            Seg(t4 + 2 * rtt, s, sp, c, cp, "A", ss + 1, cs + 1, ts=sts(3, c_ts + 2)),
        ]
    else:
        out += [
            Seg(t4, c, cp, s, sp, "FA", cs, ss, ts=cts(2, s_ts + 1)),
            Seg(t4 + rtt, s, sp, c, cp, "FA", ss, cs + 1, ts=sts(2, c_ts + 2)),
            Seg(t4 + 2 * rtt, c, cp, s, sp, "A", cs + 1, ss + 1, ts=cts(3, s_ts + 2)),
        ]
    return out
