"""Trainer step before/after the performance work (docs/performance.md), paired in one process.

    .venv/bin/python reports/bench/before_after.py [--rounds 3] [--out reports/bench/before_after.json]

Variants, interleaved round by round so that machine load hits them alike (ratios to `before`):
  before       fp32 (trainer.bf16_autocast=false, the default), the old forward (full fp32
               [N, vocab] logits kept for backward, padding mask), greedy microbatches, and a
               separate old-logp forward before the step (as the loop did at any staleness);
  +autocast    the same with bf16 autocast;
  after        bf16 autocast + chunked LM head + mask-free attention + DP microbatches, and at
               staleness 1 old_logp from the training forward (train/loop.py);
  after-N>1    `after` with the separate old-logp forward (what staleness > 1 still pays).
Batches: `grpo` = the bench's GRPO step (16 rows: prompt 47, three responses at the 128 cap, the
rest 15–70 tokens; micro_token_budget 2048); `long` = 2 × (128 + 896) tokens. Peak memory: each
variant's second step in a fresh subprocess, RSS above the level before that step.

The trainer's step is vespo_cli/train/step.py (`old_logprobs`, `optimizer_step`); it looks up
`token_logprobs` (train/forward.py) and `plan_microbatches` (train/batch.py) in its own module, which
is where the `before` variants swap in the old code. The preset's dtype policy is set off
(trainer.bf16_params=false) so that each variant's policy is the one named above.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vespo_cli.train.forward import logits_logprobs

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANTS = ("before", "+autocast", "after", "after-N>1")


# ---- the code as it was (vespo_cli/train/forward.py and batch.plan_microbatches before this work)


def old_token_logprobs(model, mb, temperature=1.0, with_entropy=False):
    predict = mb.response_mask[:, 1:]
    hidden = model.model(
        input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids, use_cache=False
    ).last_hidden_state
    logits = model.lm_head(hidden[:, :-1][predict]).float()
    if temperature != 1.0:
        logits = logits / temperature
    flat_logp, flat_ent = logits_logprobs(logits, mb.input_ids[:, 1:][predict], with_entropy)
    return mb.unflatten(flat_logp), (mb.unflatten(flat_ent) if with_entropy else None)


def old_plan_microbatches(rows, idx, token_budget):
    length = {i: len(rows.prompt_ids[i]) + len(rows.response_ids[i]) for i in idx}
    order = sorted(idx, key=lambda i: -length[i])
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * length[cur[0]] > token_budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


# ---- harness


def batch(kind: str):
    from vespo_cli.bench.sizes import synthetic_rows

    g = torch.Generator().manual_seed(0)
    if kind == "grpo":
        P, R = 47, [128, 128, 128] + [int(x) for x in torch.randint(15, 71, (13,), generator=g)]
    else:
        P, R = 128, [896, 896]
    return synthetic_rows(g, 49152, P, R, 8, "s")


@contextlib.contextmanager
def variant(name: str, cfg):
    from vespo_cli.train import step

    saved = (step.token_logprobs, step.plan_microbatches, cfg.trainer.bf16_autocast)
    if name in ("before", "+autocast"):
        step.token_logprobs, step.plan_microbatches = old_token_logprobs, old_plan_microbatches
    cfg.trainer.bf16_autocast = name != "before"
    try:
        yield
    finally:
        step.token_logprobs, step.plan_microbatches, cfg.trainer.bf16_autocast = saved


class Setup:
    def __init__(self, kind: str):
        from vespo_cli.config import load_config
        from vespo_cli.models import load_model, resolve_model
        from vespo_cli.objectives import group_advantages

        self.cfg = load_config(
            "smollm2-arith",
            None,
            [
                "trainer.minibatch_prompts=2",
                "trainer.staleness=1",
                "trainer.micro_token_budget=2048",
                "trainer.bf16_params=false",
            ],
        )
        if kind == "long":
            self.cfg.trainer.micro_token_budget = 2048
        self.model = load_model(resolve_model("smollm2-135m"), "float32")
        self.model.config.use_cache = False
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-7)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
        self.rows = batch(kind)
        self.adv = group_advantages(self.rows.rewards, self.rows.group_ids).float()

    def step(self, name: str) -> float:
        from vespo_cli.train.step import old_logprobs, optimizer_step

        idx = list(range(len(self.rows)))
        with variant(name, self.cfg):
            t = time.perf_counter()
            old = None if name == "after" else old_logprobs(self.model, self.rows, self.cfg)
            optimizer_step(self.model, self.opt, self.sched, self.rows, idx, self.adv, old, self.cfg)
            return time.perf_counter() - t


def timings(kind: str, rounds: int) -> dict:
    s = Setup(kind)
    for name in VARIANTS:  # warm-up (and AdamW state allocation)
        s.step(name)
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            times[name].append(s.step(name))
    ratios = {n: statistics.median(b / t for b, t in zip(times["before"], times[n])) for n in VARIANTS}
    tokens = sum(len(p) + len(r) for p, r in zip(s.rows.prompt_ids, s.rows.response_ids))
    return {"tokens": tokens, "seconds": times, "speedup_vs_before": ratios}


def peak_memory(kind: str, name: str) -> float:
    """GiB of RSS above the pre-step level during a second step, in a fresh process."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import before_after as m; print(m._mem({kind!r}, {name!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _mem(kind: str, name: str) -> float:
    from vespo_cli.bench import PeakRSS, tree_rss

    s = Setup(kind)
    s.step(name)
    base = tree_rss()
    rss = PeakRSS(0.01)
    s.step(name)
    return (rss.report()["peak_tree_rss_gib"] * 2**30 - base) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = ap.parse_args()
    res = {
        "command": "python reports/bench/before_after.py " + " ".join(sys.argv[1:]),
        "load_avg_at_start": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    for kind in ("grpo", "long"):
        res[kind] = timings(kind, args.rounds)
        res[kind]["step_memory_gib"] = {n: peak_memory(kind, n) for n in VARIANTS}
        print(kind, json.dumps(res[kind]["speedup_vs_before"]), json.dumps(res[kind]["step_memory_gib"]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
