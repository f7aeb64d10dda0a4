"""Process-wide settings, applied once by each entry point (the CLI, async workers, compare and bench
children) through `configure()`; importing `vespo_cli` changes nothing.

* environment defaults: vLLM's engine in this process, no tokenizer fork warnings, quiet libraries
  (a value the user set is kept); third-party FutureWarnings and torch's "Triton not available" out of
  the default output (VESPO_DEBUG=1 keeps them);
* the glibc allocator thresholds (`malloc.tune_malloc`, off with VESPO_MALLOC_TUNING=0);
* torch's intra-op threads, where a config asks for a number (`set_threads`).
"""

from __future__ import annotations

import logging
import os
import warnings

ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in this process: weights can be handed to it in memory
    "TOKENIZERS_PARALLELISM": "false",  # no fork-after-parallelism warnings from workers
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "VLLM_LOGGING_LEVEL": "ERROR",
}

_configured: dict[str, bool] = {}


def configure() -> dict[str, bool]:
    """Apply the environment defaults and the allocator tuning; idempotent. Returns what took effect
    ({"malloc_tuned": ...})."""
    if not _configured:
        from .malloc import tune_malloc

        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        _configured["malloc_tuned"] = tune_malloc()
        if os.environ.get("VESPO_DEBUG") != "1":
            _quiet_libraries()
    return dict(_configured)


def _quiet_libraries() -> None:
    """Keep library noise a user cannot act on out of the output: other packages' FutureWarnings
    (deprecations inside transformers/torch/vLLM) and torch's warning that Triton is absent (CPU builds)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


def set_threads(threads: int) -> None:
    """torch's intra-op threads (trainer.threads; 0 keeps torch's default, every core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
