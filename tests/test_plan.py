"""Paper presets and the planner: protocol, exact parameter counts, memory arithmetic, launch lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vespo_cli import dryrun as D
from vespo_cli import plan as P
from vespo_cli.config import PAPER_TEMPLATE, Config, load_config
from vespo_cli.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30
PAPER_PRESETS = {  # preset -> (hub id, published size in billions)
    "qwen3-8b": ("Qwen/Qwen3-8B-Base", 8.2),
    "qwen3-30b-a3b": ("Qwen/Qwen3-30B-A3B-Base", 30.5),
    "llama3.2-3b": ("meta-llama/Llama-3.2-3B-Instruct", 3.21),
    "qwen3-0.6b": ("Qwen/Qwen3-0.6B-Base", 0.6),
}


def one_line(text: str) -> str:
    """describe_plan wraps rows at 80 columns and shell commands with ` \\` continuations: undo both."""
    return " ".join(text.replace(" \\\n", "\n").split())


# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_paper_presets_follow_the_protocol(name):
    cfg = load_config(name)
    hub, _ = PAPER_PRESETS[name]
    assert cfg.preset == name
    assert cfg.model.path == hub
    assert cfg.description and "\n" not in cfg.description
    assert cfg.data.train == "dapo-math-17k" and cfg.data.template == PAPER_TEMPLATE
    assert cfg.data.max_prompt_tokens == 1024
    assert (cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p) == (8, 1.0, 1.0)
    assert cfg.rollout.max_tokens == 15360
    assert (cfg.rollout.engine, cfg.rollout.dtype) == ("vllm", "bfloat16")
    t = cfg.trainer
    assert (t.lr, t.lr_warmup_steps, t.betas, t.weight_decay, t.grad_clip) == (1e-6, 0, [0.9, 0.999], 0.01, 1.0)
    assert (t.staleness, t.steps) == (8, 1500)
    assert t.minibatch_prompts == (16 if name == "qwen3-0.6b" else 256)
    assert t.rollout_batch_prompts == t.minibatch_prompts * 8
    assert cfg.model.dtype == "float32" and t.bf16_params and not t.bf16_autocast and t.gradient_checkpointing
    assert t.micro_token_budget >= cfg.data.max_prompt_tokens + cfg.rollout.max_tokens
    assert cfg.eval.benchmarks == ["aime24", "aime25", "amc23", "math500"]
    assert cfg.eval.k is None  # the paper's k per benchmark comes from the eval module
    assert cfg.algorithm.objective == "vespo" and cfg.algorithm.correction is None
    assert cfg.model.moe == (name == "qwen3-30b-a3b")
    assert cfg.layout.gpus_per_node >= 1
    expected = [] if name != "qwen3-0.6b" else ["trainer.minibatch_prompts = 16 (paper: 256)"]
    assert P.protocol_deviations(cfg) == expected


def test_protocol_deviations_name_key_and_paper_value():
    cfg = load_config("qwen3-8b", overrides=["trainer.lr=3e-6", "rollout.n=4"])
    assert P.protocol_deviations(cfg) == ["rollout.n = 4 (paper: 8)", "trainer.lr = 3e-06 (paper: 1e-06)"]


# --------------------------------------------------------------------------- parameter counts


def closed_form_params(e: dict) -> int:
    """Qwen3 / Qwen3-MoE / Llama parameter count by hand (q/k norms in Qwen3, tied head counted once)."""
    h, L, V = e["hidden_size"], e["num_hidden_layers"], e["vocab_size"]
    d, hq, hkv = e["head_dim"], e["num_attention_heads"], e["num_key_value_heads"]
    attn = h * hq * d * 2 + h * hkv * d * 2 + (2 * d if e["arch"].startswith("qwen3") else 0)
    if e["arch"] == "qwen3_moe":
        mlp = e["num_experts"] * 3 * h * e["moe_intermediate_size"] + e["num_experts"] * h  # experts + router
    else:
        mlp = 3 * h * e["intermediate_size"]
    layer = attn + mlp + 2 * h
    return V * h * (1 if e["tie_word_embeddings"] else 2) + h + L * layer


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_parameter_counts_are_exact_and_near_published(name):
    hub, published = PAPER_PRESETS[name]
    shape = P.model_shape(hub)
    assert shape.params == closed_form_params(P.KNOWN_MODELS[hub])
    assert abs(shape.params / 1e9 - published) / published < 0.02
    assert shape.published == published


def test_known_counts_and_moe_active_params():
    assert P.model_shape("Qwen/Qwen3-8B-Base").params == 8_190_735_360
    moe = P.model_shape("Qwen/Qwen3-30B-A3B-Base")
    assert moe.params == 30_532_122_624
    assert (moe.experts, moe.top_k, moe.moe) == (128, 8, True)
    assert abs(moe.active_params / 1e9 - 3.3) / 3.3 < 0.02  # "A3B": 3.3B activated
    assert moe.root_params == 151936 * 2048 * 2 + 2048
    assert moe.max_layer_params == (moe.params - moe.root_params) // 48
    llama = P.model_shape("meta-llama/Llama-3.2-3B-Instruct")
    assert llama.params == 3_212_749_824 and llama.tied
    assert P.model_shape("Qwen/Qwen3-0.6B-Base").params == 596_049_920


def test_known_model_aliases_and_case():
    assert P.known_model("qwen/qwen3-8b-base") is P.KNOWN_MODELS["Qwen/Qwen3-8B-Base"]
    assert P.known_model("Qwen/Qwen3-8B") is P.KNOWN_MODELS["Qwen/Qwen3-8B-Base"]
    assert P.known_model("org/unknown") is None


def test_local_config_json_is_counted(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=1000,
        tie_word_embeddings=True,
    ).save_pretrained(tmp_path)
    shape = P.model_shape(str(tmp_path))
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64
    assert shape.params == 1000 * 64 + 64 + 2 * per_layer == 138_048
    assert shape.source.endswith("config.json") and shape.kv_heads == 2


def test_unknown_model_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        P.model_shape(str(tmp_path))
    with pytest.raises(UserError, match="no config to plan with"):
        P.model_shape("nobody/not-a-model-xyz")


# --------------------------------------------------------------------------- memory arithmetic


def hand_shape(**kw) -> P.ModelShape:
    base = dict(
        name="hand",
        source="test",
        params=1_000_000_000,
        active_params=1_000_000_000,
        root_params=100_000_000,
        max_layer_params=50_000_000,
        layers=10,
        hidden=1000,
        heads=8,
        kv_heads=4,
        head_dim=128,
        intermediate=4000,
        vocab=10_000,
        tied=False,
        max_positions=4096,
    )
    return P.ModelShape(**{**base, **kw})


def hand_config() -> Config:
    cfg = Config()
    cfg.model.dtype = "float32"
    cfg.data.max_prompt_tokens, cfg.rollout.max_tokens = 24, 1000
    cfg.rollout.engine, cfg.rollout.dtype = "vllm", "bfloat16"
    cfg.rollout.tensor_parallel_size, cfg.rollout.gpu_memory_utilization = 2, 0.5
    cfg.trainer.bf16_autocast = cfg.trainer.gradient_checkpointing = True
    cfg.trainer.micro_token_budget = 2048
    cfg.layout.nodes, cfg.layout.gpus_per_node, cfg.layout.gpu_memory_gib, cfg.layout.fsdp_size = 1, 4, 80.0, 4
    return cfg


def test_memory_arithmetic_by_hand():
    plan = P.memory_plan(hand_config(), hand_shape())
    # 1e9 params, fp32, FSDP 4: 4 B each for weights and grads, 8 B for the two AdamW moments
    # FSDP working set: 4 B × (2 × 1e8 root + 3 × 5e7 layer) = 1.4e9
    # microbatch T = max(2048, 24 + 1000) = 2048 tokens
    # checkpoints 10 × 2048 × 1000 × 4; one layer 2 × 2048 × (40·1000 + 8·4000)
    # chunked LM head (train/forward.py; vocab 10000, h 1000, autocast over fp32): fp32 ∂W 4 × V × h, the
    # head's bf16 cast 2 × V × h, a ∂z block of all 2048 rows in bf16, one 32 MiB fp32 chunk + its bf16
    # cast, ∂hidden 2048 × h × 4 (the fp32 [2048, V] logits, 12 B each, were 245,760,000)
    head = 4 * 10**7 + 2 * 10**7 + 2048 * 10_000 * 2 + 32 * 2**20 * 3 // 2 + 2048 * 1000 * 4
    assert head == 159_483_648
    assert [r.bytes for r in plan.trainer] == [
        1_000_000_000,
        1_000_000_000,
        2_000_000_000,
        1_400_000_000,
        81_920_000,
        294_912_000,
        head,
        3 * GiB,
    ]
    assert plan.trainer_total == 9_157_541_120
    assert plan.fsdp_shard == 4_000_000_000 and plan.engine_weights == 1_000_000_000
    # vLLM: 0.5 × 80 GiB = 40 GiB; bf16 weights 2 × 1e9 / tp 2; 3 GiB overhead; KV is the rest
    assert [r.bytes for r in plan.rollout] == [1_000_000_000, 3 * GiB, 40 * GiB - 1_000_000_000 - 3 * GiB]
    assert plan.kv_per_token == 2 * 10 * 2 * 128 * 2  # K and V, 10 layers, 4 KV heads / tp 2, bf16
    assert plan.kv_tokens == (40 * GiB - 1_000_000_000 - 3 * GiB) // 10_240 == 3_782_074
    assert plan.per_gpu == 9_157_541_120 + 40 * GiB
    assert plan.margin == 80 * GiB - plan.per_gpu and plan.fits


def test_engines_and_the_throughput_assumption_by_hand():
    """Two engines of TP 2 on the 4 colocated ranks; decode-bound on an 80 GiB GPU (the H100 row): a step
    reads the weights (1e9 B per GPU) and 1024 sequences' KV at the mean context 24/2 + 1000/4 = 262."""
    e = P.memory_plan(hand_config(), hand_shape()).engines
    assert (e.count, e.tp, e.ep, e.groups) == (2, 2, 1, "ranks 0-1, 2-3")
    assert e.vllm_args == {"tensor_parallel_size": 2, "distributed_executor_backend": "external_launcher"}
    assert e.concurrency == 1024  # vLLM's max_num_seqs (the KV cache holds 14,435)
    assert e.tokens_per_s == pytest.approx(1024 / ((1e9 + 1024 * 262 * 10_240) / (3.35e12 * 0.5)))
    assert e.publish_s == pytest.approx(4e9 / 300e9)  # the fp32 master weights, gathered
    # the publish: fp32 weights + moments (3e9) + overhead + one tensor (the V × h embedding) gathered in
    # fp32 and cast to bf16 + the engine (40 GiB)
    assert P.memory_plan(hand_config(), hand_shape()).publish_bytes == 3e9 + 3 * GiB + 6e7 + 40 * GiB


def test_plan_shows_shard_engine_kv_throughput_and_moe_parallelism():
    text = P.check_preset(load_config("qwen3-8b"))
    assert "per GPU    FSDP shard 15.3 GiB, engine weights 3.8 GiB, KV cache 34.9 GiB" in text
    assert "2 vLLM engines × TP 4: ranks 0-3, 4-7" in text
    assert "distributed_executor_backend=external_launcher" in text and "tokens/s per engine" in one_line(text)
    assert "publish peak 59.6 GiB per GPU" in text
    head = next(r for r in P.memory_plan(load_config("qwen3-8b")).trainer if r.item.startswith("LM head"))
    assert head.bytes < 3 * GiB  # the materialised fp32 [16384, 151936] logits + grads were 27.8 GiB
    moe = one_line(P.check_preset(load_config("qwen3-30b-a3b")))
    assert "4 vLLM engines × TP 4, EP 4 (32 of 128 experts per GPU): ranks 0-3, 4-7, 8-11, 12-15" in moe
    assert "enable_expert_parallel=True" in moe and "trainer: FSDP shards the experts, no EP" in moe


def test_memory_arithmetic_moe_and_no_checkpointing():
    cfg = hand_config()
    moe = P.memory_plan(cfg, hand_shape(experts=8, top_k=2, intermediate=1000))
    recompute = next(r for r in moe.trainer if r.item.startswith("one layer"))
    assert recompute.bytes == 2 * 2048 * (40 * 1000 + 2 * (12 * 1000 + 8 * 1000))
    cfg.trainer.gradient_checkpointing = False
    dense = P.memory_plan(cfg, hand_shape())
    acts = next(r for r in dense.trainer if r.item.startswith("activations"))
    assert acts.bytes == 11 * 2048 * (40 * 1000 + 8 * 4000)
    cfg.trainer.bf16_autocast = False  # fp32 matmul outputs: twice the bytes
    assert (
        next(r for r in P.memory_plan(cfg, hand_shape()).trainer if r.item.startswith("activations")).bytes
        == 2 * acts.bytes
    )


def test_memory_arithmetic_bf16_params():
    """bf16 compute weights over fp32 masters: FSDP gathers 2-byte params (and their gradients),
    layer inputs are bf16; on one GPU the bf16 copy of the weights is a row of its own."""
    cfg = hand_config()
    cfg.trainer.bf16_autocast, cfg.trainer.bf16_params = False, True
    rows = {r.item: r.bytes for r in P.memory_plan(cfg, hand_shape()).trainer}
    assert rows["FSDP unsharded params + grads"] == 2 * (2 * 100_000_000 + 3 * 50_000_000)
    assert rows["checkpointed layer inputs"] == 10 * 2048 * 1000 * 2
    assert rows["one layer recompute, fwd+bwd"] == 294_912_000  # bf16 activations, as under autocast
    cfg.layout.fsdp_size = 1
    rows = {r.item: r.bytes for r in P.memory_plan(cfg, hand_shape()).trainer}
    assert rows["bf16 compute weights"] == 2 * 1_000_000_000 and "FSDP unsharded params + grads" not in rows


def test_modes_and_dedicated_rollout_gpus():
    cfg = hand_config()
    assert P.memory_plan(cfg, hand_shape(), mode="replay").rollout == []
    cfg.trainer.async_workers = 3
    assert P.memory_plan(cfg, hand_shape(), mode="async").rollout_total == 3 * 40 * GiB
    cfg = hand_config()
    cfg.layout.gpus_per_node, cfg.layout.rollout_gpus, cfg.layout.fsdp_size = 8, 2, 6
    plan = P.memory_plan(cfg, hand_shape())
    assert (plan.trainer_gpus, plan.colocated) == (6, False)
    assert plan.per_gpu == max(plan.trainer_total, 40 * GiB)
    assert D.launch_commands(cfg)[0].startswith("torchrun --nproc-per-node 6 ")


@pytest.mark.parametrize(
    "override, message",
    [
        ("layout.fsdp_size=3", "layout.fsdp_size: 3 must divide"),
        ("rollout.tensor_parallel_size=3", "tensor_parallel_size: 3"),
        ("layout.gpu_memory_gib=48", "more than layout.gpu_memory_gib 48"),
        ("rollout.gpu_memory_utilization=0.02", "less than weights"),
        ("rollout.max_tokens=40000", "exceeds the model's 32768 positions"),
    ],
)
def test_a_preset_that_cannot_fit_raises(override, message):
    cfg = load_config("qwen3-8b", overrides=[override])
    with pytest.raises(UserError, match="does not fit") as e:
        P.check_preset(cfg)
    assert message in str(e.value)


def test_does_not_fit_message_has_the_numbers():
    with pytest.raises(UserError) as e:
        P.check_preset(load_config("qwen3-8b", overrides=["layout.gpu_memory_gib=48"]))
    first = str(e.value).splitlines()[0]
    assert "53.6 GiB per GPU, 5.6 GiB more than layout.gpu_memory_gib 48" in first


def test_routing_replay_needs_moe():
    with pytest.raises(UserError, match="routing_replay"):
        P.check_preset(load_config("qwen3-8b", overrides=["algorithm.routing_replay=true"]))
    assert "FITS" in P.check_preset(load_config("qwen3-30b-a3b", overrides=["algorithm.routing_replay=true"]))


@pytest.mark.parametrize("name", sorted(PAPER_PRESETS))
def test_every_paper_preset_fits_its_layout(name):
    text = P.check_preset(load_config(name))
    assert "verdict: FITS" in text
    assert f"{P.model_shape(PAPER_PRESETS[name][0]).params:,}" in text
    plan = P.memory_plan(load_config(name))
    assert plan.kv_tokens >= 8 * plan.max_seq  # room for several full-length sequences at once


def test_cpu_preset_check():
    text = P.check_preset(load_config("tiny"))
    assert "CPU" in text and "verdict: OK" in text


# --------------------------------------------------------------------------- run plan


def test_describe_plan_single_node():
    cfg = load_config("qwen3-8b")
    text = one_line(D.describe_plan(cfg, run_dir=Path("runs/qwen3-8b-vespo"), replay=None, async_=False))
    assert "torchrun --nproc-per-node 8 -m vespo_cli.cli train --preset qwen3-8b --run-dir runs/qwen3-8b-vespo" in text
    assert "256 prompts × N=8 = 2048 prompts × n=8 samples = 16,384 samples" in text
    assert "8 per rollout batch" in text and "188 (the last one uses 4 of its 8 minibatches)" in text
    assert "≤ 33,554,432" in text  # 256 × 8 × (1024 + 15360) tokens per optimizer step
    assert "sync" in text and "verdict: FITS" in text


def test_describe_plan_multi_node_async_and_replay():
    cfg = load_config("qwen3-30b-a3b")
    text = one_line(D.describe_plan(cfg, run_dir=None, replay=None, async_=True))
    assert (
        "torchrun --nnodes 2 --node-rank $NODE_RANK --nproc-per-node 8 --rdzv-backend c10d "
        "--rdzv-endpoint $MASTER_ADDR:29500 -m vespo_cli.cli train --preset qwen3-30b-a3b --async"
    ) in text
    assert "async" in text
    replay = D.describe_plan(cfg, run_dir=None, replay=Path("shards"), async_=False)
    assert "--replay shards" in one_line(replay) and "peak (trainer)" in replay


def test_describe_plan_names_the_algorithm_preset():
    text = one_line(D.describe_plan(load_config("qwen3-8b", "dapo"), run_dir=None, replay=None, async_=False))
    assert "train --preset qwen3-8b --algo dapo" in text  # dapo's objective is grpo: the preset name is kept
    text = one_line(D.describe_plan(load_config("qwen3-8b"), run_dir=None, replay=None, async_=False))
    assert "--algo" not in text


def test_describe_plan_cpu_preset():
    text = D.describe_plan(load_config("tiny"), run_dir=Path("runs/t"), replay=None, async_=False)
    assert "vespo train --preset tiny --run-dir runs/t" in text and "no GPU memory plan" in text


def test_docs_carry_the_launch_lines():
    doc = (ROOT / "docs" / "paper.md").read_text()
    for name in PAPER_PRESETS:
        assert D.launch_commands(load_config(name))[0] in doc, name
    assert "vespo compare grpo gspo sapo vespo --preset qwen3-30b-a3b --staleness 4 --staleness 8" in doc
    for number in (
        "57.0",
        "59.1",
        "51.7",
        "70.0",
        "54.6",
        "56.4",
        "60.9",
        "26.8",
        "26.7",
        "24.5",
        "28.3",
        "67.3",
        "64.5",
        "61.8",
        "48.6",
        "47.6",
        "20.9",
        "16.5",
    ):
        assert number in doc


def test_shell_wrap_keeps_flags_with_values():
    cmd = D.launch_commands(load_config("qwen3-30b-a3b"))[0]
    lines = D.shell_wrap(cmd, 60)
    assert all(line.endswith(" \\") for line in lines[:-1])
    assert " ".join(line.removesuffix(" \\").strip() for line in lines) == cmd
    assert not any(line.rstrip(" \\").endswith(("--nnodes", "--rdzv-endpoint", "--preset")) for line in lines)


# --------------------------------------------------------------------------- through the CLI


def _vespo(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vespo_cli.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


@pytest.mark.slow
def test_cli_presets_check():
    out = _vespo("presets", "--check", "qwen3-8b")
    assert out.returncode == 0, out.stderr
    assert "8,190,735,360" in out.stdout and "verdict: FITS" in out.stdout


@pytest.mark.slow
def test_cli_presets_check_fails_loudly(tmp_path):
    bad = tmp_path / "small-gpus.yaml"
    bad.write_text("extends: qwen3-8b\nlayout:\n  gpu_memory_gib: 48\n")
    out = _vespo("presets", "--check", str(bad))
    assert out.returncode == 2
    assert "does not fit" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_train_dry_run(tmp_path):
    out = _vespo("train", "--preset", "qwen3-8b", "--dry-run", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    text = one_line(out.stdout)
    assert "torchrun --nproc-per-node 8 -m vespo_cli.cli train --preset qwen3-8b" in text
    assert "16,384 samples" in text and "verdict: FITS" in text
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_whole_run_hours_by_hand_and_in_the_docs():
    """Issue 30: GPU-hours per paper run, ⌈steps/N⌉ batches × (sampling + training), from the plan's own
    throughput and 10 FLOPs per active parameter per token (checkpointed) at TRAIN_MFU of the bf16 peak."""
    from vespo_cli.plan.layout import TRAIN_MFU
    from vespo_cli.plan.memory import memory_plan

    doc = (ROOT / "docs" / "paper.md").read_text()
    for name, gpus in (("qwen3-0.6b", 1), ("llama3.2-3b", 8), ("qwen3-8b", 8), ("qwen3-30b-a3b", 16)):
        cfg = load_config(name)
        plan = memory_plan(cfg)
        e = plan.engines
        assert e.run_batches == 188 and e.run_gpus == gpus
        assert e.run_rollout_s == 188 * e.batch_tokens / (e.count * e.tokens_per_s)
        t = cfg.trainer  # mbs prompts × N × n 8 samples, the mean prompt half of 1,024 tokens
        tokens = t.minibatch_prompts * t.staleness * 8 * 1024 / 2 + e.batch_tokens
        flops = 989e12
        assert e.run_train_s == pytest.approx(188 * tokens * 10 * plan.shape.active_params / (gpus * flops * TRAIN_MFU))
        assert e.run_hours == pytest.approx((e.run_rollout_s + e.run_train_s) / 3600)
        assert f"| {gpus} | {e.run_hours * gpus:,.0f} |" in doc, name
