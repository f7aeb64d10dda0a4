"""The embedded default learns: SmolLM2-135M's reward on one-digit sums rises within a few minutes.

prime-rl keeps a "reward goes up" test; this is ours. Real model, real vLLM engine, real grader
(the preset's stated policy, which pays no echo of the question), real optimizer: nothing here is a
stand-in. Seeded, but vLLM's CPU kernels are not bit-reproducible across machines, so the bound is a
margin the measured run clears several times over, not an exact value."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vespo_cli.fsio import read_jsonl

STEPS = 12


@pytest.mark.slow
def test_embedded_default_reward_rises(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vespo_cli.cli",
            "train",
            "--preset",
            "smollm2-arith",
            "--run-dir",
            "run",
            "--set",
            f"trainer.steps={STEPS}",
            "--set",
            "trainer.save_every=100",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    first, last = rows[:4], rows[-4:]  # 4 steps × 16 samples each
    start = sum(r["reward"] for r in first) / 4
    end = sum(r["reward"] for r in last) / 4
    assert end > start + 0.15, f"reward {start:.3f} over steps 1-4, {end:.3f} over steps {STEPS - 3}-{STEPS}"
    assert all(r["reward_errors"] == 0 and r["reward_timeouts"] == 0 for r in rows)
