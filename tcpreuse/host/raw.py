"""Raw collections: the files and socket tables exactly as read, and how to parse them.

A :class:`RawHost` is what a live collection read (the text of every /proc file, the
socket tables, a few facts about the reading process). It is what ``--save`` writes and
``--from snap.tar.gz`` reads back, so a snapshot is diagnosed by the very same parsing
path as the live host (:func:`to_observed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .observed import (
    COUNTER_FILES,
    COUNTER_SECTIONS,
    SYSCTLS,
    CounterSample,
    Observed,
    ProcessInfo,
    SocketSample,
    sysctl_path,
)
from .procfs import ProcFS, parse_counters
from .sockets import SockTable


@dataclass
class RawSample:
    t: float  # monotonic seconds on the observed host
    files: dict[str, str] = field(default_factory=dict)  # path -> text
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    sockets: SockTable | None = None
    socket_error: str | None = None


@dataclass
class RawHost:
    meta: dict[str, Any] = field(default_factory=dict)
    samples: list[RawSample] = field(default_factory=list)
    processes: list[ProcessInfo] | None = None


def to_observed(raw: RawHost, origin: str) -> Observed:
    """Parse a raw collection. Missing pieces become notes, never exceptions."""
    m = raw.meta
    obs = Observed(name=str(m.get("name") or m.get("hostname") or "host"), netns=m.get("netns"),
                   taken_at=m.get("taken_at"), role=m.get("role"), inputs=[origin])
    rl = m.get("rlimit_nofile")
    if isinstance(rl, list | tuple) and len(rl) == 2:
        obs.rlimit_nofile = (int(rl[0]), int(rl[1]))
    obs.nat_tables = m.get("nat_tables")
    obs.ipvs_services = m.get("ipvs_services")
    obs.notes.extend(str(n) for n in m.get("notes", []))
    obs.processes = raw.processes
    if not raw.samples:
        obs.notes.append(f"{origin}: no samples recorded")
        return obs
    first = raw.samples[0]
    for name in SYSCTLS:
        path = sysctl_path(name)
        if path in first.files:
            obs.sysctls[name] = first.files[path].strip()
        elif path in first.unreadable and first.unreadable[path] != "absent":
            obs.unreadable[name] = first.unreadable[path]
    obs.kernel_release = obs.sysctls.pop("kernel.osrelease", None) or m.get("kernel_release")
    hostname = obs.sysctls.pop("kernel.hostname", None)
    if not m.get("name") and hostname:
        obs.name = hostname
    for s in raw.samples:
        values: dict[str, int] = {}
        unread: set[str] = set()
        got = False
        proc = ProcFS.recorded(s.files)
        for path in COUNTER_FILES:
            try:
                text = proc.read(path[len("/proc/"):])
            except OSError:
                text = None
            if text is not None:
                v, notes = parse_counters(text, path)
                values.update(v)
                obs.notes.extend(notes)
                got = True
            else:
                unread |= COUNTER_SECTIONS[path]
                if path in s.unreadable:
                    obs.unreadable[path] = s.unreadable[path]
        if got:
            obs.counters.append(CounterSample(t=s.t, values=values, unread=unread))
        if s.sockets is not None:
            obs.sockets.append(SocketSample(t=s.t, table=s.sockets))
        elif s.socket_error:
            obs.unreadable["socket table"] = s.socket_error
    _nat(first, obs)
    _trace(raw, obs)
    for path, why in obs.unreadable.items():
        obs.notes.append(f"could not read {path}: {why}")
    # The same file unreadable in both samples is reported once.
    obs.notes = list(dict.fromkeys(obs.notes))
    return obs


def _nat(s: RawSample, obs: Observed) -> None:
    """SNAT rules and the conntrack table, when they were read (forwarding hosts)."""
    from .nat import (
        CONNTRACK_NETLINK,
        CONNTRACK_PROC,
        IPTABLES_SAVE,
        NFT_RULESET,
        parse_conntrack,
        pools_from_iptables_save,
        pools_from_nft,
    )

    if NFT_RULESET in s.files or IPTABLES_SAVE in s.files:
        pools = []
        if NFT_RULESET in s.files:
            got, notes = pools_from_nft(s.files[NFT_RULESET])
            pools += got
            obs.notes.extend(notes)
        if IPTABLES_SAVE in s.files:
            pools += pools_from_iptables_save(s.files[IPTABLES_SAVE])
        obs.snat_pools = pools
    for key in (CONNTRACK_PROC, CONNTRACK_NETLINK):
        if key in s.files:
            entries, bad = parse_conntrack(s.files[key])
            obs.conntrack = entries
            if bad:
                obs.notes.append(f"{key}: {bad} line(s) not understood")
            break
    labels = {NFT_RULESET: "nft -j list ruleset (nftables NAT rules)",
              IPTABLES_SAVE: "iptables-save (iptables NAT rules)", CONNTRACK_PROC: "the conntrack table"}
    for key, label in labels.items():
        if key in s.unreadable:
            obs.unreadable[label] = s.unreadable[key]


def _trace(raw: RawHost, obs: Observed) -> None:
    """connect() attempts and failures traced between the two samples (--trace-connects)."""
    from .trace import TRACE_KEY, parse_trace

    last = raw.samples[-1]
    if TRACE_KEY in last.files and len(raw.samples) >= 2:
        obs.connect_trace = parse_trace(last.files[TRACE_KEY])
        obs.connect_trace_s = obs.connect_trace.window_s or (last.t - raw.samples[0].t)
        if obs.connect_trace.lost:
            obs.notes.append(f"connect() trace: {obs.connect_trace.lost:,} events lost (buffer overrun); "
                             "attempts are undercounted")
    elif TRACE_KEY in raw.samples[0].unreadable:
        obs.notes.append(raw.samples[0].unreadable[TRACE_KEY])
