"""ISN generation, timestamp clocks and offsets, and the seconds clock PAWS uses.

Secrets are per host, derived from the scenario seed, so runs are reproducible. Python's
hash of a tuple of ints is stable across processes (only str/bytes hashing is salted), so
it serves as the keyed hash (siphash / md5 in the kernel); its quality is ample for
choosing offsets. It is computed by khash.tuple_hash(secret, *ints) and, for its low 32
bits, khash.hash32() (the same values, without building the tuple; model/khash.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

from . import khash
from .profiles import Profile
from .seq import MASK32

# (Final: a C static in compiled code, where an imported name is a globals-dict lookup per call)
hash32: Final[Callable[..., int]] = khash.hash32
tuple_hash: Final[Callable[..., int]] = khash.tuple_hash
hash32_pairs: Final[Callable[[int, int, int], int]] = khash.hash32_pairs

INITIAL_JIFFIES_S: Final = -300  # include/linux/jiffies.h: INITIAL_JIFFIES = -300*HZ (wraps 5 min after boot)


def derive_secret(*parts: object) -> int:
    """A 64-bit secret from the seed and names (stable across processes)."""
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def keyed32(secret: int, *vals: int) -> int:
    return hash32(secret, *vals)


def keyed64(secret: int, *vals: int) -> int:
    return tuple_hash(secret, *vals) & 0xFFFFFFFFFFFFFFFF


def port_shuffle_epoch(jiffies: float, hz: int, period_s: float) -> int:
    """The epoch input of secure_ipv4_port_ephemeral() (net/core/secure_seq.c, 5.18+, with
    "tcp: change source port randomizarion at connect() time"): jiffies /
    EPHEMERAL_PORT_SHUFFLE_PERIOD, the period being 10 * HZ. jiffies, not the uptime: they
    start at INITIAL_JIFFIES (2^32 - 300 HZ), so at HZ 100 the epochs turn at uptime 7.04 s
    mod 10, at HZ 250 at 0.816 s mod 10 (minus the jiffies' lag behind CLOCK_MONOTONIC)."""
    return int(jiffies // round(period_s * hz))


def linux_isn(secret: int, saddr: int, daddr: int, sport: int, dport: int, wall_s: float) -> int:
    """mirrors secure_tcp_seq(), net/core/secure_seq.c (4.x-6.x; md5 in 2.6.32):
    keyed hash of the 4-tuple + seq_scale(): ktime_get_real_ns() >> 6 (15.625 M/s),
    monotonic for one 4-tuple (RFC 6528)."""
    # keyed32(secret, saddr, daddr, sport, dport) spelled out: the same hash, without packing
    # the arguments into a tuple, the two (address, port) pairs one int each (khash.hash32_pairs)
    h = hash32_pairs(secret, (saddr << 16) | sport, (daddr << 16) | dport)
    return (h + (int(wall_s * 1e9) >> 6)) & MASK32


def rfc6528_isn(secret: int, saddr: int, daddr: int, sport: int, dport: int, t_s: float) -> int:
    """RFC 6528: ISN = M + F(4-tuple, secret), M a 4 microsecond timer (non-Linux stacks)."""
    h = hash32_pairs(secret, (saddr << 16) | sport, (daddr << 16) | dport)  # keyed32() of the 4-tuple
    return (h + int(t_s * 250_000)) & MASK32


def ts_offset(p: Profile, secret: int, timestamps_sysctl: int, saddr: int, daddr: int,
              sport: int, dport: int, measured: int | None = None) -> int:
    """TS offset of a connection (docs/kernel.md §7): none <= 4.9 or with tcp_timestamps=2; per 4-tuple
    in 4.10 and again with 165573e41f2f (6.18 here); per (saddr, daddr) 4.11-2026
    (secure_tcp_ts_off()). Non-Linux stacks: none (their clock base is the host's).

    `measured`: the host's offset as a real kernel drew it (the model parameter ts_offsets,
    which validate measures in the lab). Per host pair it is the whole draw, so it replaces
    the keyed hash; per 4-tuple one measurement says nothing of the next port's, so it is
    not used."""
    if not p.is_linux or timestamps_sysctl != 1:
        return 0
    mode = p.ts_offset
    if mode == "none":
        return 0
    if mode == "hostpair":
        if measured is not None:
            return measured & MASK32
        return hash32(secret, saddr, daddr)  # keyed32(), spelled out
    return hash32(secret ^ 0x5EED, saddr, daddr, sport, dport)


def tsval_clock(p: Profile, hz: int, uptime_s: float) -> tuple[float, float]:
    """The host's TS option clock, before the per-connection offset, as (base, rate): at sim
    time t its value is (u32)(base + rate * t).

    <= 4.12: tcp_time_stamp = (u32)jiffies (jiffies start at INITIAL_JIFFIES); 4.13+:
    tcp_clock_ms() = monotonic ms since boot (TCP_TS_HZ 1000). Non-Linux: a 1 kHz clock
    since boot [I]."""
    if p.is_linux and p.ts_clock == "jiffies":
        return (uptime_s + INITIAL_JIFFIES_S) * hz, float(hz)
    return uptime_s * 1000.0, 1000.0


def seconds_clock(p: Profile, uptime_s: float, wall0_s: float, tick_delay_s: float = 0.0) -> float:
    """The seconds clock of ts_recent_stamp / PAWS, as its value at sim time 0 (it reads
    int(base + t)): get_seconds() (wall) until ~4.18, ktime_get_seconds() (monotonic since
    boot) after [V EL6/K4.9 vs ML-mini5/K6.18]. ktime_get_seconds() returns tk->ktime_sec,
    which tk_update_ktime_data() sets when the timekeeper advances on a timer tick
    (kernel/time/timekeeping.c): the second turns over at the first tick after the
    boundary, `tick_delay_s` (0 to 1/HZ) late."""
    return wall0_s if (p.is_linux and not p.at_least(4, 19)) else uptime_s - tick_delay_s
