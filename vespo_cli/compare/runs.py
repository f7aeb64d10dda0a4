"""The runs a compare covers: specs from algorithm items or run directories, and their loaded metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsio import read_jsonl
from ..presets import read_yaml
from ..rundir import RunDir
from ..runid import recorded_hardware
from .analysis import eval_records, smooth_window, summarize_run, train_records
from .labels import RUN_NAME, describe_algorithm, join_label
from .overlap import eval_overlap

# `algo:key=v` sets algorithm.key for these keys (algorithm.params.key for any other)
ALGO_FIELDS = {"objective", "correction", "correction_cap", "routing_replay", "aggregation"}


@dataclass
class RunSpec:
    label: str  # algorithm (+ its overrides), `labels.py`: one curve per label
    staleness: int
    seed: int
    path: Path
    algo: str | None = None  # None: an existing run directory (report only)
    overrides: list[str] = field(default_factory=list)
    cfg: Any = None
    steps: int | None = None
    algorithm: dict | None = None  # labels.describe_algorithm of the run's algorithm section
    config: dict | None = None  # the run's config as in its config.yaml
    async_: bool = False  # trained with async rollout workers (`vespo train --async`)


def parse_algo_item(item: str) -> tuple[str, list[str], str]:
    """`vespo:length_norm=sqrt,c1_neg=2` → ("vespo", ["algorithm.params.length_norm=sqrt", ...],
    "vespo+length_norm=sqrt+c1_neg=2"). A key that is an algorithm field (correction, ...) sets
    algorithm.KEY; a dotted key (trainer.lr) is used as given; any other key is a parameter."""
    from ..presets import preset_path

    name, _, variant = item.partition(":")
    if not name:
        raise UserError(f"{item}: expected ALGO or ALGO:key=value[,key=value]")
    if "/" in name and not name.endswith((".yaml", ".yml")):
        raise UserError(f"{item}: no such run directory (nor an algorithm preset)")
    preset_path(name, "algorithms")  # unknown algorithm → one-line error listing the known ones
    overrides, parts = [], []
    for part in re.split(r",(?=\s*[\w.]+\s*=)", variant) if variant else []:
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[\w.]+", key):
            raise UserError(f"{item}: expected ALGO:key=value[,key=value], got {part!r}")
        dotted = key if "." in key else f"algorithm.{key}" if key in ALGO_FIELDS else f"algorithm.params.{key}"
        overrides.append(f"{dotted}={value.strip()}")
        parts.append(f"{key}={value.strip()}")
    label = Path(name).stem if name.endswith((".yaml", ".yml")) else name
    return name, overrides, join_label(label, parts)


def _read_run_config(run_dir: Path) -> dict:
    """A run's config.yaml as a mapping; one-line UserError naming the file where it is not one."""
    return read_yaml(RunDir(run_dir).config)


def existing_run(run_dir: Path) -> RunSpec:
    """A run directory to report: N and seed from its config; its label from its name
    `<label>-N<N>-s<seed>` where compare named it, else its algorithm and the algorithm fields it
    overrides (`labels.describe_algorithm`: a run directory `demo` that trained vespo is "vespo")."""
    data = _read_run_config(run_dir)
    trainer = data.get("trainer") or {}
    n, seed, steps = trainer.get("staleness", 1), trainer.get("seed", 0), trainer.get("steps")
    algorithm = describe_algorithm(data.get("algorithm"))
    m = RUN_NAME.match(run_dir.name)
    return RunSpec(
        label=m["label"] if m else algorithm["label"],
        staleness=int(n),
        seed=int(seed),
        path=run_dir,
        steps=int(steps) if isinstance(steps, int) else None,
        algorithm=algorithm,
        config=data,
    )


def _run_dirs(item: str) -> list[Path]:
    """A run directory, or a compare output directory (its runs/*)."""
    p = Path(item)
    if RunDir(p).is_run():
        return [p]
    inner = sorted(d for d in (p / "runs").glob("*") if RunDir(d).is_run())
    if inner:
        return inner
    raise UserError(f"{item}: not a run directory (no config.yaml) nor a compare directory (no runs/*/config.yaml)")


@dataclass
class Loaded:
    spec: RunSpec
    rows: list[dict]
    evals: list[dict]
    summary: dict


def load_runs(specs: Sequence[RunSpec]) -> tuple[list[Loaded], int]:
    """Read every run's metrics; one smoothing window for all (from the longest run)."""
    records = [read_jsonl(RunDir(s.path).metrics) for s in specs]
    rows = [train_records(r) for r in records]
    window = smooth_window(max([s.steps or 0 for s in specs] + [len(r) for r in rows] + [1]))
    loaded = []
    for s, rec, tr in zip(specs, records, rows):
        evals = eval_records(rec)
        summary = summarize_run(rec, total_steps=s.steps, window=window)
        summary["eval_overlap"] = eval_overlap(s.config or {}, evals[-1] if evals else None)
        summary["hardware"] = recorded_hardware(s.path)  # a confound where runs differ in it (bf16 rounding, speed)
        loaded.append(Loaded(s, tr, evals, summary))
    return loaded, window
