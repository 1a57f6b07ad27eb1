"""A scenario's topology on the real kernel, as data (no I/O).

Layout (decided here, documented in docs/lab.md):

    client ns ──┐                       ┌── server ns        (servers targeted directly)
    client ns ──┤                       │
                ├── router ns ──────────┤
    client ns ─ nat ns ─┘               └── lb ns ──┬── server ns   (the LB's back ends)
    (groups in [nat])                               └── server ns

* One network namespace per host *instance* (GROUP-1 .. GROUP-N): each instance has its own
  ephemeral ports, TIME_WAIT table and sysctls, as separate machines do.
* Point-to-point veth links, "unnumbered": a host's addresses are /32 on its uplink, its
  default route goes via a gateway address that the upper namespace carries on every
  downlink (`onlink`), and the upper namespace routes each /32 to the right downlink. So any
  address the scenario names (even a public one) works, and nothing is ever routed outside.
* The router always exists (one place for loss, delay and captures of every flow).
* NAT (nftables SNAT with conntrack) and the L4 load balancer (nftables DNAT, optional SNAT)
  live in their own namespaces, in the path of the groups they serve; back ends route their
  replies through the LB, as behind a real L4 LB without direct server return.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field

from ..errors import LabError
from ..model.stacks import linux_syn_rtos
from ..scenario.schema import Scenario
from ..scenario.topology import int2ip
from ..scenario.topology import plan as sim_plan
from .realise import Realisation, sysctl_text

GW_ROUTER = "10.255.255.254"
GW_NAT = "10.255.255.253"
GW_LB = "10.255.255.252"
# The simulator's address plan (scenario/topology.py), so lab and simulate name the same hosts
# with the same addresses: clients 10.(k+1).0.1.., servers 10.(100+k).0.1.., pools below.
NAT_POOL_BASE = "198.51.100.1"
LB_SNAT_BASE = "192.0.2.1"
MAX_NAMESPACES = 64
EMULATED_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
                    "net.ipv4.conf.default.rp_filter": "0", "net.ipv4.conf.all.proxy_arp": "1"}


@dataclass
class Host:
    """One namespace: a host instance, the NAT, the LB or the router."""

    key: str  # host name in the RunResult ("client-1", "nat", "lb"), or "router"
    ns: str
    role: str  # client | server | nat | lb | router
    group: str
    profile: str
    addresses: list[str] = field(default_factory=list)  # own addresses, on the uplink
    uplink: str | None = None
    gateway: str | None = None
    downlinks: dict[str, list[str]] = field(default_factory=dict)  # iface -> routed /32s
    local_gw: str | None = None  # address carried on every downlink
    # /32s behind a forwarding namespace that does not own them: (addr, dev, via)
    routes_via: list[tuple[str, str, str]] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    nft: str | None = None
    # a client played by the packet-level emulator (tcpreuse.emulate): its EmuProfile as
    # JSON. The namespace forwards between its uplink and the emulator's TUN device and
    # answers ARP for the host's addresses (proxy_arp); the kernel here does not own them.
    emulated: str | None = None
    ipt: str | None = None  # iptables-legacy-restore text, when the backend is iptables

    def ip_batch(self) -> list[str]:
        """`ip -batch` lines that address and route this namespace (links exist by then)."""
        out = []
        if self.uplink:
            if not self.emulated:
                out += [f"addr add {a}/32 dev {self.uplink}" for a in self.addresses]
            if self.gateway:
                out.append(f"route add default via {self.gateway} dev {self.uplink} onlink")
        for dev, routed in self.downlinks.items():
            if self.local_gw:
                out.append(f"addr add {self.local_gw}/32 dev {dev}")
            out += [f"route add {a}/32 dev {dev}" for a in routed]
        out += [f"route add {a}/32 via {via} dev {dev} onlink" for a, dev, via in self.routes_via]
        return out


@dataclass
class Link:
    upper: str  # host key of the namespace nearer the router
    upper_if: str
    lower: str
    lower_if: str


@dataclass
class Serve:
    host: str
    group: str
    listen: list[tuple[str, int]]
    backlog: int
    close: str
    delay_ms: float
    workers: int = 0  # > 0: the bounded server (boundserve.py) with this many threads


@dataclass
class Load:
    host: str
    group: str
    workload: str
    target: tuple[str, int]
    target_host: str | None  # server instance when targeted directly
    rate: float
    duration_s: float
    count: int | None
    start_s: float
    arrival: str
    ramp_from: float
    close: str
    requests_per_conn: int
    sources: list[str]
    bind: str
    connect_timeout_s: float
    request_timeout_s: float
    seed: int
    # When this load's first attempt is due after its workload's start (s): constant
    # arrivals are interleaved across the workload's clients as in the simulator.
    phase_s: float = 0.0
    emulated: str | None = None  # EmuProfile JSON: run `emulate` instead of `load`

    @property
    def name(self) -> str:
        """Unique per load: a client may run one per server it talks to."""
        return f"load-{self.host}-{self.workload}" + (f"-{self.target_host}" if self.target_host else "")


@dataclass
class LabPlan:
    run_id: str
    scenario: str
    hosts: dict[str, Host]
    links: list[Link]
    serves: list[Serve]
    loads: list[Load]
    realisation: Realisation
    owner: dict[str, str]  # address -> host key owning it (servers, clients, nat, lb)
    vip: tuple[str, int] | None = None
    backend_port: int | None = None
    loss: float = 0.0
    rtt_ms: float = 0.0

    def ns_names(self) -> list[str]:
        return [h.ns for h in self.hosts.values()]


def ns_prefix(run_id: str) -> str:
    return f"tcpr-l{run_id}-"


def _addr(base: str, offset: int) -> str:
    try:
        a = ipaddress.IPv4Address(base) + offset
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError):
        raise LabError(f"the lab needs IPv4 addresses; cannot use {base!r} (+{offset})") from None
    if a.is_loopback or a.is_multicast or a.is_unspecified or a.is_reserved or a.is_link_local:
        raise LabError(f"address {a} cannot be used for a lab host (loopback, multicast or reserved)")
    return str(a)


def _pool(base: str, n: int) -> list[str]:
    return [_addr(base, k) for k in range(n)]


def _range_text(pool: list[str]) -> str:
    return pool[0] if len(pool) == 1 else f"{pool[0]}-{pool[-1]}"


def nat_ruleset(pool: list[str], port_range: tuple[int, int], flags: str) -> str:
    lo, hi = port_range
    return (
        "table ip tcpr-nat {\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "up0" meta l4proto tcp snat ip to {_range_text(pool)}:{lo}-{hi} {flags}\n'
        "  }\n"
        "}\n"
    )


SCHEDULERS = {
    "round_robin": "numgen inc mod {n}",
    "random": "numgen random mod {n}",
    "source_hash": "jhash ip saddr mod {n}",
}


def lb_ruleset(vip: str, port: int, backends: list[tuple[str, int]], scheduler: str,
               snat: list[str] | None, snat_range: tuple[int, int], snat_flags: str) -> str:
    if len(backends) == 1:
        a, p = backends[0]
        target = f"{a}:{p}"
    else:
        sel = SCHEDULERS[scheduler].format(n=len(backends))
        elems = ", ".join(f"{i} : {a} . {p}" for i, (a, p) in enumerate(backends))
        target = f"{sel} map {{ {elems} }}"
    out = (
        "table ip tcpr-lb {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {vip} tcp dport {port} dnat ip to {target}\n"
        "  }\n"
    )
    if snat:
        lo, hi = snat_range
        out += (
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ct status dnat meta l4proto tcp snat ip to {_range_text(snat)}:{lo}-{hi} {snat_flags}\n"
            "  }\n"
        )
    return out + "}\n"


def loss_ruleset(loss: float) -> str:
    k = round(loss * 1_000_000)
    return (
        "table ip tcpr-path {\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f"    numgen random mod 1000000 < {k} drop\n"
        "  }\n"
        "}\n"
    )


def syn_give_up_s(retries: int, linear: int = 0, rto_s: float = 1.0) -> float:
    """When connect() gives up on its own (model.stacks.linux_syn_rtos: `linear`
    retransmissions at the initial RTO on 6.5+, then doubling up to TCP_RTO_MAX)."""
    return sum(linux_syn_rtos(rto_s, retries, linear, 1000)) / 1000.0


def split(total: int, n: int, i: int) -> int:
    return total // n + (1 if i < total % n else 0)


def build_plan(sc: Scenario, r: Realisation, run_id: str) -> LabPlan:
    """Namespaces, links, addresses, routes, nftables, `serve` and `load` for `sc`."""
    prefix = ns_prefix(run_id)
    hosts: dict[str, Host] = {}
    links: list[Link] = []
    owner: dict[str, str] = {}
    natted = set(sc.nat.clients) if sc.nat else set()
    lb_backends = sc.lb.backends if sc.lb else None

    n_ns = 1 + sum(g.count for g in sc.host) + bool(natted) + (sc.lb is not None)
    if n_ns > MAX_NAMESPACES:
        raise LabError(
            f"this scenario needs {n_ns} network namespaces; the lab builds at most "
            f"{MAX_NAMESPACES}",
            hint="lower a group's count (--set host.GROUP.count=N; the rate is split over "
            "instances) or use `tcpreuse simulate`",
        )

    def own(addr: str, key: str) -> None:
        if addr in owner or addr in (GW_ROUTER, GW_NAT, GW_LB):
            raise LabError(f"address {addr} is used twice in the lab topology "
                           f"({owner.get(addr, 'a lab gateway')} and {key})")
        owner[addr] = key

    router = Host(key="router", ns=prefix + "router", role="router", group="router",
                  profile="", local_gw=GW_ROUTER, sysctls={"net.ipv4.ip_forward": "1"})
    hosts["router"] = router
    nat_host = lb_host = None
    if sc.nat is not None and natted:
        if sc.nat.name in hosts:
            raise LabError(f"the [nat] section cannot be named {sc.nat.name!r}")
        pool = _pool(sc.nat.address or NAT_POOL_BASE, sc.nat.addresses)
        nat_host = Host(key=sc.nat.name, ns=prefix + sc.nat.name, role="nat", group=sc.nat.name,
                        profile="", addresses=pool, uplink="up0", gateway=GW_ROUTER,
                        local_gw=GW_NAT,
                        sysctls={"net.ipv4.ip_forward": "1",
                                 **{k: str(v) for k, v in r.conntrack["nat"].items()}},
                        nft=nat_ruleset(pool, sc.nat.port_range, r.nat_flags))
        hosts[nat_host.key] = nat_host
        links.append(Link("router", "nat0", nat_host.key, "up0"))
        router.downlinks["nat0"] = list(pool)
        for a in pool:
            own(a, nat_host.key)
    if sc.lb is not None:
        lb = sc.lb
        snat_pool = _pool(lb.snat_address or LB_SNAT_BASE, lb.snat_addresses) if lb.snat else []
        if lb.name in hosts:
            raise LabError(f"the [lb] and [nat] sections need different names ({lb.name!r})")
        lb_host = Host(key=lb.name, ns=prefix + lb.name, role="lb", group=lb.name, profile="",
                       addresses=[_addr(lb.vip, 0), *snat_pool], uplink="up0",
                       gateway=GW_ROUTER, local_gw=GW_LB,
                       sysctls={"net.ipv4.ip_forward": "1",
                                **{k: str(v) for k, v in r.conntrack["lb"].items()}})
        hosts[lb_host.key] = lb_host
        links.append(Link("router", "lb0", lb_host.key, "up0"))
        router.downlinks["lb0"] = list(lb_host.addresses)
        for a in lb_host.addresses:
            own(a, lb_host.key)
    addresses = {i.name: [int2ip(a) for a in i.addrs] for i in sim_plan(sc)}
    instances: dict[str, list[Host]] = {}
    for g in sc.host:
        prof = g.profile
        sysctls = {k: sysctl_text(v) for k, v in r.sysctls.get(g.name, {}).items()}
        instances[g.name] = []
        for name in g.instance_names():
            if name in hosts:
                raise LabError(f"host {name!r} clashes with the lab's {hosts[name].role} "
                               "namespace; rename the group (or the [nat]/[lb] name)")
            addrs = [_addr(a, 0) for a in addresses[name]]
            behind_nat = g.role == "client" and g.name in natted
            behind_lb = g.role == "server" and g.name == lb_backends
            upper = nat_host if behind_nat else lb_host if behind_lb else router
            assert upper is not None
            gw = GW_NAT if behind_nat else GW_LB if behind_lb else GW_ROUTER
            emu = r.emulated.get(g.name)
            if emu is not None:  # forward to the emulator's TUN device, answer ARP for it
                sysctls.update(EMULATED_SYSCTLS)
            h = Host(key=name, ns=prefix + name, role=g.role, group=g.name, profile=prof,
                     addresses=addrs, uplink="eth0", gateway=gw, sysctls=dict(sysctls), emulated=emu)
            hosts[name] = h
            instances[g.name].append(h)
            dev = f"{g.role[0]}{len(upper.downlinks)}"
            links.append(Link(upper.key, dev, name, "eth0"))
            upper.downlinks[dev] = list(addrs)
            if upper is lb_host:  # back ends stay reachable directly, through the LB
                router.routes_via += [(a, "lb0", lb_host.addresses[0]) for a in addrs]
            for a in addrs:
                own(a, name)

    serves = []
    for g in sc.host:
        if g.role != "server":
            continue
        for h in instances[g.name]:
            serves.append(Serve(host=h.key, group=g.name, listen=[(a, p) for p in g.listen_ports for a in h.addresses],
                                backlog=g.backlog, close=r.serve_close.get(g.name, "server"),
                                delay_ms=g.service_ms, workers=r.bounded.get(g.name, 0)))

    vip = None
    if sc.lb is not None and lb_host is not None:
        vip = (lb_host.addresses[0], sc.lb.port)
        backs = [(h.addresses[0], sc.group(sc.lb.backends).port) for h in instances[sc.lb.backends]]
        lb_host.nft = lb_ruleset(vip[0], vip[1], backs, r.lb_scheduler,
                                 lb_host.addresses[1:] if sc.lb.snat else None,
                                 sc.lb.snat_port_range, r.lb_snat_flags)

    loads = []
    for wi, w in enumerate(sc.workload):
        cl = instances[w.clients]
        # No application timeout in the scenario means the kernel's own SYN schedule
        # decides; `load` always has one, so it gets the kernel's give-up time (+1 s).
        ctl = r.sysctls.get(w.clients, {})
        retries = int(ctl.get("net.ipv4.tcp_syn_retries", 6))
        linear = int(ctl.get("net.ipv4.tcp_syn_linear_timeouts", 4 if r.kernel.at_least(6, 5) else 0))
        connect_timeout = w.connect_timeout_s or syn_give_up_s(retries, linear) + 1.0
        duration = w.duration_s if w.duration_s is not None else sc.duration_s - w.start_s
        if duration <= 0:
            continue
        # The simulator sends attempt k of a workload from client k mod C to server
        # k mod S (sim/engine.py), so client i talks, in equal shares, to the servers s
        # with s = i (mod gcd(C, S)); one `load` per such (client, server) pair mirrors it.
        servers = [] if w.target == "lb" else instances[w.target]
        gcd = math.gcd(len(cl), len(servers)) if servers else 1
        for i, h in enumerate(cl):
            count = None
            if w.count is not None:
                count = split(w.count, len(cl), i)
                if count == 0:
                    continue
            if w.target == "lb":
                assert vip is not None
                pairs: list[tuple[tuple[str, int], str | None]] = [(vip, None)]
            else:
                port = sc.workload_port(w)
                pairs = [((srv.addresses[0], port), srv.key) for s_i, srv in enumerate(servers)
                         if (s_i - i) % gcd == 0]
            for j, (target, target_host) in enumerate(pairs):
                sub_count = None if count is None else split(count, len(pairs), j)
                if sub_count == 0:
                    continue
                # attempt k = i + n*C of the workload goes to server (i + n*C) mod S: this
                # pair's first is the first such n landing on its server
                first = i
                if servers and target_host is not None:
                    s_idx = next(s_i for s_i, srv in enumerate(servers) if srv.key == target_host)
                    first = next(i + n * len(cl) for n in range(len(servers))
                                 if (i + n * len(cl)) % len(servers) == s_idx)
                phase = first / w.rate if w.arrival == "constant" else 0.0
                loads.append(Load(
                    host=h.key, group=w.clients, workload=w.name, target=target,
                    target_host=target_host, rate=w.rate / len(cl) / len(pairs), duration_s=duration,
                    count=sub_count, start_s=w.start_s, arrival=w.arrival,
                    ramp_from=w.ramp_from / len(cl) / len(pairs), close=r.load_close[w.name],
                    requests_per_conn=w.requests_per_connection, sources=list(h.addresses),
                    bind=w.bind, connect_timeout_s=connect_timeout,
                    request_timeout_s=w.request_timeout_s or 30.0,
                    seed=sc.seed * 1000 + wi * 100 + i * 10 + j, phase_s=phase, emulated=h.emulated,
                ))

    if sc.path.loss:
        router.nft = loss_ruleset(sc.path.loss)
    out = LabPlan(run_id=run_id, scenario=sc.name, hosts=hosts, links=links, serves=serves,
                  loads=loads, realisation=r, owner=owner, vip=vip,
                  backend_port=sc.group(sc.lb.backends).port if sc.lb else None, loss=sc.path.loss,
                  rtt_ms=sc.path.rtt_ms)
    if r.netfilter == "iptables":  # the same rules for iptables-legacy (lab/iptables.py)
        from .iptables import translate

        translate(out, sc)
    return out
