"""Source NAT with connection tracking (path-elements §2) and cloud NATs (§3).

A translation is a conntrack entry keyed by the original tuple. A closed flow keeps its
entry (and so its translated tuple) for the TIME_WAIT hold (conntrack 120 s; GCP 120 s;
Azure NAT GW 65 s) or the CLOSE hold after a RST (10 s). The translated (reply) tuple
must be unique among live entries (nf_nat_used_tuple()), so held entries block their
port toward that destination. A new SYN on an original tuple whose entry is held kills it
and is translated anew ("Reopened connection", nf_conntrack_proto_tcp.c: sTW -> sSS).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ACTIVE = 0
HELD = 1

Orig = tuple[int, int, int, int]  # (saddr, sport, daddr, dport) as sent by the client
Reply = tuple[int, int, int, int]  # (daddr, dport, nat_addr, nat_port)


@dataclass(slots=True)
class CtEntry:
    orig: Orig
    nat_addr: int
    nat_port: int
    state: int = ACTIVE
    expires: float = 0.0

    @property
    def reply(self) -> Reply:
        return (self.orig[2], self.orig[3], self.nat_addr, self.nat_port)


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
        self.replies: dict[Reply, CtEntry] = {}
        self.rover: dict[int, int] = {}
        self.held = 0
        self.stats = {"insert_failed": 0, "reopened": 0, "translations": 0}

    def _remove(self, e: CtEntry) -> None:
        self.entries.pop(e.orig, None)
        if self.replies.get(e.reply) is e:
            del self.replies[e.reply]
        if e.state == HELD:
            self.held -= 1

    def _reply_free(self, r: Reply, now: float) -> bool:
        e = self.replies.get(r)
        if e is None:
            return True
        if e.state == HELD and e.expires <= now:
            self._remove(e)
            return True
        return False

    def pool_addr(self, saddr: int) -> int:
        """nf_nat find_best_ips_proto(): the pool address is a hash of the source address,
        so one client always maps to the same public address."""
        return self.pool[hash((0x4E41, saddr)) % len(self.pool)]

    def translate(self, orig: Orig, now: float) -> CtEntry | None:
        """The SYN of `orig`: its live translation, or a new one; None = no port (the
        packet is dropped, conntrack insert_failed / NAT allocation failure)."""
        e = self.entries.get(orig)
        if e is not None:
            if e.state == ACTIVE:
                return e
            self._remove(e)  # expired, or held and reopened by a new SYN
            if e.expires > now:
                self.stats["reopened"] += 1
        na = self.pool_addr(orig[0])
        port = self._pick_port(orig, na, now)
        if port is None:
            self.stats["insert_failed"] += 1
            return None
        e = CtEntry(orig, na, port)
        self.entries[orig] = e
        self.replies[e.reply] = e
        self.stats["translations"] += 1
        return e

    def _pick_port(self, orig: Orig, na: int, now: float) -> int | None:
        """nf_nat_l4proto_unique_tuple(): keep the source port if the translated tuple is
        unique (preserve), else search the range from a rover (sequential) or a random
        offset (--random-fully), at most `max_attempts` tries (248 in newer kernels)."""
        d, dp = orig[2], orig[3]
        lo, hi = self.lo, self.hi
        size = hi - lo + 1
        if self.policy == "preserve" and lo <= orig[1] <= hi and self._reply_free((d, dp, na, orig[1]), now):
            return orig[1]
        if self.policy == "random":
            off = self.rng.randrange(size)
        else:
            off = self.rover.get(na, 0)
        limit = size if self.max_attempts is None else min(size, self.max_attempts)
        for i in range(limit):
            port = lo + (off + i) % size
            if self._reply_free((d, dp, na, port), now):
                if self.policy != "random":
                    self.rover[na] = (off + i + 1) % size
                return port
        return None

    def close(self, e: CtEntry, now: float, rst: bool) -> None:
        """The flow ended: conntrack TIME_WAIT (FIN) or CLOSE (RST) hold."""
        if e.state == ACTIVE:
            self.held += 1
        e.state = HELD
        e.expires = now + (self.close_s if rst else self.time_wait_s)
        if e.expires <= now:
            self._remove(e)

    def used_ports(self, now: float) -> int:
        return len(self.replies)
