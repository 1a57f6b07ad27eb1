"""NAT and load balancers: translation pools that run out, sessions held past close, and
mappings forgotten while the server still has the connection open.

A source NAT must give every flow a translated tuple no other conntrack entry has
(nf_nat_used_tuple()), so each (NAT address, destination) has one pool of ports, each held
for conntrack's TIME_WAIT after close. Read from a run (SYNs dropped at the NAT or LB, SYNs
on open 4-tuples), a capture (challenge ACKs to reused 4-tuples) and live NAT hosts
(SNAT pools, the conntrack table).
"""

from __future__ import annotations

import numpy as np

from ...capture import flows
from ...capture.facts import Block, by_client, rows_where, span
from ...findings import EvidenceItem, Finding, Fix
from ...model.nat import nat_evicts_timewait
from .. import fixes as fx
from ..base import Evidence, Mechanism
from ..judge import fix_list, linux_hosts, profile_of
from ..runfacts import cause_stats, first_at, pct

NAT_LB = Mechanism("nat_lb", "NAT / load balancer 4-tuple reuse", {
    "nat-port-exhaustion": "a run's NAT ran out of translations toward a destination",
    "lb-snat-exhaustion": "a run's load balancer dropped SYNs (no free SNAT port)",
    "lb-held-session-drop": "a run's load balancer dropped SYNs on 4-tuples whose session it still held",
    "syn-hit-established": "a run's SYNs arrived on 4-tuples the server still had open",
    "capture-syn-hit-established": "captured SYNs reused 4-tuples whose previous connection was still open",
    "snat-pool-exhaustion": "a live NAT host's SNAT pool toward a destination is nearly used up",
    "conntrack-near-full": "a live host's conntrack table is nearly full",
})


@NAT_LB.rule("run", "nat-port-exhaustion", name="nat")
def nat_from_run(ev: Evidence) -> list[Finding]:
    run = ev.require_run()
    st = cause_stats(run, "syn_dropped_nat")
    if st is None:
        return []
    sc = ev.scenario
    n = run.attempt_count()
    nat = sc.nat if sc is not None else None
    hold = nat.time_wait_s if nat else 120.0
    naddr = nat.addresses if nat else 1
    lo, hi = nat.port_range if nat else (1024, 65535)
    budget = naddr * (hi - lo + 1)
    cause = (
        f"The NAT translates every connection to one of {naddr} address(es) x {hi - lo + 1:,} ports "
        f"per destination, and a closed flow keeps its translation for {hold:.0f} s (conntrack "
        f"TIME_WAIT; nf_nat_used_tuple() counts held entries). That allows about {budget / hold:,.0f} "
        f"new connections/s per destination; beyond it SYNs are dropped at the NAT and clients "
        f"time out: {st.attempts:,} attempts hit it, {st.failed:,} failed."
    )
    fixes: list[Fix] = []
    if sc is not None and nat is not None:
        fixes = fix_list(fx.nat_addresses(naddr), fx.nat_tw_hold(), fx.keepalive(sc))
    return [Finding(id="nat-port-exhaustion", title="The NAT runs out of ports toward a destination",
                    severity="critical", cause=cause,
                    evidence=[EvidenceItem("SYNs dropped at the NAT", st.attempts, pct(st.attempts / n)),
                              first_at(st),
                              EvidenceItem("NAT translations available per destination", budget)],
                    confidence=0.9, fixes=fixes)]


@NAT_LB.rule("run", ("lb-snat-exhaustion", "lb-held-session-drop"), name="lb")
def lb_from_run(ev: Evidence) -> list[Finding]:
    run = ev.require_run()
    st = cause_stats(run, "syn_dropped_lb")
    if st is None:
        return []
    sc = ev.scenario
    lb = sc.lb if sc is not None else None
    fixes: list[Fix] = []
    text = f"The load balancer dropped {st.attempts:,} SYNs."
    if lb is not None and lb.snat:
        lo, hi = lb.snat_port_range
        text = (f"The load balancer source-NATs to {lb.snat_addresses} address(es) x {hi - lo + 1:,} ports "
                f"per back end and holds a closed session for {lb.session_hold_s:.0f} s; new sessions "
                f"found no free SNAT port: {st.attempts:,} SYNs dropped, {st.failed:,} attempts failed.")
        fixes = [fx.lb_snat_addresses(lb.snat_addresses),
                 fx.lb_ignore_msl(caveat="the real servers may still hold the 4-tuple in TIME_WAIT")]
    elif lb is not None and lb.held_session_syn in ("drop", "drop_then_new"):
        again = (" It drops the first SYN and expires the old entry, so the client's SYN "
                 "retransmission gets through a second later (IPVS conn_reuse_mode=1 before 5.9: "
                 "\"ipvs: drop first packet to redirect conntrack\")." if lb.held_session_syn == "drop_then_new"
                 else "")
        text = (f"New SYNs arrived on client 4-tuples whose session the load balancer still held "
                f"{lb.session_hold_s:.0f} s after close: {st.attempts:,} SYNs dropped, {st.failed:,} attempts "
                f"failed.{again}")
        fixes = [fx.lb_ignore_msl(["IPVS: kernel >= 5.9, or sysctl net.ipv4.vs.conn_reuse_mode=0 (see caveat)"],
                                  caveat="With IPVS conn_reuse_mode=0, reused ports stick to the old real server, "
                                         "even a deleted one (kubernetes#81775).")]
        if sc is not None:
            fixes += fix_list(fx.keepalive(sc))
        return [Finding(id="lb-held-session-drop", title="The load balancer drops SYNs on 4-tuples it still holds",
                        severity="warning" if not st.failed else "critical", cause=text,
                        evidence=[EvidenceItem("SYNs dropped at the LB", st.attempts),
                                  EvidenceItem("connects delayed by it", st.delayed),
                                  first_at(st)],
                        confidence=0.85, fixes=fixes)]
    return [Finding(id="lb-snat-exhaustion", title="The load balancer drops new SYNs",
                    severity="critical", cause=text,
                    evidence=[EvidenceItem("SYNs dropped at the LB", st.attempts),
                              first_at(st)],
                    confidence=0.85, fixes=fixes)]


@NAT_LB.rule("run", "syn-hit-established", name="reuse")
def reuse_from_run(ev: Evidence) -> list[Finding]:
    run = ev.require_run()
    st = cause_stats(run, "syn_hit_established")
    if st is None:
        return []
    return [Finding(
        id="syn-hit-established", title="A NAT or load balancer reused a 4-tuple the server still has open",
        severity="warning",
        cause=("SYNs arrived on 4-tuples the server still had ESTABLISHED (a path element forgot the "
               "flow and reused its port). The server's challenge ACK made the client send a RST that "
               f"reset the old connection, then the SYN was retried: {st.attempts:,} attempts."),
        evidence=[EvidenceItem("SYNs on an open 4-tuple", st.attempts), EvidenceItem("failed", st.failed)],
        confidence=0.8, fixes=[])]


WARN = 0.75


CRITICAL = 0.9


TOP = 3


@NAT_LB.rule("hosts", "snat-pool-exhaustion", name="snat")
def snat_from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        snat = h.extra.get("snat") or {}
        pools = snat.get("pools", [])
        hold = float(snat.get("time_wait_s", 120))
        p = profile_of(h)
        for g in (snat.get("tuples") or [])[:TOP]:
            budget = int(g["budget"])
            share = g["in_use"] / budget if budget else 1.0
            if share < WARN:
                continue
            pool = pools[g["pool"]] if g.get("pool") is not None and g["pool"] < len(pools) else None
            dst = f"[{g['dst']}]" if ":" in g["dst"] else g["dst"]
            where = f"{g['nat_addr']} -> {dst}:{g['dport']}"
            lo, hi = g["ports"]
            sustainable = max(0.0, (budget - g["established"] - g["other"]) / hold)
            items = [
                EvidenceItem("NAT address -> destination", where),
                EvidenceItem("translated ports in use", g["in_use"], f"{share:.0%} of {budget:,}"),
                EvidenceItem("pool", f"{lo}-{hi}",
                             (f"{pool['kind']} rule ({pool['source']}: {pool['rule']})" if pool else
                              "no rule read: the kernel's default range")),
                EvidenceItem("conntrack TIME_WAIT", g["time_wait"],
                             f"closed flows; each holds its port {hold:g} s (nf_conntrack_tcp_timeout_time_wait)"),
                EvidenceItem("conntrack ESTABLISHED", g["established"]),
                EvidenceItem("other states", g["other"]),
                EvidenceItem("client addresses behind it", g["sources"]),
                EvidenceItem("sustainable new flows per s", round(sustainable, 1),
                             f"free ports / {hold:g} s conntrack TIME_WAIT"),
            ]
            if h.conntrack and h.conntrack.get("max"):
                items.append(EvidenceItem("nf_conntrack_count / max",
                                          f"{h.conntrack.get('count', 0):,} / {h.conntrack['max']:,}",
                                          "the table itself is not what runs out"))
            harder = p is not None and p.is_linux and nat_evicts_timewait(p.version)
            fixes = fix_list(fx.more_nat_addresses(lo, hi),
                             fx.reuse_connections("Removes the churn that fills the pool.",
                                                  title="Reuse connections in the clients (keep-alive, pools)"),
                             fx.shorter_conntrack_timewait(h, "nat"))
            out.append(Finding(
                id="snat-pool-exhaustion",
                title=(f"SNAT pool {lo}-{hi} toward {dst}:{g['dport']} {share:.0%} used "
                       f"({g['in_use']:,} of {budget:,} on {g['nat_addr']})"),
                severity="critical" if share >= CRITICAL else "warning",
                cause=("Source NAT must give every flow a translated tuple no other conntrack entry has "
                       "(nf_nat_used_tuple()), so toward one destination address and port each NAT address "
                       f"has {budget:,} source ports ({lo}-{hi}). Closed flows keep theirs for {hold:g} s in "
                       f"conntrack TIME_WAIT: above {sustainable:,.0f} new flows/s the pool runs out and the "
                       "new flow's SYN is dropped (the client retransmits, then times out), while "
                       "nf_conntrack_count may be far from nf_conntrack_max. The port search gives up after "
                       "a limited number of tries, so failures start before the last port is taken."
                       + (" On this kernel the last tries may evict a TIME_WAIT entry "
                          "(nf_nat_used_tuple_harder()), so some flows still get through, slowly."
                          if harder else "")),
                evidence=items, confidence=0.85 if pool else 0.7, fixes=fixes, hosts=[h.name]))
    return out


@NAT_LB.rule("hosts", "conntrack-near-full", name="conntrack")
def conntrack_from_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in linux_hosts(ev):
        ct = h.conntrack or {}
        count, cmax = ct.get("count"), ct.get("max")
        if not count or not cmax or count < 0.75 * cmax:
            continue
        tw_to = h.settings.get("net.netfilter.nf_conntrack_tcp_timeout_time_wait")
        out.append(Finding(
            id="conntrack-near-full", title=f"conntrack table {count / cmax:.0%} full ({count:,} of {cmax:,})",
            severity="critical" if count >= 0.9 * cmax else "warning",
            cause=("When nf_conntrack_count reaches nf_conntrack_max, new flows are dropped ('nf_conntrack: "
                   "table full, dropping packet'): SYNs vanish and clients retransmit. Short connections "
                   "keep their entry for nf_conntrack_tcp_timeout_time_wait after closing."),
            evidence=[EvidenceItem("nf_conntrack_count", count), EvidenceItem("nf_conntrack_max", cmax),
                      EvidenceItem("nf_conntrack_tcp_timeout_time_wait", tw_to)],
            confidence=0.9,
            fixes=fix_list(fx.raise_conntrack_max(h, cmax),
                   fx.shorter_conntrack_timewait(h, "server")),
            hosts=[h.name]))
    return out


@NAT_LB.rule("capture", "capture-syn-hit-established")
def reuse_from_capture(ev: Evidence) -> list[Finding]:
    """SYNs answered by a challenge ACK: the previous connection on the 4-tuple was still open."""
    an = ev.require_capture()
    a = an.attempts

    def on_open_tuple(b: Block) -> np.ndarray:
        old = b["is_attempt"] & (b["answer"] == flows.A_OLD_ACK)
        tw = old & (b["prev_tw"] == 2) & (b["reuse_age_s"] < 60)
        return old & ~tw & (b["prev"] >= 0) & (b["prev_tw"] == 0)

    out: list[Finding] = []
    chal = rows_where(an, on_open_tuple)
    prev = a["prev"][chal]
    still_open = (a["tw_holder"][prev] == 0) & np.isnan(a["t_rst_orig"][prev]) & np.isnan(a["t_rst_resp"][prev])
    for client, rows in by_client(an, chal[still_open]):
        n = rows.size
        out.append(Finding(
            id="capture-syn-hit-established",
            title=f"SYNs from {client} reuse 4-tuples whose previous connection is still open",
            severity="critical",
            cause=(f"{n:,} SYNs from {client} used a 4-tuple whose previous connection had not been "
                   f"closed (no FIN exchange, no RST seen), {span(a['reuse_age_s'][rows])} after its "
                   "last packet. The server answers such a SYN with a challenge ACK (RFC 5961), the "
                   "client resets it, and the server's connection is torn down. A NAT or load balancer "
                   "that forgot the mapping and reused the port does this."),
            evidence=[EvidenceItem("SYNs answered by a challenge ACK", n),
                      EvidenceItem("idle time of the old connection", span(a["reuse_age_s"][rows]))],
            confidence=0.7,
            fixes=[fx.nat_timeouts()],
            hosts=[client]))
    return out
