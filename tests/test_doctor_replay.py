"""`tcpreuse doctor` on recorded inputs (tests/data/host/) and on bad input.

The recorded inputs: a CentOS 6 back end with tcp_tw_recycle=1 (pasted `sysctl -a`,
`netstat -s`, `ss -tan`), a Windows 2012 R2 load generator without timestamps (`netsh`,
UTF-16 `netstat -ano`), a 6.18 client with tcp_tw_reuse=1 and timestamps off (real
`ss -tanoe`, `nstat -az`, `sysctl -a` taken in a namespace), and a `--save` snapshot of
a client exhausting a 1,000-port range (real, two samples one second apart).
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tcpreuse.cli import main
from tcpreuse.diagnose.base import diagnose, evidence_of
from tcpreuse.errors import HostError
from tcpreuse.findings import Finding
from tcpreuse.host import sources_for
from tcpreuse.host.observed import CounterSample, Observed, SocketSample
from tcpreuse.host.paste import parse_text, to_observed
from tcpreuse.host.sockets import SOCK_DTYPE, TCP_LISTEN, TCP_TIME_WAIT, SockTable, addr_bytes
from tcpreuse.host.source import FixtureSource, LinuxSource

DATA = Path(__file__).parent / "data" / "host"
CENTOS = [DATA / f"centos6-web31-{n}.txt" for n in ("sysctl-a", "netstat-s", "ss-tan")]
WINDOWS = [DATA / "win2012-loadgen-netsh.txt", DATA / "win2012-loadgen-netstat-ano.txt"]
LINUX618 = [DATA / f"linux618-client-{n}.txt" for n in ("ss-tanoe", "nstat-az", "sysctl-a")]
SNAP = DATA / "client7-churn.tar.gz"


def run(files: list[Path], **kw: object) -> tuple[dict, list[Finding]]:
    ev = evidence_of([s.observe() for s in sources_for([str(f) for f in files], **kw)])  # type: ignore[arg-type]
    return ev.hosts, diagnose(ev)


def one(findings: list[Finding], fid: str) -> Finding:
    (f,) = [f for f in findings if f.id == fid]
    return f


def val(f: Finding, label: str) -> object:
    return next(e.value for e in f.evidence if e.label == label)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["doctor", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# ---- recorded inputs --------------------------------------------------------------------

def test_centos6_tw_recycle_from_pasted_sysctl_and_netstat() -> None:
    hosts, findings = run(CENTOS[:2])
    (h,) = hosts.values()
    assert (h.name, h.profile, h.kernel, h.role) == ("web-31", "linux-2.6.32-el6", (2, 6, 32), "server")
    f = one(findings, "tw-recycle-enabled")
    assert f.severity == "critical" and f.confidence == 0.95 and findings[0] is f
    assert val(f, "TcpExtPAWSPassive since boot") == 1_234_567
    assert "(inet_peer)" in f.cause  # 2.6.32 keys the cache by peer IP only
    assert f.fixes[0].set == {"server:net.ipv4.tcp_tw_recycle": 0}
    assert f.fixes[0].commands[0] == "sysctl -w net.ipv4.tcp_tw_recycle=0"
    # EL6 has no TCPTimeWaitOverflow counter: absent, not 0; netstat -s omitted TWKilled: 0
    assert "TcpExtTCPTimeWaitOverflow" in h.counters_absent
    assert h.counters_absolute["TcpExtTWKilled"] == 0 and h.counters_absolute["TcpExtTW"] == 96_533_201
    assert any("permission denied on key" in n for n in h.extra["notes"])  # sysctl's stderr, reported
    assert one(findings, "fin-timeout-does-not-shorten-timewait").evidence[0].value == 30
    assert {f.id for f in findings} == {"tw-recycle-enabled", "listen-queue-overflow",
                                        "fin-timeout-does-not-shorten-timewait", "port-range-same-parity"}
    lq = one(findings, "listen-queue-overflow")
    assert lq.severity == "warning" and "4,566 overflows since boot" in lq.title


def test_windows_client_without_timestamps_alone_and_with_its_server() -> None:
    hosts, findings = run(WINDOWS)
    (w,) = hosts.values()
    assert (w.os, w.profile, w.role) == ("windows", "windows-2016", "client")
    f = one(findings, "windows-client-no-timestamps")
    assert f.severity == "warning" and f.confidence == 0.65
    assert val(f, "RFC 1323 Timestamps") == "disabled"
    assert val(f, "new connections/s above which a port returns within a Linux server's 60 s TIME_WAIT") == 273.1
    assert val(f, "busiest destination") == "103.17.41.3:9313"
    assert f.fixes[0].commands[0] == "netsh int tcp set global timestamps=enabled"
    assert f.fixes[0].set == {"client:netsh.tcp.timestamps": "enabled"}
    assert w.tuples[0].established == 48 and w.tuples[0].time_wait == 4

    hosts, findings = run(WINDOWS + CENTOS)
    assert set(hosts) == {"win2012-loadgen-netsh.txt", "web-31"}
    f = one(findings, "windows-client-no-timestamps")
    assert f.severity == "critical" and f.confidence == 0.85
    assert val(f, "Linux server web-31: TIME_WAIT on the service port") == 150
    assert "tcp_tw_recycle=1 is set on a server here" in f.fixes[0].caveat
    assert f.hosts == ["win2012-loadgen-netsh.txt", "web-31"]


def test_linux618_client_reuse_without_timestamps_from_real_pastes() -> None:
    hosts, findings = run(LINUX618)
    (h,) = hosts.values()
    assert h.profile == "linux-6.18.44" and h.role == "client"
    f = one(findings, "tw-reuse-without-timestamps")
    assert f.severity == "critical" and val(f, "TcpExtTWRecycled since boot") == 0
    t = h.tuples[0]
    assert (t.in_use, t.budget, t.time_wait, t.seconds_to_exhaustion) == (300, 300, 300, 0.0)
    assert t.next_free_in_s == 59.0  # from ss -o timers
    assert one(findings, "tuple-port-exhaustion").severity == "critical"
    assert "TcpExtPAWSPassive" in h.counters_absent and "TcpExtPAWSTimewait" not in h.counters_absent


def test_snapshot_of_a_client_running_out_of_ports() -> None:
    hosts, findings = run([SNAP])
    (h,) = hosts.values()
    assert (h.name, h.role, h.window_s is not None) == ("client-7", "client", True)
    t = h.tuples[0]
    assert (t.src, t.dst, t.dport, t.budget, t.in_use) == ("127.0.0.1", "127.0.0.1", 8080, 1000, 504)
    assert t.rate_per_s == pytest.approx(200, rel=0.02)
    assert t.seconds_to_exhaustion == pytest.approx(2.5, abs=0.1)  # (1000 - 504) / 200
    f = one(findings, "tuple-port-exhaustion")
    assert f.severity == "critical" and "exhausted in 2.5 s at 200/s" in f.title
    assert one(findings, "fin-timeout-does-not-shorten-timewait").evidence[0].value == 15
    assert h.settings["net.ipv4.ip_local_port_range"] == (40000, 40999)


def test_json_is_findings_in_the_shared_shape_plus_facts(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "--from", str(SNAP), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["source"] == "doctor"
    fs = [Finding.from_json(f) for f in doc["findings"]]
    assert fs[0].id == "tuple-port-exhaustion" and fs[0].source == "doctor"
    (h,) = doc["hosts"].values()
    assert h["tuples"][0]["in_use"] == 504 and h["settings"]["net.ipv4.ip_local_port_range"] == [40000, 40999]


def test_human_output_leads_with_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--from", str(CENTOS[0]), "--from", str(CENTOS[1]))
    assert code == 0
    assert out.startswith("Findings\n1. [critical] tcp_tw_recycle is on")
    assert "sysctl -w net.ipv4.tcp_tw_recycle=0" in out and "TcpExtPAWSPassive" in out


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "message"), [
    (b"hello\nthis is not a paste\n", "nothing tcpreuse can read (line 1: hello)"),
    (b"", "nothing tcpreuse can read (line (empty file))"),
    (b"\x00\x01\x02binary\x00", "binary data, not pasted command output"),
    (b"\x1f\x8b\x08\x00garbage", "is not a tcpreuse snapshot"),
])
def test_unreadable_inputs_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              content: bytes, message: str) -> None:
    p = tmp_path / "in.txt"
    p.write_bytes(content)
    code, _out, err = cli(capsys, "--from", str(p))
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") <= 2


def test_missing_and_directory_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "--from", str(tmp_path / "nope.txt"))
    assert code == 2 and "no such file" in err
    code, _, err = cli(capsys, "--from", str(tmp_path))
    assert code == 2 and "is a directory" in err


def test_snapshot_without_meta_and_with_a_missing_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare.tar.gz"
    with tarfile.open(bare, "w:gz") as tar:
        info = tarfile.TarInfo("x.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    code, _, err = cli(capsys, "--from", str(bare))
    assert code == 2 and "no meta.json" in err
    # Drop the counters of the second sample: the rest still diagnoses, with a note.
    cut = tmp_path / "cut.tar.gz"
    with tarfile.open(SNAP) as src, tarfile.open(cut, "w:gz") as dst:
        for m in src.getmembers():
            if m.name != "sample-1/proc/net/netstat":
                dst.addfile(m, src.extractfile(m))
    hosts, findings = run([cut])
    (h,) = hosts.values()
    assert any("sample-1/proc/net/netstat is missing" in n for n in h.extra["notes"])
    assert one(findings, "tuple-port-exhaustion").severity == "critical"
    # A truncated archive: an error, not a traceback
    trunc = tmp_path / "trunc.tar.gz"
    trunc.write_bytes(gzip.compress(SNAP.read_bytes())[:200])
    code, _, err = cli(capsys, "--from", str(trunc))
    assert code == 2 and "Traceback" not in err


PROC = {
    "/proc/sys/kernel/osrelease": "4.9.0-8-amd64\n",
    "/proc/sys/kernel/hostname": "legacy\n",
    "/proc/sys/net/ipv4/tcp_tw_recycle": "1\n",
    "/proc/sys/net/ipv4/tcp_timestamps": "1\n",
    "/proc/sys/net/ipv4/ip_local_port_range": "32768\t60999\n",
    "/proc/net/snmp": "Tcp: ActiveOpens PassiveOpens\nTcp: 10 5000\n",
    "/proc/net/netstat": "TcpExt: PAWSPassive TW ListenOverflows ListenDrops\nTcpExt: 40 100 0 40\n",
}


def test_unreadable_proc_entries_give_partial_results() -> None:
    """psutil-style fixture of /proc: an unreadable counters file and an unreadable sysctl
    are reported; the rest is still diagnosed."""
    files: dict[str, str | OSError] = {**PROC, "/proc/net/netstat": PermissionError(errno.EACCES, "denied"),
                                       "/proc/sys/net/ipv4/tcp_fin_timeout": PermissionError(errno.EACCES, "denied")}
    src = FixtureSource(files, sockets=HostError("sock_diag: the kernel answered EPERM"), interval=0)
    ev = evidence_of([src.observe()])
    (h,) = ev.hosts.values()
    notes = " | ".join(h.extra["notes"])
    assert "could not read /proc/net/netstat: permission denied" in notes
    assert "could not read net.ipv4.tcp_fin_timeout: permission denied" in notes
    assert "could not read socket table: sock_diag: the kernel answered EPERM" in notes
    assert h.time_wait is None and h.counters_absolute["TcpPassiveOpens"] == 5000
    f = one(diagnose(ev), "tw-recycle-enabled")
    assert f.confidence == 0.75 and val(f, "TcpExtPAWSPassive since boot") == "not read"


def test_fixture_replay_of_two_samples_gives_rates() -> None:
    later = {**PROC, "/proc/net/netstat": "TcpExt: PAWSPassive TW ListenOverflows ListenDrops\nTcpExt: 90 100 0 90\n"}

    class Changing(FixtureSource):
        def read_file(self, path: str) -> str:
            self.files = later if self.now() > 0 else PROC  # what the kernel shows after the sleep
            return super().read_file(path)

    ev = evidence_of([Changing(PROC, sockets=[SockTable.empty()], interval=2.0).observe()])
    (h,) = ev.hosts.values()
    assert h.window_s == 2.0 and h.counters["TcpExtPAWSPassive"] == 50
    f = one(diagnose(ev), "tw-recycle-enabled")
    assert f.severity == "critical" and val(f, "TcpExtPAWSPassive per s") == 25.0
    assert "SYN without timestamps from a recently seen peer is dropped too" in f.cause  # 4.9 rule


@pytest.mark.parametrize(("args", "message"), [
    (["--count", "2"], "--count needs --watch"),
    (["--from", "x.txt", "--netns", "y"], "cannot be combined with --netns"),
    (["--profile", "linux-9.9", "--from", "x"], "unknown kernel 'linux-9.9'"),
    (["--netns", "tcpr-no-such-namespace"], "no network namespace named 'tcpr-no-such-namespace'"),
    (["--netns", "../etc"], "not a network namespace name"),
    (["--interval", "-1"], "Invalid value for '--interval'"),
    (["--trace-connects", "--interval", "0"], "--trace-connects counts connect() calls between two samples"),
    (["--interval", "0", "--json", "--save", "/nonexistent-dir/x.tar.gz"], "cannot write snapshot"),
])
def test_bad_options(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = cli(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


# ---- the live host, read-only ------------------------------------------------------------

def test_watch_refreshes_a_bounded_number_of_times(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "--watch", "0.2", "--count", "2", "--interval", "0", "--json")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 2 and all(d["source"] == "doctor" for d in docs)


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="needs /proc")
def test_processes_are_attributed_by_socket_inode() -> None:
    with socket.socket() as lis:
        lis.bind(("127.0.0.1", 0))
        lis.listen(3)
        port = lis.getsockname()[1]
        ev = evidence_of([LinuxSource(interval=0, processes=True).observe()])
    (h,) = ev.hosts.values()
    me = next(p for p in h.extra["processes"] if p["pid"] == os.getpid())
    assert me["listening"] >= 1 and me["fds"] >= 1 and me["nofile_soft"] > 0
    assert any(lu.port == port for lu in h.listeners)


# ---- the other checks, on small synthetic observations -------------------------------------

def _diagnose(obs: Observed) -> tuple[object, list[Finding]]:
    ev = evidence_of([obs])
    (h,) = ev.hosts.values()
    return h, diagnose(ev)


def test_paws_rising_conntrack_full_and_file_table() -> None:
    obs = Observed(name="nat1", kernel_release="6.18.0",
                   sysctls={"net.netfilter.nf_conntrack_count": "950", "net.netfilter.nf_conntrack_max": "1000",
                            "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "120",
                            "fs.file-nr": "900\t0\t1000", "fs.file-max": "1000"},
                   counters=[CounterSample(t=0, values={"TcpExtPAWSEstab": 10, "TcpExtPAWSTimewait": 0,
                                                        "TcpExtPAWSActive": 0}),
                             CounterSample(t=2, values={"TcpExtPAWSEstab": 30, "TcpExtPAWSTimewait": 8,
                                                        "TcpExtPAWSActive": 0})])
    _, findings = _diagnose(obs)
    p = one(findings, "paws-rejects-rising")
    assert p.title == "PAWS rejections rising: PAWSEstab 10.0/s, PAWSTimewait 4.0/s"
    assert val(p, "absent on this kernel") == "TcpExtPAWSPassive"
    c = one(findings, "conntrack-near-full")
    assert c.severity == "critical" and c.fixes[0].set == {"server:net.netfilter.nf_conntrack_max": 2000}
    assert one(findings, "file-table-near-full").severity == "warning"


def test_windows_pool_pressure_and_server_timewait_info() -> None:
    rows = ["Protocol tcp Dynamic Port Range", "-----", "Start Port      : 50000", "Number of Ports : 255",
            "RFC 1323 Timestamps                 : enabled"]
    rows += [f"  TCP    10.0.0.5:{50000 + i}    10.0.0.9:80    TIME_WAIT    0" for i in range(240)]
    obs = to_observed([parse_text("\n".join(rows), "win.txt")])
    h, findings = _diagnose(obs)
    f = one(findings, "windows-port-pool-pressure")
    assert f.severity == "critical" and val(f, "ports in use by outgoing connections") == 240
    assert val(f, "sustainable new connections per s") == round(255 / 240, 1)
    assert not [x for x in findings if x.id == "windows-client-no-timestamps"]  # timestamps are on

    tw = np.zeros(12000, dtype=SOCK_DTYPE)
    tw["state"], tw["sport"], tw["dport"] = TCP_TIME_WAIT, 443, np.arange(12000) % 60000 + 1024
    tw["src"], tw["dst"], tw["family"] = addr_bytes("10.0.0.1"), addr_bytes("10.0.0.7"), 2
    tw["dst"][::2] = addr_bytes("10.0.0.8")
    lis = np.zeros(1, dtype=SOCK_DTYPE)
    lis["state"], lis["sport"], lis["family"], lis["wqueue"] = TCP_LISTEN, 443, 2, 4096
    obs = Observed(name="web", kernel_release="5.15.0",
                   sockets=[SocketSample(0.0, SockTable(np.concatenate([lis, tw])))])
    h, findings = _diagnose(obs)
    assert h.role == "server" and h.extra["incoming_time_wait_by_port"] == {443: 12000}
    assert one(findings, "server-timewait-harmless").severity == "info"
