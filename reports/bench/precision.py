"""The trainer's three dtype policies on real rollouts: numerics against fp32 and against the bf16
vLLM engine that sampled them (docs/performance.md, "bf16 params").

    .venv/bin/python reports/bench/precision.py [--prompts 8] [--out reports/bench/precision.json]

Samples `--prompts` gsm8k prompts × 8 with the vLLM engine (bf16, SmolLM2-135M, ≤ 256 tokens),
then, for each policy (fp32; fp32 masters + bf16 autocast; fp32 masters + bf16 params), computes
the trainer's log-probs of those tokens and the gradient of one VESPO step on them:
  vs_engine   mean and max |logp_trainer − logp_vLLM| per token, and the mismatch KL estimate
              mean(logp_trainer − logp_vLLM) (docs/objectives.md "Metrics"), what `algorithm.correction` corrects;
  vs_fp32     mean |Δ logp| against the fp32 policy, and the gradient's cosine similarity and
              relative L2 error against the fp32 gradient.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from vespo_cli.bench import TRAIN_POLICIES
from vespo_cli.bench.machine import cpu_model as _cpu_model


class KeepGrads(torch.optim.SGD):
    """lr 0, and the gradients stay after the step for the comparison."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


POLICIES = {
    "fp32": {"bf16_params": False, "bf16_autocast": False},  # trainer.* flags (train/precision.py)
    "bf16_autocast": TRAIN_POLICIES["bf16_autocast"],
    "bf16_params": TRAIN_POLICIES["bf16_params"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--out", default="reports/bench/precision.json")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

    from vespo_cli.config import load_config
    from vespo_cli.models import load_model, load_tokenizer, resolve_model
    from vespo_cli.objectives import group_advantages
    from vespo_cli.rewards import RewardScorer
    from vespo_cli.rollout.run import open_engine, prompt_chunk, sample_to_shard
    from vespo_cli.shards import read_shard
    from vespo_cli.train.batch import rows_from_table
    from vespo_cli.train.step import old_logprobs, optimizer_step

    base = [
        "data.train=gsm8k",
        "rollout.max_tokens=256",
        "trainer.micro_token_budget=4096",
        "trainer.grad_clip=1e9",
    ]  # unclipped gradients are compared
    cfg = load_config("smollm2-arith", "vespo", base)
    path = resolve_model(cfg.model.path)
    tokenizer = load_tokenizer(path)
    shard = Path(tempfile.mkdtemp(prefix="vespo-precision-")) / "rollout.parquet"
    engine = open_engine(cfg, path)
    with RewardScorer(workers=1, timeout_s=5.0) as scorer:
        sample_to_shard(
            engine,
            tokenizer,
            scorer,
            prompt_chunk(cfg, 0, args.prompts),
            cfg,
            policy_version=0,
            run_id="precision",
            path=shard,
            seed=0,
            group_prefix="precision",
        )
    engine.close()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # all cores for the trainer, whatever the engine left
    rows = rows_from_table(read_shard(shard))
    adv = group_advantages(rows.rewards, rows.group_ids).float()
    adv = torch.where(adv == 0, torch.linspace(-1, 1, len(rows)), adv)  # a gradient even where a group ties
    engine_lp = torch.cat([torch.tensor(r, dtype=torch.float64) for r in rows.rollout_logprobs])

    logp, grads = {}, {}
    for name, flags in POLICIES.items():
        cfg = load_config("smollm2-arith", "vespo", base)
        vars(cfg.trainer).update(flags)
        model = load_model(path, cfg.model.dtype)
        model.config.use_cache = False
        logp[name] = torch.cat(old_logprobs(model, rows, cfg)).double()
        optimizer = KeepGrads(model.parameters(), lr=0.0)  # the gradient is what is compared
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        optimizer_step(model, optimizer, scheduler, rows, list(range(len(rows))), adv, None, cfg)
        grads[name] = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
        print(name, "done", flush=True)

    out = {
        "model": "SmolLM2-135M-Instruct",
        "engine": "vLLM (bf16)",
        "rows": len(rows),
        "response_tokens": int(engine_lp.numel()),
        "torch": torch.__version__,
        "machine": _cpu_model(),
        "command": f"python reports/bench/precision.py --prompts {args.prompts}",
        "policies": {},
    }
    for name in POLICIES:
        gap = logp[name] - engine_lp
        d32 = (logp[name] - logp["fp32"]).abs()
        g, g32 = grads[name], grads["fp32"]
        out["policies"][name] = {
            "vs_engine": {
                "logp_abs_diff_mean": float(gap.abs().mean()),
                "logp_abs_diff_max": float(gap.abs().max()),
                "mismatch_kl": float(gap.mean()),
            },
            "vs_fp32": {
                "logp_abs_diff_mean": float(d32.mean()),
                "logp_abs_diff_max": float(d32.max()),
                "grad_cosine": float(torch.nn.functional.cosine_similarity(g, g32, dim=0)),
                "grad_rel_l2_error": float((g - g32).norm() / g32.norm()),
            },
        }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["policies"], indent=2))


if __name__ == "__main__":
    main()
