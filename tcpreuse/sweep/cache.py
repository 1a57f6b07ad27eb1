"""Results of single simulations, cached by what determines them.

The key is a SHA-256 of the effective scenario (the validated model dumped to JSON, minus
the prose fields that change nothing), the overrides that made it, the seed, the package
version and the summary format. Same key, same result: the engine is deterministic for a
seed. Entries are small JSON files written atomically, so a killed sweep leaves either a
whole entry or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .. import __version__
from . import SweepError

SUMMARY_FORMAT = 1
PROSE = ("description", "notes", "summary")


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tcpreuse" / "sweep"


def effective(dump: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dump.items() if k not in PROSE}


def point_key(dump: dict[str, Any], overrides: dict[str, Any]) -> str:
    doc = {"scenario": effective(dump), "overrides": overrides, "seed": dump.get("seed"),
           "version": __version__, "format": SUMMARY_FORMAT}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode()).hexdigest()


class Cache:
    """A directory of <key>.json entries; `None` disables caching."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        if root is not None:
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SweepError(f"cannot use cache directory {root}: {e.strerror}") from None

    def _path(self, key: str) -> Path:
        assert self.root is not None
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if self.root is None:
            return None
        try:
            d = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            return None  # absent or damaged: compute again
        return d if isinstance(d, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.root is None:
            return
        p = self._path(key)
        try:
            p.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tcpr-", dir=p.parent)
            with os.fdopen(fd, "w") as fh:
                json.dump(value, fh)
            os.replace(tmp, p)
        except OSError as e:
            raise SweepError(f"cannot write to the cache {self.root}: {e.strerror}") from None
