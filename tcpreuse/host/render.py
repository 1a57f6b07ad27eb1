"""Doctor output: rich renderables for a person, and the JSON document.

Findings first (most severe first, each with its numbers and the commands that fix it),
then the evidence tables: sysctls, counters with rates, tuples by pressure, listeners.
Nothing here prints; the command does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Protocol

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..findings import Finding
from ..model.settings import format_port_list
from .counters import COUNTERS
from .facts import rate
from .records import HostFacts

SEV_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
SHOWN_SYSCTLS = (
    "net.ipv4.ip_local_port_range", "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_reuse_delay", "net.ipv4.tcp_tw_recycle", "net.ipv4.tcp_timestamps",
    "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_fin_timeout", "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies", "net.ipv4.tcp_abort_on_overflow",
    "net.ipv4.tcp_rfc1337", "net.ipv4.ip_forward", "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "fs.file-max", "fs.nr_open",
    "netsh.tcp.timestamps", "netsh.tcp.initialrto", "netsh.tcp.maxsynretransmissions",
    "netsh.ipv4.dynamicport.tcp.start", "netsh.ipv4.dynamicport.tcp.num", "TcpTimedWaitDelay",
)
MAX_TUPLE_ROWS = 10


class Evidence(Protocol):
    """What the renderer reads of tcpreuse.diagnose.base.Evidence (host/ does not import
    diagnose/)."""

    hosts: dict[str, HostFacts]


def _v(x: Any) -> str:
    if isinstance(x, frozenset | set):
        return format_port_list(x) if all(isinstance(v, int) for v in x) and x else \
            ",".join(map(str, sorted(x))) or "(none)"
    if isinstance(x, tuple):
        return " ".join(map(str, x))
    if isinstance(x, int) and not isinstance(x, bool) and abs(x) >= 10000:
        return f"{x:,}"
    return str(x)


def render_findings(findings: list[Finding], ev: Evidence | None = None) -> RenderableType:
    if not findings:
        one_sample = ev is not None and any(h.window_s is None and h.extra.get("socket_window_s") is None
                                            and h.os == "linux" and h.extra.get("counters_read")
                                            for h in ev.hosts.values())
        if one_sample:
            return Text("No problems found in one sample. One sample cannot see a rate: new connections/s, "
                        "listen overflows/s, SYN retransmissions/s and what runs out at that rate need two "
                        "samples (--interval 1 or more).", style="yellow")
        return Text("No problems found for short-lived connections.", style="green")
    parts: list[RenderableType] = []
    for i, f in enumerate(findings, 1):
        head = Text(f"{i}. ", style="bold")
        head.append(f"[{f.severity}] ", style=SEV_STYLE.get(f.severity, ""))
        head.append(f.title, style="bold")
        head.append(f"  ({f.id}, confidence {f.confidence:.0%}"
                    + (f", {', '.join(f.hosts)}" if f.hosts else "") + ")", style="dim")
        parts.append(head)
        parts.append(Text("   " + f.cause))
        if f.evidence:  # aligned lines: cheaper to render than a Table per finding
            lw = min(max(len(e.label) for e in f.evidence), 44)
            vw = min(max(len(_v(e.value)) for e in f.evidence), 30)
            for e in f.evidence:
                line = Text("   " + e.label.ljust(lw) + "  ", style="dim")
                line.append(_v(e.value).ljust(vw) if e.detail else _v(e.value), style="bold")
                if e.detail:
                    line.append("  " + e.detail, style="dim")
                parts.append(line)
        for j, fx in enumerate(f.fixes, 1):
            line = Text(f"   fix {j}: ", style="green")
            line.append(fx.title)
            parts.append(line)
            for c in fx.commands:
                parts.append(Text(f"      $ {c}", style="green"))
            if fx.set:
                parts.append(Text("      simulate: " + " ".join(f"--set {k}={v}" for k, v in fx.set.items()),
                                  style="dim"))
            if fx.caveat:
                parts.append(Text(f"      note: {fx.caveat}", style="dim"))
        parts.append(Text(""))
    return Group(*parts)


def _header(h: HostFacts) -> Text:
    t = Text()
    t.append(f"{h.name}", style="bold")
    kern = h.extra.get("kernel_release")
    t.append(f"  {h.os}" + (f" {kern}" if kern else "") + (f" (profile {h.profile})" if h.profile else ""))
    t.append(f"  role: {h.role or 'unknown'}", style="bold" if h.role else "dim")
    t.append(f" ({h.extra.get('role_evidence', '')})", style="dim")
    bits = []
    if h.extra.get("inputs"):
        bits.append("from " + "; ".join(h.extra["inputs"]))
    if h.window_s:
        bits.append(f"rates over {h.window_s:.2f} s")
    elif h.extra.get("counters_read"):
        bits.append("one sample: no rates (use --interval)")
    if h.extra.get("taken_at"):
        bits.append("taken " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.extra["taken_at"])))
    if bits:
        t.append("\n" + "; ".join(bits), style="dim")
    return t


def render_host(h: HostFacts) -> RenderableType:
    parts: list[RenderableType] = [_header(h)]
    # Socket summary
    if h.time_wait is not None:
        s = Text(f"sockets {h.extra.get('sockets', 0):,}: {h.established or 0:,} established, "
                 f"{h.time_wait:,} TIME_WAIT, {len(h.listeners)} listening; "
                 f"{h.extra.get('outgoing', 0):,} outgoing, {h.extra.get('incoming', 0):,} incoming")
        parts.append(s)
    b = h.extra.get("port_budget")
    if b:
        parts.append(Text(f"port budget per (source, destination): {b['usable']:,} usable of range "
                          f"{b['range'][0]}-{b['range'][1]} ({b['reserved_in_range']} reserved, "
                          f"{b['listener_ports_in_range_count']} listening; {b['fast_parity']:,} of "
                          "connect()'s parity)"))
    # Tuples
    if h.tuples:
        t = Table(title="outgoing ports per (source -> destination), most used first", title_justify="left",
                  header_style="bold", box=None, padding=(0, 1))
        for c in ("source -> destination", "in use", "%", "estab", "TW", "new/s", "free in s", "full in s"):
            t.add_column(c, justify="left" if c.startswith("source") else "right")
        for tu in h.tuples[:MAX_TUPLE_ROWS]:
            pct = tu.in_use / tu.budget if tu.budget else 1.0
            style = "red" if pct >= 0.9 else "yellow" if pct >= 0.5 else ""
            ste = tu.seconds_to_exhaustion
            dst = f"[{tu.dst}]" if ":" in tu.dst else tu.dst
            t.add_row(f"{tu.src} -> {dst}:{tu.dport}", f"{tu.in_use:,}/{tu.budget:,}", f"{pct:.0%}",
                      f"{tu.established:,}", f"{tu.time_wait:,}",
                      "-" if tu.rate_per_s is None else f"{tu.rate_per_s:,.1f}",
                      "-" if tu.next_free_in_s is None else f"{tu.next_free_in_s:.1f}",
                      "-" if ste is None else ("now" if ste == 0 else f"{ste:.1f}"), style=style)
        parts.append(t)
        more = int(h.extra.get("tuples_total", 0)) - min(len(h.tuples), MAX_TUPLE_ROWS)
        if more > 0:
            parts.append(Text(f"  ... and {more:,} more tuples", style="dim"))
    # Source NAT: pools and their use per (NAT address -> destination)
    snat = h.extra.get("snat")
    if snat:
        for pool in snat.get("pools", [])[:5]:
            addrs = "-".join(dict.fromkeys(pool["addresses"])) if pool.get("addresses") else "interface address"
            ports = f"{pool['ports'][0]}-{pool['ports'][1]}" if pool.get("ports") else "default ports"
            parts.append(Text(f"SNAT {pool['kind']} to {addrs}:{ports} ({pool['source']}: {pool['rule']})"))
        if snat.get("tuples"):
            t = Table(title="translated ports per (NAT address -> destination), most used first",
                      title_justify="left", header_style="bold", box=None, padding=(0, 1))
            for c in ("NAT address -> destination", "in use", "%", "estab", "TW", "clients"):
                t.add_column(c, justify="left" if c.startswith("NAT") else "right")
            for g in snat["tuples"][:MAX_TUPLE_ROWS]:
                pct = g["in_use"] / g["budget"] if g["budget"] else 1.0
                dst = f"[{g['dst']}]" if ":" in g["dst"] else g["dst"]
                t.add_row(f"{g['nat_addr']} -> {dst}:{g['dport']}", f"{g['in_use']:,}/{g['budget']:,}", f"{pct:.0%}",
                          f"{g['established']:,}", f"{g['time_wait']:,}", f"{g['sources']:,}",
                          style="red" if pct >= 0.9 else "yellow" if pct >= 0.75 else "")
            parts.append(t)
        elif snat.get("conntrack_read"):
            parts.append(Text(f"conntrack: {snat.get('entries', 0):,} TCP entries, none source-NATed"))
    # Listeners
    if h.listeners:
        t = Table(title="listeners (accept queue)", title_justify="left", header_style="bold", box=None,
                  padding=(0, 1))
        for c in ("address", "queued", "backlog"):
            t.add_column(c, justify="right" if c != "address" else "left")
        for lu in h.listeners[:MAX_TUPLE_ROWS]:
            style = "red" if lu.backlog and lu.queue >= lu.backlog else ""
            t.add_row(f"{lu.addr}:{lu.port}", str(lu.queue), str(lu.backlog), style=style)
        parts.append(t)
    # Settings
    t = Table(title="settings", title_justify="left", header_style="bold", box=None, padding=(0, 1))
    t.add_column("name")
    t.add_column("value")
    for k in SHOWN_SYSCTLS:
        if k in h.settings:
            t.add_row(k, _v(h.settings[k]))
    if h.conntrack:
        t.add_row("conntrack entries", f"{h.conntrack.get('count', 0):,} of {_v(h.conntrack.get('max', '?'))}")
    if h.extra.get("rlimit_nofile"):
        soft, hard = h.extra["rlimit_nofile"]
        t.add_row("ulimit -n (this shell)", f"{soft} (hard {hard})")
    if t.row_count:
        parts.append(t)
    # Counters
    if h.extra.get("counters_read"):
        t = Table(title="counters", title_justify="left", header_style="bold", box=None, padding=(0, 1))
        t.add_column("name")
        t.add_column("since boot", justify="right")
        t.add_column("per s", justify="right")
        quiet = ("TcpActiveOpens", "TcpPassiveOpens", "TcpExtTW", "TcpRetransSegs", "TcpOutRsts",
                 "TcpExtTWRecycled", "TcpCurrEstab")
        for name in COUNTERS:
            if name in h.counters_absent:
                t.add_row(name, "absent", "", style="dim")
                continue
            v = h.counters_absolute.get(name)
            if v is None:
                continue
            r = rate(h, name)
            t.add_row(name, f"{v:,}", "" if r is None else f"{r:,.1f}",
                      style="yellow" if r and name not in quiet else "")
        parts.append(t)
    procs = h.extra.get("processes")
    if procs:
        t = Table(title="processes holding these sockets", title_justify="left", header_style="bold", box=None,
                  padding=(0, 1))
        for c in ("pid", "name", "sockets", "estab", "listening", "fds", "nofile"):
            t.add_column(c, justify="right" if c not in ("name",) else "left")
        for p in procs[:MAX_TUPLE_ROWS]:
            t.add_row(str(p["pid"]), p["name"], f"{p['sockets']:,}", f"{p['established']:,}", str(p["listening"]),
                      "?" if p["fds"] is None else f"{p['fds']:,}", str(p.get("nofile_soft") or "?"))
        parts.append(t)
    for n in h.extra.get("notes", []):
        parts.append(Text("note: " + n, style="dim"))
    parts.append(Text(""))
    return Group(*parts)


def render(ev: Evidence, findings: list[Finding]) -> RenderableType:
    return Group(Text("Findings", style="bold underline"), render_findings(findings, ev),
                 *[render_host(h) for h in ev.hosts.values()])


def _plain(x: Any) -> Any:
    if isinstance(x, frozenset | set):
        return sorted(_plain(v) for v in x)
    if isinstance(x, tuple | list):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if hasattr(x, "item"):  # numpy scalar
        return x.item()
    return x


def to_json(ev: Evidence, findings: list[Finding]) -> dict[str, Any]:
    """Findings in the shape `simulate --json` uses, plus the host facts."""
    hosts = {}
    for name, h in ev.hosts.items():
        d = _plain(h)
        for t, td in zip(h.tuples, d["tuples"], strict=True):
            td["in_use"] = t.in_use  # a property: not a dataclass field
        hosts[name] = d
    return {"source": "doctor", "findings": [f.to_json() for f in findings], "hosts": hosts}
