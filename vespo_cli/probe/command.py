"""`vespo probe`: the measurement loop (see vespo_cli/probe/__init__.py for what is measured).

1. behaviour data D₀: B prompts × n samples from θ₀ (or `--shards DIR`), its log-probs at θ₀;
2. θ_K: K on-policy optimizer steps of the preset's algorithm and optimizer from θ₀, on prompts that
   are not D₀'s (or `--run RUN`: its checkpoints/step-K);
3. at each K: two independent fresh draws A and B of the same B prompts from θ_K, and per prompt
   group the sketched gradient of every objective on D₀ (stale), on A and on B (on-policy), and of
   the reference on A and B; drift of θ_K from θ₀ on D₀;
4. per (objective, K): bootstrap figures over prompt groups → probe.json, report.md, plots.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ..config import load_config, load_run_config
from ..errors import UserError
from ..rundir import RunDir, default_dir, step_name
from ..shards import ShardError, list_shards, read_shard, shard_name, write_shard
from ..train.batch import rows_from_table
from .bootstrap import Gram, resample_counts, summarize
from .gradients import Batch, batch_metrics, batch_of, batch_sketches, drift_stats, gradient_subset
from .sketch import SKETCH_DIM, CountSketch, cosine_error_bound

DEFAULT_ALGOS = ("grpo", "gspo", "sapo", "cispo", "vespo")
DEFAULT_STALENESS = (0, 1, 4, 16, 64)
QUICK_STALENESS = (0, 1, 2, 4)
DEFAULTS = {"prompts": 16, "bootstrap": 1000}
QUICK = {"prompts": 4, "bootstrap": 200}
REWARDS = ("auto", "grader", "even-tokens")  # auto: the grader, else even-tokens where it gives no signal
SKETCH_DELTA = 0.05  # the stated sketch error is the bound at this failure probability, per pair
PG = "pg"


def probe_command(
    *,
    preset: str | None,
    overrides: Sequence[str],
    algos: Sequence[str],
    staleness: Sequence[int],
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
    from ..compare import parse_algo_item

    size = QUICK if quick else DEFAULTS
    prompts = size["prompts"] if prompts is None else prompts
    bootstrap = size["bootstrap"] if bootstrap is None else bootstrap
    ks = sorted(set(staleness or (QUICK_STALENESS if quick else DEFAULT_STALENESS)))
    _check_options(ks, prompts, blocks, bootstrap, reward, shards, run, preset, out)
    if run is not None:
        cfg = load_run_config(run, list(overrides))
        checkpoints = _run_checkpoints(run, ks)
    else:
        cfg = load_config(preset or "smollm2-arith", None, list(overrides))
        checkpoints = None
    objectives = {}
    for item in algos or DEFAULT_ALGOS:
        name, extra, label = parse_algo_item(item)
        objectives[label] = load_config(
            None if run else preset or "smollm2-arith", name, list(overrides) + extra
        ).algorithm
    out = Path(out or default_dir(f"probe-{cfg.preset or 'run'}"))
    settings = {
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
    records = _measure(cfg, objectives, ks, prompts, shards, checkpoints, blocks, bootstrap, reward, out, settings)
    from .report import write_report

    write_report(records, settings, out)
    return out


def _check_options(ks, prompts, blocks, bootstrap, reward, shards, run, preset, out) -> None:
    """One-line UserErrors for bad options, before anything is loaded."""
    if ks and ks[0] < 0:
        raise UserError(f"--staleness {ks[0]}: expected a non-negative number of optimizer steps")
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
        raise UserError(
            f"--staleness {missing[0]}: {run} has no checkpoints/{step_name(missing[0])} (steps saved: {have})"
        )
    return {k: found.get(k) for k in ks}


def _algo_dict(algo) -> dict:
    return {"objective": algo.objective, "params": dict(algo.params), "correction": algo.correction}


# --------------------------------------------------------------------------- data


def even_token_share(responses: Sequence[Sequence[int]]) -> list[float]:
    """`--reward even-tokens`: the share of a response's tokens with an even id. A synthetic reward
    that every policy, a random one included, has variance on: for probing the estimators where the
    grader scores 0 everywhere (the `tiny` preset's random model)."""
    return [sum(1 for x in y if x % 2 == 0) / max(len(y), 1) for y in responses]


def even_token_reward(path: Path) -> None:
    """Rewrite a shard's rewards with `even_token_share`; `correct` = reward > ½."""
    t = read_shard(path)
    reward = even_token_share(t.column("response_token_ids").to_pylist())
    t = t.set_column(t.schema.get_field_index("reward"), "reward", pa.array(reward, pa.float32()))
    t = t.set_column(t.schema.get_field_index("correct"), "correct", pa.array([r > 0.5 for r in reward]))
    write_shard(t, path)


def _sample(sampler, problems, path: Path, version: int, seed: int, reward: str) -> Batch:
    """Sample n responses per problem with the current weights into the shard `path`."""
    sampler(problems, version, path, seed, path.stem)
    if reward == "even-tokens":
        even_token_reward(path)
    return batch_of(rows_from_table(read_shard(path)))


def _shard_batch(cfg, tokenizer, shards: Path, prompts: int, reward: str) -> tuple[Batch, list]:
    """The first `prompts` prompt groups of a shard directory, and their problems (for grading fresh
    samples of the same prompts) looked up by prompt_id in the config's data source."""
    from ..data import encode_prompt, load_problems

    tables = []
    for f in list_shards(shards):
        try:
            tables.append(read_shard(f))
        except ShardError as e:
            raise UserError(f"--shards {shards}: {e}") from None
    if not tables:
        raise UserError(f"--shards {shards}: no shards (*.parquet) found")
    table = pa.concat_tables(tables)
    first: dict[str, int] = {}
    for i, g in enumerate(table.column("group_id").to_pylist()):
        first.setdefault(g, i)
    keep = list(first)[:prompts]
    if len(keep) < 2:
        raise UserError(f"--shards {shards}: {len(keep)} prompt group(s); the bootstrap needs at least 2")
    wanted = set(keep)
    table = table.filter(pa.array([g in wanted for g in table.column("group_id").to_pylist()]))
    rows = rows_from_table(table)
    if reward == "even-tokens":
        rows.rewards = torch.tensor(even_token_share(rows.response_ids), dtype=torch.float32)
    batch = batch_of(rows)
    ids = table.column("prompt_id").to_pylist()
    pool = {p.id: p for p in load_problems(cfg.data.train, seed=cfg.trainer.seed, difficulty=cfg.data.difficulty)}
    problems = []
    for idx in batch.groups:
        pid = ids[idx[0]]
        if pid not in pool:
            raise UserError(
                f"--shards {shards}: prompt_id {pid!r} is not in data.train={cfg.data.train} "
                f"(fresh samples are graded against its answers; --set data.train=... to the source)"
            )
        problems.append(pool[pid])
        if (
            encode_prompt(tokenizer, pool[pid], cfg.data.template, cfg.data.max_prompt_tokens)
            != batch.rows.prompt_ids[idx[0]]
        ):
            raise UserError(
                f"--shards {shards}: prompt {pid!r} encodes differently under this config's "
                f"data.template (sample fresh responses to the same prompt: use the shards' preset)"
            )
    return batch, problems


# --------------------------------------------------------------------------- measurement


def _measure(
    cfg,
    objectives: dict,
    ks: list[int],
    prompts: int,
    shards: Path | None,
    checkpoints,
    blocks: int,
    bootstrap: int,
    reward: str,
    out: Path,
    settings: dict,
) -> list[dict]:
    """Steps 1–3 of the module docstring; returns the records."""
    from ..models import load_model, load_tokenizer, resolve_model
    from ..rollout.sampling import prompt_chunk
    from ..train.loop import _progress
    from ..train.sampler import sync_sampler
    from ..train.step import make_optimizer, make_scheduler, optimizer_step

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.trainer.seed)
    base_path = resolve_model(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(base_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(base_path, cfg.model.dtype, cfg.model.trust_remote_code)
    model.config.use_cache = False
    out.mkdir(parents=True, exist_ok=True)
    auto = reward == "auto"
    reward = settings["reward"] = "grader" if auto else reward
    stack = contextlib.ExitStack()
    sync = stack.enter_context(sync_sampler(cfg, out, model, tokenizer, base_path))
    sampler = sync.sample
    seed, tau = cfg.trainer.seed * 1_000_003, cfg.rollout.temperature
    records: list[dict] = []
    try:
        if shards is not None:
            stale, problems = _shard_batch(cfg, tokenizer, Path(shards), prompts, reward)
        else:
            problems = prompt_chunk(cfg, 0, prompts)
            stale = _sample(sampler, problems, out / "behaviour" / shard_name(0, "behaviour", 0), 0, seed, reward)
        if not any(stale.informative) and auto:  # e.g. the tiny random model: no gradient signal to probe
            reward = settings["reward"] = "even-tokens"
            settings["reward_note"] = "auto: the grader gave no prompt group differing rewards"
            print(
                "note: the grader gives every sample the same reward (every gradient 0); "
                "probing with the synthetic --reward even-tokens instead",
                file=sys.stderr,
            )
            if shards is not None:
                stale, problems = _shard_batch(cfg, tokenizer, Path(shards), prompts, reward)
            else:
                even_token_reward(out / "behaviour" / shard_name(0, "behaviour", 0))
                stale = batch_of(rows_from_table(read_shard(out / "behaviour" / shard_name(0, "behaviour", 0))))
        if not any(stale.informative):
            raise UserError(
                f"--reward {reward}: no prompt group of the behaviour data has differing rewards, so every "
                f"gradient is 0 (a model that never solves a problem); try --reward even-tokens"
            )
        settings["prompts"] = len(stale.groups)
        with gradient_subset(model, blocks) as params:
            sketch = CountSketch([p.numel() for p in params], SKETCH_DIM, seed=cfg.trainer.seed)
            settings["subset_params"] = sum(p.numel() for p in params)
        settings["model_params"] = sum(p.numel() for p in model.parameters())
        model.eval()
        with gradient_subset(model, blocks):  # the same forward as at θ_K: Δ = 0 exactly at K = 0
            _, old = batch_sketches(model, stale, {}, [], [], sketch, tau)
        optimizer = scheduler = None
        if checkpoints is None:
            optimizer = make_optimizer(model, cfg)
            scheduler = make_scheduler(optimizer, cfg)  # the trainer's schedule
        mbs = cfg.trainer.minibatch_prompts
        steps_total = ks[-1] if checkpoints is None else 0
        groups_per_k = 3 * len(stale.groups)
        with _progress() as progress:
            task = progress.add_task("probe", total=steps_total + groups_per_k * len(ks), info="")
            step = 0
            for k in ks:
                while checkpoints is None and step < k:  # θ_{step} → θ_{step+1}: one on-policy step
                    progress.update(task, info=f"θ_{k}: on-policy step {step + 1}")
                    batch = _sample(
                        sampler,
                        prompt_chunk(cfg, prompts + step * mbs, mbs),
                        out / "drift" / shard_name(step, "drift", step),
                        step,
                        seed + 7919 * (step + 1),
                        reward,
                    )
                    m = optimizer_step(
                        model, optimizer, scheduler, batch.rows, list(range(len(batch.rows))), batch.adv, None, cfg
                    )
                    sync.publish()
                    step += 1
                    progress.update(
                        task,
                        advance=1,
                        info=f"step {step}: reward {float(batch.rows.rewards.mean()):.3f} |g| {m['grad_norm']:.3f}",
                    )
                if checkpoints is not None and checkpoints[k] is not None:
                    _load_weights(model, tokenizer, checkpoints[k])
                    sync.publish()
                records += _measure_at(
                    k,
                    model,
                    sampler,
                    problems,
                    stale,
                    old,
                    objectives,
                    blocks,
                    sketch,
                    tau,
                    bootstrap,
                    seed,
                    reward,
                    out,
                    progress,
                    task,
                )
    finally:
        stack.close()
    return records


def _load_weights(model, tokenizer, ckpt: Path) -> None:
    """θ_K of `--run` into the live model, in place (tied weights handled by the HF engine's loader)."""
    from ..rollout.hf import HFEngine

    HFEngine.from_module(model, tokenizer).load_weights(str(ckpt))


def _measure_at(
    k: int,
    model,
    sampler,
    problems,
    stale: Batch,
    old,
    objectives: dict,
    blocks: int,
    sketch,
    tau: float,
    bootstrap: int,
    seed: int,
    reward: str,
    out: Path,
    progress,
    task,
) -> list[dict]:
    """Fresh draws A and B at θ_K, every group's sketches, the drift, and one record per objective."""
    t0 = time.perf_counter()
    fresh = {
        h: _sample(sampler, problems, out / "fresh" / shard_name(k, f"fresh_{h}", k), k, seed + 2 * k + i + 1, reward)
        for i, h in enumerate("ab")
    }
    tick = lambda: progress.update(task, advance=1, info=f"θ_{k}: gradients")  # noqa: E731
    model.eval()
    with gradient_subset(model, blocks) as params:
        series, logp = batch_sketches(model, stale, objectives, old, params, sketch, tau, tick)
        series = {f"stale/{o}": s for o, s in series.items()}
        for h, batch in fresh.items():
            s, _ = batch_sketches(model, batch, {**objectives, PG: None}, None, params, sketch, tau, tick)
            series.update({f"{h}/{o}": v for o, v in s.items()})
    gram = Gram(series)
    counts = resample_counts(len(stale.groups), bootstrap, seed + k)
    drift = drift_stats(logp, old, stale)
    common = {
        "staleness": k,
        **drift,
        "reward_stale": float(stale.rows.rewards.mean()),
        "reward_fresh": float(torch.cat([b.rows.rewards for b in fresh.values()]).mean()),
        "groups": len(stale.groups),
        "groups_informative_stale": sum(stale.informative),
        "groups_informative_fresh": sum(sum(b.informative) for b in fresh.values()) / 2,
        "seconds": time.perf_counter() - t0,
    }
    records = []
    for label, algo in objectives.items():
        m = batch_metrics(algo, logp, old, stale)
        records.append(
            {
                "objective": label,
                "base_objective": algo.objective,
                **_figures(gram, counts, label),
                "ess": m["ess"],
                "suppressed_frac": m.get("suppressed_frac"),
                "clip_frac": m.get("clip_frac"),
                **common,
            }
        )
    return records


def _figures(gram: Gram, counts, o: str) -> dict:
    """Bootstrap figures of objective `o` (point, 95% interval): cosine of its stale gradient to its
    own on-policy gradient and to the reference (each the mean over the fresh draws A and B), the
    noise floor cos(A, B), the reference's noise level, and the norm ratio."""

    def mean(x, y):
        return (x + y) / 2

    def cos(a, b):
        return gram.cosine(a, b, counts)

    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of zero-advantage groups only: sum 0
        samples = {
            "cosine": mean(cos(f"stale/{o}", f"a/{o}"), cos(f"stale/{o}", f"b/{o}")),
            "cosine_pg": mean(cos(f"stale/{o}", f"a/{PG}"), cos(f"stale/{o}", f"b/{PG}")),
            "noise_floor": cos(f"a/{o}", f"b/{o}"),
            "noise_floor_pg": mean(cos(f"a/{o}", f"b/{PG}"), cos(f"b/{o}", f"a/{PG}")),
            "norm_ratio": gram.norm(f"stale/{o}", counts)
            / mean(gram.norm(f"a/{o}", counts), gram.norm(f"b/{o}", counts)),
        }
    rec = {}
    for key, s in samples.items():
        point, lo, hi = summarize(s)
        rec.update({key: point, f"{key}_low": lo, f"{key}_high": hi})
    return rec
