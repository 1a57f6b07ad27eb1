"""Print the seed incident's variants side by side as Markdown (docs/seed.md).

    python scripts/seed_table.py [--lab] > docs/seed.md     (or: make seed-table)

With --lab (root), each variant the running kernel can show is also run for real: the
seed-lab scenario (the seed scaled to what the lab sustains, emulated Windows clients,
servers on the running kernel) with the variant's change applied, beside `simulate` of the
same scaled scenario. About a minute per variant.
"""

from __future__ import annotations

from tcpreuse.diagnose.runfacts import tw_at_role
from tcpreuse.scenario.loader import builtin_names, load_scenario
from tcpreuse.sim.engine import Engine

ORDER = ["seed", "seed-client-timestamps", "seed-no-recycle", "seed-lb-ignore-msl", "seed-modern-kernel",
         "seed-isn-rfc6528", "seed-port-random", "seed-no-app-timeout", "seed-nat-timestamps", "seed-linux-direct"]


READING = {
    "seed": "yes: clean until the ports come round, then a small share fails, ~50,000-70,000 TIME_WAIT",
    "seed-client-timestamps": "yes: the write-up's fix removes every failure and delay",
    "seed-no-recycle": "contradicts the write-up's explanation: tcp_tw_recycle was not the cause",
    "seed-lb-ignore-msl": "yes: as the write-up found, the A10 template changes nothing",
    "seed-modern-kernel": "a kernel upgrade alone would not have helped",
    "seed-isn-rfc6528": "no: a monotonic ISN would have hidden the problem, so the clients' ISNs were not",
    "seed-port-random": "no: failures from the first seconds, not after tens of thousands of requests",
    "seed-no-app-timeout": "partly: same mechanism, but only delays (depends on the tester's timeout)",
    "seed-nat-timestamps": "the write-up's production warning: with NAT, timestamps + tw_recycle are worse",
    "seed-linux-direct": "yes: the write-up's control ran clean at 40,000/s",
}


# variant -> the same change on seed-lab (--set), or why the running kernel cannot show it
LAB: dict[str, list[str] | str] = {
    "seed": [],
    "seed-client-timestamps": ['host.winclient.settings={"netsh.tcp.timestamps"="enabled",'
                               '"netsh.ipv4.dynamicport.tcp.num"=1000}'],
    "seed-no-recycle": "the servers run the running kernel, which has no tcp_tw_recycle: the `seed` row is this row",
    "seed-lb-ignore-msl": ["lb.ignore_msl=true"],
    "seed-modern-kernel": "the `seed` row (seed-lab is the seed on modern servers)",
    "seed-isn-rfc6528": ["host.winclient.model.isn=rfc6528"],
    "seed-port-random": ["host.winclient.model.port_order=random"],
    "seed-no-app-timeout": ["workload.connect_timeout_s=30"],
    "seed-nat-timestamps": "needs tcp_tw_recycle (removed in Linux 4.12)",
    "seed-linux-direct": "a Linux client: the lab runs it as the kernel itself (see docs/validation.md)",
}


def lab_cell(name: str) -> str:
    from tcpreuse.lab.run import LabOptions, run_lab
    from tcpreuse.scenario.loader import parse_sets

    how = LAB.get(name, "not mapped")
    if isinstance(how, str):
        return how
    sc = load_scenario("seed-lab", parse_sets(how) if how else None)
    real = run_lab(sc, LabOptions())
    sim = Engine(sc).run()
    ff = real.first_failure()
    first = f", first failure at {ff['time_s']:.1f} s" if ff else ""
    return (f"failed {pct(real.failure_rate())}, delayed {pct(real.delayed_rate())}{first} "
            f"(simulate: {pct(sim.failure_rate())}, {pct(sim.delayed_rate())})")


ROUND_ROBIN = """
## Round robin and exactly interleaved clients

The seed's A10 schedules round robin. Which back end a client 4-tuple meets in each port
cycle is then the parity of the number of new sessions the load balancer made since that
tuple's last use. `simulate` interleaves the clients' arrivals exactly, so that number is
the same every cycle. In `v-seed-lab` it is 3 x 255 = 765, odd: each tuple alternates back
ends, its first SYN meets a TIME_WAIT only from the third cycle on, and a SYN re-sent after
the client's RST, scheduled anew, always finds the other back end holding a TIME_WAIT too (in
`seed-lab`, 3,000, even: a tuple keeps its back end until re-sent SYNs shift the count). Real
clients, and the lab's emulators (one process per client), drift against each other: in a
`v-seed-lab` run the lab's load balancer made 668-829 sessions between a tuple's first two
uses (conntrack's NEW events, `conntrack -E` in its namespace), and 43 % of tuples came back
to the same back end. So with round robin the lab sees hits from the second cycle on, and
fewer re-sent SYNs fail (lab 111-157 failed and 637-652 delayed, `simulate` 166-193 and
525-556, six seeds). Scheduling at random takes the arrival order out: `simulate` 113-137
failed and 641-702 delayed, the lab 124-129 and 658-678; `v-seed-lab` therefore uses
`lb.scheduler = "random"`. Which rows of the table fail does not depend on it.

The hypothesis before this was conntrack's RST validation (an out-of-window RST ignored, the
session kept, the re-sent SYN sent to the same back end). The events say otherwise: the
server's TIME_WAIT answers the SYN with the old ACK, which conntrack lets through as a
possible challenge ACK and records (`tcp_packet()`, the `TCP_CONNTRACK_IGNORE` case,
`last_ack`); the client's RST carries exactly that number, so conntrack accepts it ("Reset in
response to a challenge-ack we let through earlier") and moves to CLOSE; the re-sent SYN finds
CLOSE after an RST from the same side, kills the entry and is scheduled anew
(`net/netfilter/nf_conntrack_proto_tcp.c`, Linux 5.x to 6.18). In 761 of 763 retried
attempts of a `v-seed-lab` run the entry was destroyed and re-created this way; the model's
`rst_ends_session = true` is what conntrack does here.
"""

LAB_NOTES = """
## Notes on the real-kernel column

`seed-lb-ignore-msl` realises ignore-tcp-msl as conntrack's TIME_WAIT timeout 0 in the load
balancer's namespace. The lab shows what that does to a closing connection: the server
closes first and, when the emulated client's ACK is a few ms late, retransmits its FIN;
conntrack's state table takes the second FIN from the same side for the other side's
(`tcp_conntracks`, REPLY `fin` in FIN_WAIT -> LAST_ACK) and the client's ACK of the data for
the last ACK (LAST_ACK -> TIME_WAIT), so the entry expires while the client's ACK of the FIN
and its own FIN are still on the way. Those are then picked up as a new connection
(`nf_conntrack_tcp_loose` = 1: ESTABLISHED, UNREPLIED, 300 s), scheduled by the round robin,
and answered with a RST by a back end without the connection (100 such entries in 2,400
attempts of an 8 s run, 177 in 12,000 of a 40 s one). They do not change the outcome at this
scale: three 40 s runs had 3.12-3.27 % failed, 22.6-23.3 % delayed and the first failure at
21.5-21.6 s, the `seed` row's figures (the same before and after the lab's flow recorder
changed). An earlier table had this row failing from 2.7 s (4.41 %); that did not recur.
"""


def pct(x: float) -> str:
    return f"{x * 100:.2f} %"


def main() -> None:
    import sys

    lab = "--lab" in sys.argv[1:]
    names = [n for n in ORDER if n in builtin_names()]
    print("# The seed incident and its variants (generated)\n")
    print("Generated by `make seed-table` (`python scripts/seed_table.py`). Every row is a built-in")
    print("scenario run with `tcpreuse simulate NAME`; the column *matches the write-up* says whether the")
    print("row shows what the write-up reported (clean at first, a small share failing after tens of")
    print("thousands of requests, ~50,000 TIME_WAIT on the servers, fixed by client timestamps).\n")
    if lab:
        print("*On a real kernel* (`python scripts/seed_table.py --lab`, root): the same change applied")
        print("to `seed-lab` (3 emulated Windows clients, 1,000 ports at 100/s each, through the lab's")
        print("nftables load balancer to 2 servers on the running kernel, 40 s), beside `simulate` of")
        print("that scaled scenario. The rates differ from the full-size rows because the scale does;")
        print("what must agree is which rows fail and which do not.\n")
    print("| scenario | what changes | attempts | failed | delayed ≥ 1 SYN retry | first failure | "
          "server TIME_WAIT then | PAWSPassive | matches the write-up |" + (" on a real kernel |" if lab else ""))
    print("|---|---|---:|---:|---:|---|---:|---:|---|" + ("---|" if lab else ""))
    for n in names:
        sc = load_scenario(n)
        r = Engine(sc).run()
        ff = r.first_failure()
        first = f"#{ff['index'] + 1:,} at {ff['time_s']:.1f} s" if ff else "none"
        tw = f"{tw_at_role(r, 'server', ff['time_s']):,}" if ff else "-"
        print(f"| `{n}` | {sc.summary} | {len(r.attempts):,} | {pct(r.failure_rate())} | "
              f"{pct(r.delayed_rate())} | {first} | {tw} | {r.host_counter('TcpExtPAWSPassive'):,} | {READING.get(n, '')} |"
              + (f" {lab_cell(n)} |" if lab else ""), flush=True)
    print(ROUND_ROBIN, end="")
    if lab:
        print(LAB_NOTES, end="")


if __name__ == "__main__":
    main()
