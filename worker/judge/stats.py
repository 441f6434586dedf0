"""Small statistics primitives shared by trials and season standings (standard library).

Student's t quantiles come from the exact finite series of the t distribution for an
integer number of degrees of freedom (Abramowitz & Stegun 26.7.3/26.7.4), inverted by
bisection: degrees of freedom here are always counts minus one, so no incomplete beta
function (and no SciPy) is needed. Everything is pure and deterministic: the same input
gives the same number in every process, so embedded and distributed runs agree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache


def check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (e.g. 0.95), not {confidence!r}")
    return confidence


def t_central(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be an integer >= 1, not {df!r}")
    t = abs(t)
    if math.isinf(t):
        return 1.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    total = term = 1.0
    if df % 2:
        if df == 1:
            return 2.0 * theta / math.pi
        for k in range(1, (df - 1) // 2):
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    for k in range(1, df // 2):
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (0 < p < 1)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile probability must be in (0, 1), not {p!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    target = 2.0 * p - 1.0  # central probability
    lo, hi = 0.0, 1.0
    while t_central(hi, df) < target:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if t_central(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def mean(values: Sequence[float]) -> float:
    """Correctly rounded mean (``math.fsum``): one value gives back exactly that value."""
    if not values:
        raise ValueError("mean of no values")
    return math.fsum(values) / len(values)


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for fewer than two values."""
    n = len(values)
    if n < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


def clip(x: float, bounds: tuple[float, float] | None) -> float:
    return x if bounds is None else min(max(x, bounds[0]), bounds[1])


def t_interval(values: Sequence[float], confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """Student-t confidence interval for the mean, clipped to ``bounds``.

    One value, or values that never vary, give the point itself: there is no spread to
    estimate, and the interval says so rather than inventing one.
    """
    m = mean(values)
    s = stdev(values)
    if s == 0.0:
        return m, m
    n = len(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * s / math.sqrt(n)
    return clip(m - half, bounds), clip(m + half, bounds)


def prediction_interval(values: Sequence[float], confidence: float = 0.95,
                        ) -> tuple[float, float] | None:
    """Where one more draw from the same (normal) process falls with ``confidence``:
    mean +- t * s * sqrt(1 + 1/n). None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m, s = mean(values), stdev(values)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * s * math.sqrt(1.0 + 1.0 / n)
    return m - half, m + half


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (0 <= q <= 1) of an already sorted sequence."""
    if not ordered:
        raise ValueError("percentile of no values")
    x = q * (len(ordered) - 1)
    i = min(int(x), len(ordered) - 1)
    f = x - i
    if f == 0.0 or i + 1 >= len(ordered):
        return ordered[i]
    return ordered[i] + f * (ordered[i + 1] - ordered[i])


def slope(values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` against 0, 1, 2, ... (units per step)."""
    n = len(values)
    if n < 2:
        raise ValueError("a slope needs at least two values")
    xm = (n - 1) / 2.0
    ym = mean(values)
    sxx = math.fsum((i - xm) ** 2 for i in range(n))
    return math.fsum((i - xm) * (v - ym) for i, v in enumerate(values)) / sxx


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                   ) -> tuple[float, float, float]:
    """(difference of means a - b, low, high): Welch's interval, which assumes no equal
    variances and no pairing. Its Welch-Satterthwaite degrees of freedom are rounded down
    (a slightly wider, conservative interval), as t quantiles here take integer degrees.
    Both samples need at least two values; with no spread at all the interval is the
    difference itself."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError("Welch's interval needs at least two values on each side")
    diff = mean(a) - mean(b)
    va, vb = stdev(a) ** 2 / na, stdev(b) ** 2 / nb
    se2 = va + vb
    if se2 == 0.0:
        return diff, diff, diff
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    half = t_quantile(0.5 + confidence / 2.0, max(1, math.floor(df + 1e-9))) * math.sqrt(se2)
    return diff, diff - half, diff + half
