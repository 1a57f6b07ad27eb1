"""The start barrier of `load --start-at wait` and `emulate --start-at wait`.

A process that several others must start together with (the lab's clients of one run) gets
everything ready first -- imports, its checks, its TUN device or sockets -- then prints
READY_LINE on stdout and reads the wall-clock (Unix) time of its t = 0 as one line from
stdin. The lab (lab/run.py) hands out that time only when every load of the run has said it
is ready, so a process whose start-up is slow (an interpreter on a loaded machine or in
User-Mode Linux) delays them all instead of starting alone, late.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO

from ..errors import TcpreuseError

READY_LINE = "tcpreuse: ready, waiting for the start time on stdin"
WAIT = "wait"
MAX_AHEAD_S = 3600.0  # a start time further from now than this is a mistake


def parse_start_at(value: str | None) -> tuple[float | None, bool]:
    """--start-at: a Unix time, or `wait` (read it from stdin when ready). -> (time, wait)."""
    if value is None:
        return None, False
    if value.strip().lower() == WAIT:
        return None, True
    try:
        t = float(value)
    except ValueError:
        raise TcpreuseError(f"--start-at must be a Unix time or 'wait', not {value!r}") from None
    check_start_at(t)
    return t, False


def check_start_at(t: float) -> None:
    if not math.isfinite(t) or abs(t - time.time()) > MAX_AHEAD_S:
        raise TcpreuseError("--start-at must be a Unix time within an hour of now")


def await_go(inp: IO[str] | None = None, out: IO[str] | None = None) -> float:
    """Say ready, then block until the start time arrives on `inp` (stdin). An empty stdin
    (the lab gave up, or nobody is there) is a one-line error, not a hang."""
    inp = inp if inp is not None else sys.stdin
    out = out if out is not None else sys.stdout
    print(READY_LINE, file=out, flush=True)
    line = inp.readline()
    if not line.strip():
        raise TcpreuseError("--start-at wait: stdin closed before a start time arrived")
    try:
        t = float(line)
    except ValueError:
        raise TcpreuseError(f"--start-at wait: not a Unix time on stdin: {line.strip()[:40]!r}") from None
    check_start_at(t)
    return t
