"""What a host's TCP stack does as a client, by OS: SYN retransmission schedule,
reaction to an unacceptable ACK or a RST in SYN-SENT, TIME_WAIT length, whether its SYN
carries timestamps, and the errno names an application sees.

Linux: docs/kernel.md §3.1 (SYN-SENT), §6 (recycle), §8 (SYN retransmission). Windows and
macOS: docs/kernel.md §12.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .profiles import Profile
from .settings import SETTINGS
from .timewait import TCP_TIMEWAIT_LEN

# macOS/XNU tcp_syn_backoff[] multipliers of the initial RTO [I: from XNU tcp_timer.c
# as remembered, not re-read]; connect() gives up at net.inet.tcp.keepinit (75 s).
XNU_SYN_BACKOFF = (1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 64, 64)

TCP_TIMEOUT_MIN = 2  # jiffies (include/net/tcp.h): the SYN-SENT re-arm after an unacceptable ACK
TCP_RTO_MAX_S = 120  # include/net/tcp.h: TCP_RTO_MAX = 120 * HZ

ERRNO = {
    "linux": {
        "no_port": "EADDRNOTAVAIL",
        "timeout": "ETIMEDOUT",
        "refused": "ECONNREFUSED",
        "reset": "ECONNRESET",
    },
    "macos": {
        "no_port": "EADDRNOTAVAIL",
        "timeout": "ETIMEDOUT",
        "refused": "ECONNREFUSED",
        "reset": "ECONNRESET",
    },
    # Winsock: 10048 (".NET: Only one usage of each socket address ..."), 10060, 10061, 10054
    "windows": {
        "no_port": "WSAEADDRINUSE",
        "timeout": "WSAETIMEDOUT",
        "refused": "WSAECONNREFUSED",
        "reset": "WSAECONNRESET",
    },
}


@dataclass(frozen=True)
class ClientStack:
    os: str
    syn_offsets: tuple[float, ...]  # send times of the SYN and its retransmissions, from t0
    give_up_s: float  # connect() fails with ETIMEDOUT at t0 + give_up_s
    offers_ts: bool
    time_wait_s: float
    # Linux >= 5.7: after a bad ACK the SYN timer is re-armed to TCP_TIMEOUT_MIN jiffies (0: no)
    fast_rearm_j: int
    rst_to_syn_retry_s: float | None  # Windows: keeps re-sending SYNs after a RST
    abort_on_bad_ack: bool
    errno: dict[str, str]
    # Linux: SYN retransmission timer values (jiffies) for model.timers; () for other OSes,
    # whose SYNs follow syn_offsets.
    syn_rto_j: tuple[int, ...] = ()
    # Linux 5.4+: the SYN-SENT time budget of tcp_write_timeout() in ms (0: count only)
    syn_budget_ms: int = 0


def linux_syn_offsets(initial_rto_s: float, syn_retries: int) -> tuple[tuple[float, ...], float]:
    """SYN at 0, then after RTO, 2 RTO, 4 RTO ... (tcp_retransmit_timer() backoff,
    TCP_RTO_MAX 120 s); gives up when the timer after the last retransmission fires
    (tcp_write_timeout(): 1+2+...+2^retries RTOs, 127 s for 6 retries at 1 s)."""
    t, rto, out = 0.0, initial_rto_s, [0.0]
    for _ in range(syn_retries):
        t += rto
        out.append(t)
        rto = min(rto * 2, 120.0)
    return tuple(out), t + rto


def linux_syn_rtos(initial_rto_s: float, syn_retries: int, linear: int, hz: int) -> tuple[int, ...]:
    """The retransmission timeout (jiffies) armed after the SYN (index 0) and after each
    retransmission r (index r); the timer armed after the last one gives up.

    tcp_retransmit_timer() (net/ipv4/tcp_timer.c): icsk_backoff++ on each retransmission;
    the RTO doubles (up to TCP_RTO_MAX, 120 s) -- in SYN-SENT only once icsk_backoff >
    tcp_syn_linear_timeouts (ccce324dabfe, 6.5; 0 before). tcp_write_timeout(): SYN-SENT
    gives up after tcp_syn_retries + tcp_syn_linear_timeouts retransmissions, or earlier on
    its time budget (syn_sent_expired()). So 6.5+ with the defaults (6, 4) sends SYNs at 0,
    1, 2, 3, 4, 5, 7, 11, 19, 35, 67 s and gives up at 131 s; before 6.5: 0, 1, 3, 7, 15,
    31, 63 s, giving up at 127 s."""
    rto = round(initial_rto_s * hz)
    out = [rto]
    for backoff in range(1, syn_retries + linear + 1):
        if backoff > linear:
            rto = min(rto * 2, 120 * hz)
        out.append(rto)
    return tuple(out)


def tcp_model_timeout_ms(boundary: int, rto_base_j: int, hz: int) -> int:
    """mirrors tcp_model_timeout() (net/ipv4/tcp_timer.c, 5.1-6.18): how long `boundary`
    retransmissions take when the RTO starts at rto_base and doubles up to TCP_RTO_MAX, in
    ms (jiffies_to_msecs()). For SYN-SENT rto_base is tcp_timeout_init() (1 s): 3 s for
    tcp_syn_retries 1, 7 s for 2, 127 s for 6."""
    thresh = (TCP_RTO_MAX_S * hz // rto_base_j).bit_length() - 1  # ilog2(TCP_RTO_MAX / rto_base)
    if boundary <= thresh:
        timeout = ((2 << boundary) - 1) * rto_base_j
    else:
        timeout = ((2 << thresh) - 1) * rto_base_j + (boundary - thresh) * TCP_RTO_MAX_S * hz
    return timeout * 1000 // hz


def syn_sent_expired(retransmits: int, max_retransmits: int, elapsed_ms: int, budget_ms: int) -> bool:
    """mirrors tcp_write_timeout() for SYN-SENT (net/ipv4/tcp_timer.c), called when the
    retransmission timer fires: give up when icsk_retransmits reached max_retransmits
    (tcp_syn_retries, + tcp_syn_linear_timeouts on 6.5+) OR -- 5.4+, `budget_ms` > 0 --
    when retransmits_timed_out(sk, tcp_syn_retries, 0) says so: at least one retransmission
    and tcp_time_stamp - retrans_stamp (ms since the first SYN) >= tcp_model_timeout(
    tcp_syn_retries, tcp_timeout_init()). Whichever comes first.

    The budget counts tcp_syn_retries exponential RTOs, so before 6.5 it never comes before
    the count; with 6.5's linear timeouts it does when tcp_syn_retries < 3: retries 1 gives
    up at 3 s after 3 SYNs (not 7 s after 6), retries 2 at 7 s after 6 SYNs (not 11 s after 7)."""
    if retransmits >= max_retransmits:
        return True
    return budget_ms > 0 and retransmits > 0 and elapsed_ms >= budget_ms


def linux_syn_schedule(rtos: tuple[int, ...], budget_ms: int, hz: int) -> tuple[tuple[float, ...], float]:
    """Nominal SYN send times (s from the first SYN) and give-up time, on timers that fire
    exactly on expiry (syn_sent_expired() at each firing). On a timer wheel the engine
    checks each real firing instead (timers fire late, never early)."""
    offs, t_j = [0.0], 0
    for r, rto in enumerate(rtos):
        t_j += rto
        if syn_sent_expired(r, len(rtos) - 1, t_j * 1000 // hz, budget_ms):
            break
        offs.append(t_j / hz)
    return tuple(offs), t_j / hz


def linux_data_retry_j(k: int, srtt_s: float, hz: int, tlp: bool) -> int:
    """Jiffies until retransmission k (1-based) of a lone data segment, armed when the
    previous one was sent. With tail loss probe (3.10+, tcp_schedule_loss_probe(),
    net/ipv4/tcp_output.c): the first is the probe, srtt/4 + TCP_RTO_MIN (one packet in
    flight); the RTO timer then runs at srtt + TCP_RTO_MIN, doubling from the next one
    (tcp_retransmit_timer()). Seen on 6.18: 208, 212, 412 ms at HZ=250."""
    rto = math.ceil((srtt_s + 0.2) * hz)  # usecs_to_jiffies() rounds up
    if not tlp:
        return rto << (k - 1)
    if k == 1:
        return max(math.ceil(0.01 * hz), math.ceil((srtt_s / 4 + 0.2) * hz))
    return rto << (k - 2)


def client_stack(p: Profile, settings: dict[str, Any], params: dict[str, Any]) -> ClientStack:
    if p.os == "linux":
        hz = int(params.get("hz", 1000))
        retries = int(settings["net.ipv4.tcp_syn_retries"])
        rtos = linux_syn_rtos(p.initial_rto_s, retries, int(settings.get("net.ipv4.tcp_syn_linear_timeouts", 0)), hz)
        # retransmits_timed_out(): rto_base = tcp_timeout_init(sk) in SYN-SENT (the initial RTO)
        budget = tcp_model_timeout_ms(retries, round(p.initial_rto_s * hz), hz) if p.syn_sent_time_budget else 0
        offs, give_up = linux_syn_schedule(rtos, budget, hz)  # nominal, without the wheel
        return ClientStack(
            os="linux", syn_offsets=offs, give_up_s=give_up, syn_rto_j=rtos, syn_budget_ms=budget,
            offers_ts=int(settings["net.ipv4.tcp_timestamps"]) != 0,
            time_wait_s=TCP_TIMEWAIT_LEN,
            fast_rearm_j=TCP_TIMEOUT_MIN if p.synsent_fast_rearm else 0,
            rst_to_syn_retry_s=None, abort_on_bad_ack=False, errno=ERRNO["linux"],
        )
    if p.os == "windows":
        rto = int(settings["netsh.tcp.initialrto"]) / 1000.0
        n = int(settings["netsh.tcp.maxsynretransmissions"])
        offs, give_up = linux_syn_offsets(rto, n)
        # Measured: 4 retransmissions at 1 s give up at 21.0 s, not 31 s (docs/kernel.md §12) -> a cap.
        give_up = min(give_up, p.win_connect_cap_s)
        offs = tuple(o for o in offs if o < give_up)
        return ClientStack(
            os="windows", syn_offsets=offs, give_up_s=give_up,
            offers_ts=settings["netsh.tcp.timestamps"] == "enabled",
            time_wait_s=float(settings["TcpTimedWaitDelay"]),
            fast_rearm_j=0,
            rst_to_syn_retry_s=float(params.get("rst_retry_interval_s", 0.5)),
            abort_on_bad_ack=params.get("on_bad_ack") == "abort",
            errno=ERRNO["windows"],
        )
    keepinit = int(settings["net.inet.tcp.keepinit"]) / 1000.0
    offs_l, t = [0.0], 0.0
    for m in XNU_SYN_BACKOFF:
        t += 1.0 * m
        if t >= keepinit:
            break
        offs_l.append(t)
    return ClientStack(
        os="macos", syn_offsets=tuple(offs_l), give_up_s=keepinit,
        offers_ts=int(settings["net.inet.tcp.rfc1323"]) == 1,
        time_wait_s=2 * int(settings["net.inet.tcp.msl"]) / 1000.0,
        fast_rearm_j=0, rst_to_syn_retry_s=None, abort_on_bad_ack=False, errno=ERRNO["macos"],
    )


@dataclass(frozen=True)
class SynShape:
    """What a client's SYN looks like besides its ports and numbers: window, options in
    sending order, TTL. Not kernel rules but fingerprints, so inference [I]: p0f's
    signatures (Windows 7/8/2008R2-2016 "8192,8:mss,nop,ws,nop,nop,sok"; Windows 10/2019+
    64240; with timestamps enabled Windows sends "mss,nop,ws,sok,ts"; macOS
    "65535,6:mss,nop,ws,nop,nop,ts,sok,eol"). The packet-level client (tcpreuse.emulate)
    sends these; the kernel's decisions this project is about do not depend on them."""

    window: int
    wscale: int
    mss: int
    layout: tuple[str, ...]  # option kinds in sending order ("ts" only when offered)
    ttl: int


def syn_shape(p: Profile, offers_ts: bool) -> SynShape:
    layout: tuple[str, ...]
    if p.os == "windows":
        window = 64240 if p.win_initial_rto_ms < 3000 else 8192  # the 2019+ defaults vs older
        layout = ("mss", "nop", "ws", "sok", "ts") if offers_ts else ("mss", "nop", "ws", "nop", "nop", "sok")
        return SynShape(window=window, wscale=8, mss=1460, layout=layout, ttl=128)
    if p.os == "macos":
        layout = ("mss", "nop", "ws", "nop", "nop", "ts", "sok") if offers_ts else ("mss", "nop", "ws", "sok")
        return SynShape(window=65535, wscale=6, mss=1460, layout=layout, ttl=64)
    layout = ("mss", "sok", "ts", "nop", "ws") if offers_ts else ("mss", "nop", "nop", "sok", "nop", "ws")
    return SynShape(window=64240, wscale=7, mss=1460, layout=layout, ttl=64)


def port_range(p: Profile, settings: Mapping[str, Any]) -> tuple[int, int]:
    """The ephemeral range (inclusive) of a host, whatever its OS, from its settings: Linux
    `ip_local_port_range`, Windows `netsh int ipv4 dynamicport tcp` start/num, macOS
    `net.inet.ip.portrange.first/last`. A setting absent from `settings` (a host that did
    not report it) takes that OS's default from model.settings; the one place that
    derives a range, for the simulator, the lab and host facts alike."""
    def get(name: str) -> Any:
        v = settings.get(name)
        return SETTINGS[name].default(p) if v is None else v

    if p.os == "linux":
        rng = get("net.ipv4.ip_local_port_range")
        if not (isinstance(rng, tuple | list) and len(rng) == 2):
            rng = p.default_port_range
        lo, hi = int(rng[0]), int(rng[1])
        return (hi, lo) if hi < lo else (lo, hi)
    if p.os == "windows":
        start = int(get("netsh.ipv4.dynamicport.tcp.start"))
        num = int(get("netsh.ipv4.dynamicport.tcp.num"))
        return start, min(65535, start + num - 1)
    return int(get("net.inet.ip.portrange.first")), int(get("net.inet.ip.portrange.last"))
