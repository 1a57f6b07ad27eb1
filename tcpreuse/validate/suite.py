"""The built-in validation scenarios (suites/*.toml) and the suites that group them.

They are ordinary scenario files, kept apart from the user-facing built-ins because they
exist to pin one kernel rule each, at rates this 2-core machine sustains. `full` is every
file; `quick` is the subset CI runs on the real kernel in a few minutes.
"""

from __future__ import annotations

import tomllib
from importlib import resources

from ..errors import ScenarioError
from ..scenario.loader import load_scenario, load_text
from ..scenario.schema import Scenario

PACKAGE = "tcpreuse.validate"

# One scenario per family of rules, each a few seconds: ports and parity, client-first
# TIME_WAIT, tw_reuse with its delay, server-first close with a SYN on TIME_WAIT,
# SO_LINGER 0, tcp_max_tw_buckets, listen overflow.
QUICK = (
    "v-exhaust-even",
    "v-range-odd-size",
    "v-reuse1-delay1000",
    "v-server-close-syn-on-tw",
    "v-client-rst",
    "v-tw-buckets",
)


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
