"""Benchmark: `tcpreuse doctor` against `ss -tan | wc -l` on a namespace with 100,000 sockets.

Builds a network namespace ("tcpr-bench-<pid>"), fills it with TIME_WAIT and established
sockets on loopback (several listeners, client-first closes, tcp_max_tw_buckets raised
inside the namespace only), then times, interleaved, N runs of

    tcpreuse doctor --netns NS --interval 0          (the full diagnosis, rendered)
    ip netns exec NS sh -c 'ss -tan | wc -l'         (what users run today)

and prints each median and the ratio. Target: the doctor within 2x of ss. The namespace
and the filler process are always removed (also on Ctrl-C). TIME_WAIT lasts 60 s, so all
timing happens within 50 s of the start of the fill.

Usage (root):  .venv/bin/python bench/doctor_vs_ss.py [--sockets 100000] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tcpreuse.lab.netns import Namespace  # noqa: E402

# Runs inside the namespace: TIME_WAIT by client-first closes, then established pairs held
# open until stdin closes (or 120 s pass). Bounded in count and time.
FILLER = r"""
import os, resource, select, socket, sys, time
tw_target, est_pairs, listeners = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
need = 2 * est_pairs + 2000
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), max(hard, need)))
except (ValueError, OSError):  # no CAP_SYS_RESOURCE: the hard limit is the ceiling
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    est_pairs = min(est_pairs, (hard - 2000) // 2)
ls = []
for i in range(listeners):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 8001 + i)); l.listen(4096); ls.append(l)
# Client-first closes leave the TIME_WAIT on the client side, spread over 4 source
# addresses x `listeners` destinations. Ports are bound explicitly (SO_REUSEADDR) so that
# filling does not pay connect()'s search through ever more TIME_WAIT entries.
srcs = ["127.0.0.%d" % k for k in range(1, 5)]
deadline = time.monotonic() + 30
made, batch = 0, 512
while made < tw_target and time.monotonic() < deadline:
    cs = []
    for i in range(made, min(made + batch, tw_target)):
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind((srcs[(i // listeners) % 4], 1024 + (i // (4 * listeners)) % 64000))
        c.connect(("127.0.0.1", 8001 + i % listeners)); cs.append((c, i % listeners))
    for c, j in cs:
        s, _ = ls[j].accept(); c.close(); s.close()
    made += len(cs)
held = []
for i in range(est_pairs):  # established pairs on autoselected ports, held open
    c = socket.socket(); c.connect(("127.0.0.1", 8001 + i % listeners))
    s, _ = ls[i % listeners].accept(); held += [c, s]
print(f"ready {made} {len(held)}", flush=True)
select.select([sys.stdin], [], [], 120)
"""


def timed(argv: list[str], **kw: object) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall s, CPU s of the child and its descendants, result)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload]
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=100_000, help="total sockets to build (default 100000)")
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each command (default 7)")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE: measure a doctor that recompiles itself every run")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("ss"):
        print("needs root, ip and ss", file=sys.stderr)
        return 2
    tcpreuse = str(ROOT / ".venv" / "bin" / "tcpreuse")
    if not os.path.exists(tcpreuse):
        tcpreuse = shutil.which("tcpreuse") or ""
    est_pairs = a.sockets // 20  # 10 % of the sockets established (both ends), 90 % TIME_WAIT
    tw = a.sockets - 2 * est_pairs
    ns = Namespace(f"tcpr-bench-{os.getpid()}", sysctls={
        "net.ipv4.ip_local_port_range": "1024 65535",
        "net.ipv4.tcp_max_tw_buckets": str(4 * a.sockets),
        "net.ipv4.tcp_tw_reuse": "0",
    })
    filler = None
    try:
        ns.create()
        t0 = time.monotonic()
        filler = ns.popen([sys.executable, "-c", FILLER, str(tw), str(est_pairs), "4"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = filler.stdout.readline().split() if filler.stdout else []
        if not line or line[0] != "ready":
            print("filler failed", file=sys.stderr)
            return 1
        fill_s = time.monotonic() - t0
        print(f"namespace {ns.name}: {line[1]} client-first closes (TIME_WAIT) and {line[2]} established "
              f"sockets in {fill_s:.1f} s")
        ss_cmd = ["ip", "netns", "exec", ns.name, "sh", "-c", "ss -tan | wc -l"]
        doc_cmd = [tcpreuse, "doctor", "--netns", ns.name, "--interval", "0"]
        env = {**os.environ, "COLUMNS": "120"}
        if not a.no_bytecode:
            # As after `pip install` (which compiles .pyc files): this environment may set
            # PYTHONDONTWRITEBYTECODE, which makes every run recompile the package (~100 ms).
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        timed(ss_cmd), timed(doc_cmd, env=env)  # warm caches
        ss_t, doc_t, ss_c, doc_c, ss_lines, doc_out = [], [], [], [], 0, ""
        for _ in range(a.runs):
            if time.monotonic() - t0 > 50:
                print("stopping early: TIME_WAIT entries begin to expire after 60 s")
                break
            t, c, r = timed(ss_cmd)
            ss_t.append(t)
            ss_c.append(c)
            ss_lines = int(r.stdout.strip() or 0)
            t, c, r = timed(doc_cmd, env=env)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            doc_t.append(t)
            doc_c.append(c)
            doc_out = r.stdout
        sockets_line = next((ln for ln in doc_out.splitlines() if ln.startswith("sockets ")), "")
        med = statistics.median

        def runs(xs: list[float]) -> str:
            return ", ".join(f"{x * 1000:.0f}" for x in xs)

        print(f"ss -tan | wc -l   wall: median {med(ss_t) * 1000:7.1f} ms (runs {runs(ss_t)}); "
              f"CPU: median {med(ss_c) * 1000:6.1f} ms; lines {ss_lines - 1:,}")
        print(f"tcpreuse doctor   wall: median {med(doc_t) * 1000:7.1f} ms (runs {runs(doc_t)}); "
              f"CPU: median {med(doc_c) * 1000:6.1f} ms")
        print(f"doctor saw        {sockets_line}")
        print(f"bytecode cache    {'off (recompiling each run)' if a.no_bytecode else 'on (as installed)'}")
        print(f"ratio doctor/ss   wall {med(doc_t) / med(ss_t):.2f}x, CPU {med(doc_c) / med(ss_c):.2f}x "
              "(target: within 2x)")
        load = os.getloadavg()[0]
        if load > (os.cpu_count() or 1) * 0.5:
            print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs during the run; wall times are noisy, "
                  "CPU times less so")
        return 0
    finally:
        if filler is not None:
            try:
                if filler.stdin:
                    filler.stdin.close()
                filler.wait(timeout=5)
            except (subprocess.TimeoutExpired, OSError):
                filler.kill()
        ns.delete()


if __name__ == "__main__":
    sys.exit(main())
