"""`--grid KEY=V1,V2,...`: axes of a sweep, in the `--set` syntax of the scenario loader.

Values are TOML scalars or arrays (as `--set` reads them); commas inside brackets or
quotes do not split, so `--grid 'client:net.ipv4.ip_local_port_range=[1024, 65535],"32768 60999"'`
has two values.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..scenario.loader import parse_value
from . import SweepError


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[Any, ...]


def split_values(text: str) -> list[str]:
    """Split on commas that are not inside [...] or quotes."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(specs: Iterable[str]) -> list[Axis]:
    axes: list[Axis] = []
    seen: set[str] = set()
    for spec in specs:
        key, eq, vals = spec.partition("=")
        key = key.strip()
        if not eq or not key:
            raise SweepError(f"--grid {spec!r}: expected KEY=V1,V2,...",
                             hint="e.g. --grid workload.rate=1000,2000,4000 --grid server:net.ipv4.tcp_tw_recycle=0,1")
        raw = [v for v in split_values(vals) if v]
        if not raw:
            raise SweepError(f"--grid {key}: no values (empty grid)")
        if key in seen:
            raise SweepError(f"--grid {key} is given twice; put all its values in one --grid")
        seen.add(key)
        values = tuple(parse_value(v) for v in raw)
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"--grid {key}: a value is repeated")
        axes.append(Axis(key, values))
    if not axes:
        raise SweepError("no --grid given (empty grid)", hint="e.g. --grid workload.rate=1000,2000,4000")
    return axes


def points(axes: list[Axis]) -> list[dict[str, Any]]:
    """Every combination, first axis varying slowest."""
    return [dict(zip([a.key for a in axes], combo, strict=True))
            for combo in itertools.product(*(a.values for a in axes))]


def count(axes: list[Axis]) -> int:
    n = 1
    for a in axes:
        n *= len(a.values)
    return n


def point_at(axes: list[Axis], i: int) -> dict[str, Any]:
    """Point number i of points(axes) without listing the others (mixed radix, the last
    axis varying fastest)."""
    out: dict[str, Any] = {}
    for a in reversed(axes):
        i, k = divmod(i, len(a.values))
        out[a.key] = a.values[k]
    return {a.key: out[a.key] for a in axes}
