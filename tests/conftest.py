"""Session-wide test setup: the suite never reads or writes the user's home (nor keeps
hypothesis's example database in the working tree).

Before any test module is imported (and so before dask reads its configuration or
matplotlib looks for its cache), HOME, the XDG base directories and the tools' own
config and scratch variables point into one temporary directory, removed at the end.
Subprocesses the tests start (`tcpreuse` as installed, dask workers, chromium) inherit it.
`sweep` without --cache, say, then caches under $XDG_CACHE_HOME/tcpreuse/sweep of that
directory, so two runs of the suite never share state through ~/.cache.

The fixtures several test modules share are defined in tests/helpers/fixtures.py and
imported here (`cli`: `tcpreuse ARGV` in-process; `seed_pcap`: a capture of the seed
incident; `make_ns`: network namespaces for the real-kernel tests, deleted after the
test). What a module needs when it is collected (data builders, hypothesis strategies)
is in the tests/helpers package too; test modules never import each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.fixtures import cli, make_ns, seed_pcap  # noqa: F401 (shared fixtures)

# variable -> directory under the temporary home ("" is the home itself)
ISOLATED = {
    "HOME": "",
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
    "MPLCONFIGDIR": ".config/matplotlib",
    "DASK_CONFIG": ".config/dask",
    "DASK_TEMPORARY_DIRECTORY": "dask-scratch",
    "IPYTHONDIR": ".ipython",
}

_home: Path | None = None
_saved: dict[str, str | None] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Runs before collection imports the test modules."""
    global _home
    if _home is not None:
        return
    _home = Path(tempfile.mkdtemp(prefix="tcpreuse-test-home-"))
    for var, sub in ISOLATED.items():
        d = _home / sub
        d.mkdir(parents=True, exist_ok=True)
        _saved[var] = os.environ.get(var)
        os.environ[var] = str(d)
    # hypothesis keeps its example database and caches in ./.hypothesis by default: here instead
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(_home / ".hypothesis")


def pytest_unconfigure(config: pytest.Config) -> None:
    global _home
    if _home is None:
        return
    for var, old in _saved.items():
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old
    shutil.rmtree(_home, ignore_errors=True)
    _home = None


@pytest.fixture(scope="session")
def test_home() -> Path:
    """The temporary directory that stands in for the user's home during the run."""
    assert _home is not None
    return _home
