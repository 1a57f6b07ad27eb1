"""A layer-4 load balancer: VIP -> back end, optionally with source NAT (docs/kernel.md §11).

Sessions are keyed by the client tuple as the LB sees it. After a connection closes the
session (and its SNAT port) is held for `session_hold_s` unless `ignore_msl` (A10
"ignore-tcp-msl": "reclaim TCP resource immediately without MSL"). What a new SYN does on
a held session, and whether a client RST ends a session at once, are undocumented
vendor behaviour [I] and therefore parameters.
"""

from __future__ import annotations

import math
import random
from typing import Final

from .ports import PortBitmap

ACTIVE: Final = 0
HELD: Final = 1



def client_key(addr: int, port: int) -> int:
    """The session table's key for (client addr, client port) as the LB sees them: one int
    (hashed and compared without building a tuple per SYN)."""
    return (addr << 16) | port


class Session:
    """One client tuple's session (a plain class: mypyc makes it a native struct).

    A removed session is recycled for a later SYN once no expiry-queue entry refers to it
    (`nq`); `gen` counts its lives, so a holder that kept it past its removal (an attempt
    whose session the LB dropped) compares the `gen` it saw with the current one and, if
    they differ, leaves it alone, as it would leave a removed session."""

    __slots__ = ("backend", "caddr", "cport", "expires", "gen", "key", "nq", "sport", "src", "state")

    def __init__(self, caddr: int, cport: int, backend: int, src: int, sport: int, state: int = ACTIVE,
                 expires: float = 0.0, key: object = None) -> None:
        self.caddr, self.cport = caddr, cport  # the client as the LB sees it
        # client_key(caddr, cport) (given, or made here), kept as the very object the session
        # table holds (typed object so compiled code does not re-box it): removal finds it
        # by identity.
        self.key: object = key if key is not None else client_key(caddr, cport)
        self.backend = backend  # index into the back-end list
        self.src = src  # source address toward the back end (client's, or an SNAT address)
        self.sport = sport
        self.state = state
        self.expires = expires
        self.gen = 0
        self.nq = 0  # entries of the LB's expiry queue that refer to this session

    def renew(self, caddr: int, cport: int, backend: int, src: int, sport: int, key: object) -> None:
        """The next life of a removed session, for a new SYN (an ordinary method: mypyc's
        compiled __init__ would not release the old key)."""
        self.caddr, self.cport, self.key = caddr, cport, key
        self.backend, self.src, self.sport = backend, src, sport
        self.state = ACTIVE
        self.expires = 0.0
        self.gen += 1


class L4LoadBalancer:
    def __init__(self, backends: list[tuple[int, int]], scheduler: str, snat: list[int] | None,
                 snat_port_order: str, snat_port_range: tuple[int, int], session_hold_s: float,
                 ignore_msl: bool, held_session_syn: str, rst_ends_session: bool,
                 drop_server_ack_to_syn: bool, rng: random.Random) -> None:
        self.backends = backends  # [(addr, port)]
        self.scheduler = scheduler
        self.round_robin = scheduler == "round_robin"  # the common case: one bool test per SYN
        self.snat = snat
        self.snat_order = snat_port_order
        self.lo, self.hi = snat_port_range
        self.hold = 0.0 if ignore_msl else session_hold_s
        self.held_session_syn = held_session_syn
        self.rst_ends_session = rst_ends_session
        self.drop_server_ack_to_syn = drop_server_ack_to_syn
        self.rng = rng
        self.rr = 0
        self.rover: dict[int, int] = {}
        self.sessions: dict[object, Session] = {}  # client_key() -> session
        self.snat_used: dict[tuple[int, ...], PortBitmap] = {}  # (backend, snat addr) -> ports
        # Held sessions in order of closing (so in order of expiry: the hold is constant),
        # one entry per close, read from `exp_head` on (a list and an index, compacted now
        # and then: cheaper than a deque in compiled code). An entry keeps no time of its
        # own: the session's last entry is due at its `expires`, and an earlier one (the
        # session was re-used and closed again: `nq` > 1) is stale.
        self.expiry_s: list[Session] = []
        self.exp_head = 0
        self.next_expiry = math.inf  # expiry_s[exp_head]'s time: expire() is one comparison until then
        self.active = [0] * len(backends)
        # Removed sessions no queue entry refers to: free[:n_free], a stack that never
        # shrinks (list.pop() resizes the list as it shrinks, append() as it grows back).
        self.free: list[Session] = []
        self.n_free = 0
        self.n_sessions = self.n_snat_failed = self.n_held_reused = self.n_held_dropped = 0

    @property
    def stats(self) -> dict[str, int]:
        """Sessions created, SYNs dropped for want of an SNAT port, held sessions reused or
        dropped by a new SYN (counted in plain fields on the hot path)."""
        return {"sessions": self.n_sessions, "snat_failed": self.n_snat_failed,
                "held_reused": self.n_held_reused, "held_dropped": self.n_held_dropped}

    def held_met(self) -> int:
        """SYNs that met a session still held after close (re-used for its back end or
        dropped by it): what :func:`ignore_msl_consulted` reads."""
        return self.n_held_reused + self.n_held_dropped

    def _bitmap(self, backend: int, addr: int) -> PortBitmap:
        b = self.snat_used.get((backend, addr))
        if b is None:
            b = self.snat_used[(backend, addr)] = PortBitmap(self.lo, self.hi)
        return b

    def _remove(self, s: Session) -> None:
        if s.state < 0:
            return
        # A live session (state >= 0) is always the one its key maps to: syn() files a new
        # session only after returning or removing the one it found. So one `del`, no
        # lookup first (dict.pop(k, None) would be a generic call in compiled code).
        del self.sessions[s.key]
        if self.snat is not None:
            self._bitmap(s.backend, s.src).free(s.sport)
        if s.state == ACTIVE:
            a = self.active  # (a[i] = a[i] - 1: `-=` on a list item is a generic op compiled)
            a[s.backend] = a[s.backend] - 1
        s.state = -1
        if s.nq == 0:
            self._recycle(s)

    def _recycle(self, s: Session) -> None:
        n = self.n_free
        if n < len(self.free):
            self.free[n] = s
        else:
            self.free.append(s)
        self.n_free = n + 1

    def expire(self, now: float) -> None:
        """Remove the held sessions whose hold ended by `now`."""
        if now < self.next_expiry:
            return
        qs = self.expiry_s
        i, n = self.exp_head, len(qs)
        while i < n:
            s = qs[i]
            # The session's last entry is due at its expiry. An earlier one is stale (the
            # session was re-used and closed again; its later entry decides), and does
            # nothing when consumed but count down `nq`, so it is consumed at once.
            if s.nq == 1 and s.expires > now:
                break
            i += 1
            s.nq -= 1
            if s.nq == 0:
                if s.state == HELD:
                    self._remove(s)
                elif s.state < 0:
                    self._recycle(s)  # removed earlier, while this entry still referred to it
        if i >= n:
            qs.clear()
            i = 0
            self.next_expiry = math.inf
        else:
            self.next_expiry = qs[i].expires
            if i >= 4096 and 2 * i >= n:
                del qs[:i]
                i = 0
        self.exp_head = i

    def _schedule(self, caddr: int) -> int:
        n = len(self.backends)
        if self.round_robin:
            b = self.rr  # (kept below n: no division per SYN)
            self.rr = b + 1 if b + 1 < n else 0
            return b
        if self.scheduler == "random":
            return self.rng.randrange(n)
        if self.scheduler == "source_hash":
            return hash((0x4C42, caddr)) % n
        return min(range(n), key=lambda i: (self.active[i], i))  # least_conn

    def _snat_port(self, backend: int, caddr: int, cport: int) -> tuple[int, int] | None:
        assert self.snat is not None
        addr = self.snat[hash((0x534E, caddr)) % len(self.snat)]
        b = self._bitmap(backend, addr)
        lo, hi = self.lo, self.hi
        size = hi - lo + 1
        if self.snat_order == "preserve" and lo <= cport <= hi and b.is_free(cport):
            return addr, cport
        off = self.rng.randrange(size) if self.snat_order == "random" else self.rover.get(addr, 0)
        got = b.first_free(off)
        if got is None:
            return None
        port, tries = got
        if self.snat_order != "random":
            self.rover[addr] = (off + tries + 1) % size
        return addr, port

    def syn(self, caddr: int, cport: int, now: float) -> Session | None:
        """A client SYN to the VIP from (caddr, cport): the session it belongs to, or None
        (dropped)."""
        if now >= self.next_expiry:  # (expire()'s own first test, without the call)
            self.expire(now)
        key: object = client_key(caddr, cport)  # boxed once for both table operations
        s = self.sessions.get(key)
        if s is not None:
            if s.state == ACTIVE:
                return s  # a retransmission, or a new SYN on a tuple the LB thinks is open
            if s.expires > now:
                if self.held_session_syn == "same_backend":
                    s.state = ACTIVE
                    a = self.active
                    a[s.backend] = a[s.backend] + 1
                    self.n_held_reused += 1
                    return s
                if self.held_session_syn == "drop":
                    self.n_held_dropped += 1
                    return None
                if self.held_session_syn == "drop_then_new":
                    # ip_vs "drop first packet to redirect conntrack" (f719e3754ee2)
                    self.n_held_dropped += 1
                    self._remove(s)
                    return None
            self._remove(s)
        if self.round_robin:  # _schedule()'s first case, without the call
            b = self.rr
            self.rr = b + 1 if b + 1 < len(self.backends) else 0
        else:
            b = self._schedule(caddr)
        if self.snat is not None:
            got = self._snat_port(b, caddr, cport)
            if got is None:
                self.n_snat_failed += 1
                return None
            src, sport = got
        else:
            src, sport = caddr, cport
        if self.n_free:
            self.n_free -= 1
            s = self.free[self.n_free]
            s.renew(caddr, cport, b, src, sport, key)
        else:
            s = Session(caddr, cport, b, src, sport, ACTIVE, 0.0, key)
        self.sessions[key] = s
        if self.snat is not None:
            self._bitmap(b, src).take(sport)
        a = self.active
        a[b] = a[b] + 1
        self.n_sessions += 1
        return s

    def close(self, s: Session, now: float) -> None:
        """The connection closed (FIN exchange seen): hold the session, or reclaim it."""
        if s.state != ACTIVE:
            return
        if self.hold <= 0:
            self._remove(s)
            return
        a = self.active
        a[s.backend] = a[s.backend] - 1
        s.state = HELD
        s.expires = now + self.hold
        if self.exp_head >= len(self.expiry_s):
            self.next_expiry = s.expires
        self.expiry_s.append(s)
        s.nq += 1

    def client_rst(self, s: Session, now: float) -> None:
        if self.rst_ends_session:
            if s.state == ACTIVE:
                self._remove(s)
        else:
            self.close(s, now)


def ignore_msl_consulted(held_met: int, snat: bool) -> bool:
    """Whether holding sessions after close decided anything in a run where `held_met`
    SYNs met a held session (:meth:`L4LoadBalancer.held_met`) and the LB did (`snat`) or
    did not translate source addresses. False: the same run with `ignore_msl` (no hold:
    the session reclaimed at close) takes the same branch at every event.

    A held session acts only through a SYN for its client tuple arriving before it
    expires (:meth:`L4LoadBalancer.syn`: re-used for the same back end, or dropped, per
    `held_session_syn`; counted), or through the SNAT port it keeps taken. Without
    either: an expired held session is removed before the SYN is scheduled, the same as
    no session; a RST or close on it is a no-op in both (:meth:`L4LoadBalancer.close`,
    :meth:`L4LoadBalancer.client_rst` act on an ACTIVE session only); and a held session
    is not active, so least-connection scheduling counts the same. (The hold is the A10's
    "ignore-tcp-msl" off, vendor behaviour: docs/kernel.md §11.)"""
    return held_met != 0 or snat
