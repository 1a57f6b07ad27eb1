"""The suite runs in a home of its own (tests/conftest.py): nothing it runs reads or writes
the user's ~, ~/.cache or ~/.config, in-process or in the subprocesses it starts."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from pathlib import Path

from tcpreuse.sweep.cache import default_dir


def _real_home() -> Path:
    return Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()


def test_home_and_caches_are_temporary(test_home: Path) -> None:
    tmp = Path(tempfile.gettempdir()).resolve()
    assert test_home.resolve().is_relative_to(tmp)
    assert Path.home().resolve() == test_home.resolve() != _real_home()
    # sweep/capacity without --cache write here, not into the user's ~/.cache
    assert default_dir().resolve().is_relative_to(test_home.resolve())
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR", "DASK_CONFIG"):
        assert Path(os.environ[var]).resolve().is_relative_to(test_home.resolve()), var


def test_subprocesses_inherit_the_temporary_home(test_home: Path) -> None:
    code = ("from tcpreuse.sweep.cache import default_dir; import matplotlib, dask; "
            "print(default_dir()); print(matplotlib.get_configdir()); print(dask.config.PATH)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for line in out.split():
        assert Path(line).resolve().is_relative_to(test_home.resolve()), line
