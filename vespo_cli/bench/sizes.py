"""Workload sizes of `vespo bench`, its targets, the vespo configuration its e2e section runs, and the
synthetic rows its train section (and reports/bench/before_after.py) trains on."""

from __future__ import annotations

TARGETS = {  # key: (comparison, bound)
    "e2e_speedup_vs_trl_same_engine": (">=", 1.5),
    "e2e_speedup_vs_trl_vllm": (">=", 1.5),
    "peak_rss_ratio_vs_trl": ("<=", 1.0),
    "objective_share_of_step": ("<", 0.01),
    "train_mfu": (">=", 0.5),
    "study_step_speedup": (">=", 1.5),
    "rollout_speedup_vllm_vs_hf": (">=", 2.0),
    "shard_io_share": ("<", 0.02),
}
# A headline target the issue lets a second figure meet instead (issue 33: the study step 1.5x faster than before,
# or within 10% of a plain transformers forward+backward of the same batch, the hardware's own reference).
OR_TARGETS = {"study_step_speedup": ("study_step_vs_plain", "<=", 1.1)}
HEADLINE = list(TARGETS)


def sizes(quick: bool) -> dict:
    """Workload sizes; --quick shrinks everything to a smoke test (tiny model, TRL skipped)."""
    if quick:
        return dict(
            model="tiny",
            e2e_rounds=1,  # as the full bench: one round of workers (each a Python with torch and vLLM to start)
            e2e_steps=1,
            e2e_prompts=2,
            e2e_n=4,
            e2e_tokens=16,
            trl=False,
            train_rows=4,
            train_micro_rows=2,
            train_prompt=32,
            train_response=96,
            train_rounds=1,
            matmul_n=512,
            matmul_window_s=0.2,
            rollout_prompts=2,
            rollout_n=4,
            rollout_tokens=16,
            rollout_rounds=1,
            publish_repeats=2,
            async_steps=3,
            worker_gib=0.0,
            obj_B=16,
            obj_T=256,
            obj_repeats=2,
            study_prompts=1,
            study_rounds=1,
        )
    return dict(
        model="smollm2-135m",
        e2e_rounds=1,  # rounds of short-lived workers, each: a warm-up step, then e2e_steps measured steps
        e2e_steps=2,
        e2e_prompts=2,
        e2e_n=8,
        e2e_tokens=64,
        trl=True,
        train_rows=8,
        train_micro_rows=2,
        train_prompt=128,
        train_response=896,
        train_rounds=1,
        matmul_n=2048,
        matmul_window_s=2.0,
        rollout_prompts=8,
        rollout_n=8,
        rollout_tokens=128,
        rollout_rounds=2,
        publish_repeats=3,
        async_steps=3,
        worker_gib=7.0,  # a SmolLM2 worker's peak: one starts only with this much memory available
        obj_B=256,
        obj_T=4096,
        obj_repeats=11,
        study_prompts=4,  # × rollout.n = 8: the cpu-staleness preset's 32 sequences per optimizer step
        study_rounds=2,
    )


def vespo_overrides(sz: dict, engine: str = "vllm") -> list[str]:
    """The vespo configuration the e2e section runs (over the smollm2-arith preset) with `engine`."""
    return [
        f"model.path={sz['model']}",
        f"rollout.n={sz['e2e_n']}",
        f"rollout.max_tokens={sz['e2e_tokens']}",
        f"rollout.engine={engine}",
        "rollout.dtype=bfloat16",
        "rollout.kv_cache_gib=0.125",  # 16 × (prompt + 128) tokens need ~80 MB of KV
        f"trainer.minibatch_prompts={sz['e2e_prompts']}",
        "trainer.staleness=1",
        "trainer.bf16_autocast=true",  # TRL's dtype policy (bf16=True: fp32 masters, bf16 autocast)
        "trainer.bf16_params=false",
        "trainer.micro_token_budget=2048",
        "trainer.steps=1000",
    ]


def bench_config(sz: dict, engine: str = "vllm"):
    from ..config import load_config

    return load_config("smollm2-arith", None, vespo_overrides(sz, engine))


def synthetic_rows(g, vocab: int, prompt_len: int, response_lens: list[int], group_size: int, source: str):
    """Rows of random tokens in [3, vocab) drawn from generator `g`: every prompt `prompt_len` long,
    responses `response_lens` long, random rewards, groups of `group_size` consecutive rows."""
    import torch

    from ..train.batch import Rows

    B = len(response_lens)
    return Rows(
        [torch.randint(3, vocab, (prompt_len,), generator=g).tolist() for _ in range(B)],
        [torch.randint(3, vocab, (r,), generator=g).tolist() for r in response_lens],
        [None] * B,
        torch.rand(B, generator=g),
        torch.zeros(B, dtype=torch.bool),
        [str(i // group_size) for i in range(B)],
        torch.zeros(B, dtype=torch.long),
        [source] * B,
    )
