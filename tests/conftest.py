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


SHARD_T0 = 1_700_000_000_000  # created_at of the test shards, ms


def make_shard_rows(rows: int = 4, version: int = 0, *, tag: str = "v", **columns) -> dict:
    """A valid shard as column lists, in the order of the one shard schema (vespo_cli.shards.SCHEMA).

    The tests' only list of shard columns: a required column the schema gains fails here until it has a
    default. Defaults: groups of 2 samples, shard "{tag}{version}", groups "{tag}{version}-g<i // 2>",
    prompts p<i // 2> of tokens [1, 2, 3 + i // 2], responses of 3-5 tokens at logprob -0.25, rewards 1/0
    alternating, correct = reward > 0, finish "stop", created_at SHARD_T0. `columns` replace defaults or add
    optional columns, by name."""
    from vespo_cli.shards import OPTIONAL, SCHEMA

    unknown = sorted(set(columns) - set(SCHEMA.names))
    assert not unknown, f"make_shard_rows: {unknown} are not shard columns"
    responses = columns.get("response_token_ids", [list(range(10, 13 + i % 3)) for i in range(rows)])
    reward = columns.get("reward", [float(i % 2 == 0) for i in range(rows)])
    defaults = {
        "run_id": ["run"] * rows,
        "shard_id": [f"{tag}{version}"] * rows,
        "policy_version": [version] * rows,
        "engine": ["hf"] * rows,
        "engine_dtype": ["float32"] * rows,
        "temperature": [1.0] * rows,
        "top_p": [1.0] * rows,
        "top_k": [-1] * rows,
        "prompt_id": [f"p{i // 2}" for i in range(rows)],
        "group_id": [f"{tag}{version}-g{i // 2}" for i in range(rows)],
        "sample_idx": [i % 2 for i in range(rows)],
        "prompt_token_ids": [[1, 2, 3 + i // 2] for i in range(rows)],
        "response_token_ids": responses,
        "reward": reward,
        "finish_reason": ["stop"] * rows,
        "created_at": [SHARD_T0] * rows,
    }
    if "rollout_logprobs" not in columns:  # derived only when not given (a test's own columns may not allow it)
        defaults["rollout_logprobs"] = [[-0.25] * len(r) for r in responses]
    if "correct" not in columns:
        defaults["correct"] = [r > 0 for r in reward]
    cols = {**defaults, **columns}
    missing = [f.name for f in SCHEMA if f.name not in cols and f.name not in OPTIONAL]
    assert not missing, f"make_shard_rows: give the new shard column(s) {missing} a default"
    return {name: cols[name] for name in SCHEMA.names if name in cols}
