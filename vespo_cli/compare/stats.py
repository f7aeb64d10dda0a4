"""Intervals over seeds: the t interval of a mean, the Wilson interval of a rate, the difference
of two algorithms paired by seed (or Welch's when the seeds do not pair); linear contrasts of cells
(interactions), t tests and Boschloo's exact test of two rates, their power (the minimum
detectable effect, the seeds that would resolve one), Holm's adjustment of a family. The
distributions are scipy's.

Every interval is a dict {"mean", "low", "high", "n"}; `low` and `high` are None where the data do
not give one (a single seed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

LEVEL = 0.95  # two-sided coverage of every interval in the report


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with `df` (real, > 0) degrees of freedom (scipy)."""
    from scipy.stats import t as student

    return float(student.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (scipy)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile: expected 0 < p < 1 and df > 0, got p={p}, df={df}")
    from scipy.stats import t as student

    return float(student.ppf(p, df))


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean_var(v: list[float]) -> tuple[float, float]:
    """Sample mean and unbiased variance (n − 1 in the denominator; 0 for one value)."""
    mean = sum(v) / len(v)
    return mean, (sum((x - mean) ** 2 for x in v) / (len(v) - 1) if len(v) > 1 else 0.0)


def _within(low: float, high: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    """[low, high] intersected with the values the quantity can take (the coverage of an interval cut to its
    parameter space is the interval's own); unchanged without bounds."""
    return (low, high) if bounds is None else (max(low, bounds[0]), min(high, bounds[1]))


def t_interval(
    values: Iterable[float | None], level: float = LEVEL, bounds: tuple[float, float] | None = None
) -> dict | None:
    """Mean of the finite values with its t interval: mean ± t_{(1+level)/2, n−1} · s/√n, s the sample
    standard deviation, cut to `bounds` (the mean's possible values) where given. n = 1: no interval
    (low = high = None); no values: None."""
    v = _finite(values)
    if not v:
        return None
    mean, var = _mean_var(v)
    if len(v) < 2:
        return {"mean": mean, "low": None, "high": None, "n": 1}
    half = t_quantile(0.5 + level / 2, len(v) - 1) * math.sqrt(var / len(v))
    low, high = _within(mean - half, mean + half, bounds)
    return {"mean": mean, "low": low, "high": high, "n": len(v)}


def wilson_interval(k: int, n: int, level: float = LEVEL) -> dict | None:
    """The rate k/n with its Wilson score interval (scipy's binomtest). n = 0: None."""
    if n <= 0:
        return None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    return {"mean": k / n, "low": max(0.0, float(ci.low)), "high": min(1.0, float(ci.high)), "n": n}


def welch_interval(
    a: Iterable[float | None],
    b: Iterable[float | None],
    level: float = LEVEL,
    bounds: tuple[float, float] | None = None,
) -> dict | None:
    """mean(a) − mean(b) with Welch's interval: ± t_{(1+level)/2, ν} · √(s_a²/n_a + s_b²/n_b), ν the
    Welch–Satterthwaite degrees of freedom, cut to `bounds` where given. Fewer than two values on a side: no
    interval."""
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
    low, high = _within(ma - mb - half, ma - mb + half, bounds)
    return {**out, "low": low, "high": high}


def difference(
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    level: float = LEVEL,
    bounds: tuple[float, float] | None = None,
) -> dict | None:
    """a − b for two algorithms' per-seed values ({seed: value}). When both have finite values for the
    same seeds (runs that share data order and seed), the t interval of the per-seed differences
    ("paired"); otherwise Welch's interval of the two means ("welch"); cut to `bounds` where given. None
    without data on a side."""
    fa = {s: float(v) for s, v in a.items() if v is not None and math.isfinite(v)}
    fb = {s: float(v) for s, v in b.items() if v is not None and math.isfinite(v)}
    if not fa or not fb:
        return None
    if set(fa) == set(fb):
        seeds = sorted(fa)
        out = t_interval([fa[s] - fb[s] for s in seeds], level, bounds)
        return {**out, "method": "paired", "seeds": seeds}
    welch = welch_interval(fa.values(), fb.values(), level, bounds)
    return {**welch, "method": "welch", "seeds": [sorted(fa), sorted(fb)]}


# ---------------------------------------------------------------------------- tests, power, multiplicity

ALPHA = 1.0 - LEVEL  # two-sided level of every test (the intervals above are its dual)
POWER = 0.8  # the power at which a minimum detectable effect is stated
MAX_SEEDS = 1000  # beyond this many seeds a row is reported as unresolvable at any realistic n
MAX_RUNS = 60  # the same for runs per arm of a collapse row (its exact power is a sum over every table)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (Holm 1979): sort the m p-values ascending, p̃_(i) =
    max_{j ≤ i} min(1, (m − j + 1) p_(j)); None stays None and is not counted in m."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(present), [None] * len(pvalues), 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def t_test(estimate: float, se: float, df: float, boundary: float = 0.0) -> float:
    """Two-sided p-value of H0: θ = `boundary` for an estimate with standard error `se` and Student t
    reference distribution with `df` degrees of freedom. se = 0: 0 unless the estimate is the boundary."""
    if se <= 0:
        return 1.0 if estimate == boundary else 0.0
    t = abs(estimate - boundary) / se
    return min(1.0, 2.0 * (1.0 - t_cdf(t, df)))


def t_power(ncp: float, df: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided level-`alpha` t test with `df` degrees of freedom when the true effect is `ncp`
    standard errors from the boundary: P(|T'| > t_{1−α/2}) for T' noncentral t (scipy), the lower tail as
    P(T'(−ncp) > t_{1−α/2}): scipy's nct.cdf is NaN at many negative arguments (1.17), its sf is not."""
    from scipy.stats import nct

    crit = t_quantile(1.0 - alpha / 2.0, df)
    return float(nct.sf(crit, df, ncp) + nct.sf(crit, df, -ncp))


def detectable_ncp(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality (effect / standard error) at which the two-sided t test has `power` (bisection)."""
    lo, hi = 0.0, 1.0
    while t_power(hi, df, alpha) < power:
        lo, hi = hi, hi * 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_power(mid, df, alpha) < power else (lo, mid)
    return 0.5 * (lo + hi)


def seeds_to_resolve(effect: float, sd: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The fewest seeds n ≥ 2 at which a paired t test (per-seed contrast sd `sd`, df n − 1) detects `effect`
    with `power`; None when more than MAX_SEEDS would be needed (or effect is 0)."""
    if effect == 0 or not math.isfinite(effect):
        return None
    if sd <= 0:
        return 2
    ratio = abs(effect) / sd

    def enough(n: int) -> bool:
        return t_power(ratio * math.sqrt(n), n - 1, alpha) >= power

    if not enough(MAX_SEEDS):
        return None
    lo, hi = 1, MAX_SEEDS  # enough(hi), not enough(lo) (n = 1 has no test)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def collapse_pvalue(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Two-sided p-value of Boschloo's exact test for k_a/n_a vs k_b/n_b events (scipy.stats.boschloo_exact):
    twice the smaller one-sided p, each the supremum over the common event rate π of the probability of the
    tables whose one-sided Fisher p is no larger than the observed one's. Unconditional, so uniformly more
    powerful than Fisher's test at the same exact level (Lydersen, Fagerland & Laake 2009): at 3 runs per arm
    Fisher's smallest two-sided p is 2/C(6, 3) = 0.1, Boschloo's 2·4⁻³ = 0.031."""
    from scipy.stats import boschloo_exact

    return float(boschloo_exact([[k_a, k_b], [n_a - k_a, n_b - k_b]], alternative="two-sided").pvalue)


def newcombe_interval(k_a: int, n_a: int, k_b: int, n_b: int, level: float = LEVEL) -> dict | None:
    """k_a/n_a − k_b/n_b with Newcombe's hybrid score interval (method 10, from the two Wilson intervals)."""
    a, b = wilson_interval(k_a, n_a, level), wilson_interval(k_b, n_b, level)
    if a is None or b is None:
        return None
    d = a["mean"] - b["mean"]
    low = d - math.sqrt((a["mean"] - a["low"]) ** 2 + (b["high"] - b["mean"]) ** 2)
    high = d + math.sqrt((a["high"] - a["mean"]) ** 2 + (b["mean"] - b["low"]) ** 2)
    return {"mean": d, "low": low, "high": high, "n": [n_a, n_b]}


def _binomial(n: int, rates: np.ndarray) -> np.ndarray:
    """[rate, k]: the Binomial(n, rate) probability of k events (scipy's binom.pmf overflows at subnormal
    rates)."""
    ks = np.arange(n + 1)
    comb = np.array([math.comb(n, k) for k in ks], dtype=float)
    return comb * rates[:, None] ** ks * (1.0 - rates[:, None]) ** (n - ks)


@functools.cache
def collapse_pvalues(n_a: int, n_b: int, grid: int = 1001) -> np.ndarray:
    """`collapse_pvalue` of every outcome table at once, [k_a, k_b], for power: the supremum over π on a grid
    of `grid` rates, so at most ~1e-5 (relative) below scipy's (tests/test_verdict.py: table by table)."""
    from scipy.stats import hypergeom

    k_a, k_b = np.arange(n_a + 1)[:, None], np.arange(n_b + 1)[None, :]
    rates = np.linspace(0.0, 1.0, grid)
    mass = (_binomial(n_a, rates)[:, :, None] * _binomial(n_b, rates)[:, None, :]).reshape(grid, -1)

    def one_sided(fisher: np.ndarray) -> np.ndarray:  # sup_π P_π(tables whose Fisher p ≤ the table's)
        flat = fisher.ravel()
        order = np.argsort(flat, kind="stable")
        within = np.searchsorted(flat[order], flat * (1 + 1e-13), side="right") - 1  # as scipy's tolerance
        return np.cumsum(mass[:, order], axis=1)[:, within].max(axis=0).reshape(fisher.shape)

    events = k_a + k_b
    less = one_sided(hypergeom.cdf(k_a, n_a + n_b, events, n_a))
    greater = one_sided(hypergeom.cdf(k_b, n_a + n_b, events, n_b))
    table = np.clip(2 * np.minimum(less, greater), 0.0, 1.0)
    table.setflags(write=False)  # cached: shared by every caller
    return table


def collapse_power(rate_a: float, rate_b: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided Boschloo test with n runs per arm when the true collapse rates are rate_a and
    rate_b (exact: the probability of every outcome table it rejects)."""
    rejected = collapse_pvalues(n, n) < alpha
    return float((np.outer(*_binomial(n, np.array([rate_a, rate_b]))) * rejected).sum())


def runs_to_resolve(
    rate_a: float, rate_b: float, alpha: float = ALPHA, power: float = POWER, most: int = MAX_RUNS
) -> int | None:
    """The fewest runs per arm at which the Boschloo test detects rates rate_a vs rate_b with `power`; None
    beyond `most` (or equal rates)."""
    if rate_a == rate_b:
        return None
    for n in range(2, most + 1):
        if collapse_power(rate_a, rate_b, n, alpha) >= power:
            return n
    return None


def runs_to_resolve_at_best(alpha: float = ALPHA, most: int = MAX_RUNS) -> int | None:
    """The fewest runs per arm at which the most lopsided outcome (every run of one arm collapses, none of the
    other's) gives a p below `alpha`: below it a collapse row cannot come out either way."""
    return next((n for n in range(1, most + 1) if collapse_pvalues(n, n).min() < alpha), None)


def contrast(cells: Sequence[tuple[float, Mapping[int, float | None]]], level: float = LEVEL) -> dict | None:
    """The linear contrast Σ_j w_j · mean(cell_j) of per-seed values ({seed: value}) with its t interval.
    When every cell has finite values for the same seeds (≥ 2), the per-seed contrasts are paired
    ("paired": one t interval, df n − 1); otherwise the cells are independent ("welch": se² = Σ w_j² s_j²/n_j,
    Welch–Satterthwaite df). Returns {"mean", "low", "high", "n", "se", "df", "sd", "method", "seeds"}
    (sd: the per-seed contrast's standard deviation, paired only); low/high/se None without an interval;
    None when a cell has no value."""
    clean = [
        (float(w), {int(s): float(v) for s, v in c.items() if v is not None and math.isfinite(v)}) for w, c in cells
    ]
    if any(not c for _, c in clean):
        return None
    seeds = sorted(clean[0][1])
    if all(sorted(c) == seeds for _, c in clean):
        per_seed = [sum(w * c[s] for w, c in clean) for s in seeds]
        mean, var = _mean_var(per_seed)
        n = len(per_seed)
        se = math.sqrt(var / n) if n > 1 else None
        out = {"mean": mean, "n": n, "se": se, "df": n - 1, "sd": math.sqrt(var) if n > 1 else None}
        out.update(method="paired", seeds=seeds)
    else:
        parts = [(w, *_mean_var(list(c.values())), len(c)) for w, c in clean]
        mean = sum(w * m for w, m, _, _ in parts)
        q = [w * w * v / n for w, _, v, n in parts]
        se2 = sum(q)
        small = any(n < 2 for *_, n in parts)
        df = None if small or se2 == 0 else se2**2 / sum(qi * qi / (n - 1) for qi, (*_, n) in zip(q, parts))
        se = None if small else math.sqrt(se2)
        out = {"mean": mean, "n": [n for *_, n in parts], "se": se, "df": df, "sd": None}
        out.update(method="welch", seeds=[sorted(c) for _, c in clean])
    if out["se"] is None or (out["df"] is None and out["se"] > 0):
        return {**out, "low": None, "high": None}
    half = out["se"] * (t_quantile(0.5 + level / 2, out["df"]) if out["se"] > 0 else 0.0)
    return {**out, "low": out["mean"] - half, "high": out["mean"] + half}
