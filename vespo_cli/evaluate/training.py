"""Eval during training: the trainer's `evaluate` callback (train/ receives it and never imports the driver)."""

from __future__ import annotations

import time
from pathlib import Path

from ..progress import announce
from .driver import eval_sampling, run_eval
from .results import metrics_record, summary_line


def training_eval(cfg, run_dir: str | Path):
    """The trainer's `evaluate(engine, tokenizer, step)` callback (train/loop.py): cfg.eval.benchmarks on
    the weights the engine holds at `step`, written to `<run>/eval/step-K/`; returns the `kind: eval`
    metrics records. None when the config names no benchmarks."""
    if not cfg.eval.benchmarks:
        return None
    from ..rewards import scorer_for
    from ..rundir import RunDir

    e = cfg.eval
    sampling = eval_sampling(cfg)

    def evaluate(engine, tokenizer, step: int) -> list[dict]:
        # the eval's prompt budget, within what the trainer's engine holds (vLLM: max_model_len)
        budget = min(e.max_prompt_tokens, getattr(engine, "max_model_len", e.max_prompt_tokens + 1) - 1)
        began = time.perf_counter()
        with scorer_for(cfg) as scorer:
            results = run_eval(
                engine,
                tokenizer,
                e.benchmarks,
                e.k,
                e.limit,
                sampling,
                cfg.data.template,
                RunDir(run_dir).eval_dir(step),
                scorer,
                max_prompt_tokens=budget,
                difficulty=cfg.data.difficulty,
            )
        seconds = time.perf_counter() - began if len(results) == 1 else None  # benchmarks are sampled together
        for name, s in results.items():
            announce(summary_line(name, s, step, seconds))
        return [{"kind": "eval", "step": step, "time": time.time(), **metrics_record(s)} for s in results.values()]

    return evaluate
