"""Paper-scale planning: parameter counts, the per-GPU memory plan, and the resolved run plan.

`check_preset(cfg)` (for `vespo presets --check NAME`) validates a preset's layout and fits it on
paper: exact parameter counts (the model is instantiated on the `meta` device from its config
numbers: no weights, no hub), then bytes per GPU for the trainer (fp32 master weights, gradients and
AdamW moments sharded over `layout.fsdp_size`, FSDP's unsharded working set, activations of the
largest microbatch with gradient checkpointing, the fp32 logits of its response tokens) plus the
colocated vLLM engine (`rollout.gpu_memory_utilization` of the GPU: bf16 weights /
`rollout.tensor_parallel_size`, and the KV cache that is left). A layout that does not fit raises
`UserError` with the numbers. `describe_plan(...)` (for `vespo train --dry-run`) adds the schedule:
mode, rollout batch = mbs × N prompts × n samples, optimizer steps per rollout batch, rollout
batches in total, tokens per step, and the `torchrun` launch lines.

The activation terms are estimates of what `vespo_cli/train` does (documented next to each
constant below); the state terms are exact byte counts.
"""

from __future__ import annotations

import functools
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .config import PAPER_TEMPLATE, Config, preset_path
from .errors import UserError

GiB = 2**30

# Public config numbers of the models the paper presets use (from each hub repo's config.json), so
# that planning needs neither the hub nor the weights. `published` is the size the model card states
# (billions): parameter counts are checked against it in the tests.
KNOWN_MODELS: dict[str, dict] = {
    "Qwen/Qwen3-8B-Base": dict(
        arch="qwen3",
        published=8.2,
        hidden_size=4096,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
    ),
    "Qwen/Qwen3-30B-A3B-Base": dict(
        arch="qwen3_moe",
        published=30.5,
        hidden_size=2048,
        num_hidden_layers=48,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        vocab_size=151936,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
    ),
    "meta-llama/Llama-3.2-3B-Instruct": dict(
        arch="llama",
        published=3.21,
        hidden_size=3072,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=8192,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
    ),
    "Qwen/Qwen3-0.6B-Base": dict(
        arch="qwen3",
        published=0.6,
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
    ),
    # the built-in CPU models (vespo_cli.models): SmolLM2-135M-Instruct and the tiny test model
    "smollm2-135m": dict(
        arch="llama",
        published=0.135,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    ),
    "tiny": dict(
        arch="llama",
        published=None,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        vocab_size=49152,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
    ),
}
# the instruct / base twins share their architecture numbers
_ALIASES = {
    "Qwen/Qwen3-8B": "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B-Base",
    "Qwen/Qwen3-0.6B": "Qwen/Qwen3-0.6B-Base",
    "meta-llama/Llama-3.2-3B": "meta-llama/Llama-3.2-3B-Instruct",
}

# The paper's protocol (ALGORITHMS.md, "Paper protocol"): what the paper presets must match.
PAPER_PROTOCOL: dict[str, object] = {
    "data.train": "dapo-math-17k",
    "data.template": PAPER_TEMPLATE,
    "data.max_prompt_tokens": 1024,
    "rollout.n": 8,
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.max_tokens": 15360,
    "trainer.minibatch_prompts": 256,
    "trainer.staleness": 8,
    "trainer.steps": 1500,
    "trainer.lr": 1e-6,
    "trainer.lr_warmup_steps": 0,
    "trainer.betas": [0.9, 0.999],
    "trainer.weight_decay": 0.01,
    "trainer.grad_clip": 1.0,
    "eval.benchmarks": ["aime24", "aime25", "amc23", "math500"],
}

# ---- memory model constants (bytes). Each names the code path it stands for.
ADAM_STATES = 2  # torch.optim.AdamW: exp_avg + exp_avg_sq, in the parameters' dtype
# Per token per decoder layer, bf16 autocast: attention block (norm inputs and fp32 norm internals,
# q/k/v and their norms, rotary copies, SDPA inputs/outputs, o_proj input, residuals) ≈ 40·h bytes;
# SwiGLU MLP: gate, up, act, product ≈ 8·I bytes; a routed MoE token also carries its fp32 gathered
# input, the weighted output and its fp32 copy per selected expert ≈ 12·h + 8·I_expert.
ATTN_BYTES_PER_HIDDEN = 40
MLP_BYTES_PER_INTERMEDIATE = 8
MOE_BYTES_PER_HIDDEN = 12
# train/forward.py: logits of every response token are materialised in fp32 and kept for backward
# (logsumexp), then backward builds softmax and the scattered gather gradient: 3 × 4 bytes per logit.
LOGIT_BYTES = 12
CUDA_OVERHEAD = 3 * GiB  # CUDA context, NCCL buffers, caching-allocator fragmentation (per process)
VLLM_OVERHEAD = 3 * GiB  # vLLM activation peak, CUDA graphs, sampler buffers inside its budget
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# --------------------------------------------------------------------------- parameter counts


@dataclass(frozen=True)
class ModelShape:
    """What planning needs to know about a model; counts are exact (meta-device instantiation)."""

    name: str
    source: str  # "table" | a config.json path
    params: int  # total (tied embeddings counted once)
    active_params: int  # per token: all but the unselected experts
    root_params: int  # outside the decoder layers: embeddings, final norm, LM head
    max_layer_params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width, or one expert's width for MoE
    vocab: int
    tied: bool
    experts: int = 0
    top_k: int = 0
    max_positions: int = 0
    published: float | None = None  # billions, from the model card

    @property
    def moe(self) -> bool:
        return self.experts > 0

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tp: int = 1) -> int:
        """K and V of every layer for one token on one GPU of a tensor-parallel group of `tp`
        (vLLM splits KV heads across GPUs and replicates them when tp > kv_heads)."""
        heads_per_gpu = max(1, self.kv_heads // tp)
        return 2 * self.layers * heads_per_gpu * self.head_dim * dtype_bytes


def known_model(spec: str) -> dict | None:
    """The table entry for a hub id (case-insensitive; instruct/base twins share one), else None."""
    names = {k.lower(): k for k in KNOWN_MODELS} | {a.lower(): k for a, k in _ALIASES.items()}
    key = names.get(spec.lower())
    return KNOWN_MODELS[key] if key else None


def hf_config(spec: str, trust_remote_code: bool = False):
    """A `transformers` config for `spec`: from the table, else a local checkpoint's config.json,
    else the local hub cache. Never downloads."""
    entry = known_model(spec)
    if entry is not None:
        from transformers import LlamaConfig, Qwen3Config, Qwen3MoeConfig

        cls = {"qwen3": Qwen3Config, "qwen3_moe": Qwen3MoeConfig, "llama": LlamaConfig}[entry["arch"]]
        kwargs = {k: v for k, v in entry.items() if k not in ("arch", "published")}
        return cls(**kwargs), "table"
    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model.path {spec!r}: directory has no config.json (expected an HF checkpoint directory)")
        try:
            return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code), str(path / "config.json")
        except Exception as e:  # malformed or unsupported config
            raise UserError(f"model.path {spec!r}: cannot read config.json ({type(e).__name__}: {e})") from None
    try:
        conf = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code, local_files_only=True)
        return conf, f"hub cache ({spec})"
    except Exception:
        known = ", ".join(k for k in KNOWN_MODELS)
        raise UserError(
            f"model.path {spec!r}: no config to plan with; expected a known model ({known}) "
            "or a local checkpoint directory with a config.json"
        ) from None


def _num(conf, *names, default=0):
    for name in names:
        value = getattr(conf, name, None)
        if value is not None:
            return value
    return default


@functools.lru_cache(maxsize=32)
def model_shape(spec: str, trust_remote_code: bool = False) -> ModelShape:
    """Count `spec`'s parameters exactly by instantiating it on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    conf, source = hf_config(spec, trust_remote_code)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(conf, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise UserError(
            f"model.path {spec!r}: cannot build the model from its config ({type(e).__name__}: {e})"
        ) from None
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    experts = int(_num(text, "num_experts", "num_local_experts", "n_routed_experts"))
    top_k = int(_num(text, "num_experts_per_tok", "moe_topk")) if experts else 0
    layer_re = re.compile(r"\.layers\.(\d+)\.")
    total = root = expert_params = 0
    per_layer: dict[int, int] = {}
    for name, p in model.named_parameters():  # tied weights are yielded once
        n = p.numel()
        total += n
        m = layer_re.search(name)
        if m:
            per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + n
        else:
            root += n
        if ".experts." in name and ".shared_expert" not in name:
            expert_params += n
    active = total - (expert_params * (experts - top_k) // experts if experts else 0)
    heads = int(_num(text, "num_attention_heads"))
    hidden = int(_num(text, "hidden_size"))
    entry = known_model(spec)
    return ModelShape(
        name=spec,
        source=source,
        params=total,
        active_params=active,
        root_params=root,
        max_layer_params=max(per_layer.values(), default=0),
        layers=int(_num(text, "num_hidden_layers")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(_num(text, "num_key_value_heads", default=heads)),
        head_dim=int(_num(text, "head_dim", default=hidden // max(heads, 1))),
        intermediate=int(_num(text, "moe_intermediate_size", "intermediate_size"))
        if experts
        else int(_num(text, "intermediate_size")),
        vocab=int(_num(text, "vocab_size")),
        tied=bool(getattr(conf, "tie_word_embeddings", False)),
        experts=experts,
        top_k=top_k,
        max_positions=int(_num(text, "max_position_embeddings")),
        published=entry.get("published") if entry else None,
    )


# --------------------------------------------------------------------------- memory plan


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
    kv_bytes: int = 0
    kv_per_token: int = 0
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


def _gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB"


def memory_plan(cfg: Config, shape: ModelShape | None = None, mode: str = "sync") -> MemoryPlan:
    """Bytes per GPU of `cfg`'s layout (GPU layouts only: gpus_per_node ≥ 1).

    mode "sync" (the default, what `presets --check` plans): one vLLM engine on the trainer's GPUs
    (or on layout.rollout_gpus); "async": one engine per rollout worker; "replay": no engine."""
    lay, t, r = cfg.layout, cfg.trainer, cfg.rollout
    if lay.gpus_per_node < 1:
        raise UserError("layout.gpus_per_node: 0 means a CPU run; a memory plan needs GPUs")
    shape = shape or model_shape(cfg.model.path, cfg.model.trust_remote_code)
    gpus = lay.nodes * lay.gpus_per_node
    colocated = lay.rollout_gpus == 0
    trainer_gpus = gpus - lay.rollout_gpus
    F, tp = lay.fsdp_size, r.tensor_parallel_size
    P = shape.params
    max_seq = cfg.data.max_prompt_tokens + r.max_tokens
    # train/batch.py packs rows up to the budget; a row longer than the budget is a microbatch alone
    T = max(t.micro_token_budget, max_seq)
    plan = MemoryPlan(
        shape=shape,
        gpus=gpus,
        trainer_gpus=trainer_gpus,
        gpus_per_node=lay.gpus_per_node,
        fsdp=F,
        tp=tp,
        capacity=int(lay.gpu_memory_gib * GiB),
        max_seq=max_seq,
        micro_tokens=T,
        colocated=colocated,
    )

    # ---- layout validity
    if trainer_gpus < 1:
        plan.problems.append(
            f"layout.rollout_gpus: {lay.rollout_gpus} leaves no GPU for the trainer "
            f"({lay.nodes} × {lay.gpus_per_node} GPUs)"
        )
        trainer_gpus = plan.trainer_gpus = 1
    if F > trainer_gpus or trainer_gpus % F:
        plan.problems.append(f"layout.fsdp_size: {F} must divide the {trainer_gpus} trainer GPUs")
    elif F < trainer_gpus:
        plan.warnings.append(
            f"layout.fsdp_size {F} < {trainer_gpus} trainer GPUs: the trainer shards over all "
            "ranks (train/dist.py), so this plan is conservative"
        )
    if tp > lay.gpus_per_node or lay.gpus_per_node % tp:
        plan.problems.append(
            f"rollout.tensor_parallel_size: {tp} must divide layout.gpus_per_node "
            f"({lay.gpus_per_node}): vLLM tensor parallelism stays inside a node"
        )
    if shape.heads % tp:
        plan.problems.append(
            f"rollout.tensor_parallel_size: {tp} must divide the model's {shape.heads} attention heads"
        )
    if lay.nodes > 1 and lay.rollout_gpus % lay.gpus_per_node:
        plan.problems.append(
            f"layout.rollout_gpus: {lay.rollout_gpus}: on several nodes give rollout whole nodes "
            f"(a multiple of gpus_per_node {lay.gpus_per_node})"
        )
    kv = shape.kv_heads
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        plan.problems.append(
            f"rollout.tensor_parallel_size: {tp} and the model's {kv} KV heads: one must divide the other (vLLM)"
        )
    if not colocated and lay.rollout_gpus % tp:
        plan.problems.append(
            f"layout.rollout_gpus: {lay.rollout_gpus} is not a multiple of rollout.tensor_parallel_size {tp}"
        )
    if shape.max_positions and max_seq > shape.max_positions:
        plan.problems.append(
            f"data.max_prompt_tokens + rollout.max_tokens = {max_seq} exceeds the model's "
            f"{shape.max_positions} positions"
        )

    # ---- trainer, per GPU
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
    plan.trainer.append(
        Row(
            "response logits (fp32) + grads",
            LOGIT_BYTES * T * shape.vocab,
            f"{LOGIT_BYTES} B × {T} × vocab {shape.vocab}",
        )
    )
    plan.trainer.append(Row("CUDA context, NCCL, slack", CUDA_OVERHEAD, "fixed"))
    if M * P > plan.capacity:
        plan.warnings.append(
            f"loading: the trainer materialises the full {cfg.model.dtype} model on each GPU before sharding "
            f"(load_model(...).to(device) in train/loop.py): {_gib(M * P)} > {_gib(plan.capacity)}; "
            "it needs a CPU/meta-device load before fully_shard"
        )

    # ---- vLLM engine (colocated on the trainer's GPUs, or on layout.rollout_gpus)
    engines = t.async_workers if mode == "async" and colocated else 1
    if mode == "replay":
        pass  # no sampling: the trainer has the GPUs to itself
    elif r.engine == "vllm":
        W = DTYPE_BYTES[r.dtype]
        reserved = int(r.gpu_memory_utilization * plan.capacity)
        weights = W * P // tp
        plan.kv_per_token = shape.kv_bytes_per_token(W, tp)
        plan.kv_bytes = max(0, reserved - weights - VLLM_OVERHEAD)
        plan.rollout += [
            Row(f"weights ({r.dtype})", weights, f"{W} B × {P / 1e9:.2f}B / tp {tp}"),
            Row("activations, CUDA graphs", VLLM_OVERHEAD, "fixed"),
            Row("KV cache", plan.kv_bytes, f"{r.gpu_memory_utilization:g} × {lay.gpu_memory_gib:g} GiB − the rest"),
        ]
        if engines > 1:  # async workers are separate processes on the same (default) GPUs
            plan.rollout.append(
                Row(
                    f"{engines - 1} more async worker engine(s)",
                    (engines - 1) * reserved,
                    f"trainer.async_workers {engines} × the above",
                )
            )
        need = max_seq * plan.kv_per_token
        if reserved < weights + VLLM_OVERHEAD + need:
            plan.problems.append(
                f"rollout.gpu_memory_utilization: {r.gpu_memory_utilization} gives vLLM {_gib(reserved)}, less than "
                f"weights {_gib(weights)} + overhead {_gib(VLLM_OVERHEAD)} + KV for one {max_seq}-token "
                f"sequence {_gib(need)}"
            )
    else:
        plan.warnings.append("rollout.engine hf: no vLLM budget planned (the HF engine shares the trainer's memory)")
    if plan.per_gpu > plan.capacity:
        where = "trainer + colocated vLLM" if colocated else "busiest GPU"
        plan.problems.append(
            f"{where} needs {_gib(plan.per_gpu)} per GPU, {_gib(-plan.margin)} more than "
            f"layout.gpu_memory_gib {lay.gpu_memory_gib:g}"
        )
    return plan


def format_memory(plan: MemoryPlan) -> str:
    """The plan as text lines of at most ~80 columns (the CLI's console wraps longer ones)."""
    s = plan.shape
    lines = []
    published = f" (published {s.published:g}B)" if s.published else ""
    lines.append(f"model      {s.name} (config from {s.source})")
    lines.append(f"params     {s.params:,} = {s.params / 1e9:.2f}B{published}")
    if s.moe:
        lines.append(
            f"           MoE: {s.experts} experts, top-{s.top_k}, {s.active_params / 1e9:.2f}B active per token"
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
        f"loading    each rank reads the full model ({_gib(plan.load_bytes)}): "
        f"{_gib(plan.load_bytes * min(plan.gpus, plan.gpus_per_node))} RAM per node"
    )
    lines.append("")
    width = 32
    lines.append(f"{'per GPU':<{width}}{'GiB':>8}   how")
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
    if plan.kv_per_token:
        lines.append("")
        lines.append(
            f"KV cache   {plan.kv_per_token / 1024:.1f} KiB/token/GPU: {plan.kv_tokens:,} tokens = "
            f"{plan.kv_tokens / plan.max_seq:.1f} full {plan.max_seq}-token sequences"
        )
    for w in plan.warnings:
        lines.append(f"note: {w}")
    if plan.fits:
        lines.append(f"verdict: FITS, {_gib(plan.margin)} to spare per GPU ({plan.margin / plan.capacity:.0%})")
    else:
        lines.append("verdict: DOES NOT FIT")
        for p in plan.problems:
            lines.append(f"  - {p}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def protocol_deviations(cfg: Config) -> list[str]:
    """`key = value (paper: value)` for every protocol setting `cfg` does not follow."""
    out = []
    for dotted, want in PAPER_PROTOCOL.items():
        section, key = dotted.split(".")
        got = getattr(getattr(cfg, section), key)
        same = (
            math.isclose(got, want)
            if isinstance(want, float) and isinstance(got, (int, float))
            else [float(x) for x in got] == [float(x) for x in want]
            if dotted == "trainer.betas"
            else got == want
        )
        if not same:
            out.append(f"{dotted} = {got!r} (paper: {want!r})")
    return out


def _check_config(cfg: Config) -> list[str]:
    """Consistency checks beyond config.validate; returns warnings, raises on errors."""
    warns = []
    if cfg.algorithm.routing_replay and not cfg.model.moe:
        raise UserError("algorithm.routing_replay: true needs model.moe: true (routing replay is for MoE models)")
    lay = cfg.layout
    if lay.gpus_per_node and cfg.rollout.engine != "vllm":
        warns.append("rollout.engine is hf on a GPU layout: vLLM is the paper's engine")
    if (
        lay.gpus_per_node
        and cfg.model.dtype == "float32"
        and not (cfg.trainer.bf16_autocast or cfg.trainer.bf16_params)
    ):
        warns.append(
            "trainer.bf16_params and trainer.bf16_autocast are off: fp32 matmuls on GPU are several times slower"
        )
    return warns


def _protocol_summary(cfg: Config) -> list[str]:
    """Empty unless `cfg` trains on the paper's data; then "the paper's" or its deviations."""
    if cfg.data.train != PAPER_PROTOCOL["data.train"]:
        return []
    dev = protocol_deviations(cfg)
    return (
        ["the paper's (ALGORITHMS.md, Paper protocol), no deviation"]
        if not dev
        else ["deviates from the paper's:"] + [f"  - {d}" for d in dev]
    )


def check_preset(cfg: Config) -> str:
    """Validate a resolved preset and fit its layout on paper; UserError (exit 2) if it does not fit."""
    warns = _check_config(cfg)
    head = [f"preset     {cfg.preset or '(none)'}"] + ([f"           {cfg.description}"] if cfg.description else [])
    proto = _protocol_summary(cfg)
    head += [f"protocol   {proto[0]}"] + proto[1:] if proto else []
    if cfg.layout.gpus_per_node < 1:
        shape = model_shape(cfg.model.path, cfg.model.trust_remote_code)
        head.append(f"model      {shape.name}: {shape.params:,} params ({shape.params / 1e6:.1f}M)")
        head.append("layout     CPU (layout.gpus_per_node 0): no GPU memory plan")
        head += [f"note: {w}" for w in warns]
        return "\n".join(head + ["verdict: OK (CPU run)"])
    plan = memory_plan(cfg)
    plan.warnings[:0] = warns
    text = "\n".join(head + [format_memory(plan)])
    if not plan.fits:
        raise UserError(f"{cfg.preset or 'preset'}: the layout does not fit: " + "; ".join(plan.problems) + "\n" + text)
    return text


# --------------------------------------------------------------------------- run plan


def launch_commands(
    cfg: Config, *, algo: str | None = None, replay=None, async_: bool = False, run_dir=None
) -> list[str]:
    """How to start this run: plain `vespo` on CPU, `torchrun` on one node, or on every node
    (with `$NODE_RANK` and `$MASTER_ADDR` placeholders)."""
    preset = cfg.preset or "PRESET"
    try:  # a preset given as a path is launched by that path
        preset_path(preset)
    except UserError:
        preset = f"{preset}.yaml"
    args = f"train --preset {preset}"
    if algo:
        args += f" --algo {algo}"
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


def describe_plan(cfg: Config, run_dir=None, replay=None, async_: bool = False) -> str:
    """The resolved plan of a training run: schedule, sizes, launch line, memory (for --dry-run)."""
    t, r = cfg.trainer, cfg.rollout
    mode = "replay" if replay is not None else "async" if async_ else "sync"
    modes = {
        "sync": "sync: sample a rollout batch with the current weights, then train N steps on it",
        "replay": f"replay: train on existing shards in {replay} (no sampling)",
        "async": f"async: {t.async_workers} rollout worker(s) follow published weights; shards older than "
        f"{t.max_staleness} policy versions are dropped",
    }
    mbs, N, n = t.minibatch_prompts, t.staleness, r.n
    gbs = mbs * N
    batches = math.ceil(t.steps / N)
    last = t.steps - (batches - 1) * N
    seq = cfg.data.max_prompt_tokens + r.max_tokens
    lines = [f"plan: {cfg.preset or 'run'} ({cfg.model.path}, objective {cfg.algorithm.objective})"]
    rows = [
        ("mode", modes[mode]),
        ("run dir", str(run_dir) if run_dir is not None else "-"),
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
    if cfg.eval.benchmarks:
        every = f"every {cfg.eval.every} steps and at the end" if cfg.eval.every else "at the end"
        rows.append(
            ("eval", f"{', '.join(cfg.eval.benchmarks)} {every} (k per benchmark: {cfg.eval.k or 'the paper default'})")
        )
    algo = _algo_flag(cfg)
    (cmd,) = launch_commands(cfg, algo=algo, replay=replay, async_=async_, run_dir=run_dir)
    lay = cfg.layout
    if lay.gpus_per_node and lay.nodes - (lay.rollout_gpus // lay.gpus_per_node if lay.nodes > 1 else 0) > 1:
        where = f"launch (on each of the {lay.nodes} nodes: NODE_RANK 0..{lay.nodes - 1}, MASTER_ADDR = node 0)"
    else:
        where = "launch"
    if mode == "async" and lay.rollout_gpus:
        rows.append(
            (
                "rollout GPUs",
                f"{lay.rollout_gpus} dedicated; on each worker GPU: CUDA_VISIBLE_DEVICES=K "
                f"vespo rollout --follow {run_dir or 'RUN_DIR'} --worker wK",
            )
        )
    proto = _protocol_summary(cfg)
    rows += [("protocol" if i == 0 else "", line) for i, line in enumerate(proto)]
    width = max(len(k) for k, _ in rows) + 4
    for key, value in rows:
        wrapped = textwrap.wrap(value, 80 - width, break_on_hyphens=False, break_long_words=False) or [""]
        lines.append(f"  {key:<{width - 2}}{wrapped[0]}")
        lines += [" " * width + w for w in wrapped[1:]]
    lines.append("")
    lines.append(where)
    lines += ["  " + w for w in shell_wrap(cmd, 76)]
    lines.append("")
    lines.append("memory plan")
    if cfg.layout.gpus_per_node < 1:
        lines.append("  CPU run (layout.gpus_per_node 0): no GPU memory plan")
        return "\n".join(lines)
    try:
        plan = memory_plan(cfg, mode=mode)
        plan.warnings[:0] = _check_config(cfg)
        lines += ["  " + s if s else "" for s in format_memory(plan).splitlines()]
    except UserError as e:
        lines.append(f"  unavailable: {e}")
    return "\n".join(lines)
