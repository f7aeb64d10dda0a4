"""The engine interface: every rollout engine (vLLM, HF transformers) implements exactly this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


def request_seed(seed: int, prompt_index: int) -> int:
    """A distinct per-prompt seed: a prompt's samples are a function of (seed, its index in the batch),
    whichever process or call samples it (vLLM gives the n children of a request seed + i)."""
    x = (seed * 0x9E3779B97F4A7C15 + prompt_index * 0xBF58476D1CE4E5B9 + 1) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 29
    return int(x % (2**31 - 2**20))  # leaves room for + i (i < 2**20) below 2**31


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters, recorded with every sample (shard columns temperature/top_p)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 = disabled
    max_tokens: int = 256
    seed: int | None = 0
    # the first prompt's index in its rollout batch: prompt i samples with request_seed(seed, offset + i)
    prompt_offset: int = 0


@dataclass
class Completion:
    """One sampled response. `rollout_logprobs[t]` is the engine's log-probability of
    `response_token_ids[t]` under the (unprocessed, temperature-1) model distribution."""

    prompt_index: int  # index into the `prompts` list given to generate()
    sample_idx: int  # 0..n-1 within the prompt's group
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    rollout_logprobs: list[float]
    finish_reason: str  # "stop" (EOS/stop token) | "length" (max_tokens)
    text: str = ""
    routing: list | None = field(default=None, repr=False)  # MoE routing replay, optional


class Engine(Protocol):
    name: str  # its key in engines.REGISTRY
    dtype: str  # "bfloat16" | "float32" | ...

    def generate(self, prompts: list[list[int]], n: int, sampling: Sampling) -> list[Completion]:
        """Sample `n` responses for each prompt (token ids, chat template already applied).
        Returns len(prompts) * n completions ordered by (prompt_index, sample_idx)."""
        ...

    def load_weights(self, checkpoint_dir: str) -> None:
        """Take new weights from an HF checkpoint directory without restarting the engine."""
        ...

    def load_state_dict(self, state_dict) -> None:
        """Take new weights from an in-memory HF state dict (the trainer's full weights after a
        rollout batch) without restarting the engine."""
        ...

    def close(self) -> None: ...
