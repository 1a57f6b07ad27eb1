"""From a scenario to host instances with addresses, and the address plan.

Groups without an `address` get private ranges: client group k gets 10.(k+1).0.1 upwards,
server groups 10.(100+k).0.1 upwards; the NAT pool defaults to 198.51.100.1 upwards and the
LB SNAT pool to 192.0.2.1 upwards (documentation ranges). Instance i of a group with
`addresses_per_host = m` owns m consecutive addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import ScenarioError
from .schema import Scenario


def ip2int(s: str) -> int:
    try:
        return int(ipaddress.IPv4Address(s))
    except ipaddress.AddressValueError:
        raise ScenarioError(f"not an IPv4 address: {s!r}") from None


def int2ip(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


@dataclass
class Instance:
    name: str
    group: str
    role: str
    index: int  # 0-based within the group
    addrs: list[int]


def plan(sc: Scenario) -> list[Instance]:
    out: list[Instance] = []
    used: set[int] = set()
    nc = ns = 0
    for g in sc.host:
        if g.address:
            base = ip2int(g.address)
        elif g.role == "client":
            base = ip2int(f"10.{nc + 1}.0.1")
        else:
            base = ip2int(f"10.{100 + ns}.0.1")
        if g.role == "client":
            nc += 1
        else:
            ns += 1
        per = g.addresses_per_host if g.role == "client" else 1
        for i, name in enumerate(g.instance_names()):
            addrs = [base + i * per + k for k in range(per)]
            clash = used.intersection(addrs)
            if clash:
                raise ScenarioError(f"host {name}: address {int2ip(min(clash))} is used twice",
                                    hint="one server listening on several ports is one host group "
                                    "with `ports = [8080, 8081]`, and each workload's `port` picks one")
            used.update(addrs)
            out.append(Instance(name, g.name, g.role, i, addrs))
    return out


def pool(first: str | None, default: str, n: int) -> list[int]:
    base = ip2int(first or default)
    return [base + k for k in range(n)]
