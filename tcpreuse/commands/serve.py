"""`tcpreuse serve --listen HOST:PORT`: the reference server for short connections.

Thin: options become a ServeConfig; tcpreuse.load.server serves. One line on start
(address, pid) so scripts and the lab can wait for it; one summary when it stops.
"""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command()
@click.option("--listen", "listen", multiple=True, required=True, metavar="HOST:PORT",
              help="Address to listen on (repeatable; port 0 picks a free port).")
@click.option("--backlog", type=int, default=4096, show_default=True,
              help="listen() backlog (the kernel caps it at net.core.somaxconn).")
@click.option("--close", "close", type=click.Choice(["server", "client", "rst"]), default="server",
              show_default=True,
              help="After the last answer on a connection: server: FIN at once (TIME_WAIT here); "
              "client: wait for the client's FIN; rst: SO_LINGER {1,0}, RST.")
@click.option("--delay-ms", type=float, default=0.0, show_default=True, help="Delay before each answer.")
@click.option("--idle-timeout", type=float, default=30.0, show_default=True,
              help="Cut a connection that sends nothing for this many seconds.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes, each with its own SO_REUSEPORT listening socket.")
@click.option("--max-requests-per-conn", type=int, default=0, show_default=True,
              help="Close after this many answers on one connection (0: no limit).")
@click.option("--json", "as_json", is_flag=True, help="Print the stop summary as JSON on stdout.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="When stopped, also write a self-contained HTML report of what the server saw.")
def serve(listen: tuple[str, ...], backlog: int, close: str, delay_ms: float, idle_timeout: float,
          workers: int, max_requests_per_conn: int, as_json: bool, html_path: Path | None = None) -> None:
    """Answer `VERIFY <id>` lines with `OK <code>`, and HTTP/1.x requests with 200.

    Stops cleanly on SIGINT/SIGTERM and prints what it saw: connections, answers, who
    closed first, resets received, idle timeouts.
    """
    from ..load.server import ServeConfig, run_serve, stats_dict
    from ..load.target import resolve
    from ..result import dumps

    cfg = ServeConfig(
        listen=[resolve(a, what="--listen address", allow_port_zero=True) for a in listen],
        backlog=backlog, close=close, delay_ms=delay_ms, idle_timeout=idle_timeout,
        workers=workers, max_requests_per_conn=max_requests_per_conn,
    )

    def ready(addresses: list[str], pid: int) -> None:
        click.echo(f"tcpreuse serve: listening on {' '.join(addresses)} pid {pid} "
                   f"workers {cfg.workers} close {cfg.close}", nl=True)
        import sys

        sys.stdout.flush()

    if html_path is not None and not (html_path.parent.is_dir() and os.access(html_path.parent, os.W_OK)):
        from ..errors import TcpreuseError

        raise TcpreuseError(f"cannot write --html {html_path}: no writable directory {html_path.parent}")
    bound: list[str] = []

    def ready_and_keep(addresses: list[str], pid: int) -> None:
        bound.extend(addresses)
        ready(addresses, pid)

    stats = run_serve(cfg, on_ready=ready_and_keep)
    d = stats_dict(stats)
    if html_path is not None:
        from ..report import html
        from ..report.serve import serve_page

        html.write(html_path, serve_page(d, {"listen": bound or list(listen), "close": close, "backlog": backlog,
                                             "delay_ms": delay_ms, "idle_timeout": idle_timeout,
                                             "workers": workers, "max_requests_per_conn": max_requests_per_conn}))
    if as_json:
        click.echo(dumps(d))
    else:
        click.echo("tcpreuse serve: stopped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items()),
                   err=True)
