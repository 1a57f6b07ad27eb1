"""Benchmark: one `tcpreuse exporter` scrape against today's `tcpreuse doctor` run, on a
namespace with 100,000 sockets; then the exporter's memory over 1,000 scrapes.

Builds a network namespace ("tcpr-ex-bench-<pid>") and fills it with the filler of
bench/doctor_vs_ss.py (90 % client-side TIME_WAIT over 4 source addresses x 4 listeners,
10 % established pairs, on loopback inside the namespace). Then:

1. timing, interleaved, N of each (within 50 s of the fill, before TIME_WAIT expires):
       GET /metrics of `tcpreuse exporter --netns NS --interval 0`  (a fresh read, the rates
                                                                 against the previous scrape,
                                                                 the diagnosis, the exposition)
       tcpreuse doctor --netns NS --interval 0                   (today's fastest doctor run)
2. memory: 1,000 scrapes back to back while the filler keeps the table near its size (it
   re-creates TIME_WAIT entries at the rate they expire); the exporter's resident memory
   (VmRSS) is read every 50 scrapes.

The namespace and every process are removed at the end (also on Ctrl-C).

Usage (root):  python bench/exporter_scrape.py [--sockets 100000] [--runs 9] [--scrapes 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from doctor_vs_ss import FILLER, timed  # noqa: E402

from tcpreuse.lab.netns import Namespace  # noqa: E402

# After the fill: from when its first TIME_WAIT entries expire (60 s after it began), keep
# the population up by making `rate` client-first closes per second (on fresh explicit
# ports, as the filler does) until stdin closes.
CHURN = FILLER.replace('print(f"ready {made} {len(held)}", flush=True)\nselect.select([sys.stdin], [], [], 120)', r'''
print(f"ready {made} {len(held)}", flush=True)
rate, i = float(sys.argv[4]), made
t0 = deadline - 30 + 60  # from when the first TIME_WAIT entries of the fill expire
while not select.select([sys.stdin], [], [], 0)[0] and time.monotonic() - t0 < 3600:
    wait = t0 + (i - made) / rate - time.monotonic()
    if wait > 0:
        time.sleep(min(0.05, wait))
        continue
    cs = []
    for k in range(i, i + 100):
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:  # a port an established pair holds (autoselected) cannot be bound: skip it
            c.bind((srcs[(k // listeners) % 4], 1024 + (k // (4 * listeners)) % 64000))
        except OSError:
            c.close(); continue
        c.connect(("127.0.0.1", 8001 + k % listeners)); cs.append((c, k % listeners))
    for c, j in cs:
        s, _ = ls[j].accept(); c.close(); s.close()
    i += 100
''')
assert CHURN != FILLER


def rss_kib(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def get(url: str) -> tuple[float, str]:
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        body = r.read().decode()
    return time.perf_counter() - t, body


def sample_value(body: str, name: str) -> float | None:
    for ln in body.splitlines():
        if ln.startswith(name + " ") or ln.startswith(name + "{"):
            return float(ln.rsplit(" ", 1)[1])
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=9, help="timed scrapes and doctor runs (default 9)")
    ap.add_argument("--scrapes", type=int, default=1000, help="scrapes for the memory check (default 1000)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("needs root and ip", file=sys.stderr)
        return 2
    est_pairs = a.sockets // 20
    tw = a.sockets - 2 * est_pairs
    ns = Namespace(f"tcpr-ex-bench-{os.getpid()}", sysctls={
        "net.ipv4.ip_local_port_range": "1024 65535",
        "net.ipv4.tcp_max_tw_buckets": str(4 * a.sockets),
        "net.ipv4.tcp_tw_reuse": "0",
    })
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: .pyc files are used
    filler = exporter = None
    try:
        ns.create()
        t0 = time.monotonic()
        filler = ns.popen([sys.executable, "-c", CHURN, str(tw), str(est_pairs), "4", str(tw / 60)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = filler.stdout.readline().split() if filler.stdout else []
        if not line or line[0] != "ready":
            print("filler failed", file=sys.stderr)
            return 1
        print(f"namespace {ns.name}: {line[1]} client-first closes (TIME_WAIT) and {line[2]} established sockets "
              f"in {time.monotonic() - t0:.1f} s; then {tw / 60:,.0f} new TIME_WAIT/s to keep the size")
        exporter = subprocess.Popen([sys.executable, "-m", "tcpreuse", "exporter", "--netns", ns.name,
                                     "--listen", "127.0.0.1:0", "--interval", "0"],
                                    stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        banner = exporter.stderr.readline() if exporter.stderr else ""
        if "serving " not in banner:
            print(banner, file=sys.stderr)
            return 1
        url = banner.split("serving ", 1)[1].split()[0]
        doc_cmd = [sys.executable, "-m", "tcpreuse", "doctor", "--netns", ns.name, "--interval", "0"]
        get(url), timed(doc_cmd, env=env, cwd=ROOT)  # warm caches
        scr_t, scr_c, doc_t, doc_c = [], [], [], []
        body = ""
        for _ in range(a.runs):
            if time.monotonic() - t0 > 50:
                print("stopping the timing early: the first TIME_WAIT entries expire after 60 s")
                break
            c0 = cpu_s(exporter.pid)
            t, body = get(url)
            scr_t.append(t)
            scr_c.append(cpu_s(exporter.pid) - c0)
            t, c, r = timed(doc_cmd, env=env, cwd=ROOT)
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            doc_t.append(t)
            doc_c.append(c)
        med = statistics.median
        states = {ln.split('"')[1]: float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
                  if ln.startswith("tcpreuse_sockets{")}
        socks = sum(states.values())
        read_s = sample_value(body, "tcpreuse_read_duration_seconds")
        print(f"sockets in the scraped table: {socks:,.0f} ({', '.join(f'{k} {v:,.0f}' for k, v in states.items())})")
        print(f"exporter scrape  wall: median {med(scr_t) * 1000:6.1f} ms (runs {', '.join(f'{x * 1000:.0f}' for x in scr_t)}); "
              f"exporter CPU: median {med(scr_c) * 1000:5.0f} ms; read+diagnosis {read_s * 1000 if read_s else 0:.0f} ms")
        print(f"tcpreuse doctor  wall: median {med(doc_t) * 1000:6.1f} ms (runs {', '.join(f'{x * 1000:.0f}' for x in doc_t)}); "
              f"CPU: median {med(doc_c) * 1000:5.0f} ms")
        print(f"ratio scrape/doctor: wall {med(scr_t) / med(doc_t):.2f}x, CPU {med(scr_c) / med(doc_c):.2f}x "
              "(target: at most 1x)")

        rss: list[tuple[int, int, float]] = []
        scrape_times: list[float] = []
        t1 = time.monotonic()
        for i in range(1, a.scrapes + 1):
            t, body = get(url)
            scrape_times.append(t)
            if i % 50 == 0 or i == 1:
                n = sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith("tcpreuse_sockets{"))
                rss.append((i, rss_kib(exporter.pid), n))
        dt = time.monotonic() - t1
        base = statistics.median(r for _, r, _ in rss[1:5])
        last = statistics.median(r for _, r, _ in rss[-4:])
        print(f"memory over {a.scrapes:,} scrapes in {dt:.0f} s (scrape median {med(scrape_times) * 1000:.0f} ms; "
              f"sockets per scrape {min(n for *_, n in rss):,.0f}-{max(n for *_, n in rss):,.0f}):")
        print("  VmRSS MiB at scrape (sockets in it) " + ", ".join(f"{i}: {r / 1024:.1f} ({n / 1000:.0f}k)"
                                                               for i, r, n in rss))
        print(f"  scrapes 50-200 median {base / 1024:.1f} MiB, last 200 median {last / 1024:.1f} MiB: "
              f"{(last - base) / 1024:+.1f} MiB ({(last - base) / base:+.1%})")
        if a.json:
            Path(a.json).write_text(json.dumps({"scrape_s": scr_t, "scrape_cpu_s": scr_c, "doctor_s": doc_t,
                                                "doctor_cpu_s": doc_c, "rss_kib": rss, "sockets": socks}, indent=1))
        return 0
    finally:
        for p in (exporter, filler):
            if p is None:
                continue
            try:
                if p is exporter:
                    p.terminate()
                elif p.stdin:
                    p.stdin.close()
                p.wait(timeout=10)
            except (subprocess.TimeoutExpired, OSError):
                p.kill()
        ns.delete()


if __name__ == "__main__":
    sys.exit(main())
