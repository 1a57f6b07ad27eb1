"""`tcpreuse serve` as a child process, for tests, benchmarks and the lab.

`serve` prints one line when it listens (``tcpreuse serve: listening on ADDR... pid N``)
and, with --json, one JSON summary when it stops. This wraps that contract: start it
(optionally inside a network namespace), learn the port it got, stop it, read what it saw.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from .errors import LoadError

_READY = re.compile(r"listening on (?P<addrs>.+?) pid (?P<pid>\d+)")


class ServeProcess:
    """A running `tcpreuse serve`. Use as a context manager; stop() returns its summary."""

    def __init__(self, args: Sequence[str], *, prefix: Sequence[str] = (), python: str = sys.executable,
                 start_timeout: float = 15.0) -> None:
        self.argv = [*prefix, python, "-m", "tcpreuse", "serve", *args, "--json"]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.addresses: list[str] = []
        self.pid = 0
        self.summary: dict[str, Any] | None = None
        self.stderr = ""

    @property
    def port(self) -> int:
        return int(self.addresses[0].rsplit(":", 1)[1])

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, self.start_timeout)
        m = _READY.search(line or "")
        if not m:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise LoadError(f"serve did not start: {(err or line or 'no output').strip()}")
        self.addresses = m["addrs"].split()
        self.pid = int(m["pid"])
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> dict[str, Any]:
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        self.stderr = err or ""
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                self.summary = json.loads(line)
                break
        return self.summary or {}

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.stop()


def _readline(f: IO[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([f], [], [], max(0.0, deadline - time.monotonic()))
        if r:
            return f.readline()
    return ""
