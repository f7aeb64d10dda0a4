"""Steps 1–3 of `vespo probe` (command.py): the behaviour data D₀, a second independent behaviour draw
D₀′ of the same prompts, and θ₀'s log-probs on both, the walk θ₀ → θ_K (on-policy optimizer steps, or a
run's checkpoints), and at each K the fresh draws, every prompt group's sketched gradients, the drift
and one record per objective (its figures: figures.py)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from ..errors import UserError
from ..malloc import release_heap
from ..progress import progress_bar
from ..rundir import shard_name
from ..seeds import seed_all, stream_seed
from ..shards import read_shard
from ..train import dist
from ..train.batch import rows_from_table
from .bootstrap import Gram, jackknife_counts, resample_counts
from .figures import PG, figures, siblings
from .gradients import Batch, batch_metrics, batch_of, batch_sketches, drift_stats, gradient_subset
from .resume import KeptSketches, Partial, load_weights, theta_digest
from .samples import even_token_reward, sample, shard_batch
from .sketch import SKETCH_DIM, CountSketch

REDRAW_SEED = -1  # D₀′ is sampled at θ₀ with seed s.seed + REDRAW_SEED (the fresh draws and steps use s.seed + 1, …)
console = Console(stderr=True)


@dataclass
class Session:
    """The live model and the sampler of one probe, and the settings every stage reads."""

    cfg: Any
    model: Any
    tokenizer: Any
    sync: Any  # the trainer's sync sampler: .sample into a shard, .publish the live weights to its engine
    out: Path
    reward: str  # "grader" or "even-tokens"
    blocks: int
    seed: int  # of the draws
    tau: float  # the sampling temperature

    def draw(self, problems, path: Path, version: int, seed: int) -> Batch:
        """n responses per problem from the live weights into the shard `path`."""
        return sample(self.sync.sample, problems, path, version, seed, self.reward)

    def behaviour_path(self, worker: str = "behaviour") -> Path:
        return self.out / "behaviour" / shard_name(0, worker, 0)


@dataclass
class Behaviour:
    """D₀ and D₀′ (two independent draws of the same prompts from θ₀), the problems, θ₀'s log-probs
    on each and the sketch of every gradient."""

    stale: Batch
    redraw: Batch  # D₀′
    problems: list
    old: Any
    old_redraw: Any
    sketch: CountSketch


def measure(
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
    """Steps 1–3 of command.py's docstring; returns the records. The records of each K are kept in
    OUT/partial/ as they are measured, so a killed probe rerun with the same options skips those K, and within
    the K it was measuring, the draws it had sketched (KeptSketches)."""
    from ..train.sampler import sync_sampler

    out.mkdir(parents=True, exist_ok=True)
    done = Partial(out / "partial", settings)
    if all(k in done.records for k in ks):
        settings.update(done.settings)
        return [r for k in ks for r in done.records[k]]
    base_path, tokenizer, model = _open_model(cfg)
    auto = reward == "auto"
    reward = settings["reward"] = "grader" if auto else reward
    stack = contextlib.ExitStack()
    sync = stack.enter_context(sync_sampler(cfg, out.name, model, tokenizer, base_path))  # group ids: probe-local
    seed, tau = stream_seed(cfg.trainer.seed, 0), cfg.rollout.temperature
    s = Session(cfg, model, tokenizer, sync, out, reward, blocks, seed, tau)
    try:
        stale, problems = _behaviour_data(s, shards, prompts, auto, settings)
        redraw = s.draw(problems, s.behaviour_path("behaviour_redraw"), 0, s.seed + REDRAW_SEED)
        d = _at_theta0(s, stale, redraw, problems, settings)
        done.check_behaviour(d)
        return _walk(s, d, objectives, ks, prompts, checkpoints, bootstrap, done)
    finally:
        stack.close()


def _open_model(cfg) -> tuple[str, Any, Any]:
    """θ₀: the config's model (seeded as the trainer seeds it), its path and tokenizer."""
    from ..models import load_model, load_tokenizer, resolve_model

    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    seed_all(cfg.trainer.seed)
    base_path = resolve_model(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(base_path, trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(base_path, cfg.model.dtype, cfg.model.trust_remote_code)
    model.config.use_cache = False
    return base_path, tokenizer, model


# --------------------------------------------------------------------------- step 1: D₀ at θ₀


def _behaviour_data(s: Session, shards: Path | None, prompts: int, auto: bool, settings: dict) -> tuple[Batch, list]:
    """D₀ and its problems; with `--reward auto`, even-tokens where the grader gives no group a signal."""
    stale, problems = _draw_behaviour(s, shards, prompts)
    if not any(stale.informative) and auto:  # e.g. the tiny random model: no gradient signal to probe
        s.reward = settings["reward"] = "even-tokens"
        settings["reward_note"] = "auto: the grader gave no prompt group differing rewards"
        print(
            "note: the grader gives every sample the same reward (every gradient 0); "
            "probing with the synthetic --reward even-tokens instead",
            file=sys.stderr,
        )
        if shards is not None:
            stale, problems = shard_batch(s.cfg, s.tokenizer, Path(shards), prompts, s.reward)
        else:
            even_token_reward(s.behaviour_path())
            stale = batch_of(rows_from_table(read_shard(s.behaviour_path())))
    if not any(stale.informative):
        raise UserError(
            f"--reward {s.reward}: no prompt group of the behaviour data has differing rewards, so every "
            f"gradient is 0 (a model that never solves a problem); try --reward even-tokens"
        )
    settings["prompts"] = len(stale.groups)
    return stale, problems


def _draw_behaviour(s: Session, shards: Path | None, prompts: int) -> tuple[Batch, list]:
    """The first prompt groups of `--shards`, else `prompts` prompts × n samples from θ₀."""
    from ..inputs import prompt_chunk

    if shards is not None:
        return shard_batch(s.cfg, s.tokenizer, Path(shards), prompts, s.reward)
    problems = prompt_chunk(s.cfg, 0, prompts)
    return s.draw(problems, s.behaviour_path(), 0, s.seed), problems


def _at_theta0(s: Session, stale: Batch, redraw: Batch, problems: list, settings: dict) -> Behaviour:
    """The sketch over the gradient subset, and θ₀'s log-probs on D₀ and D₀′."""
    with gradient_subset(s.model, s.blocks) as params:
        sketch = CountSketch([p.numel() for p in params], SKETCH_DIM, seed=s.cfg.trainer.seed)
        settings["subset_params"] = sum(p.numel() for p in params)
    settings["model_params"] = sum(p.numel() for p in s.model.parameters())
    s.model.eval()
    with gradient_subset(s.model, s.blocks):  # the same forward as at θ_K: Δ = 0 exactly at K = 0
        _, old = batch_sketches(s.model, stale, {}, [], [], sketch, s.tau)
        _, old_redraw = batch_sketches(s.model, redraw, {}, [], [], sketch, s.tau)
    return Behaviour(stale, redraw, problems, old, old_redraw, sketch)


# --------------------------------------------------------------------------- step 2: θ₀ → θ_K


def _walk(s: Session, d: Behaviour, objectives: dict, ks, prompts: int, checkpoints, bootstrap: int, done: Partial):
    """θ_K for each K in turn (on-policy steps from θ₀, or `--run`'s checkpoints), measured at each K that
    `done` does not hold. A resumed walk starts at the θ_K the killed one kept (Partial.keep_walk), else at θ₀
    (a K measured before is reached again and its θ_K checked against its fingerprint)."""
    from ..train.step import make_optimizer, make_scheduler

    optimizer = scheduler = None
    step = 0
    if checkpoints is None:
        optimizer = make_optimizer(s.model, s.cfg)
        scheduler = make_scheduler(optimizer, s.cfg)  # the trainer's schedule
        step = done.resume_walk(ks, s, optimizer, scheduler)
    steps_total = ks[-1] if checkpoints is None else 0
    groups_per_k = 4 * len(d.stale.groups)  # D₀, D₀′, A, B
    records: list[dict] = []
    with progress_bar(console, disable=not dist.is_main()) as progress:
        task = progress.add_task("probe", total=steps_total + groups_per_k * len(ks), info="")
        progress.update(task, advance=step, info=f"θ_{step}: kept by the killed probe (partial/walk/)" if step else "")
        for k in ks:
            if k < step:  # measured before, and θ_k is behind the kept θ_step (resume_walk): not reached again
                progress.update(task, advance=groups_per_k, info=f"θ_{k}: measured before (partial/)")
                records += done.records[k]
                continue
            walked = checkpoints is None and step < k
            while checkpoints is None and step < k:  # θ_{step} → θ_{step+1}: one on-policy step
                progress.update(task, info=f"θ_{k}: on-policy step {step + 1}")
                info = _on_policy_step(s, optimizer, scheduler, step, prompts)
                step += 1
                progress.update(task, advance=1, info=f"step {step}: {info}")
            if walked:  # a probe killed from here on resumes at θ_k
                done.keep_walk(k, s, optimizer, scheduler)
            if checkpoints is not None and checkpoints[k] is not None:
                load_weights(s.model, s.tokenizer, checkpoints[k])
                s.sync.publish()
            if k in done.records:
                done.check_theta(k, s.model, s.blocks)
                progress.update(task, advance=groups_per_k, info=f"θ_{k}: measured before (partial/)")
                records += done.records[k]
                continue
            kept = done.at(k, theta_digest(s.model, s.blocks))
            records += done.add(k, _measure_at(s, d, k, objectives, bootstrap, progress, task, kept), kept.theta)
            release_heap()  # each K's four draws and per-group gradients are freed: back to the kernel
    shutil.rmtree(done.walk, ignore_errors=True)  # every K is measured: the kept θ_K is no longer needed
    return records


def _on_policy_step(s: Session, optimizer, scheduler, step: int, prompts: int) -> str:
    """One optimizer step of the preset's algorithm on fresh samples of prompts other than D₀'s; the
    engine takes the new weights. Returns the step's mean reward and gradient norm, for the bar."""
    from ..inputs import prompt_chunk
    from ..train.step import optimizer_step

    mbs = s.cfg.trainer.minibatch_prompts
    problems = prompt_chunk(s.cfg, prompts + step * mbs, mbs)
    batch = s.draw(problems, s.out / "drift" / shard_name(step, "drift", step), step, s.seed + 7919 * (step + 1))
    rows = batch.rows
    m = optimizer_step(s.model, optimizer, scheduler, rows, list(range(len(rows))), batch.adv, None, s.cfg)
    s.sync.publish()
    return f"reward {float(rows.rewards.mean()):.3f} |g| {m['grad_norm']:.3f}"


# --------------------------------------------------------------------------- step 3: at θ_K


def _measure_at(
    s: Session, d: Behaviour, k: int, objectives: dict, bootstrap: int, progress, task, kept: KeptSketches
) -> list[dict]:
    """Fresh draws A and B at θ_K, every group's sketches, the drift, and one record per objective
    (bootstrapped over prompt groups: the same counts for every series, and the jackknife for BCa).
    `seconds`: the time this process spent on K (a K resumed within it counts only what was left)."""
    t0 = time.perf_counter()
    fresh = {
        h: s.draw(d.problems, s.out / "fresh" / shard_name(k, f"fresh_{h}", k), k, s.seed + 2 * k + i + 1)
        for i, h in enumerate("ab")
    }
    tick = lambda n=1: progress.update(task, advance=n, info=f"θ_{k}: gradients")  # noqa: E731
    series, logp = _group_sketches(s, d, fresh, objectives, tick, kept)
    gram = Gram(series, siblings(objectives))
    counts = resample_counts(len(d.stale.groups), bootstrap, s.seed + k)
    jack = jackknife_counts(len(d.stale.groups))
    common = {
        "staleness": k,
        **drift_stats(logp, d.old, d.stale),
        "reward_stale": float(d.stale.rows.rewards.mean()),
        "reward_fresh": float(torch.cat([b.rows.rewards for b in fresh.values()]).mean()),
        "groups": len(d.stale.groups),
        "groups_informative_stale": sum(d.stale.informative),
        "groups_informative_redraw": sum(d.redraw.informative),
        "groups_informative_fresh": sum(sum(b.informative) for b in fresh.values()) / 2,
        "seconds": time.perf_counter() - t0,
    }
    records = []
    for label, algo in objectives.items():
        m = batch_metrics(algo, logp, d.old, d.stale)
        records.append(
            {
                "objective": label,
                "base_objective": algo.objective,
                **figures(gram, counts, jack, label),
                "ess": m["ess"],
                "suppressed_frac": m.get("suppressed_frac"),
                "clip_frac": m.get("clip_frac"),
                **common,
            }
        )
    return records


def _group_sketches(
    s: Session, d: Behaviour, fresh: dict[str, Batch], objectives: dict, tick, kept: KeptSketches
) -> tuple[dict, Any]:
    """Per group, the sketched gradient of every objective on D₀ ("stale/<o>"), on D₀′ ("redraw/<o>")
    and on each fresh draw h ("<h>/<o>", the reference PG too); and θ_K's log-probs on D₀. Each draw's
    sketches are kept as soon as they are computed (`kept`)."""
    s.model.eval()
    with gradient_subset(s.model, s.blocks) as params:

        def sketches(name: str, batch: Batch, recipes: dict, old) -> tuple[dict, list]:
            return kept.get(name, batch, tick) or kept.put(
                name, batch, batch_sketches(s.model, batch, recipes, old, params, d.sketch, s.tau, tick)
            )

        series, logp = sketches("stale", d.stale, objectives, d.old)
        series = {f"stale/{o}": v for o, v in series.items()}
        again, _ = sketches("redraw", d.redraw, objectives, d.old_redraw)
        series.update({f"redraw/{o}": v for o, v in again.items()})
        for h, batch in fresh.items():
            sk, _ = sketches(h, batch, {**objectives, PG: None}, None)
            series.update({f"{h}/{o}": v for o, v in sk.items()})
    return series, logp
