"""What the doctor knows of a host, whatever the source: the records host/ produces
(:mod:`.facts` builds them from an :class:`~tcpreuse.host.observed.Observed`) and the
diagnosis rules read (``tcpreuse.diagnose``). Absent knowledge is None or empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TupleUse:
    """Local ports used toward one destination from one source address.

    The first fields are counts; the rest is what host.facts judged of the tuple from
    the socket tables (None where the source could not tell, e.g. pasted output)."""

    src: str
    dst: str
    dport: int
    established: int = 0
    time_wait: int = 0
    other: int = 0  # SYN_SENT, FIN_WAIT*, CLOSE_WAIT, LAST_ACK ...
    budget: int = 0  # ports connect() may use for this tuple
    rate_per_s: float | None = None  # new connections per second (sampled)
    seconds_to_exhaustion: float | None = None
    next_free_in_s: float | None = None  # when the oldest TIME_WAIT frees up
    syn_sent: int = 0
    sources_to_destination: int = 1  # source addresses in use toward this destination
    in_use_to_destination: int = 0  # ports in use toward it over all of them
    peer_timestamps: dict[str, int] | None = None  # {"with": n, "without": m} of ESTABLISHED sockets
    tw_reuse_applies: bool = False  # tcp_tw_reuse can take this tuple's TIME_WAITs over
    tw_len_s: float | None = None  # how long a TIME_WAIT lasts on this host
    hold_s: float | None = None  # how long a closed connection holds its port (0: the peer closes first)
    tw_free_within_10s: int | None = None
    blocked: int | None = None  # ports connect() cannot take now
    sustainable_rate_per_s: float | None = None  # new connections/s the budget sustains
    attempts_per_s: float | None = None  # connect() attempts/s (traced)
    failed_no_port_per_s: float | None = None  # of which failed for want of a port (traced)
    load: float | None = None  # 1.0 = at its limit (host.facts._load)

    @property
    def in_use(self) -> int:
        return self.established + self.time_wait + self.other


@dataclass
class ListenerUse:
    addr: str
    port: int
    queue: int  # current accept-queue length (ss Recv-Q)
    backlog: int  # effective max (ss Send-Q)


@dataclass
class HostFacts:
    """What is known of one host, whatever the source. Absent knowledge is None/empty."""

    name: str
    role: str | None = None  # client | server | nat | lb | None (unknown)
    os: str = "linux"
    kernel: tuple[int, int, int] | None = None
    profile: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # names as in model.settings
    counters: dict[str, int] = field(default_factory=dict)  # deltas over window_s (nstat names)
    counters_absolute: dict[str, int] = field(default_factory=dict)
    counters_absent: set[str] = field(default_factory=set)  # do not exist on this kernel
    window_s: float | None = None
    time_wait: int | None = None
    established: int | None = None
    tuples: list[TupleUse] = field(default_factory=list)
    listeners: list[ListenerUse] = field(default_factory=list)
    conntrack: dict[str, int] | None = None  # {"count": n, "max": m}
    extra: dict[str, Any] = field(default_factory=dict)
