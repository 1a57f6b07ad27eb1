"""Compare a simulated and a lab run, metric by metric, each with a stated tolerance.

What the kernel decides deterministically (how many connects succeed before the ports run
out, which parity they use, TIME_WAIT left at the end, counter deltas) must agree
exactly. What depends on timing (latency, onset time, the per-second TIME_WAIT series) has
a tolerance, and the reason for it is kept next to the comparison so a reader can judge
it. Pure: Metrics in, rows out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .metrics import PERCENTILES, Metrics, finite


@dataclass(frozen=True)
class Tolerance:
    text: str  # as printed: "exact", "±5 ms + 10 %", ...
    reason: str
    abs: float = 0.0
    rel: float = 0.0
    kind: str = "band"  # band: abs + rel; one_sided: 0 <= lab <= sim; at_least: sim <= lab <= 2 sim;
    # poisson: 3 sigma + abs; coins: 3 sigma of a sum of per-port coins (port_coins()) + abs

    def ok(self, a: float, b: float) -> bool:
        if self.kind == "one_sided":
            return 0 <= b <= a
        if self.kind == "at_least":
            return a <= b <= 2 * a
        if self.kind == "coins":  # rel = 1 / (4 P): variance n + n^2 / (4 P)
            n = max(abs(a), abs(b))
            return abs(a - b) <= 3.0 * math.sqrt(n + self.rel * n * n) + self.abs + 1e-9
        if self.kind == "poisson":
            return abs(a - b) <= 3.0 * math.sqrt(max(abs(a), abs(b))) + self.abs \
                + self.rel * max(abs(a), abs(b)) + 1e-9
        return abs(a - b) <= self.abs + self.rel * max(abs(a), abs(b)) + 1e-9


EXACT = Tolerance("exact", "the kernel decides this deterministically for a given workload")
FIRST_FAILURE_S = Tolerance(
    "±0.25 s + 2 %", "arrivals are paced by each side's own clock; the lab's load is a Python "
    "process that may start a pacing round late on a busy 2-core machine", abs=0.25, rel=0.02)
LATENCY = Tolerance(
    "±10 ms + 10 %", "the lab's connect time includes the load generator's event-loop delay "
    "(a Python process on a shared 2-core machine); what the kernel decides (a re-sent SYN) "
    "is pinned exactly by the retransmission count and its own latency row, and a 1 s RTO "
    "moving a percentile is far outside this", abs=10.0, rel=0.10)
LATENCY_TAIL = Tolerance(
    "±50 ms + 10 %", "the 99th percentile of a few hundred sub-ms handshakes is a handful of "
    "scheduling hiccups of the load generator or the server on a busy machine; only a kernel "
    "timer (the 1 s SYN RTO) moving it further is a disagreement", abs=50.0, rel=0.10)
RETRIED = Tolerance(
    "±3 ms + 10 %", "a retransmitted SYN leaves on a kernel timer (2 jiffies after an old "
    "ACK, or the 1 s RTO); the load generator adds its event-loop delay", abs=3.0, rel=0.10)


# A load generator's start lag below this is already inside LATENCY's 10 ms.
LAG_FLOOR_MS = 5.0


def retried_tolerance(jiffy_ms: float) -> Tolerance:
    """RETRIED plus one jiffy: the model fires the same kernel timers on the same wheel, but
    where the run's arrivals fall between two ticks (the jiffies phase) is the machine's."""
    if jiffy_ms <= 0:
        return RETRIED
    return Tolerance(f"±{3 + jiffy_ms:g} ms + 10 %", "a retransmitted SYN leaves on a kernel timer "
                     "(2 jiffies after an old ACK, or the 1 s RTO) that fires on a tick; where the "
                     "attempts fall between two ticks (the jiffies phase, one jiffy = "
                     f"{jiffy_ms:g} ms) is the machine's, and the load generator adds its "
                     "event-loop delay", abs=3.0 + jiffy_ms, rel=0.10)


SERIES = Tolerance(
    "within the bracketing simulated samples ± max(2, 2 %)", "the lab samples /proc once a "
    "second on its own clock, offset from the first attempt by the load's start-up; a lab "
    "sample must lie between the simulated samples around the same moment")


RACE_FIN_RST = Tolerance(
    "0 ≤ lab ≤ simulate", "the lab's client closes as soon as it has the answer, racing the "
    "server's RST: a RST that finds the client already in FIN_WAIT1 is not an EstabReset "
    "(tcp_set_state() counts only ESTABLISHED/CLOSE_WAIT -> CLOSE); the model has the RST "
    "arrive first", kind="one_sided")


RACE_EXTRA_RST = Tolerance(
    "simulate ≤ lab ≤ 2 × simulate", "the same race seen from the server: a client FIN that "
    "arrives after the server's RST finds no socket and is answered with one more RST "
    "(tcp_v4_send_reset()); the model has the RST arrive first", kind="at_least")


def chance(reason: str) -> Tolerance:
    """For counts the kernel draws from its secret hashes (which of two hosts' ISNs or
    timestamp offsets is ahead on a shared 4-tuple): the model draws from its own, so only
    the rate can agree. 3 standard deviations of a count (√n) plus 2."""
    return Tolerance("±(3√n + 2)", reason, abs=2.0, kind="poisson")

def port_coins(reason: str, ports: int) -> Tolerance:
    """For counts that are a sum over `ports` shared ports of one coin each, fixed for the
    run (which of two clients' ISN hashes is behind on that 4-tuple: that client's SYNs are
    rejected at every one of the other's TIME_WAITs there, the other's never). A port's
    share of the count is its meetings in one direction or the other, by its coin; with
    the n rejections spread over P ports and a port's two directions differing by about
    its share n/P, the coins add a variance P (n/P)^2 / 4 = n^2 / 4P to the count's own
    (Poisson) n: 3 standard deviations of that plus 2."""
    if ports < 1:
        raise ValueError("port_coins() needs at least one port")
    return Tolerance(f"±(3√(n + n²/{4 * ports}) + 2)", reason + f"; one coin per shared port ({ports}), "
                     "fixed for the run, so the count moves by whole ports' shares (variance "
                     f"n + n²/4P, P = {ports}), not by independent tosses", abs=2.0,
                     rel=1.0 / (4 * ports), kind="coins")


def queue_timing(reason: str) -> Tolerance:
    """For what an application-limited server's accept() timing decides (which SYN or final
    ACK finds a free accept-queue slot): 3 standard deviations of a count plus 2, and 10 %
    for the lab server's own service-time jitter."""
    return Tolerance("±(3√n + 2) + 10 %", reason, abs=2.0, rel=0.10, kind="poisson")


# Rows an application-limited server's timing decides (compare(queue_reason=...)).
QUEUE_TIMED = ("ListenOverflows", "ListenDrops", "Syncookies", "TCPReqQFull", "connected after")


SERIES_QUEUE = Tolerance(
    "within the bracketing simulated samples ± max(2, 3√peak)", "an application-limited "
    "server closes (and so puts into TIME_WAIT) as fast as its accept() loop runs; the lab's "
    "is a Python thread on a shared machine")

SERIES_CHANCE = Tolerance(
    "within the bracketing simulated samples ± max(2, 3√peak)", "TIME_WAIT sockets are killed "
    "by SYNs that the kernel's secret hashes decide to accept; the count moves by a few "
    "either way")


@dataclass
class Row:
    group: str  # attempts | outcomes | ports | timing | latency | time_wait | counters
    metric: str
    sim: Any
    lab: Any
    agree: bool | None  # None: not applicable (no value on either side)
    tolerance: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _row(group: str, metric: str, sim: Any, lab: Any, tol: Tolerance,
         agree: bool | None = None) -> Row:
    if agree is None and sim is not None and lab is not None:
        agree = tol.ok(float(sim), float(lab))
    elif agree is None and (sim is None) != (lab is None):
        agree = False
    return Row(group, metric, sim, lab, agree, tol.text, tol.reason)


def _count_tol(slack: int) -> Tolerance:
    if not slack:
        return EXACT
    return Tolerance(f"±{slack}", "the workload has no fixed count: the two runs made "
                     f"{slack} attempt(s) more or fewer, which may land in any outcome",
                     abs=float(slack))


def series_agree(sim: list[int], sim_step: float, lab: list[int], lab_step: float,
                 shift_s: float, by_chance: bool = False, lag_s: float = 0.0,
                 sim_end: int | None = None,
                 open_at: list[tuple[int, float]] | None = None) -> tuple[bool, float, float]:
    """Each lab sample (taken at (k+1)·lab_step on the lab's clock) against the simulated
    samples bracketing the same moment (lab time − shift_s), or any moment up to `lag_s`
    earlier (the lab's attempts ran up to that late). The simulated series stops at the
    scenario's duration while its connections go on closing until the end state
    (`sim_end`, e.g. a SYN re-sent 3 s after the last attempt): a lab sample after the last
    simulated one is bracketed by that sample and the end state.

    `open_at` (the lab's recorded close times, metrics.open_at()): per lab sample, the
    connections its load still had open and how long ago the oldest was due. It replaces
    `lag_s` for that sample: every attempt due before the oldest open one had closed, so
    its TIME_WAIT (which starts at a close) was there as at the model's moment that much
    earlier; and the open ones, which the model had closed within a ms, may be missing
    from the sample (the lower bound drops by their number). A sample with nothing open is
    compared at its own moment. Returns (agree, worst excess, at lab time)."""
    if not sim or not lab:
        return not any(sim) and not any(lab), 0, 0.0
    peak = max(max(sim), max(lab))
    slack = max(2.0, 3.0 * math.sqrt(peak) if by_chance else 0.02 * peak)
    worst, at = 0.0, 0.0
    for k, v in enumerate(lab):
        t_lab = (k + 1) * lab_step
        t_sim = t_lab - shift_s
        j = t_sim / sim_step - 1  # sim sample j is taken at (j + 1) * sim_step
        lo_i = max(0, min(len(sim) - 1, int(j // 1)))
        hi_i = max(0, min(len(sim) - 1, lo_i + 1))
        before = sim[lo_i] if j >= 0 else 0
        after = sim[hi_i] if j >= -1 else 0
        lo, hi = min(before, after), max(before, after)
        if sim_end is not None and j > len(sim) - 1:
            lo, hi = min(lo, sim_end), max(hi, sim_end)
        lag = lag_s
        in_flight = 0
        if open_at is not None and k < len(open_at):
            in_flight, lag = open_at[k]
        if lag > 0:
            j0 = (t_sim - lag) / sim_step - 1
            first = max(0, min(len(sim) - 1, int(j0 // 1)))
            window = sim[first:hi_i + 1] + ([0] if j0 < 0 else [])
            lo, hi = min(lo, *window), max(hi, *window)
        excess = max(lo - in_flight - slack - v, v - hi - slack, 0.0)
        if excess > worst:
            worst, at = excess, t_lab
    # a miss smaller than 0.05 past the slack is shown as 0.1, never as "off by 0"
    return worst == 0.0, max(round(worst, 1), 0.1) if worst > 0 else 0.0, at


# Rows that stay exact even in a scenario whose collisions are drawn by hashes.
NOT_CHANCE = ("attempts", "outcome ", "TcpActiveOpens", "TcpPassiveOpens", "TcpExtTW",
              "first failure", "distinct", "attempts on")


CHAIN_PARITY = ("a connect whose re-sent SYNs keep meeting TIME_WAITs holds its port in SYN-SENT for the "
                "retransmission times (2 to 14 s); while several such chains overlap, the client has no "
                "free port of the first parity left and takes one of the other (__inet_hash_connect()'s "
                "second pass): how many do is a chain of coin tosses, as the retries are")


def close_lag_tolerance(tol: Tolerance, opens: list[tuple[int, float]]) -> Tolerance:
    """`tol` for a TIME_WAIT series whose lab samples are judged by the lab's recorded close
    times (series_agree(open_at=...)), with the figures that widened it."""
    n_max = max((n for n, _ in opens), default=0)
    age_max = max((a for _, a in opens), default=0.0)
    if n_max == 0:
        return Tolerance(tol.text, tol.reason + "; the lab's load had no connection open at any "
                         "sample (its recorded close times)")
    return Tolerance(tol.text + ", or as the model was when the oldest connection the lab still had "
                     f"open was due (up to {age_max * 1000:.0f} ms earlier), less those open (up to {n_max})",
                     tol.reason + "; a TIME_WAIT starts at a close, and the lab's load records each "
                     "close(): at a sample it still had connections open (due, not yet closed: "
                     f"up to {n_max}, the oldest due up to {age_max * 1000:.0f} ms before) that the "
                     "model's had closed within a ms")


def lag_tolerance(tol: Tolerance, lag_ms: float) -> Tolerance:
    """`tol` plus how late the lab's load generator started its attempts (its p99, measured
    in the run): an open-loop attempt's connect latency counts from when it was due."""
    return Tolerance(f"±({tol.abs:g} + {lag_ms:g}) ms + {tol.rel * 100:g} %", tol.reason + "; and the "
                     f"lab's load started its attempts up to {lag_ms:g} ms late (p99 of its measured "
                     "start lag on this kernel), which its connect latency includes",
                     abs=tol.abs + lag_ms, rel=tol.rel)


def compare(sim: Metrics, lab: Metrics, fixed_count: bool = True,
            racy: frozenset[tuple[str, str]] = frozenset(),
            chance_reason: str | None = None, wrap: tuple[int, str] | None = None,
            queue_reason: str | None = None, jiffy_ms: float = 0.0,
            chance_outcomes: bool = False,
            lag_ms: float = 0.0, chance_retries: bool = False,
            coin_ports: int | None = None) -> list[Row]:
    """Rows for every metric. `racy`: (group, counter) pairs the lab's realisation leaves to
    a race (see RACE_FIN_RST), compared one-sided. `chance_reason`: the scenario's
    collisions are decided by the kernel's secret hashes (see chance()); counts other
    than NOT_CHANCE are compared statistically, with this reason. `queue_reason`: an
    application-limited server overflows its queues; which connections meet a full queue
    is timing (queue_timing()): listen-queue counters and connects by SYN try are compared
    statistically, and the connect-time percentiles, which then fall on one of the SYN
    retransmission times, are shown without a verdict. `jiffy_ms`: retried connects may
    differ by one more tick (retried_tolerance()). `chance_outcomes`:
    with `chance_reason`, the coin tosses decide outcomes too (a retried SYN meeting a second
    TIME_WAIT fails), so every count but the attempts and the distinct ports is compared
    statistically, the first failure's index and time included. `lag_ms`: the lab's
    load started attempts this late (p99), which the connect percentiles may move by
    (lag_tolerance(); above LAG_FLOOR_MS only, so a fast host's rows stay as they were).
    `chance_retries`: with `chance_reason`, a re-sent SYN may meet another coin toss, so
    how many SYN tries a connect needs is a chain of tosses: the connect percentiles fall
    on one retransmission time or the next and are shown without a verdict (the count of
    retried connects is compared, statistically), and the port parity split, which the
    ports such chains hold decide, is compared statistically (CHAIN_PARITY). `coin_ports`:
    with `chance_reason`, the tosses are one coin per shared port fixed for the run
    (port_coins()), not one per SYN: the chance-compared counts get that wider band."""
    series = SERIES_CHANCE if chance_reason is not None else SERIES_QUEUE if queue_reason is not None else None
    rows = _compare(sim, lab, fixed_count, racy, series, retried_tolerance(jiffy_ms),
                    lag_ms / 1000.0 if lag_ms > LAG_FLOOR_MS else 0.0)
    if queue_reason is not None:
        rows = _queue_rows(sim, lab, rows, queue_timing(queue_reason))
    if lag_ms > LAG_FLOOR_MS:
        for r in rows:
            if r.group == "latency" and r.metric.startswith("connect ms p") and "of those" not in r.metric \
                    and r.tolerance in (LATENCY.text, LATENCY_TAIL.text):
                tol = lag_tolerance(LATENCY_TAIL if r.metric.endswith("p99") else LATENCY, lag_ms)
                r.tolerance, r.reason = tol.text, tol.reason
                if isinstance(r.sim, int | float) and isinstance(r.lab, int | float):
                    r.agree = tol.ok(r.sim, r.lab)
    if wrap is not None:
        # Counts the kernel decides by where a scan starts: +-n, with the scenario's reason.
        n, why = wrap
        _relax(rows, Tolerance(f"±{n}", why, abs=float(n)),
               lambda r: r.group in ("outcomes", "ports", "time_wait", "counters", "timing")
               and r.tolerance == "exact")
    if chance_reason is not None and chance_outcomes:
        tol = chance(chance_reason)
        _relax(rows, tol, lambda r: r.metric not in ("attempts", "distinct local ports")
               and r.tolerance == "exact")
        _relax(rows, Tolerance(f"±1 s + {FIRST_FAILURE_S.text}", chance_reason,
                               abs=1.0 + FIRST_FAILURE_S.abs, rel=FIRST_FAILURE_S.rel),
               lambda r: r.metric.startswith("first failure: s"))
    elif chance_reason is not None:
        # TIME_WAIT at the end too: a TIME_WAIT is killed by each SYN the hashes let in
        _relax(rows, chance(chance_reason) if coin_ports is None else port_coins(chance_reason, coin_ports),
               lambda r: r.group in ("timing", "counters", "time_wait")
               and not any(k in r.metric for k in NOT_CHANCE))
    if chance_reason is not None and chance_retries:
        # a connect in such a chain holds its port in SYN-SENT for 2 to 14 s; while several
        # overlap, a client with a small range runs out of ports of the first parity and
        # takes the other's, so the parity split follows the chains too
        _relax(rows, Tolerance("±(3√n + 2)", CHAIN_PARITY, abs=2.0, kind="poisson"),
               lambda r: r.metric.startswith("attempts on ") and r.tolerance == "exact")
        for r in rows:
            if r.group == "latency" and r.metric.startswith("connect ms p") and "of those" not in r.metric:
                r.agree, r.tolerance = None, "not compared"
                r.reason = ("a re-sent SYN may meet another TIME_WAIT and another toss of the kernel's "
                            "hashes, so the SYN try a connect needs is a chain of coin tosses: a "
                            "percentile falls on one retransmission time or the next by chance; the "
                            "count of retried connects is compared")
    return rows


def _relax(rows: list[Row], tol: Tolerance, which: Callable[[Row], bool]) -> None:
    """Compare the numeric rows `which` selects with `tol` instead (and say so in the row)."""
    for r in rows:
        if which(r) and isinstance(r.sim, int | float) and isinstance(r.lab, int | float):
            r.agree, r.tolerance, r.reason = tol.ok(r.sim, r.lab), tol.text, tol.reason


def _queue_rows(sim: Metrics, lab: Metrics, rows: list[Row], tol: Tolerance) -> list[Row]:
    _relax(rows, tol, lambda r: any(k in r.metric for k in QUEUE_TIMED))
    out: list[Row] = []
    for r in rows:
        if r.group == "latency" and r.metric.startswith("connect ms p") and "of those" not in r.metric:
            r.agree, r.tolerance = None, "not compared"
            r.reason = ("connect times cluster at the SYN retransmission times; a percentile "
                        "falls on one cluster or the next by timing -- compared by SYN try below")
        out.append(r)
        if r.metric == "connected after a SYN retransmission":
            for k in sorted(set(sim.by_tries) | set(lab.by_tries)):
                out.append(Row("timing", f"connected at SYN try {k}", sim.by_tries.get(k, 0),
                               lab.by_tries.get(k, 0), None, "not compared",
                               "how the retransmitted SYNs split between the 1 s retransmission "
                               "times varies from one lab run to the next; their total is the row "
                               "above"))
    return out


def _compare(sim: Metrics, lab: Metrics, fixed_count: bool,
             racy: frozenset[tuple[str, str]], series_tol: Tolerance | None,
             retried: Tolerance = RETRIED, lag_s: float = 0.0) -> list[Row]:
    """`series_tol`: SERIES_CHANCE or SERIES_QUEUE when the TIME_WAIT series may move by
    3√peak, else None (SERIES)."""
    by_chance = series_tol is not None
    rows: list[Row] = []
    slack = 0 if fixed_count else abs(sim.attempts - lab.attempts)
    count_tol = _count_tol(slack)
    rows.append(_row("attempts", "attempts", sim.attempts, lab.attempts,
                     EXACT if fixed_count else Tolerance(
                         "±2 %", "the workload has no fixed count: each side paces "
                         "rate × duration on its own clock", rel=0.02)))
    for name in sorted(set(sim.outcomes) | set(lab.outcomes), key=lambda k: (k != "ok", k)):
        rows.append(_row("outcomes", f"outcome {name}", sim.outcomes.get(name, 0),
                         lab.outcomes.get(name, 0), count_tol))
    wls = sorted(set(sim.first_failures) | set(lab.first_failures))
    for w in wls:
        fa, fb = sim.first_failures.get(w), lab.first_failures.get(w)
        label = "first failure" + (f" ({w})" if len(wls) > 1 else "")
        if fa is None and fb is None:
            rows.append(Row("timing", label, "none", "none", True, "exact", EXACT.reason))
            continue
        rows.append(_row("timing", f"{label}: attempt #", None if fa is None else fa[0] + 1,
                         None if fb is None else fb[0] + 1, count_tol))
        rows.append(_row("timing", f"{label}: s after first attempt",
                         None if fa is None else fa[1], None if fb is None else fb[1],
                         FIRST_FAILURE_S))
    rows.append(_row("ports", "distinct local ports", sim.ports_distinct, lab.ports_distinct,
                     count_tol))
    rows.append(_row("ports", "attempts on even ports", sim.ports_even, lab.ports_even, count_tol))
    rows.append(_row("ports", "attempts on odd ports", sim.ports_odd, lab.ports_odd, count_tol))
    rows.append(_row("timing", "connected after a SYN retransmission", sim.delayed, lab.delayed,
                     count_tol))
    for k in sorted(set(sim.gave_up_by_tries) | set(lab.gave_up_by_tries)):
        # group "syn": no scenario relaxation applies -- when connect() gives up is
        # tcp_write_timeout()'s decision (count or time budget), whatever the queue timing
        rows.append(_row("syn", f"connect() timed out after {k} SYN(s)", sim.gave_up_by_tries.get(k, 0),
                         lab.gave_up_by_tries.get(k, 0), EXACT))
    if sim.retried_connect_ms is not None or lab.retried_connect_ms is not None:
        rows.append(_row("latency", "connect ms p50 of those", sim.retried_connect_ms,
                         lab.retried_connect_ms, retried))
    for p in PERCENTILES:
        a, b = sim.connect_ms.get(p), lab.connect_ms.get(p)
        tol = LATENCY_TAIL if p == "p99" else LATENCY
        if not finite(a) and not finite(b):
            rows.append(Row("latency", f"connect ms {p}", None, None, None, tol.text, tol.reason))
        else:
            rows.append(_row("latency", f"connect ms {p}", a, b, tol))
    shift = lab.first_t - sim.first_t
    for h in [h for h in sim.hosts if h in lab.hosts]:
        rows.append(_row("time_wait", f"{h}: TIME_WAIT at end", sim.time_wait_end.get(h),
                         lab.time_wait_end.get(h), EXACT))
        s, lb = sim.time_wait_series.get(h, []), lab.time_wait_series.get(h, [])
        opens = lab.open_at_samples.get(h)
        if any(s) or any(lb):
            ok, worst, at = series_agree(s, sim.step_s, lb, lab.step_s, shift, by_chance, lag_s,
                                         sim.time_wait_end.get(h), opens)
            tol = series_tol or SERIES
            if opens is not None:
                tol = close_lag_tolerance(tol, opens)
            elif lag_s > 0:
                tol = Tolerance(tol.text + f", or up to {lag_s * 1000:g} ms earlier", tol.reason
                                + f"; the lab's load started its attempts up to {lag_s * 1000:g} ms "
                                "late (p99 of its measured start lag)")
            rows.append(Row("time_wait", f"{h}: TIME_WAIT each second",
                            f"peak {max(s, default=0)}",
                            f"peak {max(lb, default=0)}" + ("" if ok else f" (off by {worst:g} at {at:g} s)"),
                            ok, tol.text, tol.reason))
    for h in [h for h in sim.hosts if h in lab.hosts]:
        sc, lc = sim.counters.get(h, {}), lab.counters.get(h, {})
        quiet = 0
        for name in sorted(sc):
            if name not in lc:
                continue  # a counter this kernel does not have
            if not sc[name] and not lc[name]:
                quiet += 1
                continue
            tol = count_tol
            if (h, name) in racy:
                tol = RACE_EXTRA_RST if name == "TcpOutRsts" else RACE_FIN_RST
            rows.append(_row("counters", f"{h}: {name}", sc[name], lc[name], tol))
        if quiet:
            rows.append(Row("counters", f"{h}: {quiet} other modelled counters", 0, 0, True,
                            "exact", EXACT.reason))
    return rows


SECRETS = ("the kernel's secrets decide it (port offsets and their random increments, ISNs, NAT and "
           "LB draws; validate/run.py judge_over_draws()): the lab's run is one draw of them, so the "
           "row is judged against the model run under other draws, the arrivals and the measured "
           "clocks and offsets kept; a rule the secrets do not decide disagrees under every draw")


def over_draws(rows: list[Row], draws: list[list[Row]]) -> int:
    """Judge each disagreeing row of `rows` (the model's run with the scenario's seed)
    against the same row under other draws of the kernel's secrets (`draws`, one list of
    rows per draw): it agrees when it agrees under one of them (its own tolerance), or,
    for a number, when the lab's value lies within the range the draws span. Only rows
    whose value changes with the draw can so agree. Rows are changed in place; returns
    how many now agree."""
    n = 0
    for r in rows:
        if r.agree is not False:
            continue
        mates = [m for d in draws for m in d if m.group == r.group and m.metric == r.metric]
        vals = [r.sim] + [m.sim for m in mates]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in [*vals, r.lab])
        if numeric:
            lo, hi = min(vals), max(vals)
            ok = lo <= r.lab <= hi or any(m.agree is True for m in mates)
            span = f"{_num(lo)}–{_num(hi)}"
        else:
            ok = any(m.agree is True for m in mates)
            span = f"{sum(1 for m in mates if m.agree is True)} of them agree"
        if ok and any(m.sim != r.sim for m in mates):
            r.agree, n = True, n + 1
            r.tolerance = f"{r.tolerance}; over {len(vals)} draws of the kernel's secrets: {span}"
            r.reason = f"{r.reason}; {SECRETS}" if r.reason else SECRETS
    return n


def _num(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:,.3f}".rstrip("0").rstrip(".")


def verdict(rows: list[Row]) -> bool:
    return all(r.agree is not False for r in rows)
