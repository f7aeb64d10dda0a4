"""Model shapes for planning: the public config numbers of the paper's models, and exact parameter
counts from instantiating a model on the `meta` device (no weights, no hub)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..models import TINY_CONFIG

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB"


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
    "tiny": dict(arch="llama", published=None, vocab_size=49152, **TINY_CONFIG),  # its shape: models.py
}
# the instruct / base twins share their architecture numbers
_ALIASES = {
    "Qwen/Qwen3-8B": "Qwen/Qwen3-8B-Base",
    "Qwen/Qwen3-30B-A3B": "Qwen/Qwen3-30B-A3B-Base",
    "Qwen/Qwen3-0.6B": "Qwen/Qwen3-0.6B-Base",
    "meta-llama/Llama-3.2-3B": "meta-llama/Llama-3.2-3B-Instruct",
}


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


def routed_experts(conf) -> int:
    """Routed experts per MoE layer declared by a `transformers` config (0: a dense model)."""
    text = conf.get_text_config() if hasattr(conf, "get_text_config") else conf
    return int(_num(text, "num_experts", "num_local_experts", "n_routed_experts"))


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
    experts = routed_experts(conf)
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
