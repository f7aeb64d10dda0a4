"""Runs grouped by (label, staleness N): the group's numbers over its seeds, and the differences
between the reference algorithm and every other one at the same N (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .analysis import DRIFT_KEYS
from .runs import Loaded
from .stats import difference, t_interval, wilson_interval

REFERENCE = "vespo"  # the paper's method: paired differences are REFERENCE − each other label
SEED_METRICS = ("final_reward", "best_reward", "final_eval", "eval_auc")  # per-seed, with a t interval over seeds
# Every seed metric is a mean of 0/1 rewards or accuracies: its intervals are cut to [0, 1], a difference's to [−1, 1]
RATE, RATE_DIFFERENCE = (0.0, 1.0), (-1.0, 1.0)


def _groups(runs: Sequence[Loaded]) -> dict[tuple[str, int], list[Loaded]]:
    groups: dict[tuple[str, int], list[Loaded]] = {}
    for r in runs:
        groups.setdefault((r.spec.label, r.spec.staleness), []).append(r)
    return {k: sorted(v, key=lambda r: r.spec.seed) for k, v in sorted(groups.items(), key=lambda kv: (kv[0][1],))}


def _stats(values: Iterable[float | None]) -> dict | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "n": len(v)}


def collapse_rate(statuses: Sequence[str]) -> dict | None:
    """Fraction of runs that collapsed among those with data ("no data" left out), with its Wilson
    interval; None when no run has data."""
    counted = [s for s in statuses if s != "no data"]
    return wilson_interval(sum(s == "collapsed" for s in counted), len(counted))


def seed_values(group: dict, metric: str) -> dict[int, float | None]:
    """{seed: value} of one of SEED_METRICS in a group summary."""
    return {int(p["seed"]): p.get(metric) for p in group.get("per_seed") or []}


def _group_summary(key: tuple[str, int], members: list[Loaded]) -> dict:
    label, n = key
    sums = [m.summary for m in members]
    keys = {s["weight_metric"] for s in sums if s["weight_metric"]}
    return {
        "label": label,
        "staleness": n,
        "seeds": [m.spec.seed for m in members],
        "algorithm": members[0].spec.algorithm,
        "steps_done": [s["steps_done"] for s in sums],
        "steps_total": [s["steps_total"] for s in sums],
        **{k: t_interval((s[k] for s in sums), bounds=RATE) for k in SEED_METRICS},
        "collapse_rate": collapse_rate([s["collapse"]["status"] for s in sums]),
        "steps": _stats(s["steps_done"] for s in sums),
        "evals_per_run": _stats(s["evals_per_run"] for s in sums),
        "per_seed": [{"seed": m.spec.seed, **{k: s[k] for k in SEED_METRICS}} for m, s in zip(members, sums)],
        "ess_mean": _stats(s["ess_mean"] for s in sums),
        "weight_metric": "/".join(sorted(keys)) or None,
        "weight_frac_mean": _stats(s["weight_frac_mean"] for s in sums),
        "time_s": _stats(s["time_s"] for s in sums),
        "machines": list(dict.fromkeys(h for s in sums for h in s.get("hardware") or [])),  # recorded ones only
        "collapse": [
            dict(seed=m.spec.seed, **{k: s["collapse"][k] for k in ("status", "step", "reason")})
            for m, s in zip(members, sums)
        ],
        "drift_last_minibatch": {
            k: _stats(s["drift_last_minibatch"][k] for s in sums) for k in (*DRIFT_KEYS, "w_ess_min")
        },
        "eval": _eval_summary(sums),
        "eval_overlap": _overlap_summary(sums),
    }


def _overlap_summary(sums: Sequence[dict]) -> dict | None:
    """Eval problems that also occur in the runs' training prompts (overlap.eval_overlap): the most in any run."""
    found = [s["eval_overlap"] for s in sums if s.get("eval_overlap")]
    if not found:
        return None
    worst = max(found, key=lambda o: o["in_training"])
    return {**worst, "runs": len(found)}


def _eval_summary(sums: Sequence[dict]) -> dict:
    """Per benchmark: the k values and mean / min / max over seeds of the last eval's numbers."""
    evals = {}
    for b in sorted({b for s in sums for b in s["eval"]}):
        es = [s["eval"][b] for s in sums if b in s["eval"]]
        evals[b] = {
            "k": sorted({e["k"] for e in es if e.get("k") is not None}),
            "avg_at_k": _stats(e["avg_at_k"] for e in es),
            "pass_at_k": _stats(e["pass_at_k"] for e in es),
            "ci95_low": _stats(e["ci95_low"] for e in es),
            "ci95_high": _stats(e["ci95_high"] for e in es),
        }
    return evals


def paired_differences(
    groups: Sequence[dict], reference: str = REFERENCE, metrics: Sequence[str] = SEED_METRICS
) -> list[dict]:
    """reference − each other label at the same N, per metric, paired by seed (`stats.difference`):
    [{"staleness", "reference", "baseline", "metric", "mean", "low", "high", "n", "method", "seeds"}]."""
    out = []
    for ref in (g for g in groups if g["label"] == reference):
        for g in groups:
            if g["staleness"] != ref["staleness"] or g["label"] == reference:
                continue
            for metric in metrics:
                d = difference(seed_values(ref, metric), seed_values(g, metric), bounds=RATE_DIFFERENCE)
                if d is not None:
                    out.append(
                        {
                            "staleness": ref["staleness"],
                            "reference": reference,
                            "baseline": g["label"],
                            "metric": metric,
                            **d,
                        }
                    )
    return out
