"""The emulated client's TCP, sans-I/O: segments and times in, segments and records out.

One `Client` is one host (one source address) talking to one destination. It does what
the model says a Windows or macOS client does (docs/kernel.md §3.1, §12), no more:

- connect(): a port from the host-wide pool (`model.ports.HostPortPool`: sequential or
  random, a port stays taken while any socket, TIME_WAIT included, holds it), an ISN from
  the profile's generator (random per connection, or RFC 6528: hash of the 4-tuple plus a
  4 us clock, monotonic per tuple), a SYN with the profile's window and options, timestamps
  only when the profile offers them;
- SYN-SENT: a SYN-ACK acking the SYN establishes the connection; an ACK that does not ack
  it (a server TIME_WAIT's ACK for the old connection) is answered with RST(seq = its ack)
  and the SYN timer keeps running (or, with on_bad_ack=abort, connect() fails); a RST+ACK
  is "refused", re-sent after rst_retry_s while retransmissions remain; SYNs go out at the
  profile's offsets and connect() gives up at give_up_s or the application's timeout;
- ESTABLISHED: the request is sent, the answer read (the line protocol of `serve`), and the
  connection closed as the workload says: the server first (the client answers FIN with
  ACK and its own FIN, LAST_ACK, no TIME_WAIT), the client first (FIN_WAIT, then its own
  TIME_WAIT of time_wait_s, holding the port), or an abortive RST.

Every attempt ends in one record with the fields `load` reports (due time, connect
latency, SYNs sent, outcome errno, reason, first cause, source port).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass
from typing import Final

from ..load.protocol import ProtocolError, line_request, parse_line_answer
from ..model import clocks
from ..model.ports import HostPortPool
from ..model.seq import after, before
from .packet import ACK, FIN, PSH, RST, SYN, Options, Segment
from .profile import EmuProfile

MASK32: Final = 0xFFFFFFFF
SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK, TIME_WAIT, CLOSED = range(8)
CLOSE_POLICIES = ("server", "client", "rst")
DATA_RTO_S: Final = 1.0  # first retransmission of the request or a FIN [I]; doubles
DATA_RETRIES: Final = 5
IDLE_S: Final = 60.0  # how long a closing connection waits for the peer [I]


@dataclass
class Record:
    """One finished attempt, as `load` records it."""

    due: float  # s since the run's t = 0
    connect_ms: float  # NaN: never connected
    syn_tries: int
    outcome: str  # "ok" or the errno name the application saw
    reason: str  # result.REASONS
    cause: str  # the first problem met, even if the attempt then succeeded ("" none)
    sport: int
    end: float  # when the outcome was known


class Conn:
    __slots__ = ("answer", "cause", "close_sent", "connect_ms", "deadline", "due", "gen", "ident",
                 "irs", "isn", "peer_fin", "rcv_nxt", "recorded", "request", "retries", "snd_nxt",
                 "snd_una", "sport", "state", "t_est", "t_open", "timer", "tries", "ts_recent")

    def __init__(self, ident: int, sport: int, isn: int, due: float, t_open: float, deadline: float) -> None:
        self.ident = ident
        self.sport = sport
        self.isn = isn
        self.due = due
        self.t_open = t_open
        self.deadline = deadline  # connect() gives up here (profile or application)
        self.state = SYN_SENT
        self.tries = 0  # SYNs sent
        self.snd_una = isn
        self.snd_nxt = (isn + 1) & MASK32
        self.irs = 0
        self.rcv_nxt = 0
        self.ts_recent: int | None = None
        self.answer = b""
        self.request = b""
        self.peer_fin = False
        self.close_sent = False
        self.cause = ""
        self.connect_ms = float("nan")
        self.t_est = 0.0
        self.recorded = False
        self.retries = 0
        self.timer = 0.0
        self.gen = 0  # timer generation: stale heap entries are skipped


class Client:
    """One emulated host toward one destination (dst, dport)."""

    def __init__(self, prof: EmuProfile, src: int, dst: int, dport: int, *, close: str = "server",
                 connect_timeout_s: float = 21.0, request_timeout_s: float = 30.0, seed: int = 0,
                 uptime_s: float = 3600.0, t_origin: float = 0.0) -> None:
        if close not in CLOSE_POLICIES:
            raise ValueError(f"close must be one of {', '.join(CLOSE_POLICIES)}")
        self.p = prof
        self.src, self.dst, self.dport = src, dst, dport
        self.close = close
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.t_origin = t_origin  # the caller's clock value of the run's t = 0
        self.rng = random.Random(seed)
        self.pool = HostPortPool(prof.port_first, prof.port_num, prof.port_order, self.rng)
        self.isn_secret = clocks.derive_secret(seed, "emulate", "isn")
        self.wall0 = 1_700_000_000.0 + self.rng.uniform(0, 86400.0)
        self.ts_base = uptime_s * prof.ts_hz
        self.conns: dict[int, Conn] = {}  # sport -> connection
        self.timers: list[tuple[float, int, int, Conn]] = []
        self._seq = 0
        self.records: list[Record] = []
        self.n_ident = 0
        self.ip_id = self.rng.randrange(1 << 16)
        self.stray_rsts = 0  # RSTs sent for segments of no connection

    # ---- helpers ---------------------------------------------------------------------------
    def _tsval(self, now: float) -> int:
        return int(self.ts_base + (now - self.t_origin) * self.p.ts_hz) & MASK32

    def _isn(self, sport: int, now: float) -> int:
        if self.p.isn == "random":
            return self.rng.getrandbits(32)
        return clocks.rfc6528_isn(self.isn_secret, self.src, self.dst, sport, self.dport,
                                  self.wall0 + now - self.t_origin)

    def _seg(self, c: Conn, flags: int, seq: int, ack: int, now: float, payload: bytes = b"",
             syn_opts: bool = False) -> Segment:
        p = self.p
        ts = None
        if syn_opts:
            ts = (self._tsval(now), 0) if p.offers_ts else None
            opts = Options(mss=p.mss, wscale=p.wscale, sack_perm=True, ts=ts, layout=p.layout)
        else:
            if c.ts_recent is not None:
                ts = (self._tsval(now), c.ts_recent)
            opts = Options(ts=ts, layout=("nop", "nop", "ts") if ts else ())
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        # after the SYN the window field is scaled; 512 << wscale is plenty for a short answer
        window = p.window if syn_opts else 512
        return Segment(src=self.src, dst=self.dst, sport=c.sport, dport=self.dport, seq=seq, ack=ack,
                       flags=flags, window=window, options=opts, payload=payload,
                       ttl=p.ttl, ip_id=self.ip_id)

    def _arm(self, c: Conn, t: float) -> None:
        c.gen += 1
        c.timer = t
        self._seq += 1
        heapq.heappush(self.timers, (t, self._seq, c.gen, c))

    def _record(self, c: Conn, now: float, outcome: str, reason: str) -> None:
        if c.recorded:
            return
        c.recorded = True
        self.records.append(Record(due=c.due - self.t_origin, connect_ms=c.connect_ms, syn_tries=c.tries,
                                   outcome=outcome, reason=reason, cause=c.cause or "",
                                   sport=c.sport, end=now - self.t_origin))

    def _release(self, c: Conn) -> None:
        c.state = CLOSED
        c.gen += 1
        if self.conns.get(c.sport) is c:
            del self.conns[c.sport]
            self.pool.release(c.sport)

    def _fail(self, c: Conn, now: float, errno_key: str, reason: str) -> None:
        self._record(c, now, self.p.errno[errno_key], reason)
        self._release(c)

    @property
    def in_flight(self) -> int:
        return len(self.conns)

    def next_timer(self) -> float:
        while self.timers and self.timers[0][2] != self.timers[0][3].gen:
            heapq.heappop(self.timers)
        return self.timers[0][0] if self.timers else float("inf")

    # ---- connect() -------------------------------------------------------------------------
    def connect(self, now: float, due: float | None = None) -> list[Segment]:
        """Start one attempt (due: when it was scheduled; latency counts from it)."""
        due = now if due is None else due
        sport = self.pool.allocate()
        self.n_ident += 1
        if sport is None:
            self.records.append(Record(due=due - self.t_origin, connect_ms=float("nan"), syn_tries=0,
                                       outcome=self.p.errno["no_port"], reason="local_ports_exhausted",
                                       cause="local_ports_exhausted", sport=0, end=now - self.t_origin))
            return []
        self.pool.hold(sport)
        deadline = now + min(self.p.give_up_s, self.connect_timeout_s)
        c = Conn(self.n_ident, sport, self._isn(sport, now), due, now, deadline)
        self.conns[sport] = c
        return self._send_syn(c, now)

    def _send_syn(self, c: Conn, now: float) -> list[Segment]:
        c.tries += 1
        nxt = c.t_open + self.p.syn_offsets[c.tries] if c.tries < len(self.p.syn_offsets) else float("inf")
        self._arm(c, min(nxt, c.deadline))
        return [self._seg(c, SYN, c.isn, 0, now, syn_opts=True)]

    # ---- timers ------------------------------------------------------------------------------
    def on_timer(self, now: float) -> list[Segment]:
        out: list[Segment] = []
        while self.timers and self.timers[0][0] <= now:
            _t, _s, gen, c = heapq.heappop(self.timers)
            if gen != c.gen or c.state == CLOSED:
                continue
            out += self._expire(c, now)
        return out

    def _expire(self, c: Conn, now: float) -> list[Segment]:
        if c.state == SYN_SENT:
            if now >= c.deadline - 1e-9 or c.tries >= len(self.p.syn_offsets):
                self._fail(c, now, "timeout", "connect_timeout")
                return []
            return self._send_syn(c, now)
        if c.state == TIME_WAIT:
            self._release(c)
            return []
        if not c.recorded and now >= c.t_est + self.request_timeout_s - 1e-9:
            self._record(c, now, self.p.errno["timeout"], "request_timeout")
            out = [self._seg(c, RST | ACK, c.snd_nxt, c.rcv_nxt, now)]
            self._release(c)
            return out
        if not before(c.snd_una, c.snd_nxt):
            self._release(c)  # nothing unacknowledged and the peer went quiet: give up the wait
            return []
        if c.retries >= DATA_RETRIES:
            if not c.recorded:
                self._record(c, now, self.p.errno["timeout"], "request_timeout")
            self._release(c)
            return []
        # retransmit what is unacknowledged: the request, else our FIN
        c.retries += 1
        out = []
        if c.snd_una == (c.isn + 1) & MASK32:
            out.append(self._seg(c, PSH | ACK, c.snd_una, c.rcv_nxt, now, c.request))
        elif c.close_sent:
            out.append(self._seg(c, FIN | ACK, (c.snd_nxt - 1) & MASK32, c.rcv_nxt, now))
        self._rearm(c, now)
        return out

    def _rearm(self, c: Conn, now: float) -> None:
        """The one timer of an open connection: retransmission while something is
        unacknowledged (capped by the request deadline), else the request deadline, else
        an idle bound while waiting for the peer's FIN (FIN_WAIT2, or the server's close)."""
        if c.state in (CLOSED, TIME_WAIT, SYN_SENT):
            return
        deadline = c.t_est + self.request_timeout_s
        if before(c.snd_una, c.snd_nxt):
            t = now + DATA_RTO_S * (1 << min(c.retries, 6))
            if not c.recorded:
                t = min(t, deadline)
        elif not c.recorded:
            t = deadline
        else:
            t = now + IDLE_S
        if t != c.timer or c.gen == 0:
            self._arm(c, t)

    # ---- segments ------------------------------------------------------------------------------
    def on_segment(self, seg: Segment, now: float) -> list[Segment]:
        if seg.src != self.dst or seg.sport != self.dport or seg.dst != self.src:
            return []
        c = self.conns.get(seg.dport)
        if c is None:
            return self._stray(seg)
        if c.state == SYN_SENT:
            return self._synsent(c, seg, now)
        return self._connected(c, seg, now)

    def _stray(self, seg: Segment) -> list[Segment]:
        """No connection on that port: RST unless it is a RST (RFC 793 CLOSED state)."""
        if seg.has(RST):
            return []
        self.stray_rsts += 1
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        if seg.has(ACK):
            return [Segment(src=self.src, dst=self.dst, sport=seg.dport, dport=self.dport, seq=seg.ack,
                            ack=0, flags=RST, ttl=self.p.ttl, ip_id=self.ip_id)]
        return [Segment(src=self.src, dst=self.dst, sport=seg.dport, dport=self.dport, seq=0,
                        ack=seg.end_seq, flags=RST | ACK, ttl=self.p.ttl, ip_id=self.ip_id)]

    def _synsent(self, c: Conn, seg: Segment, now: float) -> list[Segment]:
        acceptable = seg.has(ACK) and after(seg.ack, c.snd_una) and not after(seg.ack, c.snd_nxt)
        if seg.has(RST):
            if not acceptable:
                return []  # RFC 793: a RST in SYN-SENT counts only if it acks the SYN
            c.cause = c.cause or "refused"
            nxt = len(self.p.syn_offsets)
            if self.p.rst_retry_s is not None and c.tries < nxt and now + self.p.rst_retry_s < c.deadline:
                self._arm(c, now + self.p.rst_retry_s)  # Windows re-sends the SYN
                return []
            self._fail(c, now, "refused", "refused")
            return []
        if seg.has(ACK) and not acceptable:
            # a server TIME_WAIT (or a stale connection) answered with the old connection's ACK
            c.cause = c.cause or "syn_hit_timewait"
            if self.p.abort_on_bad_ack:
                self._fail(c, now, "reset", "syn_hit_timewait")
                return []
            return [self._seg(c, RST, seg.ack, 0, now)]  # and the SYN timer keeps running
        if not seg.has(SYN) or not acceptable:
            return []
        c.irs = seg.seq
        c.rcv_nxt = (seg.seq + 1) & MASK32
        c.snd_una = seg.ack
        if self.p.offers_ts and seg.options.ts is not None:
            c.ts_recent = seg.options.ts[0]
        c.state = ESTABLISHED
        c.t_est = now
        c.connect_ms = (now - c.due) * 1000.0
        c.request = line_request(c.ident, keep=False)
        out = [self._seg(c, ACK, c.snd_nxt, c.rcv_nxt, now),
               self._seg(c, PSH | ACK, c.snd_nxt, c.rcv_nxt, now, c.request)]
        c.snd_nxt = (c.snd_nxt + len(c.request)) & MASK32
        c.retries = 0
        self._rearm(c, now)
        return out

    def _connected(self, c: Conn, seg: Segment, now: float) -> list[Segment]:
        if seg.has(RST):
            if c.state == TIME_WAIT:
                return []  # Windows keeps its TIME_WAIT on a RST [I]
            if not c.recorded:
                self._record(c, now, self.p.errno["reset"], "reset")
            self._release(c)
            return []
        if seg.has(SYN):
            # our ACK of the SYN-ACK was lost or dropped (listen overflow): ACK again
            return [self._seg(c, ACK, c.snd_nxt, c.rcv_nxt, now)] if seg.seq == c.irs else []
        if seg.options.ts is not None and c.ts_recent is not None:
            c.ts_recent = seg.options.ts[0]
        if seg.has(ACK) and after(seg.ack, c.snd_una) and not after(seg.ack, c.snd_nxt):
            c.snd_una = seg.ack
            c.retries = 0
        out: list[Segment] = []
        if seg.payload or seg.has(FIN):
            if seg.seq != c.rcv_nxt:
                return [self._seg(c, ACK, c.snd_nxt, c.rcv_nxt, now)]  # duplicate or out of order
            if seg.payload and not c.peer_fin:
                c.answer += seg.payload
                c.rcv_nxt = (c.rcv_nxt + len(seg.payload)) & MASK32
            if seg.has(FIN) and not c.peer_fin:
                c.peer_fin = True
                c.rcv_nxt = (c.rcv_nxt + 1) & MASK32
            out.append(self._seg(c, ACK, c.snd_nxt, c.rcv_nxt, now))
        if not c.recorded and c.answer:
            try:
                done = parse_line_answer(c.answer) > 0
            except ProtocolError:
                self._record(c, now, "EPROTO", "other")
                out.append(self._seg(c, RST | ACK, c.snd_nxt, c.rcv_nxt, now))
                self._release(c)
                return out
            if done:
                self._record(c, now, "ok", "ok" if c.tries == 1 else "ok_after_syn_retry")
                if self.close == "rst":
                    out.append(self._seg(c, RST | ACK, c.snd_nxt, c.rcv_nxt, now))
                    self._release(c)
                    return out
        if c.peer_fin and not c.recorded:
            self._record(c, now, self.p.errno["reset"], "reset")  # closed before answering
        out += self._close_steps(c, now)
        self._rearm(c, now)
        return out

    def _close_steps(self, c: Conn, now: float) -> list[Segment]:
        out: list[Segment] = []
        fin_acked = c.close_sent and c.snd_una == c.snd_nxt
        if not c.close_sent and c.recorded and (c.peer_fin or self.close == "client"):
            out.append(self._seg(c, FIN | ACK, c.snd_nxt, c.rcv_nxt, now))
            c.snd_nxt = (c.snd_nxt + 1) & MASK32
            c.close_sent = True
            c.state = LAST_ACK if c.peer_fin else FIN_WAIT1
            c.retries = 0
            return out
        if c.state == LAST_ACK and fin_acked:
            self._release(c)
        elif c.state in (FIN_WAIT1, FIN_WAIT2, CLOSING):
            if fin_acked and c.peer_fin:
                c.state = TIME_WAIT
                self._arm(c, now + self.p.time_wait_s)
            elif fin_acked:
                c.state = FIN_WAIT2
            elif c.peer_fin:
                c.state = CLOSING
        return out
