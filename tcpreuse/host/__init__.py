"""Read-only collectors for a live host, snapshots of one, and pasted command output.

The facade: pick the sources (:func:`sources_for`) and observe them; :mod:`.facts` turns
each observation into :class:`~tcpreuse.host.records.HostFacts`, which
``tcpreuse.diagnose.base.evidence_of()`` puts in the evidence the rules read. Nothing here
imports ``tcpreuse.diagnose``: data flows from host/ to diagnose/, not back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HostError

if TYPE_CHECKING:
    from .observed import Observed
    from .paste import Parsed
    from .source import HostSource


def _is_snapshot(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            magic = f.read(262)
    except FileNotFoundError:
        raise HostError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise HostError(f"{path} is a directory; pass the files in it") from None
    except PermissionError:
        raise HostError(f"cannot read {path}: permission denied") from None
    if magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00":
        return True
    return len(magic) >= 262 and magic[257:262] == b"ustar"  # an uncompressed tar


class PasteSource:
    """One host's pasted command output (one or several files)."""

    def __init__(self, parts: list[Parsed], role: str | None = None, profile: str | None = None) -> None:
        self.parts = parts
        self.role = role
        self.profile = profile
        self.label = "pasted " + ", ".join(p.origin for p in parts)

    def observe(self) -> Observed:
        from .paste import to_observed

        obs = to_observed(self.parts)
        obs.role = self.role or obs.role
        if self.profile and obs.os == "linux":
            obs.profile = self.profile
        return obs


def sources_for(froms: list[str], *, netns: str | None = None, interval: float = 1.0,
                processes: bool = False, role: str | None = None, profile: str | None = None,
                name: str | None = None, trace_connects: bool = False) -> list[HostSource]:
    """The live host (or `netns`) when `froms` is empty, else one source per host in them."""
    from .source import LinuxSource, SnapshotSource

    if not froms:
        return [LinuxSource(netns=netns, interval=interval, processes=processes, role=role, name=name,
                            trace_connects=trace_connects)]
    from .paste import group_by_host, read_paste

    out: list[HostSource] = []
    pastes = []
    for f in froms:
        p = Path(f)
        if _is_snapshot(p):
            src = SnapshotSource(p, role=role)
            out.append(src)
        else:
            pastes.append(read_paste(p))
    for grp in group_by_host(pastes):
        out.append(PasteSource(grp, role=role, profile=profile))
    return out
