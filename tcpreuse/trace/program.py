"""The bpftrace program, written for the running kernel and the user's filters.

Pure: from the kernel's numbering (:class:`.kernel.KernelInfo`) and a :class:`Filter` to
program text. Every probe filters in the kernel (namespace, ports, pid, a whitelist of
drop reasons) so that a busy host sends user space only what was asked for, and prints
one line per event (``printf`` records, read by :mod:`.events`):

====  ==========================  =====================================================
tag   tracepoint                  fields after the tag and the time (ns, CLOCK_MONOTONIC)
====  ==========================  =====================================================
D     skb:kfree_skb (IPv4 TCP)    reason saddr daddr sport_be dport_be flags state netns seq_be
R     tcp:tcp_send_reset          reason state saddr sport_be daddr dport_be netns
S     tcp:tcp_retransmit_synack   saddr sport daddr dport netns
E     sock:inet_sk_error_report   error saddr sport daddr dport netns
T     sock:inet_sock_set_state    oldstate newstate saddr sport daddr dport netns
C     syscalls:sys_exit_connect   ret pid netns daddr dport_be comm
B     syscalls:sys_exit_bind      ret pid netns saddr sport_be comm
====  ==========================  =====================================================

Ports marked ``_be`` are in network byte order as the kernel holds them (the reader
swaps them); the others the tracepoint already converted.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from ..model.verdicts import DEFAULT_DROP_REASONS
from .kernel import KernelInfo

# The TCP states whose transitions are traced (sock:inet_sock_set_state): leaving
# FIN_WAIT2 or CLOSING for CLOSE is tcp_time_wait() -> tcp_done() (a TIME_WAIT socket
# takes the 4-tuple), reaching ESTABLISHED from SYN_SENT/SYN_RECV is a new connection.
TW_ENTRY_FROM = ("TCP_FIN_WAIT2", "TCP_CLOSING")
NEW_FROM = ("TCP_SYN_SENT", "TCP_SYN_RECV")


@dataclass
class Filter:
    netns: int | None = None  # network namespace inode number
    ports: tuple[int, ...] = ()  # local or remote port
    pid: int | None = None  # connect()/bind() of this process only
    drop_reasons: tuple[str, ...] = DEFAULT_DROP_REASONS
    states: bool = True  # trace state changes (TIME_WAIT entries, new connections)
    probes: tuple[str, ...] = ()  # empty: all that this kernel has


@dataclass
class Plan:
    """What will be traced: the program and what was left out (with the reason)."""

    text: str
    probes: list[str]
    skipped: list[str] = field(default_factory=list)  # one line each
    drop_reasons: dict[str, int] = field(default_factory=dict)


def _be16(port: int) -> int:
    """A port as the kernel's __be16 reads when loaded as a host-order integer."""
    return socket.htons(port)


def _any(exprs: tuple[str, ...], values: list[int]) -> str:
    """A predicate: any of the expressions equals any of the values ("" when no values)."""
    if not values:
        return ""
    return "(" + " || ".join(f"{e} == {v}" for v in values for e in exprs) + ")"


def build(info: KernelInfo, flt: Filter) -> Plan:
    """The program for this kernel and these filters."""
    parts: list[str] = []
    probes: list[str] = []
    skipped: list[str] = []
    want = set(flt.probes) if flt.probes else None

    def wanted(tp: str) -> bool:
        if want is not None and tp not in want:
            return False
        why = info.missing.get(tp)
        if why:
            skipped.append(f"{tp}: {why}")
            return False
        return True

    ns_sk = "$sk->__sk_common.skc_net.net->ns.inum"
    ns_task = "curtask->nsproxy->net_ns->ns.inum"

    def ns_pred(expr: str) -> str:
        return f" && {expr} == {flt.netns}" if flt.netns is not None else ""

    be_ports = [_be16(p) for p in flt.ports]
    host_ports = list(flt.ports)

    reasons = {r: info.drop_reasons[r] for r in flt.drop_reasons if r in info.drop_reasons}
    absent = [r for r in flt.drop_reasons if r not in info.drop_reasons]
    if absent:
        skipped.append(f"drop reasons not on this kernel: {', '.join(absent)}")
    tw = info.states.get("TCP_TIME_WAIT", 6)

    if reasons and wanted("skb:kfree_skb"):
        rpred = " || ".join(f"args->reason == {n}" for n in sorted(reasons.values()))
        ns_num = reasons.get("NOT_SPECIFIED")
        keep_ns = f"(args->reason != {ns_num} || $st == {tw})" if ns_num is not None else "1"
        port_pred = _any(("$t->source", "$t->dest"), be_ports)
        keep = f"{keep_ns}{ns_pred('$ns')}{' && ' + port_pred if port_pred else ''}"
        # IPv4 and IPv6 (without extension headers before TCP): the same record
        # (one variable name per header type: bpftrace 0.17 refused ipv6hdr's fields on a name it
        # had seen as an iphdr in another probe)
        for proto, hdr, ip, l4, src, dst in (
                (0x0800, "iphdr", "$ip4", "$ip4->protocol", "$ip4->saddr", "$ip4->daddr"),
                (0x86DD, "ipv6hdr", "$ip6", "$ip6->nexthdr", "$ip6->saddr.in6_u.u6_addr8",
                 "$ip6->daddr.in6_u.u6_addr8")):
            parts.append(f"""
tracepoint:skb:kfree_skb /args->protocol == {proto:#06x} && ({rpred})/ {{
  $skb = (struct sk_buff *)args->skbaddr;
  {ip} = (struct {hdr} *)($skb->head + $skb->network_header);
  if ({l4} == 6) {{
    $t = (struct tcphdr *)($skb->head + $skb->transport_header);
    $sk = (struct sock *)args->rx_sk;
    $st = $sk != 0 ? $sk->__sk_common.skc_state : 0;
    $ns = $sk != 0 ? {ns_sk} : ($skb->dev != 0 ? $skb->dev->nd_net.net->ns.inum : 0);
    if ({keep}) {{
      printf("D %llu %u %s %s %u %u %u %u %u %u\\n", nsecs, args->reason, ntop({src}), ntop({dst}),
             $t->source, $t->dest, *((uint8 *)$t + 13), $st, $ns, $t->seq);
    }}
  }}
}}""")
        probes.append("skb:kfree_skb")

    if wanted("tcp:tcp_send_reset"):
        # sin_port and sin6_port are at the same offset: one port filter for both families
        port_pred = _any(("$s->sin_port", "$d->sin_port"), be_ports)
        parts.append(f"""
tracepoint:tcp:tcp_send_reset {{
  $s = (struct sockaddr_in *)args->saddr;
  $d = (struct sockaddr_in *)args->daddr;
  $rs6 = (struct sockaddr_in6 *)args->saddr;
  $rd6 = (struct sockaddr_in6 *)args->daddr;
  $sk = (struct sock *)args->skaddr;
  $skb = (struct sk_buff *)args->skbaddr;
  $ns = $sk != 0 ? {ns_sk} : ($skb != 0 && $skb->dev != 0 ? $skb->dev->nd_net.net->ns.inum : 0);
  if (1{ns_pred("$ns")}{" && " + port_pred if port_pred else ""}) {{
    if ($s->sin_family == {socket.AF_INET}) {{
      printf("R %llu %u %d %s %u %s %u %u\\n", nsecs, args->reason, args->state, ntop($s->sin_addr.s_addr),
             $s->sin_port, ntop($d->sin_addr.s_addr), $d->sin_port, $ns);
    }} else if ($s->sin_family == {socket.AF_INET6}) {{
      printf("R %llu %u %d %s %u %s %u %u\\n", nsecs, args->reason, args->state,
             ntop($rs6->sin6_addr.in6_u.u6_addr8), $rs6->sin6_port, ntop($rd6->sin6_addr.in6_u.u6_addr8),
             $rd6->sin6_port, $ns);
    }}
  }}
}}""")
        probes.append("tcp:tcp_send_reset")

    port_pred = _any(("args->sport", "args->dport"), host_ports)
    pp = f" && {port_pred}" if port_pred else ""

    def by_family(fmt: str, head: str, tail: str) -> str:
        """printf of a record whose addresses are the tracepoint's v4 or v6 fields."""
        v4 = "ntop(args->saddr), args->sport, ntop(args->daddr), args->dport"
        v6 = "ntop(args->saddr_v6), args->sport, ntop(args->daddr_v6), args->dport"
        return (f"if (args->family == {socket.AF_INET6}) {{ printf(\"{fmt}\\n\", {head}, {v6}, {tail}); }}\n"
                f"    else {{ printf(\"{fmt}\\n\", {head}, {v4}, {tail}); }}")

    if wanted("tcp:tcp_retransmit_synack"):
        parts.append(f"""
tracepoint:tcp:tcp_retransmit_synack /1{pp}/ {{
  $sk = (struct sock *)args->skaddr;
  $ns = {ns_sk};
  if (1{ns_pred("$ns")}) {{
    {by_family("S %llu %s %u %s %u %u", "nsecs", "$ns")}
  }}
}}""")
        probes.append("tcp:tcp_retransmit_synack")

    if wanted("sock:inet_sk_error_report"):
        parts.append(f"""
tracepoint:sock:inet_sk_error_report /args->error != 0 && args->protocol == 6{pp}/ {{
  $ns = {ns_task};  // no socket in this tracepoint: the namespace of the task it ran in
  if (1{ns_pred("$ns")}) {{
    {by_family("E %llu %d %s %u %s %u %u", "nsecs, args->error", "$ns")}
  }}
}}""")
        probes.append("sock:inet_sk_error_report")

    if flt.states and wanted("sock:inet_sock_set_state"):
        s = info.states
        close = s.get("TCP_CLOSE", 7)
        est = s.get("TCP_ESTABLISHED", 1)
        tw_from = " || ".join(f"args->oldstate == {s[n]}" for n in TW_ENTRY_FROM if n in s)
        new_from = " || ".join(f"args->oldstate == {s[n]}" for n in NEW_FROM if n in s)
        parts.append(f"""
tracepoint:sock:inet_sock_set_state /args->protocol == 6{pp} &&
    ((args->newstate == {close} && ({tw_from})) || (args->newstate == {est} && ({new_from})))/ {{
  $sk = (struct sock *)args->skaddr;
  $ns = {ns_sk};
  if (1{ns_pred("$ns")}) {{
    {by_family("T %llu %d %d %s %u %s %u %u", "nsecs, args->oldstate, args->newstate", "$ns")}
  }}
}}""")
        probes.append("sock:inet_sock_set_state")

    # connect()/bind(): the caller's sockaddr is read at entry (to filter) and again at exit
    # (to print), from the same user memory; sin_port and sin6_port share their offset.
    pid_pred = f" && pid == {flt.pid}" if flt.pid is not None else ""
    for call, arg, tag, probe, verdict_pred in (
            ("connect", "uservaddr", "C", "syscalls:sys_*_connect", "args->ret < 0 && args->ret != -115"),
            ("bind", "umyaddr", "B", "syscalls:sys_*_bind", "args->ret < 0")):
        if not (wanted(f"syscalls:sys_enter_{call}") and wanted(f"syscalls:sys_exit_{call}")):
            continue
        port = _any(("$a->sin_port",), be_ports)
        parts.append(f"""
tracepoint:syscalls:sys_enter_{call} /1{pid_pred}/ {{
  $a = (struct sockaddr_in *)args->{arg};
  if (($a->sin_family == {socket.AF_INET} || $a->sin_family == {socket.AF_INET6}){ns_pred(ns_task)}{
    " && " + port if port else ""}) {{
    @{call}_addr[tid] = args->{arg};
  }}
}}
tracepoint:syscalls:sys_exit_{call} /@{call}_addr[tid]/ {{
  if ({verdict_pred}) {{
    $a = (struct sockaddr_in *)@{call}_addr[tid];
    $a6 = (struct sockaddr_in6 *)@{call}_addr[tid];
    if ($a->sin_family == {socket.AF_INET}) {{
      printf("{tag} %llu %d %d %u %s %u %s\\n", nsecs, args->ret, pid, {ns_task}, ntop($a->sin_addr.s_addr),
             $a->sin_port, comm);
    }} else {{
      printf("{tag} %llu %d %d %u %s %u %s\\n", nsecs, args->ret, pid, {ns_task},
             ntop($a6->sin6_addr.in6_u.u6_addr8), $a6->sin6_port, comm);
    }}
  }}
  delete(@{call}_addr[tid]);
}}""")
        probes.append(probe)

    parts.append('\nBEGIN { printf("READY %llu\\n", nsecs); }\n')
    return Plan(text="\n".join(parts), probes=probes, skipped=skipped, drop_reasons=reasons)
