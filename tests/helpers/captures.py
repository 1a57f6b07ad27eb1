"""Crafted captures shared by the capture tests.

* windows_reuse, nat_two_clocks (write_pcap writes them): the traffic a modern kernel will not produce on demand
  (Windows clients without timestamps and with random ISNs; two timestamp clocks behind
  one NAT address);
* seeds, SEEDS, mutated: good pcap/pcapng files and the hypothesis strategy that damages
  them (bit flips, truncation, random lengths, garbage and unknown blocks);
* many_flows, captures, seq_end_before_base, odd_captures, frames_state, packets_state:
  captures whose segments the rules treat specially, and the state compared between the
  compiled, C and Python readers.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tcpreuse.capture.decode import Packets
from tcpreuse.capture.formats import Frames
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

T0 = 1_700_000_000.0
C, S = "10.0.0.5", "10.0.0.1"


def write_pcap(path: Path, segs: list[Seg]) -> Path:
    """`segs` in time order as a pcap file at `path`."""
    path.write_bytes(pcap_bytes(frames_of(sorted(segs, key=lambda s: s.t))))
    return path


def windows_reuse(n_conn: int = 900, ports: int = 300, gap: float = 0.083, seed: int = 7) -> list[Seg]:
    """Windows-like clients: sequential ports 49152.., no timestamps, random ISN, 3 s RTO,
    arrivals `gap` apart on average, the rate falling over the run (0.4 to 1.6 x gap: a
    port comes back after 10-40 s with the defaults). A Linux server closes first and holds TIME_WAIT; a reused SYN whose
    ISN is not after the old rcv_nxt gets an ACK for the old connection, the client RSTs,
    and retries when its RTO expires."""
    rng = random.Random(seed)
    segs: list[Seg] = []
    last: dict[int, tuple[int, int, float]] = {}  # port -> (old rcv_nxt, old snd_nxt, end time)
    t = T0
    for k in range(n_conn):
        t += gap * (0.4 + 1.2 * k / n_conn) * rng.uniform(0.9, 1.1)  # the rate slows down
        port = 49152 + k % ports
        isn = rng.randrange(1 << 32)
        sisn = rng.randrange(1 << 32)
        start = t
        old = last.get(port)
        if old is not None and t - old[2] < 60 and not (0 < ((isn - old[0]) & 0xFFFFFFFF) < 0x80000000):
            rcv_nxt, snd_nxt, _ = old
            segs += [Seg(t, C, port, S, 9313, "S", isn, 0, win=8192, mss=1460, wscale=8, sackok=True),
                     Seg(t + 0.0002, S, 9313, C, port, "A", snd_nxt, rcv_nxt),
                     Seg(t + 0.0004, C, port, S, 9313, "R", rcv_nxt, 0)]
            start = t + 3.0  # Windows: initial RTO 3 s
        conn = handshake(start, C, port, S, 9313, isn, sisn, ts=None, wscale=8)
        if start != t:
            conn[0] = Seg(start, C, port, S, 9313, "S", isn, 0, win=8192, mss=1460, wscale=8, sackok=True)
        segs += conn
        last[port] = ((isn + 1 + 10 + 1) & 0xFFFFFFFF, (sisn + 1 + 20 + 1) & 0xFFFFFFFF, start + 0.001)
    return segs


def nat_two_clocks() -> list[Seg]:
    """Hosts A (TSval ~ 5e6 + 1000 t) and B (~ 1e5 + 1000 t) share 203.0.113.7. The server
    runs tcp_tw_recycle, closes first, and so drops B's SYNs (older TSval) for 60 s."""
    nat, srv = "203.0.113.7", "10.0.0.1"
    segs: list[Seg] = []
    port = 30000
    for k in range(40):
        t = T0 + k * 0.5
        host_a = k % 2 == 1
        tsv = int((5_000_000 if host_a else 100_000) + 1000 * (t - T0))
        port += 1
        isn = 1000 * k + 7
        if host_a or k == 0:  # A always works; B's first SYN comes before any cache entry
            segs += handshake(t, nat, port, srv, 80, isn, 50_000 + k, ts=(tsv, 9_000_000 + k))
        else:
            segs += [Seg(t + d, nat, port, srv, 80, "S", isn, 0, ts=(tsv + int(d * 1000), 0), mss=1460,
                         wscale=7, sackok=True) for d in (0.0, 1.0, 3.0)]
    return segs


def seeds() -> list[bytes]:
    segs = handshake(T0, "10.0.0.2", 40000, "10.0.0.1", 80, 1, 2, ts=(5, 6))
    segs += handshake(T0 + 0.3, "10.0.0.2", 40000, "10.0.0.1", 80, 100, 200, server_closes=False)
    segs += [Seg(T0 + 1, "2001:db8::2", 5, "2001:db8::1", 80, "S", 9, v6_ext=(0, 44), mss=1400, wscale=2)]
    fr = frames_of(segs)
    return [
        pcap_bytes(fr),
        pcap_bytes(frames_of(segs, 276), linktype=276, nsec=True, big_endian=True),
        NgWriter(ifaces=[Iface(1), Iface(113, tsresol=9)]).to_bytes(
            [Frame(f.t, f.data if i % 2 == 0 else frame(segs[i], 113), iface=i % 2) for i, f in enumerate(fr)],
            extra=[NgExtra(2, 5, b"\x00" * 16)]),
    ]


SEEDS = seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "length", "garbage", "block", "zero"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "length" and pos + 4 <= len(data):
            val = draw(st.sampled_from([0, 1, 3, 12, 15, 16, 31, 32, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                        draw(st.integers(0, 2**32 - 1))]))
            struct.pack_into("<I", data, pos, val)
        elif op == "garbage":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "block":
            btype = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 0x0BAD, 0x0A0D0D0A, 7]))
            body = draw(st.binary(max_size=40))
            blen = draw(st.sampled_from([12 + len(body), 12 + len(body) + 4, 8, 13]))
            data[pos:pos] = struct.pack("<II", btype, blen) + body + struct.pack("<I", blen)
        elif op == "zero":
            n = draw(st.integers(1, 32))
            data[pos:pos + n] = b"\x00" * min(n, len(data) - pos)
    return bytes(data)


def frames_state(fr: Frames) -> dict[str, Any]:
    return {
        "data_off": fr.data_off.tolist(), "caplen": fr.caplen.tolist(), "origlen": fr.origlen.tolist(),
        "ts": fr.ts.tolist(), "linktype": fr.linktype.tolist(), "frame": fr.frame.tolist(),
        "report": fr.report.to_json(),
    }


def packets_state(p: Packets) -> dict[str, Any]:
    out: dict[str, Any] = {c: getattr(p, c).tolist() for c in Packets.COLUMNS}
    out["src"] = [p.addr(k) for k in p.src.tolist()]  # IPv6 keys depend on table order
    out["dst"] = [p.addr(k) for k in p.dst.tolist()]
    return out


def many_flows(n: int = 40, v6_every: int = 3, gap: float = 0.01) -> list[Seg]:
    segs: list[Seg] = []
    for i in range(n):
        c, s = ("2001:db8::%x" % (i + 2), "2001:db8::1") if i % v6_every == 0 else (f"10.0.{i // 200}.{i % 200 + 2}",
                                                                                 "10.0.0.1")
        segs += handshake(T0 + i * gap, c, 40000 + i, s, 80, 1000 * i, 5000 + i, ts=(i, 7) if i % 2 else None,
                          server_closes=i % 4 == 0)
    segs.sort(key=lambda s: s.t)
    return segs


def captures() -> dict[str, bytes]:
    segs = many_flows()
    fr = frames_of(segs)
    # a 70 kB TSO super-segment (IP total length 0): a record longer than 0xFFFF bytes
    tso = bytearray(frame(Seg(T0 + 5, "10.0.0.2", 1, "10.0.0.1", 2, "A", 1, 1)) + b"x" * 70000)
    tso[16:18] = b"\x00\x00"
    big = [Frame(T0 + 5, bytes(tso))]
    return {
        "pcap": pcap_bytes(fr),
        "pcap-be-ns-sll2": pcap_bytes(frames_of(segs, 276), linktype=276, nsec=True, big_endian=True),
        "pcap-record-over-64k": pcap_bytes(fr[:5] + big + fr[5:9]),
        "pcapng-two-ifaces": NgWriter(ifaces=[Iface(1), Iface(113, tsresol=9)]).to_bytes(
            [Frame(f.t, f.data if i % 2 == 0 else frame(segs[i], 113), iface=i % 2) for i, f in enumerate(fr)]),
        "pcapng-be": NgWriter(big_endian=True).to_bytes(fr),
        "pcapng-block-over-64k": NgWriter().to_bytes(fr[:3] + big + fr[3:9]),
    }


def seq_end_before_base() -> list[Seg]:
    """Midstream traffic whose first packet per side is a RST (numbers of another
    connection, so not where the side ended) and whose later packets lie before that
    RST's number: the originator ends 90 before its base, the responder 1 before."""
    c, s = "10.0.0.2", "10.0.0.1"
    return [
        Seg(T0, c, 2000, s, 95, "R", 1000), Seg(T0 + 0.1, c, 2000, s, 95, "PA", 900, 5, payload=10),
        Seg(T0 + 0.2, s, 95, c, 2000, "R", 7000), Seg(T0 + 0.3, s, 95, c, 2000, "A", 6999, 910),
    ]


def odd_captures() -> dict[str, bytes]:
    """Segments the rules treat specially: retransmitted SYNs, SYN-ACK first (flipped),
    RSTs before and after the handshake, FIN+RST, a TIME_WAIT ACK answer, data
    retransmissions, zero windows, midstream traffic, long segments, sequence spaces
    that end before their base."""
    c, s = "10.0.0.2", "10.0.0.1"
    segs = [
        Seg(T0, c, 1000, s, 80, "S", 100), Seg(T0 + 1, c, 1000, s, 80, "S", 100),  # retransmitted
        Seg(T0 + 1.1, s, 80, c, 1000, "A", 5000, 7), Seg(T0 + 1.2, c, 1000, s, 80, "R", 7),  # old ACK, client RST
        Seg(T0 + 2, c, 1000, s, 80, "S", 100), Seg(T0 + 2.1, s, 80, c, 1000, "SA", 900, 101),
        Seg(T0 + 2.2, c, 1000, s, 80, "A", 101, 901), Seg(T0 + 2.3, c, 1000, s, 80, "PA", 101, 901, payload=10),
        Seg(T0 + 2.4, c, 1000, s, 80, "PA", 101, 901, payload=10),  # data retransmission
        Seg(T0 + 2.5, s, 80, c, 1000, "A", 901, 111, win=0), Seg(T0 + 2.6, s, 80, c, 1000, "A", 901, 111, win=0),
        Seg(T0 + 2.7, s, 80, c, 1000, "FA", 901, 111), Seg(T0 + 2.8, c, 1000, s, 80, "FA", 111, 902),
        Seg(T0 + 2.9, s, 80, c, 1000, "FA", 901, 112), Seg(T0 + 3.0, c, 1000, s, 80, "RA", 112, 902),
        Seg(T0 + 4, s, 81, c, 1001, "SA", 50, 60),  # SYN-ACK without its SYN: flipped
        Seg(T0 + 4.1, c, 1001, s, 81, "A", 60, 51), Seg(T0 + 4.2, s, 81, c, 1001, "SA", 77, 60),
        Seg(T0 + 5, c, 1002, s, 82, "PA", 5, 6, payload=3),  # midstream
        Seg(T0 + 5.1, c, 1002, s, 82, "FRA", 8, 6), Seg(T0 + 5.2, s, 82, c, 1002, "SF", 6, 8),
        Seg(T0 + 6, c, 1003, s, 83, "S", 1), Seg(T0 + 6.1, s, 83, c, 1003, "R", 0, 2),  # refused
        Seg(T0 + 7, c, 1004, s, 84, "S", 1), Seg(T0 + 7.1, c, 1004, s, 84, "S", 2),  # new ISN: a new attempt
    ]
    segs += [Seg(T0 + 8 + k * 1e-3, c, 1005, s, 85, "A", 1, 1, win=0) for k in range(25)]  # W scaling
    segs += [Seg(T0 + 9 + k * 1e-3, s, 86, c, 1006, "A", 1, 1) for k in range(12)]  # early responder ACKs
    segs += [Seg(T0 + 9.5, c, 1006, s, 86, "S", 3), Seg(T0 + 9.6, s, 86, c, 1006, "A", 1, 1)]
    # a responder ACKing 9 times before answering, the client resetting in between:
    # Zeek's machine sees the first EARLY_STEPS of those ACKs
    segs += [Seg(T0 + 10, c, 1007, s, 87, "S", 100)]
    segs += [Seg(T0 + 10.1 + k * 1e-3, s, 87, c, 1007, "A", 9, 77) for k in range(7)]
    segs += [Seg(T0 + 10.2, c, 1007, s, 87, "R", 101, win=0)]  # RSTs often carry window 0
    segs += [Seg(T0 + 10.3 + k * 1e-3, s, 87, c, 1007, "A", 9, 77) for k in range(2)]
    # an ACK of the ISN before the SYN-ACK (not an old ACK); a SYN-ACK carrying a FIN
    segs += [Seg(T0 + 11, c, 1008, s, 88, "S", 100), Seg(T0 + 11.1, s, 88, c, 1008, "A", 5, 101),
             Seg(T0 + 11.2, s, 88, c, 1008, "SAF", 5, 101), Seg(T0 + 11.3, c, 1008, s, 88, "FA", 101, 7)]
    # midstream data, then a SYN-ACK with no SYN in the flow: a flipped attempt
    segs += [Seg(T0 + 12, c, 1009, s, 89, "PA", 5, 6, payload=4), Seg(T0 + 12.1, s, 89, c, 1009, "SA", 40, 9)]
    # SYNs both ways with one sequence number (simultaneous open): two attempts
    segs += [Seg(T0 + 13, c, 1010, s, 90, "S", 100), Seg(T0 + 13.1, s, 90, c, 1010, "S", 100)]
    # SYN-ACKs both ways with one sequence number: the second is not a repeat
    segs += [Seg(T0 + 14, c, 1011, s, 91, "S", 100), Seg(T0 + 14.1, s, 91, c, 1011, "SA", 50, 101),
             Seg(T0 + 14.2, c, 1011, s, 91, "SA", 50, 101)]
    # a long connection: positions and counts beyond one byte
    segs += handshake(T0 + 15, c, 1012, s, 92, 5, 6, ts=(1, 2), data=0, reply=0)[:3]
    segs += [Seg(T0 + 15.01 + k * 1e-4, c, 1012, s, 92, "PA", 6 + 10 * k, 7, payload=10, ts=(2 + k, 1))
             for k in range(300)]
    segs += [Seg(T0 + 15.5, c, 1012, s, 92, "FA", 3006, 7, ts=(400, 1)), Seg(T0 + 15.6, s, 92, c, 1012, "FA", 7, 3007)]
    segs += seq_end_before_base()
    segs.sort(key=lambda x: x.t)
    return {
        "odd": pcap_bytes(frames_of(segs)),
        **captures(),
        "interleaved": pcap_bytes(frames_of(sorted(many_flows(60, gap=0.00005), key=lambda x: x.t))),
    }
