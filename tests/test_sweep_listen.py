"""`sweep` and `capacity` listen only on loopback: the local Dask cluster's scheduler,
workers and nannies on 127.0.0.1, the dashboard off unless --dashboard, and then also on
127.0.0.1. Checked on the running command's process tree (psutil), during a real sweep."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers.scenarios import client_first

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of `pid` and its descendants."""
    out: set[tuple[str, int]] = set()
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        out |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return out


def _sweep_listeners(tmp_path: Path, *extra: str) -> tuple[set[tuple[str, int]], str]:
    sc = tmp_path / "sc.toml"
    sc.write_text(client_first("listen", duration_s=60, rate=200))
    cmd = [sys.executable, "-m", "tcpreuse", "sweep", str(sc), "--grid", "workload.rate=100,200,300,400",
           "--seeds", "2", "--workers", "2", "--no-cache", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    seen: set[tuple[str, int]] = set()
    while proc.poll() is None:
        seen |= _listening(proc.pid)
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "8 run(s) computed" in out
    return seen, err


def test_sweep_listens_on_loopback_only(tmp_path: Path) -> None:
    seen, err = _sweep_listeners(tmp_path)
    # the scheduler and the two workers at least: the check saw the cluster
    assert len(seen) >= 3, seen
    outside = {(a, p) for a, p in seen if not ipaddress.ip_address(a).is_loopback}
    assert not outside, f"listening beyond loopback: {outside}"
    assert "dashboard" not in err


def test_dashboard_on_request_binds_loopback_and_prints_its_link(tmp_path: Path) -> None:
    seen, err = _sweep_listeners(tmp_path, "--dashboard")
    m = re.search(r"dask dashboard: http://127\.0\.0\.1:(\d+)/", err)
    assert m, err
    assert ("127.0.0.1", int(m.group(1))) in seen
    assert all(ipaddress.ip_address(a).is_loopback for a, _ in seen), seen
