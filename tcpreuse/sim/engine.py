"""The deterministic, seeded discrete-event engine.

It drives the model rules with a scenario's workloads and records a RunResult. A
connection is a handful of events (SYN tries, close), not packets: each SYN is carried
through NAT and load balancer to the server and decided there at once, and the answer's
effect on the client (connected, ACK for an old connection -> RST -> retry, RST,
nothing) is applied with the path's round-trip time. TIME_WAIT sockets expire lazily.
"""

from __future__ import annotations

import heapq
import math
import random
import time as wallclock
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..model import clocks
from ..model.lb import L4LoadBalancer
from ..model.lb import Session as LbSession
from ..model.listener import COOKIE, DROP, Listener, conn_request, syn_recv_sock_ok
from ..model.nat import CtEntry, SourceNat
from ..model.ports import PORT_BUSY, PORT_FREE, PORT_TW_REUSE, find_open_port
from ..model.profiles import get_profile
from ..model.seq import MASK32
from ..model.timewait import (
    TCP_TIMEWAIT_LEN,
    TW_ACK,
    TW_ACK_SKIPPED,
    TW_RST,
    TW_SYN,
    Segment,
    TimeWaitSock,
    deathrow_expiry,
    tcp_timewait_state_process,
    tcp_twsk_unique,
    tw_timeout_s,
)
from ..result import AttemptTable, HostInfo, PortSeries, RunResult, Timeline
from ..scenario.schema import Scenario, Workload
from .arrivals import arrival_times
from .host import Key, SimHost
from .topology import int2ip, ip2int, plan, pool

EV_ARRIVAL, EV_SYN, EV_CLOSE, EV_FAIL, EV_ACCEPT_RETRY, EV_RETRY = range(6)
SYN_SENT, ESTABLISHED, DONE = range(3)


class Attempt:
    """One connect() by a client, with its SYN tries, until it succeeds or fails."""

    __slots__ = (
        "bound", "cause", "client", "conn", "connect_ms", "daddr", "deadline", "dport", "isn", "outcome",
        "reason", "retries_left", "route", "saddr", "sport", "state", "t0", "tries", "ts", "tsoff", "wl",
        "wl_i",
    )

    def __init__(self, wl: Workload, wl_i: int, client: SimHost, t0: float) -> None:
        self.wl, self.wl_i, self.client, self.t0 = wl, wl_i, client, t0
        self.outcome = ""
        self.reason = ""
        self.connect_ms = math.nan
        self.tries = 0
        self.state = SYN_SENT
        self.cause = ""
        self.route: Route | None = None
        self.conn: Conn | None = None
        self.deadline = math.inf
        self.retries_left = wl.retries
        self.bound = False
        self.ts = False
        self.tsoff = 0
        self.isn = 0
        self.saddr = self.sport = self.daddr = self.dport = 0


class Route:
    __slots__ = ("daddr", "dport", "lb", "nat", "saddr", "server", "sport")

    def __init__(self, server: SimHost, saddr: int, sport: int, daddr: int, dport: int,
                 nat: CtEntry | None, lb: LbSession | None) -> None:
        self.server, self.saddr, self.sport, self.daddr, self.dport = server, saddr, sport, daddr, dport
        self.nat, self.lb = nat, lb


class Conn:
    """An established connection, both ends."""

    __slots__ = ("att", "ckey", "cts_off", "s_isn", "served", "skey", "srv", "sts_off", "t_est", "ts_ok",
                 "waiting")

    def __init__(self, att: Attempt, srv: SimHost, ckey: Key, skey: Key, s_isn: int, ts_ok: bool,
                 sts_off: int, t_est: float) -> None:
        self.att, self.srv, self.ckey, self.skey = att, srv, ckey, skey
        self.s_isn, self.ts_ok, self.sts_off, self.t_est = s_isn, ts_ok, sts_off, t_est
        self.cts_off = att.tsoff
        self.waiting = 0  # accept retries so far (final ACK met a full accept queue)
        self.served = False  # holds an application worker


@dataclass
class EngineStats:
    events: int = 0
    attempts: int = 0
    wall_s: float = 0.0


class Engine:
    def __init__(self, sc: Scenario, progress: Callable[[float, int], None] | None = None) -> None:
        self.sc = sc
        self.progress = progress
        self.rtt = sc.path.rtt_ms / 1000.0
        self.half = self.rtt / 2
        self.loss = sc.path.loss
        self.end = sc.duration_s
        self.rng = random.Random(clocks.derive_secret(sc.seed, "engine"))
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.atts: list[Attempt] = []
        self.stats = EngineStats()
        self.hosts: dict[str, SimHost] = {}
        self.by_addr: dict[int, SimHost] = {}
        self.groups: dict[str, list[SimHost]] = {}
        for inst in plan(sc):
            g = sc.group(inst.group)
            h = SimHost(inst.name, inst.group, inst.role, get_profile(g.profile), g.effective_settings,
                        g.params, inst.addrs, sc.seed,
                        random.Random(clocks.derive_secret(sc.seed, inst.name, "rng")))
            if inst.role == "server":
                for a in h.addrs:
                    h.listeners[(a, g.port)] = Listener(g.backlog, h.somaxconn)
                    h.bound_ports.add(g.port)
                h.workers = g.workers
            self.hosts[h.name] = h
            self.groups.setdefault(inst.group, []).append(h)
            for a in h.addrs:
                self.by_addr[a] = h
        self.service = {g.name: g.service_ms / 1000.0 for g in sc.host}
        self.nat: SourceNat | None = None
        self.behind_nat: set[str] = set()
        if sc.nat is not None:
            n = sc.nat
            self.nat = SourceNat(pool(n.address, "198.51.100.1", n.addresses), n.port_policy, n.port_range,
                                 n.time_wait_s, n.close_s, n.max_attempts,
                                 random.Random(clocks.derive_secret(sc.seed, "nat")))
            self.behind_nat = set(n.clients)
        self.lb: L4LoadBalancer | None = None
        self.vip = (0, 0)
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
                random.Random(clocks.derive_secret(sc.seed, "lb")))
            self.vip = (ip2int(lb.vip), lb.port)
        # timeline
        self.step = 1.0
        self.nsteps = max(1, math.ceil(self.end / self.step))
        self.next_sample = self.step
        self.samples: dict[str, dict[str, list[int]]] = {h: {"time_wait": [], "established": []} for h in self.hosts}
        self.port_series: dict[tuple[str, int, int, int], list[int]] = {}
        self.wl_rr = [0] * len(sc.workload)
        self.dst_rr = [0] * len(sc.workload)
        self.end_state: dict[str, dict[str, int]] = {}

    # ---- event queue -----------------------------------------------------------------------
    def push(self, t: float, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, obj))

    # ---- run -----------------------------------------------------------------------------
    def run(self) -> RunResult:
        t_wall = wallclock.perf_counter()
        for i, wl in enumerate(self.sc.workload):
            dur = wl.duration_s if wl.duration_s is not None else self.end - wl.start_s
            dur = min(dur, self.end - wl.start_s)
            if dur <= 0:
                continue
            rng = random.Random(clocks.derive_secret(self.sc.seed, "arrivals", wl.name))
            it = arrival_times(wl.arrival, wl.connection_rate, wl.start_s, dur, wl.count, rng,
                              wl.ramp_from / wl.requests_per_connection)
            first = next(it, None)
            if first is not None:
                self.push(first, EV_ARRIVAL, (i, it))
        heap = self.heap
        pop = heapq.heappop
        n = 0
        sampled_end = False
        while heap:
            t, _, kind, obj = pop(heap)
            if t >= self.next_sample and not sampled_end:
                while self.next_sample <= t and self.next_sample <= self.end + 1e-9:
                    self._sample(self.next_sample)
                    self.next_sample += self.step
                if self.next_sample > self.end + 1e-9:
                    sampled_end = True
                    self._record_end_state()
                if self.progress is not None:
                    self.progress(min(t, self.end), len(self.atts))
            n += 1
            if kind == EV_ARRIVAL:
                i, it = obj
                self._arrival(t, i)
                nxt = next(it, None)
                if nxt is not None:
                    self.push(nxt, EV_ARRIVAL, obj)
            elif kind == EV_SYN:
                if obj.state == SYN_SENT:
                    self._syn(obj, t)
            elif kind == EV_CLOSE:
                self._close(obj, t)
            elif kind == EV_FAIL:
                if obj.state == SYN_SENT:
                    self._fail(obj, t, obj.client.stack.errno["timeout"], obj.cause or "connect_timeout")
            elif kind == EV_ACCEPT_RETRY:
                self._accept_retry(obj, t)
            elif kind == EV_RETRY:
                wl_i, client, retries_left, cause = obj
                self._start(t, wl_i, client, retries_left, cause)
        while not sampled_end and self.next_sample <= self.end + 1e-9:
            self._sample(self.next_sample)
            self.next_sample += self.step
        if not self.end_state:
            self._record_end_state()
        self.stats.events = n
        self.stats.attempts = len(self.atts)
        self.stats.wall_s = wallclock.perf_counter() - t_wall
        return self._result()

    # ---- arrivals and connect() ----------------------------------------------------------------
    def _arrival(self, t: float, wl_i: int) -> None:
        wl = self.sc.workload[wl_i]
        clients = self.groups[wl.clients]
        c = clients[self.wl_rr[wl_i] % len(clients)]
        self.wl_rr[wl_i] += 1
        self._start(t, wl_i, c, wl.retries, "")

    def _destination(self, wl_i: int) -> tuple[int, int]:
        wl = self.sc.workload[wl_i]
        if wl.target == "lb":
            return self.vip
        servers = self.groups[wl.target]
        s = servers[self.dst_rr[wl_i] % len(servers)]
        self.dst_rr[wl_i] += 1
        return s.addr, self.sc.group(wl.target).port

    def _start(self, t: float, wl_i: int, c: SimHost, retries_left: int, retry_cause: str) -> None:
        wl = self.sc.workload[wl_i]
        att = Attempt(wl, wl_i, c, t)
        idx = len(self.atts)
        self.atts.append(att)
        att.retries_left = retries_left
        if retry_cause:
            att.cause = retry_cause
        if wl.connect_timeout_s is not None:
            att.deadline = t + wl.connect_timeout_s
        daddr, dport = self._destination(wl_i)
        att.daddr, att.dport = daddr, dport
        saddr = c.addr
        if wl.bind != "none" and len(c.addrs) > 1:
            saddr = c.addrs[idx % len(c.addrs)]
        att.saddr = saddr
        stack = c.stack
        assert stack is not None
        self._purge(c, t)
        tw_taken: TimeWaitSock | None = None
        if c.is_linux:
            if wl.bind == "bind0":
                got = self._bind0(c, saddr)
                if got is None:
                    self._no_port(att, t)
                    return
                att.sport, att.bound = got, True
                key = (saddr, got, daddr, dport)
                tw = c.tw.get(key)
                if tw is not None and tw.expires <= t:
                    self._expire_tw(c, key, tw)
                    tw = None
                if key in c.ehash or (tw is not None and not tcp_twsk_unique(
                        tw, True, c.ms(t), c.sec(t), rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                        tw_reuse_delay_ms=c.tw_reuse_delay)):
                    self._release_bind(c, saddr, got)
                    self._no_port(att, t)
                    return
                tw_taken = tw
            else:
                got_port = self._autoselect(c, saddr, daddr, dport, t)
                if got_port is None:
                    self._no_port(att, t)
                    return
                port, how = got_port
                att.sport = port
                if how == PORT_TW_REUSE:
                    tw_taken = c.tw[(saddr, port, daddr, dport)]
        else:
            assert c.pool is not None
            port_or_none = c.pool.allocate()
            if port_or_none is None:
                self._no_port(att, t)
                return
            att.sport = port_or_none
        key = (saddr, att.sport, daddr, dport)
        if tw_taken is not None:
            # __inet_check_established(): the TW is unhashed, TWRecycled++, and the new
            # socket's write_seq = tw_snd_nxt + 65535 + 2 (tcp_twsk_unique()).
            tw_taken.alive = False
            del c.tw[key]
            c.release_port(key)
            c.inc("TcpExtTWRecycled")
            att.isn = (tw_taken.snd_nxt + 65535 + 2) & MASK32 or 1
        else:
            att.isn = self._client_isn(c, key, t)
        c.hold_port(key)
        c.ehash[key] = att
        att.ts = stack.offers_ts
        if att.ts:
            att.tsoff = clocks.ts_offset(c.p, c.ts_secret, c.timestamps, saddr, daddr, att.sport, dport)
        c.inc("TcpActiveOpens")
        self._syn(att, t)

    def _client_isn(self, c: SimHost, key: Key, t: float) -> int:
        sa, sp, da, dp = key
        if c.is_linux:
            return clocks.linux_isn(c.isn_secret, sa, da, sp, dp, c.wall0 + t)
        if c.params.get("isn") == "random":
            return c.rng.getrandbits(32)
        return clocks.rfc6528_isn(c.isn_secret, sa, da, sp, dp, c.wall0 + t)

    def _autoselect(self, c: SimHost, saddr: int, daddr: int, dport: int, t: float) -> tuple[int, int] | None:
        """inet_hash_connect() for a socket without a local port (spec §6.1-6.3)."""
        ports = c.connect_ports
        assert ports is not None
        p = c.p
        if p.port_secret_epoch_s is not None:
            epoch = int((c.uptime + t) // p.port_secret_epoch_s)
            po = clocks.keyed64(c.port_secret, saddr, daddr, dport, epoch)
        else:
            po = clocks.keyed32(c.port_secret, saddr, daddr, dport)
        # Fast path: every usable port toward this destination is held, and no TIME_WAIT
        # of it can be taken over (tw_reuse off, or the oldest is not yet old enough).
        if c.tw_reuse != 1 and c.dest_use.get((saddr, daddr, dport), 0) >= c.port_budget_cached(daddr):
            return None
        ehash, tw_map, bound = c.ehash, c.tw, c.bound_ports
        ms, sec = c.ms(t), c.sec(t)

        def check(port: int) -> int:
            if port in bound:
                return PORT_BUSY
            key = (saddr, port, daddr, dport)
            if key in ehash:
                return PORT_BUSY
            tw = tw_map.get(key)
            if tw is None:
                return PORT_FREE
            if tw.expires <= t:
                self._expire_tw(c, key, tw)
                return PORT_FREE
            if tcp_twsk_unique(tw, False, ms, sec, rule=c.reuse_rule, tw_reuse=c.tw_reuse,
                               tw_reuse_delay_ms=c.tw_reuse_delay):
                return PORT_TW_REUSE
            return PORT_BUSY

        return ports.autoselect(c.low, c.high, c.reserved, po, check)

    def _bind0(self, c: SimHost, saddr: int) -> int | None:
        owners = c.owners

        def unowned(port: int) -> bool:
            return (saddr, port) not in owners and (saddr, port) not in c.bind_owned

        port = find_open_port(c.low, c.high, c.reserved, unowned, c.rng)
        if port is not None:
            c.bind_owned[(saddr, port)] = c.bind_owned.get((saddr, port), 0) + 1
            c.bound_ports.add(port)
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

    def _no_port(self, att: Attempt, t: float) -> None:
        c = att.client
        assert c.stack is not None
        att.state = DONE
        att.outcome = c.stack.errno["no_port"]
        att.reason = "local_ports_exhausted"
        att.cause = att.cause or "local_ports_exhausted"
        att.sport = 0
        self._maybe_retry(att, t, "local_ports_exhausted")

    # ---- the path: NAT, load balancer ------------------------------------------------------
    def _route(self, att: Attempt, t: float) -> Route | str:
        saddr, sport, daddr, dport = att.saddr, att.sport, att.daddr, att.dport
        nat_e = None
        if self.nat is not None and att.client.group in self.behind_nat:
            nat_e = self.nat.translate((saddr, sport, daddr, dport), t)
            if nat_e is None:
                return "syn_dropped_nat"
            saddr, sport = nat_e.nat_addr, nat_e.nat_port
        if self.lb is not None and (daddr, dport) == self.vip:
            s = self.lb.syn((saddr, sport), t)
            if s is None:
                return "syn_dropped_lb"
            baddr, bport = self.lb.backends[s.backend]
            return Route(self.lb_backends[s.backend], s.src, s.sport, baddr, bport, nat_e, s)
        srv = self.by_addr.get(daddr)
        if srv is None or srv.role != "server":
            return "syn_dropped_path"
        return Route(srv, saddr, sport, daddr, dport, nat_e, None)

    # ---- a SYN reaches the server ------------------------------------------------------------
    def _syn(self, att: Attempt, t: float) -> None:
        c = att.client
        if t >= att.deadline:
            self._fail(att, t, c.stack.errno["timeout"], att.cause or "connect_timeout")  # type: ignore[union-attr]
            return
        att.tries += 1
        if self.loss and self.rng.random() < self.loss:
            self._unanswered(att, t, "syn_dropped_path")
            return
        r = self._route(att, t)
        if isinstance(r, str):
            self._unanswered(att, t, r)
            return
        att.route = r
        srv = r.server
        skey = (r.daddr, r.dport, r.saddr, r.sport)
        tsval = ((c.tsval(t) + att.tsoff) & MASK32) if att.ts else 0
        live = srv.ehash.get(skey)
        if live is not None and live.att is not att:
            # A SYN on a tuple the server still has open (a NAT/LB reused it): the
            # established socket answers with a challenge ACK (RFC 5961, tcp_validate_incoming).
            self._bad_ack(att, t, r, "syn_hit_established", live)
            return
        isn_from_tw = 0
        tw = srv.tw.get(skey)
        if tw is not None and tw.expires <= t:
            self._expire_tw(srv, skey, tw)
            tw = None
        if tw is not None:
            seg = Segment(syn=True, seq=att.isn, end_seq=(att.isn + 1) & MASK32, has_ts=att.ts, tsval=tsval)
            d = tcp_timewait_state_process(
                tw, seg, t, srv.sec(t), timestamps_sysctl=srv.timestamps, rfc1337=srv.rfc1337,
                oow_ratelimit_s=srv.oow_s, el6=srv.p.el6, paws_counter=srv.paws_tw_counter)
            for name in d.counters:
                srv.inc(name)
            if d.reschedule:
                self._reschedule_tw(srv, skey, tw, t)
            if d.verdict == TW_SYN:
                self._kill_tw(srv, skey, tw)
                isn_from_tw = d.isn
            elif d.verdict == TW_ACK:
                self._bad_ack(att, t, r, "syn_paws_timewait" if d.paws_reject else "syn_hit_timewait", None,
                              tw=(srv, skey, tw))
                return
            elif d.verdict == TW_ACK_SKIPPED:
                self._unanswered(att, t, "syn_paws_timewait" if d.paws_reject else "syn_hit_timewait")
                return
            elif d.verdict == TW_RST:
                self._refused(att, t)
                return
            else:
                self._unanswered(att, t, "syn_hit_timewait")
                return
        lst = srv.listeners.get((r.daddr, r.dport))
        if lst is None:
            srv.inc("TcpOutRsts")
            self._refused(att, t)
            return
        reject = False
        if srv.recycle_cache is not None and not isn_from_tw:
            reject = srv.recycle_cache.syn_rejected(
                r.daddr, r.saddr, att.ts and srv.timestamps != 0, tsval, srv.sec(t),
                srv.p.recycle_drops_tsless_syn)
        v = conn_request(lst, srv.p, from_timewait=bool(isn_from_tw), syncookies=srv.syncookies,
                         recycle_reject=reject)
        for name in v.counters:
            srv.inc(name)
        if v.verdict == DROP:
            self._unanswered(att, t, v.reason)
            return
        if v.verdict == COOKIE:
            srv.inc("TcpExtSyncookiesSent")
        self._established(att, t, r, srv, skey, lst, isn_from_tw, cookie=v.verdict == COOKIE)

    def _established(self, att: Attempt, t: float, r: Route, srv: SimHost, skey: Key, lst: Listener,
                     isn_from_tw: int, cookie: bool) -> None:
        c = att.client
        s_isn = isn_from_tw or clocks.linux_isn(srv.isn_secret, r.daddr, r.saddr, r.dport, r.sport, srv.wall0 + t)
        ts_ok = att.ts and srv.timestamps != 0
        sts_off = clocks.ts_offset(srv.p, srv.ts_secret, srv.timestamps, r.daddr, r.saddr, r.dport, r.sport) \
            if ts_ok else 0
        t_est = t + self.rtt
        conn = Conn(att, srv, (att.saddr, att.sport, att.daddr, att.dport), skey, s_isn, ts_ok, sts_off, t_est)
        att.conn = conn
        att.state = ESTABLISHED
        srv.ehash[skey] = conn
        srv.inc("TcpPassiveOpens")
        att.outcome = "ok"
        att.reason = "ok_after_syn_retry" if att.tries > 1 else ("ok_after_app_retry" if att.cause else "ok")
        att.connect_ms = (t_est - att.t0) * 1000.0
        # The final ACK reaches the listener: a child is created if the accept queue has room.
        ok, counters = syn_recv_sock_ok(lst)
        if not ok:
            for name in counters:
                srv.inc(name)
            lst.syn_queue += 1
            conn.waiting = 1
            self.push(t_est + self._data_rto(1), EV_ACCEPT_RETRY, conn)
            return
        self._enqueue_child(conn, lst, t_est + self.half)

    def _data_rto(self, k: int) -> float:
        """Client data retransmission k (1-based): RTO = srtt + max(4 rttvar, 200 ms),
        doubling (tcp_set_rto(); TCP_RTO_MIN)."""
        return (self.rtt + 0.2) * (2 ** (k - 1))

    def _accept_retry(self, conn: Conn, t: float) -> None:
        srv, att = conn.srv, conn.att
        r = att.route
        assert r is not None
        lst = srv.listeners[(r.daddr, r.dport)]
        ok, counters = syn_recv_sock_ok(lst)
        if ok:
            lst.syn_queue -= 1
            self._enqueue_child(conn, lst, t + self.half)
            return
        for name in counters:
            srv.inc(name)
        conn.waiting += 1
        synack_retries = int(srv.settings.get("net.ipv4.tcp_synack_retries", 5))
        if conn.waiting > synack_retries + 1:
            lst.syn_queue -= 1
            del srv.ehash[conn.skey]
            self._conn_failed(conn, t, att.client.stack.errno["reset"], "ack_dropped_listen_overflow")  # type: ignore[union-attr]
            return
        self.push(t + self._data_rto(conn.waiting), EV_ACCEPT_RETRY, conn)

    def _enqueue_child(self, conn: Conn, lst: Listener, t: float) -> None:
        srv = conn.srv
        if srv.busy < srv.workers:
            self._serve(conn, t)
        else:
            srv.accept_q.append((conn, lst))
            lst.accept_queue += 1

    def _serve(self, conn: Conn, t_accept: float) -> None:
        """The application accepts the connection and answers N requests, then closing starts."""
        srv, att = conn.srv, conn.att
        srv.busy += 1
        conn.served = True
        wl = att.wl
        svc = self.service[srv.group]
        t_done = max(t_accept, conn.t_est + self.half) + svc + self.half
        t_done += (wl.requests_per_connection - 1) * (self.rtt + svc)
        if wl.request_timeout_s is not None and t_done - conn.t_est > wl.request_timeout_s:
            att_fail_t = conn.t_est + wl.request_timeout_s
            self.push(att_fail_t, EV_CLOSE, (conn, "timeout"))
            return
        self.push(t_done + self.half, EV_CLOSE, (conn, "done"))

    # ---- answers other than a SYN-ACK ----------------------------------------------------------
    def _bad_ack(self, att: Attempt, t: float, r: Route, cause: str, live: Conn | None,
                 tw: tuple[SimHost, Key, TimeWaitSock] | None = None) -> None:
        """The server answered the SYN with an ACK that does not acknowledge it (a TIME_WAIT
        or established socket's ACK for the old connection). A client in SYN-SENT answers
        with RST(seq = that ACK's ack number) and keeps its SYN timer (spec §3.5 case C)."""
        c = att.client
        stack = c.stack
        assert stack is not None
        if not att.cause:
            att.cause = cause
        if self.lb is not None and r.lb is not None and self.lb.drop_server_ack_to_syn:
            self._unanswered(att, t, cause)  # F5 bug 515915: the LB drops that ACK
            return
        if stack.abort_on_bad_ack:
            self._fail(att, t + self.rtt, stack.errno["reset"], cause)
            return
        c.inc("TcpOutRsts")
        t_rst = t + self.rtt + self.half
        if r.lb is not None and self.lb is not None:
            self.lb.client_rst(r.lb, t_rst)
        if r.nat is not None and self.nat is not None:
            self.nat.close(r.nat, t_rst, rst=True)
        if tw is not None:
            srv, skey, sock = tw
            seg = Segment(rst=True, seq=sock.rcv_nxt, end_seq=sock.rcv_nxt)
            d = tcp_timewait_state_process(
                sock, seg, t_rst, srv.sec(t_rst), timestamps_sysctl=srv.timestamps, rfc1337=srv.rfc1337,
                oow_ratelimit_s=srv.oow_s, el6=srv.p.el6, paws_counter=srv.paws_tw_counter)
            if d.killed:
                self._kill_tw(srv, skey, sock)
            elif d.reschedule:
                self._reschedule_tw(srv, skey, sock, t_rst)
        elif live is not None:
            # The RST lands exactly on rcv_nxt: the stale established connection is reset.
            live.srv.inc("TcpEstabResets")
            self._abort_conn(live, t_rst)
        # SYN-SENT re-arms the SYN timer to TCP_TIMEOUT_MIN if nothing was retransmitted yet.
        if stack.fast_rearm_s is not None and att.tries == 1:
            self._next_syn(att, t + self.rtt + stack.fast_rearm_s)
        else:
            self._unanswered(att, t, cause)

    def _unanswered(self, att: Attempt, t: float, cause: str) -> None:
        """No SYN-ACK for this try: the next SYN goes out on the client's schedule."""
        if not att.cause:
            att.cause = cause
        stack = att.client.stack
        assert stack is not None
        off = stack.next_syn_after(att.tries)
        if off is None:
            self._schedule_fail(att, att.t0 + stack.give_up_s)
            return
        self._next_syn(att, att.t0 + off)

    def _next_syn(self, att: Attempt, t_next: float) -> None:
        stack = att.client.stack
        assert stack is not None
        if t_next >= att.deadline or t_next >= att.t0 + stack.give_up_s:
            self._schedule_fail(att, min(att.deadline, att.t0 + stack.give_up_s))
            return
        self.push(t_next, EV_SYN, att)

    def _schedule_fail(self, att: Attempt, t: float) -> None:
        self.push(min(t, att.deadline), EV_FAIL, att)

    def _refused(self, att: Attempt, t: float) -> None:
        stack = att.client.stack
        assert stack is not None
        if not att.cause:
            att.cause = "refused"
        if stack.rst_to_syn_retry_s is not None and att.tries < len(stack.syn_offsets):
            self._next_syn(att, t + self.rtt + stack.rst_to_syn_retry_s)
            return
        self._fail(att, t + self.rtt, stack.errno["refused"], "refused")

    def _fail(self, att: Attempt, t: float, errno: str, reason: str) -> None:
        """connect() fails: the client socket goes away (tcp_done: AttemptFails)."""
        c = att.client
        att.state = DONE
        key = (att.saddr, att.sport, att.daddr, att.dport)
        if c.ehash.get(key) is att:
            del c.ehash[key]
            c.release_port(key)
            if att.bound:
                self._release_bind(c, att.saddr, att.sport)
        c.inc("TcpAttemptFails")
        r = att.route
        att.outcome, att.reason, att.cause = errno, reason, att.cause or reason
        if r is not None:
            if r.lb is not None and self.lb is not None:
                self.lb.close(r.lb, t)
            if r.nat is not None and self.nat is not None:
                self.nat.close(r.nat, t, rst=True)
        self._maybe_retry(att, t, reason)

    def _maybe_retry(self, att: Attempt, t: float, cause: str) -> None:
        if att.retries_left > 0:
            self.push(t + att.wl.retry_delay_s, EV_RETRY, (att.wl_i, att.client, att.retries_left - 1, cause))

    # ---- closing ------------------------------------------------------------------------------
    def _close(self, obj: tuple[Conn, str], t: float) -> None:
        conn, why = obj
        att, srv, c = conn.att, conn.srv, conn.att.client
        if conn.served:
            conn.served = False
            srv.busy -= 1
        if att.state == DONE:
            self._next_child(srv, t)
            return
        att.state = DONE
        wl = att.wl
        policy = wl.close
        if why == "timeout":
            att.outcome = c.stack.errno["timeout"]  # type: ignore[union-attr]
            att.reason, att.cause = "request_timeout", att.cause or "request_timeout"
            policy = "client"  # the application gives up and closes
        n = wl.requests_per_connection
        req, resp = wl.request_bytes * n, wl.response_bytes * n
        c_snd_nxt = (att.isn + 1 + req + 1) & MASK32
        s_snd_nxt = (conn.s_isn + 1 + resp + 1) & MASK32
        r = att.route
        assert r is not None
        rst = policy in ("client_rst", "server_rst")
        # The server side goes away (or into TIME_WAIT) ...
        del srv.ehash[conn.skey]
        if policy == "server":
            self._time_wait(srv, conn.skey, t, rcv_nxt=c_snd_nxt, snd_nxt=s_snd_nxt,
                            ts_recent=((c.tsval(t) + conn.cts_off) & MASK32) if conn.ts_ok else 0,
                            ts_ok=conn.ts_ok, ts_offset=conn.sts_off, client_side=False)
        elif policy == "client_rst":
            srv.inc("TcpEstabResets")
        elif policy == "server_rst":
            srv.inc("TcpExtTCPAbortOnData")
            srv.inc("TcpOutRsts")
        # ... and the client side.
        ckey = conn.ckey
        if c.ehash.get(ckey) is att:
            del c.ehash[ckey]
            if policy == "client":
                self._time_wait(c, ckey, t, rcv_nxt=s_snd_nxt, snd_nxt=c_snd_nxt,
                                ts_recent=((srv.tsval(t) + conn.sts_off) & MASK32) if conn.ts_ok else 0,
                                ts_ok=conn.ts_ok, ts_offset=conn.cts_off, client_side=True)
            else:
                c.release_port(ckey)
            if att.bound:
                self._release_bind(c, att.saddr, att.sport)
            if policy == "client_rst":
                c.inc("TcpExtTCPAbortOnData")
                c.inc("TcpOutRsts")
            elif policy == "server_rst":
                c.inc("TcpEstabResets")
        if r.lb is not None and self.lb is not None:
            if policy == "client_rst":
                self.lb.client_rst(r.lb, t)
            else:
                self.lb.close(r.lb, t)
        if r.nat is not None and self.nat is not None:
            self.nat.close(r.nat, t, rst=rst)
        self._next_child(srv, t)

    def _next_child(self, srv: SimHost, t: float) -> None:
        while srv.accept_q and srv.busy < srv.workers:
            nxt, lst = srv.accept_q.popleft()
            lst.accept_queue -= 1
            if nxt.att.state != ESTABLISHED:
                continue
            self._serve(nxt, t)

    def _abort_conn(self, conn: Conn, t: float) -> None:
        """A live connection reset by a RST that hit its rcv_nxt."""
        att = conn.att
        if att.state != ESTABLISHED:
            return
        srv, c = conn.srv, att.client
        srv.ehash.pop(conn.skey, None)
        if c.ehash.get(conn.ckey) is att:
            del c.ehash[conn.ckey]
            c.release_port(conn.ckey)
        att.state = DONE
        att.outcome = c.stack.errno["reset"]  # type: ignore[union-attr]
        att.reason, att.cause = "reset", att.cause or "reset"

    def _conn_failed(self, conn: Conn, t: float, errno: str, reason: str) -> None:
        att, c = conn.att, conn.att.client
        att.state = DONE
        if c.ehash.get(conn.ckey) is att:
            del c.ehash[conn.ckey]
            c.release_port(conn.ckey)
        att.outcome, att.reason, att.cause = errno, reason, att.cause or reason
        r = att.route
        if r is not None and r.lb is not None and self.lb is not None:
            self.lb.client_rst(r.lb, t)
        if r is not None and r.nat is not None and self.nat is not None:
            self.nat.close(r.nat, t, rst=True)

    # ---- TIME_WAIT -----------------------------------------------------------------------------
    def _time_wait(self, h: SimHost, key: Key, t: float, *, rcv_nxt: int, snd_nxt: int, ts_recent: int,
                   ts_ok: bool, ts_offset: int, client_side: bool) -> None:
        """mirrors tcp_time_wait() (net/ipv4/tcp_minisocks.c) for the side that closed first."""
        if len(h.tw) >= h.max_tw:
            # inet_twsk_alloc() fails: no TIME_WAIT at all, the port is free at once.
            h.inc("TcpExtTCPTimeWaitOverflow")
            if client_side:
                h.release_port(key)
            return
        now_sec = h.sec(t)
        stamp = now_sec if ts_ok else 0
        recycle_ok = False
        if h.tw_recycle and ts_ok and h.recycle_cache is not None:
            recycle_ok = h.recycle_cache.remember_stamp(key[0], key[2], ts_recent, stamp, now_sec)
        if h.is_linux:
            rto = self.rtt + 0.2  # icsk_rto after the handshake: srtt + max(rttvar, TCP_RTO_MIN)
            timeo = tw_timeout_s(rto, h.hz, recycle_ok)
        else:
            timeo = h.stack.time_wait_s if h.stack is not None else TCP_TIMEWAIT_LEN
        kill = timeo <= 4.0
        if h.deathrow:
            expires, kill = deathrow_expiry(t, timeo, h.hz, h.deathrow_phase)
        else:
            expires = t + timeo
        tw = TimeWaitSock(rcv_nxt=rcv_nxt, snd_nxt=snd_nxt, ts_recent=ts_recent, ts_recent_stamp=stamp,
                          ts_offset=ts_offset, entry_stamp_ms=h.ms(t), expires=expires, kill=kill)
        h.tw[key] = tw
        cls = round(timeo, 6)
        q = h.tw_fifo.get(cls)
        if q is None:
            q = h.tw_fifo[cls] = deque()
        q.append((expires, key, tw))
        if h.tw_count_at == "schedule":
            h.inc("TcpExtTWKilled" if kill else "TcpExtTW")

    def _reschedule_tw(self, h: SimHost, key: Key, tw: TimeWaitSock, t: float) -> None:
        """inet_twsk_reschedule(tw, TCP_TIMEWAIT_LEN)"""
        if h.deathrow:
            tw.expires, _ = deathrow_expiry(t, TCP_TIMEWAIT_LEN, h.hz, h.deathrow_phase)
        else:
            tw.expires = t + TCP_TIMEWAIT_LEN
        tw.kill = False
        q = h.tw_fifo.setdefault(TCP_TIMEWAIT_LEN, deque())
        q.append((tw.expires, key, tw))

    def _kill_tw(self, h: SimHost, key: Key, tw: TimeWaitSock) -> None:
        """Early removal (RST, SYN accepted): not counted as TW before 5.18."""
        tw.alive = False
        if h.tw.get(key) is tw:
            del h.tw[key]
            if h.role == "client":
                h.release_port(key)

    def _expire_tw(self, h: SimHost, key: Key, tw: TimeWaitSock) -> None:
        if h.tw.get(key) is not tw or not tw.alive:
            return
        tw.alive = False
        del h.tw[key]
        if h.role == "client":
            h.release_port(key)
        if h.tw_count_at != "schedule":
            h.inc("TcpExtTWKilled" if tw.kill else "TcpExtTW")

    def _purge(self, h: SimHost, t: float) -> None:
        for q in h.tw_fifo.values():
            while q and q[0][0] <= t:
                exp, key, tw = q.popleft()
                if tw.alive and tw.expires <= exp:
                    self._expire_tw(h, key, tw)

    # ---- timeline and result -------------------------------------------------------------------
    def _sample(self, ts: float) -> None:
        for h in self.hosts.values():
            self._purge(h, ts)
            s = self.samples[h.name]
            s["time_wait"].append(len(h.tw))
            s["established"].append(len(h.ehash))
            if h.role == "client":
                for (la, ra, rp), n in h.dest_use.items():
                    k = (h.name, la, ra, rp)
                    series = self.port_series.get(k)
                    if series is None:
                        series = self.port_series[k] = [0] * (len(s["time_wait"]) - 1)
                    series.append(n)
        for k, series in self.port_series.items():
            want = len(self.samples[k[0]]["time_wait"])
            while len(series) < want:
                series.append(0)

    def _record_end_state(self) -> None:
        for h in self.hosts.values():
            self._purge(h, self.end)
            self.end_state[h.name] = {"time_wait": len(h.tw), "established": len(h.ehash)}

    def _freeze(self) -> AttemptTable:
        """Attempts to columns, once, at the end (the run itself keeps raw ints)."""
        import numpy as np

        atts = self.atts
        n = len(atts)
        voc_out: dict[str, int] = {}
        voc_reason: dict[str, int] = {}

        def code(voc: dict[str, int], name: str) -> int:
            if not name:
                return -1
            c = voc.get(name)
            if c is None:
                c = voc[name] = len(voc)
            return c

        host_names = list(self.hosts)
        host_idx = {h: i for i, h in enumerate(host_names)}
        wl_names = [w.name for w in self.sc.workload]
        none = (0, 0, 0, 0)
        routes = [(a.route.saddr, a.route.sport, a.route.daddr, a.route.dport) if a.route else none
                  for a in atts]
        cols: dict[str, Any] = {
            "t": np.fromiter((a.t0 for a in atts), "f8", n),
            "connect_ms": np.fromiter((a.connect_ms for a in atts), "f8", n),
            "syn_tries": np.fromiter((a.tries for a in atts), "i2", n),
            "outcome": np.fromiter((code(voc_out, a.outcome) for a in atts), "i2", n),
            "reason": np.fromiter((code(voc_reason, a.reason) for a in atts), "i2", n),
            "cause": np.fromiter((code(voc_reason, a.cause) for a in atts), "i2", n),
            "workload": np.fromiter((a.wl_i for a in atts), "i2", n),
            "client": np.fromiter((host_idx[a.client.name] for a in atts), "i4", n),
            "server": np.fromiter((host_idx[a.route.server.name] if a.route else -1 for a in atts), "i4", n),
            "sport": np.fromiter((a.sport for a in atts), "i4", n),
            "dport": np.fromiter((a.dport for a in atts), "i4", n),
            "srv_sport": np.fromiter((r[1] for r in routes), "i4", n),
            "srv_dport": np.fromiter((r[3] for r in routes), "i4", n),
        }
        raw = {
            "src": np.fromiter((a.saddr for a in atts), "i8", n),
            "dst": np.fromiter((a.daddr for a in atts), "i8", n),
            "srv_src": np.fromiter((r[0] for r in routes), "i8", n),
            "srv_dst": np.fromiter((r[2] for r in routes), "i8", n),
        }
        allv = np.unique(np.concatenate([v for v in raw.values()] + [np.zeros(1, "i8")]))
        allv = allv[allv != 0]
        for k, v in raw.items():
            idx = np.searchsorted(allv, v).astype("i4")
            cols[k] = np.where(v == 0, -1, idx).astype("i4")
        vocab = {
            "outcome": list(voc_out), "reason": list(voc_reason), "workload": wl_names,
            "host": host_names, "addr": [int2ip(int(a)) for a in allv],
        }
        return AttemptTable(cols=cols, vocab=vocab)

    def _result(self) -> RunResult:
        import numpy as np

        table = self._freeze()
        tl = Timeline(step_s=self.step)
        n = self.nsteps
        tl.t = [round(k * self.step, 6) for k in range(n)]
        b = np.clip((table.cols["t"] // self.step).astype(int), 0, n - 1)
        failed = table.failed_mask()
        codes = [table.code("reason", r) for r in ("ok_after_syn_retry", "ok_after_app_retry")]
        delayed = np.isin(table.cols["reason"], codes)
        tl.attempts = np.bincount(b, minlength=n).tolist()
        tl.failed = np.bincount(b, weights=failed, minlength=n).astype(int).tolist()
        tl.delayed = np.bincount(b, weights=delayed, minlength=n).astype(int).tolist()
        tl.ok = [a - f for a, f in zip(tl.attempts, tl.failed, strict=True)]
        tl.hosts = {h: {k: v[:n] for k, v in s.items()} for h, s in self.samples.items()}
        for (hn, la, ra, rp), series in self.port_series.items():
            h = self.hosts[hn]
            key = f"{hn} {int2ip(la)} -> {int2ip(ra)}:{rp}"
            tl.ports[key] = PortSeries(host=hn, src=int2ip(la), dst=f"{int2ip(ra)}:{rp}",
                                       budget=h.port_budget_cached(ra), in_use=series[:n])
        hosts = {
            h.name: HostInfo(name=h.name, group=h.group, role=h.role, profile=h.p.name,
                             addresses=[int2ip(a) for a in h.addrs],
                             settings={k: (sorted(v) if isinstance(v, frozenset) else v)
                                       for k, v in h.settings.items()})
            for h in self.hosts.values()
        }
        meta: dict[str, Any] = {
            "engine": {"events": self.stats.events, "attempts": self.stats.attempts,
                       "wall_s": round(self.stats.wall_s, 3)},
            "end_state": self.end_state,
        }
        if self.nat is not None:
            meta["nat"] = dict(self.nat.stats)
        if self.lb is not None:
            meta["lb"] = dict(self.lb.stats)
        return RunResult(source="simulate", scenario=self.sc.name, duration_s=self.end, attempts=table,
                         timeline=tl, counters={h.name: dict(h.counters) for h in self.hosts.values()},
                         hosts=hosts, seed=self.sc.seed, meta=meta)


def simulate(sc: Scenario, progress: Callable[[float, int], None] | None = None) -> RunResult:
    return Engine(sc, progress).run()
