"""Run by tests/test_groups.py under `torchrun --nproc-per-node 2`: the two ranks form one engine group
(rollout/groups.py) and share one vLLM engine, tensor parallel 2, in vLLM's external-launcher mode;
each rank writes what it sampled (first, after pushing weights with a zeroed final norm, after
pushing the original weights back) to <out>/rank<r>.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(model_path: str, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from vespo_cli.rollout.base import Sampling
    from vespo_cli.rollout.groups import engine_group, vllm_parallel_args
    from vespo_cli.rollout.vllm import VLLMEngine
    from vespo_cli.train import dist

    dist.init()
    rank, world = dist.rank(), dist.world_size()
    group = engine_group(rank, world, 2, int(os.environ["LOCAL_WORLD_SIZE"]))
    args = vllm_parallel_args(2, world)
    engine = VLLMEngine(model_path, dtype="float32", max_model_len=256, kv_cache_bytes=64 * 2**20, **args)
    sampling = Sampling(max_tokens=8, seed=3)

    def rows():
        out = engine.generate([[1, 2, 3, 4], [5, 6, 7]], 2, sampling)
        return [[c.prompt_index, c.sample_idx, c.response_token_ids] for c in out]

    first = rows()
    state = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).state_dict()
    engine.load_state_dict({**state, "model.norm.weight": torch.zeros_like(state["model.norm.weight"])})
    zeroed = rows()
    engine.load_state_dict(state)
    back = rows()
    record = {"group": list(group.ranks), "leader": group.leader, "first": first, "zeroed": zeroed, "back": back}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    engine.close()
    dist.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
