"""A slow, simple reference decoder: one packet at a time, struct only.

It shares nothing with the fast path (formats.py / decode.py) but the idea, so the
tests compare the two on every crafted and recorded capture. It is also handy when a
capture looks wrong: `python -m tcpreuse.capture.refdecode FILE` prints each segment.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from typing import Any

VLAN = (0x8100, 0x88A8, 0x9100)
V6_EXT = (0, 43, 60, 135, 139, 140, 44, 51)


def records(data: bytes) -> Iterator[tuple[float, int, bytes]]:
    """(time, link type, captured bytes) of every intact record, in file order."""
    magic = data[:4]
    pcap = {b"\xd4\xc3\xb2\xa1": ("<", 1e6), b"\xa1\xb2\xc3\xd4": (">", 1e6),
            b"\x4d\x3c\xb2\xa1": ("<", 1e9), b"\xa1\xb2\x3c\x4d": (">", 1e9)}
    if magic in pcap:
        e, div = pcap[magic]
        lt = struct.unpack_from(e + "I", data, 20)[0] & 0x0FFFFFFF
        off = 24
        while off + 16 <= len(data):
            sec, frac, incl, _orig = struct.unpack_from(e + "IIII", data, off)
            if off + 16 + incl > len(data):
                return
            yield sec + frac / div, lt, data[off + 16: off + 16 + incl]
            off += 16 + incl
        return
    off = 0
    e = "<"
    ifaces: list[tuple[int, float, int]] = []
    while off + 12 <= len(data):
        btype = struct.unpack_from(e + "I", data, off)[0]
        if btype == 0x0A0D0D0A:
            e = "<" if data[off + 8: off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        blen = struct.unpack_from(e + "I", data, off + 4)[0]
        if blen < 12 or off + blen > len(data):
            return
        body = data[off + 8: off + blen - 4]
        if btype == 1:
            lt, _r, _snap = struct.unpack_from(e + "HHI", body, 0)
            div, tso = 1e6, 0
            p = 8
            while p + 4 <= len(body):
                code, ln = struct.unpack_from(e + "HH", body, p)
                if code == 0:
                    break
                v = body[p + 4: p + 4 + ln]
                if code == 9:
                    div = float(2 ** (v[0] & 0x7F) if v[0] & 0x80 else 10 ** v[0])
                if code == 14:
                    tso = struct.unpack(e + "q", v)[0]
                p += 4 + ln + (-ln % 4)
            ifaces.append((lt, div, tso))
        elif btype == 6:
            iid, hi, lo, cap, _orig = struct.unpack_from(e + "IIIII", body, 0)
            lt, div, tso = ifaces[iid]
            units = (hi << 32) | lo
            yield units / div + tso, lt, body[20: 20 + cap]
        elif btype == 3:
            orig = struct.unpack_from(e + "I", body, 0)[0]
            yield 0.0, ifaces[0][0], body[4: 4 + min(orig, len(body) - 4)]
        off += blen


def ip_offset(lt: int, b: bytes) -> tuple[int, int] | None:
    """(offset of the IP header, version) or None."""
    if lt == 1:
        if len(b) < 14:
            return None
        et, off = struct.unpack_from("!H", b, 12)[0], 14
        while et in VLAN and len(b) >= off + 4:
            et, off = struct.unpack_from("!H", b, off + 2)[0], off + 4
        return (off, {0x0800: 4, 0x86DD: 6}.get(et, 0)) if et in (0x0800, 0x86DD) else None
    if lt == 113:
        et = struct.unpack_from("!H", b, 14)[0] if len(b) >= 16 else 0
        return (16, 4 if et == 0x0800 else 6) if et in (0x0800, 0x86DD) else None
    if lt == 276:
        et = struct.unpack_from("!H", b, 0)[0] if len(b) >= 20 else 0
        return (20, 4 if et == 0x0800 else 6) if et in (0x0800, 0x86DD) else None
    if lt in (0, 108):
        if len(b) < 4:
            return None
        le, be = struct.unpack_from("<I", b)[0], struct.unpack_from(">I", b)[0]
        af = le if lt == 0 and le in (2, 10, 24, 28, 30) else be
        return (4, 4 if af == 2 else 6) if af in (2, 10, 24, 28, 30) else None
    if lt in (101, 12, 14, 228, 229):
        return (0, b[0] >> 4) if b and b[0] >> 4 in (4, 6) else None
    return None


def segments(data: bytes) -> Iterator[dict[str, Any]]:
    """Every TCP segment, as a dict of the fields the fast decoder produces."""
    for frame_no, (t, lt, b) in enumerate(records(data), 1):
        got = ip_offset(lt, b)
        if got is None:
            continue
        o, ver = got
        if ver == 4:
            if len(b) < o + 20:
                continue
            ihl = (b[o] & 15) * 4
            tot, frag, proto = struct.unpack_from("!H", b, o + 2)[0], struct.unpack_from("!H", b, o + 6)[0], b[o + 9]
            if proto != 6 or frag & 0x1FFF:
                continue
            src, dst = str(ipaddress.ip_address(b[o + 12: o + 16])), str(ipaddress.ip_address(b[o + 16: o + 20]))
            t_off, iplen = o + ihl, tot - ihl
        else:
            if len(b) < o + 40:
                continue
            plen, nh = struct.unpack_from("!H", b, o + 4)[0], b[o + 6]
            src, dst = str(ipaddress.ip_address(b[o + 8: o + 24])), str(ipaddress.ip_address(b[o + 24: o + 40]))
            p = o + 40
            while nh in V6_EXT and len(b) >= p + 8:
                hl = 8 if nh == 44 else ((b[p + 1] + 2) * 4 if nh == 51 else (b[p + 1] + 1) * 8)
                nh, p = b[p], p + hl
            if nh != 6:
                continue
            t_off, iplen = p, o + 40 + plen - p
        if len(b) < t_off + 20:
            continue
        sport, dport, seq, ack, offb, flags, win = struct.unpack_from("!HHIIBBH", b, t_off)
        hlen = (offb >> 4) * 4
        d: dict[str, Any] = {"frame": frame_no, "ts": t, "src": src, "dst": dst, "sport": sport, "dport": dport,
                             "seq": seq, "ack": ack, "flags": flags, "win": win, "plen": iplen - hlen,
                             "tsval": None, "tsecr": None, "mss": None, "wscale": None, "sackok": False}
        p, end = t_off + 20, min(t_off + hlen, len(b))
        while p < end:
            k = b[p]
            if k == 0:
                break
            if k == 1:
                p += 1
                continue
            if p + 1 >= end or b[p + 1] < 2 or p + b[p + 1] > end:
                break
            ln = b[p + 1]
            if k == 8 and ln == 10:
                d["tsval"], d["tsecr"] = struct.unpack_from("!II", b, p + 2)
            elif k == 2 and ln == 4:
                d["mss"] = struct.unpack_from("!H", b, p + 2)[0]
            elif k == 3 and ln == 3:
                d["wscale"] = b[p + 2]
            elif k == 4 and ln == 2:
                d["sackok"] = True
            p += ln
        yield d

