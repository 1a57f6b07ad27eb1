"""Addresses a user types: the target HOST:PORT, listen addresses and --source specs.

Parsing is pure; the two checks that need the kernel (is this source address configured
here? does this kernel know IP_LOCAL_PORT_RANGE?) live in :mod:`tcpreuse.load.sockopt`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from .errors import LoadError

# A --source spec may expand to many addresses (a CIDR); more than this is a typo.
MAX_SOURCES = 65536


@dataclass(frozen=True)
class Endpoint:
    host: str  # numeric address
    port: int
    family: int  # socket.AF_INET or AF_INET6

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return format_addr(self.host, self.port)


def format_addr(host: str, port: int | None) -> str:
    """`1.2.3.4:80`, `[::1]:80`; without a port just the address."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str, *, what: str = "address") -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise LoadError(f"bad {what} {text!r}: expected [IPv6]:PORT")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise LoadError(f"bad {what} {text!r}: expected HOST:PORT")
        if ":" in host:
            raise LoadError(f"bad {what} {text!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        port = int(port_s)
    except ValueError:
        raise LoadError(f"bad {what} {text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise LoadError(f"bad {what} {text!r}: port {port} is out of range 0-65535")
    return host, port


def resolve(text: str, *, what: str = "target", allow_port_zero: bool = False) -> Endpoint:
    """HOST:PORT to a numeric endpoint; names are resolved once, here, not per connection."""
    host, port = split_host_port(text, what=what)
    if port == 0 and not allow_port_zero:
        raise LoadError(f"bad {what} {text!r}: port 0")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise LoadError(f"cannot resolve {what} {host!r}: {e.strerror}") from None
    # Prefer IPv4 when a name has both, as most clients of the services we imitate do.
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    fam, _, _, _, sa = infos[0]
    return Endpoint(host=str(sa[0]), port=port, family=int(fam))


def parse_sources(specs: list[str]) -> list[str]:
    """Expand --source specs (ADDR, FIRST-LAST, CIDR) into addresses, in order, no duplicates.

    A CIDR of more than two addresses leaves out its network and broadcast addresses, as
    `ipaddress.hosts()` does; a range is taken literally.
    """
    out: dict[str, None] = {}
    for spec in specs:
        spec = spec.strip()
        try:
            if "/" in spec:
                net = ipaddress.ip_network(spec, strict=False)
                if net.num_addresses > MAX_SOURCES + 2:
                    raise LoadError(f"--source {spec!r} has more than {MAX_SOURCES} addresses")
                addrs: list[str] = [str(a) for a in net.hosts()] or [str(net.network_address)]
            elif "-" in spec:
                first_s, _, last_s = spec.partition("-")
                first = ipaddress.ip_address(first_s.strip())
                last = ipaddress.ip_address(last_s.strip())
                if first.version != last.version or int(last) < int(first):
                    raise LoadError(f"bad --source range {spec!r}: the last address is before the first")
                if int(last) - int(first) + 1 > MAX_SOURCES:
                    raise LoadError(f"--source {spec!r} has more than {MAX_SOURCES} addresses")
                cls = type(first)
                addrs = [str(cls(i)) for i in range(int(first), int(last) + 1)]
            else:
                addrs = [str(ipaddress.ip_address(spec))]
        except ValueError as e:
            raise LoadError(f"bad --source {spec!r}: {e}") from None
        if len(out) + len(addrs) > MAX_SOURCES:
            raise LoadError(f"--source expands to more than {MAX_SOURCES} addresses")
        for a in addrs:
            out[a] = None
    return list(out)


def parse_port_range(text: str) -> tuple[int, int]:
    lo_s, sep, hi_s = text.partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise LoadError(f"bad --local-port-range {text!r}: expected LO-HI, e.g. 40000-40999") from None
    if not sep or not (1 <= lo <= hi <= 65535):
        raise LoadError(f"bad --local-port-range {text!r}: expected 1 <= LO <= HI <= 65535")
    return lo, hi


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(addr).version == 6 else socket.AF_INET
