"""Capture rules: SYNs a live listener did not answer (queue overflow), and other silence.

A listener whose accept queue is full drops new SYNs (tcp_conn_request(): ListenOverflows,
ListenDrops) and ignores final ACKs, retransmitting its SYN-ACK instead. In a capture:
SYN retransmissions (Linux: 1, 3, 7 s ...; 6.5+: every second for the first five) to a server that, in the same seconds, answers
other clients' SYNs — so it is alive, just full — and SYN-ACKs sent more than once.
"""

from __future__ import annotations

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import by_server, median, retry_delay_text
from ...findings import EvidenceItem, Finding, Fix
from ..base import Evidence, rule

WINDOW_S = 5.0  # "the same seconds": answered SYNs within this distance


def _first_unanswered(a: object) -> np.ndarray:
    t_ans = a["t_answer"]  # type: ignore[index]
    t2 = a["t_syn2"]  # type: ignore[index]
    return np.asarray(a["is_attempt"] & (np.isnan(t_ans) | (~np.isnan(t2) & (t_ans >= t2))))  # type: ignore[index]


@rule("capture-listen-overflow", needs={"capture"})
def listen_overflow(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    a = an.attempts
    att = a["is_attempt"]
    # other explanations first: TIME_WAIT answers and recycle drops are not queue drops
    explained = (a["answer"] == flows.A_OLD_ACK) | (a["tw_recycle"] != reuse.RC_NONE) | (a["answer"] == flows.A_RST)
    silent = _first_unanswered(a) & ~explained
    synack_rtx = att & (a["n_synack"] > 1) & a["established"]
    out = []
    cand = np.flatnonzero(silent | synack_rtx)
    for server, rows in by_server(an, cand):
        srv_rows = np.flatnonzero(att & (a["resp"] == a["resp"][rows[0]]) & (a["resp_port"] == a["resp_port"][rows[0]]))
        ok_t = np.sort(a["t_synack"][srv_rows][~np.isnan(a["t_synack"][srv_rows])])
        s_rows = rows[silent[rows]]
        if s_rows.size and ok_t.size:
            t = a["t_syn"][s_rows]
            # was another SYN answered within WINDOW_S of this one?
            i = np.searchsorted(ok_t, t)
            near = np.zeros(t.size, dtype=bool)
            for j in (i - 1, i):
                jj = np.clip(j, 0, ok_t.size - 1)
                near |= np.abs(ok_t[jj] - t) <= WINDOW_S
            live = s_rows[near]
        elif s_rows.size:
            live = s_rows[:0]  # nothing answered: not a live listener
        else:
            live = s_rows
        x_rows = rows[synack_rtx[rows]]
        k = live.size + x_rows.size
        if k < 2:
            continue
        retried = live[a["n_syn"][live] > 1]
        gap = median((a["t_syn2"][retried] - a["t_syn"][retried]) * 1000)
        never = int(np.isnan(a["t_synack"][live]).sum())
        cause = (f"{server} answered SYNs from other connections in the same seconds, yet left "
                 f"{live.size:,} SYNs unanswered until a retransmission"
                 + (f" ({never:,} never answered)" if never else "")
                 + (f" — retransmitted after {retry_delay_text(gap)} (median)" if gap is not None else "")
                 + ". A live listener that drops SYNs has a full queue: tcp_conn_request() drops a SYN "
                   "while the accept queue is full (sk_acceptq_is_full), counted in TcpExtListenOverflows "
                   "and TcpExtListenDrops.")
        if x_rows.size:
            cause += (f" {x_rows.size:,} handshakes needed more than one SYN-ACK although the client ACKed: "
                      "the final ACK found the accept queue full and was dropped (tcp_abort_on_overflow=0), "
                      "so the server retransmitted its SYN-ACK.")
        out.append(Finding(
            id="capture-listen-overflow",
            title=f"{server} drops SYNs while it answers others: its listen queue overflows",
            severity="critical" if never else "warning",
            cause=cause,
            evidence=[EvidenceItem("SYNs unanswered while the server answered others", live.size),
                      EvidenceItem("never answered", never),
                      EvidenceItem("first SYN retransmission after (median)", retry_delay_text(gap) or "-"),
                      EvidenceItem("handshakes with repeated SYN-ACKs", x_rows.size),
                      EvidenceItem("attempts to this server", srv_rows.size)],
            confidence=0.8,
            fixes=[Fix(id="backlog", title="Raise the listen backlog (listen() argument and net.core.somaxconn)",
                       commands=["sysctl -w net.core.somaxconn=4096", "sysctl -w net.ipv4.tcp_max_syn_backlog=4096",
                                 "listen(fd, 4096) in the server (nginx: listen ... backlog=4096)"],
                       caveat="A longer queue absorbs bursts; if accept() is slower than the arrival rate, "
                              "add workers or servers."),
                   Fix(id="accept-faster", title="Accept faster: more workers/threads calling accept()",
                       commands=["more server processes or an accept loop that never blocks"])],
            hosts=[server.rpartition(":")[0]]))
    return out


@rule("capture-syn-unanswered", needs={"capture"})
def syn_unanswered(ev: Evidence) -> list[Finding]:
    """SYNs never answered at all, with no better explanation."""
    an = ev.require_capture()
    a = an.attempts
    att = a["is_attempt"]
    never = att & (a["answer"] == flows.A_NONE) & (a["tw_recycle"] == reuse.RC_NONE)
    # still in flight at the end of the capture: not evidence of anything
    never &= (an.t_last - a["t_syn"]) >= 3.0
    out = []
    for server, rows in by_server(an, np.flatnonzero(never)):
        srv = att & (a["resp"] == a["resp"][rows[0]]) & (a["resp_port"] == a["resp_port"][rows[0]])
        answered = int((srv & ~np.isnan(a["t_synack"])).sum())
        if answered:
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
