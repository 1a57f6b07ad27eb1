"""A small SVG diagram of a scenario's topology: clients, NAT, load balancer, servers,
each with the settings that decide short-connection behaviour.

Built from the scenario when there is one (simulate, lab), else from the hosts a
RunResult names (a saved result, a capture): whatever is known is drawn, nothing is
guessed. The SVG is written by hand (a handful of boxes and arrows); every text goes
through markupsafe.escape.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from ..result import HostInfo, RunResult
    from ..scenario.schema import Scenario

BOX_W, LINE_H, PAD, GAP_X, GAP_Y = 230, 15, 8, 70, 16
FILL = {"client": "#e8eef8", "nat": "#fdf0e2", "lb": "#f3e8f7", "server": "#e7f4ea"}


@dataclass
class Node:
    id: str
    role: str  # client | nat | lb | server
    title: str
    lines: list[str] = field(default_factory=list)


@dataclass
class Topology:
    columns: list[list[Node]] = field(default_factory=list)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (from id, to id, label)


def _on_off(v: Any) -> str:
    return {1: "on", 0: "off", "1": "on", "0": "off", "enabled": "on", "disabled": "off"}.get(v, str(v))


def host_lines(role: str, profile: str, settings: dict[str, Any]) -> list[str]:
    """The settings worth a line in the diagram, as a person says them."""
    out = [f"profile {profile}"]
    s = settings
    if "netsh.tcp.timestamps" in s:
        out.append(f"timestamps {_on_off(s['netsh.tcp.timestamps'])}")
    elif "net.ipv4.tcp_timestamps" in s:
        out.append(f"timestamps {_on_off(s['net.ipv4.tcp_timestamps'])}")
    if role == "client":
        if "netsh.ipv4.dynamicport.tcp.start" in s:
            start, num = s["netsh.ipv4.dynamicport.tcp.start"], s.get("netsh.ipv4.dynamicport.tcp.num", 0)
            out.append(f"ports {start}-{int(start) + int(num) - 1}")
        elif "net.ipv4.ip_local_port_range" in s:
            r = s["net.ipv4.ip_local_port_range"]
            out.append("ports " + (f"{r[0]}-{r[1]}" if isinstance(r, list | tuple) else str(r)))
    if "net.ipv4.tcp_tw_reuse" in s:
        out.append(f"tcp_tw_reuse {s['net.ipv4.tcp_tw_reuse']}")
    if "net.ipv4.tcp_tw_recycle" in s:
        out.append(f"tcp_tw_recycle {s['net.ipv4.tcp_tw_recycle']}")
    return out


def from_scenario(sc: Scenario) -> Topology:
    top = Topology()
    clients, servers = [], []
    for h in sc.host:
        n = Node(f"g-{h.name}", h.role, f"{h.name}" + (f" ×{h.count}" if h.count > 1 else ""),
                 host_lines(h.role, h.profile, h.effective_settings or h.settings))
        if h.role == "server":
            ports = h.listen_ports
            n.lines.insert(1, f"port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}, backlog {h.backlog}")
            servers.append(n)
        else:
            clients.append(n)
    for w in sc.workload:
        for n in clients:
            if n.id == f"g-{w.clients}":
                n.lines.append(f"{w.name}: {w.rate:,g} req/s, close by {w.close}")
    top.columns.append(clients)
    nat_clients: set[str] = set()
    if sc.nat is not None:
        nat = sc.nat
        top.columns.append([Node("nat", "nat", f"NAT {nat.name}", [
            f"{nat.addresses} address(es), ports {nat.port_range[0]}-{nat.port_range[1]}",
            f"port policy {nat.port_policy}", f"closed flow held {nat.time_wait_s:g} s"])])
        nat_clients = set(nat.clients)
    if sc.lb is not None:
        lb = sc.lb
        top.columns.append([Node("lb", "lb", f"L4 LB {lb.name}", [
            f"VIP {lb.vip}:{lb.port}, {lb.scheduler}",
            "source NAT " + (f"on ({lb.snat_addresses} addr, {lb.snat_port_order})" if lb.snat else "off"),
            f"session hold {lb.session_hold_s:g} s" + (", ignore-MSL" if lb.ignore_msl else ""),
            f"held-session SYN: {lb.held_session_syn}"])])
    top.columns.append(servers)
    for w in sc.workload:
        src = f"g-{w.clients}"
        if w.clients in nat_clients:
            top.edges.append((src, "nat", ""))
            src = "nat"
        if w.target == "lb":
            top.edges.append((src, "lb", w.name if src != "nat" else ""))
            top.edges.append(("lb", f"g-{sc.lb.backends}" if sc.lb else "", ""))
        else:
            top.edges.append((src, f"g-{w.target}", w.name))
    top.edges = list(dict.fromkeys(e for e in top.edges if e[1]))
    return top


def from_hosts(hosts: dict[str, HostInfo], meta: dict[str, Any] | None = None) -> Topology:
    """Groups of hosts of a RunResult; an LB or NAT appears when the run says it had one."""
    meta = meta or {}
    groups: dict[str, list[HostInfo]] = {}
    for h in hosts.values():
        groups.setdefault(h.group or h.name, []).append(h)
    top = Topology()
    cols: dict[str, list[Node]] = {"client": [], "nat": [], "lb": [], "server": []}
    for g, hs in groups.items():
        h = hs[0]
        role = h.role if h.role in cols else "server"
        title = g + (f" ×{len(hs)}" if len(hs) > 1 else "")
        lines = host_lines(role, h.profile, h.settings) if h.profile != "unknown" else []
        addrs = [a for x in hs for a in x.addresses]
        if addrs and role in ("client", "server"):
            lines.insert(0, addrs[0] + (f" … (+{len(addrs) - 1})" if len(addrs) > 1 else ""))
        cols[role].append(Node(f"g-{g}", role, title, lines))
    if not cols["nat"] and "nat" in meta:
        cols["nat"].append(Node("nat", "nat", "NAT", ["(from the run's counters)"]))
    if not cols["lb"] and "lb" in meta:
        cols["lb"].append(Node("lb", "lb", "L4 load balancer", ["(from the run's counters)"]))
    order = [cols[r] for r in ("client", "nat", "lb", "server") if cols[r]]
    top.columns = order
    for a, b in itertools.pairwise(order):
        for x in a:
            for y in b:
                if len(a) * len(b) <= 64:
                    top.edges.append((x.id, y.id, ""))
    return top


def of_run(run: RunResult, scenario: Scenario | None = None) -> Topology:
    return from_scenario(scenario) if scenario is not None else from_hosts(run.hosts, run.meta)


def svg(top: Topology, max_rows: int = 8) -> Markup:
    """The diagram as an inline <svg> element."""
    pos: dict[str, tuple[float, float, float]] = {}  # id -> (x, y, h)
    width = max(1, len(top.columns)) * (BOX_W + GAP_X) - GAP_X + 2 * PAD
    col_h: list[float] = []
    for ci, col in enumerate(top.columns):
        y: float = PAD
        for node in col[:max_rows]:
            h: float = (1 + len(node.lines)) * LINE_H + 2 * PAD
            pos[node.id] = (PAD + ci * (BOX_W + GAP_X), y, h)
            y += h + GAP_Y
        col_h.append(y)
    height = max(col_h or [60.0]) + PAD
    parts: list[str] = [
        f'<svg class="topology" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" aria-label="scenario topology">',
        '<defs><marker id="topo-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
    ]
    for a, b, label in top.edges:
        if a not in pos or b not in pos:
            continue
        xa, ya, ha = pos[a]
        xb, yb, hb = pos[b]
        x1, y1, x2, y2 = xa + BOX_W, ya + ha / 2, xb - 2, yb + hb / 2
        parts.append(f'<path class="topo-edge" d="M {x1:.0f} {y1:.0f} C {x1 + GAP_X / 2:.0f} {y1:.0f} '
                     f'{x2 - GAP_X / 2:.0f} {y2:.0f} {x2:.0f} {y2:.0f}" fill="none" stroke="#555" '
                     'stroke-width="1.3" marker-end="url(#topo-arrow)"/>')
        if label:
            parts.append(f'<text x="{(x1 + x2) / 2:.0f}" y="{(y1 + y2) / 2 - 4:.0f}" font-size="10" '
                         f'text-anchor="middle" fill="#555">{escape(label)}</text>')
    for col in top.columns:
        for node in col[:max_rows]:
            x, y, h = pos[node.id]
            parts.append(f'<g class="topo-node" data-role="{escape(node.role)}">'
                         f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{h:.0f}" rx="6" '
                         f'fill="{FILL.get(node.role, "#eee")}" stroke="#888"/>'
                         f'<text x="{x + PAD:.0f}" y="{y + PAD + 11:.0f}" font-size="12" font-weight="bold">'
                         f'{escape(node.title)}</text>')
            for i, line in enumerate(node.lines):
                parts.append(f'<text x="{x + PAD:.0f}" y="{y + PAD + 11 + (i + 1) * LINE_H:.0f}" '
                             f'font-size="10.5" fill="#333">{escape(_clip(line))}</text>')
            parts.append("</g>")
        if len(col) > max_rows:
            x, y, _ = pos[col[max_rows - 1].id]
            parts.append(f'<text x="{x:.0f}" y="{height - 2:.0f}" font-size="10">… {len(col) - max_rows} more</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _clip(s: str, n: int = 40) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"
