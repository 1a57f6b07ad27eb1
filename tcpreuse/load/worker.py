"""One load worker: a small epoll reactor that runs connection attempts.

Why not asyncio: measured on loopback against nginx (2 cores, 50 connections, close after
each answer), an asyncio loop with coroutines reached 53 % of wrk's connection rate and
uvloop with add_reader/add_writer callbacks about 85 %; a direct epoll loop over
non-blocking sockets reaches wrk's rate with all per-attempt measurements on. At tens of
thousands of connections per second per core, the Future and handle objects an event
loop makes per socket are the cost. The reactor does only what a short connection needs:
connect, send, read the answer, close, and two FIFO timeout queues (every attempt's
timeout has the same length, so deadlines arrive in order and a deque is a timer wheel).

One trick matters on fast paths: right after a non-blocking connect() the request is
sent at once. If the handshake already finished (always on loopback, often on a LAN) the
send succeeds and a round through epoll is saved; if not, send() fails with EAGAIN and
the attempt waits for EPOLLOUT as usual; if the SYN was refused, send() reports it.

An open loop is on time when the worker gets the CPU when an attempt is due: each worker
asks the scheduler for a short slice (short_slice()) and waits gaps shorter than a
millisecond in select() on the epoll fd (docs/load.md, "The open loop's schedule").

Per attempt the worker keeps: due time, connect latency from the *due* time (so a
worker that falls behind cannot hide latency), SYNs sent (1 + tcpi_total_retrans from
TCP_INFO), outcome (errno name), reason code, local address and port. Histograms are
built from these after the run, off the hot path.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import gc
import os
import platform
import resource
import select
import signal
import socket
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from . import arrival as arrival_mod
from .protocol import (
    ProtocolError,
    http_request,
    line_request,
    parse_http_answer,
    parse_line_answer,
)
from .sockopt import (
    IP_BIND_ADDRESS_NO_PORT,
    IP_LOCAL_PORT_RANGE,
    LINGER_RST,
    TCP_INFO,
    TCP_INFO_LEN,
    TCPI_TOTAL_RETRANS_OFF,
    local_port_range_value,
    ts_offset,
)
from .target import Endpoint

CLOSE_POLICIES = ("client", "server", "rst")
BIND_MODES = ("none", "address_no_port", "bind0")

# Most attempts one open-loop round starts before it looks at events again.
MAX_BURST = 256
# Most events one open-loop round takes from epoll_wait(). The round handles them until
# an attempt is due (it reads the clock before each event, ~10-30 us of work: recv,
# close, the record), so a due attempt waits for at most one event's work; epoll keeps
# the rest for the next round. A larger batch saves epoll_wait() calls when answers pile
# up. (Closed loop: no bound.)
MAX_EVENTS = 256
# Shortest wait for which an open loop watches for answers (select) rather than sleeps:
# measured at 4,000/s on 2 workers, select() cost ~15 % more CPU per connection than a
# sleep (a wake-up per answer) and cut the late starts from 66 % to 41 % on a crowded VM.
SELECT_MIN_S = 0.0002
# An open loop whose attempts are due closer together than this (above 1 / WAKE_QUANTUM_S
# = 2,000/s per worker) wakes at most once per quantum and starts every attempt that came
# due meanwhile (start lag 0 .. WAKE_QUANTUM_S, plus however late the kernel runs it),
# instead of waking once per attempt and once per answer. A wake-up is a context switch,
# a timer and a pass through cold kernel and interpreter paths on a machine that also runs
# the server: measured against nginx, the quantum cut the workers' CPU per attempt by
# 13-25 % where they kept up (docs/load.md, "Waking once per quantum"). The cost is in the
# start lag: p50 about half the quantum, and more preemptions in the middle of a batch.
WAKE_QUANTUM_S = 0.0005

# No SYN can have been retransmitted in a handshake shorter than this (see connected()).
SYN_RTO_FLOOR_S = 0.001

# Histogram range: 1 us .. 1 hour at 3 significant digits (as wrk2 does).
HIST_LOW_US, HIST_HIGH_US, HIST_DIGITS = 1, 3_600_000_000, 3

# attempt states
_CONNECTING, _SENDING, _READING, _WAIT_FIN = 0, 1, 2, 3

# errno names whose reason is known; everything else is "other"
_CONNECT_REASON = {
    "ECONNREFUSED": "refused",
    "EADDRNOTAVAIL": "local_ports_exhausted",
    "EADDRINUSE": "local_ports_exhausted",  # bind(addr, 0) found no free port
    "ETIMEDOUT": "connect_timeout",
}
# Errors that only a connection past SYN_SENT can have: tcp_reset() (net/ipv4/tcp_input.c,
# every version) sets ECONNREFUSED for a RST in SYN_SENT, EPIPE in CLOSE_WAIT and
# ECONNRESET otherwise. So ECONNRESET from the first send() or from SO_ERROR while we
# still waited for EPOLLOUT means the handshake completed and the server then reset it.
_AFTER_HANDSHAKE = frozenset((errno.ECONNRESET, errno.EPIPE))
_REQUEST_REASON = {
    "ETIMEDOUT": "request_timeout",
    "ECONNRESET": "reset",
    "EPIPE": "reset",
}


@dataclass
class WorkerPlan:
    """Everything one worker needs; picklable, built by the runner."""

    target: Endpoint
    protocol: str = "line"  # line | http
    path: str = "/"
    close: str = "client"
    requests_per_conn: int = 1
    sources: list[str] = field(default_factory=list)
    bind: str = "none"
    local_port_range: tuple[int, int] | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 5.0
    # open loop: arrival/rate; closed loop: concurrency
    mode: str = "open"
    arrival: str = "constant"
    rate: float = 0.0  # global rate; the schedule splits it
    ramp_from: float = 0.0
    concurrency: int = 0  # this worker's share
    duration: float | None = None
    count: int | None = None
    seed: int = 0
    index: int = 0
    workers: int = 1
    # seconds after `duration` at which attempts still in flight are cut (recorded as
    # ECANCELED, reason "unfinished"): the run's hard wall-clock bound; None: no cut
    drain: float | None = None
    # open loop: at most this many attempts in flight; one due meanwhile waits for a close
    # (0: no cap). 1 makes a sequential workload sequential however late answers come.
    max_in_flight: int = 0
    t0: float = 0.0  # time.monotonic() at which the run starts (same clock in all workers)
    tick_s: float = 0.5

    def schedule(self) -> arrival_mod.Schedule:
        """This worker's share of the open-loop arrivals."""
        return arrival_mod.Schedule(self.arrival, self.rate, self.duration, self.count, workers=self.workers,
                                    index=self.index, ramp_from=self.ramp_from, seed=self.seed)


@dataclass
class WorkerResult:
    index: int
    t: array  # due time, s since t0
    connect_ms: array  # NaN: never connected
    syn_tries: array
    outcome: array  # codes into `outcomes`
    reason: array  # codes into `reasons`
    src: array  # codes into `addrs`
    sport: array
    outcomes: list[str]
    reasons: list[str]
    addrs: list[str]
    connect_hist: str  # HdrHistogram, encoded (us)
    request_hist: str
    lag_hist: str  # start lag behind the schedule (open loop), us
    requests: int  # answers received (>= ok attempts with keep-alive)
    http_status: dict[int, int]
    lag_max_ms: float  # worst start lag behind the schedule
    late_starts: int  # attempts started more than 1 ms after they were due
    not_started: int  # due before the end, but the worker was too far behind to start them
    end: float  # s since t0 when the last attempt finished
    interrupted: bool
    answer_ms: array = field(default_factory=lambda: array("d"))  # per record: due -> first answer; NaN: none
    close_ms: array = field(default_factory=lambda: array("d"))  # per record: due -> close(); NaN: no socket
    request_s: array = field(default_factory=lambda: array("d"))  # every request's latency, s
    lag_s: array = field(default_factory=lambda: array("d"))  # open loop: start lag of every attempt, s
    unfinished: int = 0  # cut at the hard bound (duration + drain) while still in flight
    stopped_at: float | None = None  # s since t0 when a stop (Ctrl-C/SIGTERM) arrived
    error: str | None = None
    in_flight_max: int = 0  # most attempts open at once (checked after each round's starts)
    cpu_s: float = 0.0  # CPU time (user + system) of the worker's loop, its own and the kernel's for it
    sys_s: float = 0.0  # the kernel's part of cpu_s: its system calls and the softirqs they ran
    wakeups: int = 0  # voluntary context switches during the loop: it slept (or waited) and was woken
    preempted: int = 0  # involuntary context switches during the loop: the CPU was taken from it
    # per source address, the TCP timestamp offset of its first connection (sockopt.ts_offset(),
    # None: unreadable): on 4.11-6.17 every connection to the target has it (per host pair)
    ts_offsets: dict[str, int | None] = field(default_factory=dict)


class _Attempt:
    """One connection attempt in flight (slots: there are thousands, made per attempt)."""

    __slots__ = ("buf", "due", "fd", "reqno", "reqs_left", "sock", "sport", "src", "start",
                 "state", "syn", "t_ans", "t_conn", "t_req", "unsent")
    buf: bytes
    due: float  # monotonic time the attempt was due
    fd: int
    reqno: int  # requests sent so far (tells stale timeout entries apart)
    reqs_left: int
    sock: _socket.socket
    sport: int
    src: str
    start: float
    state: int
    syn: int  # SYNs sent: 1 + tcpi_total_retrans
    t_ans: float  # monotonic time the first answer was complete (0: none yet)
    t_conn: float
    t_req: float
    unsent: bytes


def _hist() -> HdrHistogram:
    return HdrHistogram(HIST_LOW_US, HIST_HIGH_US, HIST_DIGITS)


class Worker:
    """Runs one plan to the end (or until told to stop) and returns a WorkerResult."""

    def __init__(self, plan: WorkerPlan, control: Connection | None = None) -> None:
        self.plan = plan
        self.control = control
        self.stop_requested = False

    # The hot path is one long method on purpose: locals and closures are the cheapest
    # names CPython has, and this runs tens of thousands of times per second.
    def run(self) -> WorkerResult:
        p = self.plan
        mono = time.monotonic
        sleep = time.sleep
        nan = float("nan")
        t0 = p.t0
        family = p.target.family
        sockaddr = p.target.sockaddr
        stype = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
        new_socket = _socket.socket
        EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
        EINPROGRESS = errno.EINPROGRESS
        SOL_SOCKET, SO_ERROR, IPPROTO_TCP = socket.SOL_SOCKET, socket.SO_ERROR, socket.IPPROTO_TCP
        from_bytes = int.from_bytes
        ep = select.epoll()
        sel = select.select
        ep_fds = (ep.fileno(),)
        conns: dict[int, _Attempt] = {}
        conns_pop = conns.pop
        conns_get = conns.get
        connect_dq: deque[tuple[float, _Attempt]] = deque()
        request_dq: deque[tuple[float, _Attempt, int]] = deque()
        connect_timeout, request_timeout = p.connect_timeout, p.request_timeout

        # records, one array per column (a few bytes per attempt, not a Python object)
        r_t, r_cms, r_syn = array("d"), array("d"), array("h")
        r_out, r_rsn, r_src, r_sport = array("h"), array("h"), array("i"), array("i")
        r_ams = array("d")  # due time -> first complete answer, ms (what a user waits)
        ams_app = r_ams.append
        r_clo = array("d")  # due time -> the socket's close(), ms (when its local port may be free)
        clo_app = r_clo.append
        t_app, cms_app, syn_app = r_t.append, r_cms.append, r_syn.append
        out_app, rsn_app, src_app, sport_app = r_out.append, r_rsn.append, r_src.append, r_sport.append
        req_s = array("d")  # request latencies, s
        req_app = req_s.append
        outcomes: dict[str, int] = {"ok": 0}
        reasons: dict[str, int] = {"ok": 0, "ok_after_syn_retry": 1}
        addrs: dict[str, int] = {}
        addrs_get = addrs.get
        ts_offsets: dict[str, int | None] = {}
        http_status: dict[int, int] = {}
        errs: dict[str, int] = {}
        n_started = n_ok = n_failed = n_requests = 0

        # request bytes
        rpc = max(1, p.requests_per_conn)
        ident = p.index * 1_000_000_000
        is_http = p.protocol == "http"
        host_hdr = str(p.target)
        req_keep = http_request(p.path, host_hdr, keep=True)
        req_last = http_request(p.path, host_hdr, keep=False)
        close_policy = p.close
        wait_fin = close_policy == "server"
        rst = close_policy == "rst"
        port_range = local_port_range_value(*p.local_port_range) if p.local_port_range else b""
        sources = p.sources
        nsrc = len(sources)
        src_i = p.index % nsrc if nsrc else 0
        bind_mode = p.bind
        no_port = bind_mode == "address_no_port"
        if bind_mode != "none" and not nsrc:
            sources = ["::" if family == socket.AF_INET6 else "0.0.0.0"]
            nsrc = 1
        # plain sockets need no per-attempt option: skip that block entirely
        needs_setup = bool(rst or port_range or nsrc)

        def src_code(a: str) -> int:
            c = addrs_get(a)
            if c is None:
                c = addrs[a] = len(addrs)
            return c

        def record(due: float, name: str, reason: str, cms: float,
                   syn: int, src: str, sport: int, ams: float = nan, clo: float = nan) -> None:
            t_app(due - t0)
            cms_app(cms)
            ams_app(ams)
            clo_app(clo)
            syn_app(syn)
            c = outcomes.get(name)
            if c is None:
                c = outcomes[name] = len(outcomes)
            out_app(c)
            c = reasons.get(reason)
            if c is None:
                c = reasons[reason] = len(reasons)
            rsn_app(c)
            src_app(src_code(src) if src else -1)
            sport_app(sport)

        def fail(att: _Attempt, code: int | str, connect_phase: bool, why: str = "") -> None:
            nonlocal n_failed
            name = code if isinstance(code, str) else errno.errorcode.get(code, f"E{code}")
            if connect_phase:
                reason = why or _CONNECT_REASON.get(name, "other")
                if att.syn:  # SYNs sent before the failure: 1 + retransmissions
                    with contextlib.suppress(OSError):
                        att.syn = 1 + from_bytes(
                            att.sock.getsockopt(IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN)
                            [TCPI_TOTAL_RETRANS_OFF:TCPI_TOTAL_RETRANS_OFF + 4], "little")
                cms = nan
            else:
                reason = why or _REQUEST_REASON.get(name, "other")
                cms = (att.t_conn - att.due) * 1000.0
            conns_pop(att.fd, None)
            att.sock.close()
            clo = (mono() - att.due) * 1000.0
            att.state = -1
            record(att.due, name, reason, cms, att.syn, att.src, att.sport,
                   (att.t_ans - att.due) * 1000.0 if att.t_ans else nan, clo)
            n_failed += 1
            errs[name] = errs.get(name, 0) + 1

        def succeed(att: _Attempt) -> None:
            nonlocal n_ok
            conns_pop(att.fd, None)
            att.sock.close()
            due = att.due
            clo_app((mono() - due) * 1000.0)
            att.state = -1
            t_app(due - t0)
            cms_app((att.t_conn - due) * 1000.0)
            ams_app((att.t_ans - due) * 1000.0)
            syn = att.syn
            syn_app(syn)
            out_app(0)
            rsn_app(0 if syn == 1 else 1)
            c = addrs_get(att.src)
            src_app(c if c is not None else src_code(att.src))
            sport_app(att.sport)
            n_ok += 1

        def next_request(att: _Attempt) -> bytes:
            nonlocal ident
            att.reqs_left -= 1
            keep = att.reqs_left > 0
            if is_http:
                return req_keep if keep else req_last
            ident += 1
            return line_request(ident, keep)

        def send_request(att: _Attempt, data: bytes, now: float) -> bool:
            """Send (part of) a request; False if the attempt failed."""
            try:
                n = att.sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as e:
                fail(att, e.errno or errno.EIO, False)
                return False
            att.t_req = now
            att.reqno += 1
            request_dq.append((now + request_timeout, att, att.reqno))
            if n < len(data):
                att.unsent = data[n:]
                att.state = _SENDING
                ep.modify(att.fd, EPOLLOUT)
            else:
                att.state = _READING
            return True

        def connected(att: _Attempt, now: float) -> None:
            att.t_conn = now
            # A SYN can only have been retransmitted if the handshake outlived the SYN
            # timer: 1 s (TCP_TIMEOUT_INIT) unless a BPF sock_ops program sets another
            # (BPF_SOCK_OPS_TIMEOUT_INIT), in jiffies. A handshake done within 1 ms sent
            # one SYN, and the TCP_INFO call is saved; slower ones read tcpi_total_retrans.
            if now - att.start >= SYN_RTO_FLOOR_S:
                att.syn = 1 + from_bytes(att.sock.getsockopt(IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN)
                                         [TCPI_TOTAL_RETRANS_OFF:TCPI_TOTAL_RETRANS_OFF + 4], "little")

        def start(due: float, now: float) -> None:
            nonlocal src_i, n_started, n_failed
            n_started += 1
            att = _Attempt()
            att.due = due
            att.start = now
            att.reqs_left = rpc
            att.src = ""
            att.sport = 0
            att.buf = b""
            att.reqno = 0
            att.syn = 1
            att.t_ans = 0.0
            try:
                s = new_socket(family, stype)
            except OSError as e:  # EMFILE, ENFILE, ENOBUFS: no socket at all
                name = errno.errorcode.get(e.errno or 0, "EIO")
                record(due, name, "other", nan, 0, "", 0)
                n_failed += 1
                errs[name] = errs.get(name, 0) + 1
                return
            att.sock = s
            fd = att.fd = s.fileno()
            if needs_setup:
                try:
                    if rst:
                        s.setsockopt(SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                    if port_range:
                        s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, port_range)
                    if nsrc:
                        src = sources[src_i]
                        src_i = src_i + 1 if src_i + 1 < nsrc else 0
                        att.src = src
                        if no_port:
                            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        s.bind((src, 0))
                except OSError as e:
                    att.syn = 0
                    fail(att, e.errno or errno.EIO, True)
                    return
            err = s.connect_ex(sockaddr)
            if err and err != EINPROGRESS:
                att.syn = 0 if err in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) else 1
                with contextlib.suppress(OSError):
                    sa = s.getsockname()
                    att.src, att.sport = sa[0], sa[1]
                fail(att, err, True)
                return
            sa = s.getsockname()
            att.src = sa[0]
            att.sport = sa[1]
            if att.src not in ts_offsets:  # once per source address: the SYN's TS offset
                ts_offsets[att.src] = ts_offset(s)
            data = req_last if rpc == 1 and is_http else next_request(att)
            # If this send succeeds, the handshake was complete when send() checked the
            # socket's state, on entry: the connect time is taken just before the call.
            t = mono()
            try:
                n = s.send(data)
            except BlockingIOError:  # still in SYN_SENT: wait for the handshake
                att.unsent = data
                att.reqs_left = rpc  # not sent yet
                att.t_conn = 0.0
                att.state = _CONNECTING
                conns[fd] = att
                ep.register(fd, EPOLLOUT)
                connect_dq.append((now + connect_timeout, att))
                return
            except OSError as e:
                if e.errno in _AFTER_HANDSHAKE:  # established, then reset: not refused
                    connected(att, t)
                    fail(att, e.errno or errno.EIO, False)
                    return
                fail(att, e.errno or errno.EIO, True)  # refused during the handshake
                return
            att.t_conn = t
            if t - now >= SYN_RTO_FLOOR_S:  # see connected()
                connected(att, t)
            att.reqs_left = rpc - 1
            conns[fd] = att
            att.t_req = t
            att.reqno = 1
            request_dq.append((t + request_timeout, att, 1))
            if n < len(data):
                att.unsent = data[n:]
                att.state = _SENDING
                ep.register(fd, EPOLLOUT)
            else:
                att.state = _READING
                ep.register(fd, EPOLLIN)

        def answered(att: _Attempt, now: float, closes: bool) -> None:
            nonlocal n_requests
            n_requests += 1
            req_app(now - att.t_req)
            if not att.t_ans:
                att.t_ans = now
            if att.reqs_left > 0 and not closes:
                send_request(att, next_request(att), now)
                return
            if wait_fin:
                att.state = _WAIT_FIN
                on_readable(att, now)  # the FIN often came with the answer
            else:
                succeed(att)

        last_answer: list[Any] = [None, None]  # (bytes, parse) of the last whole answer

        def on_readable(att: _Attempt, now: float) -> None:
            nonlocal n_requests
            try:
                data = att.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                fail(att, e.errno or errno.EIO, False)
                return
            if att.state == _WAIT_FIN:
                if not data:
                    succeed(att)
                return  # bytes after the last answer: ignored, still waiting for the FIN
            buf = att.buf + data if att.buf else data
            eof = not data
            if eof and not buf:  # closed without (the rest of) an answer
                fail(att, "EPROTO", False)
                return
            try:
                if is_http:
                    # Servers send the same bytes over and over (nginx's Date changes once
                    # a second): an answer equal to the last complete one parses the same.
                    if buf == last_answer[0]:
                        a = last_answer[1]
                    else:
                        a = parse_http_answer(buf, eof)
                        if a is None:
                            att.buf = buf
                            return
                        if a[1] == len(buf) and not eof:
                            last_answer[0], last_answer[1] = buf, a
                    status, length, closes = a
                    http_status[status] = http_status.get(status, 0) + 1
                    if not 200 <= status < 400:
                        fail(att, "EPROTO", False)
                        return
                    att.buf = buf[length:] if length < len(buf) else b""
                else:
                    n = parse_line_answer(buf)
                    if n < 0:
                        if eof:
                            raise ProtocolError("answer cut short by the server's FIN")
                        att.buf = buf
                        return
                    att.buf = buf[n:] if n < len(buf) else b""
                    closes = False
            except ProtocolError:
                fail(att, "EPROTO", False)
                return
            if eof:  # the answer ended with the server's FIN: this connection is over
                n_requests += 1
                req_app(now - att.t_req)
                if not att.t_ans:
                    att.t_ans = now
                succeed(att)
                return
            answered(att, now, closes)

        def on_event(att: _Attempt, now: float) -> None:
            st = att.state
            if st in (_READING, _WAIT_FIN):
                on_readable(att, now)
            elif st == _CONNECTING:
                err = att.sock.getsockopt(SOL_SOCKET, SO_ERROR)
                if err:
                    if err in _AFTER_HANDSHAKE:  # established, then reset before we looked
                        connected(att, now)
                        fail(att, err, False)
                    else:
                        fail(att, err, True)
                    return
                connected(att, now)
                data = att.unsent
                att.unsent = b""
                att.reqs_left -= 1
                if send_request(att, data, now) and att.state == _READING:
                    ep.modify(att.fd, EPOLLIN)
            elif st == _SENDING:
                try:
                    n = att.sock.send(att.unsent)
                except BlockingIOError:
                    return
                except OSError as e:
                    fail(att, e.errno or errno.EIO, False)
                    return
                att.unsent = att.unsent[n:]
                if not att.unsent:
                    att.state = _READING
                    ep.modify(att.fd, EPOLLIN)

        # ---- the loop ----------------------------------------------------------------
        open_loop = p.mode == "open"
        max_events = MAX_EVENTS if open_loop else -1
        due_first = open_loop
        sched = p.schedule().times() if open_loop else iter(())
        next_due: float | None = None
        if open_loop:
            first = next(sched, None)
            next_due = None if first is None else t0 + first
        end_at = t0 + p.duration if p.duration is not None else float("inf")
        # the hard wall-clock bound: what is still in flight then is cut ("unfinished")
        hard_end = end_at + p.drain if p.drain is not None else float("inf")
        # an overloaded open loop stops starting late attempts this long after the end
        give_up_at = (min(end_at + max(1.0, 0.1 * p.duration), hard_end) if p.duration is not None
                      else float("inf"))
        skipped = 0
        unfinished = 0
        stopped_at: float | None = None
        max_starts = p.count if p.count is not None else -1
        concurrency = p.concurrency
        cap = p.max_in_flight if p.max_in_flight > 0 else 1 << 62
        control = self.control
        ctl_fd = -1
        if control is not None:
            ctl_fd = control.fileno()
            ep.register(ctl_fd, EPOLLIN)
        tick_s = p.tick_s
        next_tick = t0 + tick_s if control is not None else float("inf")
        lag_max = 0.0
        in_flight_max = 0
        lags = array("d")  # open loop: how late each attempt started, s
        lag_app = lags.append
        late = 0
        last_end = 0.0
        stopping = False
        exhausted = False  # no more attempts will be started
        batching = False  # open loop: the last gap between due times was under WAKE_QUANTUM_S
        woke = 0.0  # when the last quantum sleep ended

        # Nothing here makes reference cycles, so the cyclic GC only costs time: its
        # collections, triggered by the attempts' allocations, were 2 % of a worker's CPU.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = time.process_time()
        now = mono()
        if now < t0:
            sleep(t0 - now)
        while True:
            now = mono()
            done_before = n_ok + n_failed
            started_before = n_started
            if not exhausted:
                if open_loop:
                    # A worker that fell behind starts what is due at once (open loop),
                    # but at most MAX_BURST per round, so answers and timeouts are not
                    # starved meanwhile; the late ones keep their due times.
                    # The lag is taken on the clock read just before each attempt's
                    # socket() and connect(), not once per round: in a burst, the starts
                    # before an attempt make it later, and that is part of its lag.
                    burst = MAX_BURST
                    while next_due is not None and next_due <= now and burst and len(conns) < cap:
                        burst -= 1
                        lag = now - next_due
                        lag_app(lag)
                        if lag > 0.001:
                            late += 1
                            if lag > lag_max:
                                lag_max = lag
                        start(next_due, now)
                        nxt = next(sched, None)
                        if nxt is None:
                            next_due = None
                        else:
                            # attempts due closer together than the quantum: wake per quantum
                            batching = t0 + nxt - next_due < WAKE_QUANTUM_S
                            next_due = t0 + nxt
                        now = mono()
                        if now >= give_up_at:
                            break
                    if next_due is not None and (now >= give_up_at or stopping):
                        # so far behind that the run would overstay its duration (or told
                        # to stop): the rest is counted as not started, not silently
                        # dropped; counted, not drawn (a rate of 1e9/s has 1e9 of them)
                        if not stopping:
                            skipped = p.schedule().remaining(n_started, next_due - t0)
                        next_due = None
                    exhausted = next_due is None
                    if len(conns) > in_flight_max:
                        in_flight_max = len(conns)
                elif now >= end_at or n_started == max_starts:
                    exhausted = True
                else:
                    # closed loop: refill the free slots (a failure frees its slot at once);
                    # at most `concurrency` starts per round so fast failures cannot starve
                    # timeouts, ticks and the stop message
                    for _ in range(concurrency - len(conns)):
                        start(now, now)
                        if n_started == max_starts:
                            break
                        now = mono()
                        if now >= end_at:
                            break
            while connect_dq and connect_dq[0][0] <= now:
                _, att = connect_dq.popleft()
                if att.state == _CONNECTING:
                    fail(att, errno.ETIMEDOUT, True)
            while request_dq and request_dq[0][0] <= now:
                _, att, reqno = request_dq.popleft()
                if att.state > _CONNECTING and att.reqno == reqno:
                    fail(att, errno.ETIMEDOUT, False)
            if now >= next_tick and control is not None:
                next_tick = now + tick_s
                try:
                    control.send(("tick", p.index, {"started": n_started, "ok": n_ok, "failed": n_failed,
                                                   "requests": n_requests}, dict(errs)))
                except OSError:  # the parent is gone
                    stopping = True
            if now >= hard_end and not stopping:
                exhausted = True
                if next_due is not None:
                    skipped = p.schedule().remaining(n_started, next_due - t0)
                    next_due = None
                for att in list(conns.values()):
                    unfinished += 1
                    fail(att, "ECANCELED", att.state == _CONNECTING, "unfinished")
            if stopping:
                if stopped_at is None:
                    stopped_at = now - t0
                exhausted = True
                for att in list(conns.values()):
                    unfinished += 1
                    fail(att, "ECANCELED", att.state == _CONNECTING, "unfinished")
            if n_ok + n_failed != done_before:
                last_end = now
            if exhausted and not conns:
                break
            # how long may we sleep?
            if not exhausted and not open_loop and len(conns) < concurrency:
                wait = 0.0
            else:
                wake = min(next_tick, hard_end)
                if not exhausted and not (open_loop and len(conns) >= cap):  # capped: a close wakes it
                    wake = min(wake, next_due if open_loop and next_due is not None else end_at)
                if connect_dq:
                    wake = min(wake, connect_dq[0][0])
                if request_dq:
                    wake = min(wake, request_dq[0][0])
                wait = wake - now
            if wait >= 0.001:
                # epoll rounds its timeout up to whole ms: ask for a bit less, never late
                events = ep.poll(min(int(wait * 1000), 1000) / 1000.0 - 1e-6, max_events)
            else:
                events = ep.poll(0, max_events)
                # Less than a ms to go (an open loop above 1,000/s per worker, every
                # turn): epoll_wait() cannot wait that briefly, but select() on the epoll
                # fd itself can (its timeout is in us) and, unlike a sleep, it returns as
                # soon as an answer arrives, so answers are not left waiting meanwhile.
                # Gaps shorter than SELECT_MIN_S (above 5,000/s per worker) are slept:
                # a wake-up per answer costs more CPU than the gap delays them, and the
                # answers that arrived meanwhile are handled together after it.
                if not events and wait > 0:
                    if batching and not exhausted and wait < WAKE_QUANTUM_S:
                        # until the next attempt is due, but not before a quantum has passed
                        # since the last such wake-up: one wake-up per quantum, no drift
                        # (sleeping a whole quantum from now, a worker whose gaps are just
                        # under it fell a little further behind at every wake-up)
                        sleep(max(wait, woke + WAKE_QUANTUM_S - now))
                        woke = mono()
                    elif wait < SELECT_MIN_S:
                        sleep(wait)
                    elif sel(ep_fds, (), (), wait)[0]:
                        events = ep.poll(0, max_events)
            if events:
                done_before = n_ok + n_failed
                # An open loop stops handling answers when an attempt is due (epoll is
                # level-triggered: what is left is reported again next round), so answers
                # fill the gaps between starts without delaying them -- but only after as
                # many events as it started attempts this round: a worker that is behind
                # must still finish connections as fast as it starts them, or they pile
                # up (CLOSE_WAIT), each holding a local port that connect()'s port search
                # (__inet_hash_connect) then has to skip, and every start gets slower.
                # Answers are stamped with the time epoll_wait() returned: they had arrived
                # by then, and the work on the events before them is the generator's.
                now = mono()
                owed = n_started - started_before
                for fd, _ev in events:
                    if owed > 0:
                        owed -= 1
                    elif due_first and next_due is not None and len(conns) < cap and mono() >= next_due:
                        break
                    att_ = conns_get(fd)
                    if att_ is not None:
                        if att_.state == _READING:
                            on_readable(att_, now)
                        else:
                            on_event(att_, now)
                    elif fd == ctl_fd and control is not None:
                        try:
                            msg = control.recv()
                        except (EOFError, OSError):
                            msg = "stop"
                        if msg == "stop":
                            stopping = True
                if n_ok + n_failed != done_before:
                    last_end = now

        cpu_s = time.process_time() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        preempted = ru1.ru_nivcsw - ru0.ru_nivcsw
        sys_s = ru1.ru_stime - ru0.ru_stime
        wakeups = ru1.ru_nvcsw - ru0.ru_nvcsw
        ep.close()
        if gc_was_enabled:
            gc.enable()
        end = (last_end or mono()) - t0
        ch = hist_of(np.frombuffer(r_cms, dtype=np.float64) * 1000.0 if len(r_cms) else np.zeros(0))
        lh = hist_of(np.frombuffer(lags, dtype=np.float64) * 1e6 if len(lags) else np.zeros(0))
        rh = hist_of(np.frombuffer(req_s, dtype=np.float64) * 1e6 if len(req_s) else np.zeros(0))
        return WorkerResult(
            index=p.index,
            t=r_t, connect_ms=r_cms, syn_tries=r_syn, outcome=r_out, reason=r_rsn, src=r_src,
            sport=r_sport,
            outcomes=list(outcomes), reasons=list(reasons), addrs=list(addrs),
            connect_hist=ch.encode().decode() if ch.get_total_count() else "",
            request_hist=rh.encode().decode() if rh.get_total_count() else "",
            lag_hist=lh.encode().decode() if lh.get_total_count() else "",
            requests=n_requests, http_status=http_status,
            lag_max_ms=lag_max * 1000.0, late_starts=late, not_started=max(0, skipped), end=end,
            interrupted=stopping, answer_ms=r_ams, close_ms=r_clo, request_s=req_s, lag_s=lags,
            unfinished=unfinished, stopped_at=stopped_at, cpu_s=cpu_s, sys_s=sys_s, preempted=preempted,
            wakeups=wakeups, in_flight_max=in_flight_max, ts_offsets=ts_offsets,
        )


def precise_timers() -> None:
    """Shrink this thread's timer slack from 50 us to 1 ns (prctl PR_SET_TIMERSLACK).

    An open-loop worker sleeps until the next attempt is due; with the default slack the
    kernel may wake it 50 us or more late, and that lateness counts in the attempt's
    connect latency (measured from the due time). Best effort: no libc, no change.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


# sched_attr.sched_runtime asked for by short_slice(): the shortest slice the kernel takes
# (it clamps a fair task's custom slice to 0.1 .. 100 ms, kernel/sched/syscalls.c)
SLICE_NS = 100_000
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")  # struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes)


def short_slice(slice_ns: int = SLICE_NS) -> bool:
    """Ask the scheduler for short time slices (sched_setattr, sched_runtime of a
    SCHED_OTHER task: a custom EEVDF slice, Linux 6.12+); True if the kernel took it.

    A task's deadline is its eligible time plus its slice, so a worker with a 0.1 ms slice
    that wakes when an attempt is due gets an earlier deadline than the CPU-bound tasks
    beside it (default slice 0.7-3 ms) and runs sooner (PREEMPT_SHORT). Same weight, same
    share of the CPU: only when it runs changes. Keeps the policy and the nice value; best
    effort: another policy, an older kernel (which ignores sched_runtime for SCHED_OTHER)
    or no libc changes nothing.
    """
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if nr is None or os.sched_getscheduler(0) != os.SCHED_OTHER:
        return False
    try:
        import ctypes

        nice = os.getpriority(os.PRIO_PROCESS, 0)
        attr = ctypes.create_string_buffer(_SCHED_ATTR.pack(
            _SCHED_ATTR.size, os.SCHED_OTHER, 0, nice, 0, slice_ns, 0, 0, 0, 0), _SCHED_ATTR.size)
        return int(ctypes.CDLL(None, use_errno=True).syscall(nr, 0, attr, 0)) == 0
    except (OSError, AttributeError):
        return False


def name_process(name: str) -> None:
    """Set this process's command name (prctl PR_SET_NAME, at most 15 bytes), so `top`,
    `ps -o comm` and perf tell the load workers apart from the server beside them and
    from each other. Best effort."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def run_in_child(plan: WorkerPlan, conn: Connection) -> None:
    """Entry of a worker process: the parent handles Ctrl-C and tells us to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    name_process(f"tcpr-load-{plan.index}")
    precise_timers()
    short_slice()
    try:
        res = Worker(plan, conn).run()
    except Exception as e:  # a bug: report it rather than hang the parent
        import traceback

        conn.send(("error", plan.index, "".join(traceback.format_exception(e))))
    else:
        conn.send(("result", plan.index, res))
    conn.close()
    os._exit(0)


def hist_of(values_us: np.ndarray) -> HdrHistogram:
    """A histogram of many values at once: one record_value per distinct value, not per value."""
    h = _hist()
    v = values_us[~np.isnan(values_us)] if values_us.dtype.kind == "f" else values_us
    if v.size:
        vals, counts = np.unique(np.clip(np.rint(v), HIST_LOW_US, HIST_HIGH_US).astype(np.int64),
                                 return_counts=True)
        for x, n in zip(vals.tolist(), counts.tolist(), strict=True):
            h.record_value(x, n)
    return h


def decode_hist(encoded: str) -> HdrHistogram | None:
    return HdrHistogram.decode(encoded) if encoded else None


def merge_hists(encoded: list[str]) -> HdrHistogram:
    """Sum of worker histograms (same range and precision, so counts add bucket by bucket)."""
    total = _hist()
    for e in encoded:
        if e:
            total.decode_and_add(e)
    return total


def percentiles(h: HdrHistogram) -> dict[str, Any]:
    """p50/p90/p99/p99.9/max in ms from a histogram in us; None when empty."""
    n = h.get_total_count()
    if not n:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "p99.9": None, "max": None}
    out: dict[str, Any] = {"count": int(n)}
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
        out[name] = round(h.get_value_at_percentile(q) / 1000.0, 3)
    out["max"] = round(h.get_max_value() / 1000.0, 3)
    return out
