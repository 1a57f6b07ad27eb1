"""A server with bounded concurrency, for scenarios whose server is slower than its load.

`serve` answers every connection at once (asyncio), so a scenario's `workers` and
`service_ms` would not limit it and its listen queue would never fill. This server does
what the model's server does: `workers` threads, each accepts one connection, answers its
requests after `service_ms` each, closes it by the policy, and only then accepts the
next. Connections the threads cannot take wait in the kernel's accept queue (at most
backlog + 1, sk_acceptq_is_full()), and beyond that the kernel drops SYNs and final ACKs
(ListenOverflows, ListenDrops) — which is what a scenario with a slow server is about.

Run by the lab inside a server namespace:
    python -m tcpreuse.lab.boundserve --listen A:P [--listen ...] --backlog B --workers N
                                      --delay-ms D --close server|client|rst
Speaks the line and HTTP protocols of tcpreuse.load.protocol. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import signal
import socket
import sys
import threading
import time

from ..load.protocol import BadRequest, parse_request
from ..load.protocol import answer as make_answer
from ..load.sockopt import LINGER_RST

IDLE_S = 30.0


def _serve_conn(conn: socket.socket, delay_s: float, close: str, stop: threading.Event) -> None:
    conn.settimeout(IDLE_S)
    buf = b""
    with conn:
        while not stop.is_set():
            try:
                got = parse_request(buf)
            except BadRequest as e:
                conn.sendall(e.answer)
                return
            if got is None:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return  # the client closed first
                buf += data
                continue
            req, used = got
            buf = buf[used:]
            if delay_s > 0:
                time.sleep(delay_s)
            try:
                conn.sendall(make_answer(req, closing=not req.keep_alive))
            except OSError:
                return
            if req.keep_alive:
                continue
            if close == "rst":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            elif close == "client":
                with contextlib.suppress(OSError):
                    while conn.recv(65536):  # wait for the client's FIN
                        pass
            return


def _worker(socks: list[socket.socket], delay_s: float, close: str, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            ready, _, _ = select.select(socks, [], [], 0.2)
        except (OSError, ValueError):
            return
        for s in ready:
            try:
                conn, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                return
            conn.setblocking(True)
            _serve_conn(conn, delay_s, close, stop)
            break  # one connection at a time: back to select


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tcpreuse.lab.boundserve")
    ap.add_argument("--listen", action="append", required=True, metavar="HOST:PORT")
    ap.add_argument("--backlog", type=int, default=511)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--close", choices=("server", "client", "rst"), default="server")
    a = ap.parse_args(argv)
    if not 1 <= a.workers <= 1024:
        ap.error("--workers must be in 1..1024")
    socks = []
    for spec in a.listen:
        host, _, port = spec.rpartition(":")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen(a.backlog)
        s.setblocking(False)
        socks.append(s)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=_worker, args=(socks, a.delay_ms / 1000.0, a.close, stop),
                                daemon=True) for _ in range(a.workers)]
    for t in threads:
        t.start()
    while not stop.wait(0.2):
        pass
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
