"""The async section: vespo's sync loop against its async mode (`vespo train --async`: a `rollout
--follow` worker samples with the newest published weights while the trainer trains) at equal samples,
the e2e section's vLLM configuration, each in its own section subprocess, one after the other."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from .sizes import bench_config, sizes


def _one(mode: str, sz: dict) -> dict:
    from ..fsio import read_jsonl
    from ..rundir import RunDir
    from ..train import loop

    cfg = bench_config(sz, "vllm")
    cfg.trainer.steps = sz["async_steps"]
    cfg.trainer.save_every = 10**9
    cfg.trainer.async_workers = 1
    run_dir = Path(tempfile.mkdtemp(prefix=f"vespo-bench-{mode}-")) / "run"
    t0 = time.perf_counter()
    loop.train(cfg, run_dir, async_=mode == "async")
    total_s = time.perf_counter() - t0
    recs = [r for r in read_jsonl(RunDir(run_dir).metrics) if r.get("kind") == "train"]
    per_step = sz["e2e_prompts"] * sz["e2e_n"]
    # steady state: from the first step's metrics line to the last, (steps - 1) batches of samples
    span = recs[-1]["time"] - recs[0]["time"]
    return {
        "steps": len(recs),
        "samples": len(recs) * per_step,
        "total_s": total_s,
        "samples_per_s_total": len(recs) * per_step / total_s,
        "steady_s": span,
        "samples_per_s": (len(recs) - 1) * per_step / span if span > 0 else None,
        "reward_per_sample": statistics.fmean(r["reward"] for r in recs),
        "staleness_mean": statistics.fmean(r.get("staleness", 0.0) for r in recs),
    }


def section_sync_loop(quick: bool) -> dict:
    return _one("sync", sizes(quick))


def section_async_loop(quick: bool) -> dict:
    return _one("async", sizes(quick))


def async_summary(sync: dict, async_: dict, sz: dict) -> dict:
    """The two loops' runs (each its own section subprocess) side by side."""
    s, a = sync["samples_per_s"], async_["samples_per_s"]
    return {
        "steps": sz["async_steps"],
        "prompts": sz["e2e_prompts"],
        "n": sz["e2e_n"],
        "max_tokens": sz["e2e_tokens"],
        "sync": sync,
        "async": async_,
        "async_speedup": a / s if a and s else None,
        "async_speedup_total": async_["samples_per_s_total"] / sync["samples_per_s_total"],
        "peers": "verl reports 2.35–2.67× for fully async training at scale (GPU clusters)",
    }
