"""Observed -> HostFacts: the aggregation no other tool gives (pure, no I/O).

The numbers that answer "what is wrong here, now?":

* ports in use per (source IP, destination IP, destination port) against the budget
  connect() has for that tuple: the ``ip_local_port_range`` minus reserved ports and ports
  owned by listeners (``__inet_hash_connect`` never autoselects a port whose bind bucket
  was made by bind()/listen(), docs/kernel.md §5.1), split by parity (4.2+ walks ports of ``low``'s
  parity first, docs/kernel.md §5.1);
* TIME_WAIT entries per tuple and when they free up (``idiag_expires``);
* the new-connection rate per tuple (socket cookies new in the second sample / interval)
  and the time until the tuple runs out at that rate;
* listen queues, conntrack use, counter rates.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import numpy as np

from ..errors import ProfileError
from ..model.profiles import MAX_LINUX, MIN_LINUX, Profile, get_profile, vstr
from ..model.settings import parse_port_list
from ..model.stacks import port_range
from ..model.timewait import TCP_TIMEWAIT_LEN, tw_reuse_enabled, tw_reuse_hold_s
from .counters import COUNTERS, exists_on
from .observed import Observed
from .records import HostFacts, ListenerUse, TupleUse
from .sockets import (
    TCP_ESTABLISHED,
    TCP_FIN_WAIT2,
    TCP_LISTEN,
    TCP_NEW_SYN_RECV,
    TCP_SYN_RECV,
    TCP_SYN_SENT,
    TCP_TIME_WAIT,
    TIMER_TIMEWAIT,
    addr_text,
)

MAX_TUPLES = 50  # tuples kept in HostFacts (most pressed first)
HORIZON_STEPS = 600  # time-to-exhaustion search resolution over one TIME_WAIT period


# ---- profile ----------------------------------------------------------------------------

def profile_for(obs: Observed) -> tuple[Profile | None, list[str]]:
    """The OS/kernel profile of the observed host, from --profile or the kernel release."""
    notes: list[str] = []
    if obs.profile:
        return get_profile(obs.profile), notes
    if obs.os == "windows":
        rto = obs.windows.get("netsh.tcp.initialrto")
        return get_profile("windows-2022" if rto == 1000 else "windows-2016"), notes
    rel = obs.kernel_release
    if not rel:
        return None, notes
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", rel)
    if not m:
        notes.append(f"kernel release {rel!r} not understood; kernel-specific checks are skipped")
        return None, notes
    v = (int(m[1]), int(m[2]), int(m[3] or 0))
    el6 = v[:2] == (2, 6) and ".el6" in rel
    if v < MIN_LINUX:
        notes.append(f"kernel {rel} is older than {vstr(MIN_LINUX)}, the oldest tcpreuse models")
        return None, notes
    if v > MAX_LINUX:
        notes.append(f"kernel {rel} is newer than tcpreuse's newest profile; judged as {vstr(MAX_LINUX)[:4]}")
        v = MAX_LINUX
    try:
        return get_profile(f"linux-{vstr(v)}" + ("-el6" if el6 else "")), notes
    except ProfileError as e:
        notes.append(str(e))
        return None, notes


# ---- settings -----------------------------------------------------------------------------

def parse_sysctl(name: str, raw: str) -> Any:
    """Raw sysctl text -> the value model.settings uses (int, (low, high), frozenset, str)."""
    text = raw.strip()
    if name == "net.ipv4.ip_local_reserved_ports":
        return parse_port_list(text)
    parts = text.split()
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        return text
    if name == "net.ipv4.ip_local_port_range" and len(nums) == 2:
        return (nums[0], nums[1])
    if len(nums) == 1:
        return nums[0]
    return tuple(nums) if nums else text


def _settings(obs: Observed, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in obs.sysctls.items():
        try:
            out[name] = parse_sysctl(name, raw)
        except ValueError as e:
            notes.append(f"sysctl {name} = {raw.strip()!r} not understood ({e}); ignored")
    out.update(obs.windows)
    return out


# ---- counters -----------------------------------------------------------------------------

def _counters(obs: Observed, profile: Profile | None, facts: HostFacts) -> None:
    if not obs.counters:
        facts.extra["counters_read"] = False  # unknown, not absent: nothing is claimed
        return
    facts.extra["counters_read"] = True
    last = obs.counters[-1]
    absolute = dict(last.values)
    absent: set[str] = set()
    for name, c in COUNTERS.items():
        if name in absolute or c.gauge:  # nstat leaves gauges out: unknown, not absent
            continue
        if _section(name) in last.unread:
            continue
        if last.complete:
            absent.add(name)
        else:  # netstat -s omits zeros: a counter this kernel has reads 0
            if exists_on(name, profile):
                absolute[name] = 0
            else:
                absent.add(name)
    for name in [n for n in absent if _section(n) in last.unread]:
        absent.discard(name)  # its file could not be read: unknown, not absent
    facts.counters_absolute = absolute
    facts.counters_absent = absent
    if len(obs.counters) >= 2:
        first = obs.counters[0]
        window = last.t - first.t
        if window > 0:
            facts.window_s = window
            deltas = {}
            for name, v in last.values.items():
                known = COUNTERS.get(name)
                if known is not None and known.gauge:
                    continue
                if name in first.values:
                    deltas[name] = v - first.values[name]
            facts.counters = deltas


def _section(counter: str) -> str:
    """The /proc/net/{snmp,netstat} line a counter comes from: TcpExtTW -> TcpExt."""
    for sec in ("TcpExt", "IpExt", "MPTcpExt", "Tcp", "Udp", "Ip", "Icmp"):
        if counter.startswith(sec):
            return sec
    return ""


def rate(facts: HostFacts, name: str) -> float | None:
    """Per-second rate of a counter over the sampling window; None if not measured/absent."""
    if name in facts.counters_absent or facts.window_s is None or name not in facts.counters:
        return None
    return facts.counters[name] / facts.window_s


# ---- sockets ------------------------------------------------------------------------------

def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _range_profile(profile: Profile | None, windows: bool) -> Profile:
    """The profile whose port-range rules apply: the host's own, else its OS's current
    release (the defaults are the same in every release of one OS since Vista / 4.6)."""
    if profile is not None and profile.os == ("windows" if windows else "linux"):
        return profile
    return get_profile("windows-2022" if windows else "linux-6.18")


def port_budget(settings: dict[str, Any], profile: Profile | None, listen_ports: set[int],
                windows: bool = False) -> dict[str, Any]:
    """Ports connect() may autoselect for one (src, dst, dport), and their parity split."""
    lo, hi = port_range(_range_profile(profile, windows), settings)
    reserved = settings.get("net.ipv4.ip_local_reserved_ports") or frozenset()
    ports = np.arange(lo, hi + 1)
    is_reserved = np.isin(ports, np.fromiter(reserved, dtype=np.int64)) if reserved else np.zeros(len(ports), bool)
    lis = sorted(p for p in listen_ports if lo <= p <= hi)
    is_listen = np.isin(ports, np.asarray(lis, dtype=np.int64)) if lis else np.zeros(len(ports), bool)
    usable = ~is_reserved & ~is_listen
    fast = usable & (ports % 2 == lo % 2)
    alg = profile.port_alg if profile is not None and profile.is_linux else ("windows" if windows else None)
    return {
        "range": [lo, hi],
        "size": int(hi - lo + 1),
        "reserved_in_range": int(is_reserved.sum()),
        "listener_ports_in_range": lis[:20],
        "listener_ports_in_range_count": len(lis),
        "listener_ports_unreserved": [p for p in lis if p not in reserved][:20],
        "usable": int(usable.sum()),
        "fast_parity": int(fast.sum()),
        "other_parity": int((usable & ~fast).sum()),
        "port_alg": alg,
    }


_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                 0xFF51AFD7ED558CCD], dtype=np.uint64)


def group_tuples(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group sockets by (src, dst, dport): (one row per group, group of each socket, sizes).

    np.unique on 34-byte structured keys sorts with a generic comparison (about 1 s per
    million rows); a 64-bit mix of the key sorts natively. Every socket is then checked
    against its group's first member, and on a (vanishingly unlikely) collision the exact
    structured path is used instead.
    """
    src = np.ascontiguousarray(rows["src"]).view(np.uint64).reshape(-1, 2)
    dst = np.ascontiguousarray(rows["dst"]).view(np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        h = (src[:, 0] * _MIX[0]) ^ (src[:, 1] * _MIX[1]) ^ (dst[:, 0] * _MIX[2]) ^ (dst[:, 1] * _MIX[3])
        h ^= rows["dport"].astype(np.uint64) * _MIX[4]
        h ^= h >> np.uint64(29)
    _, first, inv, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    rep = first[inv]
    if (np.array_equal(src, src[rep]) and np.array_equal(dst, dst[rep])
            and np.array_equal(rows["dport"], rows["dport"][rep])):
        return rows[first], inv, counts
    key = np.empty(len(rows), dtype=[("src", "V16"), ("dst", "V16"), ("dport", "u2")])
    key["src"], key["dst"], key["dport"] = rows["src"], rows["dst"], rows["dport"]
    _, first, inv, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    return rows[first], inv.ravel(), counts


def time_to_exhaustion(base: int, tw_expires_s: np.ndarray, rate_per_s: float, budget: int,
                       hold_s: float) -> float | None:
    """First t at which ports in use reach the budget, or None if they never do.

    in_use(t) = base (established and other states, assumed to stay)
              + TIME_WAIT entries still alive at t (known exactly from idiag_expires)
              + rate x min(t, hold) new connections, each holding its port for `hold`
    After one `hold` period the use is steady, so searching [0, hold] is enough.
    """
    tw = np.sort(tw_expires_s)
    if base + len(tw) >= budget:
        return 0.0
    if rate_per_s <= 0:
        return None
    t = np.linspace(0.0, hold_s, HORIZON_STEPS + 1)
    alive = len(tw) - np.searchsorted(tw, t, side="right")
    use = base + alive + rate_per_s * t
    hit = np.nonzero(use >= budget)[0]
    return float(t[hit[0]]) if hit.size else None


def tw_reuse_applies(settings: dict[str, Any], profile: Profile | None, src: str, dst: str) -> bool:
    """Whether connect() from `src` to `dst` may take over this host's TIME_WAIT 4-tuples.

    The sysctl rule is the model's (tcp_twsk_unique(): 2 = loopback only on 4.18+), and the
    old connection must have carried timestamps, which needs `tcp_timestamps` on here (the
    peer's side is checked per tuple from tcp_info when known).
    """
    if not settings.get("net.ipv4.tcp_timestamps", 1):
        return False
    reuse = settings.get("net.ipv4.tcp_tw_reuse", profile.default_tw_reuse if profile else 0)
    if not isinstance(reuse, int):
        return False
    loopback_mode = profile.at_least(4, 18) if profile is not None else True
    return tw_reuse_enabled(reuse, _is_loopback(dst) or _is_loopback(src), loopback_mode=loopback_mode)


def reuse_hold_s(settings: dict[str, Any], profile: Profile | None) -> float:
    """Seconds a TIME_WAIT entry keeps its port from connect() when tcp_tw_reuse applies."""
    rule = profile.tw_reuse_rule if profile is not None and profile.is_linux else "delay_ms"
    delay = settings.get("net.ipv4.tcp_tw_reuse_delay", 1000)
    return tw_reuse_hold_s(rule, int(delay) if isinstance(delay, int) else 1000)


def _endpoint_counts(addr: np.ndarray, port: np.ndarray) -> np.ndarray:
    """For each row, how many rows share its (address, port) endpoint (a 64-bit mix of the
    key: a collision only merges two counts of a heuristic)."""
    a = np.ascontiguousarray(addr).view(np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        h = (a[:, 0] * _MIX[0]) ^ (a[:, 1] * _MIX[1]) ^ (port.astype(np.uint64) * _MIX[4])
        h ^= h >> np.uint64(29)
    _, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
    return np.asarray(counts[inv.ravel()])


def classify_direction(tab: np.ndarray, listen_ports: set[int], port_range: tuple[int, int]
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Which connections this host accepted (incoming) and which it opened (outgoing).

    Evidence, strongest first:
    1. the local port is a listener's now: accepted (connect() never autoselects it);
    2. SYN_RECV / request sockets are accepted, SYN_SENT opened;
    3. exactly one side's port is in the ephemeral range (`ip_local_port_range`): that side
       opened the connection (a stopped server's TIME_WAIT keeps its listening port);
    4. fan-in: a local (address, port) shared by more connections than their remote one was
       a listening port (many peers came to it); the reverse is a client's destination.
    What none of these decides is counted as outgoing, as before.
    Returns (incoming, outgoing, counts per deciding evidence).
    """
    st = tab["state"]
    conn = (st != TCP_LISTEN) & (tab["dport"] != 0)
    lp = np.fromiter(listen_ports, dtype=np.int64) if listen_ports else np.zeros(0, np.int64)
    by_listener = conn & np.isin(tab["sport"], lp)
    by_handshake_in = conn & ~by_listener & ((st == TCP_SYN_RECV) | (st == TCP_NEW_SYN_RECV))
    by_handshake_out = conn & ~by_listener & (st == TCP_SYN_SENT)
    open_ = conn & ~by_listener & ~by_handshake_in & ~by_handshake_out
    lo, hi = port_range
    s_in = (tab["sport"] >= lo) & (tab["sport"] <= hi)
    d_in = (tab["dport"] >= lo) & (tab["dport"] <= hi)
    range_in = open_ & ~s_in & d_in
    range_out = open_ & s_in & ~d_in
    rest = open_ & ~range_in & ~range_out
    fan_in = np.zeros(len(tab), dtype=bool)
    fan_out = np.zeros(len(tab), dtype=bool)
    if rest.any():
        idx = np.nonzero(conn)[0]
        local_n = _endpoint_counts(tab["src"][idx], tab["sport"][idx])
        remote_n = _endpoint_counts(tab["dst"][idx], tab["dport"][idx])
        fi = np.zeros(len(tab), dtype=bool)
        fo = np.zeros(len(tab), dtype=bool)
        fi[idx] = (local_n >= 2) & (local_n > remote_n)
        fo[idx] = remote_n > local_n
        fan_in, fan_out = rest & fi, rest & fo
    incoming = by_listener | by_handshake_in | range_in | fan_in
    outgoing = conn & ~incoming
    why = {"local port is a listener's": int(by_listener.sum()),
           "handshake state": int((by_handshake_in | by_handshake_out).sum()),
           "ephemeral port on one side": int((range_in | range_out).sum()),
           "many peers on one local port": int(fan_in.sum()),
           "many connections to one destination": int(fan_out.sum()),
           "undecided, counted as outgoing": int((rest & ~fan_in & ~fan_out).sum())}
    return incoming, outgoing, {k: v for k, v in why.items() if v}


def _sockets(obs: Observed, profile: Profile | None, facts: HostFacts) -> None:
    if not obs.sockets:
        return
    last = obs.sockets[-1]
    tab = last.table.rows
    st = tab["state"]
    windows = obs.os == "windows"
    facts.time_wait = int(np.count_nonzero(st == TCP_TIME_WAIT))
    facts.established = int(np.count_nonzero(st == TCP_ESTABLISHED))
    fw2_mini = (st == TCP_FIN_WAIT2) & (tab["timer"] == TIMER_TIMEWAIT)
    facts.extra["tw_minisockets"] = facts.time_wait + int(np.count_nonzero(fw2_mini))
    facts.extra["sockets"] = len(tab)
    per_state = np.bincount(st, minlength=13)
    facts.extra["states"] = {int(k): int(per_state[k]) for k in np.nonzero(per_state)[0]}

    # Listeners
    lis = tab[st == TCP_LISTEN]
    listen_ports = {int(p) for p in lis["sport"].tolist()}
    facts.listeners = sorted(
        (ListenerUse(addr=addr_text(r["src"].tobytes(), int(r["family"])), port=int(r["sport"]), queue=int(r["rqueue"]),
                     backlog=int(r["wqueue"])) for r in lis),
        key=lambda x: (-(x.queue / max(x.backlog, 1)), x.port),
    )
    budget = port_budget(facts.settings, profile, listen_ports, windows=windows)
    facts.extra["port_budget"] = budget

    incoming, outgoing, why = classify_direction(tab, listen_ports, (budget["range"][0], budget["range"][1]))
    facts.extra["incoming"] = int(incoming.sum())
    facts.extra["outgoing"] = int(outgoing.sum())
    facts.extra["direction_evidence"] = why
    former = np.bincount(tab["sport"][incoming & ~np.isin(tab["sport"], list(listen_ports))].astype(np.int64),
                         minlength=1)
    top_former = np.argsort(-former)[:5]
    facts.extra["former_listen_ports"] = {int(p): int(former[p]) for p in top_former if former[p]}
    # Server-side TIME_WAIT per (former) listening port: what a client reusing 4-tuples runs into.
    tw_in = np.bincount(tab["sport"][incoming & (st == TCP_TIME_WAIT)].astype(np.int64), minlength=1)
    busy = np.argsort(-tw_in)[:10]
    facts.extra["incoming_time_wait_by_port"] = {int(p): int(tw_in[p]) for p in busy if tw_in[p]}

    # Handshakes this host is waiting on: SYN_SENT sockets per destination, with retransmissions.
    syn_sent = tab[outgoing & (st == TCP_SYN_SENT)]
    if len(syn_sent):
        dk = np.empty(len(syn_sent), dtype=[("dst", "V16"), ("dport", "u2"), ("family", "u1")])
        dk["dst"], dk["dport"], dk["family"] = syn_sent["dst"], syn_sent["dport"], syn_sent["family"]
        keys_, inv_ = np.unique(dk, return_inverse=True)
        inv_ = inv_.ravel()
        n_ = np.bincount(inv_, minlength=len(keys_))
        retr = np.bincount(inv_, weights=syn_sent["retrans"] > 0, minlength=len(keys_)).astype(int)
        order_ = np.argsort(-n_, kind="stable")[:10]
        facts.extra["syn_sent_by_destination"] = [
            {"dst": addr_text(keys_["dst"][i].tobytes(), int(keys_["family"][i])), "dport": int(keys_["dport"][i]),
             "syn_sent": int(n_[i]), "retransmitted": int(retr[i])} for i in order_.tolist()]

    out = tab[outgoing]
    if not len(out):
        return
    keys, inv, counts = group_tuples(out)
    ost = out["state"]
    est = np.bincount(inv, weights=(ost == TCP_ESTABLISHED), minlength=len(keys)).astype(int)
    tw = np.bincount(inv, weights=(ost == TCP_TIME_WAIT), minlength=len(keys)).astype(int)
    syn = np.bincount(inv, weights=(ost == TCP_SYN_SENT), minlength=len(keys)).astype(int)

    # New connections per tuple between the two samples (cookies survive ESTAB -> TIME_WAIT).
    new = None
    window = None
    if len(obs.sockets) >= 2 and last.table.has_cookies:
        first = obs.sockets[0]
        window = last.t - first.t
        if window > 0:
            seen = np.isin(out["cookie"], first.table.rows["cookie"])
            new = np.bincount(inv, weights=~seen, minlength=len(keys))
    facts.extra["socket_window_s"] = window

    per_tuple_budget = budget["usable"]
    facts.extra["tuples_total"] = len(keys)

    # Several source IPs toward one destination each get a full budget.
    dst_key = np.empty(len(keys), dtype=[("dst", "V16"), ("dport", "u2")])
    dst_key["dst"], dst_key["dport"] = keys["dst"], keys["dport"]
    dkeys, dinv = np.unique(dst_key, return_inverse=True)  # one row per tuple: small
    dinv = dinv.ravel()
    srcs_per_dst = np.bincount(dinv, minlength=len(dkeys))
    use_per_dst = np.bincount(dinv, weights=counts, minlength=len(dkeys)).astype(int)

    has_timers = last.table.has_timers
    by_group = np.argsort(inv, kind="stable")  # members of group g: by_group[starts[g]:starts[g + 1]]
    starts = np.concatenate([[0], np.cumsum(counts)])
    o_exp, o_ts = out["expires"], out["ts"]
    tw_len = float(facts.settings.get("TcpTimedWaitDelay", 240)) if windows else TCP_TIMEWAIT_LEN
    reuse_hold = reuse_hold_s(facts.settings, profile)
    tuples: list[TupleUse] = []
    # The most used tuples are judged and the most pressed kept: with tw_reuse a range full
    # of reusable TIME_WAIT is not pressure, so the order is by load, not by ports in use.
    for gi in np.argsort(-counts, kind="stable")[:4 * MAX_TUPLES].tolist():
        fam = int(keys["family"][gi])
        dst = addr_text(keys["dst"][gi].tobytes(), fam)
        src = addr_text(keys["src"][gi].tobytes(), fam)
        tu = TupleUse(src=src, dst=dst, dport=int(keys["dport"][gi]),
                      established=int(est[gi]), time_wait=int(tw[gi]),
                      other=int(counts[gi] - est[gi] - tw[gi]), budget=per_tuple_budget)
        members = by_group[starts[gi]:starts[gi + 1]]
        m_state = ost[members]
        reuse = (not windows) and tw_reuse_applies(facts.settings, profile, src, dst)
        tu.syn_sent = int(syn[gi])
        tu.sources_to_destination = int(srcs_per_dst[dinv[gi]])
        tu.in_use_to_destination = int(use_per_dst[dinv[gi]])
        m_ts = o_ts[members][m_state == TCP_ESTABLISHED]
        known = m_ts[m_ts >= 0]
        if known.size:
            without = int((known == 0).sum())
            tu.peer_timestamps = {"with": int(known.size - without), "without": without}
            if without > known.size / 2:
                reuse = False  # the old connections carry no timestamps: twsk_unique() refuses
        tu.tw_reuse_applies = reuse
        tu.tw_len_s = tw_len
        # TIME_WAIT entries block their port until they expire, or (tw_reuse) until they
        # are older than the reuse hold; then connect() may take them over.
        hold = min(reuse_hold, tw_len) if reuse else tw_len
        if has_timers:
            tw_left = o_exp[members][m_state == TCP_TIME_WAIT] / 1000.0
            if tu.time_wait:
                tu.next_free_in_s = float(tw_left.min())
                tu.tw_free_within_10s = int((tw_left <= 10.0).sum())
        else:
            tw_left = np.full(tu.time_wait, tw_len)
        blocking = tw_left - (tw_len - hold)
        blocking = blocking[blocking > 0]
        if new is not None and window:
            tu.rate_per_s = float(new[gi] / window)
        base = tu.established + tu.other
        closes_first = tu.time_wait > 0  # else the peer closes first: ports free when sockets go
        tu.hold_s = hold if closes_first else 0.0
        tu.blocked = int(base + len(blocking))  # ports connect() cannot take now
        tu.seconds_to_exhaustion = time_to_exhaustion(
            base, blocking, (tu.rate_per_s or 0.0) if closes_first else 0.0, per_tuple_budget, hold)
        tu.sustainable_rate_per_s = max(0.0, (per_tuple_budget - base) / hold) if closes_first else None
        ct = obs.connect_trace
        if ct is not None and obs.connect_trace_s:
            tu.attempts_per_s = ct.attempts.get((src, dst, tu.dport), 0) / obs.connect_trace_s
            tu.failed_no_port_per_s = ct.no_port.get((src, dst, tu.dport), 0) / obs.connect_trace_s
        tu.load = _load(tu)
        tuples.append(tu)
    facts.tuples = sorted(tuples, key=lambda t: (-(t.load or 0.0), -t.in_use))[:MAX_TUPLES]


def _load(t: TupleUse) -> float:
    """How close a tuple is to running out, 1.0 = at its limit: the new-connection rate over
    the sustainable rate when both are known, else the share of ports connect() cannot take
    now (the two agree in steady state: TIME_WAIT younger than the hold ~ rate x hold)."""
    blocked = t.blocked if t.blocked is not None else t.in_use
    if t.seconds_to_exhaustion == 0:
        return max(1.0, blocked / max(t.budget, 1))
    sust = t.sustainable_rate_per_s
    if t.attempts_per_s is not None and sust:
        return max(t.attempts_per_s / sust, 1.0 if t.failed_no_port_per_s else 0.0)
    if t.rate_per_s is not None and sust:
        return max(t.rate_per_s / sust, blocked / max(t.budget, 1) if not t.time_wait else 0.0)
    return blocked / max(t.budget, 1)


# ---- role -----------------------------------------------------------------------------------

def infer_role(facts: HostFacts, obs: Observed) -> tuple[str | None, str]:
    """client | server | nat, or None when the evidence does not say."""
    if obs.role:
        return obs.role, "given with --role"
    fwd = facts.settings.get("net.ipv4.ip_forward")
    if obs.ipvs_services:
        return "lb", f"{obs.ipvs_services} IPVS virtual service(s)"
    if fwd == 1 and obs.nat_tables:
        return "nat", f"ip_forward=1 and NAT tables present ({', '.join(obs.nat_tables)})"
    inc, outg = int(facts.extra.get("incoming", 0)), int(facts.extra.get("outgoing", 0))
    ndst = int(facts.extra.get("tuples_total", 0))
    if outg >= 50 and outg >= 2 * inc:
        return "client", f"{outg:,} outgoing connections to {ndst:,} (source, destination) tuples vs {inc:,} incoming"
    if inc >= 50 and inc >= 2 * outg:
        former = facts.extra.get("former_listen_ports") or {}
        where = f"on {len(facts.listeners)} listener(s)"
        if former:
            where += ", and on port(s) no longer listening: " + ", ".join(
                f"{p} ({n:,})" for p, n in list(former.items())[:3])
        return "server", f"{inc:,} incoming connections {where} vs {outg:,} outgoing"
    a, p = facts.counters_absolute.get("TcpActiveOpens"), facts.counters_absolute.get("TcpPassiveOpens")
    if a is not None and p is not None and max(a, p) >= 1000:
        if a >= 10 * max(p, 1):
            return "client", f"TcpActiveOpens {a:,} vs TcpPassiveOpens {p:,} since boot"
        if p >= 10 * max(a, 1):
            return "server", f"TcpPassiveOpens {p:,} vs TcpActiveOpens {a:,} since boot"
    return None, "not enough evidence (use --role)"


# ---- entry point ----------------------------------------------------------------------------

def build(obs: Observed) -> HostFacts:
    notes = list(obs.notes)
    profile, pnotes = profile_for(obs)
    notes.extend(pnotes)
    facts = HostFacts(name=obs.name, os=obs.os)
    if profile is not None:
        facts.profile = profile.name
        facts.kernel = profile.version if profile.is_linux else None
    facts.settings = _settings(obs, notes)
    _counters(obs, profile, facts)
    _sockets(obs, profile, facts)
    if "port_budget" not in facts.extra and (obs.os == "windows" or "net.ipv4.ip_local_port_range" in facts.settings):
        facts.extra["port_budget"] = {**port_budget(facts.settings, profile, set(), windows=obs.os == "windows"),
                                      "listeners_known": False}
    count = facts.settings.get("net.netfilter.nf_conntrack_count")
    cmax = facts.settings.get("net.netfilter.nf_conntrack_max", facts.settings.get("net.nf_conntrack_max"))
    if isinstance(count, int):
        facts.conntrack = {"count": count, **({"max": cmax} if isinstance(cmax, int) else {})}
    if obs.connect_trace is not None and obs.connect_trace_s:
        ct, w = obs.connect_trace, obs.connect_trace_s
        failing = sorted(ct.no_port.items(), key=lambda kv: -kv[1])[:5]
        facts.extra["connect_trace"] = {
            "window_s": w, "attempts_per_s": sum(ct.attempts.values()) / w,
            "failed_no_port_per_s": sum(ct.no_port.values()) / w, "lost_events": ct.lost,
            "failing": [{"src": k[0], "dst": k[1], "dport": k[2], "per_s": n / w} for k, n in failing]}
    if obs.snat_pools is not None or obs.conntrack is not None:
        facts.extra["snat"] = _snat(obs, facts)
    facts.role, why = infer_role(facts, obs)
    facts.extra["role_evidence"] = why
    facts.extra["kernel_release"] = obs.kernel_release
    facts.extra["unreadable"] = dict(obs.unreadable)
    facts.extra["inputs"] = list(obs.inputs)
    facts.extra["netns"] = obs.netns
    facts.extra["taken_at"] = obs.taken_at
    facts.extra["nat_tables"] = obs.nat_tables
    if obs.rlimit_nofile:
        facts.extra["rlimit_nofile"] = list(obs.rlimit_nofile)
    if obs.processes is not None:
        facts.extra["processes"] = _processes(obs)
    facts.extra["notes"] = notes
    return facts


def _snat(obs: Observed, facts: HostFacts) -> dict[str, Any]:
    """The SNAT pools and their use per (NAT address, destination) from conntrack."""
    from .nat import MAX_POOLS, snat_use

    pools = obs.snat_pools or []
    out: dict[str, Any] = {"pools": [{"kind": p.kind, "source": p.source, "addresses": p.addresses,
                                      "ports": p.ports, "flags": p.flags, "rule": p.rule}
                                     for p in pools[:MAX_POOLS]],
                           "conntrack_read": obs.conntrack is not None}
    if obs.conntrack is not None:
        use = snat_use(pools, obs.conntrack)
        out["entries"] = len(obs.conntrack)
        out["translated"] = sum(g["in_use"] for g in use)
        out["tuples"] = use[:MAX_TUPLES]
        out["tuples_total"] = len(use)
    tw = facts.settings.get("net.netfilter.nf_conntrack_tcp_timeout_time_wait")
    out["time_wait_s"] = tw if isinstance(tw, int) else 120
    return out


def _processes(obs: Observed) -> list[dict[str, Any]]:
    """Per process: sockets it holds in this table, by state, and its fd limit."""
    if not obs.sockets or obs.processes is None:
        return []
    rows = obs.sockets[-1].table.rows
    by_inode = {int(i): int(s) for i, s in zip(rows["inode"].tolist(), rows["state"].tolist(), strict=True) if i}
    out: list[dict[str, Any]] = []
    for p in obs.processes:
        states = [by_inode[i] for i in p.inodes if i in by_inode]
        if not states:
            continue
        out.append({
            "pid": p.pid, "name": p.name, "sockets": len(states),
            "established": sum(1 for s in states if s == TCP_ESTABLISHED),
            "listening": sum(1 for s in states if s == TCP_LISTEN),
            "fds": p.fds, "nofile_soft": p.nofile_soft, "nofile_hard": p.nofile_hard,
        })
    out.sort(key=lambda d: -d["sockets"])
    return out

