"""The emulated Windows/macOS client's TCP without a network (sans-I/O, like the model).

A small scripted server answers the client's segments; each test checks what a packet
capture of a real Windows client would show for the situation the seed incident turns on.
"""

from __future__ import annotations

import itertools
import math

import pytest

from tcpreuse.emulate.packet import ACK, FIN, PSH, RST, SYN, Options, Segment, parse
from tcpreuse.emulate.profile import EmulateError, emu_profile
from tcpreuse.emulate.stack import Client

CLIENT, SERVER, PORT = 0xC6120B01, 0x0A0A0001, 9313


def win(**params: object) -> Client:
    settings = params.pop("settings", {})
    assert isinstance(settings, dict)
    prof = emu_profile("windows-2012r2", settings, {"isn": "random", **params})
    return Client(prof, CLIENT, SERVER, PORT, connect_timeout_s=5.0, seed=7)


def synack(syn: Segment, isn: int = 5000, ts: tuple[int, int] | None = None) -> Segment:
    return Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=isn, ack=syn.seq + 1,
                   flags=SYN | ACK, window=65160, options=Options(mss=1460, ts=ts))


def serve(c: Client, syn: Segment, now: float, close: str = "server") -> list[Segment]:
    """Handshake, answer and close as `serve` does; returns every client segment."""
    out = c.on_segment(synack(syn), now)
    data = out[-1]
    assert data.payload.startswith(b"VERIFY ")
    isn1 = 5001
    ans = Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=isn1,
                  ack=data.seq + len(data.payload), flags=PSH | ACK | (FIN if close == "server" else 0),
                  payload=b"OK 123456\n")
    out2 = c.on_segment(ans, now + 0.001)
    fin = [s for s in out2 if s.has(FIN)]
    if fin:  # ack the client's FIN
        out2 += c.on_segment(Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport,
                                     seq=fin[0].ack, ack=fin[0].seq + 1, flags=ACK), now + 0.002)
    return out + out2


def test_windows_syn_looks_like_windows_and_parses_back() -> None:
    c = win()
    (syn,) = c.connect(0.0)
    assert syn.flags == SYN and syn.sport == 49152 and syn.window == 8192 and syn.ttl == 128
    assert syn.options.ts is None  # timestamps disabled: the seed's clients
    back = parse(syn.encode())  # checksums verified
    assert back.options.mss == 1460 and back.options.wscale == 8 and back.options.sack_perm
    assert back.seq == syn.seq and back.sport == syn.sport
    tsc = win(settings={"netsh.tcp.timestamps": "enabled"})
    (syn2,) = tsc.connect(0.0)
    assert syn2.options.ts is not None and syn2.options.layout[-1] == "ts"


def test_clean_exchange_server_closes_first_no_client_time_wait() -> None:
    c = win()
    (syn,) = c.connect(0.0)
    segs = serve(c, syn, 0.010)
    assert [r.outcome for r in c.records] == ["ok"]
    rec = c.records[0]
    assert rec.reason == "ok" and rec.syn_tries == 1 and rec.connect_ms == pytest.approx(10.0)
    assert any(s.has(FIN) for s in segs)
    assert c.in_flight == 0 and c.pool.in_use(49152) == 0  # LAST_ACK acked: the port is free


def test_old_ack_in_syn_sent_gets_rst_and_syn_retried_at_initial_rto() -> None:
    """The seed: a server TIME_WAIT answers the SYN with the old connection's ACK."""
    c = win()
    (syn,) = c.connect(0.0)
    old_ack = Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=777, ack=123456,
                      flags=ACK)
    (rst,) = c.on_segment(old_ack, 0.001)
    assert rst.flags == RST and rst.seq == 123456  # RST(seq = the ACK's ack), kills the TW
    assert c.next_timer() == pytest.approx(3.0)  # InitialRto 3 s: the SYN timer keeps running
    assert c.on_timer(2.999) == []
    (syn2,) = c.on_timer(3.0)
    assert syn2.flags == SYN and syn2.seq == syn.seq and syn2.sport == syn.sport
    serve(c, syn2, 3.001)
    rec = c.records[0]
    assert (rec.outcome, rec.reason, rec.cause, rec.syn_tries) == ("ok", "ok_after_syn_retry",
                                                                 "syn_hit_timewait", 2)
    assert rec.connect_ms == pytest.approx(3001.0)


def test_unanswered_syns_at_0_3_9_then_app_timeout_or_21s() -> None:
    c = win()
    c.connect_timeout_s = 30.0
    (_syn,) = c.connect(0.0)
    sent = [0.0]
    t = 0.0
    while c.in_flight:
        t = c.next_timer()
        if c.on_timer(t):
            sent.append(t)
    assert sent == [0.0, 3.0, 9.0]
    rec = c.records[0]
    assert (rec.outcome, rec.reason, rec.syn_tries) == ("WSAETIMEDOUT", "connect_timeout", 3)
    assert t == pytest.approx(21.0) and math.isnan(rec.connect_ms)
    c5 = win()  # the seed's tester gave up at 5 s: the third SYN (9 s) is never sent
    c5.connect(0.0)
    while c5.in_flight:
        c5.on_timer(c5.next_timer())
    assert c5.records[0].syn_tries == 2 and c5.records[0].end == pytest.approx(5.0)


def test_rst_to_syn_retried_every_half_second_then_refused() -> None:
    c = win()
    (syn,) = c.connect(0.0)
    rst = Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=0, ack=syn.seq + 1,
                  flags=RST | ACK)
    assert c.on_segment(rst, 0.001) == []
    (again,) = c.on_timer(0.501)
    assert again.flags == SYN
    c.on_segment(rst, 0.502)
    (_third,) = c.on_timer(1.002)
    c.on_segment(rst, 1.003)  # three SYNs used: WSAECONNREFUSED
    assert c.records[0].outcome == "WSAECONNREFUSED" and c.records[0].syn_tries == 3


def test_ports_sequential_host_wide_and_exhaustion_error() -> None:
    c = win(settings={"netsh.ipv4.dynamicport.tcp.num": 255})
    ports = [c.connect(i * 0.001)[0].sport for i in range(255)]
    assert ports == list(range(49152, 49152 + 255))
    assert c.connect(1.0) == []
    assert c.records[-1].outcome == "WSAEADDRINUSE" and c.records[-1].reason == "local_ports_exhausted"


def test_isn_random_vs_rfc6528_monotonic_per_tuple() -> None:
    """Only a non-monotonic generator lets a reused tuple's SYN fall below rcv_nxt."""
    def isns(gen: str) -> list[int]:
        c = win(isn=gen, settings={"netsh.ipv4.dynamicport.tcp.num": 255})
        out = []
        for k in range(16):  # the same port each time: connect, finish, reuse
            (syn,) = c.connect(k * 1.0)
            serve(c, syn, k * 1.0 + 0.01)
            out.append(syn.seq)
            c.pool.rover = 0
        return out
    mono = isns("rfc6528")
    assert all(0 < (b - a) % 2**32 < 2**31 for a, b in itertools.pairwise(mono))
    rnd = isns("random")
    assert len(set(rnd)) == 16 and not all(0 < (b - a) % 2**32 < 2**31 for a, b in itertools.pairwise(rnd))


def test_client_first_close_holds_port_in_time_wait() -> None:
    prof = emu_profile("windows-2012r2", {"TcpTimedWaitDelay": 30}, {})
    c = Client(prof, CLIENT, SERVER, PORT, close="client", seed=1)
    (syn,) = c.connect(0.0)
    segs = serve(c, syn, 0.01, close="client")
    fin = [s for s in segs if s.has(FIN)]
    assert fin and c.pool.in_use(syn.sport)  # FIN_WAIT2
    c.on_segment(Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=5001 + 10,
                         ack=fin[0].seq + 1, flags=FIN | ACK), 0.02)
    assert c.pool.in_use(syn.sport) and c.next_timer() == pytest.approx(30.02)
    c.on_timer(30.02)
    assert not c.pool.in_use(syn.sport)


def test_linux_profile_is_refused() -> None:
    with pytest.raises(EmulateError, match="Linux"):
        emu_profile("linux-6.1")


def test_macos_offers_timestamps_and_gives_up_at_keepinit() -> None:
    prof = emu_profile("macos")
    c = Client(prof, CLIENT, SERVER, PORT, connect_timeout_s=100.0, seed=3)
    (syn,) = c.connect(0.0)
    assert syn.options.ts is not None and syn.window == 65535 and syn.ttl == 64
    while c.in_flight:
        c.on_timer(c.next_timer())
    rec = c.records[0]
    assert rec.outcome == "ETIMEDOUT" and rec.end == pytest.approx(75.0)
    assert rec.syn_tries == len(prof.syn_offsets)
