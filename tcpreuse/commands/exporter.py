"""`tcpreuse exporter`: doctor's numbers as Prometheus metrics, read fresh at each scrape.

Also reachable as ``tcpreuse doctor --serve-metrics HOST:PORT``. Read-only, as doctor.
"""

from __future__ import annotations

import os
import threading
import time

import click

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as doctor: no linear algebra here

DEFAULT_LISTEN = "127.0.0.1:9946"


@click.command()
@click.option("--listen", default=DEFAULT_LISTEN, show_default=True, metavar="HOST:PORT",
              help="Where to serve /metrics. Without a host (`:9946`, `9946`) only 127.0.0.1; "
                   "`0.0.0.0:9946` or `[::]:9946` to let another machine scrape.")
@click.option("--interval", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="S",
              help="Read the host at most once per S seconds; scrapes in between get the last read.")
@click.option("--netns", metavar="NAME|PATH",
              help="Watch this network namespace (ip netns name, or a file such as /proc/PID/ns/net).")
@click.option("--procfs", metavar="PATH", help="Where procfs is mounted (a container with the host's /proc "
              "at /host/proc). Default /proc.")
@click.option("--top", type=click.IntRange(min=1, max=49), default=20, show_default=True, metavar="N",
              help="Tuples and listeners with their own series; the other tuples are summed.")
@click.option("--role", type=click.Choice(["client", "server", "nat", "lb"]),
              help="The host's role, if the inference from its sockets is wrong.")
@click.option("--name", metavar="NAME", help="Host name in tcpreuse_host_info (default: the host name).")
@click.option("--once", is_flag=True,
              help="Print one scrape (text format) and exit: reads twice, --interval apart, for the rates.")
def exporter(listen: str, interval: float, netns: str | None, procfs: str | None, top: int,
             role: str | None, name: str | None, once: bool) -> None:
    """Serve port budgets per tuple, TIME_WAIT, new-connection rates, time to exhaustion,
    listener queues, kernel counters and doctor's findings as Prometheus metrics."""
    run(listen=listen, interval=interval, netns=netns, procfs=procfs, top=top, role=role, name=name, once=once)


def run(*, listen: str, interval: float, netns: str | None, procfs: str | None = None, top: int = 20,
        role: str | None = None, name: str | None = None, once: bool = False) -> None:
    from ..exporter.collector import parse_listen, serve
    from ..exporter.reader import ProcfsSource, Reader
    from ..host.source import LinuxSource

    if not once:
        parse_listen(listen)  # a bad address fails before any read
    source = (ProcfsSource(procfs, netns=netns, interval=0.0, role=role, name=name) if procfs
              else LinuxSource(netns=netns, interval=0.0, role=role, name=name))
    reader = Reader(source)
    reader.prime()  # fails now, with a clear message, if the namespace cannot be entered
    if once:
        from prometheus_client import generate_latest

        from ..exporter.collector import registry_for

        time.sleep(interval)
        click.echo(generate_latest(registry_for(reader, 0.0, top, process_metrics=False)).decode(), nl=False)
        return
    import logging

    logging.basicConfig(format="tcpreuse exporter: %(message)s", level=logging.INFO)
    server, _thread, url = serve(reader, listen, interval, top)
    click.echo(f"tcpreuse exporter: serving {url} ({source.label}; read at most every {interval:g} s)", err=True)
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()  # type: ignore[attr-defined]
