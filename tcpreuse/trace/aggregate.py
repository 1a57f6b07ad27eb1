"""Running aggregates of a trace and its summary document. Pure: fed events, in order.

Per verdict (and the kernel's reason), per 4-tuple, per local endpoint (a listener, for
events on the receive path) and per process (the caller, for connect()/bind(); the
listener's owner from the socket table otherwise). Two verdicts have no event of their
own and are inferred here from ``sock:inet_sock_set_state``: a 4-tuple that entered
TIME_WAIT here (FIN_WAIT2/CLOSING -> CLOSE, i.e. tcp_time_wait()) and reached ESTABLISHED
again within TCP_TIMEWAIT_LEN (tw-accepted on a server, tw-reuse on a client).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ..model.timewait import TCP_TIMEWAIT_LEN
from ..model.verdicts import VERDICTS, new_connection_verdict
from .events import TraceEvent

Tuple4 = tuple[str, int, str, int]
TOP = 20


def local_end(ev: TraceEvent) -> tuple[str, int]:
    """The local endpoint: a received packet's destination, a socket's own address."""
    if ev.probe == "skb:kfree_skb":
        return (ev.daddr, ev.dport)
    if ev.probe in ("syscalls:sys_exit_connect", "sock:inet_sk_error_report"):
        return (ev.daddr, ev.dport)  # a client's failure: the destination it wanted
    return (ev.saddr, ev.sport)


def endpoint(a: tuple[str, int]) -> str:
    return f"{a[0]}:{a[1]}"


def tuple_text(t: Tuple4) -> str:
    src = f"{t[0]}:{t[1]}" if t[0] else "*"
    dst = f"{t[2]}:{t[3]}" if t[2] else "*"
    return f"{src} > {dst}"


@dataclass
class Summary:
    """What a trace saw. `to_json()` is the document `--json` ends with and doctor reads."""

    started_ns: int = 0
    last_ns: int = 0
    events: int = 0
    lost: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verdict, kernel reason)
    tuples: dict[Tuple4, Counter[str]] = field(default_factory=dict)
    locals_: dict[tuple[str, int], Counter[str]] = field(default_factory=dict)
    processes: dict[str, Counter[str]] = field(default_factory=dict)
    flags: Counter[tuple[str, str]] = field(default_factory=Counter)  # (verdict, flags)
    owners: dict[tuple[str, int], str] = field(default_factory=dict)  # local endpoint -> "comm[pid]"
    kernel: str = ""
    probes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # e.g. bpftrace exited early
    timewait: OrderedDict[tuple[int, Tuple4], int] = field(default_factory=OrderedDict)
    max_tuples: int = 100_000

    def add(self, ev: TraceEvent) -> TraceEvent | None:
        """Count one event; return the event to show (a state change yields an inferred
        verdict, or nothing)."""
        if self.started_ns == 0:
            self.started_ns = ev.t_ns
        self.last_ns = max(self.last_ns, ev.t_ns)
        if ev.verdict == "state":
            shown = self._state(ev)
            if shown is None:
                return None
            ev = shown
        elif ev.verdict == "tw-rst":  # the RST killed that TIME_WAIT: a later SYN does not meet it
            self.timewait.pop((ev.netns, (ev.daddr, ev.dport, ev.saddr, ev.sport)), None)
        self.events += 1
        self.verdicts[ev.verdict] += 1
        self.reasons[(ev.verdict, ev.reason)] += 1
        if ev.flags:
            self.flags[(ev.verdict, ev.flags)] += 1
        if len(self.tuples) < self.max_tuples or ev.tuple in self.tuples:
            self.tuples.setdefault(ev.tuple, Counter())[ev.verdict] += 1
        self.locals_.setdefault(local_end(ev), Counter())[ev.verdict] += 1
        who = self.process_of(ev)
        if who:
            self.processes.setdefault(who, Counter())[ev.verdict] += 1
        return ev

    def process_of(self, ev: TraceEvent) -> str:
        if ev.pid is not None:
            return f"{ev.comm}[{ev.pid}]"
        loc = local_end(ev)
        return self.owners.get(loc) or self.owners.get(("0.0.0.0", loc[1]), "")

    def _state(self, ev: TraceEvent) -> TraceEvent | None:
        old, _, new = ev.reason.partition("->")
        key = (ev.netns, ev.tuple)
        if new == "CLOSE":  # tcp_time_wait() -> tcp_done(): a TIME_WAIT socket holds the tuple now
            self.timewait[key] = ev.t_ns
            self.timewait.move_to_end(key)
            self._expire(ev.t_ns)
            return None
        entered = self.timewait.get(key)
        # per-CPU buffers deliver out of order: a close stamped after this event is not
        # the TIME_WAIT this connection met (and stays for the next one)
        if entered is None or entered > ev.t_ns:
            return None
        del self.timewait[key]
        if ev.t_ns - entered > TCP_TIMEWAIT_LEN * 1e9:
            return None
        age_ms = (ev.t_ns - entered) / 1e6
        return TraceEvent(ev.t_ns, ev.probe, new_connection_verdict(old), f"TIME_WAIT {age_ms:.0f} ms old",
                          ev.saddr, ev.sport, ev.daddr, ev.dport, "ESTABLISHED", netns=ev.netns)

    def _expire(self, now_ns: int) -> None:
        horizon = now_ns - int(TCP_TIMEWAIT_LEN * 1e9)
        while self.timewait:
            t = next(iter(self.timewait.values()))
            if t >= horizon and len(self.timewait) <= self.max_tuples:
                break
            self.timewait.popitem(last=False)

    @property
    def duration_s(self) -> float:
        return max(0.0, (self.last_ns - self.started_ns) / 1e9)

    def to_json(self) -> dict[str, Any]:
        def top(d: dict[Any, Counter[str]], name: Any) -> list[dict[str, Any]]:
            rows = sorted(d.items(), key=lambda kv: -sum(kv[1].values()))[:TOP]
            return [{**name(k), "events": sum(c.values()), "verdicts": dict(c)} for k, c in rows]

        return {
            "kind": "tcpreuse-trace",
            "kernel": self.kernel,
            "duration_s": round(self.duration_s, 3),
            "events": self.events,
            "lost_events": self.lost,
            "probes": self.probes,
            "skipped": self.skipped,
            "warnings": self.warnings,
            "verdicts": {v: self.verdicts[v] for v in VERDICTS if self.verdicts[v]},
            "reasons": [{"verdict": v, "reason": r, "count": n} for (v, r), n in self.reasons.most_common()],
            "flags": [{"verdict": v, "flags": f, "count": n} for (v, f), n in self.flags.most_common()],
            "tuples": top(self.tuples, lambda k: {"tuple": tuple_text(k)}),
            "locals": top(self.locals_, lambda k: {"endpoint": endpoint(k), "process": self.owners.get(k, "")}),
            "processes": top(self.processes, lambda k: {"process": k}),
        }
