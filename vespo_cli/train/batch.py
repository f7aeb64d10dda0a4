"""Rollout batch → minibatches (staleness N) → token-budget microbatches.

A rollout batch is gbs prompt groups (n samples each). It is split into N = gbs/mbs minibatches of
whole groups; each minibatch becomes one optimizer step. A minibatch is cut into microbatches by a
token budget after sorting rows by length, where cutting minimises padding (`plan_microbatches`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from ..shards import reward_failure_counts


@dataclass
class Rows:
    """Per-sequence data of a set of shard rows, as Python lists / tensors (CPU)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rollout_logprobs: list[list[float] | None]
    rewards: torch.Tensor  # [B] float32
    correct: torch.Tensor  # [B] bool
    group_ids: list[str]
    policy_versions: torch.Tensor  # [B] int64
    shard_ids: list[str]
    routing: list | None = None
    reward_errors: list[str | None] | None = None  # per row: null, "timeout" or the exception type

    def __len__(self) -> int:
        return len(self.response_ids)

    def select(self, idx) -> Rows:
        idx = list(idx)
        pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
        return Rows(
            pick(self.prompt_ids),
            pick(self.response_ids),
            pick(self.rollout_logprobs),
            self.rewards[idx],
            self.correct[idx],
            pick(self.group_ids),
            self.policy_versions[idx],
            pick(self.shard_ids),
            pick(self.routing) if self.routing is not None else None,
            pick(self.reward_errors) if self.reward_errors is not None else None,
        )


def rows_from_table(table: pa.Table) -> Rows:
    routing = table.column("routing").to_pylist()
    return Rows(
        prompt_ids=table.column("prompt_token_ids").to_pylist(),
        response_ids=table.column("response_token_ids").to_pylist(),
        rollout_logprobs=table.column("rollout_logprobs").to_pylist(),
        rewards=torch.tensor(table.column("reward").to_numpy(zero_copy_only=False), dtype=torch.float32),
        correct=torch.tensor(table.column("correct").to_numpy(zero_copy_only=False), dtype=torch.bool),
        group_ids=table.column("group_id").to_pylist(),
        policy_versions=torch.tensor(table.column("policy_version").to_numpy(zero_copy_only=False), dtype=torch.int64),
        shard_ids=table.column("shard_id").to_pylist(),
        routing=routing if any(r is not None for r in routing) else None,
        reward_errors=table.column("reward_error").to_pylist() if "reward_error" in table.column_names else None,
    )


def reward_failures(rows: Rows, idx: list[int]) -> dict[str, int]:
    """`reward_errors` (the grader raised) and `reward_timeouts` among rows `idx`."""
    return reward_failure_counts([rows.reward_errors[i] for i in idx] if rows.reward_errors is not None else [])


def split_minibatches(group_ids: list[str], num_minibatches: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffle whole groups and deal them into `num_minibatches` minibatches of row indices."""
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    keys = list(groups)
    order = torch.randperm(len(keys), generator=generator).tolist()
    per = len(keys) // num_minibatches
    out = []
    for m in range(num_minibatches):
        chosen = (
            [keys[j] for j in order[m * per : (m + 1) * per]]
            if m < num_minibatches - 1
            else [keys[j] for j in order[m * per :]]
        )
        out.append([i for g in chosen for i in groups[g]])
    return out


@dataclass
class Microbatch:
    """Right-padded token tensors for a few rows plus per-response-token aligned tensors."""

    rows: list[int]  # indices into the minibatch
    input_ids: torch.Tensor  # [b, L]
    attention_mask: torch.Tensor  # [b, L]
    position_ids: torch.Tensor  # [b, L]
    response_mask: torch.Tensor  # [b, L] bool: positions holding response tokens
    mask: torch.Tensor  # [b, T] bool: response token t of row i exists (T = longest response)
    routing: list | None = None

    def unflatten(self, flat: torch.Tensor) -> torch.Tensor:
        """[num_response_tokens] (row-major over rows) → [b, T] zero-padded."""
        out = flat.new_zeros(self.mask.shape)
        out[self.mask] = flat
        return out

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> Microbatch:
        """The same microbatch with its tensors on `device` (built on the CPU, used on the model's)."""
        if torch.device(device) == self.input_ids.device:
            return self
        return replace(
            self,
            **{
                k: getattr(self, k).to(device, non_blocking=True)
                for k in ("input_ids", "attention_mask", "position_ids", "response_mask", "mask")
            },
        )


def make_microbatch(rows: Rows, idx: list[int], pad_id: int = 0) -> Microbatch:
    lengths = [len(rows.prompt_ids[i]) + len(rows.response_ids[i]) for i in idx]
    resp_lens = [len(rows.response_ids[i]) for i in idx]
    L, T = max(lengths), max(max(resp_lens), 1)
    b = len(idx)
    input_ids = torch.full((b, L), pad_id, dtype=torch.long)
    attention = torch.zeros((b, L), dtype=torch.long)
    response = torch.zeros((b, L), dtype=torch.bool)
    for r, i in enumerate(idx):
        p, y = rows.prompt_ids[i], rows.response_ids[i]
        input_ids[r, : len(p) + len(y)] = torch.tensor(p + y, dtype=torch.long)
        attention[r, : len(p) + len(y)] = 1
        response[r, len(p) : len(p) + len(y)] = True
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(resp_lens).unsqueeze(1)
    routing = [rows.routing[i] for i in idx] if rows.routing is not None else None
    return Microbatch(idx, input_ids, attention, position_ids, response, mask, routing)


MICROBATCH_OVERHEAD_TOKENS = 256  # fixed cost of one more microbatch (weight casts, per-op launches), in padded tokens
MAX_ROWS_PER_MICROBATCH = 1024  # bounds the planner's search (rows per microbatch)


def plan_microbatches(rows: Rows, idx: list[int], token_budget: int) -> list[list[int]]:
    """Group row indices into microbatches of at most `token_budget` padded tokens (longest first).

    Rows are sorted longest first and cut into contiguous runs (a microbatch is padded to its first
    row's length); the cuts minimise padded tokens + MICROBATCH_OVERHEAD_TOKENS per microbatch by
    dynamic programming, so a few long rows no longer pad many short ones to their length. A row
    longer than the budget is a microbatch of its own."""
    length = {i: len(rows.prompt_ids[i]) + len(rows.response_ids[i]) for i in idx}
    order = sorted(idx, key=lambda i: -length[i])
    widths = [length[i] for i in order]
    n = len(order)
    cost = [0.0] + [float("inf")] * n  # cost[j]: best plan for the first j rows
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j - 1, max(j - MAX_ROWS_PER_MICROBATCH, 0) - 1, -1):  # last microbatch = order[i:j]
            size = j - i
            if size > 1 and size * widths[i] > token_budget:
                break  # earlier i: wider and more rows
            c = cost[i] + size * widths[i] + MICROBATCH_OVERHEAD_TOKENS
            if c < cost[j]:
                cost[j], start[j] = c, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[start[j] : j])
        j = start[j]
    return out[::-1]


def padded(
    values: list[list[float] | torch.Tensor | None], idx: list[int], T: int, fill: float = float("nan")
) -> torch.Tensor:
    """[b, T] float32 from ragged lists or 1-D CPU tensors (missing → `fill`, padding → 0)."""
    out = torch.zeros((len(idx), T), dtype=torch.float32)
    for r, i in enumerate(idx):
        v = values[i]
        if v is None:
            out[r, :] = fill
        elif len(v):
            out[r, : len(v)] = torch.as_tensor(np.asarray(v, dtype=np.float32))
    return out
