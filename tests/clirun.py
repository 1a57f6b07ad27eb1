"""Run the `tcpreuse` command in-process, as tests of several verbs do."""

from __future__ import annotations

import pytest

from tcpreuse.cli import main


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `tcpreuse ARGV`."""
    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
