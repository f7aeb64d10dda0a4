"""The probe's samples: a fresh draw into a shard, the behaviour data read from `--shards DIR`, and the
synthetic `--reward even-tokens`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import torch

from ..errors import UserError
from ..shards import ShardError, list_shards, read_shard, write_shard
from ..train.batch import rows_from_table
from .gradients import Batch, batch_of


def even_token_share(responses: Sequence[Sequence[int]]) -> list[float]:
    """`--reward even-tokens`: the share of a response's tokens with an even id. A synthetic reward
    that every policy, a random one included, has variance on: for probing the estimators where the
    grader scores 0 everywhere (the `tiny` preset's random model)."""
    return [sum(1 for x in y if x % 2 == 0) / max(len(y), 1) for y in responses]


def even_token_reward(path: Path) -> None:
    """Rewrite a shard's rewards with `even_token_share`; `correct` = reward > ½."""
    t = read_shard(path)
    reward = even_token_share(t.column("response_token_ids").to_pylist())
    t = t.set_column(t.schema.get_field_index("reward"), "reward", pa.array(reward, pa.float32()))
    t = t.set_column(t.schema.get_field_index("correct"), "correct", pa.array([r > 0.5 for r in reward]))
    write_shard(t, path)


def sample(sampler, problems, path: Path, version: int, seed: int, reward: str) -> Batch:
    """Sample n responses per problem with the current weights into the shard `path`."""
    sampler(problems, version, path, seed, path.stem)
    if reward == "even-tokens":
        even_token_reward(path)
    return batch_of(rows_from_table(read_shard(path)))


def shard_batch(cfg, tokenizer, shards: Path, prompts: int, reward: str) -> tuple[Batch, list]:
    """The first `prompts` prompt groups of a shard directory, and their problems (for grading fresh
    samples of the same prompts) looked up by prompt_id in the config's data source."""
    table = _first_groups(shards, prompts)
    rows = rows_from_table(table)
    if reward == "even-tokens":
        rows.rewards = torch.tensor(even_token_share(rows.response_ids), dtype=torch.float32)
    batch = batch_of(rows)
    return batch, _problems_of(cfg, tokenizer, shards, batch, table.column("prompt_id").to_pylist())


def _first_groups(shards: Path, prompts: int) -> pa.Table:
    """The rows of the first `prompts` prompt groups (in order of first appearance) of the shards."""
    tables = []
    for f in list_shards(shards):
        try:
            tables.append(read_shard(f))
        except ShardError as e:
            raise UserError(f"--shards {shards}: {e}") from None
    if not tables:
        raise UserError(f"--shards {shards}: no shards (*.parquet) found")
    table = pa.concat_tables(tables)
    first: dict[str, int] = {}
    for i, g in enumerate(table.column("group_id").to_pylist()):
        first.setdefault(g, i)
    keep = list(first)[:prompts]
    if len(keep) < 2:
        raise UserError(f"--shards {shards}: {len(keep)} prompt group(s); the bootstrap needs at least 2")
    wanted = set(keep)
    return table.filter(pa.array([g in wanted for g in table.column("group_id").to_pylist()]))


def _problems_of(cfg, tokenizer, shards: Path, batch: Batch, ids: list) -> list:
    """Each group's problem in the config's data.train, by prompt_id; its prompt must encode as the shard's."""
    from ..data import encode_prompt, load_problems

    pool = {p.id: p for p in load_problems(cfg.data.train, seed=cfg.trainer.seed, difficulty=cfg.data.difficulty)}
    problems = []
    for idx in batch.groups:
        pid = ids[idx[0]]
        if pid not in pool:
            raise UserError(
                f"--shards {shards}: prompt_id {pid!r} is not in data.train={cfg.data.train} "
                f"(fresh samples are graded against its answers; --set data.train=... to the source)"
            )
        problems.append(pool[pid])
        if (
            encode_prompt(tokenizer, pool[pid], cfg.data.template, cfg.data.max_prompt_tokens)
            != batch.rows.prompt_ids[idx[0]]
        ):
            raise UserError(
                f"--shards {shards}: prompt {pid!r} encodes differently under this config's "
                f"data.template (sample fresh responses to the same prompt: use the shards' preset)"
            )
    return problems
