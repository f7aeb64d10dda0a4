"""The eval estimators: unbiased pass@k, avg@k and the interval of a mean accuracy (Wilson for 0/1
rates, else the percentile bootstrap)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CI_METHOD = "percentile bootstrap over problems, 2000 resamples, seed 0, 95%"
WILSON_METHOD = "Wilson score interval over problems (every problem's accuracy 0 or 1), 95%"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021) from n samples of which c are correct:
    1 - C(n-c, k) / C(n, k), computed as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i)."""
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(per_problem: Iterable[Sequence[float]]) -> float:
    """Mean accuracy over each problem's samples, averaged over problems (avg@k). NaN if empty."""
    means = [mean_or_nan(list(map(float, s))) for s in per_problem]
    return mean_or_nan(means)


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of `values` (resampled with replacement, fixed seed)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    if v.size == 1 or np.all(v == v[0]):
        return (float(v[0]), float(v[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // v.size)  # bounded memory for large sets
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        means[s:e] = v[rng.integers(0, v.size, size=(e - s, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def accuracy_ci(accs: Sequence[float]) -> tuple[float, float, str]:
    """(low, high, method) of the 95% interval of mean(accs), the per-problem accuracies. When every one
    is 0 or 1 (k = 1, or all of a problem's samples agree) the mean is a pass rate c/n and gets the Wilson
    score interval (compare.stats.wilson_interval): 0 of 4 is [0, 0.49], not a bootstrap's [0, 0].
    Otherwise the percentile bootstrap over problems."""
    if accs and all(a in (0.0, 1.0) for a in accs):
        from ..compare.stats import wilson_interval

        w = wilson_interval(int(sum(accs)), len(accs))
        return w["low"], w["high"], WILSON_METHOD
    lo, hi = bootstrap_ci(accs)
    return lo, hi, CI_METHOD


def mean_or_nan(xs: Sequence[float]) -> float:
    """The mean of `xs`, NaN if empty."""
    return float(sum(xs) / len(xs)) if len(xs) else math.nan


def pass_ks(k: int) -> list[int]:
    """The j of the pass@j an eval of k samples reports: 1, 2, 4, … below k, and k."""
    ks, j = [], 1
    while j < k:
        ks.append(j)
        j *= 2
    return ks + [k]
