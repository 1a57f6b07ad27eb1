"""Link, IP and TCP headers of every frame at once (numpy gathers, no per-packet Python).

Each field is one gather: the file is viewed as big-endian uint16/uint32/uint64 readable
at *every* byte offset (an unaligned numpy view with a one-byte stride), so the TCP
sequence numbers of all packets are ``be32[tcp_off + 4]``. Work goes stage by stage
(link layer, IPv4/IPv6 with extension headers, TCP, TCP options), and a stage only reads
what the captured length covers: a frame that stops short is counted under a reason in
the :class:`~.formats.ReadReport`, never read past its end.

Addresses become one uint64 *key* per packet: an IPv4 address is its 32-bit value, an
IPv6 address is ``2**32 + i`` with ``i`` an index into :attr:`Packets.v6` (factorised
once). Keys compare and sort like integers, which is what grouping flows needs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import backend, formats
from .formats import Frames, ReadReport, _u16_view, _u32_view
from .window import as_source, release_pages

# link types (https://www.tcpdump.org/linktypes.html)
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
DLT_RAW_12 = 12
DLT_RAW_14 = 14
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
RAW_TYPES = (LINKTYPE_RAW, DLT_RAW_12, DLT_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6)
SUPPORTED_LINKTYPES = (
    LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, *RAW_TYPES
)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
AF_INET6_VALUES = (10, 24, 28, 30)  # Linux, BSDs, macOS/FreeBSD, Darwin variants
IPV6_EXT = (0, 43, 60, 135, 139, 140, 44, 51)  # hop-by-hop, routing, dstopts, mobility, HIP, shim6, frag, AH

# TCP flag bits (th_flags)
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128

V6_BASE = np.uint64(1 << 32)

# Skip reasons (stable: they appear in JSON output)
R_NOT_IP = "not IP"
R_NOT_TCP = "not TCP"
R_FRAGMENT = "IP fragment (not the first)"
R_CUT_L2 = "cut before the IP header"
R_CUT_IP = "cut inside the IP header"
R_CUT_TCP = "cut before the end of the TCP header (snap length)"
R_BAD_IP = "malformed IP header"
R_BAD_TCP = "malformed TCP header"
R_LINKTYPE = "unsupported link type"
R_V6_EXT = "more IPv6 extension headers than we follow"
R_OPT_CUT = "TCP options cut by the snap length (segment kept)"
MAX_V6_EXT = 16
# the C decoder reports skips by index into this tuple (the order of _ccap.c's enum)
SKIP_REASONS = (R_CUT_L2, R_NOT_IP, R_CUT_IP, R_BAD_IP, R_FRAGMENT, R_NOT_TCP, R_V6_EXT, R_CUT_TCP, R_BAD_TCP,
                R_OPT_CUT)


@dataclass
class Packets:
    """TCP segments, columnar. Row order is the file's record order."""

    ts: np.ndarray  # float64, seconds since the epoch (frame.time_epoch)
    src: np.ndarray  # uint64 address key (see module doc)
    dst: np.ndarray
    sport: np.ndarray  # uint16
    dport: np.ndarray
    seq: np.ndarray  # uint32 (tcp.seq_raw)
    ack: np.ndarray  # uint32 (tcp.ack_raw)
    flags: np.ndarray  # uint8 (tcp.flags, without NS)
    win: np.ndarray  # uint16 (tcp.window_size_value)
    plen: np.ndarray  # int32 payload bytes (tcp.len), from the IP lengths
    has_ts: np.ndarray  # bool
    tsval: np.ndarray  # uint32 (tcp.options.timestamp.tsval)
    tsecr: np.ndarray  # uint32
    mss: np.ndarray  # uint16, 0 = absent (tcp.options.mss_val)
    wscale: np.ndarray  # int16, -1 = absent (tcp.options.wscale.shift)
    sackok: np.ndarray  # bool (tcp.options.sack_perm)
    opt_cut: np.ndarray  # bool: the options were cut by the snap length
    frame: np.ndarray  # int64 frame number in its file (frame.number)
    file: np.ndarray  # int16 index of the file in a multi-file analysis
    v6: list[bytes] = field(default_factory=list)  # IPv6 address table (16 bytes each)

    COLUMNS = (
        "ts", "src", "dst", "sport", "dport", "seq", "ack", "flags", "win", "plen", "has_ts",
        "tsval", "tsecr", "mss", "wscale", "sackok", "opt_cut", "frame", "file",
    )

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def take(self, idx: np.ndarray | slice) -> Packets:
        return Packets(**{c: getattr(self, c)[idx] for c in self.COLUMNS}, v6=self.v6)

    def addr(self, key: int) -> str:
        return addr_str(int(key), self.v6)

    @classmethod
    def empty(cls) -> Packets:
        return _empty_packets()

    @classmethod
    def concat(cls, parts: list[Packets]) -> Packets:
        """One table from several (files); IPv6 tables are merged and keys remapped."""
        if not parts:
            return _empty_packets()
        if len(parts) == 1:
            return parts[0]
        table: dict[bytes, int] = {}
        cols: dict[str, list[np.ndarray]] = {c: [] for c in cls.COLUMNS}
        for p in parts:
            remap = np.asarray([table.setdefault(a, len(table)) for a in p.v6] or [0], dtype=np.uint64)
            for c in cls.COLUMNS:
                a = getattr(p, c)
                if c in ("src", "dst") and p.v6:
                    v6m = a >= V6_BASE
                    a = a.copy()
                    a[v6m] = V6_BASE + remap[(a[v6m] - V6_BASE).astype(np.int64)]
                cols[c].append(a)
        return Packets(**{c: np.concatenate(v) for c, v in cols.items()}, v6=list(table))


def addr_str(key: int, v6: list[bytes]) -> str:
    if key < (1 << 32):
        return str(ipaddress.IPv4Address(key))
    i = key - (1 << 32)
    return str(ipaddress.IPv6Address(v6[i])) if 0 <= i < len(v6) else f"?{i}"


def _empty_packets() -> Packets:
    def z(dt: Any) -> np.ndarray:
        return np.zeros(0, dtype=dt)

    return Packets(
        ts=z(np.float64), src=z(np.uint64), dst=z(np.uint64), sport=z(np.uint16), dport=z(np.uint16),
        seq=z(np.uint32), ack=z(np.uint32), flags=z(np.uint8), win=z(np.uint16), plen=z(np.int32),
        has_ts=z(bool), tsval=z(np.uint32), tsecr=z(np.uint32), mss=z(np.uint16), wscale=z(np.int16),
        sackok=z(bool), opt_cut=z(bool), frame=z(np.int64), file=z(np.int16),
    )


IP4_HDR = np.dtype([("vihl", "u1"), ("tos", "u1"), ("tot", ">u2"), ("id", ">u2"), ("frag", ">u2"),
                    ("ttl", "u1"), ("proto", "u1"), ("csum", ">u2"), ("src", ">u4"), ("dst", ">u4")])
TCP_HDR = np.dtype([("sport", ">u2"), ("dport", ">u2"), ("seq", ">u4"), ("ack", ">u4"), ("off", "u1"),
                    ("flags", "u1"), ("win", ">u2"), ("csum", ">u2"), ("urp", ">u2")])
TS_OPT = np.dtype([("lead", ">u4"), ("tsval", ">u4"), ("tsecr", ">u4")])  # NOP NOP TS(10)


class _Views:
    """The file as bytes, as unaligned big/little-endian integers at every offset, and as
    fixed-size records at every offset (a header is gathered whole, in one pass over
    the packets, and its fields are read from the copies)."""

    def __init__(self, buf: Any) -> None:
        self.size = len(buf)
        self.b8 = np.frombuffer(buf, dtype=np.uint8) if self.size else np.zeros(0, dtype=np.uint8)
        self.be16 = _u16_view(buf, ">")
        self.be32 = _u32_view(buf, ">")
        self.le32 = _u32_view(buf, "<")
        self.be64 = self._at_every_byte(buf, np.dtype(">u8"))
        self.v20 = self._at_every_byte(buf, np.dtype("V20"))
        self.v12 = self._at_every_byte(buf, np.dtype("V12"))

    def _at_every_byte(self, buf: Any, dt: np.dtype[Any]) -> np.ndarray:
        if self.size < dt.itemsize:
            return np.zeros(0, dtype=dt)
        return np.ndarray((self.size - dt.itemsize + 1,), dtype=dt, buffer=buf, offset=0, strides=(1,))

    # Gathering opaque V20/V12 items and viewing the copies as header records is an
    # order of magnitude faster than gathering the structured dtype itself.
    def ip4(self, off: np.ndarray) -> np.ndarray:
        return self.v20[off].view(IP4_HDR)

    def tcp(self, off: np.ndarray) -> np.ndarray:
        return self.v20[off].view(TCP_HDR)

    def opt12(self, off: np.ndarray) -> np.ndarray:
        """The 12 bytes at `off` as opaque items: index them, then view as TS_OPT."""
        return self.v12[off]


class _Stage:
    """Packets still alive (indices into the frames) and their per-packet state."""

    def __init__(self, rep: ReadReport) -> None:
        self.rep = rep

    def keep(self, idx: np.ndarray, ok: np.ndarray, reason: str, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
        """Drop rows where `ok` is False (counted under `reason`); returns (idx, *arrays) kept."""
        if ok.all():
            return (idx, *arrays)
        self.rep.skip(reason, int(ok.size - np.count_nonzero(ok)))
        return (idx[ok], *(a[ok] for a in arrays))


# Frames decoded together: their bytes (a few MB of the file) and the per-packet
# temporaries stay in the CPU caches, and the temporaries are the same few allocations
# each time instead of fresh memory the size of the capture.
CHUNK = 1 << 15

_COLS = (("ts", np.float64), ("src", np.uint64), ("dst", np.uint64), ("sport", np.uint16),
         ("dport", np.uint16), ("seq", np.uint32), ("ack", np.uint32), ("flags", np.uint8),
         ("win", np.uint16), ("plen", np.int32), ("has_ts", bool), ("tsval", np.uint32),
         ("tsecr", np.uint32), ("mss", np.uint16), ("wscale", np.int16), ("sackok", bool),
         ("opt_cut", bool), ("frame", np.int64))


def renumber_v6(cols: tuple[np.ndarray, ...], v6: list[bytes], table: dict[bytes, int],
                file_table: dict[bytes, int] | None = None) -> None:
    """Give the IPv6 address keys of `cols` (src, dst; changed in place), numbered by the
    decoder in the order of `v6`, their numbers in `table`, adding the addresses it lacks
    (and to `file_table`, a file's own table, when given)."""
    if file_table is not None:
        for x in v6:
            file_table.setdefault(x, len(file_table))
    remap = np.asarray([table.setdefault(x, len(table)) for x in v6], dtype=np.uint64)
    for col in cols:
        v = col >= V6_BASE
        if v.any():
            col[v] = V6_BASE + remap[(col[v] - V6_BASE).astype(np.int64)]


def _columns(n: int) -> dict[str, np.ndarray]:
    """Empty per-packet columns of `n` rows, carved from one allocation: numpy asks for
    transparent huge pages only on arrays of 4 MB or more, so most columns (1-4 bytes a
    packet) would otherwise fill their fresh memory one 4 KB page fault at a time."""
    offs: list[int] = []
    size = 0
    for _c, dt in _COLS:
        offs.append(size)
        size += (n * np.dtype(dt).itemsize + 63) // 64 * 64  # each column 64-byte aligned
    block = np.empty(size + 64, dtype=np.uint8)
    base = (-block.ctypes.data) % 64
    return {c: block[base + o:base + o + n * np.dtype(dt).itemsize].view(dt)
            for (c, dt), o in zip(_COLS, offs, strict=True)}


def decode(fr: Frames, file_index: int = 0) -> Packets:
    """TCP segments of every frame in `fr`; everything else is counted in fr.report."""
    rep = fr.report
    n = len(fr)
    if n == 0:
        return _empty_packets()
    out = _columns(n)
    unsupported: dict[int, int] = {}
    m, v6 = backend.ACTIVE.decode(fr, out, unsupported)
    for lt, k in unsupported.items():
        rep.skip(f"{R_LINKTYPE} {lt}", k)
        rep.warn(f"{k:,} frames of link type {lt}, which is not supported, were skipped")
    if m == 0:
        return _empty_packets()
    cols = {c: a[:m] for c, a in out.items()}
    rep.tcp_packets += m
    return Packets(**cols, file=np.full(m, file_index, dtype=np.int16), v6=v6)


def _decode_numpy(fr: Frames, out: dict[str, np.ndarray], unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
    """The reference: :func:`_decode_range` chunk by chunk; (rows, IPv6 table)."""
    v = _Views(fr.buf)
    st = _Stage(fr.report)
    v6_ids: dict[bytes, int] = {}
    m = 0
    n = len(fr)
    for a in range(0, n, CHUNK):
        m = _decode_range(v, st, fr, a, min(n, a + CHUNK), out, m, v6_ids, unsupported)
    return m, list(v6_ids)


def _decode_c(lib: Any, fr: Frames, out: dict[str, np.ndarray],
              unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
    """:func:`_decode_range` over all chunks in one C pass (``_ccap.decode``): fills `out`,
    reports skips in the order the numpy stages would, and returns (rows, IPv6 table)."""
    cols = tuple(out.values())
    if fr.pcap is not None:  # record headers read in C, straight from the file
        return _decode_pcap_c(lib, fr, out, unsupported)
    else:
        c = np.ascontiguousarray
        m, events, unsup, v6 = lib.decode(
            fr.buf, c(fr.data_off, dtype=np.int64), c(fr.caplen, dtype=np.int64), c(fr.origlen, dtype=np.int64),
            c(fr.linktype, dtype=np.int32), c(fr.ts, dtype=np.float64), c(fr.frame, dtype=np.int64), CHUNK, cols)
    for reason, k in events:
        fr.report.skip(SKIP_REASONS[reason], k)
    for lt, k in unsup:
        unsupported[lt] = unsupported.get(lt, 0) + k
    return int(m), list(v6)


DECODE_WINDOW = 8 * CHUNK  # records of a pcap file decoded per C call (rounded to whole CHUNKs)


def _decode_pcap_c(lib: Any, fr: Frames, out: dict[str, np.ndarray],
                   unsupported: dict[int, int]) -> tuple[int, list[bytes]]:
    """``_ccap.decode`` over a pcap file's records, DECODE_WINDOW records per call, giving
    back the file's pages behind each window (so resident memory follows the window,
    not the file). Windows are whole CHUNKs, so skip reasons are reported in the same
    order as in one call, and IPv6 addresses are numbered as one call numbers them:
    each window's table is merged into one in its order (new addresses of a chunk come
    in sorted order either way), and its keys remapped."""
    pc = fr.pcap
    assert pc is not None
    rec = np.ascontiguousarray(pc.rec_off, dtype=np.int64)
    n = rec.size
    table: dict[bytes, int] = {}
    m = 0
    step = max(1, DECODE_WINDOW // CHUNK) * CHUNK
    for a in range(0, n, step):
        b = min(n, a + step)
        view = tuple(col[m:m + b - a] for col in out.values())  # rows written never pass records read
        k, events, unsup, v6 = lib.decode(fr.buf, rec[a:b], None, None, None, None, None, CHUNK, view,
                                          int(pc.endian == "<"), pc.tsdiv, pc.linktype)
        k = int(k)
        if a:
            out["frame"][m:m + k] += a  # record numbers count from this window's first
        if v6:
            renumber_v6((out["src"][m:m + k], out["dst"][m:m + k]), v6, table)
        for reason, cnt in events:
            fr.report.skip(SKIP_REASONS[reason], cnt)
        for lt, cnt in unsup:
            unsupported[lt] = unsupported.get(lt, 0) + cnt
        m += k
        if b < n:
            release_pages(fr.buf, int(rec[a]), int(rec[b]))
    return m, list(table)


def _decode_range(v: _Views, st: _Stage, fr: Frames, a: int, b: int, out: dict[str, np.ndarray], w: int,
                  v6: dict[bytes, int], unsupported: dict[int, int]) -> int:
    """Decode frames a..b into the `out` columns from row `w`; returns the next free row."""
    rep = st.rep
    n = b - a
    start = fr.data_off[a:b]
    caplen = fr.caplen[a:b]
    capend = start + caplen
    wire_end = start + np.maximum(fr.origlen[a:b], caplen)

    # ---- link layer -> (frame index, network-layer offset, IP version) ---------------
    idx_parts: list[np.ndarray] = []
    net_parts: list[np.ndarray] = []
    ver_parts: list[np.ndarray] = []
    lt_col = fr.linktype[a:b]
    first_lt = int(lt_col[0])
    lts = [first_lt] if (lt_col == first_lt).all() else np.unique(lt_col).tolist()
    for lt in lts:
        sel = np.arange(n, dtype=np.int64) if len(lts) == 1 else np.flatnonzero(lt_col == lt)
        got = _link(v, st, int(lt), sel, start[sel], capend[sel])
        if got is None:
            unsupported[lt] = unsupported.get(lt, 0) + sel.size
            continue
        idx_parts.append(got[0])
        net_parts.append(got[1])
        ver_parts.append(got[2])
    if not idx_parts:
        return w
    idx = np.concatenate(idx_parts) if len(idx_parts) > 1 else idx_parts[0]
    net = np.concatenate(net_parts) if len(net_parts) > 1 else net_parts[0]
    ver = np.concatenate(ver_parts) if len(ver_parts) > 1 else ver_parts[0]
    if len(idx_parts) > 1:
        o = np.argsort(idx, kind="stable")
        idx, net, ver = idx[o], net[o], ver[o]

    # ---- IP ---------------------------------------------------------------------------
    is4 = ver == 4
    if is4.all():
        idx, l4, iplen, src, dst = _ipv4(v, st, idx, net, capend, wire_end)
    else:
        i4, l4_4, len4, s4, d4 = _ipv4(v, st, idx[is4], net[is4], capend, wire_end)
        i6, l4_6, len6, s6, d6 = _ipv6(v, st, idx[~is4], net[~is4], capend, wire_end, v6)
        idx = np.concatenate([i4, i6])
        l4 = np.concatenate([l4_4, l4_6])
        iplen = np.concatenate([len4, len6])
        src = np.concatenate([s4, s6])
        dst = np.concatenate([d4, d6])
        if i4.size and i6.size:
            o = np.argsort(idx, kind="stable")
            idx, l4, iplen, src, dst = idx[o], l4[o], iplen[o], src[o], dst[o]

    # ---- TCP --------------------------------------------------------------------------
    idx, l4, iplen, src, dst = st.keep(idx, l4 + 20 <= _at(capend, idx), R_CUT_TCP, l4, iplen, src, dst)
    th = v.tcp(l4)  # the fixed 20-byte header, all packets in one gather
    hlen = (th["off"] >> 4).astype(np.int64) * 4
    plen = iplen - hlen
    idx, l4, plen, hlen, src, dst, th = st.keep(idx, (hlen >= 20) & (plen >= 0), R_BAD_TCP,
                                                l4, plen, hlen, src, dst, th)
    m = idx.size
    if not m:
        return w
    ce = _at(capend, idx)
    rows = slice(w, w + m)
    flags = out["flags"][rows]
    flags[:] = th["flags"]
    out["sport"][rows] = th["sport"]
    out["dport"][rows] = th["dport"]
    out["seq"][rows] = th["seq"]
    out["ack"][rows] = th["ack"]
    out["win"][rows] = th["win"]
    out["plen"][rows] = plen
    out["src"][rows] = src
    out["dst"][rows] = dst
    out["ts"][rows] = _at(fr.ts[a:b], idx)
    out["frame"][rows] = _at(fr.frame[a:b], idx)
    opt_end = l4 + hlen
    opt_cut = out["opt_cut"][rows]
    np.greater(opt_end, ce, out=opt_cut)
    has_ts, tsval, tsecr = out["has_ts"][rows], out["tsval"][rows], out["tsecr"][rows]
    mss, wscale, sackok = out["mss"][rows], out["wscale"][rows], out["sackok"][rows]
    has_ts[:] = False
    tsval[:] = 0
    tsecr[:] = 0
    mss[:] = 0
    wscale[:] = -1
    sackok[:] = False
    _options(v, l4 + 20, np.minimum(opt_end, ce), flags, has_ts, tsval, tsecr, mss, wscale, sackok)
    if opt_cut.any():
        rep.skip(R_OPT_CUT, int(opt_cut.sum()))
    return w + m


def _at(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[idx] for sorted frame indices; no copy when nothing was dropped."""
    return a if idx.size == a.size else a[idx]


def _link(v: _Views, st: _Stage, lt: int, idx: np.ndarray, start: np.ndarray,
          capend: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(frame indices, network offsets, IP versions) of the IP frames of one link type."""
    if lt == LINKTYPE_ETHERNET:
        idx, start, capend = st.keep(idx, start + 14 <= capend, R_CUT_L2, start, capend)
        et = v.be16[start + 12]
        net = start + 14
        for _ in range(3):  # 802.1Q, 802.1ad (QinQ), old 0x9100 tags
            tag = (et == VLAN_TPIDS[0]) | (et == VLAN_TPIDS[1]) | (et == VLAN_TPIDS[2])
            if not tag.any():
                break
            short = tag & (net + 4 > capend)
            if short.any():
                idx, net, et, capend, tag = st.keep(idx, ~short, R_CUT_L2, net, et, capend, tag)
            t = np.flatnonzero(tag)
            et[t] = v.be16[net[t] + 2]
            net[t] += 4
        ver = np.where(et == ETH_IPV4, 4, np.where(et == ETH_IPV6, 6, 0))
    elif lt in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        hl = 16 if lt == LINKTYPE_LINUX_SLL else 20
        idx, start, capend = st.keep(idx, start + hl <= capend, R_CUT_L2, start, capend)
        et = v.be16[start + (14 if lt == LINKTYPE_LINUX_SLL else 0)].astype(np.int64)
        net = start + hl
        ver = np.where(et == ETH_IPV4, 4, np.where(et == ETH_IPV6, 6, 0))
    elif lt in (LINKTYPE_NULL, LINKTYPE_LOOP):
        idx, start, capend = st.keep(idx, start + 4 <= capend, R_CUT_L2, start, capend)
        be = v.be32[start].astype(np.int64)
        if lt == LINKTYPE_NULL:  # host byte order of the machine that wrote it
            le = v.le32[start].astype(np.int64)
            af = np.where((le == 2) | np.isin(le, AF_INET6_VALUES), le, be)
        else:
            af = be
        net = start + 4
        ver = np.where(af == 2, 4, np.where(np.isin(af, AF_INET6_VALUES), 6, 0))
    elif lt in RAW_TYPES:
        idx, start, capend = st.keep(idx, start + 1 <= capend, R_CUT_L2, start, capend)
        net = start
        nib = (v.b8[start] >> 4).astype(np.int64)
        ver = np.where(nib == 4, 4, np.where(nib == 6, 6, 0))
    else:
        return None
    idx, net, ver = st.keep(idx, ver != 0, R_NOT_IP, net, ver)
    return idx, net, ver


def _ipv4(v: _Views, st: _Stage, idx: np.ndarray, net: np.ndarray, capend: np.ndarray,
          wire_end: np.ndarray) -> tuple[np.ndarray, ...]:
    idx, net = st.keep(idx, net + 20 <= _at(capend, idx), R_CUT_IP, net)
    h = v.ip4(net)  # the fixed 20-byte header, all packets in one gather
    vihl = h["vihl"]
    ihl = (vihl & 15).astype(np.int64) * 4
    tot = h["tot"].astype(np.int64)
    ok = ((vihl >> 4) == 4) & (ihl >= 20) & ((tot >= ihl) | (tot == 0))
    idx, net, ihl, tot, h = st.keep(idx, ok, R_BAD_IP, net, ihl, tot, h)
    frag_ok = (h["frag"] & 0x1FFF) == 0
    tcp = h["proto"] == 6
    idx, net, ihl, tot, tcp, h = st.keep(idx, frag_ok, R_FRAGMENT, net, ihl, tot, tcp, h)
    idx, net, ihl, tot, h = st.keep(idx, tcp, R_NOT_TCP, net, ihl, tot, h)
    zero = tot == 0
    if zero.any():  # total length 0: a TSO/GSO super-segment captured before segmentation
        tot = np.where(zero, _at(wire_end, idx) - net, tot)
    src = h["src"].astype(np.uint64)
    dst = h["dst"].astype(np.uint64)
    return idx, net + ihl, tot - ihl, src, dst


def _ipv6(v: _Views, st: _Stage, idx: np.ndarray, net: np.ndarray, capend: np.ndarray,
          wire_end: np.ndarray, table: dict[bytes, int]) -> tuple[np.ndarray, ...]:
    """IPv6 packets; addresses become keys V6_BASE + their index in `table` (shared by
    all chunks of a file: address -> index, in order of first appearance)."""
    empty = np.zeros(0, dtype=np.int64)
    if idx.size == 0:
        return idx, empty, empty, empty.astype(np.uint64), empty.astype(np.uint64)
    idx, net = st.keep(idx, net + 40 <= capend[idx], R_CUT_IP, net)
    idx, net = st.keep(idx, (v.b8[net] >> 4) == 6, R_BAD_IP, net)
    plen = v.be16[net + 4].astype(np.int64)
    nh = v.b8[net + 6].astype(np.int64)
    pos = net + 40
    for _ in range(MAX_V6_EXT):
        ext = np.isin(nh, IPV6_EXT)
        if not ext.any():
            break
        short = ext & (pos + 8 > capend[idx])
        if short.any():
            idx, net, plen, nh, pos, ext = st.keep(idx, ~short, R_CUT_IP, net, plen, nh, pos, ext)
        e = np.flatnonzero(ext)
        pe = pos[e]
        kind = nh[e]
        hl = np.where(kind == 44, 8, np.where(kind == 51, (v.b8[pe + 1].astype(np.int64) + 2) * 4,
                                              (v.b8[pe + 1].astype(np.int64) + 1) * 8))
        fragoff = np.where(kind == 44, v.be16[pe + 2] >> 3, 0)
        nh[e] = v.b8[pe]
        pos[e] = pe + hl
        if (fragoff != 0).any():
            keep = np.ones(idx.size, dtype=bool)
            keep[e[fragoff != 0]] = False
            idx, net, plen, nh, pos = st.keep(idx, keep, R_FRAGMENT, net, plen, nh, pos)
    idx, net, plen, nh, pos = st.keep(idx, ~np.isin(nh, IPV6_EXT), R_V6_EXT, net, plen, nh, pos)
    idx, net, plen, pos = st.keep(idx, nh == 6, R_NOT_TCP, net, plen, pos)
    iplen = np.where(plen > 0, net + 40 + plen, wire_end[idx]) - pos
    # factorise the addresses into the IPv6 table
    hi = np.concatenate([v.be64[net + 8], v.be64[net + 24]])
    lo = np.concatenate([v.be64[net + 16], v.be64[net + 32]])
    pair = np.empty((hi.size, 2), dtype=">u8")
    pair[:, 0] = hi
    pair[:, 1] = lo
    uniq, inv = np.unique(pair.view("V16").ravel(), return_inverse=True)
    ids = np.asarray([table.setdefault(bytes(u), len(table)) for u in uniq], dtype=np.uint64)
    keys = V6_BASE + ids[inv.ravel()]
    m = idx.size
    return idx, pos, iplen, keys[:m], keys[m:]


def _options(v: _Views, start: np.ndarray, end: np.ndarray, flags: np.ndarray, has_ts: np.ndarray,
             tsval: np.ndarray, tsecr: np.ndarray, mss: np.ndarray, wscale: np.ndarray,
             sackok: np.ndarray) -> None:
    """TCP options, filled in place. Two passes: the layout nearly every non-SYN segment
    of a timestamping stack has (NOP NOP TS), then a general walk for the rest that moves
    every unfinished packet one option forward per step."""
    room = end - start
    ok12 = room >= 12
    s0 = np.where(ok12, start, 0)  # a safe offset where there is no room
    raw12 = v.opt12(s0)  # the first 12 option bytes, one gather
    o12 = raw12.view(TS_OPT)
    w0_all = o12["lead"]
    fast = ok12 & (w0_all == 0x0101080A) & ((flags & SYN) == 0)
    if fast.any():
        np.copyto(has_ts, fast)
        np.copyto(tsval, o12["tsval"], where=fast, casting="unsafe")
        np.copyto(tsecr, o12["tsecr"], where=fast, casting="unsafe")
    rest = (room > 0) & ~fast
    # SYN and SYN-ACK layouts of common stacks, matched whole
    syn = np.flatnonzero(rest & ((flags & SYN) != 0) & ok12)
    if syn.size:
        s = start[syn]
        os_ = raw12[syn].view(TS_OPT)
        w0, w1, w2 = os_["lead"].astype(np.uint32), os_["tsval"].astype(np.uint32), os_["tsecr"].astype(np.uint32)
        mss_ok = (w0 >> 16) == 0x0204
        # Linux: MSS, SACK-permitted, TS, NOP, WS (20 bytes)
        lin = mss_ok & (w1 == 0x0402080A) & (room[syn] >= 20)
        if lin.any():
            k, sk = syn[lin], s[lin]
            w4 = v.be32[sk + 16]
            ok = (w4 >> 8) == 0x010303
            k, sk, w4 = k[ok], sk[ok], w4[ok]
            mss[k] = w0[lin][ok] & 0xFFFF
            sackok[k] = True
            has_ts[k] = True
            tv = v.be64[sk + 8]
            tsval[k] = (tv >> np.uint64(32)).astype(np.uint32)
            tsecr[k] = tv.astype(np.uint32)
            wscale[k] = w4 & 0xFF
            rest[k] = False
        # Linux without timestamps: MSS, NOP, NOP, SACK-permitted, NOP, WS (12 bytes)
        # Windows: MSS, NOP, WS, NOP, NOP, SACK-permitted (12 bytes)
        for sel_, ws_word in (((w1 == 0x01010402) & ((w2 >> 8) == 0x010303), w2),
                              (((w1 >> 8) == 0x010303) & (w2 == 0x01010402), w1)):
            m = mss_ok & sel_ & ~lin
            if m.any():
                k = syn[m]
                mss[k] = w0[m] & 0xFFFF
                sackok[k] = True
                wscale[k] = ws_word[m] & 0xFF
                rest[k] &= room[k] > 12  # anything after the 12 bytes: walk it
    act = np.flatnonzero(rest)
    if not act.size:
        return
    pos = start[act].copy()
    stop = end[act]
    for _ in range(40):
        if not act.size:
            break
        live = pos < stop
        act, pos, stop = act[live], pos[live], stop[live]
        if not act.size:
            break
        kind = v.b8[pos]
        nop = kind == 1
        eol = kind == 0
        has_len = ~nop & ~eol & (pos + 1 < stop)
        ln = np.where(has_len, v.b8[np.where(has_len, pos + 1, pos)], 0).astype(np.int64)
        good = has_len & (ln >= 2) & (pos + ln <= stop)
        g = np.flatnonzero(good)
        if g.size:
            gk, gl, gp, ga = kind[g], ln[g], pos[g], act[g]
            t = (gk == 8) & (gl == 10)
            if t.any():
                has_ts[ga[t]] = True
                tsval[ga[t]] = v.be32[gp[t] + 2]
                tsecr[ga[t]] = v.be32[gp[t] + 6]
            t = (gk == 2) & (gl == 4)
            if t.any():
                mss[ga[t]] = v.be16[gp[t] + 2]
            t = (gk == 3) & (gl == 3)
            if t.any():
                wscale[ga[t]] = v.b8[gp[t] + 2]
            t = (gk == 4) & (gl == 2)
            if t.any():
                sackok[ga[t]] = True
        step = np.where(nop, 1, np.where(good, ln, 0))
        go = step > 0
        act, pos, stop = act[go], pos[go] + step[go], stop[go]


STREAM_WINDOW = 32 << 20  # bytes of a pcap file scanned per step of a streamed read


def stream_pcap(lib: Any, buf: Any, rep: ReadReport, file_index: int = 0,
                window: int = STREAM_WINDOW, table: dict[bytes, int] | None = None,
                file_table: dict[bytes, int] | None = None) -> Iterator[Packets]:
    """The TCP packets of a pcap file (C backend) in runs of records, each scanned,
    decoded and its pages given back before the next is read: what is resident follows
    `window`, not the file. `buf`: the file's bytes (memory-mapped) or a
    :data:`.window.Source` (a gzip file, inflated a window at a time: the bytes before
    the first record not yet decoded are dropped). Runs are whole CHUNKs of records (the
    last excepted), so skip reasons, frame numbers and IPv6 address keys (one table,
    numbered in the file's order) are those of :func:`decode` over the whole file; every
    run carries that table as it stands. `table`: the IPv6 table of the files streamed
    before this one (extended in place), so that files read one after the other number
    their addresses as :meth:`Packets.concat` of their one-pass decodes does;
    `file_table`: filled with this file's own table (its one-pass decode's `v6`)."""
    src = as_source(buf)
    if src.ensure(24) < 24:
        raise ValueError("stream_pcap: shorter than a pcap header")
    hdr = formats.pcap_header(src.buf, rep)
    table = {} if table is None else table
    unsupported: dict[int, int] = {}
    little = int(hdr.endian == "<")
    pending: list[np.ndarray] = []
    n_pending = 0
    base = 0  # records decoded before this run

    def run(rec: np.ndarray) -> Packets | None:
        nonlocal base
        n = rec.size
        out = _columns(n)
        at = rec - src.base if src.base else rec  # offsets in the window
        k, events, unsup, v6 = lib.decode(src.buf, at, None, None, None, None, None, CHUNK, tuple(out.values()),
                                          little, hdr.tsdiv, hdr.linktype)
        k = int(k)
        cols = {c: a[:k] for c, a in out.items()}
        if base:
            cols["frame"] += base
        if v6:
            renumber_v6((cols["src"], cols["dst"]), v6, table, file_table)
        for reason, cnt in events:
            rep.skip(SKIP_REASONS[reason], cnt)
        for lt, cnt in unsup:
            unsupported[lt] = unsupported.get(lt, 0) + cnt
        base += n
        rep.tcp_packets += k
        if not k:
            return None
        return Packets(**cols, file=np.full(k, file_index, dtype=np.int16), v6=list(table))

    for arr in formats.scan_pcap(lib, src, rep, hdr, window):
        pending.append(arr)
        n_pending += arr.size
        if n_pending < CHUNK:
            continue
        rec = np.concatenate(pending) if len(pending) > 1 else pending[0]
        cut = n_pending // CHUNK * CHUNK
        pending, n_pending = ([rec[cut:]], n_pending - cut) if cut < n_pending else ([], 0)
        pk = run(rec[:cut])
        nxt = int(pending[0][0]) if pending else int(rec[cut - 1])
        src.release(int(rec[0]), nxt)
        if pk is not None:
            yield pk
    if pending:
        pk = run(np.concatenate(pending))
        if pk is not None:
            yield pk
    for lt, cnt in unsupported.items():
        rep.skip(f"{R_LINKTYPE} {lt}", cnt)
        rep.warn(f"{cnt:,} frames of link type {lt}, which is not supported, were skipped")


def stream_pcapng(lib: Any, buf: Any, rep: ReadReport, file_index: int = 0,
                  window: int = STREAM_WINDOW, table: dict[bytes, int] | None = None,
                  file_table: dict[bytes, int] | None = None) -> Iterator[Packets]:
    """:func:`stream_pcap` for a pcapng file (memory-mapped, or gzip-compressed and
    inflated a window at a time): its blocks walked window after window
    (:func:`.formats.scan_pcapng`), the records decoded in whole CHUNKs
    (so skip reasons, frame numbers and IPv6 keys are those of :func:`decode` over the
    whole file; the decoder's skip reasons are counted after the walk's, as the one-pass
    read counts them), and the pages behind each run given back."""
    src = as_source(buf)
    table = {} if table is None else table
    unsupported: dict[int, int] = {}
    skips: dict[int, int] = {}
    pending: list[formats.Frames] = []
    n_pending = 0
    released = 0
    names = ("data_off", "caplen", "origlen", "linktype", "ts", "frame")
    dtypes = (np.int64, np.int64, np.int64, np.int32, np.float64, np.int64)

    def run(cols: list[np.ndarray]) -> Packets | None:
        n = cols[0].size
        out = _columns(n)
        if src.base:  # offsets in the window
            cols = [cols[0] - src.base, *cols[1:]]
        k, events, unsup, v6 = lib.decode(src.buf, *cols, CHUNK, tuple(out.values()))
        k = int(k)
        got = {c: a[:k] for c, a in out.items()}
        if v6:
            renumber_v6((got["src"], got["dst"]), v6, table, file_table)
        for reason, cnt in events:
            skips[reason] = skips.get(reason, 0) + cnt
        for lt, cnt in unsup:
            unsupported[lt] = unsupported.get(lt, 0) + cnt
        rep.tcp_packets += k
        if not k:
            return None
        return Packets(**got, file=np.full(k, file_index, dtype=np.int16), v6=list(table))

    def columns(frs: list[formats.Frames]) -> list[np.ndarray]:
        return [np.ascontiguousarray(np.concatenate([getattr(f, c) for f in frs]), dtype=d)
                for c, d in zip(names, dtypes, strict=True)]

    for fr in formats.scan_pcapng(src, rep, window):
        pending.append(fr)
        n_pending += len(fr)
        if n_pending < CHUNK:
            continue
        cols = columns(pending)
        cut = n_pending // CHUNK * CHUNK
        rest = [c[cut:] for c in cols]
        pending = [formats.Frames(src.buf, rest[0], rest[1], rest[2], rest[4], rest[3], rest[5], rep)] if cut < n_pending else []
        n_pending -= cut
        pk = run([c[:cut] for c in cols])
        nxt = int(rest[0][0]) if n_pending else int(cols[0][cut - 1])
        src.release(released, nxt)
        released = nxt
        if pk is not None:
            yield pk
    if pending:
        pk = run(columns(pending))
        if pk is not None:
            yield pk
    for reason, cnt in skips.items():
        rep.skip(SKIP_REASONS[reason], cnt)
    for lt, cnt in unsupported.items():
        rep.skip(f"{R_LINKTYPE} {lt}", cnt)
        rep.warn(f"{cnt:,} frames of link type {lt}, which is not supported, were skipped")
