"""Intervals over seeds (pure, no scipy): Student t quantiles, the t interval of a mean, the Wilson
interval of a rate, and the difference of two algorithms paired by seed (or Welch's when the seeds
do not pair).

Every interval is a dict {"mean", "low", "high", "n"}; `low` and `high` are None where the data do
not give one (a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from statistics import NormalDist

LEVEL = 0.95  # two-sided coverage of every interval in the report


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz; Numerical
    Recipes §6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` (real, > 0) degrees of freedom: 1 − ½ I_{df/(df+t²)}(df/2, ½)
    for t ≥ 0, by symmetry below."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`, to float
    precision)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile: expected 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean_var(v: list[float]) -> tuple[float, float]:
    """Sample mean and unbiased variance (n − 1 in the denominator; 0 for one value)."""
    mean = sum(v) / len(v)
    return mean, (sum((x - mean) ** 2 for x in v) / (len(v) - 1) if len(v) > 1 else 0.0)


def t_interval(values: Iterable[float | None], level: float = LEVEL) -> dict | None:
    """Mean of the finite values with its t interval: mean ± t_{(1+level)/2, n−1} · s/√n, s the sample
    standard deviation. n = 1: no interval (low = high = None); no values: None."""
    v = _finite(values)
    if not v:
        return None
    mean, var = _mean_var(v)
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = t_quantile(0.5 + level / 2, len(v) - 1) * math.sqrt(var / len(v))
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(v)}


def wilson_interval(k: int, n: int, level: float = LEVEL) -> dict | None:
    """The rate k/n with its Wilson score interval: (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n),
    z the normal (1+level)/2 quantile. n = 0: None."""
    if n <= 0:
        return None
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return {"mean": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}


def welch_interval(a: Iterable[float | None], b: Iterable[float | None], level: float = LEVEL) -> dict | None:
    """mean(a) − mean(b) with Welch's interval: ± t_{(1+level)/2, ν} · √(s_a²/n_a + s_b²/n_b), ν the
    Welch–Satterthwaite degrees of freedom. Fewer than two values on a side: no interval."""
    va, vb = _finite(a), _finite(b)
    if not va or not vb:
        return None
    (ma, sa), (mb, sb) = _mean_var(va), _mean_var(vb)
    out = {"mean": ma - mb, "low": None, "high": None, "n": [len(va), len(vb)]}
    if len(va) < 2 or len(vb) < 2:
        return out
    qa, qb = sa / len(va), sb / len(vb)
    if qa + qb == 0:
        return {**out, "low": ma - mb, "high": ma - mb}
    df = (qa + qb) ** 2 / (qa * qa / (len(va) - 1) + qb * qb / (len(vb) - 1))
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(qa + qb)
    return {**out, "low": ma - mb - half, "high": ma - mb + half}


def difference(a: Mapping[int, float | None], b: Mapping[int, float | None], level: float = LEVEL) -> dict | None:
    """a − b for two algorithms' per-seed values ({seed: value}). When both have finite values for the
    same seeds (runs that share data order and seed), the t interval of the per-seed differences
    ("paired"); otherwise Welch's interval of the two means ("welch"). None without data on a side."""
    fa = {s: float(v) for s, v in a.items() if v is not None and math.isfinite(v)}
    fb = {s: float(v) for s, v in b.items() if v is not None and math.isfinite(v)}
    if not fa or not fb:
        return None
    if set(fa) == set(fb):
        seeds = sorted(fa)
        out = t_interval([fa[s] - fb[s] for s in seeds], level)
        return {**out, "method": "paired", "seeds": seeds}
    return {**welch_interval(fa.values(), fb.values(), level), "method": "welch", "seeds": [sorted(fa), sorted(fb)]}
