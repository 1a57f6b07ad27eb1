"""Click parameter types shared by the verbs, so that one bad value gets one message
wherever it is given."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click


class Seconds(click.ParamType):
    """A duration in seconds: a finite number above zero (not 0, -1, inf or nan)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            v = float(value)
        else:
            try:
                v = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(v) or v <= 0:
            self.fail(f"{value!r}: give a finite number of seconds above 0", param, ctx)
        return v


SECONDS = Seconds()


class OutFile(click.Path):
    """A file the verb will write: checked when the command line is read (its directory
    exists and is writable, it is not a directory), so a typo costs no run."""

    name = "file"

    def __init__(self) -> None:
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        parent = Path(os.fsdecode(rv)).parent
        if not parent.is_dir():
            self.fail(f"cannot write {str(value)!r}: there is no directory {str(parent)!r}", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"cannot write {str(value)!r}: the directory {str(parent)!r} is not writable", param, ctx)
        return rv


OUT_FILE = OutFile()
