"""bench/fuzz_captures.py on a small number of its cases: every kind of damage, run
in-process and through the installed command, gives no traceback and no hang. The full
run (20,000+ cases, counts in docs/analyze.md) is `python bench/fuzz_captures.py`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzz_script_small_run(tmp_path: Path) -> None:
    summary = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz_captures.py"), "--cases", "132", "--jobs", "1", "--no-record",
         "--subprocess-sample", "3", "--timeout", "30", "--out", str(tmp_path / "crashers"),
         "--json", str(summary)],
        capture_output=True, text=True, timeout=850, env=env, cwd=tmp_path)
    s = json.loads(summary.read_text())
    assert (s["inputs"], s["tracebacks"], s["hangs"]) == (132, 0, 0), (r.stdout, s["crashers"])
    assert s["command"]["inputs"] == 3 and s["command"]["tracebacks"] == 0 and s["command"]["hangs"] == 0
    assert set(s["exit_codes"]) <= {"0", "2"} and sum(s["exit_codes"].values()) == 132
    assert all(sum(v.values()) >= 8 for v in s["by_kind"].values()), s["by_kind"]  # every kind ran
    assert r.returncode == 0 and "tracebacks 0, hangs 0" in r.stdout
