"""Runs grouped by (label, staleness N): the group's numbers over its seeds (pure)."""
from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from .runs import Loaded


def _groups(runs: Sequence[Loaded]) -> dict[tuple[str, int], list[Loaded]]:
    groups: dict[tuple[str, int], list[Loaded]] = {}
    for r in runs:
        groups.setdefault((r.spec.label, r.spec.staleness), []).append(r)
    return {k: sorted(v, key=lambda r: r.spec.seed) for k, v in sorted(groups.items(), key=lambda kv: (kv[0][1],))}


def _stats(values: Iterable[Optional[float]]) -> Optional[dict]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None
    return {"mean": sum(v) / len(v), "min": min(v), "max": max(v), "n": len(v)}


def _group_summary(key: tuple[str, int], members: list[Loaded]) -> dict:
    label, n = key
    sums = [m.summary for m in members]
    benches = sorted({b for s in sums for b in s["eval"]})
    evals = {}
    for b in benches:
        es = [s["eval"][b] for s in sums if b in s["eval"]]
        evals[b] = {"k": sorted({e["k"] for e in es if e.get("k") is not None}),
                    "avg_at_k": _stats(e["avg_at_k"] for e in es), "pass_at_k": _stats(e["pass_at_k"] for e in es),
                    "ci95_low": _stats(e["ci95_low"] for e in es), "ci95_high": _stats(e["ci95_high"] for e in es)}
    keys = {s["weight_metric"] for s in sums if s["weight_metric"]}
    return {
        "label": label, "staleness": n, "seeds": [m.spec.seed for m in members],
        "steps_done": [s["steps_done"] for s in sums], "steps_total": [s["steps_total"] for s in sums],
        "final_reward": _stats(s["final_reward"] for s in sums),
        "best_reward": _stats(s["best_reward"] for s in sums),
        "ess_mean": _stats(s["ess_mean"] for s in sums),
        "weight_metric": "/".join(sorted(keys)) or None,
        "weight_frac_mean": _stats(s["weight_frac_mean"] for s in sums),
        "time_s": _stats(s["time_s"] for s in sums),
        "collapse": [dict(seed=m.spec.seed, **{k: s["collapse"][k] for k in ("status", "step", "reason")})
                     for m, s in zip(members, sums)],
        "eval": evals,
    }
