"""The data-producing stages through the real CLI on the tiny preset: rollout → shards, eval."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vespo_cli.fsio import read_jsonl
from vespo_cli.shards import list_shards, read_shard, summarize


def vespo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vespo_cli.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_rollout_writes_valid_shards_then_eval_of_a_checkpoint_joins_the_run(tmp_path):
    proc = vespo("rollout", "--preset", "tiny", "--num-prompts", "3", "--n", "2", "--run-dir", "ro", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shards = list_shards(tmp_path / "ro" / "rollouts")
    assert len(shards) == 2  # 3 prompts in shards of trainer.minibatch_prompts=2
    rows = sum(read_shard(s).num_rows for s in shards)  # the validator accepts them
    assert rows == 3 * 2
    t = read_shard(shards[0])
    assert set(t.column("engine").to_pylist()) == {"hf"} and t.column("policy_version")[0].as_py() == 0
    assert summarize(tmp_path / "ro" / "rollouts")["rows"] == 6
    proc = vespo("inspect", "ro", cwd=tmp_path)
    assert proc.returncode == 0 and "rows" in proc.stdout

    evals = ["--set", "eval.benchmarks=[arith]", "--set", "eval.limit=3", "--set", "eval.max_tokens=6"]
    proc = vespo("train", "--preset", "tiny", "--run-dir", "run", "--set", "trainer.steps=2", *evals, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the log has a line per step and the final eval's line (no terminal: plain lines on stdout)
    assert re.search(r"^train vespo N=2 2/2 ", proc.stdout, re.M), proc.stdout[-2000:]
    assert re.search(r"^eval step 2  arith avg@1 \d+\.\d% \[\d+\.\d, \d+\.\d\]  3 problems  \d+s$", proc.stdout, re.M)
    proc = vespo(
        "eval",
        "gsm8k",
        "--model",
        "run/checkpoints/step-2",
        "--limit",
        "2",
        "--k",
        "3",
        "--set",
        "eval.max_tokens=6",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "settings: run/config.yaml (--preset to use others)" in proc.stdout  # no --preset (issue 30)
    summary = json.loads((tmp_path / "run" / "eval" / "step-2" / "gsm8k" / "summary.json").read_text())
    assert (summary["engine"], summary["engine_dtype"], summary["max_tokens"]) == ("hf", "float32", 6)
    assert summary["k"] == 3 and summary["num_problems"] == 2 and summary["num_samples"] == 6
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "eval"]
    assert evals and evals[-1]["step"] == 2 and evals[-1]["benchmark"] == "gsm8k"
