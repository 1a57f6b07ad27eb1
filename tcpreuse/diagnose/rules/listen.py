"""Listen queue overflow: the accept queue is full, SYNs and final ACKs are dropped.

A listener whose accept queue is full drops new SYNs (tcp_conn_request(): ListenOverflows,
ListenDrops) and ignores final ACKs, retransmitting its SYN-ACK instead. One fact record,
:class:`ListenOverflow`, read from a run (the drop causes and counters), a capture (SYN
retransmissions to a server that, in the same seconds, answers other clients' SYNs — alive,
just full — and SYN-ACKs sent more than once; Linux retries after 1, 3, 7 s ..., 6.5+ every
second for the first five), live hosts (queues and counters) and a kernel trace
(SKB_DROP_REASON_TCP_LISTEN_OVERFLOW); one builder words it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...capture import flows, reuse
from ...capture.facts import Block, by_server, median, retry_delay_text, rows_where
from ...findings import EvidenceItem, Finding
from .. import fixes as fx
from ..base import SEEN, Evidence, Fact, Mechanism
from ..judge import linux_hosts, num, rate
from ..runfacts import cause_stats, groups, pct
from ..tracefacts import count, hosts, top, window

LISTEN = Mechanism("listen", "Listen queue overflow", {
    "listen-overflow": "a run's servers dropped SYNs or final ACKs with a full accept queue",
    "capture-listen-overflow": "a server left captured SYNs unanswered while it answered others",
    "listen-queue-overflow": "a live host's listen queue is full or its overflow counters rise",
    "trace-listen-overflow": "traced final ACKs dropped with SKB_DROP_REASON_TCP_LISTEN_OVERFLOW",
}, ids={"run": "listen-overflow", "capture": "capture-listen-overflow", "hosts": "listen-queue-overflow",
        "trace": "trace-listen-overflow"})


@dataclass(frozen=True)
class ListenOverflow(Fact):
    """A full accept queue as one kind of evidence shows it; None: that evidence cannot know."""

    where: str = ""  # the listener ("addr:port"), when the evidence names one
    syn_drops: int | None = None  # SYNs dropped (left unanswered until a retransmission)
    ack_drops: int | None = None  # final ACKs dropped (the server sent its SYN-ACK again)
    never: int | None = None  # attempts that never connected because of it
    attempts: int | None = None  # attempts in the evidence (to this listener)
    overflows: int | None = None  # TcpExtListenOverflows (a run's; a live host's since boot)
    drops: int | None = None  # TcpExtListenDrops
    overflows_per_s: float | None = None
    drops_per_s: float | None = None
    retry_ms: float | None = None  # the clients' first SYN retransmission (median)
    synack_retransmits: int | None = None
    queued: int | None = None  # the full listener's accept queue now ...
    backlog: int | None = None  # ... and its limit (min(listen(), somaxconn))
    somaxconn: object = None
    capacity_per_s: float | None = None  # most the application can accept (a scenario's workers)
    accepted_per_s: float | None = None  # measured accept rate while the queue is full
    now: bool = False  # the evidence saw drops while it watched (a trace, rising counters)
    answering: bool = False  # the listener answered other SYNs in the same seconds: alive, just full
    window: str = ""  # the observation window ("in 2.0 s of tracing (kernel 6.8)")


_SEEN = {**SEEN, "trace": "In the kernel trace (SKB_DROP_REASON_TCP_LISTEN_OVERFLOW)"}


@LISTEN.builder
def build(f: ListenOverflow) -> list[Finding]:
    arriving = None if f.accepted_per_s is None else f.accepted_per_s + (f.drops_per_s or f.overflows_per_s or 0.0)
    since = " since boot" if f.source == "hosts" else ""
    head = (f"{f.overflows_per_s:,.1f} overflows/s" if f.overflows_per_s else f"{f.drops_per_s:,.1f} drops/s"
            if f.drops_per_s else f"{f.queued} of {f.backlog} queued" if f.queued is not None else
            f"{f.syn_drops:,} SYNs dropped" if f.syn_drops else f"{f.ack_drops:,} final ACKs dropped"
            if f.ack_drops else f"{num(f.overflows)} overflows{since}")
    seen = "; ".join(s for s in (
        f"{f.syn_drops:,} SYNs unanswered until a retransmission"
        + (" while the server answered other SYNs in the same seconds" if f.answering else "")
        if f.syn_drops else "",
        f"{f.ack_drops:,} handshake-completing ACKs dropped, so the server sent its SYN-ACK again"
        if f.ack_drops else "",
        f"{f.never:,} never connected" if f.never else "",
        f"the first SYN retransmission came {retry_delay_text(f.retry_ms)} later (median)" if f.retry_ms else "",
        f"{f.synack_retransmits:,} SYN-ACK retransmissions" if f.synack_retransmits is not None else "",
        f"the application accepts {f.accepted_per_s:,.1f} connections/s while {arriving:,.1f}/s arrive: "
        "the queue cannot drain, and a bigger one only fills later" if arriving is not None else "",
        f"the application accepts at most {f.capacity_per_s:,.0f} connections/s per server"
        if f.capacity_per_s is not None else "") if s)
    clamped = isinstance(f.somaxconn, int) and f.backlog is not None and f.backlog >= f.somaxconn
    cause = (
        "The accept queue of a listener holds at most its backlog (min(listen() argument, somaxconn)) "
        "connections the application has not accept()ed yet. When it is full (sk_acceptq_is_full: "
        "ack_backlog > max_ack_backlog) tcp_conn_request() drops new SYNs and tcp_v4_syn_recv_sock() "
        "refuses final ACKs (ListenOverflows, ListenDrops): the client retransmits its SYN (Linux before 6.5 "
        "after 1, 3, 7 s; 6.5+ every second at first, tcp_syn_linear_timeouts) or, having seen the SYN-ACK, "
        "thinks it is connected while the server retransmits its SYN-ACK (tcp_abort_on_overflow=0)."
        + (f" {_SEEN.get(f.source, 'Here')}{' ' + f.window if f.window else ''}{' at ' + f.where if f.where else ''}: "
           f"{seen}." if seen else "")
        + (f" The backlog is {f.backlog} (net.core.somaxconn={f.somaxconn}"
           + (", which clamps it)." if clamped else ").") if f.somaxconn is not None and f.backlog else "")
        + (" Nothing is rising during the sample; the counters show it happened before."
           if f.source == "hosts" and not f.now and f.queued is None else ""))
    items = [EvidenceItem(label, value, detail) for label, value, detail in (
        ("SYNs unanswered until a retransmission", f.syn_drops, ""),
        ("final ACKs dropped (SYN-ACK sent again)", f.ack_drops, ""),
        ("never connected", f.never, ""),
        ("attempts", f.attempts, pct(((f.syn_drops or 0) + (f.ack_drops or 0)) / f.attempts) if f.attempts else ""),
        ("first SYN retransmission after (median)", retry_delay_text(f.retry_ms) or None, ""),
        ("SYN-ACK retransmissions", f.synack_retransmits, ""),
        ("TcpExtListenOverflows per s", None if f.overflows_per_s is None else round(f.overflows_per_s, 1), ""),
        (f"TcpExtListenOverflows{since}", f.overflows, ""),
        ("TcpExtListenDrops per s", None if f.drops_per_s is None else round(f.drops_per_s, 1), ""),
        (f"TcpExtListenDrops{since}", f.drops, ""),
        ("accepted per s", None if f.accepted_per_s is None else round(f.accepted_per_s, 1),
         "TcpPassiveOpens while the queue is full: the application's accept rate"),
        ("arriving per s", None if arriving is None else round(arriving, 1),
         "accepted + dropped (SYN retries included)")) if value is not None] + list(f.context)
    sustained = f.accepted_per_s is not None
    bigger = fx.raise_backlog(max(4096, 4 * f.backlog), f.somaxconn) if f.source == "hosts" and f.backlog \
        else fx.backlog()
    faster = fx.accept_faster(caveat="The queue stays full while connections keep arriving: the application "
                                     "accepts more slowly than they come, the root cause." if sustained else "")
    # The root cause first: a queue full while connections keep arriving means accept() cannot
    # keep up on average; overflows without that are bursts, which a bigger queue absorbs.
    return [Finding(
        id=LISTEN.ids[f.source], title=f"{f.where} drops SYNs while it answers others: its listen queue overflows "
        f"({head})" if f.answering else f"Listen queue overflowing{' on ' + f.where if f.where else ''}: {head}",
        severity="critical" if f.never or f.now else "warning", cause=cause, evidence=items,
        confidence={"capture": 0.8, "hosts": 0.9 if f.now or f.queued is not None else 0.6,
                    "trace": 0.95}.get(f.source, 0.9),
        fixes=list(f.fixes) or ([faster, bigger] if sustained else [bigger, faster]), hosts=list(f.hosts))]


@LISTEN.extractor("run")
def from_run(ev: Evidence) -> ListenOverflow | None:
    run = ev.require_run()
    syn = cause_stats(run, "syn_dropped_listen_overflow")
    ack = cause_stats(run, "ack_dropped_listen_overflow")
    overflows = run.host_counter("TcpExtListenOverflows")
    if syn is None and ack is None and not overflows:
        return None
    servers = groups(ev.scenario, "server")
    g = servers[-1] if servers else None
    somax = int(g.effective_settings.get("net.core.somaxconn", 4096)) if g else None
    return ListenOverflow(
        "run", syn_drops=syn.attempts if syn else 0, ack_drops=ack.attempts if ack else 0,
        never=(syn.failed if syn else 0) + (ack.failed if ack else 0), attempts=run.attempt_count(),
        overflows=overflows, drops=run.host_counter("TcpExtListenDrops"),
        somaxconn=somax, backlog=min(g.backlog, somax or 0) if g else None,
        capacity_per_s=g.workers / max(g.service_ms / 1000, 1e-9) if g else None,
        fixes=tuple(x for s in servers for x in (fx.backlog(s.name), fx.more_workers(s.name, s.workers),
                                                  fx.more_servers(s.name, s.count))))


WINDOW_S = 5.0  # "the same seconds": answered SYNs within this distance


@LISTEN.extractor("capture")
def from_capture(ev: Evidence) -> list[ListenOverflow]:
    an = ev.require_capture()
    a = an.attempts

    def silent(b: Block) -> np.ndarray:
        # other explanations first: TIME_WAIT answers and recycle drops are not queue drops
        explained = (b["answer"] == flows.A_OLD_ACK) | (b["tw_recycle"] != reuse.RC_NONE) | (b["answer"] == flows.A_RST)
        t_ans, t2 = b["t_answer"], b["t_syn2"]
        return b["is_attempt"] & (np.isnan(t_ans) | (~np.isnan(t2) & (t_ans >= t2))) & ~explained

    def synack_rtx(b: Block) -> np.ndarray:
        return b["is_attempt"] & (b["n_synack"] > 1) & b["established"]

    silent_rows, rtx_rows = rows_where(an, silent), rows_where(an, synack_rtx)
    out = []
    for server, rows in by_server(an, flows.distinct(np.concatenate([silent_rows, rtx_rows]))):
        ra, rp = a["resp"][rows[0]], a["resp_port"][rows[0]]
        live = rows[np.isin(rows, silent_rows)]
        # was another SYN to it answered within WINDOW_S of this one? (its answered SYNs a block at a time)
        t = a["t_syn"][live]
        near = np.zeros(t.size, dtype=bool)
        n_srv = n_ok = 0
        for sl in flows.row_blocks(len(a)):
            srv = np.asarray(a["is_attempt"][sl]) & (a["resp"][sl] == ra) & (a["resp_port"][sl] == rp)
            n_srv += int(srv.sum())
            ok_t = np.asarray(a["t_synack"][sl][srv])
            ok_t = np.sort(ok_t[~np.isnan(ok_t)])
            n_ok += ok_t.size
            if ok_t.size and t.size:
                i = np.searchsorted(ok_t, t)
                for j in (i - 1, i):
                    near |= np.abs(ok_t[np.clip(j, 0, ok_t.size - 1)] - t) <= WINDOW_S
        live = live[near] if n_ok else live[:0]  # nothing answered: not a live listener
        x_rows = rows[np.isin(rows, rtx_rows)]
        if live.size + x_rows.size < 2:
            continue
        retried = live[a["n_syn"][live] > 1]
        out.append(ListenOverflow(
            "capture", where=server, hosts=(server.rpartition(":")[0],), syn_drops=live.size, answering=True,
            ack_drops=x_rows.size, never=int(np.isnan(a["t_synack"][live]).sum()), attempts=n_srv,
            retry_ms=median((a["t_syn2"][retried] - a["t_syn"][retried]) * 1000)))
    return out


@LISTEN.extractor("hosts")
def from_hosts(ev: Evidence) -> list[ListenOverflow]:
    out = []
    for h in linux_hosts(ev):
        ro, rd = rate(h, "TcpExtListenOverflows"), rate(h, "TcpExtListenDrops")
        ao, ad = h.counters_absolute.get("TcpExtListenOverflows"), h.counters_absolute.get("TcpExtListenDrops")
        full = [lu for lu in h.listeners if lu.backlog and lu.queue >= max(1, int(0.9 * lu.backlog))]
        rising = (ro or 0) > 0 or (rd or 0) > 0
        if not (rising or full or (ro is None and ((ao or 0) > 0 or (ad or 0) > 0))):
            continue
        worst = full[0] if full else None  # counters alone do not say which listener
        # While the queue is full a handshake completes only when accept() frees a slot, so
        # PassiveOpens/s is the application's accept rate; what arrives is that plus the drops.
        po = rate(h, "TcpPassiveOpens") if rising and worst is not None else None
        out.append(ListenOverflow(
            "hosts", where=f"{worst.addr}:{worst.port}" if worst else "", hosts=(h.name,),
            overflows=ao, drops=ad, overflows_per_s=ro, drops_per_s=rd,
            queued=worst.queue if worst else None,
            backlog=worst.backlog if worst else max((lu.backlog for lu in h.listeners), default=128),
            somaxconn=h.settings.get("net.core.somaxconn"),
            context=(*(EvidenceItem(f"listener {lu.addr}:{lu.port}", f"{lu.queue} queued / backlog {lu.backlog}",
                                    "accept queue (ss Recv-Q / Send-Q)") for lu in (full or h.listeners)[:5]),
                     *(EvidenceItem(k, h.settings.get(k)) for k in (
                         "net.core.somaxconn", "net.ipv4.tcp_abort_on_overflow", "net.ipv4.tcp_syncookies"))),
            accepted_per_s=po, now=rising))
    return out


@LISTEN.extractor("trace")
def from_trace(ev: Evidence) -> ListenOverflow | None:
    doc = ev.trace or {}
    n = count(doc, "listen-overflow")
    if not n:
        return None
    return ListenOverflow("trace", context=(EvidenceItem("listeners", top(doc, "locals", "endpoint", "listen-overflow")),),
                          hosts=tuple(hosts(doc, "listen-overflow")), ack_drops=n,
                          synack_retransmits=count(doc, "synack-retransmit"), now=True, window=window(doc))

