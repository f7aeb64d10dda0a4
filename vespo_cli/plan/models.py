"""Model shapes for planning: exact parameter counts from instantiating a model on the `meta` device
(no weights, no hub), from the config `models.hf_config` gives (the paper's models: `models.KNOWN_MODELS`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ..errors import UserError
from ..models import config_value, hf_config, known_model, routed_experts

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def gib(b: float) -> str:
    return f"{b / GiB:.1f} GiB"


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
    top_k = int(config_value(text, "num_experts_per_tok", "moe_topk")) if experts else 0
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
    heads = int(config_value(text, "num_attention_heads"))
    hidden = int(config_value(text, "hidden_size"))
    entry = known_model(spec)
    return ModelShape(
        name=spec,
        source=source,
        params=total,
        active_params=active,
        root_params=root,
        max_layer_params=max(per_layer.values(), default=0),
        layers=int(config_value(text, "num_hidden_layers")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(config_value(text, "num_key_value_heads", default=heads)),
        head_dim=int(config_value(text, "head_dim", default=hidden // max(heads, 1))),
        intermediate=int(config_value(text, "moe_intermediate_size", "intermediate_size"))
        if experts
        else int(config_value(text, "intermediate_size")),
        vocab=int(config_value(text, "vocab_size")),
        tied=bool(getattr(conf, "tie_word_embeddings", False)),
        experts=experts,
        top_k=top_k,
        max_positions=int(config_value(text, "max_position_embeddings")),
        published=entry.get("published") if entry else None,
    )
