"""Listen queue overflow: the accept queue is full, SYNs and final ACKs are dropped.

A listener whose accept queue is full drops new SYNs (tcp_conn_request(): ListenOverflows,
ListenDrops) and ignores final ACKs, retransmitting its SYN-ACK instead. Read from a run
(the drop causes and counters), a capture (SYN retransmissions to a server that, in the
same seconds, answers other clients' SYNs — alive, just full — and SYN-ACKs sent more
than once; Linux retries after 1, 3, 7 s ..., 6.5+ every second for the first five),
live hosts (queues and counters) and a kernel trace (SKB_DROP_REASON_TCP_LISTEN_OVERFLOW).
"""

from __future__ import annotations

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import by_server, median, retry_delay_text
from ...findings import EvidenceItem, Finding, Fix
from ...model.verdicts import VERDICTS
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import linux_hosts, num, rate
from ..runfacts import cause_stats, groups, pct
from ..tracefacts import hosts, top, window

LISTEN = Mechanism("listen", "Listen queue overflow", {
    "listen-overflow": "a run's servers dropped SYNs or final ACKs with a full accept queue",
    "capture-listen-overflow": "a server left captured SYNs unanswered while it answered others",
    "listen-queue-overflow": "a live host's listen queue is full or its overflow counters rise",
    "trace-listen-overflow": "traced final ACKs dropped with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW",
})


@LISTEN.rule("run", "listen-overflow")
def from_run(ev: Evidence) -> list[Finding]:
    run = ev.run
    assert run is not None
    syn = cause_stats(run, "syn_dropped_listen_overflow")
    ack = cause_stats(run, "ack_dropped_listen_overflow")
    overflows = run.host_counter("TcpExtListenOverflows")
    drops = run.host_counter("TcpExtListenDrops")
    if syn is None and ack is None and not overflows:
        return []
    n = len(run.attempts)
    hit = (syn.attempts if syn else 0) + (ack.attempts if ack else 0)
    failed = (syn.failed if syn else 0) + (ack.failed if ack else 0)
    sc = ev.scenario
    fixes: list[Fix] = []
    detail = ""
    for g in groups(sc, "server"):
        somax = int(g.effective_settings.get("net.core.somaxconn", 4096))
        eff = min(g.backlog, somax)
        detail = (f" The listen backlog is min(listen({g.backlog}), net.core.somaxconn={somax}) = {eff}; "
                  f"{g.workers} application workers at {g.service_ms:g} ms per request accept at most "
                  f"{g.workers / max(g.service_ms / 1000, 1e-9):,.0f} connections/s per server.")
        fixes += [fx.backlog(g.name), fx.more_workers(g.name, g.workers), fx.more_servers(g.name, g.count)]
    cause = ("The server accepts connections more slowly than they arrive, so its accept queue "
             "fills (sk_acceptq_is_full: ack_backlog > max_ack_backlog). Then tcp_conn_request() "
             "drops new SYNs and tcp_v4_syn_recv_sock() refuses final ACKs (ListenOverflows, "
             "ListenDrops); clients retransmit their SYN (Linux before 6.5 after 1, 3, 7 s; 6.5+ every "
             "second at first, tcp_syn_linear_timeouts) or, connected, wait for their request."
             + detail)
    return [Finding(
        id="listen-overflow", title="The server's listen queue overflows", severity="critical" if failed else "warning",
        cause=cause,
        evidence=[EvidenceItem("TcpExtListenOverflows", overflows), EvidenceItem("TcpExtListenDrops", drops),
                  EvidenceItem("attempts delayed or failed by it", hit, pct(hit / n) if n else ""),
                  EvidenceItem("failed", failed)],
        confidence=0.9, fixes=fixes)]


WINDOW_S = 5.0  # "the same seconds": answered SYNs within this distance


def _first_unanswered(a: object) -> np.ndarray:
    t_ans = a["t_answer"]  # type: ignore[index]
    t2 = a["t_syn2"]  # type: ignore[index]
    return np.asarray(a["is_attempt"] & (np.isnan(t_ans) | (~np.isnan(t2) & (t_ans >= t2))))  # type: ignore[index]


@LISTEN.rule("capture", "capture-listen-overflow")
def from_capture(ev: Evidence) -> list[Finding]:
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
            fixes=[fx.backlog(), fx.accept_faster()],
            hosts=[server.rpartition(":")[0]]))
    return out


@LISTEN.rule("hosts", "listen-queue-overflow")
def from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        ro, rd = rate(h, "TcpExtListenOverflows"), rate(h, "TcpExtListenDrops")
        ao, ad = h.counters_absolute.get("TcpExtListenOverflows"), h.counters_absolute.get("TcpExtListenDrops")
        full = [lu for lu in h.listeners if lu.backlog and lu.queue >= max(1, int(0.9 * lu.backlog))]
        rising = (ro or 0) > 0 or (rd or 0) > 0
        since_boot_only = ro is None and ((ao or 0) > 0 or (ad or 0) > 0)
        if not (rising or full or since_boot_only):
            continue
        somax = h.settings.get("net.core.somaxconn")
        items = []
        for lu in (full or h.listeners)[:5]:
            items.append(EvidenceItem(f"listener {lu.addr}:{lu.port}", f"{lu.queue} queued / backlog {lu.backlog}",
                                      "accept queue (ss Recv-Q / Send-Q)"))
        for n, r, a in (("ListenOverflows", ro, ao), ("ListenDrops", rd, ad)):
            if r is not None:
                items.append(EvidenceItem(f"TcpExt{n} per s", round(r, 1)))
            if a is not None:
                items.append(EvidenceItem(f"TcpExt{n} since boot", a))
        items.append(EvidenceItem("net.core.somaxconn", somax))
        items.append(EvidenceItem("net.ipv4.tcp_abort_on_overflow", h.settings.get("net.ipv4.tcp_abort_on_overflow")))
        items.append(EvidenceItem("net.ipv4.tcp_syncookies", h.settings.get("net.ipv4.tcp_syncookies")))
        worst = full[0] if full else None  # counters alone do not say which listener
        clamp = worst is not None and isinstance(somax, int) and worst.backlog >= somax
        biggest = max((lu.backlog for lu in h.listeners), default=128)
        new_backlog = max(4096, 4 * (worst.backlog if worst else biggest))
        # While the queue is full a handshake completes only when accept() frees a slot, so
        # PassiveOpens/s is the application's accept rate; what arrives is that plus the drops.
        po = rate(h, "TcpPassiveOpens")
        sustained = rising and worst is not None
        if sustained and po is not None:
            arriving = po + (rd or ro or 0.0)
            items.append(EvidenceItem("accepted per s", round(po, 1),
                                      "TcpPassiveOpens while the queue is full: the application's accept rate"))
            items.append(EvidenceItem("arriving per s", round(arriving, 1), "accepted + dropped (SYN retries included)"))
        backlog_fix = fx.raise_backlog(new_backlog, somax)
        accept_fix = fx.accept_faster(caveat=("The queue stays full while connections keep arriving: the application "
                                 "accepts more slowly than they come, the root cause." if sustained else ""))
        # The root cause first: a queue full during the sample means accept() cannot keep up
        # on average; overflows without a full queue are bursts, which a bigger queue absorbs.
        fixes = [accept_fix, backlog_fix] if sustained else [backlog_fix, accept_fix]
        title_where = f" on {worst.addr}:{worst.port}" if worst else ""
        out.append(Finding(
            id="listen-queue-overflow",
            title=(f"Listen queue overflowing{title_where}: "
                   + (f"{ro:,.1f} overflows/s" if ro else f"{rd:,.1f} drops/s" if rd else
                      f"{worst.queue} of {worst.backlog} queued" if full and worst else
                      f"{num(ao)} overflows since boot")),
            severity="critical" if rising else "warning",
            cause=("The accept queue of a listener holds at most its backlog (min(listen() argument, "
                   "somaxconn)) connections the application has not accept()ed yet. When it is full the "
                   "kernel drops new SYNs and the final ACK of handshakes (ListenOverflows, ListenDrops): "
                   "the client retransmits its SYN (after 1 s, 3 s, ...; every second at first on 6.5+) or, "
                   "having seen the SYN-ACK, thinks it is "
                   "connected while the server retransmits its SYN-ACK."
                   + (f" Here the application accepts {po:,.1f} connections/s while {po + (rd or ro or 0.0):,.1f}/s "
                      "arrive: the queue cannot drain, and a bigger one only fills later."
                      if sustained and po is not None else "")
                   + (" The backlog is clamped by net.core.somaxconn." if clamp else "")
                   + (" Nothing is rising during the sample; the counters show it happened before."
                      if since_boot_only and not full else "")),
            evidence=items, confidence=0.9 if rising or full else 0.6, fixes=fixes, hosts=[h.name]))
    return out


@LISTEN.rule("trace", "trace-listen-overflow")
def from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    v = doc.get("verdicts", {})
    n = v.get("listen-overflow", 0)
    if not n:
        return []
    return [Finding(
        id="trace-listen-overflow",
        title="Final ACKs dropped: accept queues are full (kernel trace)",
        severity="critical",
        cause=(f"The kernel dropped {n:,} handshake-completing ACKs {window(doc)} with "
               "SKB_DROP_REASON_TCP_LISTEN_OVERFLOW: the listener's accept queue was full "
               "(tcp_v4_syn_recv_sock(): sk_acceptq_is_full()). With tcp_abort_on_overflow=0 the server "
               f"retransmits its SYN-ACK later ({v.get('synack-retransmit', 0):,} SYN-ACK retransmissions "
               "seen), so the client waits; its connect() had already returned."),
        evidence=[EvidenceItem(VERDICTS["listen-overflow"], n),
                  EvidenceItem("listeners", top(doc, "locals", "endpoint", "listen-overflow")),
                  EvidenceItem("SYN-ACK retransmissions", v.get("synack-retransmit", 0))],
        confidence=0.95, fixes=[fx.backlog(), fx.accept_faster()], hosts=hosts(doc, "listen-overflow"))]
