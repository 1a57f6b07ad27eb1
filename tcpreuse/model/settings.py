"""Settings a host can carry, by OS, with their real names, validity and defaults.

Linux settings are sysctls (``net.ipv4.tcp_tw_reuse``); Windows settings use the names of
the ``netsh`` / registry knobs; macOS uses its sysctl names. A setting that does not exist
(at all, or on the chosen kernel) is rejected by name. Settings that exist on the real
system but do not change the model (``net.ipv4.tcp_sack``) are accepted with a note.

``ModelParams`` are the facts the references mark as inference: they are parameters with
documented defaults, set per host group in a scenario's ``[host.model]`` table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UnknownSettingError
from .profiles import Profile, vstr

Validator = Callable[[Any, Profile], Any]


@dataclass(frozen=True)
class Setting:
    name: str
    os: str
    doc: str
    default: Callable[[Profile], Any]
    validate: Validator
    exists: Callable[[Profile], bool] = lambda p: True
    since: str = ""  # human text for "does not exist on this kernel" messages


def _int_in(lo: int, hi: int) -> Validator:
    def v(x: Any, p: Profile) -> int:
        if isinstance(x, bool) or not isinstance(x, int | str):
            raise ValueError(f"expected an integer in {lo}..{hi}")
        try:
            n = int(x)
        except ValueError:
            raise ValueError(f"expected an integer in {lo}..{hi}, got {x!r}") from None
        if not lo <= n <= hi:
            raise ValueError(f"expected an integer in {lo}..{hi}, got {n}")
        return n

    return v


def _choice(values: Callable[[Profile], tuple[Any, ...]]) -> Validator:
    def v(x: Any, p: Profile) -> Any:
        allowed = values(p)
        if isinstance(x, str) and all(isinstance(a, int) for a in allowed) and x.strip().isdigit():
            x = int(x)
        if x not in allowed or isinstance(x, bool):
            raise ValueError(f"expected one of {', '.join(map(str, allowed))} on {p.name}, got {x!r}")
        return x

    return v


def _port_range(x: Any, p: Profile) -> tuple[int, int]:
    if isinstance(x, str):
        parts = x.split()
    elif isinstance(x, list | tuple):
        parts = list(x)
    else:
        parts = []
    try:
        lo, hi = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"expected two ports 'low high' such as \"32768 60999\", got {x!r}") from None
    if not (1 <= lo <= hi <= 65535):
        raise ValueError(f"expected 1 <= low <= high <= 65535, got {lo} {hi}")
    return (lo, hi)


def parse_port_list(x: Any) -> frozenset[int]:
    """ip_local_reserved_ports syntax: "8080,9000-9100" (or a TOML list of ints/strings)."""
    if isinstance(x, list | tuple):
        x = ",".join(str(v) for v in x)
    if not isinstance(x, str):
        raise ValueError(f"expected a port list such as \"8080,9000-9100\", got {x!r}")
    ports: set[int] = set()
    for part in filter(None, (s.strip() for s in x.split(","))):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"bad port list element {part!r}") from None
        if not (0 <= a <= b <= 65535):
            raise ValueError(f"bad port list element {part!r}")
        ports.update(range(a, b + 1))
    return frozenset(ports)


def format_port_list(ports: Any) -> str:
    """The inverse of parse_port_list, as the kernel prints ip_local_reserved_ports
    (proc_do_large_bitmap): sorted, runs of consecutive ports as "a-b"."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(set(ports)):
        if run and p == run[-1] + 1:
            run[-1] = p
            continue
        if run:
            out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
        run = [p, p]
    if run:
        out.append(str(run[0]) if run[0] == run[1] else f"{run[0]}-{run[1]}")
    return ",".join(out)


def _port_list(x: Any, p: Profile) -> frozenset[int]:
    return parse_port_list(x)


L = "linux"
_SETTINGS: list[Setting] = [
    Setting("net.ipv4.ip_local_port_range", L, "ephemeral port range for connect() and bind(0)",
            lambda p: p.default_port_range, _port_range),
    Setting("net.ipv4.ip_local_reserved_ports", L, "ports never chosen automatically",
            lambda p: frozenset(), _port_list),
    Setting("net.ipv4.tcp_tw_reuse", L, "reuse TIME_WAIT 4-tuples for outgoing connect() (needs timestamps)",
            lambda p: p.default_tw_reuse, _choice(lambda p: (0, 1, 2) if p.at_least(4, 18) else (0, 1))),
    Setting("net.ipv4.tcp_tw_reuse_delay", L, "ms before a TIME_WAIT socket may be reused",
            lambda p: 1000, _int_in(1, 60000), exists=lambda p: p.at_least(6, 14), since="6.14"),
    Setting("net.ipv4.tcp_tw_recycle", L, "fast TIME_WAIT recycling with per-peer timestamp checks",
            lambda p: 0, _choice(lambda p: (0, 1)), exists=lambda p: p.has_tw_recycle,
            since="2.6.32 to 4.11 (removed in 4.12)"),
    Setting("net.ipv4.tcp_timestamps", L, "RFC 1323/7323 timestamps (2: without random offsets)",
            lambda p: 1, _choice(lambda p: (0, 1, 2) if p.at_least(4, 10) else (0, 1))),
    Setting("net.ipv4.tcp_max_tw_buckets", L, "maximum TIME_WAIT + FIN_WAIT2 mini-sockets (machine-dependent: ehash/2)",
            lambda p: 180000 if p.version < (3, 0, 0) else 262144, _int_in(0, 2**31 - 1)),
    Setting("net.ipv4.tcp_fin_timeout", L, "orphaned FIN_WAIT2 timeout (not TIME_WAIT)",
            lambda p: 60, _int_in(1, 2**31 - 1)),
    Setting("net.ipv4.tcp_rfc1337", L, "1: ignore RST in TIME_WAIT (RFC 1337)",
            lambda p: 0, _choice(lambda p: (0, 1))),
    Setting("net.ipv4.tcp_syncookies", L, "SYN cookies when the SYN queue overflows",
            lambda p: 1, _choice(lambda p: (0, 1, 2))),
    Setting("net.ipv4.tcp_max_syn_backlog", L, "SYN queue heuristic limit (machine-dependent)",
            lambda p: 1024, _int_in(1, 2**31 - 1)),
    Setting("net.core.somaxconn", L, "upper bound for listen() backlog",
            lambda p: p.default_somaxconn, _int_in(1, 2**31 - 1)),
    Setting("net.ipv4.tcp_abort_on_overflow", L, "RST instead of dropping when the accept queue is full",
            lambda p: 0, _choice(lambda p: (0, 1))),
    Setting("net.ipv4.tcp_syn_retries", L, "SYN retransmissions before connect() fails",
            lambda p: p.default_syn_retries, _int_in(1, 127)),
    Setting("net.ipv4.tcp_syn_linear_timeouts", L, "SYN retransmissions at the initial RTO before it doubles",
            lambda p: 4, _int_in(0, 127), exists=lambda p: p.at_least(6, 5), since="6.5"),
    Setting("net.ipv4.tcp_synack_retries", L, "SYN-ACK retransmissions",
            lambda p: 5, _int_in(1, 255)),
    Setting("net.ipv4.tcp_invalid_ratelimit", L, "ms between ACKs for out-of-window segments",
            lambda p: 500, _int_in(0, 2**31 - 1), exists=lambda p: p.at_least(4, 0), since="4.0"),
    Setting("net.netfilter.nf_conntrack_tcp_timeout_time_wait", L, "conntrack TIME_WAIT hold (NAT/firewall hosts)",
            lambda p: 120, _int_in(0, 2**31 - 1)),
    Setting("net.netfilter.nf_conntrack_tcp_timeout_close", L, "conntrack CLOSE hold after RST",
            lambda p: 10, _int_in(0, 2**31 - 1)),
    Setting("net.netfilter.nf_conntrack_max", L, "conntrack table size",
            lambda p: 262144, _int_in(1, 2**31 - 1)),
    # Windows: netsh / registry names
    Setting("netsh.tcp.timestamps", "windows", "netsh int tcp set global timestamps=... (RFC 1323 Timestamps)",
            lambda p: "disabled", _choice(lambda p: ("disabled", "allowed", "enabled"))),
    Setting("netsh.tcp.initialrto", "windows", "netsh int tcp set global initialRto=... (ms)",
            lambda p: p.win_initial_rto_ms, _int_in(300, 3000)),
    Setting("netsh.tcp.maxsynretransmissions", "windows", "netsh int tcp set global maxsynretransmissions=...",
            lambda p: p.win_max_syn_retrans, _int_in(2, 8)),
    Setting("netsh.ipv4.dynamicport.tcp.start", "windows", "netsh int ipv4 set dynamicport tcp start=...",
            lambda p: 49152, _int_in(1025, 65535)),
    Setting("netsh.ipv4.dynamicport.tcp.num", "windows", "netsh int ipv4 set dynamicport tcp num=...",
            lambda p: 16384, _int_in(255, 64511)),
    Setting("TcpTimedWaitDelay", "windows", "HKLM\\...\\Tcpip\\Parameters\\TcpTimedWaitDelay (s); "
            "240 per the current Microsoft doc, 120 per others (docs/kernel.md §12)",
            lambda p: 240, _int_in(30, 300)),
    # macOS sysctls
    Setting("net.inet.tcp.rfc1323", "macos", "timestamps and window scaling", lambda p: 1, _choice(lambda p: (0, 1))),
    Setting("net.inet.ip.portrange.first", "macos", "first ephemeral port", lambda p: 49152, _int_in(1024, 65535)),
    Setting("net.inet.ip.portrange.last", "macos", "last ephemeral port", lambda p: 65535, _int_in(1024, 65535)),
    Setting("net.inet.tcp.msl", "macos", "MSL in ms (TIME_WAIT = 2 x MSL)", lambda p: 15000, _int_in(1, 600000)),
    Setting("net.inet.tcp.keepinit", "macos", "connect timeout in ms", lambda p: 75000, _int_in(1000, 600000)),
]

SETTINGS: dict[str, Setting] = {s.name: s for s in _SETTINGS}

# Real Linux sysctls that exist but do not change what tcpreuse models.
UNMODELLED_LINUX = frozenset(
    {
        "net.ipv4.tcp_sack", "net.ipv4.tcp_window_scaling", "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem", "net.core.rmem_max", "net.core.wmem_max", "net.core.rmem_default",
        "net.core.wmem_default", "net.ipv4.tcp_congestion_control", "net.ipv4.tcp_slow_start_after_idle",
        "net.ipv4.tcp_mtu_probing", "net.ipv4.tcp_orphan_retries", "net.ipv4.tcp_max_orphans",
        "net.ipv4.tcp_retries1", "net.ipv4.tcp_retries2", "net.ipv4.tcp_fastopen", "net.ipv4.ip_forward",
        "net.ipv4.tcp_ecn", "net.ipv4.tcp_no_metrics_save", "net.core.netdev_max_backlog",
        "fs.file-max", "fs.nr_open", "net.ipv4.ip_nonlocal_bind", "net.ipv4.tcp_autocorking",
        "net.ipv4.tcp_notsent_lowat", "net.ipv4.tcp_fack", "net.ipv4.tcp_dsack", "net.ipv4.tcp_mem",
        "net.ipv4.ip_autobind_reuse", "net.ipv4.tcp_base_mss", "net.ipv4.tcp_moderate_rcvbuf",
    }
)


def known_settings(p: Profile) -> list[Setting]:
    return [s for s in _SETTINGS if s.os == p.os and s.exists(p)]


def resolve_settings(p: Profile, overrides: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Defaults of profile `p` with `overrides` applied and validated.

    Returns (settings, notes). Raises UnknownSettingError naming the setting when it does
    not exist at all or not on this kernel, and ValueError (with the expectation) for a
    bad value; the scenario loader adds file and line.
    """
    out = {s.name: s.default(p) for s in known_settings(p)}
    notes: list[str] = []
    for name, value in overrides.items():
        s = SETTINGS.get(name)
        if s is None or s.os != p.os:
            if p.os == "linux" and name in UNMODELLED_LINUX:
                notes.append(f"{name} is a real sysctl but does not change the model; ignored")
                continue
            if s is not None:
                raise UnknownSettingError(f"{name} is a {s.os} setting; it does not exist on {p.name}")
            near = [k for k in SETTINGS if SETTINGS[k].os == p.os and name.rsplit(".", 1)[-1] in k]
            hint = f"did you mean {near[0]}?" if near else f"known {p.os} settings: " + ", ".join(
                s.name for s in known_settings(p)
            )
            raise UnknownSettingError(f"unknown setting {name!r} for a {p.os} host", hint=hint)
        if not s.exists(p):
            raise UnknownSettingError(
                f"{name} does not exist on {p.name} (kernel {vstr(p.version)}); it exists in {s.since}"
            )
        out[name] = s.validate(value, p)
    return out, notes


# ---- model parameters: facts the references mark as inference ---------------------------

@dataclass(frozen=True)
class ParamSpec:
    name: str
    oses: tuple[str, ...]
    default: Any
    choices: tuple[Any, ...] | None
    doc: str


PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        ParamSpec("isn", ("windows", "macos"), "rfc6528", ("rfc6528", "random"),
                  "ISN generator. rfc6528: hash(4-tuple) + 4 us clock, monotonic for one host "
                  "reusing one 4-tuple; random: unrelated per connection. Windows' generator is "
                  "undocumented (docs/kernel.md §12) [I]."),
        ParamSpec("port_order", ("windows", "macos"), "sequential", ("sequential", "random"),
                  "Ephemeral port allocation order of a host-wide pool [I] (Windows sequential; "
                  "macOS net.inet.ip.portrange.randomized=1 means random)."),
        ParamSpec("on_bad_ack", ("windows",), "rst_and_wait_rto", ("rst_and_wait_rto", "abort"),
                  "Windows in SYN-SENT receiving an ACK that does not ack its SYN [I] (docs/kernel.md §12)."),
        ParamSpec("rst_retry_interval_s", ("windows",), 0.5, None,
                  "Windows re-sends a SYN answered by RST about every 0.5 s until its SYN "
                  "retransmissions are used up, then WSAECONNREFUSED (docs/kernel.md §12) [V2]."),
        ParamSpec("ts_hz", ("windows", "macos"), 1000, None,
                  "TS option clock rate when timestamps are on [I]."),
        ParamSpec("hz", ("linux",), 1000, (100, 250, 300, 1000),
                  "CONFIG_HZ (jiffies rate; TS clock before 4.13). RHEL/CentOS use 1000 [S]."),
        ParamSpec("tick_delay_s", ("linux",), 0.0, None,
                  "How long after each whole second of CLOCK_MONOTONIC the kernel's next timer "
                  "tick comes (0 to 1/HZ): ktime_get_seconds() turns over only then (4.19+). "
                  "validate measures it from CLOCK_MONOTONIC_COARSE."),
        ParamSpec("jiffies_lag_s", ("linux",), 0.0, None,
                  "How far the kernel's jiffies lag CLOCK_MONOTONIC: jiffies = INITIAL_JIFFIES + "
                  "(uptime - lag) x HZ (~0.3 s on a 6.18 host). Places the 5.18+ port re-salt "
                  "(every 10 s of jiffies) and timer-wheel buckets; validate reads it from "
                  "/proc/timer_list."),
        ParamSpec("ts_offsets", ("linux",), None, None,
                  "TCP timestamp offsets (u32) of this group's instances, as a table instance -> "
                  "offset, e.g. {client-1 = 123, client-2 = 4000000000}: where the profile keys "
                  "offsets per (saddr, daddr) (secure_tcp_ts_off(), 4.11-6.17) each listed "
                  "instance uses its offset towards every destination instead of the keyed hash "
                  "of its secret; per 4-tuple (4.10, 6.18) it is ignored. validate measures them "
                  "in the lab (getsockopt TCP_TIMESTAMP of each client's first connection). "
                  "Default: drawn from the seed."),
        ParamSpec("uptime_s", ("linux", "windows", "macos"), None, None,
                  "Host uptime at the start of the run (TS clock base). Default: drawn from the "
                  "seed between 1 hour and 30 days, different per host."),
    ]
}


TABLE_PARAMS = frozenset({"ts_offsets"})  # instance name -> value (u32), not one number


def _table(name: str, value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{name}: expected a table of instance name -> offset, got {value!r}")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 32:
            raise ValueError(f"{name}.{k}: expected an integer from 0 to 4294967295, got {v!r}")
        out[str(k)] = v
    return out


def resolve_params(p: Profile, overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: v.default for k, v in PARAMS.items() if p.os in v.oses}
    for name, value in overrides.items():
        head, dot, key = name.partition(".")
        if dot and head in TABLE_PARAMS and p.os in PARAMS[head].oses:  # --set ...model.ts_offsets.client-1=N
            out[head] = {**(out.get(head) or {}), **_table(head, {key: value})}
            continue
        if name in TABLE_PARAMS and p.os in PARAMS[name].oses:
            out[name] = {**(out.get(name) or {}), **_table(name, value)}
            continue
        spec = PARAMS.get(name)
        if spec is None or p.os not in spec.oses:
            valid = ", ".join(k for k, v in PARAMS.items() if p.os in v.oses)
            raise UnknownSettingError(f"unknown model parameter {name!r} for a {p.os} host",
                                      hint=f"valid: {valid}")
        if spec.choices is not None and value not in spec.choices:
            raise ValueError(f"expected one of {', '.join(map(str, spec.choices))}, got {value!r}")
        if spec.choices is None and value is not None and not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        out[name] = value
    return out
