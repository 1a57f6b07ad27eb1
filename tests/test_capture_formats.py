"""Reading captures: every format variant, link type and header layout the brief names,
cross-checked field by field against the slow reference decoder (and dpkt); damage is
reported with how far reading got, and what was read is kept."""

from __future__ import annotations

import gzip
import struct
from typing import Any

import numpy as np
import pytest

from tcpreuse.capture.analysis import analyze_paths
from tcpreuse.capture.decode import Packets, decode
from tcpreuse.capture.formats import parse_frames
from tcpreuse.capture.refdecode import segments
from tcpreuse.capture.synth import (
    Frame,
    Iface,
    NgExtra,
    NgWriter,
    Seg,
    frame,
    frames_of,
    handshake,
    pcap_bytes,
)
from tcpreuse.errors import CaptureError

T0 = 1_700_000_000.0


def fast(data: bytes) -> tuple[list[dict[str, Any]], Any]:
    fr = parse_frames(data, "test")
    p = decode(fr)
    return rows(p), fr.report


def rows(p: Packets) -> list[dict[str, Any]]:
    out = []
    for i in range(len(p)):
        out.append({
            "frame": int(p.frame[i]), "src": p.addr(p.src[i]), "dst": p.addr(p.dst[i]),
            "sport": int(p.sport[i]), "dport": int(p.dport[i]), "seq": int(p.seq[i]), "ack": int(p.ack[i]),
            "flags": int(p.flags[i]), "win": int(p.win[i]), "plen": int(p.plen[i]),
            "tsval": int(p.tsval[i]) if p.has_ts[i] else None, "tsecr": int(p.tsecr[i]) if p.has_ts[i] else None,
            "mss": int(p.mss[i]) or None, "wscale": None if p.wscale[i] < 0 else int(p.wscale[i]),
            "sackok": bool(p.sackok[i]), "ts": float(p.ts[i]),
        })
    return out


def ref(data: bytes) -> list[dict[str, Any]]:
    return list(segments(data))


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for k in x:
            if k == "ts":
                assert x[k] == pytest.approx(y[k], abs=2e-6) or y[k] == 0.0
            else:
                assert x[k] == y[k], (k, x, y)


def conv(v6: bool = False, ts: bool = True) -> list[Seg]:
    c, s = ("2001:db8::2", "2001:db8::1") if v6 else ("10.0.0.2", "10.0.0.1")
    segs = handshake(T0, c, 40000, s, 80, 1000, 5000, ts=(111, 222) if ts else None)
    segs += handshake(T0 + 0.5, c, 40002, s, 80, 9000, 7000, ts=(333, 444) if ts else None, server_closes=False)
    return segs


@pytest.mark.parametrize("nsec", [False, True])
@pytest.mark.parametrize("big", [False, True])
def test_pcap_byte_orders_and_resolutions(nsec: bool, big: bool) -> None:
    segs = conv()
    data = pcap_bytes(frames_of(segs), nsec=nsec, big_endian=big)
    got, rep = fast(data)
    same(got, ref(data))
    assert rep.complete and rep.records == len(segs) and rep.tcp_packets == len(segs)
    assert got[0]["ts"] == pytest.approx(T0, abs=1e-6)
    assert got[0]["mss"] == 1460 and got[0]["wscale"] == 7 and got[0]["sackok"] and got[0]["tsval"] == 111
    assert got[3]["plen"] == 10 and got[4]["plen"] == 20


@pytest.mark.parametrize("linktype,kw", [
    (1, {}), (1, {"vlans": [(0x8100, 10)]}), (1, {"vlans": [(0x88A8, 100), (0x8100, 10)]}),
    (113, {}), (276, {}), (101, {}), (12, {}), (14, {}), (228, {}), (0, {"null_le": True}),
    (0, {"null_le": False}), (108, {}),
])
def test_link_types(linktype: int, kw: dict[str, Any]) -> None:
    segs = conv()
    data = pcap_bytes(frames_of(segs, linktype, **kw), linktype=linktype)
    got, rep = fast(data)
    assert len(got) == len(segs), rep.skipped
    same(got, ref(data))
    assert {g["src"] for g in got} == {"10.0.0.2", "10.0.0.1"}


@pytest.mark.parametrize("ext", [(), (0,), (0, 60), (44,), (60, 43, 44)])
def test_ipv6_with_extension_headers(ext: tuple[int, ...]) -> None:
    segs = conv(v6=True)
    for s in segs:
        s.v6_ext = ext
    for lt in (1, 229, 276):
        data = pcap_bytes(frames_of(segs, lt), linktype=lt)
        got, _ = fast(data)
        same(got, ref(data))
        assert got[0]["src"] == "2001:db8::2" and got[0]["plen"] == 0 and got[3]["plen"] == 10


def test_pcapng_interfaces_resolutions_and_other_blocks() -> None:
    segs = conv()
    frames = [Frame(s.t, frame(s, 1 if i % 2 == 0 else 276), iface=i % 2) for i, s in enumerate(segs)]
    w = NgWriter(ifaces=[Iface(1, tsresol=9), Iface(276, tsresol=0x80 | 20, tsoffset=0)])
    data = w.to_bytes(frames, extra=[NgExtra(0, 4), NgExtra(3, 5, b"\x00" * 16), NgExtra(5, 0x0BAD, b"abcd" * 3),
                                      NgExtra(len(frames), 0x0A, b"\x00" * 8)])
    got, rep = fast(data)
    same(got, ref(data))
    assert len(got) == len(segs) and rep.complete and rep.format == "pcapng"
    assert rep.linktypes == {1: 8, 276: 8}
    assert rep.other_blocks == {"NRB": 1, "ISB": 1, "custom": 1, "DSB": 1}
    # nanosecond and 2^-20 interfaces both give the right time
    assert [g["ts"] for g in got] == pytest.approx([s.t for s in segs], abs=2e-6)


def test_pcapng_big_endian_and_simple_packet_blocks() -> None:
    segs = conv()
    data = NgWriter(big_endian=True).to_bytes(frames_of(segs))
    got, _ = fast(data)
    same(got, ref(data))
    spb = NgWriter(simple=True).to_bytes(frames_of(segs))
    got2, rep = fast(spb)
    assert len(got2) == len(segs) and rep.complete
    assert [g["seq"] for g in got2] == [s.seq for s in segs]


def test_two_sections_with_different_byte_orders() -> None:
    a, b = conv()[:8], conv()[8:]
    data = NgWriter().to_bytes(frames_of(a)) + NgWriter(big_endian=True, ifaces=[Iface(101)]).to_bytes(
        frames_of(b, 101))
    got, rep = fast(data)
    assert len(got) == 16 and rep.complete
    assert [g["seq"] for g in got] == [s.seq for s in a + b]


def test_against_dpkt() -> None:
    dpkt = pytest.importorskip("dpkt")
    segs = conv() + conv(ts=False)
    data = pcap_bytes(frames_of(segs))
    import io

    want = []
    for _t, buf in dpkt.pcap.Reader(io.BytesIO(data)):
        tcp = dpkt.ethernet.Ethernet(buf).data.data
        opts = dict(dpkt.tcp.parse_opts(tcp.opts))
        tsval = struct.unpack("!I", opts[8][:4])[0] if 8 in opts else None
        want.append((tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, len(tcp.data), tsval))
    got, _ = fast(data)
    assert [(g["sport"], g["dport"], g["seq"], g["ack"], g["flags"], g["plen"], g["tsval"]) for g in got] == want


def test_snaplen_cut_packets_are_kept_and_counted() -> None:
    segs = conv()
    # 14 + 20 + 20 = 54: TCP header without options; 40 cuts inside the TCP header
    for snap, kept in ((54, len(segs)), (40, 0)):
        data = pcap_bytes(frames_of(segs, snaplen=snap), snaplen=snap)
        got, rep = fast(data)
        assert len(got) == kept
        if kept:
            assert rep.skipped["TCP options cut by the snap length (segment kept)"] > 0
            assert all(g["tsval"] is None for g in got)
            assert [g["plen"] for g in got] == [len(s.payload) if isinstance(s.payload, bytes) else s.payload
                                                for s in segs]  # from the IP length, not the cut frame
        else:
            assert rep.skipped["cut before the end of the TCP header (snap length)"] == len(segs)


def test_non_tcp_and_fragments_are_skipped_with_reasons() -> None:
    segs = conv()[:3]
    good = frames_of(segs)
    udp = bytes(good[0].data)
    udp = udp[:23] + b"\x11" + udp[24:]  # IP protocol 17
    frag = bytes(good[0].data)
    frag = frag[:20] + struct.pack("!H", 0x2000 | 10) + frag[22:]  # fragment offset 10
    arp = b"\xff" * 12 + b"\x08\x06" + b"\x00" * 28
    data = pcap_bytes([*good, Frame(T0, udp), Frame(T0, frag), Frame(T0, arp)])
    got, rep = fast(data)
    assert len(got) == 3
    assert rep.skipped == {"not TCP": 1, "IP fragment (not the first)": 1, "not IP": 1}


def test_truncated_file_keeps_what_was_read() -> None:
    segs = conv()
    data = pcap_bytes(frames_of(segs))
    cut = data[: len(data) - 30]
    got, rep = fast(cut)
    assert len(got) == len(segs) - 1
    assert not rep.complete and "truncated" in rep.warnings[0] and "cut short" in rep.warnings[0]
    assert rep.bytes_read < rep.bytes_total
    ng = NgWriter().to_bytes(frames_of(segs))
    got, rep = fast(ng[: len(ng) - 10])
    assert len(got) == len(segs) - 1 and not rep.complete


def test_garbage_in_the_middle_is_skipped_and_reading_resumes() -> None:
    segs = conv()
    fr = frames_of(segs)
    head = pcap_bytes(fr[:6])
    tail = pcap_bytes(fr[6:])[24:]
    junk = bytes(range(256)) * 3
    got, rep = fast(head + junk + tail)
    assert len(got) == len(segs)
    assert rep.garbage_bytes == len(junk) and not rep.complete
    assert "resynchronised" in rep.warnings[0]
    # the same in pcapng: a damaged block between good ones
    ng = NgWriter().to_bytes(fr[:6]) + struct.pack("<II", 6, 999) + b"\xee" * 40 + NgWriter().to_bytes(fr[6:])[28:]
    got, rep = fast(ng)
    assert len(got) == len(segs) and not rep.complete


def test_bad_record_length_is_damage_not_truncation() -> None:
    segs = conv()
    data = bytearray(pcap_bytes(frames_of(segs)))
    # make the 3rd record's captured length huge: reading must resynchronise after it
    off = 24
    for _ in range(2):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
    struct.pack_into("<I", data, off + 8, 0x7FFFFFF0)
    got, rep = fast(bytes(data))
    assert len(got) == len(segs) - 1
    assert any("exceeds" in w for w in rep.warnings)


@pytest.mark.parametrize("blob,msg", [
    (b"", "too short"), (b"hello world, not a capture", "not a pcap"), (b"PK\x03\x04" + b"\x00" * 40, "not a pcap"),
])
def test_not_a_capture_is_a_clear_error(blob: bytes, msg: str) -> None:
    with pytest.raises(CaptureError, match=msg):
        parse_frames(blob, "x")


def test_files_gzip_missing_and_directory(tmp_path: Any) -> None:
    segs = conv()
    p = tmp_path / "a.pcap.gz"
    p.write_bytes(gzip.compress(pcap_bytes(frames_of(segs))))
    an = analyze_paths([p])[0]
    assert an.packets == len(segs) and an.counts()["attempts"] == 2
    with pytest.raises(CaptureError, match="no such file"):
        analyze_paths([tmp_path / "nope.pcap"])
    with pytest.raises(CaptureError, match=r"directory|not a regular"):
        analyze_paths([tmp_path])


def test_tso_zero_total_length_uses_the_wire_length() -> None:
    s = Seg(T0, "10.0.0.2", 1, "10.0.0.1", 2, "PA", 1, 1, payload=3000)
    d = bytearray(frame(s))
    struct.pack_into("!H", d, 16, 0)  # IPv4 total length 0, as captured before TSO
    got, _ = fast(pcap_bytes([Frame(T0, bytes(d))]))
    assert got[0]["plen"] == 3000


def test_unsorted_and_merged_files_give_time_ordered_flows(tmp_path: Any) -> None:
    segs = conv()
    a = tmp_path / "a.pcap"
    b = tmp_path / "b.pcap"
    a.write_bytes(pcap_bytes(frames_of(segs[8:])))  # second connection first
    b.write_bytes(pcap_bytes(frames_of(segs[:8])))
    an = analyze_paths([a, b], jobs=2)[0]
    c = an.counts()
    assert c["attempts"] == 2 and c["conn_state"] == {"SF": 2}
    assert np.all(np.diff(an.attempts["t_start"]) != 0)
    per = analyze_paths([a, b], merge=False, jobs=1)
    assert [x.counts()["attempts"] for x in per] == [1, 1]


def test_pcapng_written_by_wireshark_tools(tmp_path: Any) -> None:
    """editcap writes real-world pcapng (SHB/IDB options, EPB options): same analysis."""
    import shutil
    import subprocess

    if shutil.which("editcap") is None:
        pytest.skip("needs editcap (wireshark tools)")
    src = tmp_path / "a.pcap"
    src.write_bytes(pcap_bytes(frames_of(conv() + conv(v6=True))))
    dst = tmp_path / "a.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", str(src), str(dst)], check=True, capture_output=True, timeout=30)
    a, b = analyze_paths([src])[0], analyze_paths([dst])[0]
    assert b.reports[0].format == "pcapng" and b.complete
    assert a.counts() == b.counts() and a.export_columns() == {**b.export_columns(), "file": a.export_columns()["file"]}
