"""Click parameter types shared by the verbs, so that one bad value gets one message
wherever it is given."""

from __future__ import annotations

import math
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
