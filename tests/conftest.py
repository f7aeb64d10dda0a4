"""Shared fixtures. Built models are cached under $VESPO_CACHE/models (default ~/.cache/vespo/models),
so only the first run pays for building them (tiny: ~10 s; smollm2-135m conversion: ~30 s)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports vLLM / matplotlib: in-process engine, caches out of the home directory.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(tempfile.gettempdir(), "vespo-tests-vllm-cache"))
os.environ.setdefault("MPLCONFIGDIR", os.path.join(tempfile.gettempdir(), "vespo-tests-mpl"))


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """Checkpoint dir of the tiny random Llama (fp32, SmolLM2 tokenizer + chat template)."""
    from vespo_cli.models import resolve_model

    return resolve_model("tiny")


@pytest.fixture(scope="session")
def smollm2_model_path() -> str:
    """Checkpoint dir of the real SmolLM2-135M-Instruct (bf16). Use only in @pytest.mark.slow tests."""
    from vespo_cli.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    """The SmolLM2 tokenizer (same for tiny and smollm2-135m); eos = pad = <|im_end|> (id 2)."""
    from vespo_cli.models import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture(scope="session")
def chat_prompts(tokenizer) -> list[list[int]]:
    """Three chat-templated prompts of different lengths, as token ids."""
    questions = ["What is 2 + 3?", "hi", "Tom has 7 apples and eats 2. How many are left? Think step by step."]
    return [
        list(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )
        for q in questions
    ]


def redraw_rewards(src: Path, out: Path, seed: int = 0) -> Path:
    """Copy the shards of `src` to `out` with random 0/1 rewards, so advantages are non-zero (a random
    tiny model never answers arithmetic right; tests of the trainer need a gradient, not a reward)."""
    import numpy as np
    import pyarrow as pa

    from vespo_cli.shards import list_shards, read_shard, write_shard

    rng = np.random.default_rng(seed)
    for f in list_shards(src):
        t = read_shard(f)
        reward = rng.integers(0, 2, t.num_rows).astype(np.float32)
        t = t.set_column(t.schema.get_field_index("reward"), "reward", pa.array(reward, pa.float32()))
        t = t.set_column(t.schema.get_field_index("correct"), "correct", pa.array(reward > 0))
        write_shard(t, out / f.name)
    return out
