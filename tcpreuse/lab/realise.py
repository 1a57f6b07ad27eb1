"""What of a scenario the running kernel can realise, and what it would only approximate.

The lab runs the *real* kernel, so a scenario is realisable only when every host behaves
like the running kernel: a Linux profile whose rules (port selection, TIME_WAIT reuse
timing, timestamp clock and offsets, ...) are those of the running kernel, settings that
exist here, and NAT/LB behaviour that nftables + conntrack can express. Pure: no I/O; the
running kernel is passed in as a Profile, so this is tested without root.

Three kinds of gaps:
  * refusals: nothing can stand in for them (a setting that does not exist here, such as
    tcp_tw_recycle on >= 4.12). The lab never runs; `simulate` can.
  * differences: something close can run (a Windows client as a Linux namespace with
    timestamps off and 49152-65535) but behaviour remains different. The lab runs only with
    --approximate, and the differences are kept in the RunResult's notes.
  * notes: timing-only gaps that do not change which mechanism fires (RTT without netem).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import UnsupportedError
from ..model.profiles import Profile, get_profile, vstr
from ..model.settings import SETTINGS, resolve_settings
from ..model.stacks import port_range
from ..scenario.schema import HostGroup, Scenario

# Profile properties that are kernel *behaviour* (code), not defaults (sysctls). A profile
# whose behaviour differs from the running kernel's in any of these is not the running
# kernel. Each maps to the words a user reads.
BEHAVIOURS: dict[str, str] = {
    "port_alg": "ephemeral port selection (__inet_hash_connect)",
    "port_secret_epoch_s": "port-offset secret re-salting period",
    "tw_reuse_rule": "tcp_tw_reuse timing rule (tcp_twsk_unique)",
    "has_tw_recycle": "tcp_tw_recycle support",
    "recycle_drops_tsless_syn": "tw_recycle's drop of timestamp-less SYNs",
    "ts_clock": "TCP timestamp clock",
    "ts_offset": "TCP timestamp random offsets",
    "tw_timer": "TIME_WAIT timer implementation",
    "tw_count_at": "when TcpExtTW is counted",
    "oow_ratelimit": "rate limit on ACKs to out-of-window segments",
    "synsent_fast_rearm": "SYN-SENT re-arm on an unacceptable ACK",
    "initial_rto_s": "initial RTO",
    "has_counter_tw_overflow": "TcpExtTCPTimeWaitOverflow counter",
    "has_counter_paws_timewait": "TcpExtPAWSTimewait counter",
    "has_reqq_counters": "TCPReqQFull* counters",
    "listen_counts_on_syn": "listen-overflow counting on SYN",
}

# Defaults a Linux profile carries that are sysctls: the lab writes them so the namespace
# matches the profile (a fresh namespace has the running kernel's defaults).
PROFILE_DEFAULT_SYSCTLS = (
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_syn_retries",
    "net.core.somaxconn",
    "net.ipv4.tcp_timestamps",
)

LINEAR = "net.ipv4.tcp_syn_linear_timeouts"

# Values that depend on the machine (ehash size) in the registry; the lab only writes them
# when the scenario sets them, and records the namespace's real value otherwise.
MACHINE_DEPENDENT = frozenset({"net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_max_syn_backlog"})

# nf_conntrack_max is global: read-only inside a network namespace.
GLOBAL_ONLY = frozenset({"net.netfilter.nf_conntrack_max"})

CONNTRACK_PREFIX = "net.netfilter."


@dataclass
class Realisation:
    """The plan's inputs decided here: sysctls per group and how NAT/LB map to nftables."""

    kernel: Profile
    refusals: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # host group -> sysctl name -> value (registry types; see sysctl_text)
    sysctls: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "nat" / "lb" -> conntrack sysctls of that namespace
    conntrack: dict[str, dict[str, int]] = field(default_factory=dict)
    nat_flags: str = ""  # "" | "fully-random"
    lb_snat_flags: str = ""
    lb_scheduler: str = "round_robin"  # realised scheduler
    # server group -> serve --close
    serve_close: dict[str, str] = field(default_factory=dict)
    # workload name -> load --close
    load_close: dict[str, str] = field(default_factory=dict)
    # server group -> worker threads of the bounded server (groups whose workers limit them)
    bounded: dict[str, int] = field(default_factory=dict)
    # client group -> EmuProfile JSON: Windows/macOS clients played by tcpreuse.emulate
    emulated: dict[str, str] = field(default_factory=dict)
    # NAT/LB/loss backend: "nft", or "iptables" (iptables-legacy) where nftables cannot
    netfilter: str = "nft"

    def check(self, approximate: bool) -> None:
        """Raise UnsupportedError unless the scenario can run (as asked)."""
        if self.refusals:
            raise UnsupportedError(
                "; ".join(self.refusals) + "; the lab cannot run this scenario",
                hint="use `tcpreuse simulate`, which models every kernel",
            )
        if self.differences and not approximate:
            raise UnsupportedError(
                "the running kernel cannot realise this scenario exactly: "
                + "; ".join(self.differences),
                hint="use `tcpreuse simulate`, or `tcpreuse lab --approximate` to run the "
                "closest realisable setup with these differences stated",
            )


def sysctl_text(value: Any) -> str:
    """A registry value as /proc/sys wants it ("32768 60999", "8080,9000-9100", "1")."""
    if isinstance(value, frozenset | set):
        return port_ranges(value)
    if isinstance(value, tuple | list):
        return " ".join(str(v) for v in value)
    return str(value)


def port_ranges(ports: frozenset[int] | set[int]) -> str:
    """A port set in the kernel's own ip_local_reserved_ports syntax ("8080,9000-9100"):
    proc_do_large_bitmap() prints runs as ranges, so the value reads back the same."""
    out: list[str] = []
    run: list[int] = []
    for p in sorted(ports):
        if run and p == run[-1] + 1:
            run[-1] = p
            continue
        if run:
            out.append(f"{run[0]}" if run[0] == run[-1] else f"{run[0]}-{run[-1]}")
        run = [p, p]
    if run:
        out.append(f"{run[0]}" if run[0] == run[-1] else f"{run[0]}-{run[-1]}")
    return ",".join(out)


def running_kernel() -> Profile:
    return get_profile("linux-native")


def behaviour_differences(profile: Profile, kernel: Profile) -> list[str]:
    out = []
    for prop, words in BEHAVIOURS.items():
        a, b = getattr(profile, prop), getattr(kernel, prop)
        if a != b:
            out.append(f"{words}: {_fmt(a)} vs {_fmt(b)} here")
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v is None:
        return "none"
    return str(v)


def _linux_group(g: HostGroup, prof: Profile, kernel: Profile, r: Realisation,
                 uses_conntrack: bool) -> None:
    here = f"Linux {vstr(kernel.version)}"
    explicit = dict(g.settings)
    want: dict[str, Any] = {}
    diffs = behaviour_differences(prof, kernel)
    if diffs:
        r.differences.append(
            f"host group {g.name!r} uses profile {prof.name} but the running kernel is {here} ("
            + "; ".join(diffs) + f"); --approximate runs {here} with {prof.name}'s defaults"
        )
    for name in PROFILE_DEFAULT_SYSCTLS:
        if SETTINGS[name].exists(kernel) and name in g.effective_settings:
            want[name] = g.effective_settings[name]
    if SETTINGS[LINEAR].exists(kernel):
        # a pre-6.5 profile doubles its SYN RTO from the first retransmission
        want[LINEAR] = g.effective_settings.get(LINEAR, 0)
    for name in explicit:
        s = SETTINGS.get(name)
        if s is None:  # real but unmodelled sysctl (the loader noted it); not written
            continue
        value = g.effective_settings[name]
        if not s.exists(kernel):
            if name == "net.ipv4.tcp_tw_recycle" and value == 0:
                r.notes.append(f"{g.name}: tcp_tw_recycle = 0 is how {here} behaves anyway "
                               "(removed in 4.12)")
                continue
            when = f"only in Linux {s.since}" if " to " in s.since else f"from Linux {s.since} on"
            r.refusals.append(f"{name.rsplit('.', 1)[-1]} does not exist on {here}; it exists {when}")
            continue
        if name in GLOBAL_ONLY:
            r.differences.append(f"{g.name}: {name} is global (read-only in a network "
                                 "namespace); the lab leaves the host's value")
            continue
        if name.startswith(CONNTRACK_PREFIX) and not uses_conntrack:
            r.notes.append(f"{g.name}: {name} ignored (no conntrack in this host's namespace)")
            continue
        want[name] = value
    for name in list(want):
        if name in MACHINE_DEPENDENT and name not in explicit:
            del want[name]
    r.sysctls[g.name] = want


def _windows_group(g: HostGroup, prof: Profile, kernel: Profile, r: Realisation,
                   why: str | None = None) -> None:
    s = g.effective_settings
    p = g.params
    start, end = port_range(prof, s)
    ts = 1 if s["netsh.tcp.timestamps"] == "enabled" else 0
    retries = int(s["netsh.tcp.maxsynretransmissions"])
    r.sysctls[g.name] = {
        "net.ipv4.tcp_timestamps": ts,
        "net.ipv4.ip_local_port_range": (start, end),
        "net.ipv4.tcp_syn_retries": retries,
        "net.ipv4.tcp_tw_reuse": 0,
    }
    if SETTINGS[LINEAR].exists(kernel):
        r.sysctls[g.name][LINEAR] = 0  # Windows doubles its SYN RTO from the first retransmission
    rto = int(s["netsh.tcp.initialrto"])
    r.differences.append(
        (f"{why}; " if why else "") + f"host group {g.name!r} is {prof.name}: --approximate runs a Linux "
        f"{vstr(kernel.version)} namespace with tcp_timestamps={ts}, ip_local_port_range "
        f"{start} {end}, tcp_syn_retries={retries}, tcp_tw_reuse=0; what remains different: "
        f"TIME_WAIT lasts 60 s (Windows TcpTimedWaitDelay = {s['TcpTimedWaitDelay']} s), "
        f"ISN generator (Linux RFC 6528 hash + clock; Windows model isn={p.get('isn')}), "
        f"SYN schedule (Linux initial RTO {kernel.initial_rto_s:g} s; Windows {rto} ms, "
        f"RST-answered SYNs re-sent every {p.get('rst_retry_interval_s')} s), port allocation "
        f"(Linux per-destination hash offset; Windows host-wide {p.get('port_order')} pool), "
        f"reaction to an old ACK in SYN-SENT (Linux RST + fast re-arm; Windows "
        f"{p.get('on_bad_ack')})"
    )


def _macos_group(g: HostGroup, prof: Profile, kernel: Profile, r: Realisation,
                 why: str | None = None) -> None:
    s = g.effective_settings
    lo, hi = port_range(prof, s)
    ts = int(s["net.inet.tcp.rfc1323"])
    r.sysctls[g.name] = {
        "net.ipv4.tcp_timestamps": ts,
        "net.ipv4.ip_local_port_range": (min(lo, hi), max(lo, hi)),
        "net.ipv4.tcp_tw_reuse": 0,
    }
    r.differences.append(
        (f"{why}; " if why else "") + f"host group {g.name!r} is macOS: --approximate runs a Linux {vstr(kernel.version)} "
        f"namespace with tcp_timestamps={ts}, ip_local_port_range {lo} {hi}, tcp_tw_reuse=0; "
        f"what remains different: TIME_WAIT lasts 60 s (macOS 2 x net.inet.tcp.msl = "
        f"{2 * int(s['net.inet.tcp.msl']) / 1000:g} s), ISN generator, SYN schedule and "
        f"connect timeout (keepinit {int(s['net.inet.tcp.keepinit']) / 1000:g} s), port "
        f"allocation order ({g.params.get('port_order')})"
    )


def _above_emulator(sc: Scenario, g: HostGroup) -> str | None:
    """Why the emulator cannot play client group `g` (a per-client rate above its measured
    ceiling), or None. Such a group falls back to a Linux stand-in (--approximate)."""
    from ..emulate.run import MAX_RATE

    for w in sc.workload:
        per_client = w.rate / max(1, g.count) if w.clients == g.name else 0.0
        if per_client > MAX_RATE:
            return (f"workload {w.name!r}: {per_client:g} attempts/s per {g.name} is above what "
                    f"the packet-level client emulator holds (~{MAX_RATE:g}/s; scale rates and "
                    "port ranges together, as seed-lab does)")
    return None


def _emulated_group(sc: Scenario, g: HostGroup, prof: Profile, r: Realisation) -> None:
    """A Windows or macOS client group is played by the packet-level emulator
    (tcpreuse.emulate) with every parameter from the model's profile; what the emulator
    does not do is a difference (runs only with --approximate, which leaves it out)."""
    from ..emulate.profile import emu_profile

    ep = emu_profile(prof.name, dict(g.settings), dict(g.model))
    r.emulated[g.name] = ep.to_json()
    r.sysctls[g.name] = {}
    r.notes.append(
        f"host group {g.name!r} ({prof.name}) is played by the packet-level client emulator "
        f"(tcpreuse.emulate) on a TUN device: ports {ep.port_first}-{ep.port_first + ep.port_num - 1} "
        f"{ep.port_order}, ISN {ep.isn}, timestamps {'on' if ep.offers_ts else 'off'}, SYNs at "
        + ", ".join(f"{o:g}" for o in ep.syn_offsets) + f" s, gives up at {ep.give_up_s:g} s")
    for w in sc.workload:
        if w.clients != g.name:
            continue
        if w.arrival != "constant":
            r.differences.append(f"workload {w.name!r}: the emulator schedules constant arrivals, "
                                 f"not {w.arrival!r}")
        if w.requests_per_connection != 1 or w.bind != "none":
            r.differences.append(f"workload {w.name!r}: the emulator makes one request per "
                                 "connection from the host's first address (no bind, no keep-alive)")


def _whole_seconds(value: float, what: str, r: Realisation) -> int:
    n = round(value)
    if abs(n - value) > 1e-9:
        r.notes.append(f"{what} = {value:g} s rounded to {n} s (conntrack timeouts are whole seconds)")
    return n


CLOSE_MAP: dict[str, tuple[str, str]] = {
    # workload close -> (serve --close, load --close)
    "server": ("server", "server"),
    "client": ("client", "client"),
    "client_rst": ("client", "rst"),
    # the server answers, then resets (SO_LINGER 0): the client has its answer and closes;
    # waiting for a FIN that never comes would count the completed request as ECONNRESET.
    "server_rst": ("rst", "client"),
}


def realise(sc: Scenario, kernel: Profile | None = None) -> Realisation:
    """Decide how `sc` maps onto the running kernel (`kernel`, default: this one)."""
    kernel = kernel or running_kernel()
    r = Realisation(kernel=kernel)
    natted = set(sc.nat.clients) if sc.nat else set()
    for g in sc.host:
        prof = get_profile(g.profile)
        too_fast = _above_emulator(sc, g) if prof.os != "linux" and g.role == "client" else None
        if prof.os != "linux" and g.role == "client" and too_fast is None:
            _emulated_group(sc, g, prof, r)
        elif prof.os == "windows":
            _windows_group(g, prof, kernel, r, too_fast)
        elif prof.os == "macos":
            _macos_group(g, prof, kernel, r, too_fast)
        else:
            _linux_group(g, prof, kernel, r, uses_conntrack=False)
        if prof.os == "linux":  # real sysctls the model ignores: the lab leaves them too
            r.notes.extend(f"{g.name}: {n}" for n in resolve_settings(prof, g.settings)[1])

    if sc.nat is not None and natted:
        nat = sc.nat
        if nat.port_policy == "random":
            r.nat_flags = "fully-random"
        elif nat.port_policy == "sequential":
            r.differences.append(
                "NAT port_policy 'sequential': netfilter has no sequential allocator; "
                "--approximate uses its default (keep the client's port, else search)")
        if nat.max_attempts is not None:
            r.differences.append(
                f"NAT max_attempts = {nat.max_attempts}: nf_nat's port search limit is fixed "
                "in the running kernel; --approximate keeps the kernel's")
        r.conntrack["nat"] = {
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait":
                _whole_seconds(nat.time_wait_s, "nat.time_wait_s", r),
            "net.netfilter.nf_conntrack_tcp_timeout_close":
                _whole_seconds(nat.close_s, "nat.close_s", r),
        }
    elif sc.nat is not None:
        r.notes.append("[nat] lists no client groups; no NAT namespace is built")

    if sc.lb is not None:
        lb = sc.lb
        if lb.scheduler == "least_conn":
            r.differences.append("LB scheduler 'least_conn': nftables DNAT has no connection "
                                 "counts; --approximate uses round robin")
        else:
            r.lb_scheduler = lb.scheduler
        if lb.snat:
            if lb.snat_port_order == "random":
                r.lb_snat_flags = "fully-random"
            elif lb.snat_port_order == "sequential":
                r.differences.append(
                    "LB snat_port_order 'sequential': netfilter has no sequential allocator; "
                    "--approximate uses its default (keep the client's port, else search)")
        hold = 0 if lb.ignore_msl else _whole_seconds(lb.session_hold_s, "lb.session_hold_s", r)
        r.conntrack["lb"] = {
            "net.netfilter.nf_conntrack_tcp_timeout_time_wait": hold,
        }
        # conntrack re-opens a closed (TIME_WAIT/CLOSE) entry on a new SYN: a new session,
        # scheduled anew (nf_conntrack_proto_tcp.c tcp_packet(), TCP_CONNTRACK_SYN_SENT).
        if lb.held_session_syn == "drop" or (lb.held_session_syn == "same_backend" and hold > 0):
            r.differences.append(
                f"LB held_session_syn '{lb.held_session_syn}': conntrack treats a new SYN on a "
                "held (TIME_WAIT) session as a new session, scheduled anew")
        if not lb.rst_ends_session:
            r.differences.append("LB rst_ends_session = false: conntrack ends the session "
                                 "on a RST (CLOSE state) and a new SYN opens a new one")
        if lb.drop_server_ack_to_syn:
            r.differences.append("LB drop_server_ack_to_syn: nftables forwards a server's ACK "
                                 "to a SYN; the F5 behaviour is not realised")

    for w in sc.workload:
        srv_close, load_close = CLOSE_MAP[w.close]
        r.load_close[w.name] = load_close
        targets = [sc.lb.backends] if w.target == "lb" and sc.lb else [w.target]
        for t in targets:
            prev = r.serve_close.get(t)
            if prev is not None and prev != srv_close:
                r.refusals.append(
                    f"workloads need server group {t!r} to close both as {prev!r} and "
                    f"{srv_close!r}; one `serve` has one close policy")
            r.serve_close[t] = srv_close
        if w.retries:
            r.differences.append(f"workload {w.name!r}: retries = {w.retries}: `load` makes "
                                 "no application-level retries; --approximate runs without")
        if (w.request_bytes, w.response_bytes) != (64, 64):
            r.notes.append(f"workload {w.name!r}: request/response sizes are the line "
                           "protocol's (a few tens of bytes), not the scenario's")
    for g in sc.host:
        if g.role == "server":
            capacity = g.workers / max(g.service_ms / 1000.0, 1e-6)
            offered = sum(w.rate for w in sc.workload
                          if w.target == g.name or (w.target == "lb" and sc.lb is not None
                                                    and sc.lb.backends == g.name))
            if offered and capacity < 2 * offered / g.count:
                # `serve` answers everything at once; a bounded server (lab/boundserve.py)
                # realises the model's workers: one connection per thread at a time.
                r.bounded[g.name] = g.workers
                r.notes.append(
                    f"host group {g.name!r}: workers = {g.workers} with service_ms = "
                    f"{g.service_ms:g} limits the server; realised by a bounded server "
                    f"({g.workers} thread(s), one connection each at a time)")
    return r
