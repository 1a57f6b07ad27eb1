"""Golden fingerprints of the simulator: every built-in scenario, every recorded column.

The engine is optimised (compiled with mypyc, packed tables, ...) under one hard rule:
its results stay bit-identical. This module runs each built-in scenario (shortened, but
long enough to reach its failures; `seed` at its full 90 s) and hashes every per-attempt
column and vocabulary of the RunResult, the counters, the timeline (with per-destination
port series), the end state and the NAT/LB statistics. `tests/data/sim_golden.json` holds
the hashes recorded from the engine before any optimisation; test_sim_golden.py checks the
installed (compiled) engine and the pure-Python source against them.

Not hashed: `meta.engine.events` (how many queue events the engine used: an
implementation detail that optimisations may change) and `meta.engine.wall_s`.

    python tests/helpers/sim_golden.py            # check, print one line per scenario
    python tests/helpers/sim_golden.py --record   # rewrite the JSON (only for a deliberate model change)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "sim_golden.json"

# Simulated seconds per built-in scenario: long enough to reach each one's failure
# mechanism, short enough that the whole set runs in seconds compiled.
DURATIONS: dict[str, float] = {
    "aws-natgw": 40.0,
    "azure-snat": 180.0,
    "cgnat-recycle": 30.0,
    "client-exhaustion": 20.0,
    "client-exhaustion-reuse": 10.0,
    "f5-syncookie-bug": 35.0,
    "gcp-cloud-nat": 200.0,
    "ipvs-conn-reuse": 20.0,
    "listen-overflow": 20.0,
    "php-mysql": 60.0,
    "seed": 90.0,
    "seed-client-timestamps": 30.0,
    "seed-isn-rfc6528": 30.0,
    "seed-lab": 40.0,
    "seed-lb-ignore-msl": 55.0,
    "seed-linux-direct": 1.0,
    "seed-modern-kernel": 55.0,
    "seed-nat-timestamps": 30.0,
    "seed-no-app-timeout": 30.0,
    "seed-no-recycle": 55.0,
    "seed-port-random": 30.0,
    "tw-bucket-overflow": 20.0,
    "windows-httpclient": 180.0,
}


# Random small scenarios over the space the property test explores (every Linux port
# algorithm, Windows/macOS pools, bind modes, close policies, NAT/LB policies, loss,
# arrival processes, retries): the built-in scenarios do not reach every rule.
N_MIXED = 64
LINUX = ["centos-6", "linux-3.10", "linux-4.4", "linux-4.9", "linux-5.4", "linux-5.15", "linux-6.18"]


def mixed_scenario(i: int) -> str:
    """The i-th mixed scenario (a pure function of i)."""
    rnd = random.Random(i)
    pick = rnd.choice
    prof = pick([*LINUX, "windows-2016", "windows-2022", "macos"])
    linux = prof in LINUX
    srv = pick(LINUX)
    lo = rnd.randint(30000, 60000)
    n = rnd.randint(8, 600)
    sc = []
    if linux:
        sc.append(f'"net.ipv4.ip_local_port_range" = "{lo} {lo + n - 1}"')
        sc.append(f'"net.ipv4.tcp_tw_reuse" = {pick([0, 1, 1])}')
        sc.append(f'"net.ipv4.tcp_timestamps" = {pick([0, 1, 1])}')
        if rnd.random() < 0.3:
            sc.append(f'"net.ipv4.ip_local_reserved_ports" = "{lo + 1},{lo + 3}-{lo + 5}"')
        if rnd.random() < 0.2:
            sc.append(f'"net.ipv4.tcp_max_tw_buckets" = {rnd.randint(10, 300)}')
    elif prof.startswith("windows"):
        sc.append(f'"netsh.ipv4.dynamicport.tcp.num" = {max(255, n)}')
        sc.append(f'"netsh.tcp.timestamps" = "{pick(["disabled", "enabled"])}"')
        sc.append(f'"TcpTimedWaitDelay" = {pick([30, 60, 120])}')
    model = ""
    if not linux and prof != "macos":
        model = f'[host.model]\nisn = "{pick(["random", "rfc6528"])}"\nport_order = "{pick(["sequential", "random"])}"'
    ss = []
    if srv in ("centos-6", "linux-3.10", "linux-4.4", "linux-4.9"):
        ss.append(f'"net.ipv4.tcp_tw_recycle" = {pick([0, 1])}')
    ss.append(f'"net.ipv4.tcp_rfc1337" = {pick([0, 1])}')
    ss.append(f'"net.ipv4.tcp_timestamps" = {pick([0, 1, 1])}')
    if rnd.random() < 0.2:
        ss.append(f'"net.ipv4.tcp_syncookies" = {pick([0, 1, 2])}')
    close = pick(["client", "server", "server", "client_rst", "server_rst"])
    bind = pick(["none", "none", "address_no_port", "bind0"]) if linux else "none"
    use_lb, use_nat = rnd.random() < 0.5, rnd.random() < 0.4
    arrival = pick(["constant", "constant", "poisson", "ramp"])
    text = f"""
name = "mixed-{i}"
seed = {rnd.randint(0, 1000)}
duration_s = {pick([2, 4, 8])}
[[host]]
name = "c"
role = "client"
count = {rnd.randint(1, 3)}
profile = "{prof}"
addresses_per_host = {rnd.randint(1, 3)}
[host.settings]
{chr(10).join(sc)}
{model}
[[host]]
name = "s"
role = "server"
count = {rnd.randint(1, 3)}
profile = "{srv}"
backlog = {pick([4, 128, 511])}
workers = {pick([2, 64, 256])}
service_ms = {pick([0.1, 1.0, 5.0])}
[host.settings]
{chr(10).join(ss)}
[[workload]]
clients = "c"
target = "{'lb' if use_lb else 's'}"
arrival = "{arrival}"
rate = {pick([50, 300, 1500, 3000])}
{f"ramp_from = {pick([0, 10])}" if arrival == "ramp" else ""}
requests_per_connection = {pick([1, 1, 3])}
close = "{close}"
bind = "{bind}"
connect_timeout_s = {pick([1, 5, 30])}
request_timeout_s = {pick([0.5, 10])}
retries = {pick([0, 0, 2])}
retry_delay_s = {pick([0.0, 0.5])}
[path]
rtt_ms = {pick([0.5, 10.0, 80.0])}
loss = {pick([0.0, 0.0, 0.02])}
"""
    if use_lb:
        text += f"""
[lb]
backends = "s"
scheduler = "{pick(["round_robin", "random", "source_hash", "least_conn"])}"
snat = {str(rnd.random() < 0.5).lower()}
snat_port_order = "{pick(["sequential", "random", "preserve"])}"
snat_port_range = [1024, {1024 + rnd.randint(20, 2000)}]
session_hold_s = {pick([0.0, 2.0])}
ignore_msl = {str(rnd.random() < 0.2).lower()}
held_session_syn = "{pick(["same_backend", "new_session", "drop", "drop_then_new"])}"
rst_ends_session = {str(rnd.random() < 0.7).lower()}
drop_server_ack_to_syn = {str(rnd.random() < 0.2).lower()}
"""
    if use_nat:
        text += f"""
[nat]
clients = ["c"]
addresses = {pick([1, 2])}
port_policy = "{pick(["preserve", "sequential", "random"])}"
port_range = [1024, {1024 + rnd.randint(20, 3000)}]
time_wait_s = {pick([0.0, 5.0, 120.0])}
close_s = {pick([0.0, 10.0])}
max_attempts = {pick([8, 248, 100000])}
"""
    return text


def _h(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _j(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode()


def fingerprint(r: Any) -> dict[str, Any]:
    """Hashes of everything a RunResult records, one per column / part."""
    out: dict[str, Any] = {"attempts": len(r.attempts)}
    for name, arr in r.attempts.cols.items():
        out[f"col.{name}"] = _h(str(arr.dtype).encode() + arr.tobytes())
    out["vocab"] = _h(_j(r.attempts.vocab))
    out["counters"] = _h(_j(r.counters))
    out["timeline"] = _h(_j(r.timeline.to_json()))
    meta = {k: v for k, v in r.meta.items() if k != "engine"}
    out["meta"] = _h(_j(meta))
    out["outcomes"] = r.outcomes()
    return out


def all_names() -> list[str]:
    return sorted(DURATIONS) + [f"mixed-{i}" for i in range(N_MIXED)]


def run_one(name: str) -> dict[str, Any]:
    from tcpreuse.scenario.loader import load_scenario, load_text
    from tcpreuse.sim.engine import Engine

    if name.startswith("mixed-"):
        sc = load_text(mixed_scenario(int(name[6:])))
    else:
        sc = load_scenario(name, {"duration_s": DURATIONS[name]})
    return fingerprint(Engine(sc).run())


def run_all(names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    return {name: run_one(name) for name in names or all_names()}


def diff(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """The parts that differ, as 'scenario: part' lines."""
    out = []
    for name in sorted(set(want) | set(got)):
        w, g = want.get(name, {}), got.get(name, {})
        out += [f"{name}: {k} {w.get(k)} != {g.get(k)}" for k in sorted(set(w) | set(g)) if w.get(k) != g.get(k)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", action="store_true", help="rewrite the golden file")
    ap.add_argument("names", nargs="*")
    args = ap.parse_args()
    got = run_all(args.names or None)
    if args.record:
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(got)} scenarios")
        return
    want = json.loads(GOLDEN.read_text())
    bad = diff({k: want[k] for k in got}, got)
    for name, fp in got.items():
        print(f"{name:26s} {fp['attempts']:>8,} attempts  {'OK' if name not in {b.split(':')[0] for b in bad} else 'DIFFERS'}")
    if bad:
        print("\n".join(bad))
        sys.exit(1)


if __name__ == "__main__":
    main()
