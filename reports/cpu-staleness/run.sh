#!/usr/bin/env bash
# The CPU staleness experiment of reports/cpu-staleness/README.md (issue 7), as it was run.
# Code: commit 2f04048a (its data.py: arith difficulty 1 = one-step word problems; later commits made
# difficulty 1 bare sums, so reproduce from that commit: `git worktree add /tmp/v 2f04048a`).
# Every run is single-threaded (two or three ran side by side on the 2 cores).
set -euo pipefail
export OMP_NUM_THREADS=1 MALLOC_ARENA_MAX=2
V=${V:-.venv/bin/vespo}
COMMON=(--preset smollm2-arith --out runs/cpu-staleness
        --set trainer.steps=24 --set trainer.lr=3e-5 --set trainer.minibatch_prompts=2
        --set rollout.max_tokens=64 --set trainer.save_every=8 --set trainer.keep_checkpoints=1
        --set trainer.threads=1)
for N in 8 1; do
  $V compare grpo gspo sapo vespo --staleness $N "${COMMON[@]}"
done
$V compare vespo:length_norm=sqrt vespo:length_norm=linear --staleness 8 "${COMMON[@]}"
$V compare runs/cpu-staleness --out reports/cpu-staleness
