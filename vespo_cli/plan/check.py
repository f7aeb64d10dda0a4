"""`vespo presets --check`: a preset against the paper's protocol, its config's consistency, and its
layout fitted on paper (`check_preset`; UserError with the numbers when it does not fit)."""

from __future__ import annotations

import math

from ..config import PAPER_TEMPLATE, Config
from ..errors import UserError
from .memory import format_memory, memory_plan
from .models import model_shape

# The paper's protocol (docs/paper.md, "The protocol"): what the paper presets must match.
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


def check_config(cfg: Config) -> list[str]:
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


def protocol_summary(cfg: Config) -> list[str]:
    """Empty unless `cfg` trains on the paper's data; then "the paper's" or its deviations."""
    if cfg.data.train != PAPER_PROTOCOL["data.train"]:
        return []
    dev = protocol_deviations(cfg)
    return (
        ["the paper's (docs/paper.md, the protocol), no deviation"]
        if not dev
        else ["deviates from the paper's:"] + [f"  - {d}" for d in dev]
    )


def check_preset(cfg: Config) -> str:
    """Validate a resolved preset and fit its layout on paper; UserError (exit 2) if it does not fit."""
    warns = check_config(cfg)
    head = [f"preset     {cfg.preset or '(none)'}"] + ([f"           {cfg.description}"] if cfg.description else [])
    proto = protocol_summary(cfg)
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
