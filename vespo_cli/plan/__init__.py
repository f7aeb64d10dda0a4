"""Paper-scale planning: exact parameter counts (`models`), the per-GPU memory model (`memory`), the
layout's engines and throughput assumption (`layout`), and `vespo presets --check` (`check`). What
`vespo train --dry-run` prints is `vespo_cli/dryrun.py`."""

from .check import PAPER_PROTOCOL, check_config, check_preset, protocol_deviations, protocol_summary
from .memory import MemoryPlan, Row, format_memory, memory_plan
from .models import KNOWN_MODELS, GiB, ModelShape, hf_config, known_model, model_shape

__all__ = [
    "GiB",
    "KNOWN_MODELS",
    "PAPER_PROTOCOL",
    "MemoryPlan",
    "ModelShape",
    "Row",
    "check_config",
    "check_preset",
    "describe_plan",
    "format_memory",
    "hf_config",
    "known_model",
    "launch_commands",
    "memory_plan",
    "model_shape",
    "protocol_deviations",
    "protocol_summary",
    "shell_wrap",
]


def __getattr__(name: str):
    """describe_plan, launch_commands, shell_wrap live with the CLI's dry run (vespo_cli/dryrun.py)."""
    if name in ("describe_plan", "launch_commands", "shell_wrap"):
        from .. import dryrun

        return getattr(dryrun, name)
    raise AttributeError(name)
