"""Pure functions of `metrics.jsonl` records: smoothing, collapse detection, a run's summary, the
curves' x coordinate (optimizer steps or samples consumed).

Nothing here reads a file, so the report of a run can be recomputed at any time, also while it trains.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

DROP = 0.5  # collapse: smoothed reward below DROP × best-so-far ...
PATIENCE_FRAC = 0.1  # ... for max(MIN_PATIENCE, PATIENCE_FRAC × steps) consecutive steps ...
MIN_PATIENCE = 3
FLOOR = 0.05  # ... counted only once the best smoothed reward exceeds FLOOR ("never learned" otherwise)
NOISE_Z = 3.5  # ... and, for rewards in [0, 1], only where the drop exceeds NOISE_Z standard errors (above 3:
#                the best-so-far is a maximum over many windows; test_collapse_rule_quiet_on_bernoulli_noise)
SMOOTH_FRAC = 0.05  # moving-average window: max(MIN_WINDOW, SMOOTH_FRAC × steps) steps
MIN_WINDOW = 3
FINAL_FRAC = 0.1  # final reward: mean over the last 10% of steps
NONFINITE_KEYS = ("loss", "grad_norm")


def _num(x: Any) -> float:
    """A metric value as float; NaN when missing or not a number."""
    if x is None or isinstance(x, bool):
        return math.nan if x is None else float(x)
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def train_records(records: Iterable[dict]) -> list[dict]:
    """Training lines sorted by step (a resumed run's repeated step: the last line wins)."""
    by_step: dict[int, dict] = {}
    for r in records:
        if r.get("kind", "train") == "train" and isinstance(r.get("step"), (int, float)):
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def eval_records(records: Iterable[dict]) -> list[dict]:
    return sorted(
        (r for r in records if r.get("kind") == "eval" and "benchmark" in r),
        key=lambda r: (str(r["benchmark"]), _num(r.get("step"))),
    )


def smooth_window(steps: int) -> int:
    """Moving-average window for a run of `steps` steps: max(3, 5% of steps), at most `steps`."""
    return max(1, min(int(steps), max(MIN_WINDOW, round(SMOOTH_FRAC * steps))))


def default_patience(steps: int) -> int:
    return max(MIN_PATIENCE, math.ceil(PATIENCE_FRAC * steps))


def trailing_sums(values: Sequence[float], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) of the finite values among the last `window` values at each position."""
    v = np.asarray([_num(x) for x in values], dtype=float)
    ok = np.isfinite(v)
    cs = np.concatenate([[0.0], np.cumsum(np.where(ok, v, 0.0))])
    cn = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(v))
    lo = np.maximum(0, i + 1 - max(int(window), 1))
    return cs[i + 1] - cs[lo], cn[i + 1] - cn[lo]


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start); non-finite values are
    left out of the mean, and a window holding none gives NaN."""
    s, n = trailing_sums(values, window)
    return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def window_stderr(smoothed: np.ndarray, rows: Sequence[dict], window: int) -> np.ndarray | None:
    """Standard error of each window's mean reward from the samples behind it (Σ n_seqs), with the
    per-sample variance bounded by μ(1 − μ), the Bhatia–Davis bound for rewards in [0, 1]. None
    when the records do not say how many samples a step had or a reward falls outside [0, 1]."""
    rewards = np.asarray([_num(r.get("reward")) for r in rows], dtype=float)
    counts = [_num(r.get("n_seqs")) for r in rows]
    finite = rewards[np.isfinite(rewards)]
    if not all(math.isfinite(c) and c > 0 for c in counts) or ((finite < 0) | (finite > 1)).any():
        return None
    n = trailing_sums(np.where(np.isfinite(rewards), counts, np.nan), window)[0]
    mu = np.clip(smoothed, 0.0, 1.0)
    return np.sqrt(mu * (1 - mu) / np.maximum(n, 1))


def detect_collapse(
    records: Sequence[dict],
    *,
    drop: float = DROP,
    patience: int | None = None,
    window: int | None = None,
    floor: float = FLOOR,
    total_steps: int | None = None,
    noise_z: float = NOISE_Z,
) -> dict:
    """Where (if at all) a run collapsed, from its metrics records (pure).

    The run collapsed at the first step where (a) `loss` or `grad_norm` is non-finite (or the trainer
    flagged `skipped_nonfinite`), or (b) the trailing moving average of the reward (over `window`
    steps) is below `drop` × its best value so far for `patience` consecutive steps, counted only
    once that best exceeds `floor` and, when the records carry `n_seqs` and rewards lie in [0, 1],
    only where best − average exceeds `noise_z` standard errors of the two window means (a drop that
    the sampling noise of a few samples per step explains is not one); for (b) the step reported is
    the first of those steps.
    Defaults: window max(3, 5%) and patience max(3, 10%) of `total_steps` (or of the steps logged).
    Returns {"status": "collapsed" | "stable" | "never learned" | "no data", "step", "reason",
    "best_reward", "best_step", "window", "patience", "drop", "floor", "noise_z"}."""
    rows = train_records(records)
    steps_ref = total_steps or len(rows) or 1
    window = window or smooth_window(steps_ref)
    patience = patience or default_patience(steps_ref)
    out = {
        "status": "no data",
        "step": None,
        "reason": None,
        "best_reward": None,
        "best_step": None,
        "window": window,
        "patience": patience,
        "drop": drop,
        "floor": floor,
        "noise_z": noise_z,
    }
    if not rows:
        return out
    smoothed = moving_average([r.get("reward") for r in rows], window)
    stderr = window_stderr(smoothed, rows, window)
    return {**out, **_scan_collapse(rows, smoothed, stderr, drop=drop, patience=patience, floor=floor, noise_z=noise_z)}


def _nonfinite_reason(record: dict) -> str | None:
    """Why a training record is a collapse on its own (a non-finite loss or grad norm, a skipped step), or None."""
    bad = [k for k in NONFINITE_KEYS if k in record and not math.isfinite(_num(record[k]))]
    if bad or record.get("skipped_nonfinite"):
        return f"non-finite {bad[0]}" if bad else "non-finite gradient (step skipped)"
    return None


def _scan_collapse(
    rows: Sequence[dict],
    smoothed: np.ndarray,
    stderr: np.ndarray | None,
    *,
    drop: float,
    patience: int,
    floor: float,
    noise_z: float,
) -> dict:
    """detect_collapse's verdict over the training records in order: "status", with "step" and "reason" when
    collapsed, "best_reward" and "best_step" (the rule: detect_collapse)."""
    best, best_step, best_se, streak, start = -math.inf, None, 0.0, 0, None
    for i, (r, s) in enumerate(zip(rows, smoothed)):
        step = int(r["step"])
        reason = _nonfinite_reason(r)
        if reason is not None:
            best_reward = best if best_step is not None else None
            return {
                "status": "collapsed",
                "step": step,
                "reason": reason,
                "best_reward": best_reward,
                "best_step": best_step,
            }
        if not math.isfinite(s):
            continue
        se = 0.0 if stderr is None else float(stderr[i])
        if s > best:
            best, best_step, best_se = float(s), step, se
        if best > floor and s < drop * best and best - s > noise_z * math.hypot(best_se, se):
            streak += 1
            start = step if start is None else start
            if streak >= patience:
                return {
                    "status": "collapsed",
                    "step": start,
                    "reason": "reward drop",
                    "best_reward": best,
                    "best_step": best_step,
                }
        else:
            streak, start = 0, None
    status = "stable" if best > floor else "never learned"
    return {"status": status, "best_reward": best if best_step is not None else None, "best_step": best_step}


def _finite_mean(values: Iterable[Any]) -> float | None:
    v = [x for x in (_num(y) for y in values) if math.isfinite(x)]
    return sum(v) / len(v) if v else None


def _series_key(rows: Sequence[dict], keys: Sequence[str]) -> str | None:
    """The first of `keys` that has a finite value in some row."""
    for k in keys:
        if any(math.isfinite(_num(r.get(k))) for r in rows):
            return k
    return None


DRIFT_KEYS = ("staleness", "delta_abs_mean", "log_w_std", "w_ess")


def last_minibatch_drift(rows: Sequence[dict]) -> dict[str, float | None]:
    """How off-policy a run's most stale data was: its policy lag (`staleness`, optimizer steps between
    sampling and training: N − 1 in a synchronous run, the workers' lead in an async one), mean |Δ| per
    token, the spread of log W and ESS/n of the raw sequence ratios at the last minibatch of each rollout
    batch, averaged over rollout batches;
    `w_ess_min` is the lowest ESS/n of any batch's last minibatch (pure)."""
    last: dict[Any, dict] = {}
    for r in rows:
        it = r.get("iteration")
        if it is not None and (it not in last or _num(r.get("minibatch")) >= _num(last[it].get("minibatch"))):
            last[it] = r
    picked = list(last.values())
    ess = [v for v in (_num(r.get("w_ess")) for r in picked) if math.isfinite(v)]
    return {**{k: _finite_mean(r.get(k) for r in picked) for k in DRIFT_KEYS}, "w_ess_min": min(ess) if ess else None}


IDENTITY_KEYS = ("reward", "grad_norm", "entropy", "response_length")


def trajectory(rows: Sequence[dict]) -> tuple:
    """What two runs share, step by step, when they are the same run under two names: the sampled rewards,
    the gradient norm, the entropy and the lengths (the loss value may differ: objectives that give one
    gradient can still report different surrogate values)."""
    return tuple((r.get("step"), *(r.get(k) for k in IDENTITY_KEYS)) for r in rows)


def final_eval(evals: dict[str, dict]) -> float | None:
    """The run's last eval accuracy (avg@k, a fraction in [0, 1]), when it has exactly one benchmark:
    the final policy's own accuracy. The training reward of a stale run's last steps is that of data
    sampled up to N − 1 steps earlier, so across N this is the comparable number."""
    if len(evals) != 1:
        return None
    return next(iter(evals.values())).get("avg_at_k")


def eval_curve(records: Sequence[dict]) -> list[dict]:
    """The run's eval accuracy at each evaluated checkpoint, when it has exactly one benchmark:
    [{"step", "samples", "accuracy"}], `samples` the sequences consumed by that step (Σ n_seqs; 0 at step 0;
    the step itself where a record lacks n_seqs)."""
    evals = eval_records(records)
    if len({str(e["benchmark"]) for e in evals}) != 1:
        return []
    rows = train_records(records)
    consumed = samples_consumed(rows)
    at = {int(r["step"]): float(c) for r, c in zip(rows, consumed)} if consumed is not None else {}
    by_step = {int(_num(e.get("step"))): _opt(e.get("avg_at_k")) for e in evals if math.isfinite(_num(e.get("step")))}
    return [
        {"step": s, "samples": 0.0 if s == 0 else at.get(s, float(s)), "accuracy": a}
        for s, a in sorted(by_step.items())
        if a is not None
    ]


def eval_auc(curve: Sequence[dict]) -> float | None:
    """Area under the eval curve against samples consumed, divided by the samples it spans (trapezoid rule):
    the mean accuracy over training, which rewards learning early as well as ending high. None with fewer
    than two evaluated checkpoints."""
    if len(curve) < 2:
        return None
    x = np.array([c["samples"] for c in curve], dtype=float)
    y = np.array([c["accuracy"] for c in curve], dtype=float)
    span = x[-1] - x[0]
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / span) if span > 0 else None


def summarize_run(records: Sequence[dict], total_steps: int | None = None, window: int | None = None) -> dict:
    """The report's numbers for one run (pure)."""
    rows = train_records(records)
    n = len(rows)
    window = window or smooth_window(total_steps or n or 1)
    tail = rows[-max(1, math.ceil(FINAL_FRAC * n)) :] if rows else []
    smoothed = moving_average([r.get("reward") for r in rows], window)
    best = float(np.nanmax(smoothed)) if np.isfinite(smoothed).any() else None
    weight_key = _series_key(rows, ("suppressed_frac", "clip_frac"))
    evals: dict[str, dict] = {}
    for e in eval_records(records):  # the last eval of each benchmark
        evals[str(e["benchmark"])] = {
            "step": e.get("step"),
            "k": e.get("k"),
            "avg_at_k": _opt(e.get("avg_at_k")),
            "pass_at_k": _opt(e.get("pass_at_k")),
            "ci95_low": _opt(e.get("ci95_low")),
            "ci95_high": _opt(e.get("ci95_high")),
        }
    times = [
        sum(_num(r.get(k)) for k in ("rollout_s", "logprob_s", "train_s") if math.isfinite(_num(r.get(k))))
        for r in rows
    ]
    return {
        "steps_done": int(rows[-1]["step"]) if rows else 0,
        "steps_total": total_steps,
        "final_reward": _finite_mean(r.get("reward") for r in tail),
        "best_reward": best,
        "ess_mean": _finite_mean(r.get("ess") for r in rows),
        "weight_metric": weight_key,  # suppressed_frac (vespo) or clip_frac (clipped objectives)
        "weight_frac_mean": _finite_mean(r.get(weight_key) for r in rows) if weight_key else None,
        "nonfinite_steps": sum(
            1
            for r in rows
            if r.get("skipped_nonfinite") or any(k in r and not math.isfinite(_num(r[k])) for k in NONFINITE_KEYS)
        ),
        "time_s": sum(times) if rows else None,
        "collapse": detect_collapse(rows, window=window, total_steps=total_steps),
        "drift_last_minibatch": last_minibatch_drift(rows),
        "final_eval": final_eval(evals),
        "eval_auc": eval_auc(curve := eval_curve(records)),
        "eval_curve": curve,
        "evals_per_run": len(curve),
        "eval": evals,
    }


def _opt(x: Any) -> float | None:
    v = _num(x)
    return v if math.isfinite(v) else None


def samples_consumed(rows: Sequence[dict]) -> np.ndarray | None:
    """Sequences the optimizer has consumed after each training record: the cumulative sum of
    `n_seqs`; None when a record does not carry a positive `n_seqs`."""
    counts = np.asarray([_num(r.get("n_seqs")) for r in rows], dtype=float)
    if not (np.isfinite(counts) & (counts > 0)).all():
        return None
    return np.cumsum(counts)


def x_values(rows: Sequence[dict], x: str) -> np.ndarray | None:
    """The curves' x coordinate of each training record: its optimizer step (x = "steps") or the
    samples consumed up to it (x = "samples", `samples_consumed`)."""
    if x == "samples":
        return samples_consumed(rows)
    return np.asarray([float(r["step"]) for r in rows])
