"""The prometheus_client Collector and the HTTP server.

The Collector reads on scrape (no background thread; nothing runs while nobody scrapes),
at most once per ``interval`` seconds. A failed read (the namespace is gone, netlink
refused) is ``tcpreuse_up 0`` with the reason logged once, never a dead exporter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import HostError, TcpreuseError
from .metrics import families
from .reader import Reader

log = logging.getLogger("tcpreuse.exporter")


class TcpreuseCollector(Collector):
    def __init__(self, reader: Reader, interval: float = 5.0, top: int = 20) -> None:
        self.reader = reader
        self.interval = interval
        self.top = top
        self._last_error: str | None = None

    def describe(self) -> list[Metric]:
        return []  # registering must not read the host

    def collect(self) -> Iterator[Metric]:
        try:
            reading = self.reader.fresh(self.interval)
        except (TcpreuseError, OSError) as e:
            msg = e.message if isinstance(e, TcpreuseError) else str(e)
            if msg != self._last_error:
                log.warning("read failed: %s", msg)
                self._last_error = msg
            yield GaugeMetricFamily("tcpreuse_up", "1 when the last read of the host succeeded", value=0)
            return
        self._last_error = None
        yield GaugeMetricFamily("tcpreuse_up", "1 when the last read of the host succeeded", value=1)
        yield from families(reading, self.top)


def registry_for(reader: Reader, interval: float, top: int, process_metrics: bool = True) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(TcpreuseCollector(reader, interval, top))
    if process_metrics:  # the exporter's own CPU and memory (process_resident_memory_bytes ...)
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=reg)
    return reg


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, :PORT or PORT (no host: 127.0.0.1, never all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
    except ValueError:
        raise HostError(f"not HOST:PORT: {text!r}", hint="e.g. 127.0.0.1:9946, :9946 or 0.0.0.0:9946") from None
    if not 0 <= p <= 65535:
        raise HostError(f"port out of range in {text!r}")
    return host, p


def serve(reader: Reader, listen: str, interval: float, top: int) -> tuple[object, threading.Thread, str]:
    """Start the HTTP server (/metrics, OpenMetrics when the scraper asks for it)."""
    from prometheus_client import start_http_server

    host, port = parse_listen(listen)
    reg = registry_for(reader, interval, top)
    try:
        server, thread = start_http_server(port, addr=host, registry=reg)
    except OSError as e:
        raise HostError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    bound = server.server_address
    url = f"http://{'[' + host + ']' if ':' in host else host}:{bound[1]}/metrics"
    return server, thread, url
