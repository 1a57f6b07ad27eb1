"""host.procfs: one reader of /proc/net/{snmp,netstat,sockstat} and /proc/sys, whose root
moves (this namespace, another process's namespace, a directory, a recording)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcpreuse.host.observed import parse_proc_counters
from tcpreuse.host.procfs import ProcFS, parse_counters
from tcpreuse.lab.procnet import ProcNet
from tcpreuse.load import kstat

SNMP = ("Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm ActiveOpens PassiveOpens CurrEstab\nTcp: 1 120 7 3\n")
NETSTAT = ("TcpExt: TW TWRecycled TCPTimeWaitOverflow\nTcpExt: 812 5 0\n"
           "IpExt: InOctets\nIpExt: 99\n")
SOCKSTAT = "sockets: used 9\nTCP: inuse 3 orphan 1 tw 812 alloc 5 mem 2\nUDP: inuse 0\n"


def _tree(root: Path) -> Path:
    (root / "net").mkdir(parents=True)
    (root / "net" / "snmp").write_text(SNMP)
    (root / "net" / "netstat").write_text(NETSTAT)
    (root / "net" / "sockstat").write_text(SOCKSTAT)
    (root / "sys" / "net" / "ipv4").mkdir(parents=True)
    (root / "sys" / "net" / "ipv4" / "ip_local_port_range").write_text("32768\t60999\n")
    return root


def test_a_directory_root_reads_what_every_consumer_reads(tmp_path: Path) -> None:
    proc = ProcFS(_tree(tmp_path / "proc"))
    assert proc.counters()["TcpExtTW"] == 812 and proc.counters()["IpForwarding"] == 1
    assert proc.counters(("Tcp", "TcpExt")).keys() == {
        "TcpRtoAlgorithm", "TcpActiveOpens", "TcpPassiveOpens", "TcpCurrEstab", "TcpExtTW", "TcpExtTWRecycled",
        "TcpExtTCPTimeWaitOverflow"}
    assert proc.sockstat().time_wait == 812
    assert proc.sysctl("net.ipv4.ip_local_port_range") == "32768 60999"
    assert proc.sysctls(["net.ipv4.ip_local_port_range", "net.ipv4.no_such"]) == {
        "net.ipv4.ip_local_port_range": "32768 60999"}
    # the load run's reader, through the same root
    assert kstat.read_counters(proc)["TcpActiveOpens"] == 120
    assert kstat.read_time_wait(proc) == 812
    assert kstat.read_sysctls(("net.ipv4.ip_local_port_range",), proc) == {
        "net.ipv4.ip_local_port_range": "32768 60999"}
    # an unreadable root reads as nothing, not an exception
    empty = ProcFS(tmp_path / "missing")
    assert empty.counters() == {} and empty.sockstat().time_wait == 0


def test_a_recording_is_read_through_the_same_parsers() -> None:
    rec = ProcFS.recorded({"/proc/net/snmp": SNMP, "/proc/net/netstat": NETSTAT,
                           "/proc/sys/net/ipv4/tcp_tw_reuse": "2\n"})
    assert rec.counters()["TcpExtTWRecycled"] == 5
    assert rec.sysctl("net.ipv4.tcp_tw_reuse") == "2"
    assert rec.sockstat().time_wait == 0  # not recorded


def test_the_three_consumers_parse_alike() -> None:
    values, notes = parse_counters(SNMP + NETSTAT, "x")
    assert not notes
    assert parse_proc_counters(SNMP + NETSTAT, "x") == (values, notes)
    assert kstat.parse_nstat(NETSTAT) == {k: v for k, v in values.items() if k.startswith("TcpExt")}
    bad, notes = parse_counters("TcpExt: A B\nTcpExt: 1\n", "f")
    assert bad == {} and notes == ["f: TcpExt has 2 names but 1 values; skipped"]


def test_another_process_namespace_through_proc_pid() -> None:
    # /proc/PID/net of this very process: the namespace the lab's anchors are read in.
    mine = ProcNet(os.getpid())
    assert mine.base == Path(f"/proc/{os.getpid()}/net")
    if not (mine.base / "snmp").exists():
        pytest.skip("no procfs here (not Linux)")
    assert "TcpActiveOpens" in mine.counters()
    assert mine.sockstat().tcp_inuse >= 0
