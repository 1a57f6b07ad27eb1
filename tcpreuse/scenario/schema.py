"""The scenario file format (TOML), validated with pydantic.

One file describes hosts (OS/kernel profile, settings), an optional NAT and an optional
layer-4 load balancer, and one or more workloads. The same file drives `simulate`,
`lab` and `validate`. See docs/scenarios.md for every field with its reference.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


class _Strict(BaseModel):
    # inf and nan are no durations, rates or times (a run of inf s never ends)
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)


class HostGroup(_Strict):
    """A host, or `count` identical hosts (instances are named GROUP-1 .. GROUP-N)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,30}$")
    role: Literal["client", "server"]
    count: int = Field(1, ge=1, le=4096)
    profile: str = "linux-6.18"
    description: str = ""
    # First address of the group; instances and extra source addresses follow it.
    address: str | None = None
    # Source addresses per client instance (several source IPs).
    addresses_per_host: int = Field(1, ge=1, le=256)
    # Server side: it listens on `port` and on every one of `ports` (one application, one
    # set of workers, a listen queue per port); `ports` alone sets `port` to its first.
    port: int = Field(80, ge=1, le=65535)
    ports: list[int] = Field(default_factory=list, max_length=64)
    backlog: int = Field(511, ge=1, le=65535)
    workers: int = Field(256, ge=1, le=1_000_000)  # application concurrency (accept + serve)
    service_ms: float = Field(0.2, ge=0)  # application time per request
    settings: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] = Field(default_factory=dict)

    # Filled by the loader: effective settings and model parameters of this profile.
    _settings: dict[str, Any] = PrivateAttr(default_factory=dict)
    _params: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def effective_settings(self) -> dict[str, Any]:
        return self._settings

    @property
    def params(self) -> dict[str, Any]:
        return self._params

    @field_validator("ports")
    @classmethod
    def _port_numbers(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"ports must be between 1 and 65535 (got {bad[0]})")
        return v

    @model_validator(mode="after")
    def _first_port(self) -> HostGroup:
        if self.ports and "port" not in self.model_fields_set:
            self.port = self.ports[0]
        return self

    @property
    def listen_ports(self) -> list[int]:
        """Every port a server group listens on: `port`, then the rest of `ports`."""
        return list(dict.fromkeys([self.port, *self.ports]))

    def instance_names(self) -> list[str]:
        return [self.name] if self.count == 1 else [f"{self.name}-{i}" for i in range(1, self.count + 1)]


class Nat(_Strict):
    """Source NAT (conntrack + SNAT/MASQUERADE, or a cloud/carrier NAT) in front of clients."""

    name: str = "nat"
    clients: list[str] = Field(default_factory=list, description="client groups behind the NAT")
    addresses: int = Field(1, ge=1, le=256)
    address: str | None = None
    # preserve: keep the client's port unless the translated tuple clashes (netfilter
    # default, libipt_SNAT.man); sequential: a rover; random: --random-fully.
    port_policy: Literal["preserve", "sequential", "random"] = "preserve"
    port_range: tuple[int, int] = (1024, 65535)
    # How long a closed flow still owns its translation (conntrack TIME_WAIT 120 s;
    # GCP 120 s; Azure NAT GW 65 s; AWS unknown) and after a RST (conntrack CLOSE 10 s).
    time_wait_s: float = Field(120.0, ge=0)
    close_s: float = Field(10.0, ge=0)
    # Per destination port scope (cloud NATs count ports per destination endpoint).
    max_attempts: int | None = Field(None, ge=1, description="nf_nat port search limit (248 in newer kernels)")


class LoadBalancer(_Strict):
    """A layer-4 load balancer (A10 SLB, F5 FastL4, LVS/IPVS NAT, nftables DNAT)."""

    name: str = "lb"
    vip: str = "203.0.113.10"
    port: int = Field(80, ge=1, le=65535)
    backends: str = Field(description="server group behind the VIP")
    scheduler: Literal["round_robin", "random", "source_hash", "least_conn"] = "round_robin"
    snat: bool = False
    snat_addresses: int = Field(1, ge=1, le=256)
    snat_address: str | None = None
    snat_port_order: Literal["sequential", "random", "preserve"] = "sequential"
    snat_port_range: tuple[int, int] = (1024, 65535)
    # How long a session (and its SNAT port) is kept after the connection closed.
    session_hold_s: float = Field(0.0, ge=0)
    # A10 "ignore-tcp-msl": reclaim the session and SNAT port immediately at close.
    ignore_msl: bool = False
    # What the LB does with a new SYN whose tuple still has a (closing/held) session.
    # drop_then_new: IPVS conn_reuse_mode=1 (< 5.9): the first SYN is dropped and the
    # stale entry expired, so the retransmitted SYN is scheduled anew (1 s delay).
    held_session_syn: Literal["same_backend", "new_session", "drop", "drop_then_new"] = "same_backend"
    # Whether a client RST ends the LB session at once (the retransmitted SYN is then
    # scheduled anew, possibly to another back end).
    rst_ends_session: bool = True
    # F5 bug 515915: a bare ACK from the server in answer to a SYN is dropped by the LB.
    drop_server_ack_to_syn: bool = False


class Workload(_Strict):
    name: str = "load"
    clients: str = Field(description="client group that runs it")
    target: str = Field(description="'lb' (the VIP) or a server group name")
    # Destination port: one of the target group's ports (default: its `port`; the VIP's
    # port for target = "lb")
    port: int | None = Field(None, ge=1, le=65535)
    arrival: Literal["constant", "poisson", "ramp"] = "constant"
    # Requests per second over the whole group; new connections per second are
    # rate / requests_per_connection (1 by default: one connection per request).
    rate: float = Field(100.0, gt=0, description="requests per second over the whole group")
    ramp_from: float = Field(0.0, ge=0)
    start_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0)
    count: int | None = Field(None, ge=1, description="stop after this many connections")

    @property
    def connection_rate(self) -> float:
        return self.rate / self.requests_per_connection
    requests_per_connection: int = Field(1, ge=1)
    request_bytes: int = Field(64, ge=0)
    response_bytes: int = Field(64, ge=0)
    close: Literal["client", "server", "client_rst", "server_rst"] = "server"
    # How the client socket gets its source port (Linux):
    #   none: connect() autoselect; address_no_port: bind(addr, 0) with
    #   IP_BIND_ADDRESS_NO_PORT; bind0: bind(addr, 0) before connect (a port per socket).
    bind: Literal["none", "address_no_port", "bind0"] = "none"
    connect_timeout_s: float | None = Field(None, gt=0)
    request_timeout_s: float | None = Field(None, gt=0)
    retries: int = Field(0, ge=0, le=10)
    retry_delay_s: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _ramp(self) -> Workload:
        if self.arrival != "ramp" and self.ramp_from:
            raise ValueError("ramp_from only applies to arrival = \"ramp\"")
        return self


class Path(_Strict):
    rtt_ms: float = Field(0.5, gt=0, description="client to server round-trip time")
    loss: float = Field(0.0, ge=0, lt=1)


class Scenario(_Strict):
    name: str
    summary: str = ""
    description: str = ""
    seed: int = 1
    # The kernel's secrets and random draws (port offsets and their increments, ISNs,
    # timestamp offsets, NAT and LB choices, path loss) come from this seed; the arrivals
    # from `seed` alone. Default: `seed`. validate draws others (validate/run.py DRAWS).
    secrets_seed: int | None = None
    duration_s: float = Field(60.0, gt=0)
    host: list[HostGroup] = Field(min_length=1)
    nat: Nat | None = None
    lb: LoadBalancer | None = None
    workload: list[Workload] = Field(min_length=1)
    path: Path = Field(default_factory=lambda: Path())
    # Free-form notes kept with the scenario (why each value, with references).
    notes: dict[str, str] = Field(default_factory=dict)

    @field_validator("host")
    @classmethod
    def _unique_groups(cls, v: list[HostGroup]) -> list[HostGroup]:
        names = [h.name for h in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"host group names must be unique; repeated: {', '.join(sorted(dup))}")
        return v

    def workload_port(self, w: Workload) -> int:
        """The port a workload connects to."""
        if w.port is not None:
            return w.port
        if w.target == "lb":
            assert self.lb is not None
            return self.lb.port
        return self.group(w.target).port

    def group(self, name: str) -> HostGroup:
        for h in self.host:
            if h.name == name:
                return h
        raise KeyError(name)
