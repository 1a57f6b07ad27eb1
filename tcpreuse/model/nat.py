"""Source NAT with connection tracking and cloud NATs (docs/kernel.md §11).

A translation is a conntrack entry keyed by the original tuple. A closed flow keeps its
entry (and so its translated tuple) for the TIME_WAIT hold (conntrack 120 s; GCP 120 s;
Azure NAT GW 65 s) or the CLOSE hold after a RST (10 s). The translated (reply) tuple
must be unique among live entries (nf_nat_used_tuple()), so held entries block their
port toward that destination. A new SYN on an original tuple whose entry is held kills it
and is translated anew ("Reopened connection", nf_conntrack_proto_tcp.c: sTW -> sSS).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Final

from .ports import PortBitmap

ACTIVE: Final = 0
HELD: Final = 1

Orig = tuple[int, ...]  # 4 ints: (saddr, sport, daddr, dport) as sent by the client


class CtEntry:
    """One conntrack entry (a plain class: mypyc makes it a native struct)."""

    __slots__ = ("expires", "nat_addr", "nat_port", "orig", "state")

    def __init__(self, orig: Orig, nat_addr: int, nat_port: int, state: int = ACTIVE,
                 expires: float = 0.0) -> None:
        self.orig = orig
        self.nat_addr = nat_addr
        self.nat_port = nat_port
        self.state = state
        self.expires = expires


class SourceNat:
    def __init__(self, pool: list[int], port_policy: str, port_range: tuple[int, int],
                 time_wait_s: float, close_s: float, max_attempts: int | None,
                 rng: random.Random) -> None:
        self.pool = pool
        self.policy = port_policy
        self.lo, self.hi = port_range
        self.time_wait_s = time_wait_s
        self.close_s = close_s
        self.max_attempts = max_attempts
        self.rng = rng
        self.entries: dict[Orig, CtEntry] = {}
        # Translated tuples in use, per (daddr, dport, nat_addr): a bitmap of nat ports.
        self.used: dict[tuple[int, ...], PortBitmap] = {}
        # Held entries in expiry order (one queue per hold length, so each is sorted).
        self.expiry: dict[float, deque[tuple[float, CtEntry]]] = {}
        self.next_expiry = math.inf  # the earliest queue head: expire() is one comparison until then
        self.rover: dict[int, int] = {}
        self.held = 0
        self.n_insert_failed = self.n_reopened = self.n_translations = 0

    @property
    def stats(self) -> dict[str, int]:
        """Failed inserts, reopened held entries and translations made (plain fields on the
        hot path)."""
        return {"insert_failed": self.n_insert_failed, "reopened": self.n_reopened,
                "translations": self.n_translations}

    def _bitmap(self, d: int, dp: int, na: int) -> PortBitmap:
        k: tuple[int, ...] = (d, dp, na)
        b = self.used.get(k)
        if b is None:
            b = self.used[k] = PortBitmap(self.lo, self.hi)
        return b

    def _remove(self, e: CtEntry) -> None:
        if self.entries.get(e.orig) is e:
            del self.entries[e.orig]
        if self.lo <= e.nat_port <= self.hi:
            self._bitmap(e.orig[2], e.orig[3], e.nat_addr).free(e.nat_port)
        if e.state == HELD:
            self.held -= 1
        e.state = -1

    def expire(self, now: float) -> None:
        """Drop held entries whose hold has run out (conntrack's timer)."""
        if now < self.next_expiry:
            return
        nxt = math.inf
        for q in self.expiry.values():
            while q and q[0][0] <= now:
                exp, e = q.popleft()
                if e.state == HELD and e.expires <= exp:
                    self._remove(e)
            if q and q[0][0] < nxt:
                nxt = q[0][0]
        self.next_expiry = nxt

    def pool_addr(self, saddr: int) -> int:
        """nf_nat find_best_ips_proto(): the pool address is a hash of the source address,
        so one client always maps to the same public address."""
        return self.pool[hash((0x4E41, saddr)) % len(self.pool)]

    def translate(self, orig: Orig, now: float) -> CtEntry | None:
        """The SYN of `orig`: its live translation, or a new one; None = no port (the
        packet is dropped, conntrack insert_failed / NAT allocation failure)."""
        self.expire(now)
        e = self.entries.get(orig)
        if e is not None:
            if e.state == ACTIVE:
                return e
            self._remove(e)  # held and reopened by a new SYN (sTW -> sSS)
            self.n_reopened += 1
        na = self.pool_addr(orig[0])
        port = self._pick_port(orig, na)
        if port is None:
            self.n_insert_failed += 1
            return None
        e = CtEntry(orig, na, port)
        self.entries[orig] = e
        self._bitmap(orig[2], orig[3], na).take(port)
        self.n_translations += 1
        return e

    def _pick_port(self, orig: Orig, na: int) -> int | None:
        """nf_nat_l4proto_unique_tuple(): keep the source port if the translated tuple is
        unique (preserve), else search the range from a rover (sequential) or a random
        offset (--random-fully), at most `max_attempts` tries (248 in newer kernels)."""
        b = self._bitmap(orig[2], orig[3], na)
        lo, hi = self.lo, self.hi
        size = hi - lo + 1
        if self.policy == "preserve" and lo <= orig[1] <= hi and b.is_free(orig[1]):
            return orig[1]
        off = self.rng.randrange(size) if self.policy == "random" else self.rover.get(na, 0)
        got = b.first_free(off, self.max_attempts)
        if got is None:
            return None
        port, tries = got
        if self.policy != "random":
            self.rover[na] = (off + tries + 1) % size
        return port

    def close(self, e: CtEntry, now: float, rst: bool) -> None:
        """The flow ended: conntrack TIME_WAIT (FIN) or CLOSE (RST) hold."""
        if e.state < 0:
            return
        hold = self.close_s if rst else self.time_wait_s
        if hold <= 0:
            self._remove(e)
            return
        if e.state == ACTIVE:
            self.held += 1
        e.state = HELD
        e.expires = now + hold
        q = self.expiry.get(hold)
        if q is None:
            q = self.expiry[hold] = deque()
        if not q and e.expires < self.next_expiry:
            self.next_expiry = e.expires
        q.append((e.expires, e))


def nf_nat_port_range(given: tuple[int, int] | None, orig_sport: int) -> tuple[int, int]:
    """The source ports a SNAT/MASQUERADE rule may map a TCP flow to: mirrors the range
    choice of nf_nat_l4proto_unique_tuple(), net/netfilter/nf_nat_proto.c (2.6.32-6.18,
    formerly nf_nat_proto_common.c). A rule with a port range uses it; without one, source
    ports below 512 map to 1-511, 512-1023 to 600-1023, all others to 1024-65535 (and the
    flow keeps its own port when the translated tuple is unique). The translated tuple must
    be unique among conntrack entries (nf_nat_used_tuple()), so each (NAT address,
    destination address, destination port) has its own budget of this many ports."""
    if given is not None:
        lo, hi = given
        return (min(lo, hi), max(lo, hi))
    if orig_sport < 512:
        return (1, 511)
    if orig_sport < 1024:
        return (600, 1023)
    return (1024, 65535)


def nat_evicts_timewait(version: tuple[int, ...]) -> bool:
    """nf_nat_used_tuple_harder(), net/netfilter/nf_nat_core.c: in the port search's last
    attempts a colliding SRC_NAT entry in conntrack TIME_WAIT whose sequence numbers the new
    SYN has passed may be evicted (nf_nat_may_kill()). Since about 6.5 (version inferred,
    not verified); before, a TIME_WAIT entry blocks its port for the full hold."""
    return version >= (6, 5)
