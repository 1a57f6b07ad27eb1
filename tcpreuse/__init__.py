"""tcpreuse: reproduce, diagnose and fix failures of short-lived TCP connections."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tcpreuse")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+src"
