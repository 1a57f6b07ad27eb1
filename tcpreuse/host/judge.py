"""Helpers the doctor checks share (diagnose/rules/host_*.py): numbers, fixes, wording.

Kept out of the rules package so that each check module stays a short list of
@rule functions, like mitmproxy addons.
"""

from __future__ import annotations

from typing import Any

from ..diagnose.base import Evidence, HostFacts, TupleUse
from ..findings import EvidenceItem, Fix
from ..model.profiles import Profile, get_profile
from .facts import rate

__all__ = ["EvidenceItem", "Fix", "group", "linux_hosts", "num", "profile_of", "rate", "sysctl_fix", "tuple_label"]


def linux_hosts(ev: Evidence) -> list[HostFacts]:
    return [h for h in ev.hosts.values() if h.os == "linux"]


def profile_of(h: HostFacts) -> Profile | None:
    return get_profile(h.profile) if h.profile else None


def group(h: HostFacts, default: str) -> str:
    """Scenario host group a `set` override targets: the host's role, else `default`."""
    return h.role if h.role in ("client", "server") else default


def sysctl_fix(id: str, title: str, h: HostFacts, default_group: str, values: dict[str, Any],
               caveat: str = "", extra_commands: list[str] | None = None) -> Fix:
    g = group(h, default_group)
    cmds = [f"sysctl -w {k}={_shell(v)}" for k, v in values.items()]
    cmds.append("persist it in /etc/sysctl.d/90-tcpreuse.conf")
    return Fix(id=id, title=title, set={f"{g}:{k}": v for k, v in values.items()},
               commands=cmds + (extra_commands or []), caveat=caveat)


def _shell(v: Any) -> str:
    s = str(v)
    return f'"{s}"' if " " in s else s


def num(x: float | int | None, unit: str = "", digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, int) or (float(x).is_integer() and abs(x) >= 10):
        return f"{int(x):,}{unit}"
    return f"{x:,.{digits}f}{unit}"


def tuple_label(t: TupleUse) -> str:
    dst = f"[{t.dst}]" if ":" in t.dst else t.dst
    return f"{t.src} -> {dst}:{t.dport}"


def pressure(t: TupleUse) -> float:
    return t.in_use / t.budget if t.budget else 1.0
