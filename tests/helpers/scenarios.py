"""Small scenario texts shared by tests: a Linux client closing first toward one server, and
the running kernel's clients and server for lab runs."""

from __future__ import annotations

import json


def client_first(name: str, *, duration_s: float = 10, seed: int | None = None, clients: int = 1,
                 port_range: str = "40000 40499", rate: float = 40, arrival: str = "constant") -> str:
    """With N ports, a client that closes first, and TIME_WAIT 60 s, rate x duration > N
    connections fail: the arithmetic the sweep and capacity tests check against."""
    return f"""
name = "{name}"
duration_s = {duration_s}
{f"seed = {seed}" if seed is not None else ""}
[[host]]
name = "client"
role = "client"
count = {clients}
profile = "linux-5.15"
[host.settings]
"net.ipv4.ip_local_port_range" = "{port_range}"
[[host]]
name = "server"
role = "server"
profile = "linux-5.15"
port = 8080
[[workload]]
name = "w"
clients = "client"
target = "server"
close = "client"
arrival = "{arrival}"
rate = {rate}
"""


def native_lab(name: str, *, duration_s: float, rate: float, count: int, close: str,
               clients: int = 1, settings: dict[str, object] | None = None) -> str:
    """A lab scenario on the running kernel (linux-native): `clients` client hosts, one
    server on 8080, one workload of `count` attempts at `rate`; `settings` are the
    clients' sysctls."""
    lines = "".join(f'"{k}" = {json.dumps(v)}\n' for k, v in (settings or {}).items())
    return f"""
name = "{name}"
duration_s = {duration_s:g}
[[host]]
name = "client"
role = "client"
count = {clients}
profile = "linux-native"
{"[host.settings]" + chr(10) + lines if lines else ""}[[host]]
name = "server"
role = "server"
port = 8080
profile = "linux-native"
[[workload]]
name = "w"
clients = "client"
target = "server"
close = "{close}"
rate = {rate:g}
count = {count}
"""
