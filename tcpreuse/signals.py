"""SIGTERM and SIGHUP as exceptions in the main thread, so that they unwind like Ctrl-C.

Verbs that own resources on the kernel (lab namespaces, a UML boot, a tracefs mount and a
bpftrace process) wrap their work in `raising()`: the signal raises where the work is, every
`finally` and context manager cleans up, and the previous handlers come back afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class Signalled(BaseException):
    """Raised in the main thread by SIGTERM/SIGHUP, like KeyboardInterrupt for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def raising(make: Callable[[int], BaseException] = Signalled,
            signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While inside: each of `signals` raises make(signum) in the main thread. Elsewhere
    (a worker thread cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise make(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
