"""OS/kernel profiles: which rules apply and what the defaults are, as data.

A Linux profile is a kernel version (plus the EL6 flag for CentOS/RHEL 6 kernels, which
carry backports); every behavioural switch is derived from the version with the commit
or source that introduced it, as docs/kernel.md lists them. Windows and macOS profiles
carry the documented or measured facts of docs/kernel.md §12; facts marked there as
inference are parameters (``ModelParams``) with documented defaults, not constants.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, cached_property

from ..errors import ProfileError

Version = tuple[int, int, int]

MIN_LINUX: Version = (2, 6, 32)
MAX_LINUX: Version = (6, 18, 99)


def parse_version(text: str) -> Version:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ProfileError(f"not a kernel version: {text!r} (expected e.g. 5.15 or 2.6.32)")
    return (int(m[1]), int(m[2]), int(m[3] or 0))


def vstr(v: Version) -> str:
    return f"{v[0]}.{v[1]}" + (f".{v[2]}" if v[2] else "")


@dataclass(frozen=True)
class Profile:
    """One OS/kernel. `name` is canonical ("linux-5.15", "linux-2.6.32-el6", "windows-2016")."""

    name: str
    os: str  # linux | windows | macos
    version: Version = (0, 0, 0)
    el6: bool = False  # RHEL/CentOS 6 kernel (2.6.32-xxx.el6) with its backports
    description: str = ""
    # Windows / macOS facts (ignored for Linux)
    win_initial_rto_ms: int = 3000
    win_max_syn_retrans: int = 2
    win_connect_cap_s: float = 21.0
    aliases: tuple[str, ...] = field(default=(), compare=False)

    # ---- Linux rule switches, each with its source ---------------------------------
    @cached_property
    def is_linux(self) -> bool:
        return self.os == "linux"

    def at_least(self, *v: int) -> bool:
        return self.is_linux and self.version >= (*v, 0, 0)[:3]

    @cached_property
    def port_alg(self) -> str:
        """__inet_hash_connect() variant (docs/kernel.md §5.1).

        hint:        vanilla <= 4.1: `port = low + (i + offset) % remaining`, `hint += i`
        hint_even:   EL6 backport: offset &= ~1, reserved ports skipped, `hint += (i+2) & ~1`
        parity:      4.2 (07f4c90062f8) / 4.6 (1580ab63fc9a) - 5.11: @low parity first, step 2
        perturb256:  5.12 - 5.17: RFC 6056 alg. 4, table_perturb[256] (190cc82489f4)
        perturb64k:  5.18+: table_perturb[65536], 64-bit offset, random 0..7 step bump
        """
        if self.el6:
            return "hint_even"
        if not self.at_least(4, 2):
            return "hint"
        if not self.at_least(5, 12):
            return "parity"
        if not self.at_least(5, 18):
            return "perturb256"
        return "perturb64k"

    @cached_property
    def port_secret_epoch_s(self) -> float | None:
        """5.18+: secure_ipv4_port_ephemeral() re-salts every EPHEMERAL_PORT_SHUFFLE_PERIOD."""
        return 10.0 if self.at_least(5, 18) else None

    @cached_property
    def tw_reuse_rule(self) -> str:
        """tcp_twsk_unique() timing rule (docs/kernel.md §4).

        gt1s:     <= 4.18: get_seconds() - tw_ts_recent_stamp > 1 (wall seconds)
        after_s:  4.19 - 6.13: time_after32(ktime_get_seconds(), tw_ts_recent_stamp)
        delay_ms: 6.14+: tcp_clock_ms() after tw_entry_stamp + tcp_tw_reuse_delay
        """
        if self.at_least(6, 14):
            return "delay_ms"
        if self.at_least(4, 19):
            return "after_s"
        return "gt1s"

    @cached_property
    def has_tw_recycle(self) -> bool:
        """Removed in 4.12 by 4396e46187ca "tcp: remove tcp_tw_recycle"."""
        return self.is_linux and not self.at_least(4, 12)

    @cached_property
    def recycle_cache_key(self) -> str:
        """2.6.32: inet_peer keyed by remote IP; ~3.5+: tcp_metrics keyed by (local, remote)."""
        return "addr_pair" if self.at_least(3, 5) else "peer"

    @cached_property
    def recycle_drops_tsless_syn(self) -> bool:
        """tcp_peer_is_proven(): `|| !timestamps` rejects TS-less SYNs from a fresh peer.

        Present in 4.9 [V K4.9], absent in EL6 [V]; a26552afe894 ("tcp: don't accept
        SYN without timestamps from a recycled peer" era, ~3.17) [S]. EL6 never drops.
        """
        return self.at_least(3, 17) and not self.el6

    @cached_property
    def ts_clock(self) -> str:
        """TS option clock: jiffies until 4.12, 1 ms (TCP_TS_HZ) from 4.13 (9a568de4818d)."""
        return "ms" if self.at_least(4, 13) else "jiffies"

    @cached_property
    def ts_offset(self) -> str:
        """Random TS offsets (docs/kernel.md §7): none <= 4.9; per 4-tuple in 4.10 (95a22caee396);
        per (saddr, daddr) 4.11+ (28ee1b746f49); per 4-tuple again in the 2026 fix
        165573e41f2f (7.0, backported to 6.12.y; K6.18 has secure_tcp_seq_and_ts_off)."""
        if not self.at_least(4, 10):
            return "none"
        if self.version[:2] == (4, 10):
            return "4tuple"
        if self.at_least(6, 18):
            return "4tuple"
        return "hostpair"

    @cached_property
    def tw_timer(self) -> str:
        """<= 4.0: central death-row calendar (7.5 s slots); 4.1+: one timer per TW (789f558cfb36)."""
        return "per_socket" if self.at_least(4, 1) else "deathrow"

    @cached_property
    def tw_count_at(self) -> str:
        """When TcpExtTW / TWKilled are counted: at reaping (<= 4.0), timer expiry
        (4.1 - 5.17, early kills uncounted), or scheduling (5.18+, P-twcnt)."""
        if self.at_least(5, 18):
            return "schedule"
        return "expiry" if self.at_least(4, 1) else "reap"

    @cached_property
    def oow_ratelimit(self) -> bool:
        """tcp_oow_rate_limited() on TW ACKs (tcp_invalid_ratelimit, ~4.0); EL6 has none."""
        return self.at_least(4, 0)

    @cached_property
    def tail_loss_probe(self) -> bool:
        """Tail loss probe (6ba8a3b19e76, 3.10): the first retransmission of a lone
        segment is a probe after srtt/4 + TCP_RTO_MIN, then the RTO timer runs."""
        return self.at_least(3, 10)

    @cached_property
    def synsent_fast_rearm(self) -> bool:
        """SYN-SENT: an unacceptable ACK re-arms the SYN timer to TCP_TIMEOUT_MIN (2 jiffies)
        if nothing was retransmitted yet (SeongJae Park / Eric Dumazet, 2020, ~5.7) [S]."""
        return self.at_least(5, 7)

    @cached_property
    def syn_sent_time_budget(self) -> bool:
        """tcp_write_timeout() (net/ipv4/tcp_timer.c) gives up on SYN-SENT on a time budget as
        well as on the retransmission count: `if (!expired) expired =
        retransmits_timed_out(sk, retry_until, icsk_user_timeout)`, from a41e8a88b06e ("tcp:
        better handle TCP_USER_TIMEOUT in SYN_SENT state") with the SYN-state rto_base of
        3256a2d6ab1f ("tcp: adjust rto_base in retransmits_timed_out()"), both v5.4 (and
        5.3.y stable); before, SYN-SENT counted retransmissions only."""
        return self.at_least(5, 4)

    @cached_property
    def timer_wheel(self) -> bool:
        """Non-cascading timer wheel (4.8, 500462a9de65): timers fire at their level's
        granularity, not on their expiry jiffy (model.timers)."""
        return self.os == "linux" and self.at_least(4, 8)

    @cached_property
    def initial_rto_s(self) -> float:
        """TCP_TIMEOUT_INIT: 1 s since 3.1 (RFC 6298, 9ad7c049) and in EL6; vanilla 2.6.32: 3 s."""
        if self.os == "windows":
            return self.win_initial_rto_ms / 1000.0
        if self.os == "macos":
            return 1.0
        return 1.0 if (self.el6 or self.at_least(3, 1)) else 3.0

    @cached_property
    def has_counter_tw_overflow(self) -> bool:
        """TCPTimeWaitOverflow: absent in EL6/2.6.32 (log line only), present in 4.x+ [V]."""
        return self.at_least(3, 0) and not self.el6

    @cached_property
    def has_counter_paws_timewait(self) -> bool:
        """PAWSTimewait takes TW PAWS rejects off PAWSEstab (~6.15)."""
        return self.at_least(6, 15)

    @cached_property
    def has_reqq_counters(self) -> bool:
        """TCPReqQFullDrop / TCPReqQFullDoCookies (absent in 2.6.32)."""
        return self.at_least(3, 0)

    @cached_property
    def listen_counts_on_syn(self) -> bool:
        """2.6.32 drops SYNs on a full queue without a counter (docs/kernel.md §9)."""
        return self.at_least(3, 0) and not self.el6

    @cached_property
    def default_syn_retries(self) -> int:
        """TCP_SYN_RETRIES: 5 until 3.7 (6c9ff979d1921e9 raised it to 6) and in EL6 [S]."""
        return 6 if (self.at_least(3, 7) and not self.el6) else 5

    @cached_property
    def default_port_range(self) -> tuple[int, int]:
        """32768-61000 on older kernels; 32768-60999 in EL6 and 4.6+ (parity advice)."""
        return (32768, 60999) if (self.el6 or self.at_least(4, 6)) else (32768, 61000)

    @cached_property
    def default_somaxconn(self) -> int:
        return 4096 if self.at_least(5, 4) else 128

    @cached_property
    def default_tw_reuse(self) -> int:
        """2 (loopback only) since 4.18 (79e9fed46038); 0 before."""
        return 2 if self.at_least(4, 18) else 0


def _linux(version: str, el6: bool = False, description: str = "", aliases: tuple[str, ...] = ()) -> Profile:
    v = parse_version(version)
    name = f"linux-{vstr(v)}" + ("-el6" if el6 else "")
    return Profile(name=name, os="linux", version=v, el6=el6, description=description, aliases=aliases)


# Named profiles; any other "linux-X.Y[.Z]" within MIN_LINUX..MAX_LINUX is accepted too.
NAMED: list[Profile] = [
    _linux("2.6.32", description="vanilla 2.6.32"),
    _linux("2.6.32", el6=True, description="CentOS/RHEL 6 (2.6.32-xxx.el6, with backports)",
           aliases=("centos-6", "rhel-6")),
    _linux("3.10", description="CentOS/RHEL 7 (3.10)", aliases=("centos-7", "rhel-7")),
    _linux("4.4", description="Ubuntu 16.04", aliases=("ubuntu-16.04",)),
    _linux("4.9", description="Debian 9 (last LTS with tcp_tw_recycle)", aliases=("debian-9",)),
    _linux("4.15", description="Ubuntu 18.04", aliases=("ubuntu-18.04",)),
    _linux("4.19", description="Debian 10", aliases=("debian-10",)),
    _linux("5.4", description="Ubuntu 20.04", aliases=("ubuntu-20.04",)),
    _linux("5.10", description="Debian 11", aliases=("debian-11",)),
    _linux("5.15", description="Ubuntu 22.04", aliases=("ubuntu-22.04",)),
    _linux("6.1", description="Debian 12", aliases=("debian-12",)),
    _linux("6.8", description="Ubuntu 24.04", aliases=("ubuntu-24.04",)),
    _linux("6.18", description="Linux 6.18 (tcp_tw_reuse_delay, 4-tuple TS offsets)"),
    Profile(name="windows-2008r2", os="windows", description="Windows 7 / Server 2008 R2",
            win_initial_rto_ms=3000, win_max_syn_retrans=2, aliases=("windows-7",)),
    Profile(name="windows-2012r2", os="windows", description="Windows 8.1 / Server 2012 R2",
            win_initial_rto_ms=3000, win_max_syn_retrans=2),
    Profile(name="windows-2016", os="windows", description="Windows 10 (early) / Server 2016",
            win_initial_rto_ms=3000, win_max_syn_retrans=2),
    Profile(name="windows-2022", os="windows", description="Windows 10/11 / Server 2019+ (new defaults)",
            win_initial_rto_ms=1000, win_max_syn_retrans=4, aliases=("windows-10", "windows-11", "windows-2019")),
    Profile(name="macos", os="macos", description="macOS (XNU)"),
]

_BY_NAME: dict[str, Profile] = {}
for _p in NAMED:
    _BY_NAME[_p.name] = _p
    for _a in _p.aliases:
        _BY_NAME[_a] = _p


def running_kernel_version() -> Version:
    import platform

    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", platform.release())
    if not m:
        raise ProfileError(f"cannot read the running kernel version from {platform.release()!r}")
    return (int(m[1]), int(m[2]), int(m[3] or 0))


@cache
def get_profile(name: str) -> Profile:
    """Resolve a profile name or alias; `linux-native` is the running kernel."""
    key = name.strip().lower()
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key == "linux-native":
        v = running_kernel_version()
        v = min(v, MAX_LINUX)
        return Profile(name=f"linux-{vstr(v)}", os="linux", version=v, description="the running kernel")
    m = re.fullmatch(r"linux-(\d+\.\d+(?:\.\d+)?)(-el6)?", key)
    if m:
        v = parse_version(m[1])
        if not (MIN_LINUX <= v <= MAX_LINUX):
            raise ProfileError(
                f"unknown kernel {name!r}: tcpreuse models Linux {vstr(MIN_LINUX)} to {vstr(MAX_LINUX)[:4]}"
            )
        if m[2] and v[:2] != (2, 6):
            raise ProfileError(f"unknown kernel {name!r}: -el6 applies to 2.6.32 kernels only")
        return Profile(name=key, os="linux", version=v, el6=bool(m[2]))
    known = ", ".join(sorted({p.name for p in NAMED}))
    raise ProfileError(
        f"unknown OS/kernel profile {name!r}",
        hint=f"use one of {known}, an alias such as centos-6 or ubuntu-22.04, or linux-X.Y",
    )
