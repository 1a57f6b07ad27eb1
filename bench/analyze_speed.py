"""How fast is `tcpreuse analyze`? Measured against tshark and a plain dpkt loop, same file, same run.

1. Records a capture of >= 1,000,000 packets (the headline size) with tcpdump, inside a fresh network namespace,
   from a real short-connection run on its loopback (nginx + wrk with "Connection: close";
   without them, `tcpreuse serve` + `tcpreuse load`). Bounded in time; the namespace and
   the capture file are always removed. Its first `--mid-packets` (650,000) records are
   also timed as a second, mid-size capture (command and tshark only), so the figure at
   the issue's 0.5-0.8 M-packet size is printed beside the headline one.
2. Times, pinned to one CPU, `--repeat` times each, and prints medians:
   - `tcpreuse analyze FILE --json` (full analysis: attempts, reuse, TIME_WAIT verdicts,
     findings), as a command (interpreter start included) and in-process (the analysis alone),
     each with the C extension (tcpreuse/capture/_ccap.c) and without it (TCPREUSE_CAPTURE_C=0:
     the numpy reference backend), so both are compared in the same run;
     the command runs as `pip install .` installs it (the headline figure): a throwaway
     venv whose site-packages holds a copy of this build's package (sources and compiled
     modules) and sees the dependencies of the current environment through a plain path
     entry. It is also timed as the editable install of development and CI runs it (its
     import hook costs ~10 ms at every start). Bytecode is compiled once beforehand (a
     temporary PYTHONPYCACHEPREFIX, so a PYTHONDONTWRITEBYTECODE environment does not add
     a recompilation of every module to each run);
   - the command's fixed cost: the same command on the capture's first 100 packets
     (interpreter start, imports, a tiny analysis with its findings, exit);
   - `tshark -r FILE -Y 'tcp.analysis.reused_ports || tcp.flags.reset==1'`;
   - a plain dpkt loop that parses every packet (Ethernet, IP, TCP and its options).
   Wall-clock and CPU time both, because the machine may be shared: CPU time is the
   fairer figure when other jobs compete for the core.
3. Prints packets/s and the ratios against the targets (>= 1,000,000 packets/s on one
   core; >= 20x tshark).

Run as root: `python bench/analyze_speed.py [--packets 1000000] [--mid-packets 650000] [--repeat 3]
[--keep FILE]`, or on any pcap: `--capture FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tcpreuse.lab.netns import Namespace  # noqa: E402

TSHARK_FILTER = "tcp.analysis.reused_ports || tcp.flags.reset==1"
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_timeout 0;
  server {{ listen 127.0.0.1:8080 backlog=8192; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def cpu_for(argv: list[str], cpu: int, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall s, CPU s of the child) for one run of argv pinned to `cpu`."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited with {p.returncode}")
    return wall, ru.ru_utime + ru.ru_stime


def installed_python(work: Path) -> str:
    """A python that imports tcpreuse as `pip install .` leaves it: a new venv with a copy
    of this build's package in its site-packages (no editable-install hook), and the
    current environment's site-packages (numpy, click) on its path. Returns its python."""
    venv = work / "installed"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]
    (site / "tcpreuse-deps.pth").write_text(deps + "\n")  # a path line: its .pth hooks do not run
    shutil.copytree(HERE / "tcpreuse", site / "tcpreuse", ignore=shutil.ignore_patterns("__pycache__"))
    for so in HERE.glob("tcpreuse__mypyc*"):  # mypyc's shared runtime sits next to the package
        shutil.copy2(so, site / so.name)
    where = subprocess.run([py, "-c", "import tcpreuse.capture.backend as b; print(b.__file__, b.ACTIVE.name)"],
                           check=True, capture_output=True, text=True, cwd=work).stdout.split()
    if not where[0].startswith(str(site)) or where[1:] != [backend_name()]:
        raise RuntimeError(f"the installed copy does not import like this build: {where}")
    return py


def first_records(path: Path, k: int) -> bytes:
    """The pcap file's header and its first `k` records (tcpdump writes pcap)."""
    data = path.read_bytes()
    little = data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
    off = 24
    for _ in range(k):
        if off + 16 > len(data):
            break
        off += 16 + int.from_bytes(data[off + 8:off + 12], "little" if little else "big")
    return data[:off]


def backend_name() -> str:
    from tcpreuse.capture import backend

    return backend.ACTIVE.name


def in_process(fn: Callable[[], object]) -> tuple[float, float]:
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def dpkt_loop(path: Path) -> int:
    """What a user writes with dpkt: parse every packet down to TCP options."""
    import dpkt

    n = 0
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and isinstance(ip.data, dpkt.tcp.TCP):
                tcp = ip.data
                dpkt.tcp.parse_opts(tcp.opts)
                n += 1
    return n


def record(path: Path, want: int, max_s: float, ns_prefix: str = "tcpr-bench-an-") -> dict[str, object]:
    """A short-connection run on loopback inside a namespace, captured by tcpdump."""
    ns = Namespace(f"{ns_prefix}{os.getpid() % 100000}")
    tmp = Path(tempfile.mkdtemp(prefix="tcpr-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    info: dict[str, object] = {}
    try:
        ns.create()
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        os.chmod(tmp, 0o755)
        use_wrk = shutil.which("wrk") is not None and shutil.which("nginx") is not None
        if use_wrk:
            (tmp / "nginx.conf").write_text(NGINX_CONF.format(d=tmp))
            procs.append(ns.popen(["nginx", "-c", str(tmp / "nginx.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
        else:
            procs.append(ns.popen([sys.executable, "-m", "tcpreuse", "serve", "--listen", "127.0.0.1:8080",
                                   "--close", "server", "--workers", "2"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        td = ns.popen(["tcpdump", "-i", "lo", "-s", "0", "-B", "131072", "-Z", "root", "-w", str(path),
                       "tcp port 8080"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(td)
        assert td.stderr is not None
        line = td.stderr.readline()
        if b"listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")
        t0 = time.monotonic()
        requests = 0
        while requests * 10 < want * 1.1 and time.monotonic() - t0 < max_s:
            if use_wrk:
                r = ns.run(["wrk", "-t2", "-c32", "-d3s", "-H", "Connection: close", "http://127.0.0.1:8080/"],
                           timeout=30)
                for ln in r.stdout.splitlines():
                    if " requests in " in ln:
                        requests += int(ln.split()[0])
            else:
                r = ns.run([sys.executable, "-m", "tcpreuse", "load", "127.0.0.1:8080", "--concurrency", "32",
                            "--duration", "3", "--close", "server", "--json"], timeout=60, check=False)
                try:
                    requests += int(json.loads(r.stdout)["attempts"])
                except (ValueError, KeyError):
                    requests += 1
        time.sleep(2.0)  # let tcpdump's ring hand over the last blocks
        td.send_signal(signal.SIGINT)
        _, err = td.communicate(timeout=30)
        info = {"generator": "wrk + nginx" if use_wrk else "tcpreuse load + serve", "requests": requests,
                "load_s": round(time.monotonic() - t0, 1),
                "tcpdump": " / ".join(x.strip() for x in err.decode(errors="replace").splitlines() if "packets" in x)}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        ns.delete()
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000, help="minimum packets to record")
    ap.add_argument("--mid-packets", type=int, default=650_000,
                    help="also time the command and tshark on the capture's first N packets (0: not)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last one)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the capture at this path")
    ap.add_argument("--capture", type=Path, default=None, help="use this capture instead of recording one")
    args = ap.parse_args()
    if args.capture is None and os.geteuid() != 0:
        sys.exit("analyze_speed: recording needs root (network namespace, tcpdump); or pass --capture FILE")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="tcpr-bench-cap-"))
    path = (args.capture or work / "bench.pcap").resolve()
    keep = args.keep.resolve() if args.keep else None
    cwd = os.getcwd()
    os.chdir(work)  # `python -m` puts the current directory first on sys.path: not the source tree
    try:
        if args.capture is None:
            info = record(path, args.packets, max_s=60)
            print(f"recorded: {info}")
        from tcpreuse.capture.analysis import analyze_paths
        from tcpreuse.diagnose.base import Evidence, diagnose

        an = analyze_paths([path], jobs=1)[0]
        n = an.packets
        size = path.stat().st_size
        print(f"capture: {n:,} TCP packets, {an.counts()['attempts']:,} attempts, {size / 1e6:.1f} MB; "
              f"pinned to CPU {cpu}; {args.repeat} repeats; medians")
        if n < args.packets:
            print(f"WARNING: fewer packets than asked for ({n:,} < {args.packets:,})")
        os.sched_setaffinity(0, {cpu})
        inst = installed_python(work)
        args_cmd = ["-m", "tcpreuse", "analyze", str(path), "--json"]  # one file: read in this process
        tcpreuse = [inst, *args_cmd]
        editable = [sys.executable, *args_cmd]
        tiny = work / "first-100.pcap"
        tiny.write_bytes(first_records(path, 100))
        imports = [inst, "-m", "tcpreuse", "analyze", str(tiny), "--json"]
        mid = work / "first-mid.pcap"
        n_mid = 0
        if 0 < args.mid_packets < n:
            mid.write_bytes(first_records(path, args.mid_packets))
            n_mid = analyze_paths([mid], jobs=1)[0].packets
        mid_cmd = [inst, "-m", "tcpreuse", "analyze", str(mid), "--json"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        for argv in (tcpreuse, editable):
            cpu_for(argv, cpu, env)  # compiles and caches the bytecode
        from tcpreuse.capture import backend

        env_ref = {**env, "TCPREUSE_CAPTURE_C": "0"}
        with_c = backend.ACTIVE.name == "c"
        if not with_c:
            print("WARNING: the C extension is not built; both rows run the Python paths")
        runs: dict[str, list[tuple[float, float]]] = {"tcpreuse analyze (command)": [],
                                                      "tcpreuse analyze (command), editable": [],
                                                      "tcpreuse analysis (in-process)": [],
                                                      "  fixed cost (command, 100 packets)": [],
                                                      "tcpreuse analyze (command), mid": [],
                                                      "tshark, mid": [],
                                                      "tcpreuse analyze (command), no C": [],
                                                      "tcpreuse analysis (in-process), no C": [],
                                                      "tshark -Y reused_ports||reset": [], "dpkt loop": []}
        last: list[Any] = [an]
        fast = backend.ACTIVE

        def analysis() -> None:
            a = analyze_paths([path], jobs=1)[0]
            diagnose(Evidence(source="analyze", capture=a))
            last[0] = a

        def analysis_ref() -> None:
            backend.ACTIVE = backend.NumpyBackend()
            try:
                diagnose(Evidence(source="analyze", capture=analyze_paths([path], jobs=1)[0]))
            finally:
                backend.ACTIVE = fast

        have_tshark = shutil.which("tshark") is not None
        for rep in range(args.repeat):
            for k in ((0, 1) if rep % 2 == 0 else (1, 0)):  # neither always runs first
                row = ("tcpreuse analyze (command)", "tcpreuse analyze (command), editable")[k]
                runs[row].append(cpu_for((tcpreuse, editable)[k], cpu, env))
            runs["tcpreuse analysis (in-process)"].append(in_process(analysis))
            runs["  fixed cost (command, 100 packets)"].append(cpu_for(imports, cpu, env))
            runs["tcpreuse analyze (command), no C"].append(cpu_for(tcpreuse, cpu, env_ref))
            runs["tcpreuse analysis (in-process), no C"].append(in_process(analysis_ref))
            if have_tshark:
                runs["tshark -Y reused_ports||reset"].append(cpu_for(["tshark", "-n", "-r", str(path), "-Y",
                                                                      TSHARK_FILTER], cpu))
            runs["dpkt loop"].append(in_process(lambda: dpkt_loop(path)))
            if n_mid:
                runs["tcpreuse analyze (command), mid"].append(cpu_for(mid_cmd, cpu, env))
                if have_tshark:
                    runs["tshark, mid"].append(cpu_for(["tshark", "-n", "-r", str(mid), "-Y", TSHARK_FILTER], cpu))
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items() if v}
        print(f"\n{'tool':42} {'wall s':>8} {'pkt/s wall':>12} {'CPU s':>8} {'pkt/s CPU':>12}")
        for k, (w, c) in med.items():
            k_n = n_mid if k.endswith(", mid") else n
            label = k.replace(", mid", f", first {n_mid:,}")
            if k.startswith(" "):  # not a packet rate
                print(f"{label:42} {w:8.3f} {'':12} {c:8.3f}")
            else:
                print(f"{label:42} {w:8.3f} {k_n / w:12,.0f} {c:8.3f} {k_n / c:12,.0f}")
        ours_cmd, ours_in = med["tcpreuse analyze (command)"], med["tcpreuse analysis (in-process)"]
        ours_ed = med["tcpreuse analyze (command), editable"]
        print("(command: as `pip install .` installs it; editable: as `pip install -e .` in development and CI)")
        print("\nratios (how many times faster tcpreuse is), wall / CPU:")
        for other in ("tshark -Y reused_ports||reset", "dpkt loop"):
            if other in med:
                o = med[other]
                print(f"  vs {other:30} command {o[0] / ours_cmd[0]:6.1f}x / {o[1] / ours_cmd[1]:6.1f}x   "
                      f"editable {o[0] / ours_ed[0]:6.1f}x / {o[1] / ours_ed[1]:6.1f}x   "
                      f"in-process {o[0] / ours_in[0]:6.1f}x / {o[1] / ours_in[1]:6.1f}x")
        rate = n / ours_in[1]
        print(f"\ntarget >= 1,000,000 packets/s on one core (in-process, CPU): {rate:,.0f} -> "
              f"{'met' if rate >= 1e6 else 'NOT met'}")
        if "tshark -Y reused_ports||reset" in med:
            r = med["tshark -Y reused_ports||reset"][1] / ours_cmd[1]
            r_in = med["tshark -Y reused_ports||reset"][1] / ours_in[1]
            r_ed = med["tshark -Y reused_ports||reset"][1] / ours_ed[1]
            print(f"target >= 20x tshark (CPU) at {n:,} packets: command {r:.1f}x (editable install {r_ed:.1f}x), "
                  f"in-process {r_in:.1f}x -> "
                  f"{'met' if r >= 20 else ('met in-process only' if r_in >= 20 else 'NOT met')}")
            if "tshark, mid" in med:
                r_mid = med["tshark, mid"][1] / med["tcpreuse analyze (command), mid"][1]
                print(f"target >= 20x tshark (CPU) at {n_mid:,} packets (the same recording's first part): "
                      f"command {r_mid:.1f}x -> {'met' if r_mid >= 20 else 'NOT met'}")
            fixed = med["  fixed cost (command, 100 packets)"][1]
            print(f"the command's fixed cost (on 100 packets) is {fixed:.3f} s CPU: 20x tshark as a command "
                  f"leaves {med['tshark -Y reused_ports||reset'][1] / 20 - fixed:.3f} s for reading and "
                  f"analysing {n:,} packets; the command spent {ours_cmd[1] - fixed:.3f} s on them")
        ref_cmd, ref_in = med["tcpreuse analyze (command), no C"], med["tcpreuse analysis (in-process), no C"]
        print(f"C extension vs without (CPU): command {ref_cmd[1] / ours_cmd[1]:.2f}x, "
              f"in-process {ref_in[1] / ours_in[1]:.2f}x faster")
        print(f"analysis phases (s, last in-process run): { {k: round(v, 3) for k, v in last[0].timing.items()} }")
    finally:
        os.chdir(cwd)
        if keep and args.capture is None and path.exists():
            shutil.move(str(path), keep)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
