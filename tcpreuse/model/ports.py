"""Ephemeral port selection.

Linux connect() autoselect (`__inet_hash_connect()`, net/ipv4/inet_hashtables.c) in its
four generations (docs/kernel.md §5.1), bind(addr, 0) (`inet_csk_find_open_port()`, §5.3), and the
host-wide pools of Windows and macOS (docs/kernel.md §12).

The allocators are sans-I/O: the caller passes `check(port)`, which answers from the
host's tables whether connect() may use that port for this 4-tuple:
PORT_BUSY (bind-owned, or the 4-tuple is taken), PORT_FREE, or PORT_TW_REUSE (a TIME_WAIT
holds the 4-tuple and tcp_twsk_unique() lets connect() take it over).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Final

from .seq import MASK32

PORT_BUSY: Final = 0
PORT_FREE: Final = 1
PORT_TW_REUSE: Final = 2

GOLDEN_RATIO_32: Final = 0x61C88647


def hash_32(val: int, bits: int) -> int:
    """mirrors hash_32(), include/linux/hash.h"""
    return ((val * GOLDEN_RATIO_32) & MASK32) >> (32 - bits)


class LinuxConnectPorts:
    """Per-netns state of connect() autoselect: the static `hint` (<= 5.11) or the
    RFC 6056 `table_perturb[]` (5.12+, 256 entries; 5.18+, 65536 entries)."""

    __slots__ = ("alg", "hint", "rng", "table", "table_secret")

    def __init__(self, alg: str, rng: random.Random, table_secret: int) -> None:
        self.alg = alg
        self.hint = 0
        self.table: dict[int, int] = {}  # sparse table_perturb; unset entries are random
        self.table_secret = table_secret
        self.rng = rng

    def _perturb(self, idx: int) -> int:
        v = self.table.get(idx)
        if v is None:  # net_get_random_once(table_perturb, ...)
            v = hash((self.table_secret, idx)) & MASK32
        return v

    def autoselect(
        self,
        low: int,
        high: int,
        reserved: frozenset[int],
        port_offset: int,
        check: Callable[[int], int],
        occ: bytearray | None = None,
    ) -> tuple[int, int] | None:
        """(port, PORT_FREE | PORT_TW_REUSE) or None for -EADDRNOTAVAIL.

        `port_offset` is secure_ipv4_port_ephemeral(saddr, daddr, dport): 32 bits up to
        5.17, 64 bits from 5.18. `low`/`high` are ip_local_port_range (inclusive).
        `occ`, if given, marks (non-zero at port - low) ports that `check` would call busy
        (held toward this destination, or reserved): they are skipped in C
        (bytearray.find) instead of one by one. The port found, and the state update, are
        the same as the kernel's linear scan.
        """
        alg = self.alg
        if alg == "hint" or alg == "hint_even":
            # vanilla 2.6.32 - 4.1: for (i = 1; i <= remaining; i++)
            #   port = low + (i + offset) % remaining; ... ok: hint += i;
            # EL6 (2.6.32-642) backport: offset &= ~1 ("start with an even number ...
            # leave about 50% for bind(0)"); for (i = 0; ...); ok: hint += (i + 2) & ~1
            remaining = high - low + 1
            offset = (self.hint + port_offset) & MASK32
            first_i = 1
            if alg == "hint_even":
                offset &= ~1
                first_i = 0
            start = (first_i + offset) % remaining
            for pos in _free_positions(occ, start, remaining):
                port = low + pos
                if port in reserved:
                    continue
                r = check(port)
                if r:
                    i = (pos - start) % remaining + first_i
                    if alg == "hint":
                        self.hint = (self.hint + i) & MASK32
                    else:
                        self.hint = (self.hint + ((i + 2) & ~1)) & MASK32
                    return port, r
            return None

        # 4.2+ (07f4c90062f8 / 1580ab63fc9a): ports of @low parity first, then the other.
        # mirrors __inet_hash_connect(), net/ipv4/inet_hashtables.c (4.6 - 6.18):
        #   high++; remaining = high - low; if (remaining > 1) remaining &= ~1U;
        #   other_parity_scan: port = low + offset;
        #   for (i = 0; i < remaining; i += 2, port += 2) {
        #       if (unlikely(port >= high)) port -= remaining; ... }
        #   offset++; if ((offset & 1) && remaining > 1) goto other_parity_scan;
        # The wrap subtracts `remaining`, not the range size: in an odd-sized range one
        # port of @low parity is out of reach of each scan (the bottom one, or the top one
        # when offset == 0), so which ports one scan can hand out depends on the offset.
        size = high - low + 1
        remaining = size
        if remaining > 1:
            remaining &= ~1
        idx = 0
        if alg == "parity":
            offset = ((self.hint + port_offset) & MASK32) % remaining
        elif alg == "perturb256":
            idx = hash_32(port_offset & MASK32, 8)
            offset = ((self._perturb(idx) + port_offset) & MASK32) % remaining
        else:  # perturb64k, 5.18+
            idx = port_offset & 0xFFFF
            offset = ((self._perturb(idx) + (port_offset >> 32)) & MASK32) % remaining
        offset &= ~1
        if remaining == 1:
            port = low
            if port not in reserved:
                r = check(port)
                if r:
                    self._advance(idx, 0)
                    return port, r
            return None
        for o in (offset, offset + 1):
            for pos, i in _kernel_scan(occ, o, size, remaining):
                port = low + pos
                if port in reserved:
                    continue
                r = check(port)
                if r:
                    self._advance(idx, i)
                    return port, r
        return None

    def _advance(self, idx: int, i: int) -> None:
        """ok: hint += i + 2 (<= 5.11); table_perturb[index] += i + 2 (5.12-5.17);
        5.18+: i = max(i, get_random_u32_below(8) * step) first."""
        if self.alg == "parity":
            self.hint = (self.hint + i + 2) & MASK32
        elif self.alg == "perturb256":
            self.table[idx] = (self._perturb(idx) + i + 2) & MASK32
        else:
            i = max(i, self.rng.randrange(8) * 2)
            self.table[idx] = (self._perturb(idx) + i + 2) & MASK32


def _kernel_scan(occ: bytes | bytearray | None, o: int, size: int, remaining: int) -> Iterator[tuple[int, int]]:
    """(position, i) in the order one parity pass of __inet_hash_connect() visits them:
    x = o + i for i = 0, 2, .. < remaining; position x, or x - remaining once low + x
    reaches high (x >= size). Positions whose byte in `occ` is non-zero are skipped with
    bytes.find (C speed)."""
    par = o & 1
    last = o + remaining - 2  # x of the last iteration
    a_last = min(last, size - 1)
    a_last -= (a_last - o) & 1  # same parity as o
    runs = [(o, a_last, 0)]
    if a_last + 2 <= last:
        runs.append((a_last + 2 - remaining, last - remaining, remaining))
    arr = None if occ is None else bytes(occ[par::2])
    for first, end, shift in runs:
        if arr is None:
            for pos in range(first, end + 1, 2):
                yield pos, pos + shift - o
            continue
        j, stop = first >> 1, (end >> 1) + 1
        while j < stop:
            j = arr.find(0, j, stop)
            if j < 0:
                break
            pos = 2 * j + par
            yield pos, pos + shift - o
            j += 1


def _free_positions(arr: bytes | bytearray | None, start: int, n: int) -> Iterator[int]:
    """Positions start, start+1, ..., n-1, 0, ..., start-1 whose byte in `arr` is 0 (all
    positions when `arr` is None), found with bytes.find (C speed)."""
    if arr is None:
        for k in range(n):
            yield (start + k) % n
        return
    for pos, stop in ((start, n), (0, start)):
        while pos < stop:
            j = arr.find(0, pos, stop)
            if j < 0:
                break
            yield j
            pos = j + 1


class PortBitmap:
    """Ports [lo, hi] taken or free, with a cyclic first-free search in C (NAT/SNAT pools)."""

    __slots__ = ("hi", "lo", "occ", "used")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.occ = bytearray(hi - lo + 1)
        self.used = 0

    def is_free(self, port: int) -> bool:
        return not self.occ[port - self.lo]

    def take(self, port: int) -> None:
        i = port - self.lo
        if not self.occ[i]:
            self.occ[i] = 1
            self.used += 1

    def free(self, port: int) -> None:
        i = port - self.lo
        if self.occ[i]:
            self.occ[i] = 0
            self.used -= 1

    def first_free(self, start_off: int, limit: int | None = None) -> tuple[int, int] | None:
        """(port, tries) of the first free port at offsets start_off, start_off+1, ...
        (cyclic), looking at most `limit` offsets; None if there is none."""
        n = len(self.occ)
        if self.used >= n:
            return None
        for pos in _free_positions(self.occ, start_off % n, n):
            tries = (pos - start_off) % n
            if limit is not None and tries >= limit:
                return None
            return self.lo + pos, tries
        return None


def find_open_port(
    low: int,
    high: int,
    reserved: frozenset[int],
    unowned: Callable[[int], bool],
    rng: random.Random,
) -> int | None:
    """bind(addr, 0) without IP_BIND_ADDRESS_NO_PORT: mirrors inet_csk_find_open_port(),
    net/ipv4/inet_connection_sock.c (4.6+; docs/kernel.md §5.3): random odd-parity start ("We do
    the opposite" of connect()), step 2, then the other parity; a port is taken only if it
    has no owner at all on that address (relax=false: TIME_WAIT owners conflict too)."""
    high += 1
    remaining = high - low
    if remaining > 1:
        remaining &= ~1
    offset = rng.getrandbits(32) % remaining
    offset |= 1
    while True:
        port = low + offset
        for _ in range(0, remaining, 2):
            if port >= high:
                port -= remaining
            if port not in reserved and unowned(port):
                return port
            port += 2
        offset -= 1  # "offset--; if (!(offset & 1)) goto other_parity_scan;"
        if not (offset & 1):
            continue
        return None


class HostPortPool:
    """A host-wide ephemeral pool (Windows, macOS/BSD): a local port is unique per host
    across all destinations while any socket, TIME_WAIT included, holds it
    (docs/kernel.md §12, quoting Microsoft: "Windows normally does not hand out a port that is in local
    TIME_WAIT"; BSD in_pcb_lport). `order` sequential (a rover) or random (probe from a
    random start) — an inference, a parameter."""

    __slots__ = ("first", "holders", "last", "n", "order", "rng", "rover", "sequential", "used")

    def __init__(self, first: int, num: int, order: str, rng: random.Random) -> None:
        self.first = first
        self.n = num
        self.last = first + num - 1
        self.order = order
        self.sequential = order == "sequential"  # (a bool test per allocation, not a string comparison)
        self.rng = rng
        self.rover = 0
        self.holders = [0] * num  # [port - first]: sockets holding the port
        self.used = 0  # ports with holders > 0

    def in_use(self, port: int) -> int:
        """Sockets (TIME_WAIT included) holding `port`."""
        i = port - self.first
        return self.holders[i] if 0 <= i < self.n else 0

    def allocate(self) -> int | None:
        n = self.n
        if self.used >= n:
            return None
        start = self.rover if self.sequential else self.rng.randrange(n)
        holders = self.holders
        for k in range(n):
            off = (start + k) % n
            if not holders[off]:
                self.rover = (off + 1) % n
                return self.first + off
        return None

    def _outside(self, port: int) -> ValueError:
        return ValueError(f"port {port} is not in the pool {self.first}-{self.last}")

    # (the range test is spelled out in hold and release: a call per connection less)
    def hold(self, port: int) -> None:
        i = port - self.first
        if not 0 <= i < self.n:
            raise self._outside(port)
        c = self.holders[i]
        if c == 0:
            self.used += 1
        self.holders[i] = c + 1

    def release(self, port: int) -> None:
        i = port - self.first
        if not 0 <= i < self.n:
            raise self._outside(port)
        c = self.holders[i] - 1
        if c <= 0:
            self.holders[i] = 0
            self.used -= 1
        else:
            self.holders[i] = c
