"""`tcpreuse serve`: the seed incident's service in miniature, for the lab and for tests.

A client asks for a verification string and gets it (the line protocol), or sends an
HTTP/1.x request and gets 200 (so wrk and curl can drive it); see protocol.py. What makes
it a *reference* server is that the things which decide where TIME_WAIT lands are
options: who closes first (`--close server|client|rst`), a response delay, an idle
timeout that cuts slow or silent clients, and a cap on requests per connection.

asyncio Protocols (not streams: a stream pair per connection costs several times more)
on uvloop when it is installed. Several workers are processes, each with its own
SO_REUSEPORT listening socket, so the kernel spreads connections across them. All
listening sockets are created in the parent before forking, so a bad address fails
once, with one clear message, and port 0 resolves to one port for all workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import multiprocessing as mp
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

from .errors import LoadError
from .protocol import BadRequest, Request, answer, parse_request
from .sockopt import LINGER_RST, raise_nofile
from .target import Endpoint, format_addr

SERVER_CLOSE_POLICIES = ("server", "client", "rst")


@dataclass
class ServeConfig:
    listen: list[Endpoint]
    backlog: int = 4096
    close: str = "server"
    delay_ms: float = 0.0
    idle_timeout: float = 30.0
    workers: int = 1
    max_requests_per_conn: int = 0  # 0: no limit

    def check(self) -> None:
        if not self.listen:
            raise LoadError("give at least one --listen HOST:PORT")
        if self.close not in SERVER_CLOSE_POLICIES:
            raise LoadError(f"--close must be one of {', '.join(SERVER_CLOSE_POLICIES)}")
        if self.backlog < 1:
            raise LoadError("--backlog must be at least 1")
        if self.delay_ms < 0:
            raise LoadError("--delay-ms must be >= 0")
        if not self.idle_timeout > 0:
            raise LoadError("--idle-timeout must be positive")
        if not 1 <= self.workers <= 256:
            raise LoadError("--workers must be between 1 and 256")
        if self.max_requests_per_conn < 0:
            raise LoadError("--max-requests-per-conn must be >= 0")


@dataclass
class ServeStats:
    """What the server saw; printed when it stops (and summed over workers)."""

    connections: int = 0
    answers: int = 0
    bad_requests: int = 0
    server_closed_first: int = 0  # our FIN went out before the client's arrived
    client_closed_first: int = 0  # the client's FIN arrived before we closed
    rst_sent: int = 0  # --close rst
    resets_received: int = 0  # ECONNRESET from the client
    idle_timeouts: int = 0
    open_max: int = 0
    open_now: int = 0

    def add(self, other: ServeStats) -> None:
        for k, v in asdict(other).items():
            if k == "open_max":
                self.open_max += v  # peaks of separate workers: an upper bound
            else:
                setattr(self, k, getattr(self, k) + v)


class _Connection(asyncio.Protocol):
    __slots__ = ("buf", "busy", "final", "last_rx", "loop", "nreq", "peer_fin", "srv",
                 "timer", "transport")

    def __init__(self, srv: _Server) -> None:
        self.srv = srv
        self.loop = srv.loop
        self.buf = b""
        self.busy = False  # an answer is delayed (--delay-ms): later requests wait
        self.final = False  # the last answer is out; only the close remains
        self.peer_fin = False
        self.nreq = 0
        self.transport: Any = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_rx = 0.0

    # ---- asyncio callbacks ---------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        st = self.srv.stats
        st.connections += 1
        st.open_now += 1
        if st.open_now > st.open_max:
            st.open_max = st.open_now
        self.srv.conns.add(self)
        self.last_rx = self.loop.time()
        self.timer = self.loop.call_later(self.srv.cfg.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        if self.final:
            return  # after the last answer only the close matters
        self.buf = self.buf + data if self.buf else data
        if not self.busy:
            self._process()

    def eof_received(self) -> bool:
        # we have not closed (or there would be no EOF to see): the client was first
        self.peer_fin = True
        self.srv.stats.client_closed_first += 1
        # True keeps our side open: a half-closed client still gets its delayed answer,
        # and under --close rst the RST goes out once the answer is flushed.
        # False: close our side too.
        return self.busy or (self.final and self.srv.cfg.close == "rst")

    def connection_lost(self, exc: Exception | None) -> None:
        st = self.srv.stats
        st.open_now -= 1
        if isinstance(exc, ConnectionResetError):
            st.resets_received += 1
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.srv.conns.discard(self)

    # ---- requests ------------------------------------------------------------------
    def _process(self) -> None:
        cfg = self.srv.cfg
        while self.buf and not self.final:
            try:
                got = parse_request(self.buf)
            except BadRequest as e:
                self.srv.stats.bad_requests += 1
                self.transport.write(e.answer)
                self.final = True
                self.srv.stats.server_closed_first += 1
                self.transport.close()
                return
            if got is None:
                return
            req, used = got
            self.buf = self.buf[used:]
            self.nreq += 1
            last = not req.keep_alive or (0 < cfg.max_requests_per_conn <= self.nreq)
            if cfg.delay_ms > 0:
                self.busy = True
                self.loop.call_later(cfg.delay_ms / 1000.0, self._answer, req, last)
                return
            self._answer(req, last)

    def _answer(self, req: Request, last: bool) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(answer(req, closing=last))
        self.srv.stats.answers += 1
        self.busy = False
        if last:
            self._finish()
        elif self.buf:
            self._process()
        elif self.peer_fin:  # half-closed client, nothing more to answer
            self.transport.close()

    def _finish(self) -> None:
        """The last answer is written: close as the policy says."""
        self.final = True
        policy = self.srv.cfg.close
        if policy == "server":
            if not self.peer_fin:
                self.srv.stats.server_closed_first += 1
            self.transport.close()
        elif policy == "rst":
            self._reset()
        elif self.peer_fin:  # client policy and the client is already gone
            self.transport.close()
        # client policy: wait for the client's FIN (bounded by the idle timeout)

    def _reset(self) -> None:
        if self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size():
            self.loop.call_later(0.001, self._reset)  # never cut our own answer short
            return
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        self.srv.stats.rst_sent += 1
        self.transport.abort()

    def _check_idle(self) -> None:
        idle = self.loop.time() - self.last_rx
        timeout = self.srv.cfg.idle_timeout
        if idle >= timeout:
            self.timer = None
            self.srv.stats.idle_timeouts += 1
            self.transport.abort()
        else:
            self.timer = self.loop.call_later(timeout - idle, self._check_idle)


class _Server:
    def __init__(self, cfg: ServeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.cfg = cfg
        self.loop = loop
        self.stats = ServeStats()
        self.conns: set[_Connection] = set()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _serve_sockets(cfg: ServeConfig, socks: list[socket.socket],
                   on_serving: Callable[[], None] | None = None) -> ServeStats:
    """Serve on already-listening sockets until SIGINT/SIGTERM; returns the stats.

    `on_serving` is called once the loop accepts connections (so "ready" means ready).
    """
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    srv = _Server(cfg, loop)
    stop = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop)

    async def main() -> None:
        servers = [await loop.create_server(lambda: _Connection(srv), sock=s, backlog=cfg.backlog)
                   for s in socks]
        if on_serving is not None:
            on_serving()
        await stop
        for s in servers:
            s.close()
        for c in list(srv.conns):
            if c.transport is not None:
                c.transport.abort()
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    srv.stats.open_now = 0
    return srv.stats


def _listening_sockets(cfg: ServeConfig) -> list[list[socket.socket]]:
    """One listening socket per (worker, address); all workers of an address share a port."""
    per_worker: list[list[socket.socket]] = [[] for _ in range(cfg.workers)]
    try:
        for ep in cfg.listen:
            port = ep.port
            for w in range(cfg.workers):
                s = socket.socket(ep.family, socket.SOCK_STREAM)
                per_worker[w].append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if cfg.workers > 1:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                try:
                    s.bind((ep.host, port))
                    s.listen(cfg.backlog)
                except OSError as e:
                    raise LoadError(f"cannot listen on {format_addr(ep.host, port)}: {e.strerror}",
                                    hint="is another server on that port, or is the address not "
                                    "local?" if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
                                    else None) from None
                s.setblocking(False)
                port = s.getsockname()[1]
    except BaseException:
        for group in per_worker:
            for s in group:
                s.close()
        raise
    return per_worker


def _child(cfg: ServeConfig, socks: list[socket.socket], others: list[socket.socket],
           conn: Connection) -> None:
    for s in others:
        s.close()
    try:
        stats = _serve_sockets(cfg, socks, on_serving=lambda: conn.send("ready"))
        conn.send(stats)
    finally:
        conn.close()
        os._exit(0)


def run_serve(cfg: ServeConfig, on_ready: Callable[[list[str], int], None] | None = None) -> ServeStats:
    """Listen, call `on_ready(addresses, pid)`, serve until SIGINT/SIGTERM, return stats."""
    cfg.check()
    raise_nofile()
    per_worker = _listening_sockets(cfg)
    addresses = [format_addr(s.getsockname()[0], s.getsockname()[1]) for s in per_worker[0]]
    if cfg.workers == 1:
        pid = os.getpid()
        try:
            return _serve_sockets(cfg, per_worker[0],
                                  on_serving=(lambda: on_ready(addresses, pid)) if on_ready else None)
        finally:
            for s in per_worker[0]:
                s.close()

    ctx = mp.get_context("fork")
    all_socks = [s for group in per_worker for s in group]
    procs: list[Any] = []
    pipes: list[Connection] = []
    stopping = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pr in procs:
            if pr.pid and pr.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pr.pid, signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for w, group in enumerate(per_worker):
            parent, child = ctx.Pipe(duplex=False)
            others = [s for s in all_socks if s not in group]
            pr = ctx.Process(target=_child, args=(cfg, group, others, child),
                             name=f"tcpreuse-serve-{w}")
            pr.start()
            child.close()
            procs.append(pr)
            pipes.append(parent)
        # the children hold the sockets now; a dead child's socket must leave the
        # SO_REUSEPORT group with it, not linger in the parent and swallow connections
        for s in all_socks:
            s.close()
        ready = 0
        for parent in pipes:
            with contextlib.suppress(EOFError, OSError):
                ready += parent.recv() == "ready"
        if ready < len(pipes) and not stopping:
            raise LoadError(f"only {ready} of {len(pipes)} serve workers started")
        if on_ready and not stopping:
            on_ready(addresses, os.getpid())
        total = ServeStats()
        for pr, parent in zip(procs, pipes, strict=True):
            try:
                stats = parent.recv()
                total.add(stats)
            except (EOFError, OSError):
                pass
            pr.join()
        return total
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        for pr in procs:
            if pr.is_alive():
                pr.kill()
                pr.join(timeout=5)
        for s in all_socks:
            s.close()


def stats_dict(stats: ServeStats) -> dict[str, int]:
    d = asdict(stats)
    d.pop("open_now", None)
    return d


__all__ = ["SERVER_CLOSE_POLICIES", "ServeConfig", "ServeStats", "run_serve", "stats_dict"]
