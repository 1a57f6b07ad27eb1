"""The socket options `load` and `serve` use, under their kernel names, and the checks
that turn "this kernel or host cannot do that" into one clear error before a run starts.

Python's socket module lacks some of these constants, so they are spelled out with the
values from include/uapi/linux/in.h and tcp.h (stable ABI).
"""

from __future__ import annotations

import _socket
import errno
import os
import platform
import resource
import socket
import struct
import time

from .errors import LoadError, UnsupportedError

IP_BIND_ADDRESS_NO_PORT = 24  # v4.2: bind the address now, choose the port at connect()
IP_LOCAL_PORT_RANGE = 51  # v6.3: per-socket clamp of ip_local_port_range
TCP_INFO = getattr(socket, "TCP_INFO", 11)
# struct tcp_info: tcpi_total_retrans is the u32 at offset 100 (include/uapi/linux/tcp.h).
# A retransmitted SYN goes through tcp_retransmit_skb(), which counts it there.
TCPI_TOTAL_RETRANS_OFF = 100
TCP_INFO_LEN = TCPI_TOTAL_RETRANS_OFF + 4
TCP_TIMESTAMP = 24  # include/uapi/linux/tcp.h
LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends RST, no TIME_WAIT

_total_retrans = struct.Struct("=I").unpack_from


def total_retrans(sock: socket.socket) -> int:
    """tcpi_total_retrans of a socket (SYN retransmissions included)."""
    return int(_total_retrans(sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_LEN),
                              TCPI_TOTAL_RETRANS_OFF)[0])


def ts_offset(sock: socket.socket | _socket.socket) -> int | None:
    """The socket's TCP timestamp offset (tp->tsoffset, u32), or None where it cannot be read.

    getsockopt(TCP_TIMESTAMP) returns the TS option clock plus tp->tsoffset
    (do_tcp_getsockopt(), net/ipv4/tcp.c, 3.9+); from 4.13 that clock is CLOCK_MONOTONIC in
    ms (tcp_time_stamp_raw() 4.13-6.6, tcp_time_stamp_ms() 6.7+), so the offset is the
    difference, to within a millisecond. tcp_v4_connect() sets tsoffset before it sends
    the SYN (secure_tcp_ts_off(): per (saddr, daddr) 4.11-6.17, per 4-tuple after), so
    it can be read right after a non-blocking connect(): what the SYN's TSval carries
    beyond the clock.
    """
    best: tuple[int, int] | None = None  # (window ns, offset): the read least disturbed
    for _ in range(3):  # (a preemption between the clock reads and the call would skew one)
        try:
            m0 = time.monotonic_ns()
            val = sock.getsockopt(socket.IPPROTO_TCP, TCP_TIMESTAMP)
            m1 = time.monotonic_ns()
        except OSError:
            return None
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, (val - (m0 + m1) // 2_000_000) & 0xFFFFFFFF)
    return best[1] if best is not None else None


def local_port_range_value(lo: int, hi: int) -> bytes:
    """IP_LOCAL_PORT_RANGE takes one u32: low 16 bits the first port, high 16 the last.

    Packed as bytes: above port 32767 the value no longer fits the C int that Python's
    setsockopt() passes for an int argument.
    """
    return struct.pack("=I", (hi << 16) | lo)


def check_local_port_range(lo: int, hi: int, family: int = socket.AF_INET) -> None:
    """Refuse --local-port-range at once on kernels without IP_LOCAL_PORT_RANGE (< 6.3)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_LOCAL_PORT_RANGE, local_port_range_value(lo, hi))
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            raise UnsupportedError(
                f"--local-port-range needs IP_LOCAL_PORT_RANGE (Linux 6.3+); this kernel is "
                f"{platform.release()} and refuses it ({errno.errorcode.get(e.errno, e.errno)})",
                hint="use --source with a small address range, or set net.ipv4.ip_local_port_range "
                "in a network namespace",
            ) from None
        raise
    finally:
        s.close()


def check_sources_local(addrs: list[str], family: int) -> None:
    """Every --source address must be configured in this network namespace.

    bind() with IP_BIND_ADDRESS_NO_PORT checks the address without taking a port.
    """
    for a in addrs:
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        if fam != family:
            raise LoadError(f"--source {a} is {'IPv6' if fam == socket.AF_INET6 else 'IPv4'} but "
                            f"the target is not")
        s = socket.socket(fam, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((a, 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                raise LoadError(f"--source {a} is not an address of this host (network namespace)",
                                hint="see `ip -br addr`; only local addresses can be bound") from None
            raise LoadError(f"--source {a}: cannot bind: {e.strerror}") from None
        finally:
            s.close()


def check_route(host: str, port: int, family: int) -> None:
    """Refuse a target this namespace has no route to, before any attempt.

    connect() on a UDP socket does the route lookup and sends nothing. A routable target
    that does not answer is not refused here: that is what a run measures (ETIMEDOUT).
    """
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect((host, port))
    except OSError as e:
        if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.EINVAL):
            raise LoadError(f"target {host}:{port} is unreachable from this host (network namespace): "
                            f"{e.strerror}", hint="see `ip route get " + host + "`") from None
        raise
    finally:
        s.close()


def raise_nofile() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (as nginx does); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def errno_name(code: int) -> str:
    return errno.errorcode.get(code, f"E{code}")


def strerror(code: int) -> str:
    return os.strerror(code)
