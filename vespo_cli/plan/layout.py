"""A paper-scale layout: whether it is valid, its rollout engines (tensor and expert parallel, one
engine per group of `rollout.tensor_parallel_size` ranks: rollout/groups.py), and the rollout
throughput, weight-publish and whole-run figures the plan assumes.

The throughput figure is an assumption, not a measurement: decode is taken to be bound by memory
bandwidth. Each decode step of an engine reads, on each of its GPUs, that GPU's weights once (for an
MoE engine all its experts: hundreds of running sequences touch them all) and the KV cache of every
running sequence, and does 2 FLOPs per active parameter per sequence; vLLM runs at most
`MAX_NUM_SEQS` sequences, fewer when the KV cache holds fewer. Sequences are taken to be of mean
length (prompt + response) with the response `MEAN_RESPONSE_FRACTION` of `rollout.max_tokens`.

The whole run (`estimate_run`): ⌈steps / N⌉ rollout batches, each sampled at that throughput and
trained at `TRAIN_MFU` of the GPUs' dense bf16 peak, with `TRAIN_FLOPS_PER_PARAM` FLOPs per active
parameter per token (2 for the old log-probs, 6 for forward and backward, 2 for the forward that
gradient checkpointing repeats). Colocated, sampling and training take turns on every GPU (their
times add up); with dedicated rollout GPUs they overlap (the longer one sets the pace).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from ..config import Config
from ..errors import UserError
from ..rollout.groups import check_engine_groups, vllm_parallel_args
from .models import DTYPE_BYTES, ModelShape

# GPU by memory size (layout.gpu_memory_gib ≥ key): name, HBM bytes/s, dense bf16 FLOP/s (datasheets)
GPUS = ((130, "H200", 4.8e12, 989e12), (75, "H100", 3.35e12, 989e12), (0, "GPU", 2.0e12, 312e12))
HBM_EFFICIENCY = 0.5  # of the datasheet bandwidth, reached by decode kernels
FLOP_EFFICIENCY = 0.5
MAX_NUM_SEQS = 1024  # vLLM's LLM default on ≥ 70 GiB GPUs (vllm/engine/arg_utils.py)
MEAN_RESPONSE_FRACTION = 0.5  # mean response length / rollout.max_tokens: a guess; it grows during RL
# Weight publish: the master weights are all-gathered from the FSDP shards (a tensor at a time, dist.
# full_state_dict) over NVLink inside a node, over the network between nodes (per GPU, effective)
INTRA_NODE_BYTES_PER_S = 300e9
INTER_NODE_BYTES_PER_S = 40e9  # 400 Gb/s InfiniBand per GPU
TRAIN_MFU = 0.35  # trainer FLOPs / dense bf16 peak (FSDP with checkpointing: verl reports 30–40%)
TRAIN_FLOPS_PER_PARAM = {True: 10, False: 8}  # gradient checkpointing on / off (module doc)


@dataclass
class Engines:
    """The rollout engines of a layout and the throughput the plan assumes for them."""

    count: int
    tp: int
    ep: int  # experts split over the engine's GPUs (1: dense, or each expert sliced tp ways)
    experts: int  # the model's experts per MoE layer (0: dense)
    groups: str  # which ranks run which engine
    vllm_args: dict
    gpu: str = ""
    concurrency: int = 0  # sequences running per engine
    tokens_per_s: float = 0.0  # per engine
    batch_tokens: int = 0  # response tokens of one rollout batch (mean length)
    publish_s: float = 0.0
    run_batches: int = 0  # rollout batches of the whole run
    run_rollout_s: float = 0.0  # sampling, whole run
    run_train_s: float = 0.0  # training (old log-probs + optimizer steps), whole run
    run_hours: float = 0.0  # wall clock
    run_gpus: int = 0  # GPUs held for the whole run


def layout_problems(cfg: Config, shape: ModelShape, trainer_gpus: int, max_seq: int) -> tuple[list, list]:
    """(problems, warnings) of `cfg`'s layout for `shape`: FSDP, engine groups, heads, positions."""
    lay, tp, F = cfg.layout, cfg.rollout.tensor_parallel_size, cfg.layout.fsdp_size
    problems, warnings = [], []
    if F > trainer_gpus or trainer_gpus % F:
        problems.append(f"layout.fsdp_size: {F} must divide the {trainer_gpus} trainer GPUs")
    elif F < trainer_gpus:
        warnings.append(
            f"layout.fsdp_size {F} < {trainer_gpus} trainer GPUs: the trainer shards over all "
            "ranks (train/dist.py), so this plan is conservative"
        )
    engine_gpus = lay.rollout_gpus or trainer_gpus
    try:
        check_engine_groups(engine_gpus, tp, min(lay.gpus_per_node, engine_gpus))
    except UserError as e:
        problems.append(str(e))
    if shape.heads % tp:
        problems.append(f"rollout.tensor_parallel_size: {tp} must divide the model's {shape.heads} attention heads")
    kv = shape.kv_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        problems.append(
            f"rollout.tensor_parallel_size: {tp} and the model's {kv} KV heads: one must divide the other (vLLM)"
        )
    if shape.moe and tp > 1 and shape.experts % tp:
        problems.append(f"rollout.tensor_parallel_size: {tp} must divide the model's {shape.experts} experts (EP)")
    if lay.nodes > 1 and lay.rollout_gpus % lay.gpus_per_node:
        problems.append(
            f"layout.rollout_gpus: {lay.rollout_gpus}: on several nodes give rollout whole nodes "
            f"(a multiple of gpus_per_node {lay.gpus_per_node})"
        )
    if shape.max_positions and max_seq > shape.max_positions:
        problems.append(
            f"data.max_prompt_tokens + rollout.max_tokens = {max_seq} exceeds the model's "
            f"{shape.max_positions} positions"
        )
    return problems, warnings


def engines(cfg: Config, shape: ModelShape, trainer_gpus: int, mode: str = "sync") -> Engines:
    """Sync: one engine per `tp` colocated trainer ranks inside the torchrun job (or per `tp` of
    layout.rollout_gpus, a `vespo rollout --follow` each); async: trainer.async_workers processes. With
    vLLM's parallel arguments (rollout/groups.py) and the weight-publish estimate."""
    lay, tp = cfg.layout, cfg.rollout.tensor_parallel_size
    gpus = lay.rollout_gpus or trainer_gpus
    in_job = mode == "sync" and lay.rollout_gpus == 0  # the external launcher: engines inside torchrun
    if mode == "async":
        count, where = cfg.trainer.async_workers, "separate `vespo rollout --follow` processes"
    else:
        count = max(1, gpus // tp)
        first = 0 if in_job else trainer_gpus
        spans = [f"{first + g * tp}-{first + g * tp + tp - 1}" if tp > 1 else str(first + g) for g in range(count)]
        shown = ", ".join(spans) if count <= 4 else f"{spans[0]}, {spans[1]}, …, {spans[-1]}"
        where = f"{'rank' if in_job else 'GPU'}{'s' if count * tp > 1 else ''} {shown}"
    args = vllm_parallel_args(tp, gpus if in_job else 1, shape.moe)
    e = Engines(count, tp, tp if args.get("enable_expert_parallel") else 1, shape.experts, where, args)
    if in_job and trainer_gpus > 1:  # the master weights, all-gathered from the FSDP shards, to every engine
        nodes = max(1, trainer_gpus // lay.gpus_per_node)
        gathered = DTYPE_BYTES[cfg.model.dtype] * shape.params
        e.publish_s = gathered / (INTER_NODE_BYTES_PER_S if nodes > 1 else INTRA_NODE_BYTES_PER_S)
    return e


def estimate_throughput(e: Engines, cfg: Config, shape: ModelShape, weights: int, kv_tokens: int, kv_tok: int):
    """Fill `e`'s decode estimate from the engine's per-GPU `weights` bytes and KV cache (module doc)."""
    name, bw, flops = next((n, b, f) for m, n, b, f in GPUS if cfg.layout.gpu_memory_gib >= m)
    response = MEAN_RESPONSE_FRACTION * cfg.rollout.max_tokens
    context = cfg.data.max_prompt_tokens / 2 + response / 2  # mean tokens held by a running sequence
    e.gpu = name
    e.concurrency = int(max(1, min(MAX_NUM_SEQS, kv_tokens // max(1, int(context)))))
    read = weights + e.concurrency * context * kv_tok
    step = max(read / (bw * HBM_EFFICIENCY), e.concurrency * 2 * shape.active_params / e.tp / (flops * FLOP_EFFICIENCY))
    e.tokens_per_s = e.concurrency / step
    t = cfg.trainer
    e.batch_tokens = int(t.minibatch_prompts * t.staleness * cfg.rollout.n * response)


def estimate_run(e: Engines, cfg: Config, shape: ModelShape, gpus: int, trainer_gpus: int, colocated: bool):
    """Fill `e`'s whole-run estimate (module doc): hours and, × `gpus`, GPU-hours."""
    if not e.tokens_per_s:
        return
    flops = next(f for m, _, _, f in GPUS if cfg.layout.gpu_memory_gib >= m)
    t = cfg.trainer
    e.run_batches = -(-t.steps // t.staleness)
    tokens = t.minibatch_prompts * t.staleness * cfg.rollout.n * cfg.data.max_prompt_tokens / 2 + e.batch_tokens
    per_token = TRAIN_FLOPS_PER_PARAM[t.gradient_checkpointing] * shape.active_params
    e.run_rollout_s = e.run_batches * e.batch_tokens / (e.count * e.tokens_per_s)
    e.run_train_s = e.run_batches * tokens * per_token / (trainer_gpus * flops * TRAIN_MFU)
    wall = e.run_rollout_s + e.run_train_s if colocated else max(e.run_rollout_s, e.run_train_s)
    e.run_hours, e.run_gpus = wall / 3600, gpus


def describe_engines(e: Engines) -> list[str]:
    """The plan's rollout lines: engines, TP/EP, vLLM arguments, the throughput assumption, publish."""
    moe = f", EP {e.ep} ({e.experts // e.ep} of {e.experts} experts per GPU)" if e.ep > 1 else ""
    args = ", ".join(f"{k}={v}" for k, v in e.vllm_args.items())
    text = [
        ("rollout", f"{e.count} vLLM engine{'s' if e.count > 1 else ''} × TP {e.tp}{moe}: {e.groups}"),
        ("vLLM args", args),
    ]
    if e.tokens_per_s:
        job = e.count * e.tokens_per_s
        text.append(
            (
                "throughput",
                f"assumed decode-bound: {e.gpu} HBM at {HBM_EFFICIENCY:.0%}, mean response "
                f"{MEAN_RESPONSE_FRACTION:g} × max_tokens, {e.concurrency} sequences per engine → "
                f"{e.tokens_per_s / 1e3:,.1f}k tokens/s per engine, {job / 1e3:,.1f}k per job; a rollout batch "
                f"({e.batch_tokens / 1e6:,.0f}M response tokens) ≈ {e.batch_tokens / job / 60:,.0f} min",
            )
        )
    if e.run_hours:
        text.append(
            (
                "run",
                f"{e.run_batches} rollout batches: ≈ {e.run_rollout_s / 3600:,.0f} h sampling + "
                f"≈ {e.run_train_s / 3600:,.0f} h training (MFU {TRAIN_MFU:g}) ≈ {e.run_hours:,.0f} h on "
                f"{e.run_gpus} GPU{'s' if e.run_gpus > 1 else ''} = {e.run_hours * e.run_gpus:,.0f} GPU-hours "
                "(an estimate, as above)",
            )
        )
    if e.publish_s:
        text.append(
            (
                "publish",
                f"the master weights all-gathered from the FSDP shards (a tensor at a time) to every engine "
                f"per rollout batch: "
                f"≥ {e.publish_s:.2g} s at link bandwidth (per-tensor loading comes on top)",
            )
        )
    elif "external_launcher" not in e.vllm_args and e.count * e.tp > 1:
        text.append(("publish", "through the run directory's published/ checkpoint (shared filesystem)"))
    else:
        text.append(("publish", "the trainer's weights copied into the engine on the same GPU"))
    return [
        line
        for key, value in text
        for line in textwrap.wrap(value, 80, initial_indent=f"{key:<11}", subsequent_indent=" " * 11)
    ]
