"""Seeds to a mean and a 95 % confidence interval.

With several seeds: Student's t interval of the mean over seeds (the spread between
seeds is what a person re-running the test would see). With one seed: the Wilson score
interval of the failure proportion over that run's attempts (attempts in one run are
not independent, so this is the narrower, optimistic bound; say so where it is shown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95 %: t quantile 0.975 for 1..30 degrees of freedom
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042)


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def mean_ci(xs: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of `xs` (n >= 2), Student t."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = t975(n - 1) * sd / math.sqrt(n)
    return m, max(0.0, m - h), min(1.0, m + h)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def median(xs: Sequence[float]) -> float | None:
    v = sorted(x for x in xs if x is not None)
    if not v:
        return None
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
