"""Dask execution: a LocalCluster on this machine's cores, or an existing scheduler.

Each simulation is one task with a stable key (its cache key), so the scheduler never
runs the same point twice at once. When a worker dies, the scheduler hands its tasks
to another worker (up to `allowed-failures`); results reach the client one by one and
are cached there at once, so nothing finished is ever lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from . import SweepError
from .point import run_point

# Where a local cluster listens: the scheduler, each worker and its nanny take a random
# port on loopback only; nothing is reachable from the network.
LOOPBACK = "127.0.0.1"

SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_scheduler(address: str) -> str:
    """A Dask scheduler address, [SCHEME://]HOST:PORT, checked before any Client exists:
    distributed's Client takes 'banana' apart only after starting its event loop, and the
    half-built client then hangs for its close timeout when it is collected."""
    import socket
    from urllib.parse import urlsplit

    text = address.strip()
    u = urlsplit(text if "://" in text else f"tcp://{text}")
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme not in SCHEMES or not u.hostname or port is None or u.path not in ("", "/"):
        raise SweepError(f"--scheduler {address!r}: expected a Dask scheduler address such as "
                         "tcp://10.0.0.5:8786 (SCHEME://HOST:PORT, scheme " + "/".join(SCHEMES) + ")")
    try:
        socket.getaddrinfo(u.hostname, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise SweepError(f"--scheduler {address!r}: cannot resolve {u.hostname!r} ({e.strerror or e})") from None
    return f"{u.scheme}://{u.netloc}"


class Pool:
    """A Dask client on a LocalCluster (`scheduler=None`) or on `tcp://host:port`.

    A local cluster's scheduler, workers and nannies listen on 127.0.0.1 (random ports);
    its web dashboard is off unless `dashboard` is set, and then it too listens on
    127.0.0.1 only; `on_dashboard` receives its link once the cluster is up."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None, timeout_s: float = 10.0,
                 dashboard: bool = False, on_dashboard: Callable[[str], None] | None = None) -> None:
        self.scheduler, self.workers, self.timeout_s = scheduler, workers, timeout_s
        self.dashboard, self.on_dashboard = dashboard, on_dashboard
        self.client: Any = None
        self.cluster: Any = None

    def __enter__(self) -> Pool:
        from distributed import Client, LocalCluster

        if self.scheduler:
            address = check_scheduler(self.scheduler)
            try:
                self.client = Client(address, timeout=f"{self.timeout_s:g}s", set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise SweepError(f"cannot reach the Dask scheduler at {self.scheduler}: {e}",
                                 hint="start one with `dask scheduler`, or leave --scheduler out to use "
                                 "this machine's cores") from None
            except ValueError as e:
                raise SweepError(f"--scheduler {self.scheduler!r}: {e}") from None
            self._announce()
            return self
        n = self.workers or os.cpu_count() or 1
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host=LOOPBACK,
                                    dashboard_address=f"{LOOPBACK}:0" if self.dashboard else None,
                                    worker_dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster, set_as_default=False)
        self._announce()
        return self

    def _announce(self) -> None:
        if self.dashboard and self.on_dashboard is not None:
            import importlib.util

            link = self.client.dashboard_link if self.client is not None else None
            note = "" if importlib.util.find_spec("bokeh") else " (only /health and /metrics: install bokeh for the pages)"
            self.on_dashboard(f"{link}{note}" if link else "the scheduler has no dashboard")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            if self.client is not None:
                self.client.close(timeout=10)
        with contextlib.suppress(Exception):
            if self.cluster is not None:
                self.cluster.close(timeout=10)

    @property
    def where(self) -> str:
        if self.scheduler:
            return f"Dask scheduler {self.scheduler}"
        return f"local Dask cluster ({self.workers or os.cpu_count() or 1} worker processes)"

    def submit(self, key: str, dump: dict[str, Any], diagnose: bool = False, stop: dict[str, Any] | None = None,
               priority: int = 0) -> Any:
        """One simulation (point.run_point). `stop`: may end early once it certainly fails
        (capacity); `priority`: higher runs first when tasks wait for a worker."""
        kind = "d" if diagnose else ("s" if stop is not None else "p")
        return self.client.submit(run_point, dump, diagnose, stop, key=f"tcpr-{kind}-{key}", pure=False,
                                  priority=priority)

    def completed(self, futures: list[Any]) -> Any:
        from distributed import as_completed

        return as_completed(futures, loop=self.client.loop)

    @staticmethod
    def result(fut: Any) -> dict[str, Any]:
        """The task's summary, or an `error` summary if it could not be computed."""
        try:
            out = fut.result()
        except Exception as e:  # KilledWorker after repeated worker deaths, a bug in a worker
            return {"error": f"{type(e).__name__}: {e}"}
        return dict(out)


def iterate(pool: Pool, tasks: dict[str, tuple[dict[str, Any], bool]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run `tasks` (key -> (dump, diagnose)); yield (key, summary) as each finishes."""
    futs = {pool.submit(k, d, diag): k for k, (d, diag) in tasks.items()}
    for fut in pool.completed(list(futs)):
        yield futs[fut], pool.result(fut)
