"""The built-in validation scenarios (suites/*.toml) and the suites that group them.

They are ordinary scenario files, kept apart from the user-facing built-ins because they
exist to pin one kernel rule each, at rates this 2-core machine sustains. `full` is every
file; `quick` is the subset CI runs on the real kernel in a few minutes.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

from ..errors import ScenarioError
from ..scenario.loader import load_scenario, load_text
from ..scenario.schema import Scenario

PACKAGE = "tcpreuse.validate"

# One scenario per family of rules, each a few seconds: ports and parity, client-first
# TIME_WAIT, tw_reuse with its delay, server-first close with a SYN on TIME_WAIT,
# SO_LINGER 0, tcp_max_tw_buckets, and one version-discriminating scenario (timestamp
# offsets per host pair or per 4-tuple) whose cross-check CI sees on both kernels.
QUICK = (
    "v-exhaust-even",
    "v-range-odd-size",
    "v-reuse1-delay1000",
    "v-server-close-syn-on-tw",
    "v-client-rst",
    "v-tw-buckets",
    "v-ts-offset-nat",
)


# Scenarios the model runs one connection after another (constant arrivals, each
# connection over in well under the gap to the next) and whose outcome depends on which
# ports are busy at a connect(): few ports, freed at close (server-first close, no client
# TIME_WAIT) or reused from TIME_WAIT. The lab's load keeps one attempt in flight (load
# --max-in-flight 1): when `serve` or the generator stalls (UML's 1 vCPU, a loaded host),
# the attempts due meanwhile wait and then go one after another, late (their start lag,
# measured, widens the timing rows), instead of piling up and holding every even port,
# which sends the kernel to odd ones the model never needs.
SEQUENTIAL: dict[str, str] = {
    name: "one connection after another in the model; the lab's load keeps one in flight"
    for name in ("v-server-close-syn-on-tw", "v-server-close-client-ts-off")
}


# Scenarios whose collisions the kernel decides with its secret hashes: which of two
# clients' ISNs (or timestamp offsets) is ahead on a shared 4-tuple. The model draws the
# same kind of hashes from its own seed, so counts of rejected SYNs agree as rates only.
_NAT_TW = ("two clients behind one NAT address share 4-tuples; whether a SYN is rejected at "
           "the other client's TIME_WAIT depends on which client's {what} is ahead for that "
           "4-tuple, drawn from the kernel's secret (siphash) keys")
CHANCE: dict[str, str] = {
    "v-nat-syn-on-tw": _NAT_TW.format(what="timestamp offset"),
    "v-nat-syn-on-tw-ts-off": _NAT_TW.format(what="ISN"),
    "v-seed-lab": ("the emulated Windows clients draw a random ISN per connection (the profile's "
                   "isn=random, as the seed needs): whether a SYN that meets a server TIME_WAIT is "
                   "after its rcv_nxt is a coin toss, in the lab and in the model alike"),
}
# ... and where the tosses decide outcomes too (two TIME_WAITs in a row fail an attempt)
CHANCE_OUTCOMES = frozenset({"v-seed-lab"})


# ... and where they are only when the model's profile keys timestamp offsets by 4-tuple
# (6.18): with one offset per host pair (4.11-6.17) no SYN of one client is ever older.
CHANCE_IF_4TUPLE_TS: dict[str, str] = {
    "v-ts-offset-nat": ("the client's timestamp offset is drawn per 4-tuple from the kernel's secret "
                        "(siphash) key: whether a SYN from a new source port is older than the "
                        "TIME_WAIT it meets is a coin toss, in the lab and in the model alike"),
}

# ... and where a re-sent SYN meets another toss (its NAT re-draws the port, or the other
# client has used the port again since): the connect percentiles fall on one SYN
# retransmission time or the next by chance, and the port parity split follows the ports
# those chains hold
CHANCE_RETRIES = frozenset({"v-ts-offset-nat", "v-nat-syn-on-tw", "v-nat-syn-on-tw-ts-off"})

# ... and where the tosses are one coin per shared port, fixed for the run, not one per
# SYN (compare.port_coins()): with timestamps off, a SYN at a TIME_WAIT is judged by
# after(seq, tw_rcv_nxt) (tcp_timewait_state_process(), net/ipv4/tcp_minisocks.c), and
# both sides' ISNs are secure_tcp_seq() (net/core/secure_seq.c): a keyed hash of the
# client's pre-NAT 4-tuple plus one clock (ktime_get_real_ns() >> 6) for both clients,
# so on each port one client's hash is behind the other's for the whole run and that
# client is rejected at every one of the other's TIME_WAITs it meets there, the other
# never (seen in a UML capture: docs/kernels.md). The value: how many ports carry a coin,
# the even ports of the scenario's 10-port range, which connect() uses first
# (__inet_hash_connect(), net/ipv4/inet_hashtables.c, 4.6+).
CHANCE_PORTS: dict[str, int] = {"v-nat-syn-on-tw-ts-off": 5}

# Version-discriminating scenarios: the rule each pins, which the model changes between
# the two kernels validate can run (the host's 6.18, User-Mode Linux's 6.1). validate runs
# the model a second time with the other version's profile (CROSS_PROFILES) and shows
# that cross-check disagreeing with the lab: the rule decides the outcome.
DISCRIMINATING: dict[str, str] = {
    "v-reuse1-seconds": ("tcp_twsk_unique(): tcp_tw_reuse = 1 takes over a TIME_WAIT once the seconds "
                         "clock moved past its stamp (4.19-6.13), or tcp_tw_reuse_delay after it "
                         "entered TIME_WAIT (6.14+)"),
    "v-syn-give-up": ("the SYN-SENT retransmission schedule: doubling from 1 s (before 6.5), or "
                      "tcp_syn_linear_timeouts = 4 retransmissions 1 s apart first (6.5+): how many "
                      "SYNs connect() sends before its time budget runs out"),
    "v-ts-offset-nat": ("timestamp offsets per (saddr, daddr) (4.11-6.17, secure_tcp_ts_off()) or per "
                        "4-tuple (6.18, secure_tcp_seq_and_ts_off()): PAWS at a server TIME_WAIT "
                        "reached from another of the client's ports"),
    "v-nat-syn-on-tw": ("which counter a PAWS reject at a TIME_WAIT moves: PAWSEstab (before 6.15) or "
                        "PAWSTimewait (6.15+)"),
}
CROSS_PROFILES = ("linux-6.1", "linux-6.18")


def with_profile(overrides: dict[str, Any], profile: str) -> dict[str, Any]:
    """`overrides` with every host group's profile (the `host.G.profile` keys validate
    sets) replaced by `profile`: the same run under another version's model."""
    return {k: (profile if k.endswith(".profile") else v) for k, v in overrides.items()}


def cross_profile(version: tuple[int, int, int]) -> str:
    """The profile of the other version for a cross-check of a kernel of `version`."""
    return CROSS_PROFILES[0] if version >= (6, 14, 0) else CROSS_PROFILES[1]


def chance_reason(name: str, ts_offset: str) -> str | None:
    """The chance reason of a scenario when the model keys timestamp offsets `ts_offset`
    (Profile.ts_offset), or None where its counts are exact."""
    if name in CHANCE:
        return CHANCE[name]
    return CHANCE_IF_4TUPLE_TS.get(name) if ts_offset == "4tuple" else None


def names() -> list[str]:
    d = resources.files(PACKAGE) / "suites"
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".toml"))


def text(name: str) -> str:
    return (resources.files(PACKAGE) / "suites" / f"{name}.toml").read_text()


def suite(name: str) -> list[str]:
    if name == "full":
        return names()
    if name == "quick":
        return list(QUICK)
    raise ScenarioError(f"no validation suite named {name!r}", hint="suites: full, quick")


def summary(name: str) -> str:
    return str(tomllib.loads(text(name)).get("summary", ""))


def load(ref: str, overrides: dict[str, object] | None = None) -> Scenario:
    """A validation scenario by name, else a scenario file or a built-in scenario."""
    if ref in names():
        return load_text(text(ref), f"<validate:{ref}>", dict(overrides or {}))
    return load_scenario(ref, dict(overrides or {}))
