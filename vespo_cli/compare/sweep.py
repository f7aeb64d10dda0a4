"""Running the (algorithm, N, seed) grid: one trainer child process per run, complete runs reused
and partial ones resumed, the report rewritten as runs finish."""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..fsio import read_jsonl
from ..lock import hold
from ..rundir import RunDir, default_dir
from .analysis import train_records
from .claims import load_claims, parse_planned_seeds
from .labels import describe_algorithm, disambiguate, join_label
from .plots import X_AXES
from .report import write_report
from .runs import RunSpec, _read_run_config, _run_dirs, existing_run, parse_algo_item
from .verdict import undecidable

REFRESH_AFTER_S = 60.0  # rewrite the report after each run that trained longer than this


def train(cfg, run_dir: Path, *, replay: Path | None = None, resume: bool = False, async_: bool = False) -> dict:
    """Run the trainer in a child process (tests replace this name).

    One process per run: a long sweep does not accumulate engine and allocator memory, and a run
    that dies (OOM, a crash in a native library) fails alone, with its exit code, and can be resumed."""
    import subprocess
    import sys

    from ..config import dump_yaml

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(dump_yaml(cfg))
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vespo_cli.compare",
                f.name,
                str(run_dir),
                str(replay) if replay else "",
                "1" if resume else "0",
                "1" if async_ else "0",
            ]
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise UserError(f"{run_dir}: training exited with code {proc.returncode}; rerun the same compare to resume it")
    return {}


def train_child(config_path: str, run_dir: str, replay: str, resume: str, async_: str = "0") -> None:
    """Child side of `train`: the resolved config from a YAML file, then the trainer in-process."""
    from ..config import Config, from_dict
    from ..evaluate import training_eval
    from ..train.loop import train as run_train

    cfg = from_dict(Config, yaml.safe_load(Path(config_path).read_text()))
    run_train(
        cfg,
        Path(run_dir),
        replay=Path(replay) if replay else None,
        resume=resume == "1",
        async_=async_ == "1",
        evaluate=training_eval(cfg, run_dir),
    )


def is_complete(run_dir: Path, steps: int) -> bool:
    """Its metrics reach `steps` and, when it keeps checkpoints, the newest is of step ≥ `steps`: a run that
    died writing its final checkpoint (disk full) has logged its last step but resumes from an earlier one.
    A run without checkpoints (its results copied elsewhere, or pruned after its eval) is judged by its metrics."""
    run = RunDir(run_dir)
    rows = train_records(read_jsonl(run.metrics))
    if not rows or int(rows[-1]["step"]) < steps:
        return False
    checkpoints = run.checkpoint_steps()
    return not checkpoints or checkpoints[-1][0] >= steps


def _config_mismatch(run_dir: Path, cfg) -> list[str]:
    """Keys whose value in the run's config.yaml differs from the config compare would run."""
    from ..config import dump_yaml

    want, have = yaml.safe_load(dump_yaml(cfg)), _read_run_config(run_dir)
    diffs: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k), b.get(k), f"{prefix}{k}.")
        elif a != b:
            diffs.append(f"{prefix[:-1]}: {b!r} there, {a!r} now")

    walk(want, have, "")
    return diffs


def compare_command(
    items: Sequence[str],
    *,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    staleness: Sequence[int] = (),
    seeds: int = 1,
    replay: Path | None = None,
    out: Path | None = None,
    x: str = "steps",
    async_: bool = False,
    claims: str | None = None,
    planned_seeds: Sequence[str] = (),
) -> Path:
    """Run (or reuse) every (algorithm, N, seed) and/or collect run directories; write the report
        with curves over `x` ("steps" or "samples"). `async_`: every run trains with async rollout
        workers (`vespo train --async`), labelled `<algo>+async`. `claims`: the claims file the verdict tests
    (claims.load_claims; default the paper's). `planned_seeds` ("K" or "N=K"): the seeds the verdict waits for
    (rows short of them are interim); default the claims file's, and `seeds` for the runs this sweep trains.
    Returns the report path."""
    _check_args(items, staleness, seeds, x)
    claims_file = load_claims(claims)  # a bad claims file fails before any run trains
    plan = parse_planned_seeds(list(planned_seeds))
    algos = [i for i in items if not Path(i).is_dir()]
    dirs = [d for i in items if Path(i).is_dir() for d in _run_dirs(i)]
    if not algos:
        for flag, given in (
            ("--staleness", staleness),
            ("--set", overrides),
            ("--replay", replay),
            ("--async", async_),
        ):
            if given:
                raise UserError(f"{flag}: only used when running algorithms; run directories are reported as they are")
    if replay is not None and async_:
        raise UserError("--replay and --async: pick one (replayed shards are not sampled by workers)")
    if replay is not None and not Path(replay).is_dir():
        raise UserError(f"--replay {replay}: no such directory")
    specs: list[RunSpec] = []
    if algos:
        preset = preset or "smollm2-arith"
        out = default_dir(f"compare-{Path(preset).stem}") if out is None else out
        specs += grid_specs(algos, preset, overrides, staleness, seeds, Path(out), async_=async_)
    specs += [existing_run(d) for d in dirs]
    if out is None:
        presets = {(s.config.get("preset") or "") for s in specs}
        out = default_dir(f"compare-{presets.pop()}" if len(presets) == 1 and "" not in presets else "compare")
    specs = _dedupe(specs)
    out = Path(out)
    settings = {
        "items": list(items),
        "preset": preset,
        "overrides": list(overrides),
        "staleness": list(staleness),
        "seeds": seeds,
        "replay": str(replay) if replay else None,
        "async": async_,
    }
    if algos and not plan:  # the runs this sweep trains: `seeds` per (algorithm, N)
        plan = {s.staleness: seeds for s in specs if s.algo is not None}
    runs = Counter((s.label, s.staleness) for s in specs)
    for line in undecidable([(label, n, k) for (label, n), k in runs.items()], claims_file[0], plan):
        _console().print(f"note: {line}", highlight=False, soft_wrap=True)  # before hours of training
    report_now = partial(write_report, specs, out, settings=settings, x=x, claims=claims_file, planned=plan)
    with hold(out, "vespo compare"):  # one compare per report directory; each run locks its own directory
        _run_grid(specs, replay, report_now)  # reports as runs finish: rows short of the plan are interim
        report = report_now()
    console = _console()
    summary = json.loads((out / "summary.json").read_text())
    console.print(results_table(summary))
    for line in verdict_summary(summary):
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"report: {report}", highlight=False)
    return report


def results_table(summary: dict):
    """The report's results on the terminal: a row per (algorithm, N) group (report.md has the intervals)."""
    from rich.table import Table

    table = Table(title="vespo compare", title_justify="left", show_edge=False)
    for col in ("algorithm", "N", "seeds", "final reward", "final eval %", "collapsed"):
        table.add_column(col)
    for g in summary["groups"]:
        reward, final = g.get("final_reward"), g.get("final_eval")
        collapsed = sum(c["status"] == "collapsed" for c in g["collapse"])
        table.add_row(
            g["label"],
            str(g["staleness"]),
            str(len(g["seeds"])),
            "–" if not reward else f"{reward['mean']:.3f}",
            "–" if not final else f"{100 * final['mean']:.1f}",
            f"{collapsed}/{len(g['collapse'])}",
        )
    return table


def verdict_summary(summary: dict) -> list[str]:
    """Each claim with data in a line: its verdict and Holm-adjusted p; the claims without data counted."""
    rows = summary.get("verdict") or []
    with_data = [r for r in rows if r.get("estimate") is not None]
    lines = [
        f"{r['claim']}: {r['verdict']}"
        + (f" (Holm p = {r['p_adjusted']:.3f})" if r.get("p_adjusted") is not None else "")
        for r in with_data
    ]
    if len(with_data) < len(rows):
        lines.append(f"{len(rows) - len(with_data)} claim(s) without data in these runs")
    return lines


def _check_args(items: Sequence[str], staleness: Sequence[int], seeds: int, x: str) -> None:
    if not items:
        raise UserError("compare: expected algorithm presets or run directories")
    if seeds < 1:
        raise UserError(f"--seeds {seeds}: expected a positive integer")
    for n in staleness:
        if n < 1:
            raise UserError(f"--staleness {n}: expected a positive integer")
    if x not in X_AXES:
        raise UserError(f"--x {x}: expected one of {', '.join(X_AXES)}")


def grid_specs(
    algos: Sequence[str],
    preset: str,
    overrides: Sequence[str],
    staleness: Sequence[int],
    seeds: int,
    out: Path,
    async_: bool = False,
) -> list[RunSpec]:
    """One RunSpec per (algorithm item, N, seed), trained into `out/runs/<label>-N<N>-s<seed>`; every
    config is resolved first, so a typo fails before anything trains."""
    from ..config import dump_yaml, load_config

    parsed = [parse_algo_item(a) for a in algos]
    if async_:
        parsed = [(name, extra, join_label(label, ["async"])) for name, extra, label in parsed]
    labels = [p[2] for p in parsed]
    if len(set(labels)) != len(labels):
        raise UserError(f"compare: algorithm given twice ({', '.join(labels)})")
    specs = []
    for (name, extra, label), item in zip(parsed, algos):
        try:
            base = load_config(preset, name, list(overrides) + extra)
        except UserError as e:
            raise UserError(f"{item}: {e}" if extra else str(e)) from None
        for n in staleness or [base.trainer.staleness]:
            for seed in range(base.trainer.seed, base.trainer.seed + seeds):
                ov = list(overrides) + extra + [f"trainer.staleness={n}", f"trainer.seed={seed}"]
                cfg = load_config(preset, name, ov)
                config = yaml.safe_load(dump_yaml(cfg))
                specs.append(
                    RunSpec(
                        label,
                        cfg.trainer.staleness,
                        seed,
                        out / "runs" / f"{label}-N{n}-s{seed}",
                        algo=name,
                        overrides=ov,
                        cfg=cfg,
                        steps=cfg.trainer.steps,
                        config=config,
                        async_=async_,
                        algorithm=describe_algorithm({**config["algorithm"], "name": name}),
                    )
                )
    return specs


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _run_grid(specs: Sequence[RunSpec], replay: Path | None, refresh) -> None:
    """Train every spec compare runs: complete runs reused, partial ones resumed, a run directory
    holding another config refused; `refresh()` after each run that trained longer than
    REFRESH_AFTER_S (a report to look at meanwhile)."""
    console = _console()
    to_run = [s for s in specs if s.algo is not None]
    for k, spec in enumerate(to_run, 1):
        head = f"[{k}/{len(to_run)}] {spec.label} N={spec.staleness} seed={spec.seed}"
        t0 = time.monotonic()
        if RunDir(spec.path).is_run():
            diffs = _config_mismatch(spec.path, spec.cfg)
            if diffs:
                raise UserError(
                    f"{spec.path}: holds a run with another config ({'; '.join(diffs[:3])}); "
                    f"pick another --out or remove it"
                )
            if is_complete(spec.path, spec.steps):
                console.print(f"{head}: complete, reused ({spec.path})", highlight=False)
                continue
            console.print(f"{head}: partial, resuming ({spec.path})", highlight=False)
            train(spec.cfg, spec.path, replay=replay, resume=True, async_=spec.async_)
        else:
            console.print(f"{head}: training ({spec.path})", highlight=False)
            train(spec.cfg, spec.path, replay=replay, resume=False, async_=spec.async_)
        if k < len(to_run) and time.monotonic() - t0 > REFRESH_AFTER_S:
            refresh()


def _dedupe(specs: list[RunSpec]) -> list[RunSpec]:
    """One spec per directory; runs that would share a curve without being seeds of one experiment
    are told apart (`labels.disambiguate`)."""
    seen: dict[Path, RunSpec] = {}
    for s in specs:
        seen.setdefault(s.path.resolve(), s)
    specs = list(seen.values())
    disambiguate(specs)
    return specs
