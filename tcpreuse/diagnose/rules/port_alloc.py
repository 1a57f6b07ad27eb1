"""How the kernel picks local ports: connect()'s slow path, the range's parity, listening
ports inside the range, bind() conflicts. Read from a live host and a kernel trace."""

from __future__ import annotations

from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import fix_list, linux_hosts, port_list_text, pressure, tuple_label
from ..tracefacts import reasons, top, window

PORT_ALLOC = Mechanism("port_alloc", "Local port selection", {
    "connect-slow-path": "more connections to one destination than connect()'s preferred parity holds",
    "port-range-overlaps-listeners": "listening ports inside ip_local_port_range, not reserved",
    "port-range-same-parity": "ip_local_port_range bounds of the same parity",
    "trace-bind-eaddrinuse": "traced bind() calls returned EADDRINUSE",
})


@PORT_ALLOC.rule("hosts", "connect-slow-path", name="slow-path")
def slow_path_from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        b = h.extra.get("port_budget", {})
        if b.get("port_alg") not in ("parity", "perturb256", "perturb64k", "hint_even") or not h.tuples:
            continue
        t = h.tuples[0]
        fast = b.get("fast_parity", 0)
        if not fast or t.in_use <= fast or pressure(t) >= 0.9:
            continue
        out.append(Finding(
            id="connect-slow-path",
            title=f"{tuple_label(t)}: {t.in_use:,} ports in use, more than the {fast:,} of connect()'s "
                  "preferred parity",
            severity="warning",
            cause=("__inet_hash_connect() tries the ports with the parity of the range's low bound first "
                   "(4.2+) and only then the other half. With more connections to one destination than "
                   "that half holds, every connect() walks the whole first half, taking the bind-hash "
                   "lock for each port, before it finds a free one: connect latency and system CPU grow "
                   "with the number of ports in use."),
            evidence=[EvidenceItem("ports in use", t.in_use),
                      EvidenceItem("ports of the preferred parity", fast),
                      EvidenceItem("usable ports", b.get("usable")),
                      EvidenceItem("port selection", b.get("port_alg"))],
            confidence=0.8,
            fixes=fx.tuple_fixes(h, t), hosts=[h.name]))
    return out


@PORT_ALLOC.rule("hosts", ("port-range-overlaps-listeners", "port-range-same-parity"))
def range_from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        b = h.extra.get("port_budget")
        if not b:
            rng = h.settings.get("net.ipv4.ip_local_port_range")
            if not isinstance(rng, tuple):
                continue
            b = {"range": list(rng), "listener_ports_unreserved": [], "port_alg": None}
        lo, hi = b["range"]
        unreserved = b.get("listener_ports_unreserved", [])
        if unreserved:
            reserved = h.settings.get("net.ipv4.ip_local_reserved_ports") or frozenset()
            want = port_list_text(set(reserved) | set(unreserved))
            out.append(Finding(
                id="port-range-overlaps-listeners",
                title=f"Listening port{'s' if len(unreserved) > 1 else ''} "
                      f"{', '.join(map(str, unreserved[:5]))} inside ip_local_port_range {lo}-{hi}, not reserved",
                severity="warning",
                cause=("connect() never takes a port a listener holds, but while the service is down "
                       "(restart, deploy) an outgoing connection can take it, and the service then fails "
                       "to bind with EADDRINUSE. Ports listed in ip_local_reserved_ports are never "
                       "autoselected."),
                evidence=[EvidenceItem("net.ipv4.ip_local_port_range", f"{lo} {hi}"),
                          EvidenceItem("listening ports in the range", ", ".join(map(str, unreserved))),
                          EvidenceItem("net.ipv4.ip_local_reserved_ports", port_list_text(reserved) or "(empty)")],
                confidence=0.9,
                fixes=fix_list(fx.reserve_listener_ports(h, want)),
                hosts=[h.name]))
        alg = b.get("port_alg")
        if alg in ("parity", "perturb256", "perturb64k", "hint_even") and lo % 2 == hi % 2 and hi > lo:
            new_hi = hi - 1
            out.append(Finding(
                id="port-range-same-parity",
                title=f"ip_local_port_range {lo} {hi}: both bounds {'even' if lo % 2 == 0 else 'odd'}",
                severity="info",
                cause=("Since 4.2/4.6 (and in the RHEL 6 backport) connect() walks the ports with the "
                       "parity of the low bound first and leaves the other half to bind(0); the kernel "
                       "documentation asks for bounds "
                       "of different parity so that the two halves are equal. With the same parity the "
                       "connect() half has one more port and the ranges do not split cleanly."),
                evidence=[EvidenceItem("net.ipv4.ip_local_port_range", f"{lo} {hi}"),
                          EvidenceItem("ports of connect()'s parity", b.get("fast_parity", "n/a")),
                          EvidenceItem("ports of the other parity", b.get("other_parity", "n/a"))],
                confidence=0.9,
                fixes=fix_list(fx.port_range_parity(h, lo, new_hi)),
                hosts=[h.name]))
    return out


@PORT_ALLOC.rule("trace", "trace-bind-eaddrinuse")
def bind_from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    n = reasons(doc, "bind-error").get("EADDRINUSE", 0)
    if not n:
        return []
    return [Finding(
        id="trace-bind-eaddrinuse",
        title="bind() fails with EADDRINUSE (kernel trace)",
        severity="warning",
        cause=(f"{n:,} bind() calls returned EADDRINUSE {window(doc)}: the address and port "
               "are held (inet_csk_bind_conflict()), possibly by TIME_WAIT sockets of an earlier run. A "
               "client that binds before connect() should let the kernel pick the port at connect() "
               "(IP_BIND_ADDRESS_NO_PORT) so the whole 4-tuple, not the port alone, must be free."),
        evidence=[EvidenceItem("failed bind() calls", n),
                  EvidenceItem("processes", top(doc, "processes", "process", "bind-error"))],
        confidence=0.8,
        fixes=[fx.bind_address_no_port(), fx.reuseaddr()])]
