"""`vespo probe`: its options and settings, then the measurement (steps 1–3: measure.py; a killed one resumes:
resume.py) and the report (step 4: report.py, plots.py); see vespo_cli/probe/__init__.py for what is measured.

1. behaviour data D₀: B prompts × n samples from θ₀ (or `--shards DIR`), and D₀′: the same B prompts ×
   n samples from θ₀ with an independent seed (sampled here, also with `--shards`); θ₀'s log-probs on both;
2. θ_K: K on-policy optimizer steps of the preset's algorithm and optimizer from θ₀, on prompts that
   are not D₀'s (or `--run RUN`: its checkpoints/step-K);
3. at each K (`--age`, the age of the behaviour data in optimizer steps; not `compare`'s staleness N):
   two independent fresh draws A and B of the same B prompts from θ_K, and per prompt group the
   sketched gradient of every objective on D₀ and D₀′ (stale), on A and on B (on-policy), and of the
   reference on A and B; drift of θ_K from θ₀ on D₀;
4. per (objective, K): BCa bootstrap figures over prompt groups (figures.py), judged (judge.py) →
   probe.json, report.md, plots. The records' key `staleness` is K.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import load_config, load_run_config
from ..errors import UserError
from ..rundir import RunDir, default_dir, step_name
from .measure import measure
from .sketch import SKETCH_DIM, cosine_error_bound

DEFAULT_ALGOS = ("grpo", "gspo", "sapo", "cispo", "vespo")
DEFAULT_AGES = (0, 1, 4, 16, 64)  # K: optimizer steps since θ₀ sampled the behaviour data (`--age`)
QUICK_AGES = (0, 1, 2, 4)
DEFAULTS = {"prompts": 16, "bootstrap": 1000}
QUICK = {"prompts": 8, "bootstrap": 200}  # 8: with 4 groups the BCa test of the K = 0 gap rejects ~9% (figures.py)
REWARDS = ("auto", "grader", "even-tokens")  # auto: the grader, else even-tokens where it gives no signal
SKETCH_DELTA = 0.05  # the stated sketch error is the bound at this failure probability, per pair


def probe_command(
    *,
    preset: str | None,
    overrides: Sequence[str],
    algos: Sequence[str],
    ages: Sequence[int],
    prompts: int | None,
    shards: Path | None,
    run: Path | None,
    blocks: int,
    bootstrap: int | None,
    reward: str,
    quick: bool,
    out: Path | None,
) -> Path:
    """Run the probe and write OUT/probe.json, OUT/report.md and plots; returns OUT."""
    size = QUICK if quick else DEFAULTS
    prompts = size["prompts"] if prompts is None else prompts
    bootstrap = size["bootstrap"] if bootstrap is None else bootstrap
    ks = sorted(set(ages or (QUICK_AGES if quick else DEFAULT_AGES)))
    _check_options(ks, prompts, blocks, bootstrap, reward, shards, run, preset, out)
    if run is not None:
        cfg = load_run_config(run, list(overrides))
        checkpoints = _run_checkpoints(run, ks)
    else:
        cfg = load_config(preset or "smollm2-arith", None, list(overrides))
        checkpoints = None
    objectives = _objectives(algos, None if run else preset or "smollm2-arith", overrides)
    out = Path(out or default_dir(f"probe-{cfg.preset or 'run'}"))
    settings = _settings(cfg, objectives, ks, prompts, shards, run, blocks, bootstrap, reward, overrides)
    records = measure(cfg, objectives, ks, prompts, shards, checkpoints, blocks, bootstrap, reward, out, settings)
    from .report import write_report

    write_report(records, settings, out)
    return out


def _objectives(algos: Sequence[str], preset: str | None, overrides: Sequence[str]) -> dict:
    """{label: algorithm config} of each `--algo` item (default: DEFAULT_ALGOS) over `preset` (None: the run's)."""
    from ..compare import parse_algo_item

    objectives = {}
    for item in algos or DEFAULT_ALGOS:
        name, extra, label = parse_algo_item(item)
        objectives[label] = load_config(preset, name, list(overrides) + extra).algorithm
    return objectives


def _settings(cfg, objectives: dict, ks, prompts, shards, run, blocks, bootstrap, reward, overrides) -> dict:
    """settings.json as the options give it (the measurement adds the reward used, the prompt groups and
    the parameter counts)."""
    return {
        "preset": cfg.preset,
        "model": cfg.model.path,
        "run": str(run) if run else None,
        "shards": str(shards) if shards else None,
        "objectives": {k: _algo_dict(v) for k, v in objectives.items()},
        "staleness": ks,
        "prompts": prompts,
        "n": cfg.rollout.n,
        "blocks": blocks,
        "bootstrap": bootstrap,
        "reward": reward,
        "sketch_dim": SKETCH_DIM,
        "sketch_delta": SKETCH_DELTA,
        "sketch_cosine_error": cosine_error_bound(SKETCH_DIM, SKETCH_DELTA),
        "overrides": list(overrides),
        "optimizer": {
            "lr": cfg.trainer.lr,
            "betas": list(cfg.trainer.betas),
            "weight_decay": cfg.trainer.weight_decay,
            "grad_clip": cfg.trainer.grad_clip,
            "minibatch_prompts": cfg.trainer.minibatch_prompts,
            "algorithm": cfg.algorithm.objective,
        },
    }


def _check_options(ks, prompts, blocks, bootstrap, reward, shards, run, preset, out) -> None:
    """One-line UserErrors for bad options, before anything is loaded."""
    if ks and ks[0] < 0:
        raise UserError(f"--age {ks[0]}: expected a non-negative number of optimizer steps")
    if prompts < 2:
        raise UserError(f"--prompts {prompts}: expected at least 2 prompt groups (the bootstrap resamples groups)")
    if blocks < 1:
        raise UserError(f"--blocks {blocks}: expected at least 1 decoder block")
    if bootstrap < 100:
        raise UserError(f"--bootstrap {bootstrap}: expected at least 100 resamples")
    if reward not in REWARDS:
        raise UserError(f"--reward {reward}: expected one of {', '.join(REWARDS)}")
    if shards is not None and not Path(shards).is_dir():
        raise UserError(f"--shards {shards}: no such directory")
    if run is not None and not RunDir(run).is_run():
        raise UserError(f"--run {run}: not a run directory (no config.yaml)")
    if run is not None and preset:
        raise UserError("--run: the run's own config.yaml is used; drop --preset")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")


def _run_checkpoints(run: Path, ks: list[int]) -> dict[int, Path | None]:
    """{K: checkpoints/step-K} of an existing run (K = 0: its base model, None)."""
    found = {k: p for k, p in RunDir(run).checkpoint_steps() if list(p.glob("*.safetensors"))}
    missing = [k for k in ks if k and k not in found]
    if missing:
        have = ", ".join(str(k) for k in sorted(found)) or "none"
        raise UserError(f"--age {missing[0]}: {run} has no checkpoints/{step_name(missing[0])} (steps saved: {have})")
    return {k: found.get(k) for k in ks}


def _algo_dict(algo) -> dict:
    return {
        "objective": algo.objective,
        "params": dict(algo.params),
        "correction": algo.correction,
        "aggregation": algo.aggregation,
    }
