"""Errors a user of `load` or `serve` can cause: printed as one line by the CLI."""

from __future__ import annotations

from ..errors import TcpreuseError, UnsupportedError

__all__ = ["LoadError", "UnsupportedError"]


class LoadError(TcpreuseError):
    """Bad target, source, listen address or option combination for `load` / `serve`."""
