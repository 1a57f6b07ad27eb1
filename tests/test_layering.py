"""Arrows between packages point one way (DESIGN.md): model/ imports only model/, and
host/ (which produces HostFacts) imports nothing from diagnose/ (which reads them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tcpreuse"


def _imports(path: Path) -> set[str]:
    """Absolute names of the tcpreuse modules `path` imports (TYPE_CHECKING ones too)."""
    here = path.relative_to(PKG.parent).with_suffix("").parts[:-1]  # its package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tcpreuse")}
        elif isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            mod = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            if mod.startswith("tcpreuse"):
                out.add(mod)
    return out


@pytest.mark.parametrize(("package", "allowed"), [
    ("model", ("tcpreuse.model", "tcpreuse.errors")),
    ("host", None),
])
def test_imports_point_one_way(package: str, allowed: tuple[str, ...] | None) -> None:
    bad = {}
    for f in sorted((PKG / package).rglob("*.py")):
        mods = _imports(f)
        if allowed is not None:
            wrong = {m for m in mods if not m.startswith(allowed)}
        else:
            wrong = {m for m in mods if m.startswith("tcpreuse.diagnose")}
        if wrong:
            bad[f.name] = sorted(wrong)
    assert not bad, bad


def test_the_parser_resolves_relative_imports() -> None:
    mods = _imports(PKG / "host" / "facts.py")
    assert "tcpreuse.host.records" in mods and "tcpreuse.model.stacks" in mods
    assert "tcpreuse.diagnose.base" in _imports(PKG / "diagnose" / "judge.py")
