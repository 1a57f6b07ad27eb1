"""One reading -> Prometheus metric families (pure: no I/O, no clock).

Names follow the Prometheus conventions: ``tcpreuse_`` prefix, the unit last
(``_seconds``, ``_ports``, ``_sockets``), ``_total`` only on counters. Kernel counters
keep their nstat names, as a label (``counter="TcpExtPAWSActive"``), since metric names
must be snake_case. Cardinality is bounded: the ``top`` most pressed tuples and listeners
get their own series, the other tuples are summed into ``tcpreuse_tuples_other_*``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from ..host.counters import COUNTERS
from ..host.facts import MAX_TUPLES
from ..host.sockets import STATE_NAMES, TCP_NEW_SYN_RECV, TCP_SYN_RECV
from .reader import Reading

# facts.build keeps the MAX_TUPLES most pressed tuples; the one after the top N is the
# largest of the rest, so N stops one short of what is kept.
MAX_TOP = MAX_TUPLES - 1
TUPLE_LABELS = ["src", "dst", "dport"]
LISTENER_LABELS = ["address", "port"]

# kernel TCP state -> label value (include/net/tcp_states.h; SYN_RECV request socks and
# full sockets under one name, as ss shows them)
STATE_LABEL = {k: v.lower().replace("-", "_") for k, v in STATE_NAMES.items()}


def families(r: Reading, top: int = 20) -> Iterator[Metric]:
    """Every metric family for one reading."""
    top = max(1, min(top, MAX_TOP))
    f = r.facts
    yield from _host(r)
    yield from _tuples(r, top)
    yield from _listeners(r, top)
    yield from _counters(r)
    findings = GaugeMetricFamily("tcpreuse_finding", "A finding of doctor's checks is present now (1), by id "
                                 "and severity; `tcpreuse doctor` explains it", labels=["id", "severity"])
    for fid, sev in sorted({(x.id, x.severity) for x in r.findings}):
        findings.add_metric([fid, sev], 1)
    yield findings
    if f.conntrack:
        yield GaugeMetricFamily("tcpreuse_conntrack_entries", "nf_conntrack_count", value=f.conntrack["count"])
        if "max" in f.conntrack:
            yield GaugeMetricFamily("tcpreuse_conntrack_entries_limit", "nf_conntrack_max",
                                    value=f.conntrack["max"])


def _host(r: Reading) -> Iterator[Metric]:
    f = r.facts
    info = InfoMetricFamily("tcpreuse_host", "What was read: host (or namespace) name, kernel, the profile "
                            "it is judged as, the inferred role")
    info.add_metric([], {"host": f.name, "kernel_release": str(f.extra.get("kernel_release") or ""),
                         "profile": f.profile or "", "role": f.role or "unknown",
                         "netns": str(f.extra.get("netns") or "")})
    yield info
    yield GaugeMetricFamily("tcpreuse_read_duration_seconds", "Time the last read and diagnosis took",
                            value=r.duration_s)
    if r.window_s is not None:
        yield GaugeMetricFamily("tcpreuse_read_window_seconds", "Seconds between the two reads that give "
                                "the rates (the previous read and this one)", value=r.window_s)
    states = f.extra.get("states")
    if isinstance(states, dict):
        g = GaugeMetricFamily("tcpreuse_sockets", "TCP sockets by kernel state (TIME_WAIT includes both "
                              "sides' mini-sockets)", labels=["state"])
        per: dict[str, int] = {}
        for k, n in states.items():
            name = STATE_LABEL.get(int(k), str(k))
            per[name] = per.get(name, 0) + int(n)
        for name, n in sorted(per.items()):
            g.add_metric([name], n)
        yield g
    budget = f.extra.get("port_budget")
    if isinstance(budget, dict):
        yield GaugeMetricFamily("tcpreuse_port_range_ports", "Ports in ip_local_port_range",
                                value=budget["size"])
        yield GaugeMetricFamily("tcpreuse_port_budget_ports", "Ports connect() may choose for one (source, "
                                "destination, port) tuple: the range minus reserved and listening ports",
                                value=budget["usable"])
    tw_max = f.settings.get("net.ipv4.tcp_max_tw_buckets")
    if isinstance(tw_max, int):
        yield GaugeMetricFamily("tcpreuse_time_wait_buckets_limit", "net.ipv4.tcp_max_tw_buckets: TIME_WAIT "
                                "sockets beyond it are not created (TCPTimeWaitOverflow)", value=tw_max)


def _tuples(r: Reading, top: int) -> Iterator[Metric]:
    f = r.facts
    in_use = GaugeMetricFamily("tcpreuse_tuple_ports_in_use", "Local ports in use toward (dst, dport) from "
                               "src: established, TIME_WAIT of this host, other states", labels=TUPLE_LABELS)
    budget = GaugeMetricFamily("tcpreuse_tuple_ports_budget", "Ports connect() may choose for this tuple",
                               labels=TUPLE_LABELS)
    tw = GaugeMetricFamily("tcpreuse_tuple_time_wait_sockets", "TIME_WAIT sockets of this tuple (this host "
                           "closed first; each holds its port until it expires)", labels=TUPLE_LABELS)
    est = GaugeMetricFamily("tcpreuse_tuple_established_sockets", "Established connections of this tuple",
                            labels=TUPLE_LABELS)
    rate = GaugeMetricFamily("tcpreuse_tuple_new_connections_per_second", "New connections per second of "
                             "this tuple between the last two reads (socket cookies not seen before)",
                             labels=TUPLE_LABELS)
    tte = GaugeMetricFamily("tcpreuse_tuple_time_to_exhaustion_seconds", "Seconds until connect() finds no "
                            "free port for this tuple at the current rate (0: exhausted now; +Inf: not at "
                            "this rate)", labels=TUPLE_LABELS)
    nxt = GaugeMetricFamily("tcpreuse_tuple_next_free_seconds", "Seconds until the oldest TIME_WAIT of this "
                            "tuple expires and frees its port", labels=TUPLE_LABELS)
    sus = GaugeMetricFamily("tcpreuse_tuple_sustainable_connections_per_second", "New connections per second "
                            "this tuple can sustain: free ports / how long each closed one is held",
                            labels=TUPLE_LABELS)
    for t in f.tuples[:top]:
        lab = [t.src, t.dst, str(t.dport)]
        in_use.add_metric(lab, t.in_use)
        budget.add_metric(lab, t.budget)
        tw.add_metric(lab, t.time_wait)
        est.add_metric(lab, t.established)
        if t.rate_per_s is not None:
            rate.add_metric(lab, t.rate_per_s)
        if t.seconds_to_exhaustion is not None:
            tte.add_metric(lab, t.seconds_to_exhaustion)
        elif t.rate_per_s is not None:
            tte.add_metric(lab, math.inf)
        if t.next_free_in_s is not None:
            nxt.add_metric(lab, t.next_free_in_s)
        if t.sustainable_rate_per_s is not None:
            sus.add_metric(lab, t.sustainable_rate_per_s)
    yield from (in_use, budget, tw, est, rate, tte, nxt, sus)

    total = int(f.extra.get("tuples_total", len(f.tuples)))
    yield GaugeMetricFamily("tcpreuse_tuples", "(src, dst, dport) tuples with outgoing connections; the "
                            f"{top} most used have their own tcpreuse_tuple_* series", value=total)
    rest = f.tuples[top:]
    shown = sum(t.in_use for t in f.tuples[:top])
    outgoing = int(f.extra.get("outgoing", shown))
    yield GaugeMetricFamily("tcpreuse_tuples_other", "Tuples without their own series", value=max(0, total - top))
    yield GaugeMetricFamily("tcpreuse_tuples_other_ports_in_use", "Local ports in use by the tuples without "
                            "their own series, summed", value=max(0, outgoing - shown))
    yield GaugeMetricFamily("tcpreuse_tuples_other_max_ports_in_use", "Ports in use of the most used tuple "
                            "without its own series (compare with tcpreuse_port_budget_ports)",
                            value=rest[0].in_use if rest else 0)


def _listeners(r: Reading, top: int) -> Iterator[Metric]:
    f = r.facts
    queue = GaugeMetricFamily("tcpreuse_listener_accept_queue", "Connections waiting in the accept queue "
                              "(ss Recv-Q)", labels=LISTENER_LABELS)
    backlog = GaugeMetricFamily("tcpreuse_listener_accept_queue_limit", "Accept queue limit: "
                                "min(listen() backlog, somaxconn) (ss Send-Q)", labels=LISTENER_LABELS)
    syn = GaugeMetricFamily("tcpreuse_listener_syn_recv", "Half-open connections (SYN queue, request "
                            "sockets) on this listener's port", labels=LISTENER_LABELS)
    half: dict[int, int] = {}
    if r.observed.sockets:
        rows = r.observed.sockets[-1].table.rows
        sel = rows["sport"][(rows["state"] == TCP_NEW_SYN_RECV) | (rows["state"] == TCP_SYN_RECV)]
        if len(sel):
            ports, counts = np.unique(sel, return_counts=True)
            half = dict(zip(ports.tolist(), counts.tolist(), strict=True))
    for li in f.listeners[:top]:  # most filled first (facts sorts them)
        lab = [li.addr, str(li.port)]
        queue.add_metric(lab, li.queue)
        backlog.add_metric(lab, li.backlog)
        syn.add_metric(lab, half.get(li.port, 0))
    yield from (queue, backlog, syn)
    yield GaugeMetricFamily("tcpreuse_listeners", "Listening sockets (the most filled have their own series)",
                            value=len(f.listeners))


def _counters(r: Reading) -> Iterator[Metric]:
    """The kernel counters doctor reads, as counters, only those the running kernel has."""
    f = r.facts
    c = CounterMetricFamily("tcpreuse_nstat", "TCP counters of /proc/net/netstat and /proc/net/snmp "
                            "by nstat name (only those that exist on this kernel)", labels=["counter"])
    for name, known in COUNTERS.items():
        if known.gauge or name in f.counters_absent or name not in f.counters_absolute:
            continue
        c.add_metric([name], f.counters_absolute[name])
    yield c
