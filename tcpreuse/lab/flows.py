"""Which 4-tuple the server saw for each client attempt through the NAT or the LB: the join.

Conntrack entries vanish when their timeout ends (at once behind an LB with no session
hold), so reading the table at the end of a run misses most flows. Instead a recorder in
the NAT and LB namespaces (ctevents.py, both netfilter backends, both kernels) writes every
TCP flow the kernel confirmed, with when it began and ended:

    original source, source port  ->  server address, source address and port it saw

(the destinations follow from the server address and the target).

A client (address, port) is used again during a run: a TIME_WAIT reused, a port freed and
picked again, a Windows client cycling its dynamic range, a NAT handing out the same
translated port. Through the LB each use is scheduled anew and may land on another server,
so the key alone is ambiguous. The join uses time: the attempts on one key, in time order,
cut the timeline into windows, [t_k, t_k+1); attempt k is served by the latest flow that
began in its window (a conntrack entry killed and re-created during the attempt, e.g. by a
RST and the SYN sent again, leaves the later one, which answered), else by the latest flow
still alive when the attempt began (a conntrack entry that outlived the previous attempt
and carried this one's SYN). The events are read a few milliseconds after the kernel made
them at most; a 4-tuple is used again only after its previous connection ended, so the
windows are wider than that. Pure: no I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

FlowKey = tuple[str, int]  # client-side source address and port
FlowVal = tuple[str, str, int]  # server address, source address and port the server saw
# the clocks of load and recorder are one (CLOCK_REALTIME on one kernel); this absorbs the
# rounding of the attempts' times (microseconds) and nothing else
EPS_S = 0.001


@dataclass
class Flow:
    start: float  # s: conntrack confirmed it (NEW event)
    view: FlowVal
    end: float = math.inf  # s: the entry was destroyed (DESTROY event); inf: alive at the end


@dataclass
class Flows:
    """key -> its flows in start order."""

    by_key: dict[FlowKey, list[Flow]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_key.values())

    def shifted(self, dt: float) -> Flows:
        """The same flows with every time minus dt (wall clock -> the run's clock)."""
        return Flows({k: [Flow(f.start - dt, f.view, f.end - dt) for f in v]
                      for k, v in self.by_key.items()})

    def views(self, key: FlowKey) -> set[FlowVal]:
        return {f.view for f in self.by_key.get(key, ())}


def build_flows(events: Iterable[tuple[str, float, FlowKey, FlowVal]]) -> Flows:
    """Events in the order the kernel sent them: ("N", t, key, view) opens a flow, ("D", ...)
    ends the open flow with that key and view (one conntrack entry has one tuple pair)."""
    out: dict[FlowKey, list[Flow]] = {}
    open_: dict[tuple[FlowKey, FlowVal], Flow] = {}
    for what, t, key, view in events:
        if what == "N":
            f = Flow(t, view)
            out.setdefault(key, []).append(f)
            open_[(key, view)] = f
        else:
            g = open_.pop((key, view), None)
            if g is not None:
                g.end = t
    for v in out.values():
        v.sort(key=lambda f: f.start)
    return Flows(out)


# one attempt: client-side source address and port, the server addresses that may have
# served it, and when it was due (s on the same clock as the flows)
Query = tuple[str, int, frozenset[str], float]


def join(flows: Flows, queries: Sequence[Query | None]) -> list[FlowVal | None]:
    """The server-side view of each attempt (None: no flow recorded for it)."""
    groups: dict[tuple[str, int, frozenset[str]], list[tuple[float, int]]] = {}
    for i, q in enumerate(queries):
        if q is not None:
            groups.setdefault((q[0], q[1], q[2]), []).append((q[3], i))
    out: list[FlowVal | None] = [None] * len(queries)
    for (src, sport, accept), uses in groups.items():
        cands = [f for f in flows.by_key.get((src, sport), ()) if f.view[0] in accept]
        if not cands:
            continue
        starts = [f.start for f in cands]
        uses.sort()
        for j, (t, i) in enumerate(uses):
            lo = t - EPS_S
            hi = uses[j + 1][0] - EPS_S if j + 1 < len(uses) else math.inf
            k = bisect.bisect_left(starts, hi) - 1  # the latest flow begun before the next attempt
            while k >= 0 and cands[k].start < lo and cands[k].end <= lo:
                k -= 1  # begun before this attempt and ended before it: not this attempt's
            out[i] = cands[k].view if k >= 0 else None
    return out
