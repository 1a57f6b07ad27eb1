"""Helpers the rules that read HostFacts share: numbers, sysctl fixes, wording.

Kept out of the rules package so that each mechanism module stays a short list of
rules, like mitmproxy addons.
"""

from __future__ import annotations

from typing import Any

from ..findings import EvidenceItem, Fix
from ..host.facts import rate
from ..host.records import HostFacts, TupleUse
from ..model.profiles import Profile, get_profile
from .base import Evidence

__all__ = ["EvidenceItem", "Fix", "fix_list", "group", "in_effect", "linux_hosts", "num", "port_list_text", "profile_of",
           "rate", "sysctl_fix", "tuple_label", "windows_pool"]


def linux_hosts(ev: Evidence) -> list[HostFacts]:
    return [h for h in ev.hosts.values() if h.os == "linux"]


def profile_of(h: HostFacts) -> Profile | None:
    return get_profile(h.profile) if h.profile else None


def group(h: HostFacts, default: str) -> str:
    """Scenario host group a `set` override targets: the host's role, else `default`."""
    return h.role if h.role in ("client", "server") else default


def in_effect(h: HostFacts, name: str, value: Any) -> bool:
    """Whether sysctl `name` already has `value` on this host (compared as parsed values)."""
    if name not in h.settings:
        return False
    from ..host.facts import parse_sysctl

    want = value if not isinstance(value, str) else parse_sysctl(name, value)
    if isinstance(want, list):
        want = tuple(want)
    return bool(h.settings[name] == want)


def sysctl_fix(id: str, title: str, h: HostFacts, default_group: str, values: dict[str, Any],
               caveat: str = "", extra_commands: list[str] | None = None) -> Fix | None:
    """A fix that sets sysctls; values already in effect are left out, and a fix whose
    every value is in effect is no fix (None)."""
    values = {k: v for k, v in values.items() if not in_effect(h, k, v)}
    if not values:
        return None
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


def fix_list(*fixes: Fix | None) -> list[Fix]:
    """The fixes that are fixes (sysctl_fix gives None for a setting already in effect)."""
    return [f for f in fixes if f is not None]


def windows_pool(h: HostFacts) -> tuple[int, int]:
    """A Windows host's dynamic port range: first port and size (model.stacks.port_range)."""
    from ..model.stacks import port_range

    lo, hi = port_range(get_profile("windows-2022"), h.settings)
    return lo, hi - lo + 1


def port_list_text(ports: Any) -> str:
    """Ports as ip_local_reserved_ports writes them: runs as ranges ("8000-8099,9000")."""
    from ..model.settings import format_port_list

    return format_port_list(ports)
