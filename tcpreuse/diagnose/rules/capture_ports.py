"""Capture rules: source ports that come back too soon, or run out.

connect() needs a 4-tuple nobody holds. Toward one server (address, port) a client has
one local port range; whoever closed first holds each 4-tuple for 60 s in TIME_WAIT.
So the port cycle — how soon a client uses the same source port toward the same server
again — tells the story: under 60 s the new SYN meets the server's TIME_WAIT (if the
server closed first); a dense block of ports all held in the client's TIME_WAIT means
the client is at its budget, and connect() fails with EADDRNOTAVAIL, which sends no
packet at all (so the capture shows the ports, not the failures).
"""

from __future__ import annotations

import numpy as np

from ...capture import flows
from ...capture.facts import pct
from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule

TIME_WAIT_S = 60.0


def _port_fixes() -> list[Fix]:
    return [
        Fix(id="wider-port-range", title="Widen the clients' ephemeral port range",
            commands=["Linux: sysctl -w net.ipv4.ip_local_port_range='1024 65535' "
                      "(reserve listening ports with net.ipv4.ip_local_reserved_ports)",
                      "Windows: netsh int ipv4 set dynamicport tcp start=10000 num=55535"]),
        Fix(id="keepalive", title="Reuse connections (keep-alive / pooling)",
            commands=["a connection pool or HTTP keep-alive in the client"]),
        Fix(id="more-addresses", title="More source addresses or server ports (more 4-tuples)",
            commands=["add addresses to the client and bind() each connection to one "
                      "(IP_BIND_ADDRESS_NO_PORT), or add server ports/back ends"]),
        Fix(id="tw-reuse", title="Client closes first and reuses its own TIME_WAIT (Linux, with timestamps)",
            commands=["sysctl -w net.ipv4.tcp_tw_reuse=1", "sysctl -w net.ipv4.tcp_timestamps=1"],
            caveat="tcp_tw_reuse only helps outgoing connections and only with timestamps on both ends."),
    ]


@rule("capture-port-cycle", needs={"capture"})
def port_cycle(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    a = an.attempts
    out: list[Finding] = []
    for s in an.sources:
        for pp in s.ports:
            if pp.attempts < 8:
                continue
            dest = pp.destination
            rows = _rows(an, s.addr, dest)
            client_tw = float(np.mean(a["tw_holder"][rows] == flows.W_ORIG)) if rows.size else 0.0
            server_tw = float(np.mean(a["tw_holder"][rows] == flows.W_RESP)) if rows.size else 0.0
            block = pp.port_max - pp.port_min + 1
            step = 2 if pp.even_share in (0.0, 1.0) and block > 2 else 1
            density = pp.distinct_ports / max(block // step if step == 2 else block, 1)
            budget_rate = pp.distinct_ports / TIME_WAIT_S
            ev_items = [
                EvidenceItem("attempts", pp.attempts),
                EvidenceItem("distinct source ports", pp.distinct_ports,
                             f"{pp.port_min}-{pp.port_max}, {pct(pp.even_share)} even"),
                EvidenceItem("allocation", pp.pattern + (f" (+{pp.median_step})" if pp.median_step else "")),
                EvidenceItem("port cycle (median / shortest)",
                             f"{pp.cycle_median_s} s / {pp.cycle_min_s} s" if pp.cycle_median_s is not None
                             else "no port used twice"),
                EvidenceItem("new connections per second", s.rate_per_s, f"peak {s.peak_per_s:,.1f}/s"),
                EvidenceItem("closed first by the client / the server", f"{pct(client_tw)} / {pct(server_tw)}"),
            ]
            if pp.cycle_median_s is not None and pp.cycle_median_s < TIME_WAIT_S:
                holder = ("the server closed first, so these SYNs meet its TIME_WAIT"
                          if server_tw >= 0.5 else
                          "the client reuses its own TIME_WAIT (tcp_tw_reuse) or is not Linux")
                client_rows = rows
                hurt = int((a["answer"][client_rows] == flows.A_OLD_ACK).sum()) if rows.size else 0
                out.append(Finding(
                    id="capture-port-cycle",
                    title=f"{s.addr} reuses source ports toward {dest} within {_s(pp.cycle_median_s)} "
                          f"(TIME_WAIT lasts 60 s)",
                    severity="warning" if hurt else "info",
                    cause=(f"{s.addr} opened {pp.attempts:,} connections to {dest} from "
                           f"{pp.distinct_ports:,} source ports, so each port came back after "
                           f"{_s(pp.cycle_median_s)} (median; shortest {_s(pp.cycle_min_s)}) — sooner than "
                           f"the 60 s TIME_WAIT: {holder}. At {s.rate_per_s:,.0f} connections/s a port "
                           f"range of N ports cycles in N/{s.rate_per_s:,.0f} s; it must stay above 60 s."
                           + (f" {hurt:,} of these SYNs got an ACK for the old connection." if hurt else
                              " The server accepted every one (newer timestamps or sequence numbers).")),
                    evidence=ev_items, confidence=0.9, fixes=_port_fixes(), hosts=[s.addr]))
            elif client_tw >= 0.9 and density >= 0.9 and pp.distinct_ports >= 8:
                quiet = an.t_last - float(np.nanmax(a["t_syn"][rows]))
                stopped = (f" After the last new connection the capture went on for {quiet:.1f} s without "
                           "another one from it." if quiet >= 1.0 else "")
                out.append(Finding(
                    id="capture-port-exhaustion",
                    title=f"{s.addr} used every port of a {pp.distinct_ports:,}-port block toward {dest}; "
                          "each stays in its TIME_WAIT for 60 s",
                    severity="critical" if quiet >= 1.0 or pp.cycle_median_s is not None else "warning",
                    cause=(f"{s.addr} used {pp.distinct_ports:,} source ports, {pct(density)} of the block "
                           f"{pp.port_min}-{pp.port_max}, and closed first, so it holds each 4-tuple in "
                           f"TIME_WAIT for 60 s. That is its whole port budget toward {dest}: at most "
                           f"{budget_rate:,.1f} new connections/s, and connect() beyond that fails with "
                           "EADDRNOTAVAIL before any packet is sent (so the failures are invisible in a "
                           "capture; the ports are the evidence)." + stopped),
                    evidence=ev_items, confidence=0.75 if quiet >= 1.0 else 0.55,
                    fixes=_port_fixes(), hosts=[s.addr]))
    return out


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def _rows(an: object, client: str, dest: str) -> np.ndarray:
    """Attempts from `client` to `dest` ("addr:port")."""
    a = an.attempts  # type: ignore[attr-defined]
    addr, _, port = dest.rpartition(":")
    ck, sk = an.key_of(client), an.key_of(addr)  # type: ignore[attr-defined]
    if ck is None or sk is None:
        return np.zeros(0, dtype=np.int64)
    m = a["is_attempt"] & (a["orig"] == ck) & (a["resp"] == sk) & (a["resp_port"] == int(port))
    return np.flatnonzero(m)
