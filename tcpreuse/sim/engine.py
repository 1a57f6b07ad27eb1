"""The deterministic, seeded discrete-event engine.

It drives the model rules with a scenario's workloads and records a RunResult. A
connection is a handful of events (SYN tries, close), not packets: each SYN is carried
through NAT and load balancer to the server and decided there at once, and the answer's
effect on the client (connected, ACK for an old connection -> RST -> retry, RST,
nothing) is applied with the path's round-trip time. TIME_WAIT sockets expire lazily.

The code is plain typed Python written so that mypyc can compile it (setup.py); the
rules it calls live in tcpreuse/model and are compiled with it.
"""

from __future__ import annotations

import gc
import math
import random
import sys
import time as wallclock
from collections.abc import Callable
from typing import Any, Final, cast

from ..model import clocks
from ..model.lb import L4LoadBalancer
from ..model.lb import Session as LbSession
from ..model.listener import COOKIE, DROP, Listener, conn_request, syn_recv_sock_ok
from ..model.nat import CtEntry, SourceNat
from ..model.ports import PORT_BUSY, PORT_FREE, PORT_TW_REUSE, find_open_port
from ..model.profiles import get_profile
from ..model.recycle import stamps_remembered
from ..model.seq import MASK32
from ..model.stacks import linux_data_retry_j, syn_sent_expired
from ..model.timewait import (
    TCP_TIMEWAIT_LEN,
    TW_ACK,
    TW_ACK_SKIPPED,
    TW_RST,
    TW_SYN,
    Segment,
    TimeWaitSock,
    inet_twsk_alloc_ok,
    tcp_time_wait,
    tcp_timewait_state_process,
    tcp_twsk_takeover,
    tcp_twsk_unique,
    tw_lifetime,
)
from ..result import RunResult
from ..scenario.schema import Scenario
from ..scenario.topology import ip2int, plan, pool
from .arrivals import Arrivals, workload_arrivals
from .events import Event, EventHeap, advance
from .host import (
    DestPorts,
    Key,
    SimHost,
    TwQueue,
    client_sock_key,
    server_sock_key,
    unhash,
)
from .record import Consulted, build_result
from .sink import Sink

EV_ARRIVAL: Final = 0
EV_SYN: Final = 1
EV_CLOSE: Final = 2
EV_FAIL: Final = 3
EV_ACCEPT_RETRY: Final = 4
EV_RETRY: Final = 5
EV_TIMEOUT: Final = 6
EV_FINAL_ACK: Final = 7

NO_KEY: Final[Key] = -1  # an attempt's key before it has one (no socket table holds it)

SYN_SENT: Final = 0
ESTABLISHED: Final = 1
DONE: Final = 2

# workload.close, as WorkloadRT.close_code (an int test per close, not string comparisons)
CLOSE_SERVER: Final = 0
CLOSE_CLIENT: Final = 1
CLOSE_CLIENT_RST: Final = 2
CLOSE_SERVER_RST: Final = 3
_CLOSE_CODES: Final = {"server": CLOSE_SERVER, "client": CLOSE_CLIENT, "client_rst": CLOSE_CLIENT_RST,
                       "server_rst": CLOSE_SERVER_RST}


class WorkloadRT:
    """A workload's values, copied out of the pydantic model for the hot loop."""

    def __init__(self, index: int, name: str, clients: list[SimHost], close: str, bind: str, n_req: int,
                 req_bytes: int, resp_bytes: int, connect_timeout: float, request_timeout: float,
                 retries: int, retry_delay: float, to_lb: bool, servers: list[SimHost], port: int) -> None:
        # Interned: the hot loop compares these with literals, which is then a pointer test.
        self.index, self.name, self.clients = index, name, clients
        self.close, self.bind = sys.intern(close), sys.intern(bind)
        self.close_code = _CLOSE_CODES[close]
        self.n_req, self.req_bytes, self.resp_bytes = n_req, req_bytes, resp_bytes
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.retries, self.retry_delay = retries, retry_delay
        self.to_lb, self.servers, self.port = to_lb, servers, port
        self.rr = 0
        self.dst_rr = 0


class Attempt:
    """One connect() by a client, until it succeeds or fails, and then its connection.

    The 4-tuple as the client sees it (saddr, sport, daddr, dport) and as the server sees
    it after NAT and load balancer (r_*) are both kept, with the NAT entry and LB session
    the flow uses."""

    wl: WorkloadRT
    client: SimHost
    t0: float
    outcome: str
    reason: str
    cause: str
    connect_ms: float
    tries: int
    state: int
    deadline: float
    retries_left: int
    bound: bool
    ts: bool
    tsoff: int
    isn: int
    saddr: int
    sport: int
    daddr: int
    dport: int
    srv: SimHost | None
    r_saddr: int
    r_sport: int
    r_daddr: int
    r_dport: int
    nat: CtEntry | None
    lb: LbSession | None
    lb_gen: int  # lb.gen when the LB gave this attempt its session (see _lb_session())
    s_isn: int
    ts_ok: bool
    sts_off: int
    t_est: float
    waiting: int
    cookie: bool
    served: bool
    ck: Key
    sk: Key
    t_close: float
    seq_close: int
    idx: int
    pending: int
    lst: Listener | None
    t_ack: float
    seq_ack: int
    live: bool
    lprev: Attempt | None
    lnext: Attempt | None
    queued: bool

    def __init__(self, wl: WorkloadRT, client: SimHost, t0: float) -> None:
        self.reset(wl, client, t0)

    def reset(self, wl: WorkloadRT, client: SimHost, t0: float) -> None:
        """Every field as a new attempt has it: __init__, and Engine._start on an attempt
        from the free list (an ordinary method, so the compiled build releases each old
        value as it stores the new one; mypyc's compiled __init__, called again, would not)."""
        self.wl = wl
        self.client = client
        self.t0 = t0
        self.outcome = ""
        self.reason = ""
        self.cause = ""
        self.connect_ms = math.nan
        self.tries = 0
        self.state = SYN_SENT
        self.deadline = math.inf
        self.retries_left = wl.retries
        self.bound = False
        self.ts = False
        self.tsoff = 0
        self.isn = 0
        self.saddr = 0
        self.sport = 0
        self.daddr = 0
        self.dport = 0
        # the path, once a SYN got through it
        self.srv = None
        self.r_saddr = 0
        self.r_sport = 0
        self.r_daddr = 0
        self.r_dport = 0
        self.nat = None
        self.lb = None
        self.lb_gen = 0
        # the connection, once established
        self.s_isn = 0
        self.ts_ok = False
        self.sts_off = 0
        self.t_est = 0.0
        self.waiting = 0  # accept retries so far (final ACK met a full accept queue)
        self.cookie = False  # the SYN was answered with a syncookie (no request sock)
        self.served = False  # holds an application worker
        self.ck = NO_KEY  # client_sock_key(), set once the port is chosen
        self.sk = NO_KEY  # server_sock_key(), set by each SYN routed to a listener
        self.t_close = 0.0  # when its CLOSE event is due, and that event's sequence number
        self.seq_close = 0  # (set by Engine.push_close: the close lane holds attempts)
        self.idx = 0  # its row: the attempts started before it
        self.pending = 0  # its events not yet processed; done and none pending: recorded
        self.lst = None  # the listener its SYN reached (set with srv)
        self.t_ack = 0.0  # when its FINAL_ACK event is due, and that event's sequence number
        self.seq_ack = 0  # (set by Engine._established: the ACK lane holds attempts)
        # Engine.live_head: the attempts started and not yet recorded, a doubly linked list in
        # start order (no dict of boxed indexes to insert into and pop from per attempt).
        self.live = False
        self.lprev = None
        self.lnext = None
        # It went into an accept queue: the queue may still hold it once it is recorded,
        # so it is not recycled (Engine.free).
        self.queued = False


class PortCheck:
    """check(port) for connect() autoselect (model.ports): may this port carry the 4-tuple?"""

    def __init__(self, engine: Engine, c: SimHost, d: DestPorts, t: float) -> None:
        self.engine, self.c, self.d = engine, c, d
        self.t = t
        self.ms = c.ms(t)
        self.sec = c.sec(t)

    def __call__(self, port: int) -> int:
        c = self.c
        if port in c.bound_ports:
            return PORT_BUSY
        key = client_sock_key(self.d, port)
        if key in c.ehash:
            return PORT_BUSY
        tw = c.tw.get(key)
        if tw is None:
            return PORT_FREE
        if tw.expires <= self.t:
            self.engine.expire_tw(c, key, tw)
            return PORT_FREE
        if tcp_twsk_unique(tw, False, self.ms, self.sec, rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                           tw_reuse_delay_ms=c.tw_reuse_delay):
            return PORT_TW_REUSE
        return PORT_BUSY


class Engine:
    def __init__(self, sc: Scenario, progress: Callable[[float, int], None] | None = None,
                 records: bool = True) -> None:
        self.sc = sc
        self.records = records
        self.progress = progress
        self.rtt = sc.path.rtt_ms / 1000.0
        self.half = self.rtt / 2
        self.loss = sc.path.loss
        self.end = sc.duration_s
        # the kernel's (and the path's) draws: secrets_seed; the arrivals: seed
        ks = sc.seed if sc.secrets_seed is None else sc.secrets_seed
        self.rng = random.Random(clocks.derive_secret(ks, "engine"))
        self.heap = EventHeap()
        # CLOSE events in time order, read from lane_head on (each attempt closes once:
        # its time and sequence number are kept on the attempt, see push_close()).
        self.close_lane: list[Attempt] = []
        self.lane_head = 0
        # FINAL_ACK events, 1.5 RTT after their SYN, so in time order: a FIFO of attempts
        # (their t_ack, seq_ack) read from ack_head on, like the close lane.
        self.ack_lane: list[Attempt] = []
        self.ack_head = 0
        self.seq = 0
        # Attempts started and not yet recorded (in self.sink), in start order: live state
        # only (a linked list through Attempt.lprev/lnext).
        self.live_head: Attempt | None = None
        self.live_tail: Attempt | None = None
        # Recorded attempts, re-initialised by the next _start(): once recorded, nothing
        # refers to an attempt (no event pending, unhashed) except an accept queue, and
        # one that was queued is not put here. free[:n_free], a stack that never shrinks
        # (list.pop() resizes the list as it shrinks, append() as it grows back).
        self.free: list[Attempt] = []
        self.n_free = 0
        self.n_atts = 0
        self.started: Attempt | None = None  # the attempt the last _start() made
        self.events = 0
        self.wall_s = 0.0
        self.hosts: dict[str, SimHost] = {}
        self.by_addr: dict[int, SimHost] = {}
        self.groups: dict[str, list[SimHost]] = {}
        for inst in plan(sc):
            g = sc.group(inst.group)
            h = SimHost(inst.name, inst.group, inst.role, get_profile(g.profile), g.effective_settings,
                        g.params, inst.addrs, ks,
                        random.Random(clocks.derive_secret(ks, inst.name, "rng")))
            if inst.role == "server":
                for port in g.listen_ports:
                    for a in h.addrs:
                        h.listen(a, port, Listener(g.backlog, h.somaxconn))
                    h.bound_ports.add(port)
                h.workers = g.workers
                h.service_s = g.service_ms / 1000.0
            h.index = len(self.hosts)  # its code in the attempt table's host vocabulary
            self.hosts[h.name] = h
            self.groups.setdefault(inst.group, []).append(h)
            for a in h.addrs:
                self.by_addr[a] = h
        self.nat: SourceNat | None = None
        if sc.nat is not None:
            n = sc.nat
            self.nat = SourceNat(pool(n.address, "198.51.100.1", n.addresses), n.port_policy, n.port_range,
                                 n.time_wait_s, n.close_s, n.max_attempts,
                                 random.Random(clocks.derive_secret(ks, "nat")))
            for gname in n.clients:
                for h in self.groups[gname]:
                    h.behind_nat = True
        self.lb: L4LoadBalancer | None = None
        self.vip_addr = 0
        self.vip_port = 0
        self.lb_backends: list[SimHost] = []
        if sc.lb is not None:
            lb = sc.lb
            self.lb_backends = self.groups[lb.backends]
            port = sc.group(lb.backends).port
            self.lb = L4LoadBalancer(
                [(h.addr, port) for h in self.lb_backends], lb.scheduler,
                pool(lb.snat_address, "192.0.2.1", lb.snat_addresses) if lb.snat else None,
                lb.snat_port_order, lb.snat_port_range, lb.session_hold_s, lb.ignore_msl,
                lb.held_session_syn, lb.rst_ends_session, lb.drop_server_ack_to_syn,
                random.Random(clocks.derive_secret(ks, "lb")))
            self.vip_addr, self.vip_port = ip2int(lb.vip), lb.port
        self.wls: list[WorkloadRT] = []
        for i, w in enumerate(sc.workload):
            to_lb = w.target == "lb"
            servers = [] if to_lb else self.groups[w.target]
            self.wls.append(WorkloadRT(
                i, w.name, self.groups[w.clients], w.close, w.bind, w.requests_per_connection,
                w.request_bytes, w.response_bytes,
                w.connect_timeout_s if w.connect_timeout_s is not None else math.inf,
                w.request_timeout_s if w.request_timeout_s is not None else math.inf,
                w.retries, w.retry_delay_s, to_lb, servers,
                sc.workload_port(w)))
            if w.bind == "bind0":
                for h in self.groups[w.clients]:
                    h.track_owners = True
        # timeline
        self.step = 1.0
        self.nsteps = max(1, math.ceil(self.end / self.step))
        self.next_sample = self.step
        self.samples: dict[str, dict[str, list[int]]] = {
            h: {"time_wait": [], "established": []} for h in self.hosts}
        self.port_series: dict[tuple[str, int, int, int], list[int]] = {}
        self.sink = Sink(records, self.step, self.nsteps)
        self.end_state: dict[str, dict[str, int]] = {}  # per host, at end_s
        self.end_s = self.end  # the end of the run (_run): max(duration_s, the last event)
        # audit: check invariants as sockets are created (tests; off by default)
        self.audit = False
        self.violations: list[str] = []

    # ---- event queue -----------------------------------------------------------------------
    def push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        self.heap.push(Event(t, self.seq, kind, obj))

    def push_att(self, t: float, kind: int, att: Attempt) -> None:
        """An event of one attempt (every kind but ARRIVAL and RETRY)."""
        att.pending += 1
        self.seq += 1
        self.heap.push(Event(t, self.seq, kind, att))

    def push_close(self, t: float, att: Attempt) -> None:
        """A CLOSE event. Close delays are constant per workload and server unless an accept
        queue builds up, so closes mostly arrive in time order: they go to a FIFO lane
        (cheaper than the heap) when they keep its order, else to the heap."""
        lane = self.close_lane
        att.pending += 1
        if self.lane_head >= len(lane) or lane[-1].t_close <= t:
            self.seq += 1
            att.t_close, att.seq_close = t, self.seq
            lane.append(att)
        else:
            self.seq += 1
            self.heap.push(Event(t, self.seq, EV_CLOSE, att))

    # ---- run -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        # The run allocates millions of long-lived objects and frees them in bulk; the
        # cyclic collector would rescan them over and over (engine objects form no cycles
        # that need it), so it is paused for the run.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if was_enabled:
                gc.enable()

    def _run(self) -> RunResult:
        t_wall = wallclock.perf_counter()
        # Arrivals come straight from their generators (the next one of each workload is
        # kept in `arrivals`); everything else goes through the heap. On equal times heap
        # events go first (they were scheduled earlier).
        # (parallel lists: the next arrival time, workload and arrival process of each)
        arr_t: list[float] = []
        arr_wl: list[WorkloadRT] = []
        arr_it: list[Arrivals] = []
        for i, wl in enumerate(self.sc.workload):
            it = workload_arrivals(self.sc.seed, wl, self.end)
            if it is None:
                continue
            first = it.next()
            if first != math.inf:
                arr_t.append(first)
                arr_wl.append(self.wls[i])
                arr_it.append(it)
        heap = self.heap
        hq = heap.items  # read in place: hq[0] is the earliest heap event
        n = 0
        sampling = True
        end = self.end + 1e-9
        inf = math.inf
        ta = min(arr_t) if arr_t else inf
        lane = self.close_lane
        lh = 0
        aq = self.ack_lane
        ah = 0
        obj: Any = None
        a: Attempt | None = None
        kind = 0
        t = 0.0
        while hq or arr_t or lh < len(lane) or ah < len(aq):
            # The earliest of heap, close lane and ACK lane by (time, seq); arrivals go
            # last on equal times (scheduled last).
            src = 0
            tb = inf
            sb = 0
            if hq:
                tb, sb, src = hq[0].t, hq[0].seq, 1
            if lh < len(lane):
                tl = lane[lh].t_close
                if tl < tb or (tl == tb and lane[lh].seq_close < sb):
                    tb, sb, src = tl, lane[lh].seq_close, 2
            if ah < len(aq):
                a0 = aq[ah]
                if a0.t_ack < tb or (a0.t_ack == tb and a0.seq_ack < sb):
                    tb, sb, src = a0.t_ack, a0.seq_ack, 3
            if src == 2 and tb <= ta:
                obj = lane[lh]
                t = tb
                lh = advance(lane, lh)
                self.lane_head = lh
                kind = EV_CLOSE
            elif src == 3 and tb <= ta:
                obj = aq[ah]
                t = tb
                ah = advance(aq, ah)
                self.ack_head = ah
                kind = EV_FINAL_ACK
            elif src and tb <= ta:
                ev = heap.pop()
                t, kind, obj = ev.t, ev.kind, ev.obj
            elif len(arr_t) == 1:
                # One arrival process (left): its next time is ta, kept in a local (arr_t[0]
                # is not read again: no process is added during a run).
                t = ta
                obj = arr_wl[0]
                kind = EV_ARRIVAL
                ta = arr_it[0].next()
                if ta == inf:
                    arr_t.pop()
                    arr_wl.pop()
                    arr_it.pop()
            else:
                k = 0
                for j in range(1, len(arr_t)):
                    if arr_t[j] < arr_t[k]:
                        k = j
                t = arr_t[k]
                obj = arr_wl[k]
                kind = EV_ARRIVAL
                nxt = arr_it[k].next()
                if nxt == inf:
                    arr_t.pop(k)
                    arr_wl.pop(k)
                    arr_it.pop(k)
                else:
                    arr_t[k] = nxt
                ta = arr_t[0] if len(arr_t) == 1 else (min(arr_t) if arr_t else inf)
            if sampling and t >= self.next_sample:
                while self.next_sample <= t and self.next_sample <= end:
                    self._sample(self.next_sample)
                    self.next_sample += self.step
                if self.next_sample > end:
                    sampling = False
                if self.progress is not None:
                    self.progress(min(t, self.end), self.n_atts)
            n += 1
            if kind == EV_ARRIVAL:
                self._arrival(t, cast(WorkloadRT, obj))
                a = self.started
            elif kind == EV_RETRY:
                rwl, client, retries_left, cause = cast(tuple[WorkloadRT, SimHost, int, str], obj)
                self._start(t, rwl, client, retries_left, cause)
                a = self.started
            else:
                # every other event is one attempt's (typed, so its fields are read natively)
                a = att = cast(Attempt, obj)
                if kind == EV_SYN:
                    if att.state == SYN_SENT:
                        self._syn(att, t)
                elif kind == EV_CLOSE:
                    self._close(att, t, False)
                elif kind == EV_TIMEOUT:
                    self._close(att, t, True)
                elif kind == EV_FAIL:
                    if att.state == SYN_SENT:
                        self._fail(att, t, att.client.errno_timeout, att.cause or "connect_timeout")
                elif kind == EV_FINAL_ACK:
                    self._final_ack(att, t)
                elif kind == EV_ACCEPT_RETRY:
                    self._accept_retry(att, t)
                att.pending -= 1
            # Record the attempt once it is done and no event of its own is left (the one
            # path that changes a done attempt is an accept retry: see _accept_retry).
            if a is not None and a.state == DONE and a.pending == 0:
                self._record(a)
        while sampling and self.next_sample <= end:
            self._sample(self.next_sample)
            self.next_sample += self.step
        if self.progress is not None:
            self.progress(self.end, self.n_atts)
        # The end of the run, one moment for everything that is "at the end": the later of
        # duration_s and the last event (an attempt started before duration_s that was
        # still connecting or open then is followed to its end, as the lab waits for it).
        # Outcomes, counters and end_state are all as of end_s.
        self.end_s = max(self.end, t)
        a = self.live_head  # in flight at the end (waiting in an accept queue, ...)
        while a is not None:
            nxt_a = a.lnext
            self._record(a)
            a = nxt_a
        self._record_end_state()
        for h in self.hosts.values():
            h.flush_counters()
        self.events = n
        self.wall_s = wallclock.perf_counter() - t_wall
        return build_result(self)

    # ---- arrivals and connect() ----------------------------------------------------------------
    def _arrival(self, t: float, wl: WorkloadRT) -> None:
        c = wl.clients[wl.rr % len(wl.clients)]
        wl.rr += 1
        self._start(t, wl, c, wl.retries, "")

    def _start(self, t: float, wl: WorkloadRT, c: SimHost, retries_left: int, retry_cause: str) -> None:
        if self.n_free:
            self.n_free -= 1
            att = self.free[self.n_free]
            att.reset(wl, c, t)
        else:
            att = Attempt(wl, c, t)
        idx = self.n_atts
        self.n_atts += 1
        att.idx = idx
        att.live = True
        tail = self.live_tail
        att.lprev = tail
        if tail is None:
            self.live_head = att
        else:
            tail.lnext = att
        self.live_tail = att
        self.started = att
        att.retries_left = retries_left
        if retry_cause:
            att.cause = retry_cause
        att.deadline = t + wl.connect_timeout
        if wl.to_lb:
            daddr, dport = self.vip_addr, self.vip_port
        else:
            srv = wl.servers[wl.dst_rr % len(wl.servers)]
            wl.dst_rr += 1
            daddr, dport = srv.addr, wl.port
        att.daddr, att.dport = daddr, dport
        saddr = c.addr
        if wl.bind != "none" and len(c.addrs) > 1:
            saddr = c.addrs[idx % len(c.addrs)]
        att.saddr = saddr
        self.purge(c, t)
        tw_taken: TimeWaitSock | None = None
        if c.is_linux:
            if wl.bind == "bind0":
                got = self._bind0(c, saddr)
                if got < 0:
                    # __inet_bind(): a failed get_port() is -EADDRINUSE (net/ipv4/af_inet.c,
                    # 4.x-6.18), not connect()'s -EADDRNOTAVAIL.
                    self._no_port(att, t, "EADDRINUSE")
                    return
                att.sport, att.bound = got, True
                # (no DestPorts toward the destination yet: no socket to it either)
                d0 = c.find_dest(saddr, daddr, dport)
                key = client_sock_key(d0, got) if d0 is not None else NO_KEY
                tw = c.tw.get(key)
                if key in c.ehash or (tw is not None and not tcp_twsk_unique(
                        tw, True, c.ms(t), c.sec(t), rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                        tw_reuse_delay_ms=c.tw_reuse_delay)):
                    self._release_bind(c, saddr, got)
                    self._no_port(att, t)
                    return
                tw_taken = tw
            else:
                sel = self._autoselect(c, saddr, daddr, dport, t)
                if sel is None:
                    self._no_port(att, t)
                    return
                att.sport = sel[0]
                if sel[1] == PORT_TW_REUSE:
                    tw_taken = c.tw[client_sock_key(c.dest(saddr, daddr, dport), att.sport)]
        else:
            assert c.pool is not None
            port = c.pool.allocate()
            if port is None:
                self._no_port(att, t)
                return
            att.sport = port
        key = client_sock_key(c.dest(saddr, daddr, dport), att.sport)
        att.ck = key
        if self.audit:
            self._audit_connect(c, key, tw_taken, att, t)
        if tw_taken is not None:
            # __inet_check_established(): the TW is unhashed, TWRecycled++; the new socket
            # inherits write_seq and ts_recent (model.timewait.tcp_twsk_takeover). The
            # inherited ts_recent is only echoed as the SYN's TSecr, then overwritten by the
            # SYN-ACK's TSval (or unused without timestamps): the engine keeps the ISN alone.
            att.isn = tcp_twsk_takeover(tw_taken)[0]
            del c.tw[key]
            c.release_port(key)
            c.inc("TcpExtTWRecycled")
        else:
            att.isn = self._client_isn(c, saddr, att.sport, daddr, dport, t)
        c.hold_port(key)
        c.ehash[key] = att
        att.ts = c.offers_ts
        if att.ts:
            att.tsoff = clocks.ts_offset(c.p, c.ts_secret, c.timestamps, saddr, daddr, att.sport, dport,
                                         c.ts_measured)
        c.n_active_opens += 1  # TcpActiveOpens (SimHost.flush_counters)
        self._syn(att, t)

    def _record(self, att: Attempt) -> None:
        """Hand a finished attempt to the sink (once) and forget it."""
        if not att.live:
            return
        att.live = False
        p, n = att.lprev, att.lnext
        if p is None:
            self.live_head = n
        else:
            p.lnext = n
        if n is None:
            self.live_tail = p
        else:
            n.lprev = p
        att.lprev = att.lnext = None
        srv = att.srv
        self.sink.add(att.idx, att.t0, att.connect_ms, att.tries, att.outcome, att.reason, att.cause,
                      att.wl.index, att.client.index, srv.index if srv is not None else -1,
                      att.saddr, att.daddr, att.r_saddr, att.r_daddr,
                      att.sport, att.dport, att.r_sport, att.r_dport)
        if not att.queued:
            # its per-connection objects are released now, not when the attempt is reused
            att.lb = None
            att.nat = None
            att.srv = None
            att.lst = None
            att.outcome = att.reason = att.cause = ""
            nf = self.n_free
            if nf < len(self.free):
                self.free[nf] = att
            else:
                self.free.append(att)
            self.n_free = nf + 1

    def _audit_connect(self, c: SimHost, key: Key, tw_taken: TimeWaitSock | None, att: Attempt,
                       t: float) -> None:
        """Invariants, restated independently of the allocation code: no live socket or
        TIME_WAIT holds the 4-tuple unless that TIME_WAIT is taken over, and the TIME_WAIT
        taken over is one model.timewait.tcp_twsk_unique() lets go (the allocation decides
        on the destination's oldest TIME_WAIT and the port search; this checks the one
        actually taken)."""
        v = self.violations
        four = (att.saddr, att.sport, att.daddr, att.dport)
        if key in c.ehash:
            v.append(f"t={t:.6f} {c.name}: 4-tuple {four} already has a live socket")
        tw = c.tw.get(key)
        if tw is not None and tw.expires > t and tw is not tw_taken:
            v.append(f"t={t:.6f} {c.name}: 4-tuple {four} is in TIME_WAIT and was not taken over")
        if c.pool is None and not att.bound and not (c.low <= att.sport <= c.high and att.sport not in c.reserved):
            v.append(f"t={t:.6f} {c.name}: port {att.sport} outside the usable range")
        if tw_taken is not None and not tcp_twsk_unique(
                tw_taken, att.bound, c.ms(t), c.sec(t), rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                tw_reuse_delay_ms=c.tw_reuse_delay):
            age_ms = c.ms(t) - tw_taken.entry_stamp_ms
            v.append(f"t={t:.6f} {c.name}: TIME_WAIT {age_ms} ms old taken over for {four} although "
                     f"tcp_twsk_unique() refuses (tcp_tw_reuse={c.tw_reuse}, rule {c.reuse_rule}, "
                     f"ts_recent_stamp={tw_taken.ts_recent_stamp})")

    def _client_isn(self, c: SimHost, sa: int, sp: int, da: int, dp: int, t: float) -> int:
        if c.is_linux:
            return clocks.linux_isn(c.isn_secret, sa, da, sp, dp, c.wall0 + t)
        if c.isn_random:
            return c.getrandbits(32)
        return clocks.rfc6528_isn(c.isn_secret, sa, da, sp, dp, c.wall0 + t)

    def _autoselect(self, c: SimHost, saddr: int, daddr: int, dport: int, t: float) -> tuple[int, int] | None:
        """inet_hash_connect() for a socket without a local port (docs/kernel.md §5.1)."""
        ports = c.connect_ports
        assert ports is not None
        if c.port_epoch_s > 0:
            epoch = clocks.port_shuffle_epoch(c.jiffies0 + t * c.hz, c.hz, c.port_epoch_s)
            po = clocks.keyed64(c.port_secret, saddr, daddr, dport, epoch)
        else:
            po = clocks.keyed32(c.port_secret, saddr, daddr, dport)
        d = c.dest(saddr, daddr, dport)
        check = PortCheck(self, c, d, t)
        # Can any TIME_WAIT toward this destination be taken over now? The oldest is the
        # first to qualify (every rule is "old enough"); if it cannot, none can.
        reuse = False
        if c.tw_reuse == 1:
            oldest = d.oldest_tw()
            reuse = oldest is not None and (oldest.ts_recent_stamp == 0 or tcp_twsk_unique(
                oldest, False, check.ms, check.sec, rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                tw_reuse_delay_ms=c.tw_reuse_delay))
        if not reuse and d.held >= c.port_budget_cached():
            return None
        occ = None if reuse or c.bound_in_range else d.occ
        return ports.autoselect(c.low, c.high, c.reserved, po, check, occ)

    def _bind0(self, c: SimHost, saddr: int) -> int:
        owners, bind_owned = c.owners, c.bind_owned

        def unowned(port: int) -> bool:
            return (saddr, port) not in owners and (saddr, port) not in bind_owned

        port = find_open_port(c.low, c.high, c.reserved, unowned, c.rng)
        if port is None:
            return -1
        c.bind_owned[(saddr, port)] = c.bind_owned.get((saddr, port), 0) + 1
        c.bound_ports.add(port)
        c.bound_in_range = True
        return port

    def _release_bind(self, c: SimHost, saddr: int, port: int) -> None:
        k = (saddr, port)
        n = c.bind_owned.get(k, 0) - 1
        if n > 0:
            c.bind_owned[k] = n
        else:
            c.bind_owned.pop(k, None)
            if not any(a_p[1] == port for a_p in c.bind_owned):
                c.bound_ports.discard(port)

    def _no_port(self, att: Attempt, t: float, errno: str = "") -> None:
        c = att.client
        att.state = DONE
        att.outcome = errno or c.errno_no_port
        att.reason = "local_ports_exhausted"
        att.cause = att.cause or "local_ports_exhausted"
        att.sport = 0
        self._maybe_retry(att, t, "local_ports_exhausted")

    # ---- the path: NAT, load balancer ------------------------------------------------------
    def _route(self, att: Attempt, t: float) -> str:
        """Carry the SYN through NAT and LB; fills att.srv/r_*; returns "" or a drop reason."""
        saddr, sport, daddr, dport = att.saddr, att.sport, att.daddr, att.dport
        nat_e = None
        if self.nat is not None and att.client.behind_nat:
            nat_e = self.nat.translate((saddr, sport, daddr, dport), t)
            if nat_e is None:
                return "syn_dropped_nat"
            saddr, sport = nat_e.nat_addr, nat_e.nat_port
        att.nat = nat_e
        if self.lb is not None and daddr == self.vip_addr and dport == self.vip_port:
            s = self.lb.syn(saddr, sport, t)
            if s is None:
                return "syn_dropped_lb"
            baddr, bport = self.lb.backends[s.backend]
            att.lb = s
            att.lb_gen = s.gen
            att.srv = self.lb_backends[s.backend]
            att.r_saddr, att.r_sport, att.r_daddr, att.r_dport = s.src, s.sport, baddr, bport
            self._to_listener(att, att.srv)
            return ""
        srv = self.by_addr.get(daddr)
        if srv is None or srv.is_client:
            return "syn_dropped_path"
        att.srv = srv
        att.r_saddr, att.r_sport, att.r_daddr, att.r_dport = saddr, sport, daddr, dport
        self._to_listener(att, srv)
        return ""

    def _to_listener(self, att: Attempt, srv: SimHost) -> None:
        """The listener the routed SYN reaches (att.lst, None if the port is closed) and the
        server's key of the 4-tuple (att.sk; without a listener no socket of the server can
        have that 4-tuple, so the key is not needed)."""
        ep = srv.endpoint(att.r_daddr, att.r_dport)
        if ep is None:
            att.lst, att.sk = None, NO_KEY
        else:
            att.lst, att.sk = ep.lst, server_sock_key(ep, att.r_saddr, att.r_sport)

    # ---- a SYN reaches the server ------------------------------------------------------------
    def _syn(self, att: Attempt, t: float) -> None:
        c = att.client
        if t >= att.deadline:
            self._fail(att, t, c.errno_timeout, att.cause or "connect_timeout")
            return
        att.tries += 1
        if self.loss and self.rng.random() < self.loss:
            self._unanswered(att, t, "syn_dropped_path")
            return
        drop = self._route(att, t)
        if drop:
            self._unanswered(att, t, drop)
            return
        srv = att.srv
        assert srv is not None
        skey = att.sk
        tsval = ((c.tsval(t) + att.tsoff) & MASK32) if att.ts else 0
        live = srv.ehash.get(skey)
        if live is not None and live is not att:
            # A SYN on a tuple the server still has open (a NAT/LB reused it): the
            # established socket answers with a challenge ACK (RFC 5961, tcp_validate_incoming).
            self._bad_ack(att, t, "syn_hit_established", live, None)
            return
        isn_from_tw = 0
        tw = srv.tw.get(skey)
        if tw is not None and tw.expires <= t:
            self.expire_tw(srv, skey, tw)
            tw = None
        if tw is not None:
            seg = Segment(syn=True, seq=att.isn, end_seq=(att.isn + 1) & MASK32, has_ts=att.ts, tsval=tsval)
            d = tcp_timewait_state_process(
                tw, seg, t, srv.sec(t), timestamps_sysctl=srv.timestamps, rfc1337=srv.rfc1337,
                oow_ratelimit_s=srv.oow_s, el6=srv.el6, paws_counter=srv.paws_tw_counter)
            for name in d.counters:
                srv.inc(name)
            if d.reschedule:
                self._reschedule_tw(srv, skey, tw, t)
            v = d.verdict
            if v == TW_SYN:
                self._kill_tw(srv, skey, tw)
                isn_from_tw = d.isn
            elif v == TW_ACK:
                self._bad_ack(att, t, "syn_paws_timewait" if d.paws_reject else "syn_hit_timewait", None, tw)
                return
            elif v == TW_ACK_SKIPPED:
                self._unanswered(att, t, "syn_paws_timewait" if d.paws_reject else "syn_hit_timewait")
                return
            elif v == TW_RST:
                self._refused(att, t)
                return
            else:
                self._unanswered(att, t, "syn_hit_timewait")
                return
        lst = att.lst  # (_route; no listener: sk is NO_KEY, which no table holds)
        if lst is None:
            srv.inc("TcpOutRsts")
            self._refused(att, t)
            return
        reject = False
        if srv.recycle_cache is not None and not isn_from_tw:
            reject = srv.recycle_cache.syn_rejected(
                att.r_daddr, att.r_saddr, att.ts and srv.timestamps != 0, tsval, srv.sec(t),
                srv.recycle_drops_tsless)
        cr = conn_request(lst, srv.listen_rules, from_timewait=isn_from_tw != 0, syncookies=srv.syncookies,
                          recycle_reject=reject)
        for name in cr.counters:
            srv.inc(name)
        if cr.verdict == DROP:
            self._unanswered(att, t, cr.reason)
            return
        if cr.verdict == COOKIE:
            srv.inc("TcpExtSyncookiesSent")
        self._established(att, t, srv, skey, lst, isn_from_tw, cr.verdict == COOKIE)

    def _established(self, att: Attempt, t: float, srv: SimHost, skey: Key, lst: Listener,
                     isn_from_tw: int, cookie: bool) -> None:
        att.s_isn = isn_from_tw or clocks.linux_isn(srv.isn_secret, att.r_daddr, att.r_saddr, att.r_dport,
                                                    att.r_sport, srv.wall0 + t)
        att.ts_ok = att.ts and srv.timestamps != 0
        if att.ts_ok:
            att.sts_off = clocks.ts_offset(srv.p, srv.ts_secret, srv.timestamps, att.r_daddr, att.r_saddr,
                                           att.r_dport, att.r_sport)
        t_est = t + self.rtt
        att.t_est = t_est
        att.state = ESTABLISHED
        if self.audit and (skey in srv.ehash or skey in srv.tw):
            self.violations.append(f"t={t:.6f} {srv.name}: new connection on a 4-tuple still in use "
                                   f"{(att.r_daddr, att.r_dport, att.r_saddr, att.r_sport)}")
        srv.ehash[skey] = att
        srv.n_passive_opens += 1  # TcpPassiveOpens
        att.outcome = "ok"
        att.reason = "ok_after_syn_retry" if att.tries > 1 else ("ok_after_app_retry" if att.cause else "ok")
        att.connect_ms = (t_est - att.t0) * 1000.0
        # A request sock (SYN_RECV) waits for the final ACK (none for a syncookie); the
        # accept queue is tested when that ACK arrives, half an RTT after the client
        # connected -- SYNs arriving in between (a burst of retransmissions) all pass the
        # SYN-time test and find the queue full only at their ACK (tcp_check_req()).
        att.cookie = cookie
        if not cookie:
            lst.syn_queue += 1
        self.seq += 1
        att.pending += 1
        t_ack = t_est + self.half
        aq = self.ack_lane
        if self.ack_head >= len(aq) or aq[-1].t_ack <= t_ack:
            att.t_ack, att.seq_ack = t_ack, self.seq
            aq.append(att)
        else:
            self.heap.push(Event(t_ack, self.seq, EV_FINAL_ACK, att))

    def _final_ack(self, att: Attempt, t: float) -> None:
        """The handshake's final ACK, and the request right behind it, reach the listener:
        tcp_check_req() (or cookie_v4_check()) -> tcp_v4_syn_recv_sock() creates the child
        if the accept queue has room. If not, both segments are dropped and each counts
        ListenOverflows/ListenDrops; the request sock stays (acked) and the client's
        retransmissions retry (tcp_abort_on_overflow=0)."""
        srv = att.srv
        assert srv is not None
        lst = att.lst  # the listener the SYN reached (_syn)
        assert lst is not None
        if att.state != ESTABLISHED:
            if not att.cookie:
                lst.syn_queue -= 1
            return
        ok, counters = syn_recv_sock_ok(lst)
        if ok:
            if not att.cookie:
                lst.syn_queue -= 1
            self._enqueue_child(att, lst, t)
            return
        n = 2 if att.wl.req_bytes > 0 else 1
        for name in counters:
            srv.inc(name, n)
        att.waiting = 1
        self.push_att(self._data_retry(att, t - self.half, 1), EV_ACCEPT_RETRY, att)

    def _data_retry(self, att: Attempt, t_sent: float, k: int) -> float:
        """When the client re-sends its request the k-th time (1-based), the previous copy
        having gone out at t_sent: Linux by its retransmission timer (model.stacks
        linux_data_retry_j, through the timer wheel); other stacks RTO = srtt + 200 ms,
        doubling."""
        c = att.client
        if c.is_linux:
            return c.timer_fires(t_sent, linux_data_retry_j(k, self.rtt, c.hz, c.p.tail_loss_probe))
        return t_sent + math.ldexp(self.rtt + 0.2, k - 1)  # (rtt + 0.2) * 2**(k-1), exactly

    def _accept_retry(self, att: Attempt, t: float) -> None:
        srv = att.srv
        assert srv is not None
        lst = att.lst
        assert lst is not None
        ok, counters = syn_recv_sock_ok(lst)
        if ok:
            if not att.cookie:
                lst.syn_queue -= 1
            self._enqueue_child(att, lst, t + self.half)
            return
        for name in counters:
            srv.inc(name)
        att.waiting += 1
        if att.waiting > srv.synack_retries + 1:
            if not att.cookie:
                lst.syn_queue -= 1
            del srv.ehash[att.sk]
            self._conn_failed(att, t, att.client.errno_reset, "ack_dropped_listen_overflow")
            return
        self.push_att(self._data_retry(att, t, att.waiting), EV_ACCEPT_RETRY, att)

    def _enqueue_child(self, att: Attempt, lst: Listener, t: float) -> None:
        srv = att.srv
        assert srv is not None
        if srv.busy < srv.workers:
            self._serve(att, t)
        else:
            att.queued = True
            srv.accept_q.append((att, lst))
            lst.accept_queue += 1

    def _serve(self, att: Attempt, t_accept: float) -> None:
        """The application accepts the connection and answers N requests, then closing starts."""
        srv = att.srv
        assert srv is not None
        srv.busy += 1
        att.served = True
        wl = att.wl
        svc = srv.service_s
        t_done = max(t_accept, att.t_est + self.half) + svc + self.half
        t_done += (wl.n_req - 1) * (self.rtt + svc)
        if t_done - att.t_est > wl.request_timeout:
            self.push_att(att.t_est + wl.request_timeout, EV_TIMEOUT, att)
            return
        self.push_close(t_done + self.half, att)

    # ---- answers other than a SYN-ACK ----------------------------------------------------------
    def _bad_ack(self, att: Attempt, t: float, cause: str, live: Attempt | None,
                 tw: TimeWaitSock | None) -> None:
        """The server answered the SYN with an ACK that does not acknowledge it (a TIME_WAIT
        or established socket's ACK for the old connection). A client in SYN-SENT answers
        with RST(seq = that ACK's ack number) and keeps its SYN timer (docs/kernel.md §3.1)."""
        c = att.client
        if not att.cause:
            att.cause = cause
        if self.lb is not None and att.lb is not None and self.lb.drop_server_ack_to_syn:
            self._unanswered(att, t, cause)  # F5 bug 515915: the LB drops that ACK
            return
        if c.abort_on_bad_ack:
            self._fail(att, t + self.rtt, c.errno_reset, cause)
            return
        c.inc("TcpOutRsts")
        t_rst = t + self.rtt + self.half
        lbs = _lb_session(att)
        if lbs is not None and self.lb is not None:
            self.lb.client_rst(lbs, t_rst)
        if att.nat is not None and self.nat is not None:
            self.nat.close(att.nat, t_rst, rst=True)
        srv = att.srv
        assert srv is not None
        if tw is not None:
            skey = att.sk
            seg = Segment(rst=True, seq=tw.rcv_nxt, end_seq=tw.rcv_nxt)
            d = tcp_timewait_state_process(
                tw, seg, t_rst, srv.sec(t_rst), timestamps_sysctl=srv.timestamps, rfc1337=srv.rfc1337,
                oow_ratelimit_s=srv.oow_s, el6=srv.el6, paws_counter=srv.paws_tw_counter)
            if d.killed:
                self._kill_tw(srv, skey, tw)
            elif d.reschedule:
                self._reschedule_tw(srv, skey, tw, t_rst)
        elif live is not None:
            # The RST lands exactly on rcv_nxt: the stale established connection is reset.
            srv.inc("TcpEstabResets")
            self._abort_conn(live)
        # SYN-SENT re-arms the SYN timer to TCP_TIMEOUT_MIN (2 jiffies) if nothing was
        # retransmitted yet.
        if c.fast_rearm_j and att.tries == 1:
            self._next_syn(att, c.timer_fires(t + self.rtt, c.fast_rearm_j))
        else:
            self._unanswered(att, t, cause)

    def _unanswered(self, att: Attempt, t: float, cause: str) -> None:
        """No SYN-ACK for the SYN sent at t: the next SYN goes out on the client's schedule.
        Linux: when the retransmission timer armed with that SYN fires (model.timers; the
        timer armed after the last retransmission gives up, tcp_write_timeout())."""
        if not att.cause:
            att.cause = cause
        c = att.client
        rtos = c.syn_rto_j
        if rtos:
            t_fire = c.timer_fires(t, rtos[att.tries - 1])
            # tcp_write_timeout() when that timer fires: retransmissions so far (tries - 1)
            # against the count, ms since the first SYN (retrans_stamp) against the budget
            if t_fire >= att.deadline or syn_sent_expired(att.tries - 1, len(rtos) - 1,
                                                          c.ms(t_fire) - c.ms(att.t0), c.syn_budget_ms):
                self._schedule_fail(att, t_fire)  # (at the deadline if that comes first)
            else:
                self.push_att(t_fire, EV_SYN, att)
            return
        offs = c.syn_offsets
        if att.tries >= len(offs):
            self._schedule_fail(att, att.t0 + att.client.give_up_s)
            return
        self._next_syn(att, att.t0 + offs[att.tries])

    def _next_syn(self, att: Attempt, t_next: float) -> None:
        give_up = att.t0 + att.client.give_up_s
        if t_next >= att.deadline or t_next >= give_up:
            self._schedule_fail(att, min(att.deadline, give_up))
            return
        self.push_att(t_next, EV_SYN, att)

    def _schedule_fail(self, att: Attempt, t: float) -> None:
        self.push_att(min(t, att.deadline), EV_FAIL, att)

    def _refused(self, att: Attempt, t: float) -> None:
        c = att.client
        if not att.cause:
            att.cause = "refused"
        if c.rst_to_syn_retry_s >= 0 and att.tries < len(c.syn_offsets):
            self._next_syn(att, t + self.rtt + c.rst_to_syn_retry_s)
            return
        self._fail(att, t + self.rtt, c.errno_refused, "refused")

    def _fail(self, att: Attempt, t: float, errno: str, reason: str) -> None:
        """connect() fails: the client socket goes away (tcp_done: AttemptFails)."""
        c = att.client
        att.state = DONE
        key = att.ck
        if unhash(c.ehash, key, att):
            c.release_port(key)
            if att.bound:
                self._release_bind(c, att.saddr, att.sport)
        c.inc("TcpAttemptFails")
        att.outcome, att.reason, att.cause = errno, reason, att.cause or reason
        lbs = _lb_session(att)
        if lbs is not None and self.lb is not None:
            self.lb.close(lbs, t)
        if att.nat is not None and self.nat is not None:
            self.nat.close(att.nat, t, rst=True)
        self._maybe_retry(att, t, reason)

    def _maybe_retry(self, att: Attempt, t: float, cause: str) -> None:
        if att.retries_left > 0:
            self.push(t + att.wl.retry_delay, EV_RETRY, (att.wl, att.client, att.retries_left - 1, cause))

    # ---- closing ------------------------------------------------------------------------------
    def _close(self, att: Attempt, t: float, timeout: bool) -> None:
        srv, c = att.srv, att.client
        assert srv is not None
        if att.served:
            att.served = False
            srv.busy -= 1
        if att.state == DONE:
            self._next_child(srv, t)
            return
        att.state = DONE
        wl = att.wl
        policy = wl.close_code  # (workload.close: CLOSE_SERVER, ...)
        if timeout:
            att.outcome = c.errno_timeout
            att.reason, att.cause = "request_timeout", att.cause or "request_timeout"
            policy = CLOSE_CLIENT  # the application gives up and closes
        req, resp = wl.req_bytes * wl.n_req, wl.resp_bytes * wl.n_req
        c_snd_nxt = (att.isn + 1 + req + 1) & MASK32
        s_snd_nxt = (att.s_isn + 1 + resp + 1) & MASK32
        rst = policy in (CLOSE_CLIENT_RST, CLOSE_SERVER_RST)
        skey = att.sk
        # The server side goes away (or into TIME_WAIT) ...
        del srv.ehash[skey]
        if policy == CLOSE_SERVER:
            self._time_wait(srv, skey, att.r_daddr, att.r_saddr, t, c_snd_nxt, s_snd_nxt,
                            ((c.tsval(t) + att.tsoff) & MASK32) if att.ts_ok else 0, att.ts_ok, att.sts_off,
                            None)
        elif policy == CLOSE_CLIENT_RST:
            srv.inc("TcpEstabResets")
        elif policy == CLOSE_SERVER_RST:
            # tcp_disconnect() from ESTABLISHED (or CLOSE_WAIT) -> TCP_CLOSE: tcp_set_state()
            # counts TCP_MIB_ESTABRESETS on the side that resets too (net/ipv4/tcp.c, 2.6.32-6.18).
            srv.inc("TcpExtTCPAbortOnData")
            srv.inc("TcpOutRsts")
            srv.inc("TcpEstabResets")
        # ... and the client side.
        ckey = att.ck
        if unhash(c.ehash, ckey, att):
            if policy == CLOSE_CLIENT:
                self._time_wait(c, ckey, att.saddr, att.daddr, t, s_snd_nxt, c_snd_nxt,
                                ((srv.tsval(t) + att.sts_off) & MASK32) if att.ts_ok else 0, att.ts_ok,
                                att.tsoff, c.dest(att.saddr, att.daddr, att.dport))
            else:
                c.release_port(ckey)
            if att.bound:
                self._release_bind(c, att.saddr, att.sport)
            if policy == CLOSE_CLIENT_RST:
                c.inc("TcpExtTCPAbortOnData")
                c.inc("TcpOutRsts")
                c.inc("TcpEstabResets")  # tcp_set_state(ESTABLISHED -> CLOSE), as above
            elif policy == CLOSE_SERVER_RST:
                c.inc("TcpEstabResets")
        lbs = _lb_session(att)
        if lbs is not None and self.lb is not None:
            if policy == CLOSE_CLIENT_RST:
                self.lb.client_rst(lbs, t)
            else:
                self.lb.close(lbs, t)
        if att.nat is not None and self.nat is not None:
            self.nat.close(att.nat, t, rst=rst)
        self._next_child(srv, t)

    def _next_child(self, srv: SimHost, t: float) -> None:
        while srv.accept_q and srv.busy < srv.workers:
            nxt, lst = srv.accept_q.popleft()
            lst.accept_queue -= 1
            if nxt.state != ESTABLISHED:
                if nxt.state == DONE and nxt.pending == 0:
                    self._record(nxt)
                continue
            self._serve(nxt, t)

    def _abort_conn(self, att: Attempt) -> None:
        """A live connection reset by a RST that hit its rcv_nxt."""
        if att.state != ESTABLISHED:
            return
        srv, c = att.srv, att.client
        assert srv is not None
        srv.ehash.pop(att.sk, None)
        ckey = att.ck
        if unhash(c.ehash, ckey, att):
            c.release_port(ckey)
        att.state = DONE
        att.outcome = c.errno_reset
        att.reason, att.cause = "reset", att.cause or "reset"

    def _conn_failed(self, att: Attempt, t: float, errno: str, reason: str) -> None:
        c = att.client
        att.state = DONE
        ckey = att.ck
        if unhash(c.ehash, ckey, att):
            c.release_port(ckey)
        att.outcome, att.reason, att.cause = errno, reason, att.cause or reason
        lbs = _lb_session(att)
        if lbs is not None and self.lb is not None:
            self.lb.client_rst(lbs, t)
        if att.nat is not None and self.nat is not None:
            self.nat.close(att.nat, t, rst=True)

    # ---- TIME_WAIT -----------------------------------------------------------------------------
    def _time_wait(self, h: SimHost, key: Key, laddr: int, raddr: int, t: float, rcv_nxt: int, snd_nxt: int,
                   ts_recent: int, ts_ok: bool, ts_offset: int, dest: DestPorts | None) -> None:
        """File the TIME_WAIT that model.timewait.tcp_time_wait() builds for the side that
        closed first (its 4-tuple's key, local and remote address). `dest` is given for a
        client's socket (its port stays held during TIME_WAIT)."""
        if not inet_twsk_alloc_ok(len(h.tw), h.max_tw):
            # no TIME_WAIT at all, the port is free at once
            h.inc("TcpExtTCPTimeWaitOverflow")
            if dest is not None:
                h.release_port(key)
            return
        now_sec = h.sec(t)
        # rto: icsk_rto after the handshake, srtt + max(rttvar, TCP_RTO_MIN)
        timeo = tw_lifetime(now_sec, laddr, raddr, ts_recent, ts_ok, h.is_linux, self.rtt + 0.2, h.hz,
                            h.client_tw_s, h.recycle_cache)
        tw = tcp_time_wait(t, now_sec, h.ms(t), rcv_nxt, snd_nxt, ts_recent, ts_ok, ts_offset, timeo,
                           h.death_row if h.deathrow else None)
        h.tw[key] = tw
        q = h.tw_queue(timeo)
        expires = tw.expires
        if not q and expires < h.tw_next:
            h.tw_next = expires
        q.push(expires, key, tw)
        if dest is not None:
            dest.tws.append(tw)
        if h.tw_count_at_schedule:
            h.count_tw(tw.kill)

    def _reschedule_tw(self, h: SimHost, key: Key, tw: TimeWaitSock, t: float) -> None:
        """inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN)"""
        if h.deathrow:
            tw.expires = h.death_row.expiry(t, TCP_TIMEWAIT_LEN)[0]
        else:
            tw.expires = t + TCP_TIMEWAIT_LEN
        tw.kill = False
        q = h.tw_fifo.get(TCP_TIMEWAIT_LEN)
        if q is None:
            q = h.tw_fifo[TCP_TIMEWAIT_LEN] = TwQueue()
        if not q and tw.expires < h.tw_next:
            h.tw_next = tw.expires
        q.push(tw.expires, key, tw)

    def _kill_tw(self, h: SimHost, key: Key, tw: TimeWaitSock) -> None:
        """Early removal (RST, SYN accepted) of `tw`, which the caller found filed under
        `key` while handling this segment (so one `del`, no lookup first): not counted as
        TW before 5.18."""
        tw.alive = False
        del h.tw[key]
        if h.is_client:
            h.release_port(key)

    def expire_tw(self, h: SimHost, key: Key, tw: TimeWaitSock) -> None:
        if not tw.alive or not unhash(h.tw, key, tw):
            return
        tw.alive = False
        if h.is_client:
            h.release_port(key)
        if not h.tw_count_at_schedule:
            h.count_tw(tw.kill)

    def purge(self, h: SimHost, t: float) -> None:
        """Expire the TIME_WAITs due by t, queue by queue (lazily: only when a table is read)."""
        if t < h.tw_next:
            return
        nxt = math.inf
        for q in h.tw_fifo.values():
            qe, qk, qt = q.exp, q.keys, q.tws
            i, n = q.head, len(qe)
            while i < n:
                exp = qe[i]
                if exp > t:
                    break
                tw = qt[i]
                if tw.alive and tw.expires <= exp:
                    self.expire_tw(h, qk[i], tw)
                i += 1
            q.consumed(i)
            first = q.first()
            if first < nxt:
                nxt = first
        h.tw_next = nxt

    # ---- timeline ------------------------------------------------------------------------------
    def _sample(self, ts: float) -> None:
        for h in self.hosts.values():
            self.purge(h, ts)
            s = self.samples[h.name]
            s["time_wait"].append(len(h.tw))
            s["established"].append(len(h.ehash))
            if h.role == "client":
                for (la, ra, rp), d in h.dests.items():
                    k = (h.name, la, ra, rp)
                    series = self.port_series.get(k)
                    if series is None:
                        series = self.port_series[k] = [0] * (len(s["time_wait"]) - 1)
                    series.append(d.held)
        for k, series in self.port_series.items():
            want = len(self.samples[k[0]]["time_wait"])
            while len(series) < want:
                series.append(0)

    def _record_end_state(self) -> None:
        for h in self.hosts.values():
            self.purge(h, self.end_s)
            self.end_state[h.name] = {"time_wait": len(h.tw), "established": len(h.ehash)}

    # ---- what the run consulted (sweep/inert.py) ---------------------------------------------
    def consulted(self) -> Consulted:
        """As things stand (at the end, or where a stopped run stopped): per host group, the
        peers its hosts' tcp_tw_recycle caches remembered (model/recycle.py
        recycle_consulted() says what that proves), and the SYNs that met a session the LB
        held and whether it translates sources (model/lb.py ignore_msl_consulted())."""
        stamped: dict[str, int] = {}
        for h in self.hosts.values():
            stamped[h.group] = stamped.get(h.group, 0) + stamps_remembered(h.recycle_cache)
        lb = self.lb
        if lb is None:
            return {"recycle_stamped": stamped, "lb_held_met": None, "lb_snat": None}
        return {"recycle_stamped": stamped, "lb_held_met": lb.held_met(), "lb_snat": lb.snat is not None}


def _lb_session(att: Attempt) -> LbSession | None:
    """The attempt's LB session if it is still the life the LB gave it: the LB recycles a
    removed session (model/lb.py), and a removed one takes no more closes or RSTs."""
    s = att.lb
    if s is not None and s.gen == att.lb_gen:
        return s
    return None


def simulate(sc: Scenario, progress: Callable[[float, int], None] | None = None,
             records: bool = True) -> RunResult:
    """Run `sc`. records=False keeps aggregates only (RunResult.aggregates, no rows):
    memory then follows the live connections, not the run's length."""
    return Engine(sc, progress, records).run()
