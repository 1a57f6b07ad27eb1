"""Doctor check on a NAT host: the SNAT/MASQUERADE port pool per destination.

What connect()'s port budget is to a client, the NAT's port search is to a router: the
translated tuple must be unique among conntrack entries (nf_nat_used_tuple()), so each
(NAT address, destination, destination port) has one pool of source ports, and a closed
flow keeps its port for nf_conntrack_tcp_timeout_time_wait (120 s). A full pool drops the
new flow's SYN (the client retransmits, then times out); the conntrack count can be far
below nf_conntrack_max meanwhile.
"""

from __future__ import annotations

from ...diagnose.base import Evidence, rule
from ...findings import EvidenceItem, Finding
from ...model.nat import nat_evicts_timewait
from ..judge import Fix, fix_list, linux_hosts, profile_of, sysctl_fix

WARN = 0.75
CRITICAL = 0.9
TOP = 3


@rule("host-snat-pool", needs={"hosts"})
def snat_pool(ev: Evidence) -> list[Finding]:
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
            fixes = [Fix(id="more-nat-addresses",
                         title=f"Give the rule more NAT addresses or a wider port range than {lo}-{hi}",
                         commands=["nft: ... snat to 192.0.2.10-192.0.2.13:1024-65535 (or masquerade to "
                                   ":1024-65535)",
                                   "iptables: -j SNAT --to-source 192.0.2.10-192.0.2.13:1024-65535"],
                         caveat="Each NAT address adds a whole pool per destination."),
                     Fix(id="reuse-connections", title="Reuse connections in the clients (keep-alive, pools)",
                         caveat="Removes the churn that fills the pool.")]
            fixes += fix_list(sysctl_fix("shorter-conntrack-timewait",
                                         "Shorten conntrack's TIME_WAIT hold to 30 s", h, "nat",
                                         {"net.netfilter.nf_conntrack_tcp_timeout_time_wait": 30},
                                         caveat="Ports come back 4x sooner; a late segment of an old flow "
                                                "may then meet a new one."))
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
