"""The report of a compare: `summary.json` (the numbers, per run and per group) and `report.md`
(table, definitions, curves, runs)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..fsio import atomic_write_json, atomic_write_text
from .analysis import DROP, FINAL_FRAC, FLOOR, MIN_PATIENCE, MIN_WINDOW, NOISE_Z, PATIENCE_FRAC, SMOOTH_FRAC
from .groups import _group_summary, _groups, _stats
from .plots import plot_all
from .runs import Loaded, RunSpec, load_runs


def write_report(specs: Sequence[RunSpec], out: Path, settings: Optional[dict] = None) -> Path:
    """report.md + summary.json + PNGs in `out` for these runs (reads their metrics.jsonl)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, window = load_runs(specs)
    groups = _groups(runs)
    images = plot_all(runs, groups, out, window)
    summary = {
        "settings": {**(settings or {}), "smooth_window": window, "final_frac": FINAL_FRAC,
                     "collapse": {"drop": DROP, "patience_frac": PATIENCE_FRAC, "min_patience": MIN_PATIENCE,
                                  "floor": FLOOR, "noise_z": NOISE_Z}},
        "groups": [_group_summary(key, members) for key, members in groups.items()],
        "runs": [{"label": r.spec.label, "staleness": r.spec.staleness, "seed": r.spec.seed,
                  "path": os.path.relpath(r.spec.path, out), **r.summary} for r in runs],
        "figures": images,
    }
    atomic_write_json(out / "summary.json", _jsonable(summary))
    path = out / "report.md"
    atomic_write_text(path, render_markdown(summary, runs, window, images, out))
    return path


def _jsonable(x: Any) -> Any:
    """Non-finite floats → null (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _f(st: Optional[dict], digits: int = 3, pct: bool = False) -> str:
    """mean, plus (min–max) over seeds when there are several."""
    if not st:
        return "–"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    fmt = lambda v: f"{v * scale:.{digits}f}{unit}"  # noqa: E731
    if st["n"] > 1 and fmt(st["min"]) != fmt(st["max"]):
        return f"{fmt(st['mean'])} ({fmt(st['min'])}–{fmt(st['max'])})"
    return fmt(st["mean"])


def _collapse_cell(entries: list[dict]) -> str:
    if len(entries) == 1:
        e = entries[0]
        return f"step {e['step']} ({e['reason']})" if e["status"] == "collapsed" else e["status"]
    statuses = [e["status"] for e in entries]
    if len(set(statuses)) == 1 and statuses[0] != "collapsed":
        return statuses[0]
    parts = []
    col = [e for e in entries if e["status"] == "collapsed"]
    if col:
        parts.append(f"{len(col)}/{len(entries)} collapsed (step {', '.join(str(e['step']) for e in col)})")
    for st in ("never learned", "no data"):
        c = statuses.count(st)
        if c:
            parts.append(f"{c}/{len(entries)} {st}")
    if not parts:
        return "stable"
    return "; ".join(parts)


def _eval_cell(ev: Optional[dict], show_k: bool) -> str:
    if not ev or not ev["avg_at_k"]:
        return "–"
    avg, lo, hi = ev["avg_at_k"], ev["ci95_low"], ev["ci95_high"]
    cell = f"{avg['mean'] * 100:.1f}"
    if avg["n"] == 1 and lo and hi:
        cell += f" [{lo['mean'] * 100:.1f}, {hi['mean'] * 100:.1f}]"
    elif avg["n"] > 1 and avg["min"] != avg["max"]:
        cell += f" (seeds {avg['min'] * 100:.1f}–{avg['max'] * 100:.1f})"
    if show_k and ev["k"]:
        cell += f" @{'/'.join(str(k) for k in ev['k'])}"
    return cell


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(summary: dict, runs: Sequence[Loaded], window: int, images: list[dict], out: Path) -> str:
    st = summary["settings"]
    groups = summary["groups"]
    multi_seed = any(len(g["seeds"]) > 1 for g in groups)
    lines = ["# vespo compare", ""]
    setup = []
    if st.get("preset"):
        setup.append(f"preset `{st['preset']}`")
    if st.get("items"):
        setup.append("items " + ", ".join(f"`{i}`" for i in st["items"]))
    if st.get("overrides"):
        setup.append("overrides " + ", ".join(f"`--set {o}`" for o in st["overrides"]))
    if st.get("replay"):
        setup.append(f"replayed shards `{st['replay']}` (identical data for every algorithm)")
    setup.append(f"{len(runs)} run(s), {len(groups)} (algorithm, N) group(s)")
    lines += ["Setup: " + "; ".join(setup) + ".", ""]

    benches = sorted({b for g in groups for b in g["eval"]})
    ks = {b: {k for g in groups for k in g["eval"].get(b, {}).get("k", [])} for b in benches}
    header = ["algorithm", "N", "seeds", "steps", "final reward", "best reward (MA)"]
    header += [f"{b} avg@{next(iter(ks[b]))} % [95% CI]" if len(ks[b]) == 1 else f"{b} avg@k % [95% CI]"
               for b in benches]
    header += ["collapse", "mean ESS/n", "suppressed / clip frac", "time (s)"]
    rows = []
    for g in groups:
        done, total = g["steps_done"], g["steps_total"]
        steps = f"{min(done)}" + (f"/{total[0]}" if total and total[0] and min(done) < total[0] else "")
        wm = g["weight_metric"]
        weight = _f(g["weight_frac_mean"]) + (f" ({'supp.' if wm == 'suppressed_frac' else 'clip' if wm == 'clip_frac' else wm})"
                                              if wm and g["weight_frac_mean"] else "")
        time_st = g["time_s"]
        rows.append([g["label"], str(g["staleness"]), str(len(g["seeds"])), steps, _f(g["final_reward"]),
                     _f(g["best_reward"])]
                    + [_eval_cell(g["eval"].get(b), len(ks[b]) > 1) for b in benches]
                    + [_collapse_cell(g["collapse"]), _f(g["ess_mean"]), weight, _f(time_st, 0)])
    lines += ["## Results", ""] + _table(header, rows) + [""]
    if multi_seed:
        lines += ["Several seeds: each cell is the mean over seeds, with (min–max over seeds).", ""]

    c = st["collapse"]
    lines += [
        "## Definitions", "",
        f"- **Smoothing**: trailing moving average over the last **{window}** optimizer steps "
        f"(max({MIN_WINDOW}, {SMOOTH_FRAC:.0%} of the longest run's steps)); plots show it as the solid line "
        "over the faint raw curve. With several seeds a curve is the mean over seeds and the band spans min–max.",
        f"- **Final reward**: mean training reward over the last {FINAL_FRAC:.0%} of logged steps (at least one).",
        "- **Best reward (MA)**: the highest value of the smoothed training reward.",
        "- **Eval**: the last eval line of each benchmark: avg@k (mean accuracy over k samples per problem), "
        "in %, with its 95% interval `[low, high]` as logged by `vespo eval`.",
        f"- **Collapse**: a run *collapsed* at the first step where either `loss` or `grad_norm` is non-finite "
        f"(or the trainer skipped a step for a non-finite gradient), or the smoothed reward stays below "
        f"{c['drop']:.0%} of its best smoothed value so far, by more than {c.get('noise_z', NOISE_Z):g} standard errors "
        f"of the two window means (samples per window from `n_seqs`; variance ≤ μ(1 − μ) for rewards in [0, 1]), "
        f"for M consecutive steps, "
        f"M = max({c['min_patience']}, {c['patience_frac']:.0%} of the run's steps); the step given is the first "
        f"of those M. The drop rule only applies once the best smoothed reward exceeds {c['floor']}: a run that "
        "never gets there is *never learned*, not collapsed. Otherwise the run is *stable*.",
        "- **ESS/n**: effective sample size of the sequence weights, (Σw)²/(Σw²)/n, averaged over steps.",
        "- **Suppressed / clip frac**: for VESPO the fraction of sequences with φ(W) < 1e-3 (`suppressed_frac`); "
        "for clipped objectives the fraction of tokens whose gradient was clipped (`clip_frac`); mean over steps.",
        "- **Time**: rollout + old-logprob + training seconds summed over steps (no checkpointing or model "
        "loading; a resumed run's pause is not counted).",
        "",
    ]
    if images:
        lines += ["## Curves", ""]
        for im in images:
            lines += [f"### {im['title']}", "", f"![{im['title']}]({im['file']})", ""]
    lines += ["## Runs", ""]
    run_rows = []
    for r in runs:
        s = r.summary
        col = s["collapse"]
        run_rows.append([r.spec.label, str(r.spec.staleness), str(r.spec.seed),
                         f"{s['steps_done']}" + (f"/{s['steps_total']}" if s["steps_total"] else ""),
                         _f(_stats([s["final_reward"]])), _collapse_cell([col]), str(s["nonfinite_steps"]),
                         f"`{os.path.relpath(r.spec.path, out)}`"])
    lines += _table(["algorithm", "N", "seed", "steps", "final reward", "collapse", "non-finite steps", "run"],
                    run_rows) + [""]
    lines += ["Numbers: `summary.json` (same directory)."]
    return "\n".join(lines) + "\n"
