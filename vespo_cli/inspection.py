"""`vespo inspect`: what a shard file, a shard directory or a run directory holds, as one table (the module is
not named inspect, which would shadow the standard library's).

Shards: rows, policy versions, staleness, reward, engines, scoring failures (`shards.summarize`). A run also
shows its training so far from metrics.jsonl (the numbers `vespo compare` reports, compare/analysis.py), its
checkpoints, and the hardware each start of its trainer ran on (run.json's `starts`)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .errors import UserError
from .rundir import RunDir

SHARD_KEYS = (
    "directory",
    "shards",
    "rows",
    "reward_mean",
    "accuracy",
    "mean_response_tokens",
    "reward_errors",
    "reward_timeouts",
)


def inspect_table(path: Path) -> tuple[Table, list[str]]:
    """The table of `path` and the bad shards found on the way; a UserError where there is nothing to show."""
    from .runid import recorded_hardware
    from .shards import summarize

    run = RunDir(path) if RunDir(path).is_run() or RunDir(path).rollouts.is_dir() else None
    shards = run.rollouts if run is not None else path
    s = summarize(shards) if run is None or shards.is_dir() else None
    if s is not None and s["bad_shards"] and not s["rows"]:
        raise UserError(f"{shards}: no readable shard ({len(s['bad_shards'])} bad, e.g. {s['bad_shards'][0]})")
    training = training_rows(run) if run is not None else []
    if (s is None or not s["rows"]) and not training:
        raise UserError(
            f"{shards}: no shard rows (expected *.parquet rollout shards, or a run directory with rollouts/)"
        )
    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if s is not None and s["rows"]:
        for key in SHARD_KEYS:
            v = s[key]
            table.add_row(key, f"{v:.4f}" if isinstance(v, float) else str(v))
        table.add_row("policy versions", ", ".join(f"v{k}: {c}" for k, c in s["policy_versions"].items()))
        table.add_row("staleness vs newest", ", ".join(f"{k}: {c}" for k, c in s["staleness_vs_newest"].items()))
        table.add_row("engines", ", ".join(f"{k}: {c}" for k, c in s["engines"].items()))
        table.add_row("finish reasons", ", ".join(f"{k}: {c}" for k, c in s["finish_reasons"].items()))
    for key, value in training:
        table.add_row(key, value)
    if run is not None:  # run.json's starts: the hardware the trainer ran on, in order (a resume elsewhere adds one)
        table.add_row("trained on", "; ".join(recorded_hardware(run.root)) or "– (no record in run.json)")
    return table, list(s["bad_shards"]) if s is not None else []


def training_rows(run: RunDir) -> list[tuple[str, str]]:
    """A run's training so far as (key, value) rows: steps, reward, collapse, each benchmark's eval curve and the
    checkpoints kept; [] before its first metrics line."""
    from .compare.analysis import FINAL_FRAC, eval_records, summarize_run
    from .compare.runs import existing_run
    from .fsio import read_jsonl
    from .rundir import step_dirs

    records = read_jsonl(run.metrics) if run.metrics.is_file() else []
    if not records:
        return []
    r = summarize_run(records, total_steps=existing_run(run.root).steps if run.is_run() else None)
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    c = r["collapse"]
    rows = [
        ("steps", f"{r['steps_done']}" + (f"/{r['steps_total']}" if r["steps_total"] else "")),
        (
            "reward",
            f"final {fmt(r['final_reward'])} (last {FINAL_FRAC:.0%} of steps), "
            f"best {fmt(r['best_reward'])} (moving average)",
        ),
        ("collapse", c["status"] + (f" at step {c['step']} ({c['reason']})" if c["status"] == "collapsed" else "")),
    ]
    evals = [e for e in eval_records(records) if isinstance(e.get("avg_at_k"), int | float)]
    for bench in dict.fromkeys(str(e["benchmark"]) for e in evals):
        curve = [e for e in evals if str(e["benchmark"]) == bench]
        text = ", ".join(f"step {e.get('step')}: {100 * e['avg_at_k']:.1f}%" for e in curve)
        last = curve[-1]
        if all(isinstance(last.get(k), int | float) for k in ("ci95_low", "ci95_high")):
            text += f" (95% [{100 * last['ci95_low']:.1f}, {100 * last['ci95_high']:.1f}])"
        rows.append((f"eval {bench} {last.get('metric') or ''}".strip(), text))
    rows.append(("checkpoints", ", ".join(p.name for _, p in step_dirs(run.checkpoints)) or "–"))
    return rows
