"""What this host lets us trace, checked before anything starts, one clear line each.

Reads tracefs (mounting it for the run when it is not mounted, and unmounting it after
only then), the tracepoints' format files (reason numbers, fields), BTF, lockdown, and
whether bpftrace is installed and we are root. The result is a :class:`KernelInfo`;
:func:`problems` lists what stops a trace, :func:`KernelInfo.missing` what only narrows it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TcpreuseError
from .formats import EventFormat, parse_format

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")
BTF = Path("/sys/kernel/btf/vmlinux")
LOCKDOWN = Path("/sys/kernel/security/lockdown")

# tracepoint -> the fields the program reads (bpftrace also needs BTF for the structs)
TRACEPOINTS: dict[str, tuple[str, ...]] = {
    "skb:kfree_skb": ("skbaddr", "rx_sk", "protocol", "reason"),
    "tcp:tcp_send_reset": ("skbaddr", "skaddr", "state", "reason", "saddr", "daddr"),
    "tcp:tcp_retransmit_synack": ("skaddr", "sport", "dport", "family", "saddr", "daddr"),
    "sock:inet_sk_error_report": ("error", "sport", "dport", "family", "protocol", "saddr", "daddr"),
    "sock:inet_sock_set_state": ("skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol",
                                 "saddr", "daddr"),
    "syscalls:sys_enter_connect": ("uservaddr",),
    "syscalls:sys_exit_connect": ("ret",),
    "syscalls:sys_enter_bind": ("umyaddr",),
    "syscalls:sys_exit_bind": ("ret",),
}

# include/net/tcp_states.h: stable since 2.6; used only when no tracepoint prints them.
TCP_STATES_FALLBACK = {
    "TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4, "TCP_FIN_WAIT2": 5,
    "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8, "TCP_LAST_ACK": 9, "TCP_LISTEN": 10,
    "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12,
}


class TraceUnavailable(TcpreuseError):
    """Tracing cannot run on this host (the message says why, in one line)."""


@dataclass
class KernelInfo:
    release: str
    formats: dict[str, EventFormat] = field(default_factory=dict)
    drop_reasons: dict[str, int] = field(default_factory=dict)  # enum skb_drop_reason
    rst_reasons: dict[str, int] = field(default_factory=dict)  # enum sk_rst_reason
    states: dict[str, int] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # tracepoint -> why it cannot be used

    @property
    def drop_names(self) -> dict[int, str]:
        return {v: k for k, v in self.drop_reasons.items()}

    @property
    def rst_names(self) -> dict[int, str]:
        return {v: k for k, v in self.rst_reasons.items()}

    @property
    def state_names(self) -> dict[int, str]:
        return {v: k for k, v in self.states.items()}


def tracing_dir() -> Path | None:
    for d in (TRACEFS, DEBUGFS_TRACING):
        if (d / "events").is_dir():
            return d
    return None


@contextlib.contextmanager
def tracefs_mounted() -> Iterator[Path]:
    """tracefs for the duration of the block: mounted here only if it was not, and then
    unmounted after (the one mount a trace may change)."""
    d = tracing_dir()
    if d is not None:
        yield d
        return
    if os.geteuid() != 0:
        raise TraceUnavailable("tracefs is not mounted, and mounting it needs root")
    try:
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        msg = getattr(e, "stderr", "") or str(e)
        raise TraceUnavailable(f"tracefs is not mounted and could not be mounted at {TRACEFS}: {msg.strip()}") from None
    try:
        yield TRACEFS
    finally:
        subprocess.run(["umount", str(TRACEFS)], check=False, capture_output=True)


def read_kernel(tracing: Path) -> KernelInfo:
    """Formats of the tracepoints we use, with their enums; what is missing and why."""
    info = KernelInfo(release=os.uname().release)
    for tp, need in TRACEPOINTS.items():
        system, name = tp.split(":")
        p = tracing / "events" / system / name / "format"
        try:
            fmt = parse_format(tp, p.read_text())
        except OSError:
            info.missing[tp] = f"tracepoint {tp} does not exist on {info.release}"
            continue
        info.formats[tp] = fmt
        lack = [f for f in need if not fmt.has(f)]
        if lack:
            info.missing[tp] = f"tracepoint {tp} has no field {', '.join(lack)} on {info.release}"
    kfree = info.formats.get("skb:kfree_skb")
    if kfree is not None:
        info.drop_reasons = dict(kfree.symbols.get("reason", {}))
        info.drop_reasons.pop("MAX", None)
        if not info.drop_reasons and "skb:kfree_skb" not in info.missing:
            info.missing["skb:kfree_skb"] = "skb:kfree_skb prints no reason table on this kernel"
    rst = info.formats.get("tcp:tcp_send_reset")
    if rst is not None:
        info.rst_reasons = dict(rst.symbols.get("reason", {}))
        info.rst_reasons.pop("MAX", None)
    st = info.formats.get("sock:inet_sock_set_state")
    info.states = dict(st.symbols.get("newstate", {})) if st is not None else {}
    if not info.states:
        info.states = dict(TCP_STATES_FALLBACK)
    return info


def lockdown_mode() -> str | None:
    """The active lockdown mode ("none", "integrity", "confidentiality"), or None if unknown."""
    try:
        text = LOCKDOWN.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return None


def bpftrace_path() -> str | None:
    return shutil.which("bpftrace")


def problems() -> list[str]:
    """What stops a trace before the tracepoints are looked at; one line each, empty if none."""
    out: list[str] = []
    if os.geteuid() != 0:
        out.append("not root: loading BPF programs needs root (CAP_BPF and CAP_PERFMON)")
    if bpftrace_path() is None:
        out.append("bpftrace is not installed (Debian/Ubuntu: apt-get install bpftrace)")
    if not BTF.exists():
        out.append(f"no BTF ({BTF} absent): the kernel was built without CONFIG_DEBUG_INFO_BTF")
    mode = lockdown_mode()
    if mode == "confidentiality":
        out.append("kernel lockdown is 'confidentiality': BPF programs cannot read kernel memory")
    return out


def check() -> None:
    """Raise TraceUnavailable with the first problem (the others follow in the message)."""
    found = problems()
    if found:
        raise TraceUnavailable(found[0] + ("" if len(found) == 1 else f" (also: {'; '.join(found[1:])})"),
                               hint="tcpreuse doctor still reads the counters (TcpExtTW, TcpExtPAWSPassive, "
                                    "TcpExtListenOverflows) without tracing")


def netns_inode(name: str) -> int:
    """The inode number of a named network namespace (ip netns), as the kernel's ns.inum."""
    for base in ("/run/netns", "/var/run/netns"):
        p = Path(base) / name
        if p.exists():
            return os.stat(p).st_ino
    if name.isdigit():
        return int(name)
    raise TcpreuseError(f"no network namespace named {name!r} (ip netns list)")


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino
