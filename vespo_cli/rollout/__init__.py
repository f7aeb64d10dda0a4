"""Rollout engines behind one interface (`base.Engine`): vLLM (default) or plain HF transformers."""

from __future__ import annotations

import importlib
import importlib.util

from vespo_cli.engines import ENGINES, REGISTRY  # the engines by name (a new one: a line there)
from vespo_cli.errors import EngineError, UserError
from vespo_cli.rollout.base import Completion, Engine, Sampling

__all__ = ["ENGINES", "REGISTRY", "Completion", "Engine", "Sampling", "make_engine", "share_engine", "vllm_available"]


def vllm_available() -> bool:
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def make_engine(kind: str, model_path: str, **opts) -> Engine:
    """The engine registered as `kind`, opened on `model_path`; `opts` go to its constructor (dtype, seed, ...).
    An engine that fails to open is one line (EngineError), not the engine's traceback."""
    engine_cls = _engine_class(kind)
    try:
        return engine_cls(model_path, **opts)
    except (UserError, OSError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise EngineError(
            f"rollout.engine={kind}: could not open {model_path} ({type(e).__name__}: {first[:300]}); "
            "--debug shows the traceback"
        ) from e


def share_engine(kind: str, module, tokenizer, **opts) -> Engine:
    """The engine registered as `kind` over an already-loaded model (e.g. the trainer's): no copy, the
    weights stay live. Only engines with a `from_module` constructor (HF) can share."""
    engine_cls = _engine_class(kind)
    if not hasattr(engine_cls, "from_module"):
        raise UserError(f"rollout.engine={kind}: cannot share the trainer's model (no from_module)")
    return engine_cls.from_module(module, tokenizer, **opts)


def _engine_class(kind: str) -> type:
    if kind not in REGISTRY:
        raise UserError(f"rollout.engine={kind!r}: expected one of {', '.join(ENGINES)}")
    if kind == "vllm" and not vllm_available():
        raise UserError(
            "rollout.engine=vllm: vllm is not installed; use --set rollout.engine=hf "
            "(or install the cpu/gpu extra: `make setup`)"
        )
    module, _, cls = REGISTRY[kind].partition(":")
    try:
        engine_cls = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise UserError(
            f"rollout.engine={kind}: {module} failed to import ({exc}); use --set rollout.engine=hf"
        ) from None
    return engine_cls
