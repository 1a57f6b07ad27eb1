"""Bad input, any verb: exit 2, one line on stderr, no traceback (scripts/bad_inputs.py
has all the cases and writes docs/bad-inputs.md; this runs its fast subset, one or more
per verb, through the installed command)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bad_inputs

pytestmark = pytest.mark.timeout(300)

FAST = [c for c in bad_inputs.CASES if c.fast]


def test_every_verb_has_bad_inputs_and_the_subset_covers_them() -> None:
    verbs = {"simulate", "lab", "validate", "doctor", "analyze", "load", "serve", "sweep", "capacity",
             "report", "scenarios"}
    assert len(bad_inputs.CASES) >= 80
    assert {c.argv[0] for c in bad_inputs.CASES} == verbs
    assert {c.argv[0] for c in FAST} == verbs


def test_fast_subset_gives_one_line_and_exit_2() -> None:
    outs = bad_inputs.run_all(FAST)
    bad = [(" ".join(o.case.argv), o.code, o.stderr) for o in outs if not o.ok]
    assert not bad, bad
    for o in outs:
        assert o.message.startswith("tcpreuse") and "error:" in o.message, o.message
