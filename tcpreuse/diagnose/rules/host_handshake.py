"""Doctor check on the connecting side: handshakes that are retried or refused.

A client whose server overflows its listen queue, runs out of SYN queue, sits behind a
full conntrack table or rejects its SYNs sees nothing in its own port tables: its SYNs
are retransmitted (TcpExtTCPSynRetrans, and `idiag_retrans` of its SYN_SENT sockets) or
answered with RST (TcpAttemptFails: tcp_done() of a SYN_SENT socket; TcpEstabResets when
a server with tcp_abort_on_overflow resets what the client already thought connected).
"""

from __future__ import annotations

from ...diagnose.base import Evidence, rule
from ...findings import EvidenceItem, Finding
from ..judge import Fix, linux_hosts, rate

CRITICAL_SHARE = 0.1  # of connect() calls retried or refused
NOISE_SHARE = 0.01


def _dst(d: dict) -> str:
    a = f"[{d['dst']}]" if ":" in d["dst"] else d["dst"]
    return f"{a}:{d['dport']}"


@rule("host-handshake-failing", needs={"hosts"})
def handshakes_failing(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        active = rate(h, "TcpActiveOpens")
        syn_rtx = rate(h, "TcpExtTCPSynRetrans")
        fails = rate(h, "TcpAttemptFails")
        resets = rate(h, "TcpEstabResets")
        waiting = [d for d in h.extra.get("syn_sent_by_destination", []) if d["retransmitted"]]
        # TCPSynRetrans also counts a server's SYN-ACK retransmissions: it speaks for this
        # host's connect() calls when SYN_SENT sockets retransmit or the host opens connections.
        connecting = bool(waiting) or ((active or 0) > 0 and h.role != "server")
        retried = (syn_rtx or 0) > 0 and connecting
        refused = (fails or 0) > 0 and (active or 0) > 0 and h.role != "server"
        if not (retried or refused or waiting):
            continue
        share = ((syn_rtx or 0) + (fails or 0)) / active if active else None
        if not waiting and share is not None and share < NOISE_SHARE:
            continue  # an odd lost SYN on a busy host
        items: list[EvidenceItem] = []
        for d in waiting[:5]:
            items.append(EvidenceItem(f"SYN_SENT toward {_dst(d)}", d["syn_sent"],
                                      f"{d['retransmitted']:,} with a SYN retransmitted (sock_diag idiag_retrans)"))
        if active is not None:
            items.append(EvidenceItem("TcpActiveOpens per s", round(active, 1), "connect() calls that sent a SYN"))
        if syn_rtx is not None:
            items.append(EvidenceItem("TcpExtTCPSynRetrans per s", round(syn_rtx, 1),
                                      "SYNs sent again: the SYN or its SYN-ACK was lost or dropped"))
        elif "TcpExtTCPSynRetrans" in h.counters_absent:
            items.append(EvidenceItem("TcpExtTCPSynRetrans", "absent on this kernel"))
        if fails is not None:
            items.append(EvidenceItem("TcpAttemptFails per s", round(fails, 1),
                                      "handshakes that ended in SYN-SENT/SYN-RECV (RST, or given up)"))
        if resets is not None and resets > 0:
            items.append(EvidenceItem("TcpEstabResets per s", round(resets, 1),
                                      "established connections reset (a server with tcp_abort_on_overflow=1)"))
        if share is not None:
            items.append(EvidenceItem("retried or refused per connect()", f"{min(share, 9.99):.0%}"))
        # Without rates (one sample), many SYN_SENT sockets retrying at once is what is severe.
        severe = share >= CRITICAL_SHARE if share is not None else sum(d["retransmitted"] for d in waiting) >= 10
        where = ", ".join(_dst(d) for d in waiting[:3]) or "its servers"
        what = []
        if retried or waiting:
            what.append(f"{syn_rtx:,.1f} SYN retransmissions/s" if syn_rtx else "SYNs retransmitted")
        if refused:
            what.append(f"{fails:,.1f} handshakes/s refused or given up")
        out.append(Finding(
            id="connect-handshakes-failing",
            title=f"Connections to {where} are not being accepted: " + ", ".join(what),
            severity="critical" if severe else "warning",
            cause=("This host's connect() calls do not complete at the first SYN. A SYN retransmitted means "
                   "no SYN-ACK came back in time: the server dropped it (its accept queue full: "
                   "ListenOverflows; its SYN queue full without syncookies: TCPReqQFullDrop), or a full "
                   "conntrack table or a firewall on the path did. Each retry waits the SYN timeout (1 s, "
                   "then doubling; every second for the first four on 6.5+ with tcp_syn_linear_timeouts), "
                   "so callers see seconds of latency, then ETIMEDOUT. Handshakes that fail outright "
                   "(TcpAttemptFails) were answered with RST: nothing listens there (ECONNREFUSED), or a "
                   "server with tcp_abort_on_overflow=1 resets what it cannot queue. The cause is on the "
                   "server or the path; this host only shows its effect."),
            evidence=items, confidence=0.85 if waiting else 0.7,
            fixes=[Fix(id="check-the-server", title=f"Run `tcpreuse doctor` on {where}: listen queue, SYN "
                                                    "queue, conntrack",
                       commands=["tcpreuse doctor --interval 2   # on the server",
                                 "nstat -az TcpExtListenOverflows TcpExtListenDrops TcpExtTCPReqQFullDrop"]),
                   Fix(id="capture-and-analyze", title="Capture the handshakes and let `tcpreuse analyze` show "
                                                      "which SYNs go unanswered",
                       commands=["tcpdump -ni any -w syn.pcap 'tcp[tcpflags] & (tcp-syn|tcp-rst) != 0' -c 200000",
                                 "tcpreuse analyze syn.pcap"])],
            hosts=[h.name]))
    return out
