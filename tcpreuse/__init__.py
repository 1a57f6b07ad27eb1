"""tcpreuse: reproduce, diagnose and fix failures of short-lived TCP connections."""

from typing import Any


def __getattr__(name: str) -> Any:
    # __version__ is looked up lazily: importlib.metadata costs ~20 ms per command.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("tcpreuse")
        except PackageNotFoundError:  # running from a source tree
            return "0.0.0+src"
    raise AttributeError(name)
