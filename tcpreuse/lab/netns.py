"""Network namespaces with recognisable names, always removed.

Everything tcpreuse creates on the running kernel is named with PREFIX ("tcpr-") so that a
killed run's leftovers can be found and removed (`tcpreuse lab cleanup`). Nothing here
touches the host's own namespace: sysctls are written with `ip netns exec NS sysctl`,
links are created inside namespaces or moved into them at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import LabError

PREFIX = "tcpr-"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise LabError("the `ip` command (iproute2) is not installed") from None
    if check and r.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {r.stderr.strip() or 'failed'}")
    return r


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("network namespaces need root (run as root, or use `simulate` instead)")
    if shutil.which("ip") is None:
        raise LabError("the `ip` command (iproute2) is not installed")


def list_namespaces(prefix: str = PREFIX) -> list[str]:
    r = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


@dataclass
class Namespace:
    """One network namespace. Use as a context manager or call delete()."""

    name: str
    sysctls: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise LabError(f"namespace names must start with {PREFIX!r}: {self.name!r}")
        if len(self.name) > 64:
            raise LabError(f"namespace name too long: {self.name!r}")

    def create(self) -> Namespace:
        require_root()
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        for k, v in self.sysctls.items():
            self.sysctl(k, v)
        return self

    def delete(self) -> None:
        # Killing the processes inside first lets the namespace go away at once.
        pids = _ip("netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _ip("netns", "del", self.name, check=False)

    def __enter__(self) -> Namespace:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def cmd(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self.cmd(argv), capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise LabError(f"[{self.name}] {' '.join(argv)}: {r.stderr.strip() or r.stdout.strip() or 'failed'}")
        return r

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(argv), **kw)  # type: ignore[call-overload]

    def sysctl(self, key: str, value: str | int) -> None:
        """Write a sysctl inside the namespace (never the host's)."""
        path = "/proc/sys/" + key.replace(".", "/")
        if isinstance(value, tuple | list):
            value = " ".join(str(v) for v in value)
        self.run(["sh", "-c", f"echo {str(value)!r} > {path}"])

    def read(self, path: str) -> str:
        return self.run(["cat", path]).stdout

    def batch(self, lines: Sequence[str]) -> None:
        """Several `ip` commands in one process (`ip -n NS -batch -`)."""
        if not lines:
            return
        try:
            r = subprocess.run(["ip", "-n", self.name, "-batch", "-"], input="\n".join(lines) + "\n",
                               capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise LabError("the `ip` command (iproute2) is not installed") from None
        if r.returncode != 0:
            raise LabError(f"[{self.name}] ip -batch: {r.stderr.strip() or 'failed'}")

    def write_sysctls(self, values: dict[str, str]) -> None:
        """Write several sysctls inside the namespace in one process (never the host's)."""
        if values:
            self.run(["sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items())])

    def read_sysctls(self, names: Sequence[str]) -> dict[str, str]:
        """Current values inside the namespace; whitespace normalised ("32768 60999")."""
        if not names:
            return {}
        paths = {"/proc/sys/" + k.replace(".", "/"): k for k in names}
        r = self.run(["grep", "-H", "-s", "", *paths], check=False)  # "path:value" lines
        out = {}
        for line in r.stdout.splitlines():
            path, _, value = line.partition(":")
            if path in paths:
                out[paths[path]] = " ".join(value.split())
        return out

    def nft(self, ruleset: str) -> None:
        """Load an nftables ruleset inside the namespace (tables named tcpr-*)."""
        if shutil.which("nft") is None:
            raise LabError("the `nft` command (nftables) is not installed; NAT, LB and loss need it")
        self.run(["nft", "-f", "-"], input=ruleset)


def veth_pair(a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
    """A veth link between two namespaces, created inside `a` so the host never holds it."""
    _ip("-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
    _ip("-n", a.name, "link", "set", a_if, "up")
    _ip("-n", b.name, "link", "set", b_if, "up")


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every namespace named with `prefix` (leftovers of killed runs)."""
    gone = []
    for n in list_namespaces(prefix):
        Namespace(n).delete()
        gone.append(n)
    return gone
