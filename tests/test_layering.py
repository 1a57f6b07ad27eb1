"""Arrows between packages point one way (DESIGN.md): model/ imports only model/,
host/ (which produces HostFacts) imports nothing from diagnose/ (which reads them),
scenario/ (which sim/ and lab/ both read) nothing from either, and report/ renders
results it is given: it runs no capture analysis, diagnosis or simulation (commands/ do)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "tcpreuse"


def _imported(path: Path) -> set[tuple[str, str]]:
    """(absolute module, name) for each tcpreuse import in `path` (TYPE_CHECKING ones too);
    name is "" for `import tcpreuse.x`."""
    here = path.relative_to(PKG.parent).with_suffix("").parts[:-1]  # its package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {(a.name, "") for a in node.names if a.name.startswith("tcpreuse")}
        elif isinstance(node, ast.ImportFrom):
            base = list(here[:len(here) - node.level + 1]) if node.level else []
            mod = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            if mod.startswith("tcpreuse"):
                out |= {(mod, a.name) for a in node.names}
    return out


def _imports(path: Path) -> set[str]:
    """Absolute names of the tcpreuse modules `path` imports (TYPE_CHECKING ones too)."""
    return {mod for mod, _ in _imported(path)}


@pytest.mark.parametrize(("package", "allowed", "forbidden"), [
    ("model", ("tcpreuse.model", "tcpreuse.errors"), ()),
    ("host", None, ("tcpreuse.diagnose",)),
    ("scenario", None, ("tcpreuse.sim", "tcpreuse.lab")),
    ("report", None, ("tcpreuse.diagnose", "tcpreuse.sim", "tcpreuse.lab", "tcpreuse.load",
                      "tcpreuse.sweep.", "tcpreuse.capture.distributed", "tcpreuse.commands")),
])
def test_imports_point_one_way(package: str, allowed: tuple[str, ...] | None, forbidden: tuple[str, ...]) -> None:
    bad = {}
    for f in sorted((PKG / package).rglob("*.py")):
        mods = _imports(f)
        wrong = {m for m in mods if (allowed is not None and not m.startswith(allowed)) or m.startswith(forbidden)}
        if wrong:
            bad[f.name] = sorted(wrong)
    assert not bad, bad


def test_report_takes_analysed_captures() -> None:
    """report/ may name the CaptureAnalysis type, never run analyze_paths() and the like."""
    bad = {f.name: sorted(name for mod, name in _imported(f) if mod == "tcpreuse.capture.analysis"
                          and not name[:1].isupper())
           for f in sorted((PKG / "report").rglob("*.py"))}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_the_parser_resolves_relative_imports() -> None:
    mods = _imports(PKG / "host" / "facts.py")
    assert "tcpreuse.host.records" in mods and "tcpreuse.model.stacks" in mods
    assert "tcpreuse.diagnose.base" in _imports(PKG / "diagnose" / "judge.py")
    assert ("tcpreuse.capture.analysis", "CaptureAnalysis") in _imported(PKG / "report" / "capture.py")


def test_test_modules_share_only_through_conftest_and_helpers() -> None:
    """A test module imports no other module of tests/ (fixtures come from conftest.py,
    collection-time helpers from the tests/helpers package)."""
    tests = Path(__file__).resolve().parent
    local = {p.stem for p in tests.glob("*.py")}
    bad = {}
    for f in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            wrong = [n for n in names if n.split(".")[0] in local]
            if wrong:
                bad.setdefault(f.name, []).extend(wrong)
    assert not bad, bad
    assert (tests / "helpers" / "__init__.py").exists()
