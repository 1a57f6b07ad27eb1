"""A simulated host: the kernel tables and clocks the model rules read and write.

Everything here is state; the rules are in tcpreuse/model and the sequencing in engine.py.
Keys of `ehash` and `tw` identify a 4-tuple from this host's point of view (local addr,
local port, remote addr, remote port) as one int, like the kernel's ehash (one hash of
the 4-tuple, no tuple object): a client's is its destination's index (DestPorts: local
addr, remote addr, remote port) and the local port (client_sock_key); a server's is its
listening endpoint's index (Endpoint: local addr, port), the remote address and the
remote port (server_sock_key). A host is a client or a server, never both, so the two
kinds never share a table.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from ..model import clocks, timers
from ..model.listener import Listener, ListenRules
from ..model.ports import HostPortPool, LinuxConnectPorts
from ..model.profiles import Profile
from ..model.recycle import PeerCache
from ..model.stacks import client_stack, port_range
from ..model.timewait import TCP_TIMEWAIT_LEN, DeathRow, TimeWaitSock

# A socket-table key: one int below 2**62 (see the module's docstring). Typed `object` so
# that mypyc boxes it once, when it is made, and not again at every dict access.
Key = object


def client_sock_key(dest: DestPorts, lport: int) -> Key:
    """A client socket's key: its destination's index and its local port."""
    return (dest.index << 16) | lport


def server_sock_key(ep: Endpoint, raddr: int, rport: int) -> Key:
    """A server socket's key: its listening endpoint's index, the remote address and port
    (13 + 32 + 16 bits: a short int, hashed and compared in C without a tuple)."""
    return ep.base | (raddr << 16) | rport


def owner_key(addr: int, port: int) -> tuple[int, ...]:
    """An (addr, port) key of the bind-owner tables, boxed once (see client_sock_key)."""
    return (addr, port)


def listen_key(addr: int, port: int) -> int:
    """A listener's key: (local addr, port) as one int."""
    return (addr << 16) | port


def unhash(table: dict[Key, Any], key: Key, sk: object) -> bool:
    """Remove `key` from a socket table if it maps to `sk`; True if it did. (A lookup and a
    delete: with int keys the second hash lookup is cheaper than dict.pop(key, None) with
    a default, which compiled code calls as a generic method.)"""
    if table.get(key) is sk:
        del table[key]
        return True
    return False


class TwQueue:
    """TIME_WAIT sockets of one length in scheduling order, hence in expiry order, as
    parallel lists of expiry, key and socket (no tuple per entry); read from `head` on (lists
    and an index: cheaper than a deque in compiled code). An entry is stale when its
    socket died or was rescheduled."""

    __slots__ = ("exp", "head", "keys", "tws")

    def __init__(self) -> None:
        self.exp: list[float] = []
        self.keys: list[Key] = []
        self.tws: list[TimeWaitSock] = []
        self.head = 0

    def __bool__(self) -> bool:
        return self.head < len(self.exp)

    def first(self) -> float:
        """The earliest entry's expiry (inf when empty)."""
        return self.exp[self.head] if self.head < len(self.exp) else math.inf

    def push(self, expires: float, key: Key, tw: TimeWaitSock) -> None:
        self.exp.append(expires)
        self.keys.append(key)
        self.tws.append(tw)

    def consumed(self, head: int) -> None:
        """Entries before `head` are done with (compacted once they are half the lists)."""
        if head >= len(self.exp):
            self.exp.clear()
            self.keys.clear()
            self.tws.clear()
            head = 0
        elif head >= 4096 and 2 * head >= len(self.exp):
            del self.exp[:head]
            del self.keys[:head]
            del self.tws[:head]
            head = 0
        self.head = head


class Endpoint:
    """A server's listening (local addr, port) and its listener; `base` is its index in the
    high bits of server_sock_key()."""

    __slots__ = ("base", "lst")

    def __init__(self, lst: Listener, index: int) -> None:
        if index >= 1 << 13:
            raise ValueError("more than 8192 listening endpoints on one host")
        self.lst = lst
        self.base = index << 48


class DestPorts:
    """One client's local ports toward one destination (local addr, remote addr, port).

    `occ[port - low]` is 1 while a socket or TIME_WAIT holds the port toward this
    destination and 2 for a reserved port, so connect()'s scan can skip held ports in C;
    `tws` keeps this destination's TIME_WAIT sockets in creation order (the oldest is the
    first that tcp_tw_reuse could take over)."""

    __slots__ = ("held", "index", "la", "occ", "ra", "rp", "tws")

    def __init__(self, index: int, la: int, ra: int, rp: int, low: int, high: int,
                 reserved: frozenset[int]) -> None:
        self.index = index  # its place in SimHost.dest_list (client_sock_key)
        self.la, self.ra, self.rp = la, ra, rp
        self.occ = bytearray(high - low + 1)
        for p in reserved:
            if low <= p <= high:
                self.occ[p - low] = 2
        self.held = 0
        self.tws: deque[TimeWaitSock] = deque()

    def oldest_tw(self) -> TimeWaitSock | None:
        q = self.tws
        while q and not q[0].alive:
            q.popleft()
        return q[0] if q else None


def counter_names(p: Profile) -> list[str]:
    """The /proc/net/{snmp,netstat} counters this kernel has, of those the model moves."""
    if not p.is_linux:
        return []
    names = [
        "TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets", "TcpOutRsts",
        "TcpExtTW", "TcpExtTWKilled", "TcpExtTWRecycled", "TcpExtPAWSActive", "TcpExtPAWSEstab",
        "TcpExtListenOverflows", "TcpExtListenDrops", "TcpExtTCPAbortOnData", "TcpExtSyncookiesSent",
    ]
    if p.has_tw_recycle:
        names.append("TcpExtPAWSPassive")  # gone with tcp_tw_recycle in 4.12
    if p.has_counter_tw_overflow:
        names.append("TcpExtTCPTimeWaitOverflow")
    if p.has_counter_paws_timewait:
        names.append("TcpExtPAWSTimewait")
    if p.has_reqq_counters:
        names += ["TcpExtTCPReqQFullDrop", "TcpExtTCPReqQFullDoCookies"]
    if p.oow_ratelimit:
        names.append("TcpExtTCPACKSkippedTimeWait")
    return names


class SimHost:
    def __init__(self, name: str, group: str, role: str, profile: Profile, settings: dict[str, Any],
                 params: dict[str, Any], addrs: list[int], seed: int, rng: random.Random) -> None:
        self.name, self.group, self.role = name, group, role
        self.index = -1  # set by the engine: its place among the run's hosts
        self.is_client = role == "client"  # else a server
        self.p = profile
        self.settings = settings
        self.params = params
        self.addrs = addrs
        self.addr = addrs[0]
        self.rng = rng
        # bound once: compiled code would look the method up on every random ISN
        self.getrandbits: Callable[[int], int] = rng.getrandbits
        self.is_linux = profile.is_linux
        self.hz = int(params.get("hz") or 1000)
        up = params.get("uptime_s")
        self.uptime = float(up) if up is not None else rng.uniform(3600.0, 30 * 86400.0)
        self.wall0 = 1_700_000_000.0 + rng.uniform(0, 86400.0)
        self.deathrow_phase = rng.uniform(0, 7.5)
        self.jiffies0 = timers.jiffies0(self.hz, self.uptime - float(params.get("jiffies_lag_s") or 0.0))
        self.timer_wheel = profile.timer_wheel
        self._init_clocks()
        self.isn_secret = clocks.derive_secret(seed, name, "isn")
        self.port_secret = clocks.derive_secret(seed, name, "port")
        self.ts_secret = clocks.derive_secret(seed, name, "ts")
        # a measured per-host-pair TS offset (model parameter ts_offsets), else None: drawn
        measured = (params.get("ts_offsets") or {}).get(name)
        self.ts_measured: int | None = int(measured) if measured is not None else None
        self.counters: dict[str, int] = dict.fromkeys(counter_names(profile), 0)
        # The counters moved once or twice per connection are plain fields during the run
        # (a str-keyed dict update each time is measurable); flush_counters() adds them in.
        self.n_active_opens = self.n_passive_opens = self.n_tw = self.n_tw_killed = 0
        self.ehash: dict[Key, Any] = {}
        self.tw: dict[Key, TimeWaitSock] = {}
        self.tw_fifo: dict[float, TwQueue] = {}
        self.tw_next = math.inf  # the earliest tw_fifo head: purge() has nothing to do before it
        self._tw_cls_timeo = -1.0  # the last TIME_WAIT length seen and its tw_fifo queue
        self._tw_q = TwQueue()

        s = settings
        if self.is_linux:
            self.tw_reuse = int(s["net.ipv4.tcp_tw_reuse"])
            self.tw_reuse_delay = int(s.get("net.ipv4.tcp_tw_reuse_delay", 1000))
            self.tw_recycle = int(s.get("net.ipv4.tcp_tw_recycle", 0))
            self.timestamps = int(s["net.ipv4.tcp_timestamps"])
            self.max_tw = int(s["net.ipv4.tcp_max_tw_buckets"])
            self.rfc1337 = int(s["net.ipv4.tcp_rfc1337"])
            self.syncookies = int(s["net.ipv4.tcp_syncookies"])
            self.somaxconn = int(s["net.core.somaxconn"])
            self.oow_s = int(s["net.ipv4.tcp_invalid_ratelimit"]) / 1000.0 if profile.oow_ratelimit else None
            self.reserved: frozenset[int] = s["net.ipv4.ip_local_reserved_ports"]
        else:
            self.tw_reuse = self.tw_reuse_delay = self.tw_recycle = 0
            self.timestamps = 1
            self.max_tw = 1 << 30
            self.rfc1337 = 0
            self.syncookies = 0
            self.somaxconn = 1 << 16
            self.oow_s = None
            self.reserved = frozenset()
        self.reuse_rule = profile.tw_reuse_rule
        self.paws_tw_counter = "TcpExtPAWSTimewait" if profile.has_counter_paws_timewait else "TcpExtPAWSEstab"
        self.tw_count_at_schedule = (profile.tw_count_at if self.is_linux else "schedule") == "schedule"
        self.deathrow = self.is_linux and profile.tw_timer == "deathrow"
        self.death_row = DeathRow(self.hz, self.deathrow_phase)
        self.el6 = profile.el6
        self.recycle_drops_tsless = profile.recycle_drops_tsless_syn
        self.synack_retries = int(s.get("net.ipv4.tcp_synack_retries", 5))
        epoch = profile.port_secret_epoch_s
        self.port_epoch_s = epoch if epoch is not None else 0.0
        self.isn_random: bool = params.get("isn") == "random"
        self.behind_nat = False
        self.service_s = 0.0

        # client side
        self.low, self.high = port_range(profile, settings)
        self.connect_ports: LinuxConnectPorts | None = None
        self.pool: HostPortPool | None = None
        self.bind_owned: dict[tuple[int, ...], int] = {}  # (addr, port) -> bind()/listen owners
        self.bound_ports: set[int] = set()  # ports with a bind()-created bucket (any addr)
        self.owners: dict[tuple[int, ...], int] = {}  # (addr, port) -> sockets (incl. TW)
        self.track_owners = False  # only bind(addr, 0) needs owners; the engine turns it on
        self.dests: dict[tuple[int, ...], DestPorts] = {}  # (laddr, raddr, rport)
        self.dest_list: list[DestPorts] = []  # the same, by index (client_sock_key)
        self._dest_last: DestPorts | None = None  # dest()'s last answer, for these three
        self._dest_la = self._dest_ra = self._dest_rp = 0
        self._budget_key = -1
        self._budget = 0
        self.bound_in_range = False  # a bind()-owned port lies in the ephemeral range
        # client stack facts (model.stacks), flattened for the engine
        self.syn_offsets: tuple[float, ...] = ()
        self.syn_rto_j: tuple[int, ...] = ()  # Linux: SYNs follow the retransmission timer
        self.syn_budget_ms = 0  # Linux 5.4+: tcp_write_timeout()'s SYN-SENT time budget
        self.give_up_s = 0.0
        self.offers_ts = False
        self.client_tw_s = TCP_TIMEWAIT_LEN
        self.fast_rearm_j = 0
        self.rst_to_syn_retry_s = -1.0
        self.abort_on_bad_ack = False
        self.errno_no_port = self.errno_timeout = self.errno_refused = self.errno_reset = ""
        if role == "client":
            st = client_stack(profile, settings, params)
            self.syn_offsets, self.give_up_s, self.offers_ts = st.syn_offsets, st.give_up_s, st.offers_ts
            self.syn_rto_j, self.syn_budget_ms = st.syn_rto_j, st.syn_budget_ms
            self.client_tw_s = st.time_wait_s
            self.fast_rearm_j = st.fast_rearm_j
            self.rst_to_syn_retry_s = st.rst_to_syn_retry_s if st.rst_to_syn_retry_s is not None else -1.0
            self.abort_on_bad_ack = st.abort_on_bad_ack
            self.errno_no_port, self.errno_timeout = st.errno["no_port"], st.errno["timeout"]
            self.errno_refused, self.errno_reset = st.errno["refused"], st.errno["reset"]
            if self.is_linux:
                self.connect_ports = LinuxConnectPorts(profile.port_alg, rng, self.port_secret ^ 0x7AB1E)
            else:
                self.pool = HostPortPool(self.low, self.high - self.low + 1,
                                         str(params.get("port_order", "sequential")), rng)
        # server side
        self.endpoints: dict[int, Endpoint] = {}  # listen_key(addr, port) -> endpoint
        self._ep_last: Endpoint | None = None  # endpoint()'s last answer, for these two
        self._ep_addr = self._ep_port = -1
        self.listen_rules = ListenRules(profile)
        self.workers = 0
        self.busy = 0
        self.accept_q: deque[Any] = deque()
        self.recycle_cache = PeerCache(profile.recycle_cache_key) if self.tw_recycle else None

    # ---- clocks (model.clocks, with the per-host constants folded in) ------------------------
    def _init_clocks(self) -> None:
        self.sec_base = clocks.seconds_clock(self.p, self.uptime, self.wall0,
                                             float(self.params.get("tick_delay_s") or 0.0))
        self.ts_base, self.ts_rate = clocks.tsval_clock(self.p, self.hz, self.uptime)

    def timer_fires(self, t_arm: float, timeout_j: int) -> float:
        """When a timer_list timer armed at t_arm for timeout_j jiffies fires (model.timers)."""
        return timers.timer_fires_s(t_arm, timeout_j, self.hz, self.jiffies0, self.timer_wheel)

    def sec(self, t: float) -> int:
        """The seconds clock (clocks.seconds_clock)."""
        return int(self.sec_base + t)

    def ms(self, t: float) -> int:
        """tcp_clock_ms(): monotonic ms since boot (tw_entry_stamp, tcp_tw_reuse_delay)."""
        return int((self.uptime + t) * 1000)

    def tsval(self, t: float) -> int:
        """The TS option clock (clocks.tsval_clock)."""
        return int(self.ts_base + t * self.ts_rate) & 0xFFFFFFFF

    def tw_queue(self, timeo: float) -> TwQueue:
        """The tw_fifo queue for TIME_WAITs of length `timeo` (one queue per length, so each
        is in expiry order). Lengths are classed by round(timeo, 6); a host sees one or two
        lengths, so the last one's class is remembered (round() with digits is slow)."""
        if timeo != self._tw_cls_timeo:
            cls = round(timeo, 6)
            q = self.tw_fifo.get(cls)
            if q is None:
                q = self.tw_fifo[cls] = TwQueue()  # (queues are never replaced: it can be kept)
            self._tw_cls_timeo, self._tw_q = timeo, q
        return self._tw_q

    def count_tw(self, killed: bool) -> None:
        """TcpExtTWKilled (reaped from the recycle calendar) or TcpExtTW."""
        if killed:
            self.n_tw_killed += 1
        else:
            self.n_tw += 1

    def flush_counters(self) -> None:
        """Add the counters kept in fields into `counters` (once, at the end of a run)."""
        for name, n in (("TcpActiveOpens", self.n_active_opens), ("TcpPassiveOpens", self.n_passive_opens),
                        ("TcpExtTW", self.n_tw), ("TcpExtTWKilled", self.n_tw_killed)):
            if n:
                self.inc(name, n)
        self.n_active_opens = self.n_passive_opens = self.n_tw = self.n_tw_killed = 0

    def inc(self, name: str, n: int = 1) -> None:
        """Count, if this kernel has the counter."""
        c = self.counters
        v = c.get(name)
        if v is not None:
            c[name] = v + n

    # ---- local port accounting (clients) ---------------------------------------------------
    def dest(self, la: int, ra: int, rp: int) -> DestPorts:
        # A client mostly talks to one destination: the last one is remembered.
        d = self._dest_last
        if d is not None and la == self._dest_la and ra == self._dest_ra and rp == self._dest_rp:
            return d
        d = self.dests.get((la, ra, rp))
        if d is None:
            d = DestPorts(len(self.dest_list), la, ra, rp, self.low, self.high, self.reserved)
            self.dests[(la, ra, rp)] = d
            self.dest_list.append(d)
        self._dest_la, self._dest_ra, self._dest_rp, self._dest_last = la, ra, rp, d
        return d

    def find_dest(self, la: int, ra: int, rp: int) -> DestPorts | None:
        """dest() if this client has ever had a socket toward (la, ra, rp), without making one."""
        return self.dests.get((la, ra, rp))

    def listen(self, addr: int, port: int, lst: Listener) -> None:
        """A listening socket on (addr, port)."""
        self.endpoints[listen_key(addr, port)] = Endpoint(lst, len(self.endpoints))
        self._ep_addr = -1  # (forget endpoint()'s last answer)

    def endpoint(self, addr: int, port: int) -> Endpoint | None:
        """The listening endpoint on (addr, port), or None. A server mostly serves one:
        the last answer is remembered, as dest() does."""
        if addr == self._ep_addr and port == self._ep_port:
            return self._ep_last
        ep = self.endpoints.get(listen_key(addr, port))
        self._ep_addr, self._ep_port, self._ep_last = addr, port, ep
        return ep

    def hold_port(self, key: Key) -> None:
        k = cast(int, key)
        d = self.dest_list[k >> 16]
        la, lp = d.la, k & 0xFFFF
        d.held += 1
        if self.pool is None:  # occ is read by Linux connect()'s scan only
            i = lp - self.low
            if 0 <= i < len(d.occ):
                d.occ[i] = 1
        if self.track_owners:
            o = owner_key(la, lp)
            self.owners[o] = self.owners.get(o, 0) + 1
        if self.pool is not None:
            self.pool.hold(lp)

    def release_port(self, key: Key) -> None:
        k = cast(int, key)
        d = self.dest_list[k >> 16]  # exists: the key was made from it
        la, lp = d.la, k & 0xFFFF
        d.held -= 1
        if self.pool is None:
            i = lp - self.low
            if 0 <= i < len(d.occ) and d.occ[i] == 1:
                d.occ[i] = 0
        if self.track_owners:
            o = owner_key(la, lp)
            c = self.owners[o] - 1
            if c:
                self.owners[o] = c
            else:
                del self.owners[o]
        if self.pool is not None:
            self.pool.release(lp)

    def port_budget_cached(self) -> int:
        """port_budget(), recomputed only when the set of bind()-owned ports changes."""
        key = len(self.bound_ports)
        if self._budget_key != key:
            self._budget_key, self._budget = key, self.port_budget()
        return self._budget

    def port_pool(self) -> int:
        """Ports of the range outside ip_local_reserved_ports (Linux), or the host-wide pool:
        what the timeline's ports-in-use series is measured against (a bind()-owned port is
        one of those in use, so it is not taken out as port_budget() does for connect())."""
        if self.pool is not None:
            return self.pool.n
        return sum(1 for p in range(self.low, self.high + 1) if p not in self.reserved)

    def port_budget(self) -> int:
        """Ports connect() may use toward one destination (Linux), or the host-wide pool."""
        if self.pool is not None:
            return self.pool.n
        return sum(
            1 for p in range(self.low, self.high + 1) if p not in self.reserved and p not in self.bound_ports
        )
