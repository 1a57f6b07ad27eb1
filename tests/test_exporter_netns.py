"""`tcpreuse exporter` on the real kernel: a client runs out of a 1,000-port range.

Two "tcpr-ex-" namespaces joined by a veth link: a server, and a client whose
ip_local_port_range holds 1,000 ports, opening 20 connections/s to the server and closing
first (each port then waits 60 s in TIME_WAIT). The exporter runs as the installed command
does, watching the client namespace (--netns), and the test scrapes it over HTTP once a
second. The scrapes must show the tuple's ports in use rising to the budget and its time
to exhaustion falling to 0 before the kernel refuses the next connect() with
EADDRNOTAVAIL; the recorded series, fed to `promtool test rules`, must make the
exhaustion alerts fire.

The client stops after its 1,000th connection until the test has scraped once more: in a
free-running client the window between the last free port and the failing connect() is
1/rate (50 ms), and a scrape would land there only by luck.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.netns import namespace
from prometheus_client.parser import text_string_to_metric_families

from tcpreuse.lab.netns import Namespace, veth_pair

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy/prometheus/tcpreuse-rules.yml"
RATE, PORTS, SERVER, PORT = 20, 1000, "10.77.0.2", 8080

SERVE = r"""
import selectors, socket, sys
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1]))); l.listen(1024); l.setblocking(False)
sel = selectors.DefaultSelector(); sel.register(l, selectors.EVENT_READ); sel.register(sys.stdin, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is sys.stdin:
            raise SystemExit
        if s is l:
            c, _ = l.accept(); c.setblocking(False); sel.register(c, selectors.EVENT_READ)
        else:  # the client closed first: close too (the client keeps the TIME_WAIT)
            sel.unregister(s); s.close()
"""

CLIENT = r"""
import errno, json, socket, sys, time
dst, port, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
out = lambda d: print(json.dumps(d), flush=True)
start = time.monotonic()
for ok in range(n):
    due = start + ok / rate
    if due > time.monotonic():
        time.sleep(due - time.monotonic())
    c = socket.socket(); c.connect((dst, port)); c.close()
    if (ok + 1) % 100 == 0:
        out({"ok": ok + 1, "t": time.monotonic()})
out({"done": n, "t": time.monotonic()})
sys.stdin.readline()  # the test scraped the full tuple: now the connect() that must fail
c = socket.socket()
try:
    c.connect((dst, port)); out({"errno": None})
except OSError as e:
    out({"errno": errno.errorcode.get(e.errno), "t_fail": time.monotonic()})
sys.stdin.read()
"""


class Proc:
    def __init__(self, argv: list[str], **kw: object) -> None:
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]

    def line(self) -> str:
        assert self.p.stdout is not None
        ln = self.p.stdout.readline()
        if not ln:
            raise AssertionError(f"{self.p.args[:6]} ended without output")
        return ln

    def send(self, text: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(text)
        self.p.stdin.flush()

    def stop(self, terminate: bool = False) -> None:
        try:
            if terminate:
                self.p.terminate()  # the exporter serves until SIGTERM, as under systemd
            if self.p.stdin:
                self.p.stdin.close()
            self.p.wait(timeout=5)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self.p.kill()
            self.p.wait()


@pytest.fixture
def pair() -> Iterator[tuple[Namespace, Namespace]]:
    made = []
    try:
        client = namespace("exc", net__ipv4__ip_local_port_range="40000 40999", net__ipv4__tcp_tw_reuse=0)
        made.append(client)
        client.create()
        server = namespace("exs")
        made.append(server)
        server.create()
        veth_pair(client, "tcpr-exc0", server, "tcpr-exs0")
        client.run(["ip", "addr", "add", "10.77.0.1/24", "dev", "tcpr-exc0"])
        server.run(["ip", "addr", "add", f"{SERVER}/24", "dev", "tcpr-exs0"])
        yield client, server
    finally:
        for ns in made:
            ns.delete()


def scrape(url: str) -> dict[str, list]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list] = {"_text": [text]}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def tuple_value(m: dict[str, list], name: str) -> float | None:
    got = [v for lab, v in m.get(name, []) if lab.get("dst") == SERVER and lab.get("dport") == str(PORT)]
    return got[0] if got else None


def promtool_test(series: list[dict], labels: dict[str, str]) -> str:
    """A promtool rule test over the recorded scrapes (one sample per second)."""
    def values(key: str) -> str:
        return " ".join("_" if s[key] is None else ("+Inf" if math.isinf(s[key]) else f"{s[key]:g}") for s in series)

    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    last = len(series) - 1
    lab = ", ".join(f"{k}: {json.dumps(v)}" for k, v in labels.items())
    tuple_txt = f"{labels['src']} -> {labels['dst']}:{labels['dport']}"
    return f"""# Recorded by tests/test_exporter_netns.py: {len(series)} scrapes, one per second, of a
# client exhausting a 1,000-port range at {RATE} connections/s.
rule_files:
  - {RULES}
evaluation_interval: 1s
tests:
  - interval: 1s
    input_series:
      - series: 'tcpreuse_tuple_time_to_exhaustion_seconds{{{sel}}}'
        values: '{values("tte")}'
      - series: 'tcpreuse_tuple_ports_in_use{{{sel}}}'
        values: '{values("in_use")}'
      - series: 'tcpreuse_tuple_ports_budget{{{sel}}}'
        values: '{values("budget")}'
    alert_rule_test:
      - eval_time: 1s
        alertname: TcpreuseTuplePortExhaustionSoon
        exp_alerts: []
      - eval_time: {last}s
        alertname: TcpreuseTuplePortExhaustionSoon
        exp_alerts:
          - exp_labels: {{severity: critical, {lab}}}
            exp_annotations:
              summary: "{tuple_txt} runs out of local ports in 0s"
              description: "At the current new-connection rate connect() from {labels['src']} to {labels['dst']}:{labels['dport']} will fail with EADDRNOTAVAIL in 0s. Run `tcpreuse doctor` on {labels['instance']} for the cause and the fixes (keep-alive, tcp_tw_reuse, a wider port range, more source addresses)."
      - eval_time: {last}s
        alertname: TcpreuseTuplePortsExhausted
        exp_alerts:
          - exp_labels: {{severity: critical, {lab}}}
            exp_annotations:
              summary: "{tuple_txt}: every local port is in use"
              description: "All {PORTS} ports connect() may use toward {labels['dst']}:{labels['dport']} are taken (established or TIME_WAIT): new connections fail with EADDRNOTAVAIL."
"""


def test_scrapes_follow_a_client_to_exhaustion_and_the_alert_fires(pair, tmp_path: Path) -> None:
    client, server = pair
    srv = Proc(["ip", "netns", "exec", server.name, sys.executable, "-c", SERVE, str(PORT)])
    exp = cli = None
    try:
        assert srv.line().strip() == "listening"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        exp = Proc([sys.executable, "-m", "tcpreuse", "exporter", "--netns", client.name, "--listen", "127.0.0.1:0",
                    "--interval", "0"], stderr=subprocess.PIPE, env=env, cwd=REPO)
        assert exp.p.stderr is not None
        banner = exp.p.stderr.readline()
        assert "serving http://127.0.0.1:" in banner, banner + exp.p.stderr.read()
        url = banner.split("serving ", 1)[1].split()[0]
        assert "tcpreuse_up 1.0" in scrape(url)["_text"][0]

        cli = Proc(["ip", "netns", "exec", client.name, sys.executable, "-c", CLIENT, SERVER, str(PORT), str(PORTS),
                    str(RATE)])
        os.set_blocking(cli.p.stdout.fileno(), False)  # type: ignore[union-attr]
        series: list[dict] = []
        done_at = None
        t0 = time.monotonic()
        k = 0
        while True:
            due = t0 + k
            time.sleep(max(0.0, due - time.monotonic()))
            k += 1
            t = time.monotonic()
            m = scrape(url)
            series.append({"t": t, "in_use": tuple_value(m, "tcpreuse_tuple_ports_in_use"),
                           "budget": tuple_value(m, "tcpreuse_tuple_ports_budget"),
                           "tte": tuple_value(m, "tcpreuse_tuple_time_to_exhaustion_seconds"),
                           "rate": tuple_value(m, "tcpreuse_tuple_new_connections_per_second"),
                           "tw": tuple_value(m, "tcpreuse_tuple_time_wait_sockets")})
            for ln in iter(cli.p.stdout.readline, ""):  # type: ignore[union-attr]
                d = json.loads(ln)
                if "done" in d:
                    done_at = d["t"]
            if done_at is not None and t > done_at:
                break  # this scrape read the namespace after the 1,000th connect()
            assert k < 2 * PORTS / RATE, "the client did not finish"
            if k == 3:
                last_text = m["_text"][0]
        os.set_blocking(cli.p.stdout.fileno(), True)  # type: ignore[union-attr]
        cli.send("go\n")
        final = json.loads(cli.line())
        (tmp_path / "series.json").write_text(json.dumps(series, indent=1))

        # The kernel's verdict comes after the last scrape: EADDRNOTAVAIL for connection 1,001.
        assert final["errno"] == "EADDRNOTAVAIL" and final["t_fail"] > series[-1]["t"]
        seen = [s for s in series if s["in_use"] is not None]
        assert len(seen) >= 0.8 * PORTS / RATE
        assert all(s["budget"] == PORTS for s in seen)
        # ports in use rise to the budget (the server's FIN may lag a socket or two)
        uses = [s["in_use"] for s in seen]
        assert all(b >= a - 2 for a, b in itertools.pairwise(uses)) and uses[-1] == PORTS
        assert seen[-1]["tw"] >= 0.95 * PORTS  # the server's FIN for the last few may still be on its way
        # the rate is the client's, and time to exhaustion falls to 0
        rates = [s["rate"] for s in seen[2:-1] if s["rate"] is not None]
        assert rates and abs(sorted(rates)[len(rates) // 2] - RATE) < 0.2 * RATE
        ttes = [s["tte"] for s in seen if s["tte"] is not None and not math.isinf(s["tte"])]
        assert len(ttes) >= 0.7 * len(seen) and ttes[-1] == 0
        # falls: a rate over 1 s windows wobbles by ~10 % on a loaded machine, and so does a
        # projection 40 s out; ten scrapes apart (10 s less to go) it must have fallen
        assert all(b < a for a, b in zip(ttes, ttes[10:], strict=False))
        # and it predicted the end: scrape time + projection ~ when the 1,000th connect() came
        for s in seen:
            if s["tte"] and not math.isinf(s["tte"]) and s["in_use"] >= 200:
                assert abs(s["t"] + s["tte"] - done_at) < 2 + 0.3 * s["tte"], (s, done_at)

        # promtool: a scrape with the tuple series is well-formed; the alerts fire on the series
        if shutil.which("promtool"):
            r = subprocess.run(["promtool", "check", "metrics"], input=last_text, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            labels = {"instance": "client:9946", "job": "tcpreuse", "src": "10.77.0.1", "dst": SERVER,
                      "dport": str(PORT)}
            test_file = tmp_path / "recorded-exhaustion-test.yml"
            test_file.write_text(promtool_test(seen, labels))
            r = subprocess.run(["promtool", "test", "rules", str(test_file)], capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, r.stdout + r.stderr
            record = os.environ.get("TCPREUSE_RECORD_EXPORTER_SERIES")
            if record:  # opt-in: TCPREUSE_RECORD_EXPORTER_SERIES=deploy/prometheus/tests/recorded-exhaustion-test.yml: keep this run's series as a committed promtool test
                Path(record).write_text(promtool_test(seen, labels).replace(f"  - {RULES}", "  - ../tcpreuse-rules.yml"))
    finally:
        for p in (cli, exp, srv):
            if p is not None:
                p.stop(terminate=p is exp)
