"""Host sources (psutil style): one interface, a live Linux reader and replayed ones.

``HostSource.observe()`` returns an :class:`~.observed.Observed`. The live reader
(:class:`LinuxSource`) reads /proc and netlink of the running kernel, or of a network
namespace it enters with setns(2) for the duration of the reads (so `--netns` works for
containers and tests without re-executing anything). :class:`FixtureSource` runs the same
collection algorithm over recorded files, and can simulate unreadable entries.
:class:`SnapshotSource` replays a ``--save`` archive, :class:`PasteSource` pasted text.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

from .. import __version__
from ..errors import HostError
from .nat import CONNTRACK_NETLINK, CONNTRACK_PROC, IPTABLES_SAVE, NFT_RULESET
from .observed import COUNTER_FILES, SYSCTLS, Observed, ProcessInfo, sysctl_path
from .procfs import ProcFS
from .raw import RawHost, RawSample, to_observed
from .sockets import SockTable
from .trace import TRACE_KEY

CLONE_NEWNET = 0x40000000
NETNS_DIRS = ("/run/netns", "/var/run/netns")


class HostSource(Protocol):
    label: str

    def observe(self) -> Observed: ...


def _why(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "absent"
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or type(e).__name__


class LiveCollector:
    """The collection algorithm over three primitives a subclass provides.

    Two samples `interval` seconds apart: the first reads every sysctl, the counters and
    the socket table; the second re-reads counters and sockets for the rates.
    """

    label = "live"

    def __init__(self, interval: float = 1.0, processes: bool = False, role: str | None = None,
                 name: str | None = None, trace_connects: bool = False) -> None:
        self.interval = max(0.0, interval)
        self.trace_connects = trace_connects
        self.processes = processes
        self.role = role
        self.name = name
        self.last_raw: RawHost | None = None

    # primitives -------------------------------------------------------------------------
    def read_file(self, path: str) -> str:
        raise NotImplementedError

    def read_sockets(self, with_info: bool) -> tuple[SockTable, list[str]]:
        raise NotImplementedError

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, s: float) -> None:
        time.sleep(s)

    def inside(self) -> AbstractContextManager[None]:
        """Where the reads happen (a network namespace for LinuxSource)."""
        return nullcontext()

    def extra_meta(self) -> dict[str, object]:
        return {}

    def read_processes(self, table: SockTable | None) -> list[ProcessInfo] | None:
        return None

    def run_command(self, key: str, argv: list[str]) -> str:
        """Output of a read-only command run where the reads happen (`key`: its raw name)."""
        raise FileNotFoundError(errno.ENOENT, "not available", argv[0])

    def read_conntrack_netlink(self) -> str:
        """The conntrack table in /proc/net/nf_conntrack's line format, over netlink."""
        raise FileNotFoundError(errno.ENOENT, "not available", "conntrack")

    def start_trace(self) -> object:
        """Start tracing connect() attempts (host/trace.py); returns a handle for stop_trace."""
        from .trace import ConnectTrace

        t = ConnectTrace()
        t.start()
        return t

    def stop_trace(self, handle: object) -> str:
        from .trace import ConnectTrace

        return handle.stop() if isinstance(handle, ConnectTrace) else ""

    def _read_nat(self, s: RawSample) -> None:
        """On a forwarding host: its SNAT rules and conntrack table (host/nat.py)."""
        if s.files.get(sysctl_path("net.ipv4.ip_forward"), "").strip() != "1":
            return
        for key, argv in ((NFT_RULESET, ["nft", "-j", "list", "ruleset"]), (IPTABLES_SAVE, ["iptables-save"])):
            try:
                s.files[key] = self.run_command(key, argv)
            except OSError as e:
                s.unreadable[key] = _why(e)
        try:
            s.files[CONNTRACK_PROC] = self.read_file(CONNTRACK_PROC)
        except OSError as e:
            try:
                s.files[CONNTRACK_NETLINK] = self.read_conntrack_netlink()
            except OSError as e2:
                s.unreadable[CONNTRACK_PROC] = f"{_why(e)}; netlink: {_why(e2)}"

    # algorithm --------------------------------------------------------------------------
    def _sample(self, paths: list[str], sockets: bool, with_info: bool) -> RawSample:
        s = RawSample(t=self.now())
        for p in paths:
            try:
                s.files[p] = self.read_file(p)
            except OSError as e:
                s.unreadable[p] = _why(e)
        if sockets:
            try:
                s.sockets, notes = self.read_sockets(with_info)
                if notes:
                    s.unreadable.update({"socket table": "; ".join(notes)})
            except HostError as e:
                s.socket_error = e.message
            except OSError as e:
                s.socket_error = _why(e)
        return s

    def collect(self) -> RawHost:
        raw = RawHost(meta={"tool": f"tcpreuse {__version__}", "taken_at": time.time(),
                            "interval": self.interval, "role": self.role})
        if self.name:
            raw.meta["name"] = self.name
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            raw.meta["rlimit_nofile"] = [soft, hard]
        except (OSError, ValueError):
            pass
        with self.inside():
            sysctl_paths = [sysctl_path(n) for n in SYSCTLS]
            reuse = 0
            first = RawSample(t=self.now())
            for p in sysctl_paths:
                try:
                    first.files[p] = self.read_file(p)
                except OSError as e:
                    first.unreadable[p] = _why(e)
            try:
                reuse = int(first.files.get(sysctl_path("net.ipv4.tcp_tw_reuse"), "0").split()[0])
            except (ValueError, IndexError):
                reuse = 0
            # tcp_info only tells whether tw_reuse can apply to a peer; it costs time, and with
            # the default 2 (loopback only) the peer is this kernel, timestamps as set here.
            with_info = reuse == 1
            trace = None
            trace_error = None
            t_trace = 0.0
            if self.trace_connects and self.interval > 0:
                try:
                    trace = self.start_trace()
                    t_trace = self.now()
                except OSError as e:
                    trace_error = f"connect() trace: {e.strerror or e}"
            try:
                s0 = self._sample(list(COUNTER_FILES), True, with_info and self.interval == 0)
                s0.files.update(first.files)
                s0.unreadable.update(first.unreadable)
                self._read_nat(s0)
                raw.samples.append(s0)
                if self.interval > 0:
                    self.sleep(self.interval)
                    raw.samples.append(self._sample(list(COUNTER_FILES), True, with_info))
            finally:
                if trace is not None:
                    text = self.stop_trace(trace) + f"# window {self.now() - t_trace:.6f}\n"
                    if raw.samples:
                        raw.samples[-1].files[TRACE_KEY] = text
            if trace_error:
                raw.samples[0].unreadable[TRACE_KEY] = trace_error
            raw.meta.update(self.extra_meta())
        if self.processes:
            last = raw.samples[-1].sockets
            raw.processes = self.read_processes(last)
        self.last_raw = raw
        return raw

    def observe(self) -> Observed:
        return to_observed(self.collect(), self.label)


# ---- the live Linux host ------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_path(name: str) -> str:
    """The file of network namespace `name` (ip netns), or `name` itself when it is an
    absolute path to a namespace file (``/proc/PID/ns/net``, a container's bind mount)."""
    if name.startswith("/"):
        if os.path.exists(name):
            return name
        raise HostError(f"no network namespace file {name}", hint="give /proc/PID/ns/net of a process inside it")
    if not name or "/" in name or name in (".", ".."):
        raise HostError(f"not a network namespace name: {name!r}")
    for d in NETNS_DIRS:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    raise HostError(f"no network namespace named {name!r}", hint="`ip netns list` shows the namespaces")


@contextmanager
def entered_netns(name: str | None) -> Iterator[None]:
    """Move the calling thread into network namespace `name`, and back afterwards."""
    if name is None:
        yield
        return
    path = netns_path(name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        raise HostError(f"cannot open network namespace {name!r}: permission denied",
                        hint="entering a network namespace needs root") from None
    own_path = "/proc/thread-self/ns/net" if os.path.exists("/proc/thread-self") else "/proc/self/ns/net"
    own = os.open(own_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise HostError(f"cannot enter network namespace {name!r}: {e.strerror}",
                            hint="entering a network namespace needs root (CAP_SYS_ADMIN)") from None
        try:
            yield
        finally:
            _setns(own)  # failing here is a bug worth a traceback: we must not stay inside
    finally:
        os.close(target)
        os.close(own)


class LinuxSource(LiveCollector):
    """The running kernel (or one of its network namespaces), read-only."""

    def __init__(self, netns: str | None = None, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.netns = netns
        if netns is not None:
            netns_path(netns)  # fail early, with a clear message
        self.label = f"netns {netns}" if netns else "live host"
        self._proc = ProcFS()  # /proc/thread-self/net: the namespace this thread entered

    def read_file(self, path: str) -> str:
        if path.startswith("/proc/"):
            return self._proc.read(path[len("/proc/"):])
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def read_sockets(self, with_info: bool) -> tuple[SockTable, list[str]]:
        from .sockdiag import read_sockets

        return read_sockets(with_info=with_info)

    def inside(self) -> AbstractContextManager[None]:
        return entered_netns(self.netns)

    def extra_meta(self) -> dict[str, object]:
        meta: dict[str, object] = {"kernel_release": os.uname().release, "netns": self.netns,
                                   "name": self.name or (f"netns:{self.netns}" if self.netns else socket.gethostname())}
        meta["nat_tables"] = self._nat_tables()
        try:  # IPVS virtual services of this namespace (an L4 load balancer)
            meta["ipvs_services"] = sum(1 for ln in self.read_file("/proc/net/ip_vs").splitlines()
                                        if ln.startswith(("TCP ", "UDP ", "FWM ")))
        except OSError:
            meta["ipvs_services"] = None
        return meta

    def _nat_tables(self) -> list[str] | None:
        """NAT tables of this namespace (legacy iptables list and nftables), read-only."""
        try:
            fwd = self.read_file(sysctl_path("net.ipv4.ip_forward")).strip()
        except OSError:
            return None
        if fwd != "1":
            return []  # not forwarding: no need to look (and `nft` costs a process)
        import shutil
        import subprocess
        found: list[str] = []
        try:
            if "nat" in self.read_file("/proc/net/ip_tables_names").split():
                found.append("iptables nat")
        except OSError:
            pass
        if shutil.which("nft") and os.geteuid() == 0:
            try:
                r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=5)
                found += [f"nft {ln.split(maxsplit=1)[1]}" for ln in r.stdout.splitlines()
                          if ln.startswith("table ") and "nat" in ln]
            except (OSError, subprocess.TimeoutExpired):
                pass
        return found

    def run_command(self, key: str, argv: list[str]) -> str:
        import shutil
        import subprocess

        if shutil.which(argv[0]) is None:
            raise FileNotFoundError(errno.ENOENT, f"{argv[0]} not installed", argv[0])
        if os.geteuid() != 0:
            raise PermissionError(errno.EPERM, "needs root", argv[0])
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            raise OSError(errno.ETIMEDOUT, f"{argv[0]} timed out") from None
        if r.returncode != 0:
            raise OSError(errno.EIO, f"{argv[0]}: {r.stderr.strip()[:120] or 'failed'}")
        return r.stdout

    def read_conntrack_netlink(self) -> str:
        """Without CONFIG_NF_CONNTRACK_PROCFS: a ctnetlink dump (pyroute2), as /proc lines."""
        try:
            from pyroute2.conntrack import TCP_CONNTRACK_TO_NAME, Conntrack
        except ImportError:
            raise FileNotFoundError(errno.ENOENT, "pyroute2 not installed", "conntrack") from None
        lines = []
        try:
            ct = Conntrack()
            try:
                for e in ct.dump_entries():
                    o, r = e.tuple_orig, e.tuple_reply
                    if o.proto != socket.IPPROTO_TCP or e.protoinfo is None:
                        continue
                    state = TCP_CONNTRACK_TO_NAME.get(e.protoinfo.state, str(e.protoinfo.state))
                    lines.append(f"ipv4 2 tcp 6 {e.timeout or 0} {state} src={o.saddr} dst={o.daddr} "
                                 f"sport={o.sport} dport={o.dport} src={r.saddr} dst={r.daddr} "
                                 f"sport={r.sport} dport={r.dport}")
            finally:
                ct.close()
        except OSError:
            raise
        except Exception as e:  # pyroute2 raises its own NetlinkError (an OSError subclass) or others
            raise OSError(errno.EIO, f"conntrack dump failed: {e}") from None
        return "\n".join(lines) + "\n"

    def read_processes(self, table: SockTable | None) -> list[ProcessInfo] | None:
        """Map socket inodes to processes by walking /proc/PID/fd (psutil for the rest)."""
        import psutil

        wanted = set(table.rows["inode"].tolist()) if table is not None else set()
        wanted.discard(0)
        out: list[ProcessInfo] = []
        for pid in psutil.pids():
            fd_dir = f"/proc/{pid}/fd"
            inodes: list[int] = []
            nfd = 0
            try:
                for ent in os.scandir(fd_dir):
                    nfd += 1
                    try:
                        link = os.readlink(ent.path)
                    except OSError:
                        continue
                    if link.startswith("socket:["):
                        ino = int(link[8:-1])
                        if ino in wanted:
                            inodes.append(ino)
            except (PermissionError, FileNotFoundError, ProcessLookupError):
                continue
            if not inodes:
                continue
            try:
                p = psutil.Process(pid)
                soft, hard = p.rlimit(psutil.RLIMIT_NOFILE)
                out.append(ProcessInfo(pid=pid, name=p.name(), nofile_soft=soft, nofile_hard=hard,
                                       fds=nfd, inodes=inodes))
            except (psutil.Error, OSError):
                out.append(ProcessInfo(pid=pid, name="?", fds=nfd, inodes=inodes))
        return out


class FixtureSource(LiveCollector):
    """The live collection algorithm over recorded files (tests; psutil's mock /proc).

    `files` maps a path to its text, or to an OSError to raise (e.g. PermissionError to
    simulate an unreadable entry); a path not in `files` is absent.
    """

    label = "fixture"

    def __init__(self, files: Mapping[str, str | OSError], sockets: list[SockTable] | HostError | None = None,
                 **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.files = dict(files)
        self.tables = sockets
        self._clock = 0.0
        self._n = 0

    def read_file(self, path: str) -> str:
        v = self.files.get(path)
        if v is None:
            raise FileNotFoundError(errno.ENOENT, "absent", path)
        if isinstance(v, OSError):
            raise v
        return v

    def run_command(self, key: str, argv: list[str]) -> str:
        return self.read_file(key)

    def start_trace(self) -> object:
        return "fixture"

    def stop_trace(self, handle: object) -> str:
        return self.read_file(TRACE_KEY)

    def read_sockets(self, with_info: bool) -> tuple[SockTable, list[str]]:
        if isinstance(self.tables, HostError):
            raise self.tables
        if not self.tables:
            return SockTable.empty(), []
        t = self.tables[min(self._n, len(self.tables) - 1)]
        self._n += 1
        return t, []

    def now(self) -> float:
        return self._clock

    def sleep(self, s: float) -> None:
        self._clock += s


class SnapshotSource:
    """A `tcpreuse doctor --save` archive."""

    def __init__(self, path: str | Path, role: str | None = None) -> None:
        self.path = Path(path)
        self.role = role
        self.label = f"snapshot {self.path.name}"

    def observe(self) -> Observed:
        from .snapshot import load

        raw = load(self.path)
        obs = to_observed(raw, self.label)
        if self.role:
            obs.role = self.role
        return obs
