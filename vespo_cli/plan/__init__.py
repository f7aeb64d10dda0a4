"""Paper-scale planning: exact parameter counts (`models`), the per-GPU memory model (`memory`), the
layout's engines and throughput assumption (`layout`), and `vespo presets --check` (`check`). What
`vespo train --dry-run` prints (schedule, launch lines) is `vespo_cli/dryrun.py`, next to the CLI."""

from ..models import KNOWN_MODELS, hf_config, known_model  # model configs: the loader's (models.py)
from .check import PAPER_PROTOCOL, check_config, check_preset, protocol_deviations, protocol_summary
from .memory import MemoryPlan, Row, format_memory, memory_plan
from .models import GiB, ModelShape, model_shape

__all__ = [
    "GiB",
    "KNOWN_MODELS",
    "PAPER_PROTOCOL",
    "MemoryPlan",
    "ModelShape",
    "Row",
    "check_config",
    "check_preset",
    "format_memory",
    "hf_config",
    "known_model",
    "memory_plan",
    "model_shape",
    "protocol_deviations",
    "protocol_summary",
]
