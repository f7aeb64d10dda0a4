"""Rollout engines behind one interface (`base.Engine`): vLLM (default) or plain HF transformers."""
from __future__ import annotations

import importlib.util

from vespo_cli.errors import UserError
from vespo_cli.rollout.base import Completion, Engine, Sampling

ENGINES = ("vllm", "hf")

__all__ = ["ENGINES", "Completion", "Engine", "Sampling", "make_engine", "vllm_available"]


def vllm_available() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def make_engine(kind: str, model_path: str, **opts) -> Engine:
    """`kind` is "vllm" or "hf"; `opts` go to `VLLMEngine` / `HFEngine` (dtype, seed, ...)."""
    if kind == "hf":
        from vespo_cli.rollout.hf import HFEngine

        return HFEngine(model_path, **opts)
    if kind == "vllm":
        if not vllm_available():
            raise UserError("rollout.engine=vllm: vllm is not installed; use --set rollout.engine=hf "
                            "(or install the cpu/gpu extra: `make setup`)")
        try:
            from vespo_cli.rollout.vllm import VLLMEngine
        except ImportError as exc:
            raise UserError(f"rollout.engine=vllm: vllm failed to import ({exc}); use --set rollout.engine=hf") from None
        return VLLMEngine(model_path, **opts)
    raise UserError(f"rollout.engine={kind!r}: expected one of {', '.join(ENGINES)}")
