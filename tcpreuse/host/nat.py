"""Source NAT on a host: its SNAT/MASQUERADE rules and its conntrack table, parsed (pure).

Rules come from `nft -j list ruleset` (nftables) and `iptables-save -t nat` (legacy
iptables, and iptables-nft rules, which nft shows only as opaque `xt` targets); the table
from /proc/net/nf_conntrack (or the same lines built from a netlink dump). What connect()
is to a client, the NAT port search is to a router: the translated (reply) tuple must be
unique, so each (NAT address, destination, destination port) has one pool of ports
(model.nat.nf_nat_port_range), and flows that closed keep theirs for
nf_conntrack_tcp_timeout_time_wait (120 s).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..model.nat import nf_nat_port_range

NFT_RULESET = "/cmd/nft-list-ruleset.json"  # raw-sample keys of the command outputs
IPTABLES_SAVE = "/cmd/iptables-save-nat.txt"
CONNTRACK_PROC = "/proc/net/nf_conntrack"
CONNTRACK_NETLINK = "/cmd/conntrack-netlink.txt"  # /proc-format lines from a netlink dump

MAX_POOLS = 20


@dataclass
class SnatPool:
    """One SNAT/MASQUERADE rule: where it may map sources to."""

    kind: str  # masquerade | snat
    source: str  # nft | iptables
    addresses: tuple[str, str] | None = None  # None: the outgoing interface's address (masquerade)
    ports: tuple[int, int] | None = None  # None: the kernel's default ranges
    flags: list[str] = field(default_factory=list)  # random, fully-random, persistent
    rule: str = ""

    def port_text(self) -> str:
        return f"{self.ports[0]}-{self.ports[1]}" if self.ports else "default (1024-65535)"

    def holds(self, addr: str, port: int) -> bool:
        if self.ports is not None and not self.ports[0] <= port <= self.ports[1]:
            return False
        if self.addresses is None:
            return True
        try:
            a, lo, hi = (ipaddress.ip_address(x) for x in (addr, *self.addresses))
        except ValueError:
            return False
        if not a.version == lo.version == hi.version:
            return False
        return int(lo) <= int(a) <= int(hi)


def _port(v: Any) -> tuple[int, int] | None:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, dict) and isinstance(v.get("range"), list) and len(v["range"]) == 2:
        return (int(v["range"][0]), int(v["range"][1]))
    return None


def _addr(v: Any) -> tuple[str, str] | None:
    if isinstance(v, str):
        return (v, v)
    if isinstance(v, dict) and isinstance(v.get("range"), list) and len(v["range"]) == 2:
        return (str(v["range"][0]), str(v["range"][1]))
    if isinstance(v, dict) and isinstance(v.get("prefix"), dict):
        net = ipaddress.ip_network(f"{v['prefix']['addr']}/{v['prefix']['len']}", strict=False)
        return (str(net[0]), str(net[-1]))
    return None


def pools_from_nft(text: str) -> tuple[list[SnatPool], list[str]]:
    """SNAT/MASQUERADE statements of `nft -j list ruleset`."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return [], [f"nft -j list ruleset: not JSON ({e}); nftables NAT rules not read"]
    out: list[SnatPool] = []
    notes: list[str] = []
    for item in doc.get("nftables", []) if isinstance(doc, dict) else []:
        r = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(r, dict):
            continue
        where = f"nft {r.get('family', '?')} {r.get('table', '?')} {r.get('chain', '?')}"
        for ex in r.get("expr", []) or []:
            if not isinstance(ex, dict):
                continue
            for kind in ("masquerade", "snat"):
                if kind in ex:
                    body = ex[kind] if isinstance(ex[kind], dict) else {}
                    try:
                        out.append(SnatPool(kind=kind, source="nft", addresses=_addr(body.get("addr")),
                                            ports=_port(body.get("port")), flags=list(body.get("flags") or []),
                                            rule=where))
                    except (ValueError, KeyError, TypeError) as e:
                        notes.append(f"{where}: {kind} not understood ({e})")
    return out, notes


_IPT_TARGET = re.compile(r"-j (MASQUERADE|SNAT)\b(.*)$")
_IPT_PORTS = re.compile(r"--to-ports (\d+)(?:-(\d+))?")
_IPT_SOURCE = re.compile(r"--to-source (\S+)")


def pools_from_iptables_save(text: str) -> list[SnatPool]:
    """`-j MASQUERADE [--to-ports a-b]` and `-j SNAT --to-source a[-b][:p[-q]]` rules."""
    out: list[SnatPool] = []
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        if table != "nat" or not line.startswith("-A "):
            continue
        m = _IPT_TARGET.search(line)
        if not m:
            continue
        rest = m[2]
        flags = [f for f in ("random-fully", "random", "persistent") if f"--{f}" in rest.split()]
        if m[1] == "MASQUERADE":
            pm = _IPT_PORTS.search(rest)
            ports = (int(pm[1]), int(pm[2] or pm[1])) if pm else None
            out.append(SnatPool(kind="masquerade", source="iptables", ports=ports, flags=flags, rule=line.strip()))
            continue
        sm = _IPT_SOURCE.search(rest)
        if not sm:
            continue
        addr, _, port = sm[1].partition(":")
        a_lo, _, a_hi = addr.partition("-")
        p_lo, _, p_hi = port.partition("-")
        out.append(SnatPool(kind="snat", source="iptables", addresses=(a_lo, a_hi or a_lo),
                            ports=(int(p_lo), int(p_hi or p_lo)) if p_lo else None, flags=flags,
                            rule=line.strip()))
    return out


@dataclass
class CtEntry:
    state: str
    timeout_s: int
    src: str  # original direction, as the client sent it
    dst: str
    sport: int
    dport: int
    nat_addr: str  # reply direction's destination: where the server answers
    nat_port: int

    @property
    def source_nat(self) -> bool:
        return self.nat_addr != self.src or self.nat_port != self.sport


def parse_conntrack(text: str) -> tuple[list[CtEntry], int]:
    """/proc/net/nf_conntrack lines (TCP only): entries and the count of lines skipped."""
    out: list[CtEntry] = []
    bad = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[2] != "tcp":
            continue
        try:
            timeout = int(parts[4])
            state = parts[5]
            kv = [p.split("=", 1) for p in parts[6:] if "=" in p]
            src = [v for k, v in kv if k == "src"]
            dst = [v for k, v in kv if k == "dst"]
            sport = [int(v) for k, v in kv if k == "sport"]
            dport = [int(v) for k, v in kv if k == "dport"]
            out.append(CtEntry(state=state, timeout_s=timeout, src=src[0], dst=dst[0], sport=sport[0],
                               dport=dport[0], nat_addr=dst[1], nat_port=dport[1]))
        except (ValueError, IndexError):
            bad += 1
    return out, bad


def snat_use(pools: list[SnatPool], entries: list[CtEntry]) -> list[dict[str, Any]]:
    """Ports in use per (NAT address, destination, destination port), most used first, each
    against the pool its translated ports come from."""
    groups: dict[tuple[str, str, int], dict[str, Any]] = {}
    for e in entries:
        if not e.source_nat:
            continue
        key = (e.nat_addr, e.dst, e.dport)
        g = groups.get(key)
        if g is None:
            pool = next((i for i, p in enumerate(pools) if p.holds(e.nat_addr, e.nat_port)), None)
            rng = nf_nat_port_range(pools[pool].ports if pool is not None else None, e.sport)
            g = groups[key] = {"nat_addr": e.nat_addr, "dst": e.dst, "dport": e.dport, "pool": pool,
                               "ports": list(rng), "budget": rng[1] - rng[0] + 1, "in_use": 0,
                               "time_wait": 0, "established": 0, "other": 0, "sources": set()}
        g["in_use"] += 1
        g["sources"].add(e.src)
        if e.state == "TIME_WAIT":
            g["time_wait"] += 1
        elif e.state == "ESTABLISHED":
            g["established"] += 1
        else:
            g["other"] += 1
    out = sorted(groups.values(), key=lambda g: -g["in_use"] / max(g["budget"], 1))
    for g in out:
        g["sources"] = len(g["sources"])
    return out
