"""Port exhaustion: connect() finds no free local port toward a destination.

Read from a run (connect() failed with EADDRNOTAVAIL / WSAEADDRINUSE), a capture (a
client's source ports cycle through a whole block, each held 60 s in its TIME_WAIT), a
live host (a tuple's budget against its rate, Windows' one dynamic pool) and a kernel
trace (connect() returned EADDRNOTAVAIL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...capture import flows
from ...capture.facts import Block
from ...findings import EvidenceItem, Finding, Fix
from .. import fixes as fx
from ..base import Evidence, Mechanism, TupleUse
from ..judge import linux_hosts, pressure, rate, tuple_label, windows_pool
from ..runfacts import cause_stats, os_of, pct, tw_at
from ..tracefacts import reasons, top, window

if TYPE_CHECKING:
    from ...capture.analysis import CaptureAnalysis

PORTS = Mechanism("ports", "Port exhaustion", {
    "client-port-exhaustion": "a run's clients failed connect() for want of a free local port",
    "capture-port-cycle": "a client's source ports come back toward one server within TIME_WAIT's 60 s",
    "capture-port-exhaustion": "a client used every port of a block toward one server, each held in its TIME_WAIT",
    "tuple-port-exhaustion": "a live host's (source, destination) tuple is at, or heading for, its port budget",
    "windows-port-pool-pressure": "a Windows host's one dynamic port pool is more than half used",
    "trace-connect-eaddrnotavail": "traced connect() calls returned EADDRNOTAVAIL",
})


def _budget_series(ev: Evidence) -> list[tuple[str, int, int]]:
    """(series key, budget, peak in use) of the client port series at their peak."""
    run = ev.require_run()
    out = []
    for k, p in run.timeline.ports.items():
        peak = max(p.in_use) if p.in_use else 0
        out.append((k, p.budget, peak))
    return sorted(out, key=lambda x: -x[2] / max(x[1], 1))


@PORTS.rule("run", "client-port-exhaustion")
def from_run(ev: Evidence) -> list[Finding]:
    run = ev.require_run()
    st = cause_stats(run, "local_ports_exhausted")
    if st is None:
        return []
    n = run.attempt_count()
    client, dst, dport, ok_before = st.first_client, st.first_dst, st.first_dport, st.ok_before
    series = _budget_series(ev)
    budget = series[0][1] if series else None
    tw_client = tw_at(run, client, st.first_t)
    sc = ev.scenario
    errno = next(iter(st.errnos), "EADDRNOTAVAIL")
    closer_text = ""
    os = "linux"
    tw_len = 60.0
    offered = None
    if sc is not None:
        g = sc.group(run.hosts[client].group)
        os = os_of(g.profile)
        wls = [w for w in sc.workload if w.clients == g.name]
        offered = sum(w.connection_rate for w in wls) / g.count
        closes = {w.close for w in wls}
        if os == "windows":
            tw_len = float(g.effective_settings.get("TcpTimedWaitDelay", 240))
        elif os == "macos":
            tw_len = 2 * int(g.effective_settings.get("net.inet.tcp.msl", 15000)) / 1000
        if "client" in closes:
            closer_text = (f"The client closes first, so it keeps every 4-tuple in TIME_WAIT for "
                           f"{tw_len:.0f} s{' (TCP_TIMEWAIT_LEN, not tunable)' if os == 'linux' else ''}. ")
    scope = ("toward one destination (address, port): connect() needs a unique 4-tuple "
             "(__inet_hash_connect / __inet_check_established) and shares a local port only across "
             "different destinations" if os == "linux" else
             "for the whole host: the ephemeral pool is shared by all destinations")
    sustain = f"{budget / tw_len:,.1f}" if budget else "?"
    cause = (
        f"{closer_text}{client} has {budget:,} usable ports {scope}, so it can open at most "
        f"{budget:,} / {tw_len:.0f} s = {sustain} new connections/s"
        + (f" but the workload asks for {offered:,.0f}/s" if offered else "")
        + f". After {ok_before:,} connections (t = {st.first_t:.1f} s, {tw_client or 0:,} TIME_WAIT on the "
        f"client) connect() failed with {errno}: {st.failed:,} attempts ({pct(st.failed / n)})."
        if budget else f"connect() failed with {errno} on {client}: no free local port."
    )
    evidence = [
        EvidenceItem("failed connects", st.failed, f"{errno}, {pct(st.failed / n)} of attempts"),
        EvidenceItem("first failure", f"attempt #{st.first_index + 1:,} at t = {st.first_t:.1f} s ({client} -> {dst}:{dport})"),
        EvidenceItem("successful connections before it", ok_before),
        EvidenceItem("port budget", budget, series[0][0] if series else ""),
        EvidenceItem("client TIME_WAIT at first failure", tw_client),
    ]
    fixes: list[Fix] = []
    if sc is not None:
        g = sc.group(run.hosts[client].group)
        wl = [w for w in sc.workload if w.clients == g.name]
        wkey = (lambda f: f"workload.{f}") if len(sc.workload) == 1 else (lambda f: f"workload.{wl[0].name}.{f}")
        if os == "linux":
            fixes += [fx.tw_reuse(g.name), fx.widen_port_range(g.name, scoped=False), fx.more_addresses(g.name, wkey("bind"))]
        elif os == "windows":
            fixes += [fx.widen_dynamic_ports(g.name, scoped=False), fx.timed_wait_delay(g.name)]
        ka = fx.keepalive(sc, wl[0].name if len(sc.workload) > 1 else None)
        if ka is not None:
            fixes.append(ka)
        fixes += [fx.server_closes(wkey("close")), fx.linger0(wkey("close"))]
    return [Finding(id="client-port-exhaustion",
                    title=f"The client runs out of local ports ({errno})",
                    severity="critical", cause=cause, evidence=evidence, confidence=0.97, fixes=fixes,
                    hosts=[client])]


TIME_WAIT_S = 60.0


def capture_fixes() -> list[Fix]:
    return [fx.any_os_port_range(), fx.keepalive_advice(), fx.more_addresses(), fx.tw_reuse()]


@PORTS.rule("capture", ("capture-port-cycle", "capture-port-exhaustion"))
def from_capture(ev: Evidence) -> list[Finding]:
    an = ev.require_capture()
    out: list[Finding] = []
    for s in an.sources:
        for pp in s.ports:
            if pp.attempts < 8:
                continue
            dest = pp.destination
            n_rows, n_client_tw, n_server_tw, hurt, last_syn = _to_dest(an, s.addr, dest)
            client_tw = n_client_tw / n_rows if n_rows else 0.0
            server_tw = n_server_tw / n_rows if n_rows else 0.0
            block = pp.port_max - pp.port_min + 1
            step = 2 if pp.even_share in (0.0, 1.0) and block > 2 else 1
            density = pp.distinct_ports / max(block // step if step == 2 else block, 1)
            budget_rate = pp.distinct_ports / TIME_WAIT_S
            ev_items = [
                EvidenceItem("attempts", pp.attempts),
                EvidenceItem("distinct source ports", pp.distinct_ports,
                             f"{pp.port_min}-{pp.port_max}, {pct(pp.even_share)} even"),
                EvidenceItem("allocation", pp.pattern + (f" (+{pp.median_step})" if pp.median_step else "")),
                EvidenceItem("port cycle (median / shortest)",
                             f"{pp.cycle_median_s} s / {pp.cycle_min_s} s" if pp.cycle_median_s is not None
                             else "no port used twice"),
                EvidenceItem("new connections per second", s.rate_per_s, f"peak {s.peak_per_s:,.1f}/s"),
                EvidenceItem("closed first by the client / the server", f"{pct(client_tw)} / {pct(server_tw)}"),
            ]
            if pp.cycle_median_s is not None and pp.cycle_median_s < TIME_WAIT_S:
                holder = ("the server closed first, so these SYNs meet its TIME_WAIT"
                          if server_tw >= 0.5 else
                          "the client reuses its own TIME_WAIT (tcp_tw_reuse) or is not Linux")
                out.append(Finding(
                    id="capture-port-cycle",
                    title=f"{s.addr} reuses source ports toward {dest} within {_s(pp.cycle_median_s)} "
                          f"(TIME_WAIT lasts 60 s)",
                    severity="warning" if hurt else "info",
                    cause=(f"{s.addr} opened {pp.attempts:,} connections to {dest} from "
                           f"{pp.distinct_ports:,} source ports, so each port came back after "
                           f"{_s(pp.cycle_median_s)} (median; shortest {_s(pp.cycle_min_s)}) — sooner than "
                           f"the 60 s TIME_WAIT: {holder}. At {s.rate_per_s:,.0f} connections/s a port "
                           f"range of N ports cycles in N/{s.rate_per_s:,.0f} s; it must stay above 60 s."
                           + (f" {hurt:,} of these SYNs got an ACK for the old connection." if hurt else
                              " The server accepted every one (newer timestamps or sequence numbers).")),
                    evidence=ev_items, confidence=0.9, fixes=capture_fixes(), hosts=[s.addr]))
            elif client_tw >= 0.9 and density >= 0.9 and pp.distinct_ports >= 8:
                quiet = an.t_last - last_syn
                stopped = (f" After the last new connection the capture went on for {quiet:.1f} s without "
                           "another one from it." if quiet >= 1.0 else "")
                out.append(Finding(
                    id="capture-port-exhaustion",
                    title=f"{s.addr} used every port of a {pp.distinct_ports:,}-port block toward {dest}; "
                          "each stays in its TIME_WAIT for 60 s",
                    severity="critical" if quiet >= 1.0 or pp.cycle_median_s is not None else "warning",
                    cause=(f"{s.addr} used {pp.distinct_ports:,} source ports, {pct(density)} of the block "
                           f"{pp.port_min}-{pp.port_max}, and closed first, so it holds each 4-tuple in "
                           f"TIME_WAIT for 60 s. That is its whole port budget toward {dest}: at most "
                           f"{budget_rate:,.1f} new connections/s, and connect() beyond that fails with "
                           "EADDRNOTAVAIL before any packet is sent (so the failures are invisible in a "
                           "capture; the ports are the evidence)." + stopped),
                    evidence=ev_items, confidence=0.75 if quiet >= 1.0 else 0.55,
                    fixes=capture_fixes(), hosts=[s.addr]))
    return out


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def _to_dest(an: CaptureAnalysis, client: str, dest: str) -> tuple[int, int, int, int, float]:
    """Of the attempts from `client` to `dest` ("addr:port"): how many, how many left
    TIME_WAIT at the client and at the server, how many were answered by an ACK for the
    old connection, and the last SYN's time (NaN without one); a block of rows at a time."""
    addr, _, port = dest.rpartition(":")
    ck, sk = an.key_of(client), an.key_of(addr)
    if ck is None or sk is None:
        return 0, 0, 0, 0, float("nan")
    n = c_tw = s_tw = old = 0
    last = float("nan")
    for sl in flows.row_blocks(len(an.attempts)):
        b = Block(an, sl)
        m = b["is_attempt"] & (b["orig"] == ck) & (b["resp"] == sk) & (b["resp_port"] == int(port))
        n += int(m.sum())
        holder = b["tw_holder"][m]
        c_tw += int((holder == flows.W_ORIG).sum())
        s_tw += int((holder == flows.W_RESP).sum())
        old += int((b["answer"][m] == flows.A_OLD_ACK).sum())
        t = b["t_syn"][m]
        t = t[~np.isnan(t)]
        if t.size:
            last = float(t.max()) if last != last else max(last, float(t.max()))
    return n, c_tw, s_tw, old, last


TOP_TUPLES = 3


WARN_LOAD = 0.75


AT_LIMIT = 0.9


SATURATED_FREE = 0.05  # at most this share of the budget free: at the limit


def _hold(t: TupleUse, default: float) -> float:
    return t.hold_s if t.hold_s is not None else default


def _tw_detail(t: TupleUse) -> str:
    if not t.time_wait:
        return "none: the peer closes first, so ports come back when sockets close"
    if t.tw_reuse_applies:
        return f"this host closed first; connect() may reuse each after {_hold(t, 1):g} s (tcp_tw_reuse)"
    return f"this host closed first; each holds its port {t.tw_len_s if t.tw_len_s is not None else 60:g} s"


def _secs(x: float) -> str:
    return f"{x:.{1 if x < 10 else 0}f}"


@PORTS.rule("hosts", "tuple-port-exhaustion")
def from_hosts(ev: Evidence) -> list[Finding]:
    """Severity from the rate against the sustainable rate (or, with one sample, from the
    ports connect() cannot take now), never from occupancy alone: with tw_reuse a range
    full of TIME_WAIT is normal."""
    out = []
    for h in linux_hosts(ev):
        active = rate(h, "TcpActiveOpens")
        for t in h.tuples[:TOP_TUPLES]:  # facts from elsewhere may lack the judged fields
            ste = t.seconds_to_exhaustion
            sust = t.sustainable_rate_per_s
            blocked = t.blocked if t.blocked is not None else t.in_use
            load = t.load if t.load is not None else pressure(t)
            r = t.rate_per_s
            exhausted = ste == 0
            # At its limit: (nearly) no port free now while connections keep coming. The rate
            # measured then is the ceiling the budget allows, and attempts above it fail.
            attempts = t.attempts_per_s
            failing = float(t.failed_no_port_per_s or 0.0)
            at_limit = not exhausted and ((t.budget - blocked <= max(2, SATURATED_FREE * t.budget)
                                           and (r is None or r > 0)) or failing > 0)
            soon = ste is not None and ste <= 60
            if not (exhausted or at_limit or soon or load >= WARN_LOAD):
                continue
            critical = exhausted or at_limit or soon or (r is None and load >= AT_LIMIT)
            items = [
                EvidenceItem("tuple", tuple_label(t)),
                EvidenceItem("ports in use", t.in_use, f"{pressure(t):.0%} of the {t.budget:,} connect() may use"),
                EvidenceItem("ports connect() cannot take now", blocked,
                             "established, other states and TIME_WAIT not yet reusable" if t.tw_reuse_applies
                             else "every port in use"),
                EvidenceItem("established", t.established),
                EvidenceItem("TIME_WAIT", t.time_wait, _tw_detail(t)),
                EvidenceItem("other states", t.other),
            ]
            if r is not None:
                items.append(EvidenceItem("new connections per s (this tuple)", round(r, 1),
                                          "connect() calls that got a port; failed ones (EADDRNOTAVAIL) are "
                                          "counted by no kernel counter" + ("" if attempts is not None else
                                                                            " (--trace-connects counts them)")))
            if active is not None:
                items.append(EvidenceItem("TcpActiveOpens per s (host)", round(active, 1)))
            if sust is not None:
                items.append(EvidenceItem("sustainable new connections per s", round(sust, 1),
                                          f"free ports / {_hold(t, 60):g} s hold"))
            if attempts is not None:
                items.append(EvidenceItem("connect() attempts per s (traced)", round(attempts, 1),
                                          "CLOSE -> SYN_SENT, sock:inet_sock_set_state"))
                items.append(EvidenceItem("connect() failed without a port per s (traced)", round(failing, 1),
                                          "EADDRNOTAVAIL: SYN_SENT -> CLOSE before a port was chosen"))
            if attempts is not None and sust:
                items.append(EvidenceItem("attempts / sustainable rate", f"{attempts / sust:.0%}"))
            elif r is not None and sust:
                items.append(EvidenceItem("rate / sustainable rate", f"{r / sust:.0%}"))
            items.append(EvidenceItem("seconds to exhaustion",
                                      "now" if exhausted else (round(ste, 1) if ste is not None else "not at this rate")))
            if t.next_free_in_s is not None:
                items.append(EvidenceItem("oldest TIME_WAIT frees in s", round(t.next_free_in_s, 1),
                                          f"{t.tw_free_within_10s or 0:,} free within 10 s"))
            items.append(EvidenceItem("tcp_tw_reuse applies", t.tw_reuse_applies))
            if exhausted:
                when = "no port is free now"
                title = f"{tuple_label(t)}: {t.in_use:,} of {t.budget:,} local ports in use (exhausted)"
            elif at_limit and attempts is not None and sust:
                when = (f"connect() is called {attempts:,.0f} times/s against the {sust:,.0f}/s this budget "
                        f"sustains; {failing:,.0f}/s fail now")
                title = (f"{tuple_label(t)}: at its limit, {attempts:,.0f} connect()/s attempted against a "
                         f"sustainable {sust:,.0f}/s; {failing:,.0f}/s fail with EADDRNOTAVAIL")
            elif at_limit and r is not None and sust:
                when = (f"new connections succeed at {r:,.0f}/s against the {sust:,.0f}/s this budget sustains: "
                        "it is at its limit, so the measured rate is a ceiling, not the demand; every "
                        "connect() above it fails")
                title = (f"{tuple_label(t)}: at its limit, {r:,.0f} new connections/s against a sustainable "
                         f"{sust:,.0f}/s; connect() beyond that fails")
            elif at_limit:
                when = (f"{blocked:,} of {t.budget:,} ports cannot be taken now; one sample cannot see the "
                        "rate (use --interval)")
                title = f"{tuple_label(t)}: {blocked:,} of {t.budget:,} local ports unavailable to connect()"
            elif soon and r:
                when = f"at {r:,.0f} new connections/s the last free port goes in {_secs(ste or 0)} s"
                title = (f"{tuple_label(t)}: {t.in_use:,} of {t.budget:,} local ports in use, exhausted in "
                         f"{_secs(ste or 0)} s at {r:,.0f}/s")
            else:
                when = ("a burst above the sustainable rate exhausts it" if r is None or not sust else
                        f"{r:,.0f} new connections/s leave {max(0.0, 1 - r / sust):.0%} headroom")
                title = f"{tuple_label(t)}: {blocked:,} of {t.budget:,} local ports unavailable to connect()"
            if t.tw_reuse_applies:
                tw_text = (f"{t.time_wait:,} wait in TIME_WAIT, reusable by connect() after "
                           f"{_hold(t, 1):g} s (tcp_tw_reuse)")
            elif t.time_wait:
                tw_text = f"{t.time_wait:,} wait in TIME_WAIT after this host closed first"
            else:
                tw_text = "none wait in TIME_WAIT (the peer closes first)"
            out.append(Finding(
                id="tuple-port-exhaustion", title=title,
                severity="critical" if critical else "warning",
                cause=(f"connect() from {t.src} to {t.dst}:{t.dport} may choose among {t.budget:,} local "
                       "ports (ip_local_port_range minus reserved and listening ports); the 4-tuple must "
                       f"be unique. {t.established:,} are established and {tw_text}; {when}. Then connect() "
                       "fails with EADDRNOTAVAIL (\"Cannot assign requested address\"), and before that it "
                       "slows down scanning for a free port."),
                evidence=items, confidence=0.9 if r is not None or exhausted else 0.75,
                fixes=fx.tuple_fixes(h, t), hosts=[h.name]))
    return out


@PORTS.rule("hosts", "windows-port-pool-pressure", name="windows")
def from_windows_hosts(ev: Evidence) -> list[Finding]:
    out = []
    for h in ev.hosts.values():
        if h.os != "windows" or (not h.tuples and not h.time_wait):
            continue
        start, n = windows_pool(h)
        delay = h.settings.get("TcpTimedWaitDelay")
        delay_s = int(delay) if isinstance(delay, int) else 240
        in_pool = sum(t.in_use for t in h.tuples)  # Windows hands each port to one connection
        tw = sum(t.time_wait for t in h.tuples)
        pr = in_pool / n if n else 1.0
        if pr < 0.5:
            continue
        items = [EvidenceItem("dynamic port range", f"{start}-{start + n - 1} ({n:,} ports)"),
                 EvidenceItem("ports in use by outgoing connections", in_pool, f"{pr:.0%} of the pool"),
                 EvidenceItem("of which TIME_WAIT", tw),
                 EvidenceItem("TcpTimedWaitDelay (s)", delay_s,
                              "read from the registry" if isinstance(delay, int) else
                              "not given: 240 per Microsoft's current doc (120 per older ones)"),
                 EvidenceItem("sustainable new connections per s", round(n / delay_s, 1),
                              f"{n:,} ports / {delay_s} s")]
        out.append(Finding(
            id="windows-port-pool-pressure",
            title=f"Windows dynamic port pool {pr:.0%} used ({in_pool:,} of {n:,})",
            severity="critical" if pr >= 0.9 else "warning",
            cause=("Windows gives each outgoing connection its own port from one pool of dynamic ports "
                   "and keeps it through TIME_WAIT (TcpTimedWaitDelay) when it closes first. When the pool "
                   "is used up, connect() fails with WSAEADDRINUSE (10048) or WSAENOBUFS (10055) and the "
                   "System log shows Tcpip events 4227/4231."),
            evidence=items, confidence=0.8,
            fixes=[fx.widen_dynamic_ports(), fx.timed_wait_delay(), fx.reuse_connections()],
            hosts=[h.name]))
    return out


@PORTS.rule("trace", "trace-connect-eaddrnotavail")
def from_trace(ev: Evidence) -> list[Finding]:
    doc = ev.trace or {}
    n = reasons(doc, "connect-error").get("EADDRNOTAVAIL", 0)
    if not n:
        return []
    return [Finding(
        id="trace-connect-eaddrnotavail",
        title="connect() fails with EADDRNOTAVAIL: no free local port (kernel trace)",
        severity="critical",
        cause=(f"{n:,} connect() calls returned EADDRNOTAVAIL {window(doc)}: __inet_hash_connect() found "
               "no local port in ip_local_port_range whose 4-tuple toward that destination was free "
               "(TIME_WAIT holds them for 60 s unless tcp_tw_reuse may take them over)."),
        evidence=[EvidenceItem("failed connect() calls", n),
                  EvidenceItem("processes", top(doc, "processes", "process", "connect-error")),
                  EvidenceItem("destinations", top(doc, "locals", "endpoint", "connect-error"))],
        confidence=0.95, fixes=capture_fixes())]
