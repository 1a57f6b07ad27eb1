"""A real Dask deployment on loopback for the tests that run on one: `dask scheduler` and
`dask worker` processes (the installed entry points, no nanny), always terminated, then
killed, at the end."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

DASK = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
ROOT = Path(__file__).resolve().parent.parent.parent  # the workers import this checkout's tcpreuse


@dataclass
class Deployment:
    address: str  # the scheduler's, tcp://127.0.0.1:PORT
    procs: list[subprocess.Popen[bytes]]  # the scheduler, then the workers in order


@contextlib.contextmanager
def deploy(tmp_path: Path, workers: int = 2) -> Iterator[Deployment]:
    """A scheduler and `workers` single-threaded workers (named w1, w2, ...), started in
    `tmp_path`, with every worker connected before it is given out."""
    if DASK is None:
        pytest.skip("the dask command (dask.distributed) is not installed")
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                       "--scheduler-file", str(sched_file)], env=env, cwd=tmp_path,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sched_file.exists(), "dask scheduler did not start"
        address = json.loads(sched_file.read_text())["address"]
        for k in range(workers):
            procs.append(subprocess.Popen([DASK, "worker", address, "--name", f"w{k + 1}", "--nthreads", "1",
                                           "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"], env=env,
                                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        from distributed import Client

        if workers:
            with Client(address, timeout="20s", set_as_default=False) as c:
                c.wait_for_workers(workers, timeout=30)
        yield Deployment(address, procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
