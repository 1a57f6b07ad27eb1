"""The lab's NAT, L4 load balancer and path loss with iptables-legacy, where nftables cannot.

Debian's UML kernel (6.1) has nf_tables without the ip family, but has ip_tables,
iptable_nat, MASQUERADE/SNAT/DNAT and xt_statistic. The same plan (plan.py) is realised
with the same semantics, rule for rule:

    nftables (plan.py)                          iptables-legacy (here)
    snat ip to POOL:LO-HI [fully-random]        -j SNAT --to-source POOL:LO-HI [--random-fully]
    dnat ... numgen inc mod N map {...}         -m statistic --mode nth --every N-i --packet 0
    dnat ... numgen random mod N map {...}      -m statistic --mode random --probability 1/(N-i)
    ct status dnat ... snat ...                 -m conntrack --ctstatus DNAT -j SNAT ...
    numgen random mod 1000000 < K drop          -m statistic --mode random --probability K/1e6

The nat table sees only a connection's first packet, as nftables' nat chains do, so the
nth/random rules schedule connections, not packets. `jhash ip saddr` (source_hash) has no
iptables counterpart and is refused. The backend is chosen by probing: nftables when it can
load an `ip` table, else iptables-legacy (choose()).
"""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING

from ..errors import LabError

if TYPE_CHECKING:
    from ..scenario.schema import Scenario
    from .netns import Namespace
    from .plan import LabPlan

BIN = "iptables-legacy"
RESTORE = "iptables-legacy-restore"
BACKENDS = ("auto", "nft", "iptables")


def _range_text(pool: list[str]) -> str:
    return pool[0] if len(pool) == 1 else f"{pool[0]}-{pool[-1]}"


def _table(name: str, chains: list[str], rules: list[str]) -> str:
    return "\n".join([f"*{name}", *(f":{c} ACCEPT [0:0]" for c in chains), *rules, "COMMIT", ""])


def _snat(pool: list[str], port_range: tuple[int, int], flags: str) -> str:
    lo, hi = port_range
    return f"-j SNAT --to-source {_range_text(pool)}:{lo}-{hi}" + (
        " --random-fully" if flags == "fully-random" else "")


NAT_CHAINS = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]


def nat_rules(pool: list[str], port_range: tuple[int, int], flags: str) -> str:
    return _table("nat", NAT_CHAINS, [f"-A POSTROUTING -o up0 -p tcp {_snat(pool, port_range, flags)}"])


def _prob(p: Fraction) -> str:
    return f"{float(p):.10f}"


def lb_rules(vip: str, port: int, backends: list[tuple[str, int]], scheduler: str,
             snat: list[str] | None, snat_range: tuple[int, int], snat_flags: str) -> str:
    match = f"-A PREROUTING -d {vip}/32 -p tcp --dport {port}"
    n = len(backends)
    rules = []
    if scheduler not in ("round_robin", "random"):
        raise LabError(f"LB scheduler {scheduler!r} needs nftables (jhash); iptables-legacy has "
                       "no equivalent and this kernel's nftables cannot load an ip table")
    for i, (a, p) in enumerate(backends):
        to = f"-j DNAT --to-destination {a}:{p}"
        if i == n - 1:
            rules.append(f"{match} {to}")
        elif scheduler == "round_robin":
            rules.append(f"{match} -m statistic --mode nth --every {n - i} --packet 0 {to}")
        else:
            rules.append(f"{match} -m statistic --mode random --probability "
                         f"{_prob(Fraction(1, n - i))} {to}")
    if snat:
        rules.append(f"-A POSTROUTING -p tcp -m conntrack --ctstatus DNAT {_snat(snat, snat_range, snat_flags)}")
    return _table("nat", NAT_CHAINS, rules)


def loss_rules(loss: float) -> str:
    k = round(loss * 1_000_000)
    return _table("filter", ["INPUT", "FORWARD", "OUTPUT"],
                  [f"-A FORWARD -m statistic --mode random --probability {_prob(Fraction(k, 1_000_000))} -j DROP"])


def translate(plan: LabPlan, sc: Scenario) -> None:
    """Replace the plan's nftables rulesets by iptables-legacy ones of the same meaning."""
    r = plan.realisation
    for h in plan.hosts.values():
        if not h.nft:
            continue
        if h.role == "nat" and sc.nat is not None:
            h.ipt = nat_rules(list(h.addresses), sc.nat.port_range, r.nat_flags)
        elif h.role == "lb" and sc.lb is not None and plan.vip is not None:
            backs = [(b.addresses[0], plan.backend_port or 0) for b in plan.hosts.values()
                     if b.group == sc.lb.backends and b.role == "server"]
            h.ipt = lb_rules(plan.vip[0], plan.vip[1], backs, r.lb_scheduler,
                             list(h.addresses[1:]) if sc.lb.snat else None,
                             sc.lb.snat_port_range, r.lb_snat_flags)
        elif h.role == "router":
            h.ipt = loss_rules(plan.loss)
        h.nft = None


def load(ns: Namespace, rules: str) -> None:
    if shutil.which(RESTORE) is None:
        raise LabError(f"`{RESTORE}` is not installed (Debian package iptables); this kernel's "
                       "nftables cannot realise NAT, LB or loss")
    ns.run([RESTORE], input=rules)


@cache
def _nft_ip_works() -> bool:
    """Can nftables load an `ip` table here? Probed in a throwaway namespace (unshare)."""
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--net", "nft", "add table ip tcpr-probe"],
                       capture_output=True, timeout=20, check=False)
    return r.returncode == 0


def choose(asked: str = "auto") -> str:
    """The netfilter backend: as asked, or nftables where it can load an ip table."""
    if asked not in BACKENDS:
        raise LabError(f"unknown netfilter backend {asked!r} (auto, nft, iptables)")
    if asked != "auto":
        return asked
    return "nft" if _nft_ip_works() or shutil.which(RESTORE) is None else "iptables"
