#!/usr/bin/env python3
"""New connections per second: `tcpreuse load` (closed loop) against wrk, same nginx, same run.

nginx (the Debian package) serves `return 200 "ok"` on loopback with a minimal config of
our own in a temp dir. wrk runs `-t2 -c50 -d10s -H 'Connection: close'` (one connection per
request) and `tcpreuse load --concurrency 50 --workers 2 --protocol http` for the same
duration, alternately (ABBA order, after one warm-up run of each, so neither tool always
meets the TIME_WAIT table the other left behind). It prints every run, the medians and
the ratio load/wrk; the target is >= 0.90.

As root, everything runs in a network namespace of its own (tcpr-lvw-<pid>): its own
loopback, TIME_WAIT table and default sysctls (tcp_tw_reuse=2 lets the client reuse its
loopback TIME_WAIT ports), untouched by anything else on the machine, and removed at
the end. Without root it falls back to the host's loopback, where other traffic can skew
the numbers.

Then the open-loop row: the highest `--rate` at which `tcpreuse load --workers 2` keeps
its schedule (start lag p99 under 1 ms, nothing left unstarted), found by bisection over
rates (geometric, `--probes` bounded runs of `--probe-duration` s each, between
`--min-rate` and `--max-rate`), `--runs` times; it prints every probe and the median.
`--compare DIR` also bisects with the tcpreuse package found in DIR (e.g. a copy of an
older version), alternately with this one in the same run, and prints the ratio. Each
probe prints the client's CPU per connection (the workers' loop alone too, where the
version reports it), nginx's (its processes' CPU from /proc), how often the workers were
preempted, and the load average; each run adds one probe at `--overload-rate`: the ok/s
an open loop still delivers when asked for more than it can start.

`--fixed-rates R1,R2` runs, instead, fixed-rate probes at those rates (with `--compare`,
alternately) and prints the workers' CPU per attempt with its system part: the figure a
crowded machine disturbs least.

    python bench/load_vs_wrk.py [--runs 3] [--duration 10] [--connections 50]
                                [--open-only] [--compare DIR] [--overload-rate R]
                                [--fixed-rates R1,R2] [--netns-prefix tcpr-NAME-]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tcpreuse.lab.netns import Namespace

NGINX_CONF = """\
worker_processes {workers};
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 16384; multi_accept on; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


class Env:
    """Where the benchmark runs: a private namespace (root) or the host's loopback."""

    def __init__(self, prefix: str = "tcpr-lvw-") -> None:
        self.ns: Namespace | None = None
        if os.geteuid() == 0 and shutil.which("ip"):
            self.ns = Namespace(f"{prefix}{os.getpid()}").create()

    def cmd(self, argv: Sequence[str]) -> list[str]:
        return self.ns.cmd(argv) if self.ns else list(argv)

    def close(self) -> None:
        if self.ns:
            self.ns.delete()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def wait_ready(env: Env, port: int, timeout: float = 10.0) -> None:
    probe = ("import socket,sys\n"
             f"s=socket.create_connection(('127.0.0.1',{port}),timeout=1);s.close()")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(env.cmd([sys.executable, "-c", probe]), capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    raise SystemExit("nginx did not start listening")


def children_cpu() -> float:
    """CPU seconds (user + system) of the children we have waited for, workers included."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_wrk(env: Env, url: str, threads: int, conns: int, duration: float) -> dict[str, float]:
    cpu = children_cpu()
    out = subprocess.run(
        env.cmd(["wrk", f"-t{threads}", f"-c{conns}", f"-d{int(duration)}s", "-H", "Connection: close", url]),
        capture_output=True, text=True, timeout=duration + 60,
    ).stdout
    cpu = children_cpu() - cpu
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r = re.search(r"(\d+) requests in", out)
    if not m or not r:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    errs = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"conn_per_s": float(m[1]), "errors": errs[1] if errs else "",  # type: ignore[dict-item]
            "non2xx": int(non2xx[1]) if non2xx else 0, "cpu_us": cpu / max(1, int(r[1])) * 1e6}


def run_load(env: Env, port: int, workers: int, conns: int, duration: float) -> dict[str, float]:
    cpu = children_cpu()
    out = subprocess.run(
        env.cmd([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{port}", "--protocol", "http",
                 "--concurrency", str(conns), "--duration", str(duration), "--workers", str(workers),
                 "--json", "--quiet"]),
        capture_output=True, text=True, timeout=duration + 120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    cpu = children_cpu() - cpu
    if out.returncode != 0:
        raise SystemExit(f"tcpreuse load failed:\n{out.stderr}")
    d = json.loads(out.stdout)
    return {"conn_per_s": d["ok_per_s"], "failed": d["failed"],
            "connect_p99_ms": d["connect_ms"]["p99"], "cpu_us": cpu / max(1, d["attempts"]) * 1e6}


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` and its children (nginx's master and
    workers), from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(d.name) == pid or int(f[1]) == pid:  # f[1]: ppid; f[11], f[12]: utime, stime
            total += (int(f[11]) + int(f[12])) / tick
    return total


SERVER_PID = 0  # nginx's master, for the server's CPU per connection


def probe_rate(env: Env, port: int, workers: int, rate: float, duration: float,
               src: str | None = None) -> dict[str, float]:
    """One bounded open-loop run at `rate`: its start lag and whether it kept the schedule."""
    envvars = dict(os.environ, PYTHONPATH=src) if src else None
    server_cpu = tree_cpu(SERVER_PID) if SERVER_PID else 0.0
    cpu = children_cpu()
    out = subprocess.run(
        env.cmd([sys.executable, "-m", "tcpreuse", "load", f"127.0.0.1:{port}", "--protocol", "http",
                 "--rate", f"{rate:.0f}", "--duration", str(duration), "--workers", str(workers),
                 "--json", "--quiet", "--force"]),
        capture_output=True, text=True, timeout=duration + 120, env=envvars,
        cwd=src or Path(__file__).resolve().parent.parent,
    )
    cpu = children_cpu() - cpu
    server_cpu = tree_cpu(SERVER_PID) - server_cpu if SERVER_PID else float("nan")
    if out.returncode != 0:
        raise SystemExit(f"tcpreuse load failed:\n{out.stderr}")
    d = json.loads(out.stdout)
    lag = d["start_lag"]
    p99 = lag["p99"] if lag["p99"] is not None else float("inf")
    kept = p99 < 1.0 and not d["not_started"]
    n = max(1, d["attempts"])
    g = d.get("generator") or {}  # (older versions do not report it)
    return {"rate": rate, "lag_p99_ms": p99, "late": lag["late_starts"] / n,
            "ok_per_s": d["ok_per_s"], "kept": kept, "cpu_us": cpu / n * 1e6,
            "loop_cpu_us": g.get("cpu_us_per_attempt") or float("nan"),
            "loop_sys_us": g.get("sys_us_per_attempt") or float("nan"),
            "lag_p50_ms": lag["p50"] if lag["p50"] is not None else float("nan"),
            "preempted": g.get("preempted", -1) / n if "preempted" in g else float("nan"),
            "server_cpu_us": server_cpu / n * 1e6}


def open_loop_ceiling(env: Env, port: int, workers: int, lo: float, hi: float, probes: int,
                      duration: float, src: str | None, label: str) -> float:
    """Highest rate in [lo, hi] that kept its schedule, by geometric bisection in `probes`
    runs (0 if even `lo` did not)."""
    best = 0.0
    for _ in range(probes):
        rate = (lo * hi) ** 0.5 if best else lo
        r = probe_rate(env, port, workers, rate, duration, src)
        print(f"  {label}: {rate:8.0f}/s  start lag p50 {r['lag_p50_ms']:6.3f} p99 {r['lag_p99_ms']:9.3f} ms  "
              f"late {r['late']:6.1%}  {'kept' if r['kept'] else 'behind'}  CPU {r['cpu_us']:5.1f} us/conn "
              f"(loop {r['loop_cpu_us']:5.1f}, of it system {r['loop_sys_us']:5.1f}, "
              f"nginx {r['server_cpu_us']:5.1f})  preempted {r['preempted']:.2f}/conn  "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        if r["kept"]:
            best = lo = rate
        elif not best:
            return 0.0  # even the lowest rate fell behind
        else:
            hi = rate
        if hi / lo < 1.05:
            break
    return best


def open_loop_rows(env: Env, port: int, args: argparse.Namespace) -> None:
    trees: list[tuple[str, str | None]] = [("this", None)]
    if args.compare:
        trees.append((f"compare ({args.compare})", args.compare))
    print(f"open loop: highest --rate with start lag p99 < 1 ms, {args.threads} workers, "
          f"{args.probe_duration:g} s per probe, bisection over {args.min_rate:,.0f}..{args.max_rate:,.0f}/s")
    found: dict[str, list[float]] = {name: [] for name, _ in trees}
    # and what it still does when asked for more than it can start (--overload-rate): the
    # ok/s and CPU per connection, which a crowded machine disturbs less than the lag
    over: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    for i in range(args.runs):
        order = trees if i % 2 == 0 else trees[::-1]
        for name, src in order:
            c = open_loop_ceiling(env, port, args.threads, args.min_rate, args.max_rate, args.probes,
                                  args.probe_duration, src, f"run {i + 1} {name}")
            found[name].append(c)
            print(f"run {i + 1} {name}: ceiling {c:,.0f}/s")
            if args.overload_rate:
                r = probe_rate(env, port, args.threads, args.overload_rate, args.probe_duration, src)
                over[name].append(r)
                print(f"run {i + 1} {name}: at {args.overload_rate:,.0f}/s: {r['ok_per_s']:8.0f} ok/s, late "
                      f"{r['late']:6.1%}, CPU {r['cpu_us']:5.1f} us/conn (loop {r['loop_cpu_us']:5.1f}, nginx "
                      f"{r['server_cpu_us']:5.1f}) (load average {os.getloadavg()[0]:.1f})", flush=True)
    for name, _ in trees:
        print(f"open-loop ceiling, median, {name}: {statistics.median(found[name]):10,.0f}/s "
              f"(runs: {', '.join(f'{x:,.0f}' for x in found[name])})")
        if over[name]:
            oks = [r["ok_per_s"] for r in over[name]]
            print(f"asked {args.overload_rate:,.0f}/s, median, {name}: {statistics.median(oks):8,.0f} ok/s "
                  f"(runs: {', '.join(f'{x:,.0f}' for x in oks)}), client CPU "
                  f"{statistics.median(r['cpu_us'] for r in over[name]):.1f} us/conn, nginx "
                  f"{statistics.median(r['server_cpu_us'] for r in over[name]):.1f} us/conn")
    if args.compare:
        a, b = statistics.median(found["this"]), statistics.median(found[trees[1][0]])
        print(f"ratio this/compare: {a / b:.2f}" if b else
              "ratio this/compare: none (compare kept no rate; see the probes' lag and late share)")
    print(f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def fixed_rate_rows(env: Env, port: int, args: argparse.Namespace) -> None:
    """CPU per attempt at fixed rates (--fixed-rates), this tree and --compare alternately:
    a figure a crowded machine disturbs much less than the start lag, since it is the
    work the loop does per connection (wake-ups included), not when it gets the CPU."""
    trees: list[tuple[str, str | None]] = [("this", None)]
    if args.compare:
        trees.append((f"compare ({args.compare})", args.compare))
    rates = [float(x) for x in args.fixed_rates.split(",")]
    print(f"fixed rates: {args.threads} workers, {args.probe_duration:g} s per probe, {args.runs} runs, alternately")
    got: dict[tuple[float, str], list[dict[str, float]]] = {}
    for i in range(args.runs):
        for rate in rates:
            for name, src in (trees if i % 2 == 0 else trees[::-1]):
                r = probe_rate(env, port, args.threads, rate, args.probe_duration, src)
                got.setdefault((rate, name), []).append(r)
                print(f"  run {i + 1} {name}: {rate:8.0f}/s  loop CPU {r['loop_cpu_us']:6.1f} us/attempt (system "
                      f"{r['loop_sys_us']:5.1f}), nginx {r['server_cpu_us']:5.1f}  start lag p50 {r['lag_p50_ms']:.3f} "
                      f"p99 {r['lag_p99_ms']:.3f} ms  late {r['late']:6.1%}  preempted {r['preempted']:.2f}/attempt  "
                      f"(load average {os.getloadavg()[0]:.1f})",
                      flush=True)
    for (rate, name), rs in got.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("loop_cpu_us", "loop_sys_us", "server_cpu_us",
                                                                  "lag_p50_ms", "lag_p99_ms", "late", "preempted")}
        print(f"median {name} {rate:,.0f}/s: loop CPU {med['loop_cpu_us']:.1f} us/attempt (system "
              f"{med['loop_sys_us']:.1f}), nginx {med['server_cpu_us']:.1f}, start lag p50 {med['lag_p50_ms']:.3f} "
              f"p99 {med['lag_p99_ms']:.3f} ms, late {med['late']:.1%}, preempted {med['preempted']:.2f}/attempt (runs: "
              f"{', '.join(f'{x:.1f}' for x in (r['loop_cpu_us'] for r in rs))} us)")
    print(f"load average now: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk -t and tcpreuse --workers")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--open-only", action="store_true", help="only the open-loop row (no wrk)")
    ap.add_argument("--compare", metavar="DIR", help="also bisect with the tcpreuse package in DIR")
    ap.add_argument("--min-rate", type=float, default=1000.0)
    ap.add_argument("--max-rate", type=float, default=40000.0)
    ap.add_argument("--probes", type=int, default=7, help="bounded runs per bisection")
    ap.add_argument("--probe-duration", type=float, default=3.0)
    ap.add_argument("--overload-rate", type=float, default=20000.0,
                    help="also one probe per run at this rate: the ok/s an overloaded open loop keeps (0: none)")
    ap.add_argument("--fixed-rates", metavar="R1,R2,...",
                    help="instead of the rows above: probes at these rates, CPU per attempt (with --compare)")
    ap.add_argument("--netns-prefix", default="tcpr-lvw-",
                    help="name of the private namespace (as root): this, then the pid; must start with tcpr-")
    args = ap.parse_args()
    if not (0 < args.min_rate < args.max_rate) or args.probes < 1 or args.probe_duration <= 0:
        print("need 0 < --min-rate < --max-rate, --probes >= 1, --probe-duration > 0", file=sys.stderr)
        return 2
    if args.compare and not Path(args.compare, "tcpreuse", "__init__.py").is_file():
        print(f"--compare {args.compare}: no tcpreuse package there", file=sys.stderr)
        return 2
    if args.fixed_rates:
        try:
            if not all(float(x) > 0 for x in args.fixed_rates.split(",")):
                raise ValueError
        except ValueError:
            print(f"--fixed-rates {args.fixed_rates}: need positive rates, comma-separated", file=sys.stderr)
            return 2
    for tool in ("nginx",) if args.open_only or args.fixed_rates else ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/system-deps.sh installs it)", file=sys.stderr)
            return 2

    if not args.netns_prefix.startswith("tcpr-"):
        print("--netns-prefix must start with tcpr- (tcpreuse lab cleanup finds leftovers by it)", file=sys.stderr)
        return 2
    env = Env(args.netns_prefix)
    nginx: subprocess.Popen[bytes] | None = None
    tmp = tempfile.mkdtemp(prefix="tcpr-lvw-")
    try:
        port = 18080 if env.ns else free_port()
        Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(workers="auto", tmp=tmp, port=port))
        nginx = subprocess.Popen(env.cmd(["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf"]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(env, port)
        global SERVER_PID
        SERVER_PID = nginx.pid  # `ip netns exec` execs nginx: the same process
        url = f"http://127.0.0.1:{port}/"
        where = f"namespace {env.ns.name}" if env.ns else "host loopback (not root: numbers may be skewed)"
        print(f"nginx on 127.0.0.1:{port} in {where}; {os.cpu_count()} CPUs; "
              f"{args.connections} connections, {args.threads} threads/workers, {args.duration:.0f} s per run")

        if args.fixed_rates:
            fixed_rate_rows(env, port, args)
            return 0
        if args.open_only:
            open_loop_rows(env, port, args)
            return 0
        warm = min(3.0, args.duration)
        run_wrk(env, url, args.threads, args.connections, warm)
        run_load(env, port, args.threads, args.connections, warm)

        wrk_rates: list[float] = []
        load_rates: list[float] = []
        wrk_cpu: list[float] = []
        load_cpu: list[float] = []
        for i in range(args.runs):
            order = ("wrk", "load") if i % 2 == 0 else ("load", "wrk")
            for tool in order:
                if tool == "wrk":
                    r = run_wrk(env, url, args.threads, args.connections, args.duration)
                    wrk_rates.append(r["conn_per_s"])
                    wrk_cpu.append(r["cpu_us"])
                    print(f"run {i + 1} wrk:      {r['conn_per_s']:10.0f} conn/s  client CPU {r['cpu_us']:5.1f} us/conn"
                          + (f"  socket errors: {r['errors']}" if r["errors"] else ""))
                else:
                    r = run_load(env, port, args.threads, args.connections, args.duration)
                    load_rates.append(r["conn_per_s"])
                    load_cpu.append(r["cpu_us"])
                    print(f"run {i + 1} tcpreuse: {r['conn_per_s']:10.0f} conn/s  client CPU {r['cpu_us']:5.1f} us/conn"
                          f"  failed {int(r['failed'])}  connect p99 {r['connect_p99_ms']} ms")
        mw, ml = statistics.median(wrk_rates), statistics.median(load_rates)
        ratio = ml / mw if mw else 0.0
        per_run = [lr / wr for lr, wr in zip(load_rates, wrk_rates, strict=True) if wr]
        print(f"median wrk:      {mw:10.0f} conn/s")
        print(f"median tcpreuse: {ml:10.0f} conn/s")
        print(f"client CPU per connection (user+sys, incl. start-up), median: wrk "
              f"{statistics.median(wrk_cpu):.1f} us, tcpreuse {statistics.median(load_cpu):.1f} us")
        print(f"ratio tcpreuse/wrk: {ratio:.3f} (per run: {', '.join(f'{x:.3f}' for x in per_run)}); "
              f"target >= {args.target:.2f}: {'met' if ratio >= args.target else 'NOT met'}")
        open_loop_rows(env, port, args)
        return 0
    finally:
        if nginx is not None:
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
