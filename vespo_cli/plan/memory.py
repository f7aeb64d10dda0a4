"""The per-GPU memory model of a paper-scale run: bytes per GPU for the trainer (fp32 master weights,
gradients and AdamW moments sharded over `layout.fsdp_size`, FSDP's unsharded working set,
activations of the largest microbatch with gradient checkpointing, the chunked LM-head log-softmax)
plus the colocated vLLM engine (`rollout.gpu_memory_utilization` of the GPU: bf16 weights /
`rollout.tensor_parallel_size`, and the KV cache that is left).

The activation terms are estimates of what `vespo_cli/train` does (documented next to each constant
below); the state terms are exact byte counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import Config
from ..errors import UserError
from ..train.forward import CHUNK_BYTES, GRAD_BLOCK_BYTES
from .layout import Engines, describe_engines, engines, estimate_run, estimate_throughput, layout_problems
from .models import DTYPE_BYTES, GiB, ModelShape, gib, model_shape

# ---- memory model constants (bytes). Each names the code path it stands for.
ADAM_STATES = 2  # torch.optim.AdamW: exp_avg + exp_avg_sq, in the parameters' dtype
# Per token per decoder layer, bf16 autocast: attention block (norm inputs and fp32 norm internals,
# q/k/v and their norms, rotary copies, SDPA inputs/outputs, o_proj input, residuals) ≈ 40·h bytes;
# SwiGLU MLP: gate, up, act, product ≈ 8·I bytes; a routed MoE token also carries its fp32 gathered
# input, the weighted output and its fp32 copy per selected expert ≈ 12·h + 8·I_expert.
ATTN_BYTES_PER_HIDDEN = 40
MLP_BYTES_PER_INTERMEDIATE = 8
MOE_BYTES_PER_HIDDEN = 12
CUDA_OVERHEAD = 3 * GiB  # CUDA context, NCCL buffers, caching-allocator fragmentation (per process)
VLLM_OVERHEAD = 3 * GiB  # vLLM activation peak, CUDA graphs, sampler buffers inside its budget


@dataclass
class Row:
    item: str
    bytes: int
    formula: str


@dataclass
class MemoryPlan:
    shape: ModelShape
    gpus: int  # all GPUs of the layout
    trainer_gpus: int
    gpus_per_node: int
    fsdp: int
    tp: int
    capacity: int  # bytes per GPU
    max_seq: int  # prompt + response tokens of the longest sequence
    micro_tokens: int  # padded tokens of the largest microbatch
    trainer: list[Row] = field(default_factory=list)
    rollout: list[Row] = field(default_factory=list)
    colocated: bool = True
    load_bytes: int = 0  # the full model in the trainer's dtype (every rank loads it before sharding)
    fsdp_shard: int = 0  # master weights + gradients + AdamW moments held by one GPU
    engine_weights: int = 0  # one GPU's share of an engine's weights
    kv_bytes: int = 0
    kv_per_token: int = 0
    engines: Engines | None = None  # None: no engine (replay, HF)
    publish_bytes: int = 0  # peak per GPU during the weight publish to colocated engines
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def trainer_total(self) -> int:
        return sum(r.bytes for r in self.trainer)

    @property
    def rollout_total(self) -> int:
        return sum(r.bytes for r in self.rollout)

    @property
    def per_gpu(self) -> int:
        """Peak bytes on the busiest GPU: trainer + vLLM when colocated, else the larger of the two."""
        if self.colocated:
            return self.trainer_total + self.rollout_total
        return max(self.trainer_total, self.rollout_total)

    @property
    def margin(self) -> int:
        return self.capacity - self.per_gpu

    @property
    def kv_tokens(self) -> int:
        return self.kv_bytes // self.kv_per_token if self.kv_per_token else 0

    @property
    def fits(self) -> bool:
        return not self.problems


def memory_plan(cfg: Config, shape: ModelShape | None = None, mode: str = "sync") -> MemoryPlan:
    """Bytes per GPU of `cfg`'s layout (GPU layouts only: gpus_per_node ≥ 1).

    mode "sync" (the default, what `presets --check` plans): one vLLM engine per
    `rollout.tensor_parallel_size` trainer ranks (or on layout.rollout_gpus); "async": one engine per
    rollout worker; "replay": no engine."""
    lay, t, r = cfg.layout, cfg.trainer, cfg.rollout
    if lay.gpus_per_node < 1:
        raise UserError("layout.gpus_per_node: 0 means a CPU run; a memory plan needs GPUs")
    shape = shape or model_shape(cfg.model.path, cfg.model.trust_remote_code)
    gpus = lay.nodes * lay.gpus_per_node
    max_seq = cfg.data.max_prompt_tokens + r.max_tokens
    plan = MemoryPlan(
        shape=shape,
        gpus=gpus,
        trainer_gpus=gpus - lay.rollout_gpus,
        gpus_per_node=lay.gpus_per_node,
        fsdp=lay.fsdp_size,
        tp=r.tensor_parallel_size,
        capacity=int(lay.gpu_memory_gib * GiB),
        max_seq=max_seq,
        # train/batch.py packs rows up to the budget; a row longer than the budget is a microbatch alone
        micro_tokens=max(t.micro_token_budget, max_seq),
        colocated=lay.rollout_gpus == 0,
    )
    if plan.trainer_gpus < 1:
        plan.problems.append(
            f"layout.rollout_gpus: {lay.rollout_gpus} leaves no GPU for the trainer "
            f"({lay.nodes} × {lay.gpus_per_node} GPUs)"
        )
        plan.trainer_gpus = 1
    problems, warnings = layout_problems(cfg, shape, plan.trainer_gpus, max_seq)
    plan.problems += problems
    plan.warnings += warnings
    _trainer_rows(plan, cfg)
    if mode != "replay":  # replay: no sampling, the trainer has the GPUs to itself
        _engine_rows(plan, cfg, mode)
    if plan.per_gpu > plan.capacity:
        where = "trainer + colocated vLLM" if plan.colocated else "busiest GPU"
        plan.problems.append(
            f"{where} needs {gib(plan.per_gpu)} per GPU, {gib(-plan.margin)} more than "
            f"layout.gpu_memory_gib {lay.gpu_memory_gib:g}"
        )
    return plan


def _trainer_rows(plan: MemoryPlan, cfg: Config) -> None:
    """The trainer's rows: sharded state, FSDP working set, activations, LM head, overhead."""
    t, shape, F, T = cfg.trainer, plan.shape, plan.fsdp, plan.micro_tokens
    P = shape.params
    M = DTYPE_BYTES[cfg.model.dtype]  # master weights, gradients and AdamW moments share this dtype
    plan.load_bytes = M * P
    plan.trainer += [
        Row(f"master weights ({cfg.model.dtype})", M * P // F, f"{M} B × {P / 1e9:.2f}B / fsdp {F}"),
        Row(f"gradients ({cfg.model.dtype})", M * P // F, f"{M} B × {P / 1e9:.2f}B / fsdp {F}"),
        Row(
            f"AdamW moments (2 × {cfg.model.dtype})",
            ADAM_STATES * M * P // F,
            f"{ADAM_STATES * M} B × {P / 1e9:.2f}B / fsdp {F}",
        ),
    ]
    plan.fsdp_shard = sum(r.bytes for r in plan.trainer)
    bf16_params = t.bf16_params and M > 2  # train/precision.py: bf16 compute weights over fp32 masters
    C = 2 if bf16_params else M  # bytes of a compute weight (and of its gradient before fp32 accumulation)
    if F > 1:
        root, layer = shape.root_params, shape.max_layer_params
        plan.trainer.append(
            Row(
                "FSDP unsharded params + grads",
                C * (2 * root + 3 * layer),
                f"{C} B × (2·{root / 1e6:.0f}M root + 3·{layer / 1e6:.0f}M layer)",
            )
        )
    elif bf16_params:
        plan.trainer.append(Row("bf16 compute weights", C * P, f"{C} B × {P / 1e9:.2f}B"))
    low = t.bf16_autocast or bf16_params or cfg.model.dtype == "bfloat16"
    scale = 1 if low else 2  # the per-token activation constants assume bf16 matmul outputs
    h, I = shape.hidden, shape.intermediate
    if shape.moe:
        mlp = shape.top_k * (MOE_BYTES_PER_HIDDEN * h + MLP_BYTES_PER_INTERMEDIATE * I)
        mlp_f = f"{shape.top_k}·({MOE_BYTES_PER_HIDDEN}h + {MLP_BYTES_PER_INTERMEDIATE}·I_e)"
    else:
        mlp = MLP_BYTES_PER_INTERMEDIATE * I
        mlp_f = f"{MLP_BYTES_PER_INTERMEDIATE}·I"
    per_layer_token = scale * (ATTN_BYTES_PER_HIDDEN * h + mlp)
    per_layer_f = f"({ATTN_BYTES_PER_HIDDEN}h + {mlp_f})" + ("" if low else " × 2")
    if t.gradient_checkpointing:
        plan.trainer.append(
            Row("checkpointed layer inputs", shape.layers * T * h * C, f"{shape.layers} layers × {T} × h {h} × {C} B")
        )
        plan.trainer.append(Row("one layer recompute, fwd+bwd", 2 * T * per_layer_token, f"2 × {T} × {per_layer_f}"))
    else:  # every layer's activations, plus the backward's working copy of one
        plan.trainer.append(
            Row(
                "activations (no checkpointing)",
                (shape.layers + 1) * T * per_layer_token,
                f"{shape.layers + 1} × {T} × {per_layer_f}",
            )
        )
    plan.trainer.append(_head_row(shape, T, compute=2 if low else 4, hidden=C, cast=t.bf16_autocast and M > 2))
    plan.trainer.append(Row("CUDA context, NCCL, slack", CUDA_OVERHEAD, "fixed"))
    if M * P > plan.capacity:
        plan.warnings.append(
            f"loading: the trainer materialises the full {cfg.model.dtype} model on each GPU before sharding "
            f"(load_model(...).to(device) in train/loop.py): {gib(M * P)} > {gib(plan.capacity)}; "
            "it needs a CPU/meta-device load before fully_shard"
        )


def _head_row(shape: ModelShape, T: int, compute: int, hidden: int, cast: bool) -> Row:
    """train/forward.py's chunked LM head (FSDP or not): the backward's peak beyond the root's gathered
    weight and gradient (counted above): the fp32 ∂W accumulator, one block of ∂z rows in the compute
    dtype, one chunk's fp32 logits and their cast, ∂hidden; plus the head cast to the compute dtype
    when autocast runs over fp32 weights. The [T, vocab] logits are never materialised."""
    V, h = shape.vocab, shape.hidden
    dw = 4 * V * h
    copy = compute * V * h if cast else 0
    block = min(GRAD_BLOCK_BYTES, T * V * compute)
    chunk = min(CHUNK_BYTES, T * V * 4) * (4 + compute) // 4
    dh = T * h * hidden
    formula = f"{4 + (compute if copy else 0)} B × V × h + {(block + chunk) / 2**20:.0f} MiB + {T} × h × {hidden} B"
    return Row("LM head (chunked log-softmax)", dw + copy + block + chunk + dh, formula)


def _engine_rows(plan: MemoryPlan, cfg: Config, mode: str) -> None:
    """The vLLM engine's rows on its GPUs (colocated, or on layout.rollout_gpus), its engines and
    their throughput assumption."""
    r, t, lay, shape = cfg.rollout, cfg.trainer, cfg.layout, plan.shape
    if r.engine != "vllm":
        plan.warnings.append("rollout.engine hf: no vLLM budget planned (the HF engine shares the trainer's memory)")
        return
    workers = t.async_workers if mode == "async" and plan.colocated else 1
    W, P, tp = DTYPE_BYTES[r.dtype], shape.params, plan.tp
    reserved = int(r.gpu_memory_utilization * plan.capacity)
    plan.engine_weights = W * P // tp
    plan.kv_per_token = shape.kv_bytes_per_token(W, tp)
    plan.kv_bytes = max(0, reserved - plan.engine_weights - VLLM_OVERHEAD)
    plan.rollout += [
        Row(f"weights ({r.dtype})", plan.engine_weights, f"{W} B × {P / 1e9:.2f}B / tp {tp}"),
        Row("activations, CUDA graphs", VLLM_OVERHEAD, "fixed"),
        Row("KV cache", plan.kv_bytes, f"{r.gpu_memory_utilization:g} × {lay.gpu_memory_gib:g} GiB − the rest"),
    ]
    if workers > 1:  # async workers are separate processes on the same (default) GPUs
        plan.rollout.append(
            Row(
                f"{workers - 1} more async worker engine(s)",
                (workers - 1) * reserved,
                f"trainer.async_workers {workers} × the above",
            )
        )
    need = plan.max_seq * plan.kv_per_token
    if reserved < plan.engine_weights + VLLM_OVERHEAD + need:
        plan.problems.append(
            f"rollout.gpu_memory_utilization: {r.gpu_memory_utilization} gives vLLM {gib(reserved)}, less than "
            f"weights {gib(plan.engine_weights)} + overhead {gib(VLLM_OVERHEAD)} + KV for one {plan.max_seq}-token "
            f"sequence {gib(need)}"
        )
    plan.engines = engines(cfg, shape, plan.trainer_gpus, mode)
    estimate_throughput(plan.engines, cfg, shape, plan.engine_weights, plan.kv_tokens, plan.kv_per_token)
    estimate_run(plan.engines, cfg, shape, plan.gpus, plan.trainer_gpus, plan.colocated and mode == "sync")
    if plan.colocated and mode == "sync":  # the trainer's weights to its engines after each rollout batch
        _publish_peak(plan, cfg)


def _publish_peak(plan: MemoryPlan, cfg: Config) -> None:
    """Bytes per GPU while every engine takes the weights: the sharded weights and moments (gradients
    are freed after the step), the engine, and one tensor at a time (at most the embedding) gathered
    (train/dist.full_state_dict) and cast to the engine's dtype (rollout/vllm.py's load_state_dict)."""
    shape, M = plan.shape, DTYPE_BYTES[cfg.model.dtype]
    state = plan.fsdp_shard - M * shape.params // plan.fsdp
    tensor = (M + DTYPE_BYTES[cfg.rollout.dtype]) * shape.vocab * shape.hidden
    plan.publish_bytes = state + CUDA_OVERHEAD + tensor + plan.rollout_total
    if plan.publish_bytes > plan.capacity:
        plan.problems.append(
            f"weight publish needs {gib(plan.publish_bytes)} per GPU, more than layout.gpu_memory_gib "
            f"{cfg.layout.gpu_memory_gib:g}"
        )


def format_memory(plan: MemoryPlan) -> str:
    """The plan as text lines of at most ~80 columns (the CLI's console wraps longer ones)."""
    s = plan.shape
    lines = []
    published = f" (published {s.published:g}B)" if s.published else ""
    lines.append(f"model      {s.name} (config from {s.source})")
    lines.append(f"params     {s.params:,} = {s.params / 1e9:.2f}B{published}")
    if s.moe:
        lines.append(
            f"           MoE: {s.experts} experts, top-{s.top_k}, {s.active_params / 1e9:.2f}B active per token; "
            "trainer: FSDP shards the experts, no EP"
        )
    lines.append(
        f"shape      {s.layers} layers, h {s.hidden}, {s.heads}/{s.kv_heads} heads, vocab {s.vocab}"
        f"{', tied embeddings' if s.tied else ''}"
    )
    lines.append(
        f"layout     {plan.gpus} GPU{'s' if plan.gpus > 1 else ''} × {plan.capacity / GiB:g} GiB; "
        f"trainer on {plan.trainer_gpus}, FSDP {plan.fsdp}; vLLM tp {plan.tp}, "
        + ("colocated" if plan.colocated else f"{plan.gpus - plan.trainer_gpus} dedicated GPUs")
    )
    lines.append(f"microbatch ≤ {plan.micro_tokens} padded tokens (longest sequence {plan.max_seq})")
    lines.append(
        f"loading    each rank reads the full model ({gib(plan.load_bytes)}): "
        f"{gib(plan.load_bytes * min(plan.gpus, plan.gpus_per_node))} RAM per node"
    )
    lines.append("")
    lines += _table(plan)
    lines.append("")
    summary = f"per GPU    FSDP shard {gib(plan.fsdp_shard)}"
    if plan.engines:
        summary += f", engine weights {gib(plan.engine_weights)}, KV cache {gib(plan.kv_bytes)}"
    lines.append(summary)
    if plan.kv_per_token:
        lines.append(
            f"KV cache   {plan.kv_per_token / 1024:.1f} KiB/token/GPU: {plan.kv_tokens:,} tokens = "
            f"{plan.kv_tokens / plan.max_seq:.1f} full {plan.max_seq}-token sequences"
        )
    if plan.engines:
        lines += describe_engines(plan.engines)
    if plan.publish_bytes:
        lines.append(f"           publish peak {gib(plan.publish_bytes)} per GPU (one tensor at a time)")
    for w in plan.warnings:
        lines.append(f"note: {w}")
    if plan.fits:
        lines.append(f"verdict: FITS, {gib(plan.margin)} to spare per GPU ({plan.margin / plan.capacity:.0%})")
    else:
        lines.append("verdict: DOES NOT FIT")
        for p in plan.problems:
            lines.append(f"  - {p}")
    return "\n".join(lines)


def _table(plan: MemoryPlan) -> list[str]:
    """The rows per GPU, trainer then vLLM, with their totals and the peak."""
    width = 32
    lines = [f"{'per GPU':<{width}}{'GiB':>8}   how"]
    sections = [("trainer", plan.trainer, "trainer total")]
    if plan.rollout:
        sections.append(("vLLM (rollout)", plan.rollout, "vLLM total"))
    for title, rows, total_label in sections:
        lines.append(title)
        for row in rows:
            lines.append(f"  {row.item:<{width - 2}}{row.bytes / GiB:>8.2f}   {row.formula}")
        lines.append(f"  {total_label:<{width - 2}}{sum(r.bytes for r in rows) / GiB:>8.2f}")
    label = (
        "peak (trainer)" if not plan.rollout else "peak (trainer + vLLM)" if plan.colocated else "peak (busiest GPU)"
    )
    lines.append(f"{label:<{width}}{plan.per_gpu / GiB:>8.2f}   of {plan.capacity / GiB:g}")
    return lines
