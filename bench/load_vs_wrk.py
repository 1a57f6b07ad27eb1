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

    python bench/load_vs_wrk.py [--runs 3] [--duration 10] [--connections 50]
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

    def __init__(self) -> None:
        self.ns: Namespace | None = None
        if os.geteuid() == 0 and shutil.which("ip"):
            self.ns = Namespace(f"tcpr-lvw-{os.getpid()}").create()

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2, help="wrk -t and tcpreuse --workers")
    ap.add_argument("--target", type=float, default=0.90)
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (scripts/system-deps.sh installs it)", file=sys.stderr)
            return 2

    env = Env()
    nginx: subprocess.Popen[bytes] | None = None
    tmp = tempfile.mkdtemp(prefix="tcpr-lvw-")
    try:
        port = 18080 if env.ns else free_port()
        Path(tmp, "nginx.conf").write_text(NGINX_CONF.format(workers="auto", tmp=tmp, port=port))
        nginx = subprocess.Popen(env.cmd(["nginx", "-p", tmp, "-c", f"{tmp}/nginx.conf"]),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(env, port)
        url = f"http://127.0.0.1:{port}/"
        where = f"namespace {env.ns.name}" if env.ns else "host loopback (not root: numbers may be skewed)"
        print(f"nginx on 127.0.0.1:{port} in {where}; {os.cpu_count()} CPUs; "
              f"{args.connections} connections, {args.threads} threads/workers, {args.duration:.0f} s per run")

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
