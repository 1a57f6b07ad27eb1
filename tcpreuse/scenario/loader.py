"""Load scenarios from files or built-in names, apply `--set` overrides, validate.

Errors name the file, the line (found by locating the field in the TOML text) and the
field path, and say what was expected.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import ScenarioError, TcpreuseError, UnknownSettingError
from ..model.profiles import get_profile
from ..model.settings import resolve_params, resolve_settings
from .schema import Scenario

BUILTIN_PACKAGE = "tcpreuse.scenario"


def builtin_names() -> list[str]:
    d = resources.files(BUILTIN_PACKAGE) / "builtin"
    return sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".toml"))


def builtin_text(name: str) -> str:
    return (resources.files(BUILTIN_PACKAGE) / "builtin" / f"{name}.toml").read_text()


def list_builtin() -> list[tuple[str, str]]:
    """(name, one-line summary) of every built-in scenario."""
    out = []
    for n in builtin_names():
        data = tomllib.loads(builtin_text(n))
        out.append((n, str(data.get("summary", ""))))
    return out


# ---- locating a field in TOML text --------------------------------------------------

def locate(text: str, loc: Iterable[str | int]) -> int | None:
    """1-based line of the field at `loc` (a pydantic-style path) in TOML `text`, best effort.

    Handles [[array]] tables by counting headers, [table] headers, dotted sub-tables such as
    [host.settings], and `key = value` lines (quoted keys too).
    """
    lines = text.splitlines()
    pos = 0  # line index where the search continues
    prefix: list[str] = []
    best: int | None = None
    parts = list(loc)
    i = 0
    while i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            header = re.compile(r"^\s*\[\[\s*" + re.escape(".".join(prefix)) + r"\s*\]\]")
            seen = -1
            for j in range(pos, len(lines)):
                if header.match(lines[j]):
                    seen += 1
                    if seen == part:
                        pos, best = j, j + 1
                        break
            else:
                return best
            i += 1
            continue
        key = re.escape(str(part))
        table = re.compile(r"^\s*\[\[?\s*" + re.escape(".".join([*prefix, str(part)])) + r"\s*\]\]?")
        kv = re.compile(r'^\s*(?:"' + key + r'"|' + key + r")\s*=")
        inline = re.compile(r'(?:[{,]\s*)(?:"' + key + r'"|' + key + r")\s*=")
        found = None
        for j in range(pos, len(lines)):
            line = lines[j]
            if j > pos and re.match(r"^\s*\[\[", line) and prefix and not line.strip().startswith(
                "[[" + ".".join(prefix)
            ) and not table.match(line):
                break
            if table.match(line) or kv.match(line) or inline.search(line):
                found = j
                break
        if found is None:
            return best
        pos, best = found, found + 1
        prefix.append(str(part))
        i += 1
    return best


def _fmt_loc(loc: Iterable[str | int]) -> str:
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + (f'"{p}"' if "." in p else p)
    return out


class _Where:
    def __init__(self, origin: str, text: str | None) -> None:
        self.origin, self.text = origin, text

    def error(self, loc: tuple[str | int, ...], msg: str, hint: str | None = None,
              cls: type[ScenarioError] = ScenarioError) -> ScenarioError:
        line = locate(self.text, loc) if self.text else None
        where = f"{self.origin}:{line}" if line else self.origin
        field = _fmt_loc(loc)
        return cls(f"{where}: {field}: {msg}" if field else f"{where}: {msg}", hint=hint)


# ---- overrides ----------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """A `--set` value: a TOML scalar/array if it parses as one, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _find_named(items: list[dict[str, Any]], name: str, what: str, key: str) -> dict[str, Any]:
    for it in items:
        if it.get("name", "load" if what == "workload" else None) == name:
            return it
    names = ", ".join(str(it.get("name")) for it in items)
    raise ScenarioError(f"--set {key}: no {what} named {name!r} (have: {names})")


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Apply one `--set KEY=VALUE` to raw scenario data.

    KEY forms:  seed | duration_s | path.rtt_ms | nat.addresses | lb.ignore_msl
                host.GROUP.FIELD | host.GROUP.settings.SYSCTL.NAME | host.GROUP.model.PARAM
                GROUP:SYSCTL.NAME (shorthand for host.GROUP.settings.SYSCTL.NAME)
                workload.FIELD (when there is one workload) | workload.NAME.FIELD
    """
    if ":" in key:
        group, _, setting = key.partition(":")
        key = f"host.{group}.settings.{setting}"
    parts = key.split(".")
    head = parts[0]
    if head == "host":
        if len(parts) < 3:
            raise ScenarioError(f"--set {key}: expected host.GROUP.FIELD")
        h = _find_named(data.setdefault("host", []), parts[1], "host group", key)
        if parts[2] in ("settings", "model") and len(parts) > 3:
            h.setdefault(parts[2], {})[".".join(parts[3:])] = value
        elif len(parts) == 3:
            h[parts[2]] = value
        else:
            raise ScenarioError(f"--set {key}: expected host.GROUP.FIELD, host.GROUP.settings.NAME "
                                "or host.GROUP.model.NAME")
        return
    if head == "workload":
        wls = data.setdefault("workload", [])
        if len(parts) == 2:
            if len(wls) != 1:
                raise ScenarioError(f"--set {key}: the scenario has {len(wls)} workloads; "
                                    "use workload.NAME.FIELD")
            wls[0][parts[1]] = value
        elif len(parts) == 3:
            _find_named(wls, parts[1], "workload", key)[parts[2]] = value
        else:
            raise ScenarioError(f"--set {key}: expected workload.FIELD or workload.NAME.FIELD")
        return
    if head in ("nat", "lb", "path") and len(parts) == 2:
        sect = data.get(head)
        if sect is None:
            if head == "path":
                sect = data["path"] = {}
            else:
                raise ScenarioError(f"--set {key}: the scenario has no [{head}] section")
        sect[parts[1]] = value
        return
    if len(parts) == 1 and head in ("seed", "secrets_seed", "duration_s", "name", "summary"):
        data[head] = value
        return
    raise ScenarioError(
        f"--set {key}: unknown key",
        hint="keys look like workload.rate, host.server.count, client:net.ipv4.tcp_tw_reuse, "
        "lb.ignore_msl, nat.addresses, duration_s, seed",
    )


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = parse_value(val.strip())
    return out


# ---- loading ------------------------------------------------------------------------

def read_source(ref: str) -> tuple[str, str]:
    """(origin, text) of a scenario given as a path or a built-in name."""
    p = Path(ref)
    if p.suffix == ".toml" or p.exists():
        try:
            return str(p), p.read_text()
        except OSError as e:
            raise ScenarioError(f"{ref}: cannot read scenario file: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ScenarioError(f"{ref}: not a text (UTF-8) file") from None
    if ref in builtin_names():
        return f"<builtin:{ref}>", builtin_text(ref)
    raise ScenarioError(
        f"no scenario file or built-in scenario named {ref!r}",
        hint="`tcpreuse scenarios` lists the built-in ones",
    )


def load_scenario(ref: str, overrides: dict[str, Any] | None = None) -> Scenario:
    origin, text = read_source(ref)
    return load_text(text, origin, overrides)


def load_text(text: str, origin: str = "<scenario>", overrides: dict[str, Any] | None = None) -> Scenario:
    where = _Where(origin, text)
    data = _parse(text, origin)
    if "extends" in data:
        data, where = _extend(data, where)
    return from_data(data, where, overrides)


def _parse(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{origin}: not valid TOML: {e}") from None


def _extend(data: dict[str, Any], where: _Where, depth: int = 0) -> tuple[dict[str, Any], _Where]:
    """`extends = "BASE"` (a built-in name or a path relative to the file) plus a `[set]`
    table of `--set`-style overrides: a variant without copying its base."""
    if depth > 8:
        raise where.error(("extends",), "scenarios extend each other in a loop")
    base_ref = data.pop("extends")
    if not isinstance(base_ref, str):
        raise where.error(("extends",), "expected the name or path of the base scenario")
    sets = data.pop("set", {})
    if not isinstance(sets, dict):
        raise where.error(("set",), "expected a table of KEY = VALUE overrides")
    ref = base_ref
    if not ref.endswith(".toml") and ref not in builtin_names():
        raise where.error(("extends",), f"no built-in scenario named {ref!r}")
    if ref.endswith(".toml") and not Path(ref).is_absolute() and not where.origin.startswith("<"):
        ref = str(Path(where.origin).parent / ref)
    origin, text = read_source(ref)
    base = _parse(text, origin)
    base_where = _Where(origin, text)
    if "extends" in base:
        base, base_where = _extend(base, base_where, depth + 1)
    for k, v in sets.items():
        try:
            apply_override(base, k, v)
        except ScenarioError as e:
            raise where.error(("set", k), e.message.split(": ", 1)[-1], hint=e.hint) from None
    base.pop("notes", None) if "notes" in data else None
    for k, v in data.items():
        base[k] = v
    return base, where


def from_data(data: dict[str, Any], where: _Where | None = None,
              overrides: dict[str, Any] | None = None) -> Scenario:
    where = where or _Where("<scenario>", None)
    data = copy.deepcopy(data)
    for k, v in (overrides or {}).items():
        apply_override(data, k, v)
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise where.error(loc, msg + more) from None
    _cross_check(sc, where)
    return sc


def _cross_check(sc: Scenario, where: _Where) -> None:
    groups = {h.name: (i, h) for i, h in enumerate(sc.host)}
    for i, h in enumerate(sc.host):
        try:
            prof = get_profile(h.profile)
        except TcpreuseError as e:
            raise where.error(("host", i, "profile"), e.message, hint=e.hint) from None
        if h.ports and h.role != "server":
            raise where.error(("host", i, "ports"), "ports applies to server groups only (the ports they listen on)")
        if h.role == "server" and prof.os != "linux":
            raise where.error(("host", i, "profile"), f"server hosts must run a Linux profile, got {prof.name}")
        for name, value in h.settings.items():
            try:
                resolve_settings(prof, {name: value})
            except UnknownSettingError as e:
                raise where.error(("host", i, "settings", name), e.message, hint=e.hint,
                                  cls=UnknownSettingError) from None
            except ValueError as e:
                raise where.error(("host", i, "settings", name), str(e)) from None
        settings, _notes = resolve_settings(prof, h.settings)
        try:
            params = resolve_params(prof, h.model)
        except UnknownSettingError as e:
            raise where.error(("host", i, "model"), e.message, hint=e.hint) from None
        except ValueError as e:
            raise where.error(("host", i, "model"), str(e)) from None
        h._settings = settings
        h._params = params
    for i, w in enumerate(sc.workload):
        if w.clients not in groups or groups[w.clients][1].role != "client":
            raise where.error(("workload", i, "clients"),
                              f"{w.clients!r} is not a client host group")
        if w.target == "lb":
            if sc.lb is None:
                raise where.error(("workload", i, "target"), "target is 'lb' but there is no [lb] section")
        elif w.target not in groups or groups[w.target][1].role != "server":
            raise where.error(("workload", i, "target"), f"{w.target!r} is not 'lb' or a server host group")
        if w.port is not None:
            if w.target == "lb":
                if sc.lb is not None and w.port != sc.lb.port:
                    raise where.error(("workload", i, "port"), f"port {w.port} is not the VIP's port {sc.lb.port}")
            else:
                have = groups[w.target][1].listen_ports
                if w.port not in have:
                    raise where.error(("workload", i, "port"),
                                      f"{w.target!r} does not listen on port {w.port} "
                                      f"(it listens on {', '.join(map(str, have))})",
                                      hint="add it to the server group's `ports`")
        prof = get_profile(groups[w.clients][1].profile)
        if w.bind != "none" and prof.os != "linux":
            raise where.error(("workload", i, "bind"), f"bind = {w.bind!r} is modelled for Linux clients only")
    names = [w.name for w in sc.workload]
    if len(set(names)) != len(names):
        raise where.error(("workload",), "workload names must be unique")
    if sc.lb is not None and (sc.lb.backends not in groups or groups[sc.lb.backends][1].role != "server"):
        raise where.error(("lb", "backends"), f"{sc.lb.backends!r} is not a server host group")
    if sc.nat is not None:
        for c in sc.nat.clients:
            if c not in groups or groups[c][1].role != "client":
                raise where.error(("nat", "clients"), f"{c!r} is not a client host group")
        lo, hi = sc.nat.port_range
        if not 1 <= lo <= hi <= 65535:
            raise where.error(("nat", "port_range"), "expected 1 <= low <= high <= 65535")
