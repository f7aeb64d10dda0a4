"""What `vespo train --dry-run` prints: the resolved run plan (mode, schedule, sizes), the launch
lines (`torchrun` on one node or on every node) and the memory plan (vespo_cli/plan)."""

from __future__ import annotations

import math
import shlex
import textwrap
from collections.abc import Sequence

from .config import Config, preset_path
from .errors import UserError
from .plan.check import check_config, protocol_summary
from .plan.memory import format_memory, memory_plan


def launch_commands(
    cfg: Config,
    *,
    algo: str | None = None,
    replay=None,
    async_: bool = False,
    run_dir=None,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> list[str]:
    """How to start this run: plain `vespo` on CPU, `torchrun` on one node, or on every node
    (with `$NODE_RANK` and `$MASTER_ADDR` placeholders). The `--set` items are repeated (shell-quoted),
    so the line runs the resolved config exactly; a resume is launched as `--resume RUN`."""
    if resume:
        args = f"train --resume {shlex.quote(str(run_dir))}"
        run_dir = None
    else:
        preset = cfg.preset or "PRESET"
        try:  # a preset given as a path is launched by that path
            preset_path(preset)
        except UserError:
            preset = f"{preset}.yaml"
        args = f"train --preset {preset}"
    if algo and not resume:
        args += f" --algo {algo}"
    args += "".join(f" --set {shlex.quote(item)}" for item in overrides)
    if replay is not None:
        args += f" --replay {replay}"
    if async_:
        args += " --async"
    if run_dir is not None:
        args += f" --run-dir {run_dir}"
    lay = cfg.layout
    if lay.gpus_per_node < 1:
        return [f"vespo {args}"]
    rollout_nodes = lay.rollout_gpus // lay.gpus_per_node if lay.nodes > 1 else 0
    nodes = lay.nodes - rollout_nodes
    nproc = lay.gpus_per_node - (lay.rollout_gpus if lay.nodes == 1 else 0)
    if nodes == 1:
        return [f"torchrun --nproc-per-node {nproc} -m vespo_cli.cli {args}"]
    return [
        f"torchrun --nnodes {nodes} --node-rank $NODE_RANK --nproc-per-node {nproc} "
        f"--rdzv-backend c10d --rdzv-endpoint $MASTER_ADDR:29500 -m vespo_cli.cli {args}"
    ]


def shell_wrap(cmd: str, width: int = 72) -> list[str]:
    """Split a command into lines of about `width` columns joined by ` \\` (flags stay with values)."""
    words = cmd.split(" ")
    parts: list[str] = []
    for w in words:  # "--flag value" and "-m module" stay together
        if parts and parts[-1].startswith("-") and " " not in parts[-1] and not w.startswith("-"):
            parts[-1] += " " + w
        else:
            parts.append(w)
    lines = [""]
    for part in parts:
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines.append("  " + part)
        else:
            lines[-1] = f"{lines[-1]} {part}" if lines[-1] else part
    return [line + " \\" for line in lines[:-1]] + lines[-1:]


def _algo_flag(cfg: Config) -> str | None:
    """The `--algo NAME` the config was made with (None: the run preset's own algorithm)."""
    return cfg.algorithm.name or None


def describe_plan(
    cfg: Config, run_dir=None, replay=None, async_: bool = False, overrides: Sequence[str] = (), resume: bool = False
) -> str:
    """The resolved plan of a training run: schedule, sizes, launch line (with the `--set` items that
    made `cfg`), memory (for --dry-run)."""
    mode = "replay" if replay is not None else "async" if async_ else "sync"
    rows = [("mode", _mode_text(cfg, mode, replay)), ("run dir", str(run_dir) if run_dir is not None else "-")]
    rows += _schedule_rows(cfg) + _optimizer_rows(cfg) + _eval_rows(cfg)
    if mode == "async" and cfg.layout.rollout_gpus:
        rows.append(
            (
                "rollout GPUs",
                f"{cfg.layout.rollout_gpus} dedicated; on each worker GPU: CUDA_VISIBLE_DEVICES=K "
                f"vespo rollout --follow {run_dir or 'RUN_DIR'} --worker wK",
            )
        )
    rows += [("protocol" if i == 0 else "", line) for i, line in enumerate(protocol_summary(cfg))]
    lines = [f"plan: {cfg.preset or 'run'} ({cfg.model.path}, objective {cfg.algorithm.objective})"]
    lines += _table(rows)
    lines += [""] + _launch_lines(cfg, run_dir, replay, async_, overrides, resume)
    lines += ["", "memory plan"] + _memory_lines(cfg, mode)
    return "\n".join(lines)


def _mode_text(cfg: Config, mode: str, replay) -> str:
    t = cfg.trainer
    return {
        "sync": "sync: sample a rollout batch with the current weights, then train N steps on it",
        "replay": f"replay: train on existing shards in {replay} (no sampling)",
        "async": f"async: {t.async_workers} rollout worker(s) follow published weights; shards older than "
        f"{t.max_staleness} policy versions are dropped",
    }[mode]


def _schedule_rows(cfg: Config) -> list[tuple[str, str]]:
    """Rollout batches, optimizer steps, prompts and tokens: the run's schedule and sizes."""
    t, r = cfg.trainer, cfg.rollout
    mbs, N, n = t.minibatch_prompts, t.staleness, r.n
    gbs = mbs * N
    batches = math.ceil(t.steps / N)
    last = t.steps - (batches - 1) * N
    seq = cfg.data.max_prompt_tokens + r.max_tokens
    return [
        ("rollout batch", f"{mbs} prompts × N={N} = {gbs} prompts × n={n} samples = {gbs * n:,} samples"),
        ("optimizer steps", f"{N} per rollout batch (old log-probs recomputed once per batch), {t.steps} in total"),
        (
            "rollout batches",
            f"{batches}" + (f" (the last one uses {last} of its {N} minibatches)" if last != N else ""),
        ),
        ("prompts consumed", f"{batches * gbs:,}"),
        (
            "tokens / step",
            f"≤ {mbs * n * seq:,} = {mbs} prompts × {n} samples × ({cfg.data.max_prompt_tokens} + "
            f"{r.max_tokens}), of which response ≤ {mbs * n * r.max_tokens:,}",
        ),
    ]


def _optimizer_rows(cfg: Config) -> list[tuple[str, str]]:
    """The optimizer and the dtype policy."""
    t, r = cfg.trainer, cfg.rollout
    return [
        (
            "optimizer",
            f"AdamW lr {t.lr:g} "
            f"({f'{t.lr_warmup_steps} warmup steps' if t.lr_warmup_steps else 'constant'}), "
            f"betas {tuple(t.betas)}, weight decay {t.weight_decay:g}, grad clip {t.grad_clip:g}",
        ),
        (
            "precision",
            f"{cfg.model.dtype} master weights"
            + (", bf16 compute weights" if t.bf16_params else ", bf16 autocast" if t.bf16_autocast else "")
            + (", gradient checkpointing" if t.gradient_checkpointing else "")
            + f"; rollout {r.engine} {r.dtype}; micro_token_budget {t.micro_token_budget}",
        ),
    ]


def _eval_rows(cfg: Config) -> list[tuple[str, str]]:
    if not cfg.eval.benchmarks:
        return []
    every = f"every {cfg.eval.every} steps and at the end" if cfg.eval.every else "at the end"
    return [
        ("eval", f"{', '.join(cfg.eval.benchmarks)} {every} (k per benchmark: {cfg.eval.k or 'the paper default'})")
    ]


def _table(rows: list[tuple[str, str]]) -> list[str]:
    """Keys in a column, values wrapped at 80 columns beside them."""
    width = max(len(k) for k, _ in rows) + 4
    lines = []
    for key, value in rows:
        wrapped = textwrap.wrap(value, 80 - width, break_on_hyphens=False, break_long_words=False) or [""]
        lines.append(f"  {key:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + w for w in wrapped[1:]]
    return lines


def _launch_lines(cfg: Config, run_dir, replay, async_: bool, overrides: Sequence[str], resume: bool) -> list[str]:
    """Where to launch (every node, when the trainer spans several) and the command, shell-wrapped."""
    (cmd,) = launch_commands(
        cfg, algo=_algo_flag(cfg), replay=replay, async_=async_, run_dir=run_dir, overrides=overrides, resume=resume
    )
    lay = cfg.layout
    if lay.gpus_per_node and lay.nodes - (lay.rollout_gpus // lay.gpus_per_node if lay.nodes > 1 else 0) > 1:
        where = f"launch (on each of the {lay.nodes} nodes: NODE_RANK 0..{lay.nodes - 1}, MASTER_ADDR = node 0)"
    else:
        where = "launch"
    return [where] + ["  " + w for w in shell_wrap(cmd, 76)]


def _memory_lines(cfg: Config, mode: str) -> list[str]:
    """The GPU memory plan (vespo_cli/plan), indented; a line saying why there is none."""
    if cfg.layout.gpus_per_node < 1:
        return ["  CPU run (layout.gpus_per_node 0): no GPU memory plan"]
    try:
        plan = memory_plan(cfg, mode=mode)
        plan.warnings[:0] = check_config(cfg)
        return ["  " + s if s else "" for s in format_memory(plan).splitlines()]
    except UserError as e:
        return [f"  unavailable: {e}"]
