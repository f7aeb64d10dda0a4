"""The study section: the optimizer step the cpu-staleness study runs (presets/cpu-staleness.yaml:
4 prompts × 8 samples of ≤ 48 response tokens, fp32 masters with a bf16 compute copy, one thread).

Its time split (rollout, old log-probs, forward, backward, optimizer), its MFU against the bf16 matmul
peak measured right before and after each step, and two same-run comparisons on the same batch:

* `study_step_speedup`: the trainer at `reference.STUDY_REFERENCE_REV` (main before issue 33's work)
  over this tree's, old log-probs + optimizer step, process CPU seconds, median of per-round ratios;
* `study_step_vs_plain`: this tree's optimizer step over a plain `transformers` forward+backward of the
  same rows (one padded batch, `labels` on the response tokens, bf16 weights): what the hardware gives
  to code that does nothing clever.

The trainers: `reference`; `eager`, this tree with trainer.compile off; `compiled`, this tree with its
decoder blocks compiled (`train/compile.py`; here as `torch.compile` wrappers swapped in for that
trainer's turns, so that all three share one model and optimizer). `current` is the one the preset
configures. The compiled trainer's compile time (its first round's wall seconds over its median round's)
is reported apart from its step time; inductor compiles in worker processes, so it is wall-clock.

The rollout runs first (the preset's engine, its sampling), and its first batch is the batch every
trainer round trains on; rewards are drawn at random so that every group has an advantage spread.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

from .flops import matmul_peak, model_shape, train_flops
from .sizes import sizes


def study_config(quick: bool):
    """The cpu-staleness preset as the study runs it (the tiny model in --quick)."""
    from ..config import load_config

    return load_config("cpu-staleness", None, ["model.path=tiny"] if quick else [])


def section_study(quick: bool) -> dict:
    """Rollout rounds, then rounds of (reference trainer, this trainer, plain transformers) on the
    first rollout's rows, each paired with matmul peaks; the medians and per-round records."""
    import torch

    from ..models import load_model, resolve_model
    from ..objectives import group_advantages
    from . import reference
    from .reference import reference_step_module

    sz = sizes(quick)
    cfg = study_config(quick)
    torch.set_num_threads(cfg.trainer.threads or torch.get_num_threads())
    path = resolve_model(cfg.model.path)
    rows, rollout = _rollout(cfg, path, sz["study_prompts"], sz["study_rounds"] + 1)
    rows.rewards = torch.rand(len(rows), generator=torch.Generator().manual_seed(0))
    adv = group_advantages(rows.rewards, rows.group_ids).float()
    model = load_model(path, cfg.model.dtype)
    model.config.use_cache = False
    plain = copy.deepcopy(model).to(torch.bfloat16)
    seq = [len(p) + len(r) for p, r in zip(rows.prompt_ids, rows.response_ids)]
    resp = [len(r) for r in rows.response_ids]
    shape = model_shape(model)
    flops = train_flops(shape, seq, resp)
    from ..train import step as current

    optimizer = current.make_optimizer(model, cfg)
    runs = {"eager": _Trainer(current, model, cfg, optimizer), "compiled": _Trainer(current, model, cfg, optimizer)}
    runs["compiled"].layers = torch.nn.ModuleList([torch.compile(b, dynamic=True) for b in model.model.layers])
    try:
        runs = {"reference": _Trainer(reference_step_module(), model, cfg, optimizer), **runs}
        ref_error = None
    except RuntimeError as e:  # no git history here (an installed package): the comparison is left out
        ref_error = str(e)
    rounds = []
    for _ in range(sz["study_rounds"] + 1):  # round 0 warms up (and compiles)
        rec = {name: run.measure(rows, adv, flops, sz) for name, run in runs.items()}
        rec["plain"] = _plain_step(plain, rows, flops, sz)
        rec["load_avg"] = os.getloadavg()[0]
        rounds.append(rec)
    current_name = "compiled" if cfg.trainer.compile else "eager"
    for rec in rounds:
        rec["current"] = rec[current_name]
    out = _result(cfg, sz, rows, shape, flops, rollout, rounds, ref_error, reference.STUDY_REFERENCE_REV)
    walls = [r["compiled"]["old_logprobs_s"] + r["compiled"]["step_s"] for r in rounds]
    eager_walls = [r["eager"]["old_logprobs_s"] + r["eager"]["step_s"] for r in rounds]
    out["current_trainer"] = current_name
    out["eager"], out["compiled"] = _split(rounds[1:], "eager"), _split(rounds[1:], "compiled")
    out["compile_s"] = walls[0] - statistics.median(walls[1:])
    out["compile_first_round_s"], out["eager_first_round_s"] = walls[0], eager_walls[0]
    out["compile_speedup"] = statistics.median(
        (r["eager"]["old_logprobs_cpu_s"] + r["eager"]["step_cpu_s"])
        / (r["compiled"]["old_logprobs_cpu_s"] + r["compiled"]["step_cpu_s"])
        for r in rounds[1:]
    )
    return out


def _rollout(cfg, path: str, prompts: int, rounds: int):
    """`rounds` rollouts of `prompts` arithmetic prompts × rollout.n with the preset's engine: the first
    one's Rows and every round's seconds (wall and CPU) and token counts. The engine is closed after."""
    import torch

    from ..data import load_problems
    from ..models import load_tokenizer
    from ..rollout.base import Sampling
    from ..rollout.sampling import encode_prompts, open_engine
    from ..train.batch import Rows

    tok = load_tokenizer(path)
    problems = load_problems(cfg.data.train, limit=prompts, difficulty=cfg.data.difficulty)
    ids = encode_prompts(tok, problems, cfg.data.template, cfg.data.max_prompt_tokens)
    engine = open_engine(cfg, path)
    r = cfg.rollout
    first, timings = None, []
    try:
        for i in range(rounds):
            sampling = Sampling(temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=100 + i)
            t0, c0 = time.perf_counter(), time.process_time()
            out = engine.generate(ids, r.n, sampling)
            timings.append(
                {
                    "s": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - c0,
                    "tokens": sum(len(c.response_token_ids) for c in out),
                }
            )
            first = first or out
    finally:
        engine.close()
    B = len(first)
    rows = Rows(
        [c.prompt_token_ids for c in first],
        [c.response_token_ids for c in first],
        [c.rollout_logprobs for c in first],
        torch.zeros(B),
        torch.zeros(B, dtype=torch.bool),
        [str(c.prompt_index) for c in first],
        torch.zeros(B, dtype=torch.long),
        ["bench"] * B,
    )
    return rows, timings


class _Trainer:
    """One trainer (a `train.step` module: this tree's or the reference's) on the shared model, with its
    own optimizer (AdamW state does not leak between the trainers)."""

    layers = None  # decoder blocks swapped in for this trainer's turns (the compiled ones), or None

    def __init__(self, module, model, cfg, optimizer):
        import torch

        from .reference import reference_config

        self.module, self.model, self.optimizer = module, model, optimizer
        self.cfg = cfg if module.__name__.startswith("vespo_cli.") else reference_config(module, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)

    def measure(self, rows, adv, flops: float, sz: dict) -> dict:
        """Old log-probs, then one optimizer step on every row (with this trainer's blocks); seconds, MFU."""
        decoder = self.model.model
        eager_layers = decoder.layers
        if self.layers is not None:
            decoder.layers = self.layers
        try:
            return self._measure(rows, adv, flops, sz)
        finally:
            decoder.layers = eager_layers

    def _measure(self, rows, adv, flops: float, sz: dict) -> dict:
        before = matmul_peak(sz["matmul_n"], sz["matmul_window_s"])
        t0, c0 = time.perf_counter(), time.process_time()
        old = self.module.old_logprobs(self.model, rows, self.cfg)
        t1, c1 = time.perf_counter(), time.process_time()
        rec = self.module.optimizer_step(
            self.model, self.optimizer, self.scheduler, rows, list(range(len(rows))), adv, old, self.cfg
        )
        t2, c2 = time.perf_counter(), time.process_time()
        after = matmul_peak(sz["matmul_n"], sz["matmul_window_s"])
        peak = (before[1] + after[1]) / 2
        return {
            "old_logprobs_s": t1 - t0,
            "old_logprobs_cpu_s": c1 - c0,
            "step_s": t2 - t1,
            "step_cpu_s": c2 - c1,
            "forward_s": rec["time_forward_s"],
            "backward_s": rec["time_backward_s"],
            "optimizer_s": rec["time_optimizer_s"],
            "loss": rec["loss"],
            "grad_norm": rec["grad_norm"],
            "peak_flops_per_cpu_s": peak,
            "mfu": flops / (c2 - c1) / peak,
        }


def _plain_step(plain, rows, flops: float, sz: dict) -> dict:
    """The same rows through a bf16 transformers model: one padded batch with its attention mask,
    `labels` = the response tokens (-100 elsewhere), loss.backward(); seconds and MFU (the same model
    FLOPs as the trainer's step, though the plain model's LM head runs on every position)."""
    from ..train.batch import make_microbatch

    mb = make_microbatch(rows, list(range(len(rows))))
    labels = mb.input_ids.masked_fill(~mb.response_mask, -100)
    before = matmul_peak(sz["matmul_n"], sz["matmul_window_s"])
    t0, c0 = time.perf_counter(), time.process_time()
    out = plain(input_ids=mb.input_ids, attention_mask=mb.attention_mask, labels=labels, use_cache=False)
    t1, c1 = time.perf_counter(), time.process_time()
    out.loss.backward()
    t2, c2 = time.perf_counter(), time.process_time()
    plain.zero_grad(set_to_none=True)
    after = matmul_peak(sz["matmul_n"], sz["matmul_window_s"])
    peak = (before[1] + after[1]) / 2
    return {
        "forward_s": t1 - t0,
        "forward_cpu_s": c1 - c0,
        "backward_s": t2 - t1,
        "backward_cpu_s": c2 - c1,
        "step_cpu_s": c2 - c0,
        "mfu": flops / (c2 - c0) / peak,
    }


def _result(cfg, sz, rows, shape, flops, rollout, rounds, ref_error, ref_rev) -> dict:
    """Sizes, the rollout, each trainer's medians, the headline ratios (medians of per-round ratios
    after the warm-up round) and the rounds."""
    import torch

    measured = rounds[1:]
    med = lambda xs: statistics.median(xs)  # noqa: E731
    cur = [r["current"] for r in measured]
    split = lambda name: _split(measured, name)  # noqa: E731

    out = {
        "preset": "cpu-staleness",
        "model": cfg.model.path,
        "rows": len(rows),
        "prompt_tokens": [len(p) for p in rows.prompt_ids],
        "response_tokens": [len(r) for r in rows.response_ids],
        "micro_token_budget": cfg.trainer.micro_token_budget,
        "threads": torch.get_num_threads(),
        "model_shape": shape,
        "flops_per_step": flops,
        "matmul_n": sz["matmul_n"],
        "rollout_engine": cfg.rollout.engine,
        "rollout": rollout,
        "rollout_s_median": med(r["s"] for r in rollout[1:] or rollout),
        "rollout_cpu_s_median": med(r["cpu_s"] for r in rollout[1:] or rollout),
        "current": split("current"),
        "plain": {k: med(r["plain"][k] for r in measured) for k in measured[0]["plain"]},
        "peak_bf16_gflops_per_cpu_s": med(c["peak_flops_per_cpu_s"] for c in cur) / 1e9,
        "study_train_mfu": med(c["mfu"] for c in cur),
        "study_step_vs_plain": med(r["current"]["step_cpu_s"] / r["plain"]["step_cpu_s"] for r in measured),
        "reference_rev": ref_rev,
        "rounds": rounds,
    }
    if ref_error is None:
        both = lambda r: r["old_logprobs_cpu_s"] + r["step_cpu_s"]  # noqa: E731
        out["reference"] = split("reference")
        out["study_step_speedup"] = med(both(r["reference"]) / both(r["current"]) for r in measured)
        step_only = (r["reference"]["step_cpu_s"] / r["current"]["step_cpu_s"] for r in measured)
        out["study_optimizer_step_speedup"] = med(step_only)
    else:
        out["reference_error"] = ref_error
    return out


def _split(measured: list[dict], name: str) -> dict:
    """Medians of trainer `name`'s phase times and MFU over the measured rounds."""
    keys = ("old_logprobs_s", "old_logprobs_cpu_s", "step_s", "step_cpu_s", "forward_s", "backward_s", "optimizer_s")
    return {k: statistics.median(r[name][k] for r in measured) for k in (*keys, "mfu")}
