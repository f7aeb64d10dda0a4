"""`vespo bench`: FLOP accounting, the RSS sampler, and a smoke run of the whole suite (--quick)."""

from __future__ import annotations

import json
import math
import os

import pytest

from vespo_cli import bench


def test_train_flops_closed_form():
    shape = {"decoder_params": 100, "head_params": 10, "layers": 2, "attn_width": 4}
    # 6·100·(3+5) + 6·10·(1+2) + 12·2·4·(3² + 5²); the causal count halves the attention term
    assert bench.train_flops(shape, [3, 5], [1, 2]) == 4800 + 180 + 3264
    assert bench.train_flops(shape, [3, 5], [1, 2], causal_discount=True) == 4800 + 180 + 1632


def test_model_shape_counts_tied_embeddings_once():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    for tie in (True, False):
        cfg = LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=tie,
        )
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        shape = bench.model_shape(model)
        layers = sum(p.numel() for p in model.model.layers.parameters()) + model.model.norm.weight.numel()
        assert shape["decoder_params"] == layers
        assert shape["head_params"] == 50 * 16 and shape["attn_width"] == 16 and shape["layers"] == 2


def test_matmul_rate_and_tree_rss_are_positive():
    wall, cpu = bench.matmul_peak(64, window_s=0.01)
    assert wall > 0 and cpu > 0
    assert bench.tree_rss() > bench._rss(os.getpid()) * 0.99 > 0
    report = bench.PeakRSS(0.01).report()
    assert report["peak_tree_rss_gib"] > 0 and report["peak_main_rss_gib"] > 0


@pytest.mark.slow
@pytest.mark.vllm
def test_quick_bench_writes_json_and_markdown(tmp_path):
    """The whole suite at smoke-test sizes (tiny model, vLLM + HF engines, TRL skipped): every
    headline key is present, the measured ones are finite numbers, TRL's are null."""
    res = bench.run_bench(tmp_path, quick=True)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data == json.loads(json.dumps(res))
    for key in bench.HEADLINE:
        assert key in data
    for key in ("train_mfu", "rollout_speedup_vllm_vs_hf", "objective_overhead_max", "shard_io_share"):
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, key
    assert data["e2e_speedup_vs_trl"] is None and data["peak_rss_ratio_vs_trl"] is None
    m = data["machine"]
    assert m["cores"] >= 1 and m["torch"] and m["vllm"] and len(m["load_avg_at_start"]) == 3
    e2e = data["raw"]["e2e"]["vespo"]
    assert len(e2e["step_s"]) == bench.sizes(True)["e2e_rounds"] and e2e["peak_tree_rss_gib"] > 0
    train = data["raw"]["train"]
    assert set(train["policies"]) == set(bench.TRAIN_POLICIES) and train["policy"] == "bf16_params"
    assert train["mfu"] == train["policies"]["bf16_params"]["mfu"] and train["bf16_params_speedup_vs_autocast"] > 0
    md = (tmp_path / "latest.md").read_text()
    assert "vespo bench" in md and "| metric |" in md
