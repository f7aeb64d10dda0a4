"""rollout/groups.py: which ranks share one tensor-parallel engine, who writes the part, the errors,
and (HF engine on the tiny model) that a group's ranks sample identical rows and the leaders' parts
are the one-engine batch."""

from __future__ import annotations

import pytest

from vespo_cli.errors import UserError
from vespo_cli.rollout.groups import engine_group, engine_groups, vllm_parallel_args


def test_groups_tile_the_world_in_consecutive_blocks():
    groups = engine_groups(16, 4, ranks_per_node=8)
    assert [g.ranks for g in groups] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9, 10, 11), (12, 13, 14, 15)]
    assert [(g.index, g.count, g.leader, g.size) for g in groups] == [(i, 4, 4 * i, 4) for i in range(4)]
    assert engine_group(6, 16, 4, 8) == groups[1] and engine_group(12, 16, 4, 8).leader == 12
    # tp 1: one engine per rank (data-parallel rollout); one process: one group of one
    assert [g.ranks for g in engine_groups(3, 1)] == [(0,), (1,), (2,)]
    assert engine_group(0, 1, 1) == engine_groups(1, 1)[0]
    # the blocks are vLLM's tensor-parallel groups: arange(W).reshape(-1, tp)
    import torch

    assert [tuple(r.tolist()) for r in torch.arange(16).reshape(-1, 4).unbind(0)] == [g.ranks for g in groups]


@pytest.mark.parametrize(
    "world, tp, per_node, message",
    [
        (8, 3, 8, "3 must divide the job's 8 ranks"),
        (16, 4, 6, "not whole nodes of 6 ranks"),
        (12, 4, 6, "4 must divide the 6 ranks per node"),  # a group would cross a node
        (8, 0, 8, "expected ≥ 1"),
    ],
)
def test_layouts_that_cannot_be_grouped(world, tp, per_node, message):
    with pytest.raises(UserError, match=message) as e:
        engine_groups(world, tp, per_node)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="outside"):
        engine_group(8, 8, 1)


def test_vllm_parallel_args():
    assert vllm_parallel_args(1, 1) == {"tensor_parallel_size": 1}
    assert vllm_parallel_args(1, 8) == {"tensor_parallel_size": 1, "distributed_executor_backend": "external_launcher"}
    assert vllm_parallel_args(4, 16, moe=True) == {
        "tensor_parallel_size": 4,
        "distributed_executor_backend": "external_launcher",
        "enable_expert_parallel": True,
    }


def test_hf_groups_sample_the_one_engine_batch(tiny_model_path, chat_prompts):
    """W = 4 ranks, k = 2 (simulated in one process, one HF engine per rank): the ranks of a group,
    given the group's prompts and the batch's seed, return identical completions; the leaders' parts in
    group order are exactly a single engine's batch (per-prompt request seeds, fp32)."""
    from vespo_cli.rollout.base import Sampling
    from vespo_cli.rollout.hf import HFEngine

    prompts = chat_prompts * 2  # 6 prompts: parts of 3
    sampling = Sampling(temperature=1.0, max_tokens=6, seed=11)

    def rows(completions, offset):
        return [(offset + c.prompt_index, c.sample_idx, c.response_token_ids) for c in completions]

    whole = rows(HFEngine(tiny_model_path, dtype="float32").generate(prompts, 2, sampling), 0)
    per_rank = {}
    for rank in range(4):
        g = engine_group(rank, 4, 2, ranks_per_node=4)
        lo, hi = g.index * len(prompts) // g.count, (g.index + 1) * len(prompts) // g.count
        engine = HFEngine(tiny_model_path, dtype="float32")
        out = engine.generate(prompts[lo:hi], 2, Sampling(temperature=1.0, max_tokens=6, seed=11, prompt_offset=lo))
        per_rank[rank] = rows(out, lo)
    assert per_rank[0] == per_rank[1] and per_rank[2] == per_rank[3]
    leaders = [g.leader for g in engine_groups(4, 2, 4)]
    assert sorted(r for leader in leaders for r in per_rank[leader]) == sorted(whole)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_tensor_parallel_group_under_torchrun(tiny_model_path, tmp_path):
    """Two torchrun ranks (gloo, the trainer's dist.init) share one vLLM CPU engine, TP 2, external
    launcher: both sample the same rows, which are a TP-1 engine's (fp32, same seeds); a weight push
    through load_state_dict (each rank the whole state dict) changes them and pushing back restores them."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("vllm")
    from vespo_cli.rollout.base import Sampling
    from vespo_cli.rollout.vllm import VLLMEngine

    torchrun = Path(sys.executable).parent / "torchrun"
    worker = Path(__file__).parent / "tp_group_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", str(worker), tiny_model_path, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["group"] == [0, 1] and r0["leader"] == 0
    assert r0["zeroed"] != r0["first"] and r0["back"] == r0["first"]
    engine = VLLMEngine(tiny_model_path, dtype="float32", max_model_len=256, kv_cache_bytes=64 * 2**20)
    try:
        out = engine.generate([[1, 2, 3, 4], [5, 6, 7]], 2, Sampling(max_tokens=8, seed=3))
    finally:
        engine.close()
    assert [[c.prompt_index, c.sample_idx, c.response_token_ids] for c in out] == r0["first"]


def test_rollout_group_of_the_trainer(monkeypatch):
    """train/sources.rollout_group: k ranks per engine under torchrun; one process is a group of one
    whatever k (its vLLM engine runs TP with its own workers); k = 1 is one engine per rank."""
    from vespo_cli.config import Config
    from vespo_cli.train import dist, sources

    cfg = Config()
    cfg.rollout.tensor_parallel_size = 2
    assert sources.rollout_group(cfg) == engine_groups(1, 1)[0]
    monkeypatch.setattr(dist, "world_size", lambda: 4)
    monkeypatch.setattr(dist, "rank", lambda: 3)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    g = sources.rollout_group(cfg)
    assert (g.index, g.count, g.ranks, g.leader) == (1, 2, (2, 3), 2)
    cfg.rollout.tensor_parallel_size = 1
    assert sources.rollout_group(cfg) == engine_groups(4, 1)[3]
    cfg.rollout.tensor_parallel_size = 3
    with pytest.raises(UserError, match="must divide"):
        sources.rollout_group(cfg)


def test_moe_models_get_expert_parallel_engines(tmp_path, tiny_model_path):
    """open_engine asks vLLM for expert parallelism (EP = TP) exactly when the model has routed experts."""
    from transformers import Qwen3MoeConfig

    from vespo_cli.rollout.sampling import is_moe

    Qwen3MoeConfig(num_experts=4, num_experts_per_tok=2, num_hidden_layers=1).save_pretrained(tmp_path)
    assert is_moe(str(tmp_path)) and not is_moe(str(tiny_model_path))
    assert vllm_parallel_args(2, 2, moe=is_moe(str(tmp_path)))["enable_expert_parallel"] is True
