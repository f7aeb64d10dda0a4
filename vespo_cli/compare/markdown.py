"""The sections of report.md, each a list of lines from the summary's numbers (pure)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .analysis import DRIFT_KEYS, FINAL_FRAC, MIN_WINDOW, NOISE_Z, SMOOTH_FRAC
from .groups import REFERENCE, _stats
from .plots import X_AXES
from .runs import Loaded
from .stats import LEVEL, MAX_RUNS, MAX_SEEDS


def _f(st: dict | None, digits: int = 3, pct: bool = False, points: bool = False) -> str:
    """mean, plus its interval [low, high] where it has one, else (min–max) over seeds when there are several;
    `pct`: a rate as a percentage, `points`: a difference of rates in percentage points (× 100, no unit)."""
    if not st:
        return "–"
    scale, unit = (100.0, "%") if pct else (100.0, "") if points else (1.0, "")
    fmt = lambda v: f"{v * scale:.{digits}f}{unit}"  # noqa: E731
    if st.get("low") is not None and st.get("high") is not None:
        return f"{fmt(st['mean'])} [{fmt(st['low'])}, {fmt(st['high'])}]"
    if "min" in st and st["n"] > 1 and fmt(st["min"]) != fmt(st["max"]):
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


def _eval_cell(ev: dict | None, show_k: bool) -> str:
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


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines (cells with `|` escaped); the probe's report uses it too."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return lines


def setup_lines(settings: dict, n_runs: int, n_groups: int, out: Path) -> list[str]:
    """The compare's invocation in a line; run directories relative to the report, as in its Runs table."""
    setup = []
    if settings.get("preset"):
        setup.append(f"preset `{settings['preset']}`")
    if settings.get("items"):
        shown = [os.path.relpath(i, out) + "/" if Path(i).is_dir() else i for i in settings["items"]]
        setup.append("items " + ", ".join(f"`{i}`" for i in shown))
    if settings.get("overrides"):
        setup.append("overrides " + ", ".join(f"`--set {o}`" for o in settings["overrides"]))
    if settings.get("replay"):
        setup.append(f"replayed shards `{settings['replay']}` (identical data for every algorithm)")
    setup.append(f"{n_runs} run(s), {n_groups} (algorithm, N) group(s)")
    return ["Setup: " + "; ".join(setup) + ".", ""]


def results_lines(groups: Sequence[dict]) -> list[str]:
    """The table of groups: one row per (algorithm, N)."""
    benches = sorted({b for g in groups for b in g["eval"]})
    ks = {b: {k for g in groups for k in g["eval"].get(b, {}).get("k", [])} for b in benches}
    header = ["algorithm", "N", "seeds", "steps", "final reward", "best reward (MA)"]
    header += [
        f"{b} avg@{next(iter(ks[b]))} % [95% CI]" if len(ks[b]) == 1 else f"{b} avg@k % [95% CI]" for b in benches
    ]
    header += ["collapse", "mean ESS/n", "suppressed / clip frac", "time (s)"]
    rows = []
    for g in groups:
        done, total = g["steps_done"], g["steps_total"]
        steps = f"{min(done)}" + (f"/{total[0]}" if total and total[0] and min(done) < total[0] else "")
        wm = g["weight_metric"]
        short = {"suppressed_frac": "supp.", "clip_frac": "clip"}.get(wm, wm)
        weight = _f(g["weight_frac_mean"]) + (f" ({short})" if wm and g["weight_frac_mean"] else "")
        collapse = _collapse_cell(g["collapse"])
        if len(g["seeds"]) > 1 and g.get("collapse_rate"):
            collapse += f"; rate {_f(g['collapse_rate'], 2)}"
        rows.append(
            [g["label"], str(g["staleness"]), str(len(g["seeds"])), steps, _f(g["final_reward"]), _f(g["best_reward"])]
            + [_eval_cell(g["eval"].get(b), len(ks[b]) > 1) for b in benches]
            + [
                collapse,
                _f(g["ess_mean"]),
                weight,
                _f(g["time_s"], 0) + (" †" if len(g.get("machines", [])) > 1 else ""),
            ]
        )
    lines = ["## Results", ""] + md_table(header, rows) + [""]
    if any(len(g["seeds"]) > 1 for g in groups):
        lines += [
            f"Several seeds: final and best reward are the mean over seeds with its {LEVEL:.0%} interval "
            "[low, high] (t over seeds, cut to [0, 1]), the collapse rate has a Wilson interval; the other cells "
            "are the mean over seeds, with (min–max over seeds).",
            "",
        ]
    if any(len(g.get("machines", [])) > 1 for g in groups):
        lines += ["† The group's runs trained on different machines (Runs table): its time mixes their speeds.", ""]
    return lines + overlap_lines(groups)


def overlap_lines(groups: Sequence[dict]) -> list[str]:
    """Eval problems that the runs also trained on (overlap.eval_overlap): expected 0; a warning otherwise."""
    seen = [(g["label"], g["staleness"], g["eval_overlap"]) for g in groups if g.get("eval_overlap")]
    if not seen:
        return []
    bad = [(label, n, o) for label, n, o in seen if o["in_training"]]
    if not bad:
        splits = sorted({o["split"] for _, _, o in seen})
        return [f"Eval problems in training: 0 in every group ({', '.join(splits)} eval).", ""]
    cells = "; ".join(
        f"{label} N={n}: {o['in_training']}/{o['problems']} ({o['distinct']} distinct)" for label, n, o in bad
    )
    return [
        f"**Warning: the eval measures problems the policy trained on.** Eval problems that occur among the "
        f"training prompts of a run (the most in any run of the group): {cells}. Eval from the "
        f"{bad[0][2]['split']}; its accuracy is in-sample and its differences measure memorisation as much as "
        "learning (newer runs evaluate the held-out split of `vespo_cli/arith.py`).",
        "",
    ]


def drift_lines(groups: Sequence[dict]) -> list[str]:
    """How off-policy each group's most stale minibatches were (analysis.last_minibatch_drift)."""
    rows = [
        [
            g["label"],
            str(g["staleness"]),
            *(_f(g["drift_last_minibatch"][k]) for k in (*DRIFT_KEYS, "w_ess_min")),
        ]
        for g in groups
        if g.get("drift_last_minibatch")
    ]
    if not rows:
        return []
    header = [
        "algorithm",
        "N",
        "policy lag (steps)",
        "mean |Δ| per token",
        "std of log W",
        "ESS/n of W",
        "lowest ESS/n of W",
    ]
    return [
        "## Drift at the last minibatch of each rollout batch",
        "",
        *md_table(header, rows),
        "",
        "The most off-policy data each group trained on: the last of the N minibatches of every rollout batch "
        "(N = 1: the only one, Δ = 0 unless the behaviour log-probs are the engine's), averaged over rollout "
        "batches, then over seeds (min–max over seeds). Policy lag: optimizer steps between sampling and "
        "training (N − 1 when synchronous; in an async run, how far the workers had sampled ahead). "
        "W = exp(Σ_t Δ_t) is the raw sequence ratio whatever the objective does with it; "
        "ESS/n = (Σ W)² / (Σ W²) / n.",
        "",
    ]


def _diff_cell(d: dict | None, points: bool = False) -> str:
    if not d:
        return "–"
    n = d["n"] if d["method"] == "paired" else "/".join(str(k) for k in d["n"])
    return f"{_f(d, 1, points=True) if points else _f(d)} ({d['method']}, n={n})"


def differences_lines(diffs: Sequence[dict]) -> list[str]:
    """VESPO − each other algorithm per N: one row per (N, baseline), a column per metric."""
    if not diffs:
        return []
    cells: dict[tuple, dict] = {}
    for d in diffs:
        cells.setdefault((d["staleness"], d["baseline"]), {})[d["metric"]] = d
    evals = any("final_eval" in m for m in cells.values())
    rows = [
        [str(n), base, _diff_cell(m.get("final_reward")), _diff_cell(m.get("best_reward"))]
        + ([_diff_cell(m.get("final_eval"), points=True)] if evals else [])
        for (n, base), m in cells.items()
    ]
    header = ["N", "baseline", f"Δ final reward [{LEVEL:.0%} CI]", f"Δ best reward [{LEVEL:.0%} CI]"]
    header += [f"Δ final eval, points [{LEVEL:.0%} CI]"] if evals else []
    return [
        f"## Differences: {REFERENCE} − baseline",
        "",
        *md_table(header, rows),
        "",
        f"Each cell: mean of {REFERENCE} − baseline with its {LEVEL:.0%} interval; *paired*: the t interval of "
        "the per-seed differences (runs of one seed share data order and initialisation), *welch*: the seeds "
        "do not pair, Welch's interval of the two means; each cut to [−1, 1] (final eval: [−100, 100] points).",
        "",
    ]


def _points(v: float | None, scale: float) -> str:
    return "–" if v is None else f"{v * scale:+.1f}"


def _scale(row: dict) -> tuple[float, str]:
    """Accuracy endpoints and collapse rates in points (×100); others as they are."""
    return (
        (100.0, " points") if row["endpoint"] in ("final_eval", "eval_auc", "final_reward", "collapse") else (1.0, "")
    )


def _p(v: float | None) -> str:
    return "–" if v is None else (f"{v:.3f}" if v >= 0.001 else "<0.001")


def _power_note(row: dict) -> str:
    """What an unresolved row would need: its minimum detectable effect and the seeds (runs) that would resolve it."""
    scale, unit = _scale(row)
    runs = "runs per arm" if row["form"] == "collapse" else "seeds"
    parts = []
    if row.get("mde") is not None:
        parts.append(f"detectable at this n: |effect − boundary| ≥ {row['mde'] * scale:.1f}{unit}")
    if row["verdict"] in ("not resolved", "interim"):
        if row.get("seeds_needed") is not None:
            parts.append(f"{row['seeds_needed']} {runs} would resolve the observed effect at the observed spread")
        elif row.get("p") is not None:
            most = MAX_RUNS if row["form"] == "collapse" else MAX_SEEDS
            parts.append(f"not resolvable at any realistic n (> {most} {runs}) at the observed effect")
    if row.get("note"):
        parts.append(row["note"])
    return "; ".join(parts)


def verdict_sentence(row: dict) -> str:
    """One verdict row in words, never stronger than the row: the claim, the verdict, the estimate with its
    raw interval, the raw and Holm-adjusted p-values (the README's result sentences are these, word for word)."""
    scale, unit = _scale(row)
    if row["estimate"] is None:
        return f"{row['claim']}: {row['verdict']} ({row['comparison']}: {row.get('note') or 'no data'})."
    interval = "" if row["low"] is None else f" [{row['low'] * scale:+.1f}, {row['high'] * scale:+.1f}]"
    margin = f", margin {row['margin'] * scale:.1f}{unit}" if row.get("margin") else ""
    interim = f"; {row['note']}" if row["verdict"] == "interim" else ""
    return (
        f"{row['claim']}: **{row['verdict']}** ({row['comparison']}: {row['estimate'] * scale:+.1f}{unit}{interval}"
        f"{margin}; p = {_p(row['p'])}, Holm p = {_p(row['p_adjusted'])}{interim})."
    )


def _commit_note(claims: dict) -> str:
    if not claims.get("commit"):
        return ""
    changed = ", **modified since** (not the pre-registered claims)" if claims.get("modified") else ""
    return f" at commit {claims['commit'][:12]}{changed}"


def _plan_text(plan: dict | None) -> str:
    if not plan:
        return " (no plan given)"
    return " (" + ", ".join(f"{k} at {'every N' if n == 'every N' else f'N = {n}'}" for n, k in plan.items()) + ")"


def verdict_lines(rows: Sequence[dict], claims: dict | None = None) -> list[str]:
    """The claims (verdict.judge) as a table: the raw interval, p and Holm-adjusted p that decide each, and for
    an unresolved row what would resolve it; then the rows in words."""
    table = []
    for r in rows:
        scale, _ = _scale(r)
        ci = "–" if r["low"] is None else f"[{r['low'] * scale:+.1f}, {r['high'] * scale:+.1f}]"
        margin = "–" if r.get("boundary") is None else f"{r['boundary'] * scale:+.1f}"
        table.append(
            [
                r["claim"],
                r["form"],
                r["comparison"],
                r["endpoint"].replace("_", " "),
                _points(r["estimate"], scale),
                ci,
                margin,
                _p(r["p"]),
                _p(r["p_adjusted"]),
                f"**{r['verdict']}**",
                _power_note(r),
            ]
        )
    fam = claims or {}
    m = sum(r["p"] is not None or bool(r.get("pending")) for r in rows)
    waiting = sum(bool(r.get("pending")) for r in rows)
    short = sum(bool(r.get("short")) for r in rows)
    alpha = fam.get("alpha", 0.05)
    return [
        "## Verdict",
        "",
        *md_table(
            [
                "claim",
                "form",
                "comparison",
                "endpoint",
                "estimate",
                f"{LEVEL:.0%} CI (raw)",
                "boundary",
                "p",
                "Holm p",
                "verdict",
                "power",
            ],
            table,
        ),
        "",
        f"Claims file: `{fam.get('path', '?')}`{_commit_note(fam)} (family **{fam.get('family', '?')}**: the {m} "
        "rows with data"
        + (f" or planned ({waiting} without data yet, in the family at p = 1 until they have it)" if waiting else "")
        + (f"; {short} short of their planned seeds, in the family at p = 1 until they have them" if short else "")
        + ", "
        f"Holm-adjusted at family-wise α = {alpha:g}). Accuracy endpoints and collapse rates in points. "
        "*noninferior*: A(N) − B(ref) > −margin; *degrades*: < −margin; *interaction*: [A(N) − A(ref)] − "
        "[B(N) − B(ref)] > margin; *difference*: A − B > margin; *collapse*: A's collapse rate below B's (Boschloo's "
        "exact test, Newcombe interval). A relative margin δ tests A(N) − (1 − δ)·B(ref) > 0 (the boundary shown "
        "is −δ × the reference mean). A row is **supported** when its Holm-adjusted p is below α with the "
        "estimate on the claim's side of the boundary, **contradicted** when it is below α on the other side, "
        "else **not resolved**; a row whose groups have fewer seeds than planned"
        f"{_plan_text(fam.get('planned_seeds'))} is **interim**, not judged whatever its p. t tests are paired by "
        "seed where the seeds pair (Welch otherwise). *power*: "
        f"the minimum detectable effect at 80% power and Holm's strictest level α/{max(m, 1)}, and how many seeds "
        "would resolve the observed effect at the observed spread.",
        "",
        *[f"- {verdict_sentence(r)}" for r in rows],
        "",
    ]


def identical_lines(identical: Sequence[dict]) -> list[str]:
    """Groups of runs that trained identically under different algorithms (report.identical_runs)."""
    if not identical:
        return []
    rows = [[" = ".join(g["labels"]), str(g["staleness"]), str(g["seed"])] for g in identical]
    return [
        "## Identical runs",
        "",
        *md_table(["algorithms", "N", "seed"], rows),
        "",
        "These runs have the same training rewards, gradient norms, entropies and lengths at every step: the "
        "objectives gave the same update on this data (at N = 1 every ratio is 1, where they coincide), so "
        "their difference is 0 by construction, not a measurement.",
        "",
    ]


def definitions_lines(settings: dict, window: int) -> list[str]:
    c = settings["collapse"]
    x = settings.get("x", "steps")
    return [
        "## Definitions",
        "",
        f"- **Smoothing**: trailing moving average over the last **{window}** optimizer steps "
        f"(max({MIN_WINDOW}, {SMOOTH_FRAC:.0%} of the longest run's steps)); plots show it as the solid line "
        "over the faint raw curve. With several seeds a curve is the mean over seeds and the band spans min–max.",
        f"- **x-axis**: {X_AXES[x]}"
        + (
            " (the cumulative sum of the records' `n_seqs`; seeds are aligned on the step and a step's x is their mean)"
            if x == "samples"
            else ""
        )
        + ".",
        f"- **Final reward**: mean training reward over the last {FINAL_FRAC:.0%} of logged steps (at least one).",
        "- **Best reward (MA)**: the highest value of the smoothed training reward.",
        f"- **Intervals over seeds**: mean ± t_{{{(1 + LEVEL) / 2:g}, n−1}} · s/√n with s the seeds' sample "
        "standard deviation (a t interval: with 3–5 seeds a bootstrap interval is too narrow), cut to the values "
        "a mean of 0/1 rewards can take ([0, 1]; a difference: [−1, 1]); one seed gives none. Collapse rate: "
        "collapsed runs / runs with data, with the Wilson score interval.",
        "- **Eval**: the last eval line of each benchmark: avg@k (mean accuracy over k samples per problem), "
        "in %, with its 95% interval `[low, high]` as logged by `vespo eval`.",
        f"- **Collapse**: a run *collapsed* at the first step where either `loss` or `grad_norm` is non-finite "
        f"(or the trainer skipped a step for a non-finite gradient), or the smoothed reward stays below "
        f"{c['drop']:.0%} of its best smoothed value so far, by more than {c.get('noise_z', NOISE_Z):g} standard "
        "errors of the two window means (samples per window from `n_seqs`; variance ≤ μ(1 − μ) for rewards in "
        f"[0, 1]), for M consecutive steps, M = max({c['min_patience']}, {c['patience_frac']:.0%} of the run's "
        f"steps); the step given is the first of those M. The drop rule only applies once the best smoothed reward "
        f"exceeds {c['floor']}: a run that never gets there is *never learned*, not collapsed. Otherwise the run "
        "is *stable*.",
        "- **ESS/n**: effective sample size of the sequence weights, (Σw)²/(Σw²)/n, averaged over steps.",
        "- **Suppressed / clip frac**: for VESPO the fraction of sequences with φ(W) < 1e-3 (`suppressed_frac`); "
        "for clipped objectives the fraction of tokens whose gradient was clipped (`clip_frac`); mean over steps.",
        "- **Time**: rollout + old-logprob + training seconds summed over steps (no checkpointing or model "
        "loading; a resumed run's pause is not counted).",
        "",
    ]


def curves_lines(images: Sequence[dict]) -> list[str]:
    if not images:
        return []
    lines = ["## Curves", ""]
    for im in images:
        lines += [f"### {im['title']}", "", f"![{im['title']}]({im['file']})", ""]
    return lines


def runs_lines(runs: Sequence[Loaded], out: Path) -> list[str]:
    machines = list(dict.fromkeys(h for r in runs for h in r.summary.get("hardware", [])))
    several = len(machines) > 1
    rows = []
    for r in runs:
        s = r.summary
        row = [
            r.spec.label,
            str(r.spec.staleness),
            str(r.spec.seed),
            f"{s['steps_done']}" + (f"/{s['steps_total']}" if s["steps_total"] else ""),
            _f(_stats([s["final_reward"]])),
            _collapse_cell([s["collapse"]]),
            str(s["nonfinite_steps"]),
        ]
        if several:
            row.append(", ".join(str(machines.index(h) + 1) for h in s.get("hardware", [])) or "–")
        rows.append([*row, f"`{os.path.relpath(r.spec.path, out)}`"])
    header = ["algorithm", "N", "seed", "steps", "final reward", "collapse", "non-finite steps"]
    header += ["machine"] * several + ["run"]
    return ["## Runs", "", *md_table(header, rows), "", *_machines_lines(runs, machines)]


def _machines_lines(runs: Sequence[Loaded], machines: list[str]) -> list[str]:
    """Which hardware trained the runs (run.json's `starts`): a confound where runs differ in it."""
    if not machines:
        return []
    unrecorded = sum(1 for r in runs if not r.summary.get("hardware"))
    rest = f"; {unrecorded} run(s) from before run.json recorded it" if unrecorded else ""
    if len(machines) == 1:
        return [f"Hardware: every run with a record trained on {machines[0]}{rest}.", ""]
    legend = "; ".join(f"{i + 1} = {m}" for i, m in enumerate(machines))
    return [
        f"Machines (column *machine*; a run resumed elsewhere lists both): {legend}{rest}. Runs on different "
        f"hardware differ in bf16 rounding and speed, so compare them with that in mind.",
        "",
    ]
