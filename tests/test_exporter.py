"""`tcpreuse exporter`: doctor's numbers as Prometheus metrics (no root, no namespaces).

Replays the snapshot recorded by doctor's real-kernel exhaustion test through the
exporter's reader (one read per scrape, rates between reads) and checks the scrape
against doctor's own diagnosis of the same snapshot; bounded cardinality on a synthetic
table; the alert rules, the dashboard and the scrape through promtool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import Cli
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tcpreuse.diagnose.base import diagnose, evidence_of
from tcpreuse.exporter.collector import parse_listen, registry_for, serve
from tcpreuse.exporter.reader import ProcfsSource, Reader
from tcpreuse.host.observed import parse_proc_counters
from tcpreuse.host.raw import RawSample
from tcpreuse.host.snapshot import load
from tcpreuse.host.sockets import (
    SOCK_DTYPE,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    TCP_NEW_SYN_RECV,
    SockTable,
    addr_bytes,
)
from tcpreuse.host.source import FixtureSource, SnapshotSource

REPO = Path(__file__).resolve().parent.parent
SNAP = REPO / "tests/data/host/client7-churn.tar.gz"
RULES = REPO / "deploy/prometheus/tcpreuse-rules.yml"
DASHBOARD = REPO / "deploy/grafana/tcpreuse.json"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing (Debian package prometheus; scripts/system-deps.sh)")


class Replay(FixtureSource):
    """The live collection over recorded samples: the k-th collect() sees sample k."""

    def __init__(self, samples: list[RawSample], **kw: object) -> None:
        super().__init__({}, sockets=[s.sockets for s in samples if s.sockets is not None], **kw)
        self.samples = samples
        self.k = -1

    def collect(self):  # type: ignore[no-untyped-def]
        self.k += 1
        s = self.samples[min(self.k, len(self.samples) - 1)]
        # sysctls are read once per doctor run, so only the first sample has them
        self.files = {**self.samples[0].files, **s.files}
        return super().collect()

    def now(self) -> float:
        return self.samples[min(self.k, len(self.samples) - 1)].t


def scrape(reader: Reader, top: int = 20) -> dict[str, list]:
    text = generate_latest(registry_for(reader, 0.0, top, process_metrics=False)).decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def one(samples: dict[str, list], name: str, **labels: str) -> float:
    got = [v for lab, v in samples.get(name, []) if all(lab.get(k) == v2 for k, v2 in labels.items())]
    assert len(got) == 1, (name, labels, samples.get(name))
    return got[0]


def test_scrape_of_recorded_exhaustion_matches_doctor() -> None:
    raw = load(SNAP)
    reader = Reader(Replay(raw.samples, name="client-7"))
    reader.prime()
    m = scrape(reader)
    (h,) = evidence_of([SnapshotSource(SNAP).observe()]).hosts.values()  # doctor's own reading
    t = h.tuples[0]
    lab = {"src": "127.0.0.1", "dst": "127.0.0.1", "dport": "8080"}
    assert one(m, "tcpreuse_up") == 1
    assert one(m, "tcpreuse_tuple_ports_in_use", **lab) == t.in_use > 400
    assert one(m, "tcpreuse_tuple_ports_budget", **lab) == t.budget == 1000
    assert one(m, "tcpreuse_tuple_time_wait_sockets", **lab) == t.time_wait
    assert one(m, "tcpreuse_tuple_new_connections_per_second", **lab) == pytest.approx(t.rate_per_s)
    assert 0 < one(m, "tcpreuse_tuple_time_to_exhaustion_seconds", **lab) == pytest.approx(t.seconds_to_exhaustion)
    assert one(m, "tcpreuse_read_window_seconds") == pytest.approx(raw.samples[1].t - raw.samples[0].t)
    assert one(m, "tcpreuse_port_budget_ports") == 1000
    assert one(m, "tcpreuse_finding", id="tuple-port-exhaustion", severity="critical") == 1
    assert {f.id for f in diagnose(evidence_of([SnapshotSource(SNAP).observe()]))} == {
        lab["id"] for lab, _ in m["tcpreuse_finding"]}
    # kernel counters by nstat name, as counters; absent ones are not exported
    opens = one(m, "tcpreuse_nstat_total", counter="TcpActiveOpens")
    assert opens == h.counters_absolute["TcpActiveOpens"]
    names = {lab["counter"] for lab, _ in m["tcpreuse_nstat_total"]}
    assert "TcpExtPAWSTimewait" in names and "TcpExtPAWSPassive" not in names  # 6.18: gone
    info = m["tcpreuse_host_info"][0][0]
    assert info["kernel_release"] == "6.18.44-fc-v595" and info["role"] == "client" and info["host"] == "client-7"


def test_first_read_without_previous_has_no_rates() -> None:
    raw = load(SNAP)
    reader = Reader(Replay(raw.samples[1:]))
    m = scrape(reader)  # no prime(): one sample, nothing to take a rate over
    lab = {"src": "127.0.0.1", "dst": "127.0.0.1", "dport": "8080"}
    assert "tcpreuse_tuple_new_connections_per_second" not in m
    assert "tcpreuse_read_window_seconds" not in m
    assert one(m, "tcpreuse_tuple_ports_in_use", **lab) == 504  # 505 sockets, one the listener


def _table(rows: list[tuple]) -> SockTable:
    a = np.zeros(len(rows), dtype=SOCK_DTYPE)
    for i, (state, src, sport, dst, dport, extra) in enumerate(rows):
        a[i]["family"], a[i]["state"], a[i]["sport"], a[i]["dport"] = 2, state, sport, dport
        a[i]["src"], a[i]["dst"], a[i]["cookie"], a[i]["ts"] = addr_bytes(src), addr_bytes(dst), i + 1, -1
        for k, v in extra.items():
            a[i][k] = v
    return SockTable(a)


def test_cardinality_is_bounded_and_the_rest_is_summed() -> None:
    """60 destinations with 1..60 connections each: --top 5 exports five tuples (the most
    used), and the other 55 are counted and summed, so nothing is lost from the totals."""
    rows: list[tuple] = [(TCP_LISTEN, "0.0.0.0", 8080, "0.0.0.0", 0, {"rqueue": 7, "wqueue": 8}),
                         (TCP_NEW_SYN_RECV, "10.0.0.1", 8080, "10.9.9.9", 5555, {})]
    port = 40000
    for d in range(60):
        for _ in range(d + 1):
            rows.append((TCP_ESTABLISHED, "10.0.0.1", port, f"10.1.0.{d}", 443, {}))
            port += 1
    files = {"/proc/sys/net/ipv4/ip_local_port_range": "32768 60999\n", "/proc/sys/kernel/osrelease": "6.1.0\n"}
    reader = Reader(FixtureSource(files, sockets=[_table(rows)]))
    m = scrape(reader, top=5)
    series = m["tcpreuse_tuple_ports_in_use"]
    assert sorted(v for _, v in series) == [56, 57, 58, 59, 60]
    assert {lab["dst"] for lab, _ in series} == {f"10.1.0.{d}" for d in range(55, 60)}
    assert one(m, "tcpreuse_tuples") == 60 and one(m, "tcpreuse_tuples_other") == 55
    assert one(m, "tcpreuse_tuples_other_ports_in_use") == sum(range(1, 56))
    assert one(m, "tcpreuse_tuples_other_max_ports_in_use") == 55
    assert one(m, "tcpreuse_listener_accept_queue", address="0.0.0.0", port="8080") == 7
    assert one(m, "tcpreuse_listener_accept_queue_limit", address="0.0.0.0", port="8080") == 8
    assert one(m, "tcpreuse_listener_syn_recv", address="0.0.0.0", port="8080") == 1
    # no rate yet: the projection is unknown, not "never"
    assert "tcpreuse_tuple_time_to_exhaustion_seconds" not in m


def test_procfs_root_is_where_proc_is_read(tmp_path: Path) -> None:
    """--procfs: sysctls and counters come from another procfs mount (a container's
    /host/proc); here a directory laid out like one."""
    raw = load(SNAP)
    root = tmp_path / "hostproc"
    for p, text in raw.samples[0].files.items():
        rel = p.removeprefix("/proc/")
        if rel.startswith("net/"):
            rel = "thread-self/" + rel
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "sys/net/ipv4/ip_local_port_range").write_text("50000\t50499\n")
    src = ProcfsSource(str(root), interval=0.0)
    reader = Reader(src)
    m = scrape(reader)
    assert one(m, "tcpreuse_port_range_ports") == 500
    snmp, _ = parse_proc_counters(raw.samples[0].files["/proc/net/snmp"], "snmp")
    assert one(m, "tcpreuse_nstat_total", counter="TcpActiveOpens") == snmp["TcpActiveOpens"]
    assert m["tcpreuse_host_info"][0][0]["kernel_release"] == "6.18.44-fc-v595"


def test_http_endpoint_serves_openmetrics_and_reads_at_most_once_per_interval() -> None:
    raw = load(SNAP)
    src = Replay(raw.samples)
    reader = Reader(src)
    reader.prime()
    server, _t, url = serve(reader, "127.0.0.1:0", interval=60.0, top=20)
    try:
        req = urllib.request.Request(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode()
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n") and "tcpreuse_tuple_ports_in_use{" in body
        with urllib.request.urlopen(url, timeout=10) as r:
            assert "process_resident_memory_bytes" in r.read().decode()
        assert src.k == 1  # two scrapes within --interval: one read after the priming one
    finally:
        server.shutdown()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("text", "want"), [
    ("9946", ("127.0.0.1", 9946)), (":9946", ("127.0.0.1", 9946)), ("0.0.0.0:9", ("0.0.0.0", 9)),
    ("[::]:9946", ("::", 9946)), ("[::1]:80", ("::1", 80))])
def test_listen_address_defaults_to_loopback(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(("args", "message"), [
    (["exporter", "--listen", "localhost:http"], "not HOST:PORT"),
    (["exporter", "--listen", "127.0.0.1:70000"], "port out of range"),
    (["exporter", "--netns", "tcpr-ex-no-such-namespace"], "no network namespace named"),
    (["exporter", "--netns", "/nonexistent/ns/net"], "no network namespace file /nonexistent/ns/net"),
    (["exporter", "--procfs", "/nonexistent"], "/nonexistent is not a procfs mount"),
    (["exporter", "--top", "50"], "Invalid value for '--top'"),
    (["doctor", "--serve-metrics", ":9946", "--json"], "--serve-metrics takes only"),
])
def test_bad_options_are_one_line(cli: Cli, args: list[str], message: str) -> None:
    code, _, err = cli(args)
    assert code == 2 and message in err and "Traceback" not in err


# ---- promtool: the scrape, the rules, their unit tests --------------------------------------

@needs_promtool
def test_promtool_accepts_a_scrape_of_this_host(cli: Cli) -> None:
    code, out, err = cli(["exporter", "--once", "--interval", "0.2"])
    assert code == 0, err
    assert "tcpreuse_up 1.0" in out
    r = subprocess.run(["promtool", "check", "metrics"], input=out, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_accepts_the_recorded_scrape() -> None:
    raw = load(SNAP)
    reader = Reader(Replay(raw.samples))
    reader.prime()
    text = generate_latest(registry_for(reader, 0.0, 20)).decode()
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    r = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tests = sorted(str(p) for p in (RULES.parent / "tests").glob("*.yml"))
    assert tests
    r = subprocess.run(["promtool", "test", "rules", *tests], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- every metric the rules and the dashboard use is one the exporter exports ---------------

def exported_names() -> set[str]:
    """Names of every series the exporter can emit (families over a full reading)."""
    from tcpreuse.exporter.metrics import families

    raw = load(SNAP)
    reader = Reader(Replay(raw.samples))
    reader.prime()
    names = {"tcpreuse_up"}
    for fam in families(reader.read()):
        names |= {s.name for s in fam.samples} | {fam.name + ("_total" if fam.type == "counter" else "")}
    names |= {"tcpreuse_conntrack_entries", "tcpreuse_conntrack_entries_limit"}  # only with nf_conntrack
    return names


PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "without", "on",
                "ignoring", "group_left", "group_right", "topk", "bottomk", "clamp_max", "clamp_min", "and",
                "or", "unless", "offset", "bool", "time", "vector", "scalar", "label_replace", "abs",
                "sort_desc", "delta", "deriv", "max_over_time", "min_over_time", "last_over_time", "inf"}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w.lower() not in PROMQL_WORDS | {"nan"} and not re.fullmatch(r"\d.*|e\d*", w)}


def test_rules_use_only_exported_metrics() -> None:
    import yaml

    exported = exported_names()
    doc = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= exported, used - exported


def test_dashboard_is_valid_and_uses_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p.get("type") != "row"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
              for v in dash.get("templating", {}).get("list", []) if v.get("type") == "query"]
    used = set().union(*(metric_names(re.sub(r"label_values\(([^,]*),[^)]*\)", r"\1", e)) for e in exprs))
    exported = exported_names()
    assert len(panels) >= 8 and used <= exported, used - exported
    # the per-tuple budget, TIME_WAIT, rate and time to exhaustion are all on it
    for name in ("tcpreuse_tuple_ports_in_use", "tcpreuse_tuple_ports_budget", "tcpreuse_tuple_time_wait_sockets",
                 "tcpreuse_tuple_new_connections_per_second", "tcpreuse_tuple_time_to_exhaustion_seconds",
                 "tcpreuse_listener_accept_queue", "tcpreuse_nstat_total", "tcpreuse_finding"):
        assert name in used
    assert len({p["id"] for p in panels}) == len(panels)


@needs_promtool
def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, is valid PromQL (promtool
    parses it as a recording rule)."""
    import yaml

    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = [{"record": f"tcpreuse:dashboard_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, e in enumerate(exprs)]
    f = tmp_path / "dashboard-rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and f"{len(exprs)} rules found" in r.stdout, r.stdout + r.stderr


def test_reads_happen_on_one_thread_whatever_thread_scrapes() -> None:
    """The HTTP server answers each scrape on a new thread; reads must all run on one
    (per-thread malloc arenas made the exporter's memory climb with every scrape)."""
    import threading

    seen: set[int] = set()

    class Recording(FixtureSource):
        def read_sockets(self, with_info: bool):  # type: ignore[no-untyped-def]
            seen.add(threading.get_ident())
            return super().read_sockets(with_info)

    reader = Reader(Recording({}, sockets=[SockTable.empty()]))
    server, _t, url = serve(reader, "127.0.0.1:0", interval=0.0, top=20)
    try:
        for _ in range(4):
            with urllib.request.urlopen(url, timeout=10) as r:
                assert b"tcpreuse_up 1.0" in r.read()
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    assert len(seen) == 1 and threading.get_ident() not in seen


def test_a_failing_read_is_up_0_and_the_exporter_recovers(caplog: pytest.LogCaptureFixture) -> None:
    from tcpreuse.errors import HostError

    class Flaky(FixtureSource):
        broken = False

        def collect(self):  # type: ignore[no-untyped-def]
            if self.broken:
                raise HostError("no network namespace named 'web1'")
            return super().collect()

    src = Flaky({}, sockets=[SockTable.empty()])
    reader = Reader(src)
    reader.prime()
    reg = registry_for(reader, 0.0, 20, process_metrics=False)

    def get() -> str:
        return generate_latest(reg).decode()

    assert "tcpreuse_up 1.0" in get()
    src.broken = True
    text = get()
    assert "tcpreuse_up 0.0" in text and "tcpreuse_tuples" not in text
    get()
    assert [r.getMessage() for r in caplog.records] == ["read failed: no network namespace named 'web1'"]  # once
    src.broken = False
    assert "tcpreuse_up 1.0" in get()


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a namespace needs root")
def test_netns_by_file_path(cli: Cli) -> None:
    """--netns /proc/PID/ns/net: a namespace by its file, as a container's is found."""
    code, out, err = cli(["exporter", "--once", "--interval", "0", "--netns", "/proc/self/ns/net"])
    assert code == 0, err
    assert 'netns="/proc/self/ns/net"' in out and "tcpreuse_up 1.0" in out
