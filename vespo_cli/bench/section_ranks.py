"""The scale-out section: the sync loop's rollout on 2 torchrun ranks (each samples its share of the
batch with its own engine, issue 22) against 1 process, on the same batches of the tiny model, one
thread per rank. The figure is the ratio of the median rollout time per rollout batch (the first
batch, the warm-up, left out); the publish time per batch comes with it."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

STEPS = 4  # staleness 1: 4 rollout batches, the first a warm-up
SETTINGS = ["trainer.staleness=1", "trainer.minibatch_prompts=8", "rollout.max_tokens=48", "trainer.threads=1"]


def _train(ranks: int, run_dir: Path, steps: int) -> list[dict]:
    from ..fsio import read_jsonl
    from ..rundir import RunDir

    sets = [a for s in SETTINGS + [f"trainer.steps={steps}"] for a in ("--set", s)]
    args = ["-m", "vespo_cli.cli", "train", "--preset", "tiny", "--out", str(run_dir), *sets]
    launcher = (
        [sys.executable]
        if ranks == 1
        else [str(Path(sys.executable).parent / "torchrun"), "--nproc-per-node", str(ranks)]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(launcher + args, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return [r for r in read_jsonl(RunDir(run_dir).metrics) if r.get("kind", "train") == "train"]


def section_ranks(quick: bool) -> dict:
    steps = 3 if quick else STEPS
    out: dict = {"steps": steps, "settings": SETTINGS, "model": "tiny"}
    with tempfile.TemporaryDirectory(prefix="vespo-bench-ranks-") as tmp:
        for ranks in (1, 2):
            recs = _train(ranks, Path(tmp) / f"r{ranks}", steps)[1:]  # without the warm-up batch
            out[f"ranks_{ranks}"] = {
                "rollout_s": statistics.median(r["time_rollout_s"] for r in recs),
                "publish_s": statistics.median(r["time_publish_s"] for r in recs),
                "rollout_workers": recs[0]["rollout_workers"],
            }
    out["rollout_speedup_2_ranks"] = out["ranks_1"]["rollout_s"] / out["ranks_2"]["rollout_s"]
    return out
