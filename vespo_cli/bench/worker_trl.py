"""The TRL side of the e2e comparison: TRL's GRPOTrainer on the same model, prompts, reward, lengths
and dtype policy, sampling with HF `generate` or with vLLM in colocate mode; one step per "step"."""

from __future__ import annotations

import os
import tempfile
import time

from ..inputs import prompt_chunk
from .flops import model_shape
from .protocol import WorkerSide

TRL_CONFIG = (
    "GRPOConfig(per_device_train_batch_size=prompts×n, num_generations=n, max_completion_length=max_tokens, "
    "bf16=True (fp32 master weights + bf16 autocast), learning_rate and sampling as vespo's, otherwise TRL "
    "defaults: beta=0, gradient_checkpointing=True; engine: HF generate, or use_vllm=True with "
    "vllm_mode='colocate' (vLLM's KV cache set to vespo's kv_cache_gib, bf16 like vespo's engine)"
)


class Timers:
    """Seconds spent in wrapped methods of one object since the last `take()`."""

    def __init__(self):
        self.s: dict[str, float] = {}
        self.depth: dict[str, int] = {}

    def wrap(self, obj, method: str, key: str | None = None) -> None:
        fn = getattr(obj, method, None)
        if fn is None:
            return
        key = key or method

        def timed(*args, **kwargs):
            self.depth[key] = self.depth.get(key, 0) + 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.depth[key] -= 1
                if self.depth[key] == 0:
                    self.add(key, t0)

        setattr(obj, method, timed)

    def add(self, key: str, t0: float) -> None:
        """Count the seconds since `t0` (perf_counter) to `key`."""
        self.s[key] = self.s.get(key, 0.0) + time.perf_counter() - t0

    def take(self) -> dict[str, float]:
        out, self.s = self.s, {}
        return out


def trl_parts(t: dict[str, float], step_s: float) -> dict[str, float]:
    """A TRL step in the figure's parts, from the Timers of its methods (forward: compute_loss; backward:
    the rest of training_step after the inputs; optimizer and the rest: other)."""
    publish = t.get("sync_weights", 0.0)
    gen_total = t.get("_generate_and_score_completions", 0.0)
    old = t.get("logps_outside_loss", 0.0)
    parts = {
        "rollout": max(gen_total - publish - old, 0.0),
        "old_logprob": old,
        "forward": t.get("compute_loss", 0.0),
        "backward": max(t.get("training_step", 0.0) - t.get("_prepare_inputs", 0.0) - t.get("compute_loss", 0.0), 0.0),
        "publish": publish,
    }
    parts["other"] = max(step_s - sum(parts.values()), 0.0)
    return parts


def _colocated_kv(kv_bytes: int) -> None:
    """TRL builds its colocated `LLM` itself; on CPU vLLM needs a KV size, given here (vespo's)."""
    import trl.generation.vllm_generation as vg

    base = vg.LLM

    def llm(*args, **kwargs):
        kwargs.setdefault("kv_cache_memory_bytes", kv_bytes)
        return base(*args, **kwargs)

    vg.LLM = llm


def _versions(engine: str) -> dict[str, str]:
    """TRL's and (for its vLLM side) vLLM's versions: the two sides may run in different venvs."""
    from .machine import installed

    return installed(("trl", "transformers", "torch") + (("vllm",) if engine == "vllm" else ()))


def worker_trl(argv: list[str], quick: bool, engine: str) -> None:
    """TRL's GRPOTrainer; steps on command. engine: "hf" (TRL's default) or "vllm" (colocate)."""
    # imported before the setup clock starts, as always: setup_s counts the setup, not the imports
    import torch  # noqa: F401
    from datasets import Dataset  # noqa: F401
    from transformers import TrainerCallback  # noqa: F401
    from trl import GRPOConfig, GRPOTrainer  # noqa: F401

    from ..data import build_messages  # noqa: F401
    from ..models import load_model, load_tokenizer, resolve_model
    from ..rewards import score_one  # noqa: F401

    side = WorkerSide(argv, quick, engine)
    t0 = time.perf_counter()
    dataset = _dataset(side.cfg, side.sz)
    base = resolve_model(side.cfg.model.path)
    model = load_model(base, side.cfg.model.dtype)
    shape = model_shape(model)
    timers = Timers()
    turns = _turns(side, timers)
    args = _grpo_config(side.cfg, side.sz, engine)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_verify_reward,
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(base),
        callbacks=[turns],
    )
    turns.trainer = trainer
    _instrument(trainer, timers)
    side.send_setup(
        t0,
        gradient_checkpointing=bool(args.gradient_checkpointing),
        engine=engine,
        params=shape["params"],
        versions=_versions(engine),
    )
    trainer.train()
    side.cmds.readline()  # "stop"
    side.send_peak_rss()


def math_verify_reward(completions, answer, **_):
    """TRL's reward function: vespo's scorer on each completion against its problem's answer."""
    from ..rewards import score_one

    return [score_one(c[0]["content"], a).reward for c, a in zip(completions, answer)]


def _dataset(cfg, sz: dict):
    """The prompts vespo's rollout batches take, in its order (batch i = prompts 2i, 2i+1), as TRL's dataset."""
    from datasets import Dataset

    from ..data import build_messages

    rounds, per_step = sz["e2e_steps"] + 1, sz["e2e_prompts"]
    problems = prompt_chunk(cfg, 0, per_step * rounds)
    return Dataset.from_list([{"prompt": build_messages(p, cfg.data.template), "answer": p.answer} for p in problems])


def _turns(side: WorkerSide, timers: Timers):
    """The callback that paces TRL's steps by the parent's commands and sends a record after each;
    its `.trainer` is set once the trainer exists (for TRL's per-step logs)."""
    from transformers import TrainerCallback

    class Turns(TrainerCallback):
        trainer = None

        def on_step_begin(self, args, state, control, **kw):
            if not side.wants_step():
                raise SystemExit(0)
            timers.take()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s = time.perf_counter() - self.t
            metrics = getattr(self.trainer, "_metrics", {}).get("train", {})  # TRL's per-step logs, best effort
            last = {k: (metrics.get(k) or [None])[-1] for k in ("reward", "completions/mean_length")}
            side.send_step(
                {
                    "step_s": step_s,
                    "parts": trl_parts(timers.take(), step_s),
                    "reward": last["reward"],
                    "completion_mean_length": last["completions/mean_length"],
                }
            )

    return Turns()


def _grpo_config(cfg, sz: dict, engine: str):
    """TRL_CONFIG: vespo's sizes, learning rate, seed and sampling; TRL's defaults otherwise."""
    from trl import GRPOConfig

    extra = {}
    if os.environ.get("VESPO_BENCH_TRL_GC"):  # one-off comparisons; default: TRL's own (gradient checkpointing on)
        extra["gradient_checkpointing"] = os.environ["VESPO_BENCH_TRL_GC"] == "1"
    if engine == "vllm":
        _colocated_kv(int(cfg.rollout.kv_cache_gib * 2**30))
        extra.update(use_vllm=True, vllm_mode="colocate", vllm_max_model_length=cfg.data.max_prompt_tokens + 64)
        extra["vllm_max_model_length"] += sz["e2e_tokens"]
    return GRPOConfig(
        **extra,
        output_dir=tempfile.mkdtemp(prefix="vespo-bench-trl-"),
        per_device_train_batch_size=sz["e2e_prompts"] * sz["e2e_n"],
        num_generations=sz["e2e_n"],
        max_completion_length=sz["e2e_tokens"],
        max_steps=sz["e2e_steps"] + 1,
        learning_rate=cfg.trainer.lr,
        bf16=True,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        shuffle_dataset=False,
        seed=cfg.trainer.seed,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


def _instrument(trainer, timers: Timers) -> None:
    for m in ("_generate_and_score_completions", "_prepare_inputs", "training_step"):
        timers.wrap(trainer, m)
    loss = trainer.compute_loss
    logps = trainer._get_per_token_logps_and_entropies
    inside = {"loss": False}

    def compute_loss(*a, **kw):
        inside["loss"] = True
        t0 = time.perf_counter()
        try:
            return loss(*a, **kw)
        finally:
            inside["loss"] = False
            timers.add("compute_loss", t0)

    def get_logps(*a, **kw):
        if inside["loss"]:
            return logps(*a, **kw)
        t0 = time.perf_counter()
        try:
            return logps(*a, **kw)
        finally:
            timers.add("logps_outside_loss", t0)

    trainer.compute_loss = compute_loss
    trainer._get_per_token_logps_and_entropies = get_logps
    vg = getattr(trainer, "vllm_generation", None)
    if vg is not None:
        timers.wrap(vg, "sync_weights")
