"""Small scenario texts shared by tests: a Linux client closing first toward one server."""

from __future__ import annotations


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
