"""Handshakes refused or unanswered for reasons outside the listen queue: no listener, a
firewall, a server that is down, the path. Read from a live connecting host (SYN
retransmissions, TcpAttemptFails: the effect, with the cause elsewhere), a capture (SYNs
answered by RST, SYNs never answered) and a kernel trace (connect() errors)."""

from __future__ import annotations

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import answered, at_server, by_server, count_where, pct, rows_where
from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import linux_hosts, rate
from ..tracefacts import reasons, top, window

HANDSHAKE = Mechanism("handshake", "Handshakes refused or unanswered", {
    "connect-handshakes-failing": "a live host's connect() calls retransmit SYNs or are refused",
    "capture-refused": "captured SYNs to a server answered with RST",
    "capture-syn-unanswered": "captured SYNs to a server that answered none",
    "trace-connect-failures": "traced connections failed with ECONNREFUSED, ETIMEDOUT, ECONNRESET ...",
})


CRITICAL_SHARE = 0.1  # of connect() calls retried or refused


NOISE_SHARE = 0.01


def _dst(d: dict) -> str:
    a = f"[{d['dst']}]" if ":" in d["dst"] else d["dst"]
    return f"{a}:{d['dport']}"


@HANDSHAKE.rule("hosts", "connect-handshakes-failing")
def from_hosts(ev: Evidence) -> list[Finding]:
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
            fixes=[fx.check_the_server(where),
                   fx.capture_and_analyze("Capture the handshakes and let `tcpreuse analyze` show "
                                          "which SYNs go unanswered")],
            hosts=[h.name]))
    return out


@HANDSHAKE.rule("capture", "capture-refused", name="refused")
def refused_from_capture(ev: Evidence) -> list[Finding]:
    """SYNs answered by RST: nothing listens on that port (or a firewall rejects)."""
    an = ev.require_capture()
    a = an.attempts
    m = rows_where(an, lambda b: b["is_attempt"] & (b["answer"] == flows.A_RST) & np.isnan(b["t_synack"]))
    if not m.size:
        return []
    out = []
    for server, rows in by_server(an, m):
        k = rows.size
        ra, rp = a["resp"][rows[0]], a["resp_port"][rows[0]]
        tot = count_where(an, at_server(ra, rp))
        n_answered = count_where(an, answered(at_server(ra, rp)))
        out.append(Finding(
            id="capture-refused",
            title=f"SYNs to {server} are refused with RST",
            severity="warning",
            cause=(f"{k:,} of {tot:,} SYNs to {server} were answered with RST (Zeek REJ): no socket listened "
                   "on that port at that moment (service down or restarting, wrong port), or a firewall "
                   "rejects them." + (f" {n_answered:,} other SYNs to it were accepted, so the listener "
                                      "came and went." if n_answered else "")),
            evidence=[EvidenceItem("refused SYNs", k, pct(k / max(tot, 1))),
                      EvidenceItem("accepted SYNs to the same port", n_answered)],
            confidence=0.85, hosts=[server.rpartition(":")[0]]))
    return out


@HANDSHAKE.rule("capture", "capture-syn-unanswered")
def unanswered_from_capture(ev: Evidence) -> list[Finding]:
    """SYNs never answered at all, with no better explanation."""
    an = ev.require_capture()
    a = an.attempts
    # not answered; still in flight at the end of the capture: not evidence of anything
    never = rows_where(an, lambda b: b["is_attempt"] & (b["answer"] == flows.A_NONE) & (b["tw_recycle"] == reuse.RC_NONE)
                  & ((an.t_last - b["t_syn"]) >= 3.0))
    out = []
    for server, rows in by_server(an, never):
        ra, rp = a["resp"][rows[0]], a["resp_port"][rows[0]]
        n_answered = count_where(an, answered(at_server(ra, rp)))
        if n_answered:
            continue  # a live server: the listen-overflow rule speaks for it
        k = rows.size
        out.append(Finding(
            id="capture-syn-unanswered",
            title=f"SYNs to {server} were never answered",
            severity="warning",
            cause=(f"{k:,} SYNs to {server} (Zeek S0) got no answer at all, and no SYN to it was answered "
                   "in this capture: the server is down or unreachable, a firewall drops them, or the "
                   "capture point does not see the return path."),
            evidence=[EvidenceItem("unanswered SYNs", k), EvidenceItem("SYN retransmissions",
                                                                        int((a["n_syn"][rows] - 1).sum()))],
            confidence=0.5, hosts=[server.rpartition(":")[0]]))
    return out


@HANDSHAKE.rule("trace", "trace-connect-failures")
def from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    other = {k: c for k, c in reasons(doc, "connect-error").items() if k != "EADDRNOTAVAIL"}
    asyncs = reasons(doc, "async-error")
    if not (other or asyncs):
        return []
    # a blocking connect() that fails shows twice (the socket's error, then connect()'s return)
    merged = {k: max(other.get(k, 0), asyncs.get(k, 0)) for k in set(other) | set(asyncs)}
    detail = "; ".join(f"{k}: connect() returned it {other.get(k, 0):,} times, reported on a socket "
                       f"{asyncs.get(k, 0):,} times" for k in sorted(merged, key=lambda k: -merged[k]))
    return [Finding(
        id="trace-connect-failures",
        title="Connections fail or are reset: " + ", ".join(
            f"{k} {c:,}" for k, c in sorted(merged.items(), key=lambda x: -x[1])),
        severity="warning",
        cause=(f"Connections failed {window(doc)} with errors the peer or the path caused ({detail}). "
               "ECONNREFUSED is an RST answer (no listener, or a middlebox), ETIMEDOUT no answer to any "
               "SYN retransmission, ECONNRESET an RST on an established connection."),
        evidence=[EvidenceItem("destinations of failed connect() calls",
                               top(doc, "locals", "endpoint", "connect-error")),
                  EvidenceItem("processes", top(doc, "processes", "process", "connect-error")),
                  EvidenceItem("4-tuples with an error reported later", top(doc, "tuples", "tuple", "async-error"))],
        confidence=0.6)]
