"""Which 4-tuple the server saw for each client connection through the NAT or the LB.

Conntrack entries vanish when their timeout ends (0 s behind an LB with no session hold),
so reading the table at the end of a run misses most flows. Instead the NAT and LB
namespaces record, in an nftables set, every new TCP flow's original (client side) and
reply (server side) addresses, from a chain that runs after the NAT hooks:

    original source, source port  ->  server address, source address and port it saw

(The destinations follow from the server address and the target; nft 1.0.6 crashes
loading or listing concatenations of six fields or more, so the record keeps five.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

SET = "flows"
SET_SIZE = 1 << 20  # a run never makes more new flows than this through one namespace

FlowKey = tuple[str, int]  # client-side source address and port
FlowVal = tuple[str, str, int]  # server address, source address and port the server saw


def record_rules() -> str:
    """The set and chain to put inside a `table ip tcpr-*` block."""
    return (
        f"  set {SET} {{\n"
        "    type ipv4_addr . inet_service . ipv4_addr . ipv4_addr . inet_service\n"
        f"    size {SET_SIZE}\n"
        "    flags dynamic\n"
        "  }\n"
        "  chain record {\n"
        "    type filter hook postrouting priority srcnat + 1; policy accept;\n"
        f"    ct state new meta l4proto tcp add @{SET} {{ ct original ip saddr . ct original "
        "proto-src . ct reply ip saddr . ct reply ip daddr . ct reply proto-dst }\n"
        "  }\n"
    )


def _concat(e: Any) -> list[Any] | None:
    """An element of `nft -j list set`: {"concat": [...]}, possibly inside {"elem": {"val": ...}}."""
    while isinstance(e, dict):
        if "concat" in e:
            return list(e["concat"])
        e = e.get("elem", {}).get("val") if "elem" in e else e.get("val")
    return None


def parse_flows(text: str) -> dict[FlowKey, set[FlowVal]]:
    """`nft -j list set ip TABLE flows` output -> original key -> the server-side views seen.

    One source (address, port) maps to several views when connect() shared the port
    across destinations, or a 4-tuple was reused during the run and landed elsewhere
    (another back end, another NAT port); see view().
    """
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return {}
    out: dict[FlowKey, set[FlowVal]] = {}
    for item in data.get("nftables", []):
        s = item.get("set") if isinstance(item, dict) else None
        if not s:
            continue
        for e in s.get("elem", []):
            c = _concat(e)
            if not c or len(c) != 5:
                continue
            try:
                key = (str(c[0]), int(c[1]))
                val = (str(c[2]), str(c[3]), int(c[4]))
            except (TypeError, ValueError):
                continue
            out.setdefault(key, set()).add(val)
    return out


def view(flows: dict[FlowKey, set[FlowVal]], src: str, sport: int,
         servers: Callable[[str], bool]) -> FlowVal | None:
    """The one server-side view of (src, sport) toward a server accepted by `servers`, or
    None when there is none or several (ambiguous)."""
    vs = {v for v in flows.get((src, sport), ()) if servers(v[0])}
    return next(iter(vs)) if len(vs) == 1 else None
