"""Which ranks of a torchrun job share one rollout engine (`rollout.tensor_parallel_size` = k).

With k = 1 every rank samples with its own engine. With k > 1 each block of k consecutive global
ranks runs one vLLM engine in tensor parallel, inside the training job: vLLM's external-launcher
mode (`LLM(distributed_executor_backend="external_launcher")`, as verl's hybrid engine uses it),
where every rank of the block builds the engine over its 1/k of the weights and the block's
`generate` calls run in lockstep. vLLM builds its tensor-parallel groups the same way,
`arange(W).reshape(-1, k)` (vllm.distributed.parallel_state.initialize_model_parallel, the leading
dimension being independent data-parallel engines), and torchrun numbers ranks node by node, so a
group stays inside one node when k divides the ranks per node.

The contract for the trainer's sync rollout (the loop calls `engine_group(rank, W, k, ranks_per_node)`):

- the job has `count = W / k` engines; engine `index` samples part `index` of `count` of each
  rollout batch's prompts (train/sources.py: `rank_share(gbs, count, index)`, shard
  `part_name(version, iteration, count, index)`), so with k = 1 this is the rank-per-engine rollout;
- each rank opens its engine with `vllm_parallel_args(k, W, moe)` among vLLM's arguments;
- every rank of a group builds the engine, takes every weight publish, and calls `generate` with
  the group's prompts and the same sampling parameters and request seeds; all k get the same
  completions (vLLM's external launcher requires identical calls: deterministic scheduling);
- only the group's `leader` (its first rank, vLLM's tensor-parallel rank 0) scores the completions
  and writes the part's shard; the other k − 1 ranks write nothing and read the parts like any rank.

`vllm_parallel_args` gives the engine's parallel arguments for a group; `check_engine_groups` the
one-line errors for a layout that cannot be grouped.
"""

from __future__ import annotations

from dataclasses import dataclass

from vespo_cli.errors import UserError


@dataclass(frozen=True)
class EngineGroup:
    """One engine: data-parallel part `index` of `count`, run by global `ranks` (k consecutive)."""

    index: int
    count: int
    ranks: tuple[int, ...]

    @property
    def leader(self) -> int:
        """The rank that writes this engine's shard part (vLLM's tensor-parallel rank 0)."""
        return self.ranks[0]

    @property
    def size(self) -> int:
        return len(self.ranks)


def check_engine_groups(world_size: int, tp: int, ranks_per_node: int | None = None) -> None:
    """UserError unless `tp` engines' groups tile `world_size` ranks without crossing a node."""
    if tp < 1 or world_size < 1:
        raise UserError(f"rollout.tensor_parallel_size: {tp} ranks per engine over {world_size} ranks: expected ≥ 1")
    if world_size % tp:
        raise UserError(
            f"rollout.tensor_parallel_size: {tp} must divide the job's {world_size} ranks (one engine per {tp} ranks)"
        )
    per_node = ranks_per_node or world_size
    if world_size % per_node:
        raise UserError(f"{world_size} ranks are not whole nodes of {per_node} ranks (torchrun --nproc-per-node)")
    if per_node % tp:
        raise UserError(
            f"rollout.tensor_parallel_size: {tp} must divide the {per_node} ranks per node "
            "(an engine's tensor-parallel group stays inside a node)"
        )


def engine_groups(world_size: int, tp: int, ranks_per_node: int | None = None) -> list[EngineGroup]:
    """Every engine group of a `world_size`-rank job: group g is ranks g·tp … g·tp + tp − 1."""
    check_engine_groups(world_size, tp, ranks_per_node)
    count = world_size // tp
    return [EngineGroup(g, count, tuple(range(g * tp, (g + 1) * tp))) for g in range(count)]


def engine_group(rank: int, world_size: int, tp: int, ranks_per_node: int | None = None) -> EngineGroup:
    """The engine group that global `rank` belongs to (`engine_groups`' group rank // tp)."""
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside the job's {world_size} ranks")
    return engine_groups(world_size, tp, ranks_per_node)[rank // tp]


def vllm_parallel_args(tp: int, world_size: int, moe: bool = False) -> dict:
    """vLLM `LLM(...)` parallel arguments for one engine of a `world_size`-rank job: inside torchrun
    (world_size > 1) the external launcher, which takes RANK/LOCAL_RANK from torchrun's environment and
    needs in-process engines; an MoE model's experts are split over the group (expert parallel, EP = tp)
    rather than each expert's matrices sliced k ways."""
    args: dict = {"tensor_parallel_size": tp}
    if world_size > 1:
        args["distributed_executor_backend"] = "external_launcher"
    if moe and tp > 1:
        args["enable_expert_parallel"] = True
    return args
