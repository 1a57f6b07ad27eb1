"""What a host's TCP stack does as a client, by OS: SYN retransmission schedule,
reaction to an unacceptable ACK or a RST in SYN-SENT, TIME_WAIT length, whether its SYN
carries timestamps, and the errno names an application sees.

Linux: spec §3.5, §5.4, §11.3. Windows: path-elements §1.1-§1.5. macOS: §1.8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .profiles import Profile
from .timewait import TCP_TIMEWAIT_LEN

# macOS/XNU tcp_syn_backoff[] multipliers of the initial RTO [I: from XNU tcp_timer.c
# as remembered, not re-read]; connect() gives up at net.inet.tcp.keepinit (75 s).
XNU_SYN_BACKOFF = (1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 64, 64)

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
    fast_rearm_s: float | None  # Linux >= 5.7: SYN re-sent TCP_TIMEOUT_MIN after a bad ACK
    rst_to_syn_retry_s: float | None  # Windows: keeps re-sending SYNs after a RST
    abort_on_bad_ack: bool
    errno: dict[str, str]


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


def client_stack(p: Profile, settings: dict[str, Any], params: dict[str, Any]) -> ClientStack:
    if p.os == "linux":
        offs, give_up = linux_syn_offsets(p.initial_rto_s, int(settings["net.ipv4.tcp_syn_retries"]))
        hz = int(params.get("hz", 1000))
        return ClientStack(
            os="linux", syn_offsets=offs, give_up_s=give_up,
            offers_ts=int(settings["net.ipv4.tcp_timestamps"]) != 0,
            time_wait_s=TCP_TIMEWAIT_LEN,
            fast_rearm_s=(2 / hz) if p.synsent_fast_rearm else None,  # TCP_TIMEOUT_MIN = 2 jiffies
            rst_to_syn_retry_s=None, abort_on_bad_ack=False, errno=ERRNO["linux"],
        )
    if p.os == "windows":
        rto = int(settings["netsh.tcp.initialrto"]) / 1000.0
        n = int(settings["netsh.tcp.maxsynretransmissions"])
        offs, give_up = linux_syn_offsets(rto, n)
        # Measured: 4 retransmissions at 1 s give up at 21.0 s, not 31 s (§1.4) -> a cap.
        give_up = min(give_up, p.win_connect_cap_s)
        offs = tuple(o for o in offs if o < give_up)
        return ClientStack(
            os="windows", syn_offsets=offs, give_up_s=give_up,
            offers_ts=settings["netsh.tcp.timestamps"] == "enabled",
            time_wait_s=float(settings["TcpTimedWaitDelay"]),
            fast_rearm_s=None,
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
        fast_rearm_s=None, rst_to_syn_retry_s=None, abort_on_bad_ack=False, errno=ERRNO["macos"],
    )


def port_range(p: Profile, settings: dict[str, Any]) -> tuple[int, int]:
    """The ephemeral range (inclusive) of a host, whatever its OS."""
    if p.os == "linux":
        lo, hi = settings["net.ipv4.ip_local_port_range"]
        return int(lo), int(hi)
    if p.os == "windows":
        start = int(settings["netsh.ipv4.dynamicport.tcp.start"])
        num = int(settings["netsh.ipv4.dynamicport.tcp.num"])
        return start, min(65535, start + num - 1)
    return int(settings["net.inet.ip.portrange.first"]), int(settings["net.inet.ip.portrange.last"])
