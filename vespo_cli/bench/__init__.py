"""`vespo bench`: the performance suite. Every figure is a ratio of two timings taken in the same run
on the same machine (the machines this runs on are shared and noisy; absolute seconds are recorded
as raw data only). Results: `<out>/latest.json`, `<out>/latest.md`, `<out>/step_breakdown.png`.

One concept per module:

* sizes: workload sizes, targets, the vespo configuration of the e2e section, the train section's rows;
* machine, memory: the machine (psutil or /proc) and peak RSS of a process tree;
* flops: the FLOP model and the bf16 matmul peak MFU is measured against;
* attention: the trainer's attention call, captured and timed alone, and the MFU bound it sets;
* protocol: section and worker subprocesses (one JSON line each way), and a worker's end (WorkerSide);
* probes: instruments a worker puts into vespo's code (policy_loss capture);
* worker_vespo, worker_trl: the two sides of the e2e comparison;
* e2e, section_train, section_rollout, section_async: the sections;
* suite: the run and the regression check; report, figure: latest.md and the step breakdown.
"""

from __future__ import annotations

from .flops import attention_flops, matmul_peak, model_shape, train_flops
from .machine import machine_info
from .memory import PeakRSS, tree_rss
from .section_train import TRAIN_POLICIES
from .sizes import HEADLINE, TARGETS, sizes
from .suite import RATIO_KEYS, regression_check, run_bench

__all__ = [
    "HEADLINE",
    "RATIO_KEYS",
    "TARGETS",
    "TRAIN_POLICIES",
    "PeakRSS",
    "attention_flops",
    "machine_info",
    "matmul_peak",
    "model_shape",
    "regression_check",
    "run_bench",
    "sizes",
    "train_flops",
    "tree_rss",
]
