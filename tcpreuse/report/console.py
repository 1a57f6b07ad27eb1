"""The console every verb prints its report to (stdout).

In a terminal it is rich's console at the terminal's width. Anywhere else (a pipe, a file,
a test's capture) nothing is cut or wrapped: each print is rendered exactly as wide as
its widest line needs (a table at its natural width, a long line whole), never narrower
than 80 columns, so `tcpreuse analyze cap.pcap | grep 10.0.0.7` and `tcpreuse scenarios
| cut -f1 -d' '` see whole addresses and one line per scenario.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.protocol import is_renderable

MIN_WIDTH = 80
MAX_WIDTH = 100_000


class OutConsole(Console):
    def on_broken_pipe(self) -> None:
        """The reader went away (`| head`). rich would exit 1 here, silently; raise instead,
        so that the command ends as for any closed stdout (tcpreuse.cli: exit 0, files
        already written)."""
        self.quiet = True
        raise BrokenPipeError

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal or not objects or "width" in kwargs:
            super().print(*objects, **kwargs)
            return
        options = self.options.update_width(MAX_WIDTH)
        need = MIN_WIDTH
        for obj in objects:
            if isinstance(obj, str) or is_renderable(obj):
                need = max(need, Measurement.get(self, options, obj).maximum)
        old = self._width
        self.width = min(need, MAX_WIDTH)
        try:
            super().print(*objects, **kwargs)
        finally:
            self._width = old


def out_console(**kwargs: Any) -> Console:
    """A console on stdout (keyword arguments as rich's Console)."""
    return OutConsole(**kwargs)
