"""The simulator's results are bit-identical to the recorded golden fingerprints.

Optimising the engine (mypyc, packed tables, the C core) must never change what it
computes: every per-attempt column, counter and timeline of every built-in scenario and
of 64 random small ones is compared with hashes recorded from the engine as it was before
any optimisation (tests/helpers/sim_golden.py). Both the installed engine (compiled when the
build could compile it) and the pure-Python source, the reference, are checked."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import sim_golden

ROOT = Path(__file__).resolve().parent.parent


def _want() -> dict[str, dict[str, object]]:
    return json.loads(sim_golden.GOLDEN.read_text())


def test_the_golden_file_covers_every_builtin_scenario() -> None:
    from tcpreuse.scenario.loader import builtin_names

    assert set(builtin_names()) <= set(sim_golden.DURATIONS)
    assert set(_want()) == set(sim_golden.all_names())


@pytest.mark.slow
def test_the_installed_engine_reproduces_the_golden_results() -> None:
    got = sim_golden.run_all()
    assert sim_golden.diff(_want(), got) == []


# The reference run is pure Python, about half as fast: it covers the random scenarios and
# the built-in ones up to this many attempts (the seed family is checked compiled above,
# and the compiled and pure engines agree on the rest).
SOURCE_MAX_ATTEMPTS = 12_000


@pytest.mark.slow
def test_the_pure_python_source_reproduces_the_golden_results(tmp_path: Path) -> None:
    """The reference: the package's .py files alone, imported from a copy without the
    compiled extension modules."""
    want = _want()
    names = [n for n in sim_golden.all_names() if int(str(want[n]["attempts"])) <= SOURCE_MAX_ATTEMPTS]
    shutil.copytree(ROOT / "tcpreuse", tmp_path / "tcpreuse",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    code = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(tmp_path)!r}, {str(Path(__file__).parent)!r}]\n"
        "import tcpreuse.sim.engine as e, tcpreuse.model.timewait as tw\n"
        "assert e.__file__.endswith('.py') and tw.__file__.endswith('.py'), e.__file__\n"
        "from helpers import sim_golden\n"
        "print(json.dumps(sim_golden.run_all(sys.argv[1:])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    if out.returncode:
        pytest.fail(out.stderr[-3000:])
    got = json.loads(out.stdout)
    assert sim_golden.diff({n: want[n] for n in names}, got) == []
