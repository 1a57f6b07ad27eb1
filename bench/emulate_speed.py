"""How fast the packet-level Windows client (tcpreuse.emulate) keeps its schedule.

Two figures, both printed with the machine's load so noisy runs can be told apart:
1. the state machine alone (sans-I/O, a scripted server in-process): attempts/s of one core
   for a full exchange (SYN, SYN-ACK, ACK+request, answer+FIN, ACK, FIN, ACK), median of 5;
2. on the real kernel (root): one emulated Windows client to one server namespace, constant arrivals at increasing rates for 5 s each; for each rate the share
   of attempts started more than 10 ms late and the start-lag p99, beside the same rate
   from `load` (the kernel's own client, the reference). The highest rate with lag p99
   < 10 ms is the emulator's ceiling; `tcpreuse.emulate.run.MAX_RATE` is set below it.

    python bench/emulate_speed.py [--rates 100,200,400,800] [--no-lab]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tcpreuse.emulate.packet import ACK, FIN, PSH, SYN, Options, Segment, parse
from tcpreuse.emulate.profile import emu_profile
from tcpreuse.emulate.stack import Client

CLIENT, SERVER, PORT = 0xC6120B01, 0x0A0A0001, 9313

def stack_rate(n: int = 20000) -> float:
    """Full exchanges per CPU second through encode/parse and the state machine."""
    prof = emu_profile("windows-2012r2", {}, {"isn": "random"})
    c = Client(prof, CLIENT, SERVER, PORT, seed=1)
    t0 = time.process_time()
    now = 0.0
    for _ in range(n):
        now += 0.001
        (syn,) = c.connect(now)
        syn = parse(syn.encode())
        sa = Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=1000, ack=syn.seq + 1,
                     flags=SYN | ACK, options=Options(mss=1460))
        out = [parse(s.encode()) for s in c.on_segment(parse(sa.encode()), now)]
        data = out[-1]
        ans = Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=1001,
                      ack=data.seq + len(data.payload), flags=PSH | ACK | FIN, payload=b"OK 123456\n")
        out = [parse(s.encode()) for s in c.on_segment(parse(ans.encode()), now)]
        fin = next(s for s in out if s.has(FIN))
        c.on_segment(parse(Segment(src=SERVER, dst=CLIENT, sport=PORT, dport=syn.sport, seq=fin.ack,
                                   ack=fin.seq + 1, flags=ACK).encode()), now)
    return n / (time.process_time() - t0)


def kernel_row(emulated: bool, rate: float, seconds: float = 5.0) -> tuple[int, int, float | None]:
    """One client namespace, one server namespace (`serve`), `rate` attempts/s for
    `seconds`: the emulator (--force: this measures past its ceiling) or `load`."""
    import json
    import subprocess
    import sys

    from tcpreuse.lab.netns import Namespace, veth_pair

    tag = f"{os.getpid() % 100000}-{int(rate)}"
    with Namespace(f"tcpr-be-c{tag}", {"net.ipv4.ip_forward": "1"}) as c, \
            Namespace(f"tcpr-be-s{tag}") as s, tempfile.TemporaryDirectory() as d:
        veth_pair(c, "eth0", s, "eth0")
        c.batch(["addr add 10.99.0.2/24 dev eth0"])
        s.batch(["addr add 10.99.0.1/24 dev eth0", "route add 10.98.0.5/32 via 10.99.0.2"])
        srv = s.popen([sys.executable, "-m", "tcpreuse", "serve", "--listen", "10.99.0.1:9313"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            out = Path(d) / "r.json"
            if emulated:
                argv = ["emulate", "10.99.0.1:9313", "--source", "10.98.0.5", "--force",
                        "--profile", "windows-2012r2", "--param", "isn=rfc6528"]
            else:
                argv = ["load", "10.99.0.1:9313", "--workers", "1"]
            c.run([sys.executable, "-m", "tcpreuse", *argv, "--rate", str(rate), "--duration",
                   str(seconds), "--result", str(out), "--quiet"], timeout=seconds + 60)
            meta = json.loads(out.read_text())["meta"]["load"]
        finally:
            srv.terminate()
            srv.wait(10)
    lag = meta.get("start_lag") or {}
    late = int(lag.get("late_starts") or 0)
    return int(meta.get("attempts", 0)), late, lag.get("p99")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="100,200,400,800")
    ap.add_argument("--no-lab", action="store_true")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    runs = [stack_rate() for _ in range(5)]
    print(f"state machine alone: median {statistics.median(runs):,.0f} exchanges/s of CPU "
          f"(min {min(runs):,.0f}, max {max(runs):,.0f})")
    if a.no_lab or os.geteuid() != 0:
        return
    print("on the real kernel, one client to one server namespace, 5 s per rate")
    print(f"{'rate/s':>8} {'emulate late':>16} {'p99 ms':>8} {'load late':>16} {'p99 ms':>8}")
    nan = float("nan")
    for r in (float(x) for x in a.rates.split(",")):
        n, late, p99 = kernel_row(True, r)
        ln, llate, lp99 = kernel_row(False, r)
        print(f"{r:8g} {late:>7} of {n:<6} {p99 if p99 is not None else nan:8.1f} "
              f"{llate:>7} of {ln:<6} {lp99 if lp99 is not None else nan:8.1f}")
    print("emulate counts a start > 10 ms late, load > 1 ms late (their own thresholds)")


if __name__ == "__main__":
    main()
