"""The sync loop's sampler: an engine on every sampling rank that follows the trainer's weights
(docs/training.md "Three regimes"; sources.sync_batches gives each its share of a rollout batch).

After each batch every engine takes the new weights (`publish`): the FSDP shards gathered on every
rank (a tensor-parallel engine's ranks each take the whole weights and keep their slice), a
collective of all ranks. Where the engine shares the trainer's module (one process, HF engine in the model's dtype:
`rollout.sampling.trainer_engine`), there is nothing to publish."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..config import Config
from ..rollout.base import Engine
from . import dist


@dataclass
class Sampler:
    engine: Engine
    sample: Callable[..., dict]  # (problems, version, path, seed, iteration, first) → sample_to_shard's stats
    publish: Callable[[], None]  # the trainer's current weights to the engine


@contextlib.contextmanager
def sync_sampler(cfg: Config, run_id: str, model, tokenizer, model_path: str) -> Iterator[Sampler]:
    """The sampler of sync run `run_id` (the prefix of its group ids), its engine and reward scorer open
    until the block exits."""
    from ..rewards import scorer_for
    from ..rollout.sampling import ShardWriter, trainer_engine

    engine, shared = trainer_engine(cfg, model, tokenizer, model_path, dist.world_size())
    publish = (lambda: None) if shared else (lambda: engine.load_state_dict(dist.full_state_dict(model, True)))
    with contextlib.ExitStack() as stack:
        stack.callback(engine.close)
        writer = ShardWriter(engine, tokenizer, stack.enter_context(scorer_for(cfg)), cfg, run_id)

        def sample(problems, version, path, seed, iteration, first: int = 0) -> dict:
            """Prompts first.. of rollout batch `iteration` into the shard `path` (None: generate only,
            on a tensor-parallel engine's rank that is not its group's leader)."""
            was_training = model.training
            model.eval()
            stats = writer.write(problems, version=version, path=path, seed=seed, group=str(iteration), first=first)
            model.train(was_training)
            return stats

        yield Sampler(engine, sample, publish)
