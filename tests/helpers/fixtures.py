"""The fixtures several test modules share, made available to every test by
tests/conftest.py, which imports them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import Cli

if TYPE_CHECKING:
    from tcpreuse.lab.netns import Namespace


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """`tcpreuse ARGV` in-process: (exit code, stdout, stderr), the output read from capsys."""
    from tcpreuse.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        code = 0
        try:
            main(argv)
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def seed_pcap(tmp_path: Path) -> Path:
    """The seed incident as a pcap: Windows clients without timestamps cycling 120 ports,
    400 connections, SYNs landing on the server's TIME_WAIT (helpers.captures.windows_reuse)."""
    from .captures import windows_reuse, write_pcap

    return write_pcap(tmp_path / "seed.pcap", windows_reuse(n_conn=400, ports=120))


@pytest.fixture
def make_ns() -> Iterator[Callable[..., Namespace]]:
    """make_ns(tag, **sysctls): a created network namespace, deleted after the test."""
    from .netns import namespace

    made: list[Namespace] = []

    def make(tag: str, **sysctls: object) -> Namespace:
        ns = namespace(tag, **sysctls)
        made.append(ns)
        return ns.create()

    yield make
    for ns in made:
        ns.delete()
