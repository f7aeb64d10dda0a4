"""The e2e section: one GRPO step of vespo against TRL's GRPOTrainer, in three rows.

Four configurations (vespo with its HF engine or vLLM, TRL with HF `generate` or vLLM colocated) each
run in a short-lived worker process: setup, a warm-up step, then `e2e_steps` measured steps. One worker
lives at a time (two side by side do not fit beside other work in this machine's memory), in rounds
whose order alternates (A B C D, then D C B A, ...), so every configuration sees the machine's load
drift alike. A row's speedup is the median over rounds of TRL's median step time over vespo's in the
same round.

* same_engine: vespo HF engine vs TRL HF generate: the trainer and the loop, engine held equal;
* vllm: vespo vLLM vs TRL vLLM colocate: each side's best engine;
* vllm_vs_trl_hf: vespo vLLM vs TRL HF generate: the row `make bench` reported before, engine choice
  included (vLLM alone is a ~3× sampler on this CPU), kept for continuity.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from pathlib import Path

from .machine import memory_available, version
from .protocol import Worker, WorkerError, worker_python
from .sizes import sizes, vespo_overrides
from .worker_trl import TRL_CONFIG

ROWS = {  # row: (vespo kind, TRL kind, what it measures)
    "same_engine": ("vespo-hf", "trl-hf", "vespo HF engine vs TRL HF generate (same engine: trainer and loop)"),
    "vllm": ("vespo-vllm", "trl-vllm", "vespo vLLM vs TRL vLLM colocate (each side's best engine)"),
    "vllm_vs_trl_hf": (
        "vespo-vllm",
        "trl-hf",
        "vespo vLLM vs TRL HF generate (the pre-issue-21 headline: engine choice included)",
    ),
}


def version_warnings(log: str) -> list[str]:
    """A worker log's warnings that the installed versions are outside a library's supported range."""
    found = re.findall(r"UserWarning: ([^\n]*support[^\n]*version[^\n]*)", log)
    return list(dict.fromkeys(found))


def worker_env(kind: str) -> dict:
    """The interpreter a worker kind runs in and its trl / vllm / torch versions (TRL's vLLM side may have its
    own venv: `make bench-trl-env`)."""
    python = worker_python(kind)
    probe = "import json, vespo_cli.bench.machine as m; print(json.dumps(m.installed(['trl', 'vllm', 'torch'])))"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"python": python, "error": str(e)}
    try:
        return {"python": python, **json.loads(found.stdout.splitlines()[-1])}
    except (IndexError, ValueError):
        return {"python": python, "error": error_line(found.stderr)}


def error_line(tail: str) -> str:
    """The exception line of a worker's log tail (its last `SomethingError: ...` line), else its last
    line; with the innermost TRL frame the traceback passed through, where there is one."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", ln).strip() for ln in tail.splitlines()]
    lines = [ln for ln in lines if ln]
    err = next((ln for ln in reversed(lines) if re.match(r"^[\w.]*(Error|Exception|Exit)\b", ln)), None)
    err = err or (lines[-1] if lines else "(empty log)")
    frames = [ln for ln in lines if ln.startswith("File ") and "/trl/" in ln]
    if frames:
        where = re.sub(r'^File ".*/(trl/[^"]+)", line (\d+), in (\w+)', r"\1:\2 \3", frames[-1])
        return f"{err} (in {where})"
    return err


def run_worker(kind: str, quick: bool, logdir: Path, n_steps: int, tag: str) -> dict:
    w = Worker(kind, quick, logdir, tag)
    try:
        setup = w.recv()
        steps = [w.ask("step") for _ in range(n_steps + 1)]
        setup.update(w.ask("stop"))
    finally:
        w.close()
    return {"setup": setup, "steps": steps}


def wait_for_memory(gib: float, timeout_s: float = 600.0, say=print) -> float:
    """Wait (up to timeout_s) until `gib` GiB are available, so that a worker does not push the machine
    into the OOM killer (which would pick the largest process, often not the bench's). Returns GiB free."""
    t0 = time.monotonic()
    free = memory_available() / 2**30
    while free < gib and time.monotonic() - t0 < timeout_s:
        say(f"waiting for memory: {free:.1f} GiB available, a worker needs {gib:.1f}")
        time.sleep(20)
        free = memory_available() / 2**30
    return free


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def e2e(quick: bool, logdir: Path, say=print) -> dict:
    sz = sizes(quick)
    trl = sz["trl"] and version("trl") is not None
    kinds = ["vespo-hf", "trl-hf", "vespo-vllm", "trl-vllm"] if trl else ["vespo-hf", "vespo-vllm"]
    out: dict = {
        "rounds": sz["e2e_rounds"],
        "measured_steps_per_worker": sz["e2e_steps"],
        "warmup_steps_per_worker": 1,
        "pairing": "interleaved rounds of one-at-a-time workers, order alternating",
        "prompts": sz["e2e_prompts"],
        "n": sz["e2e_n"],
        "max_tokens": sz["e2e_tokens"],
        "config": {
            "vespo_overrides": ["preset smollm2-arith"] + vespo_overrides(sz, "<engine>"),
            "trl": TRL_CONFIG,
        },
        "rows_meaning": {k: v[2] for k, v in ROWS.items()},
        "errors": {},
    }
    if trl:
        out["trl_vllm_env"] = worker_env("trl-vllm")
    if not trl and sz["trl"]:
        out["trl_skipped"] = "trl is not installed (`make bench` installs the bench extra)"
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for r in range(sz["e2e_rounds"]):
        for kind in kinds if r % 2 == 0 else kinds[::-1]:
            if kind in out["errors"]:
                continue
            free = wait_for_memory(sz["worker_gib"], say=say)
            say(f"e2e round {r + 1}/{sz['e2e_rounds']}: {kind} ({free:.1f} GiB available)")
            if free < sz["worker_gib"]:
                out["errors"][kind] = {"error": f"not run: {free:.1f} GiB available", "log_tail": "", "round": r}
                continue
            try:
                run = run_worker(kind, quick, logdir, sz["e2e_steps"], f"-r{r}")
            except WorkerError as e:
                if kind.startswith("vespo"):
                    raise
                full = e.log.read_text(errors="replace") if e.log and e.log.is_file() else e.tail
                out["errors"][kind] = {
                    "error": error_line(full),
                    "warnings": version_warnings(full),
                    "log_tail": e.tail,
                    "round": r,
                }
                say(f"e2e: {kind} failed: {out['errors'][kind]['error']}")
                continue
            run["round"] = r
            run["load_avg"] = [s["load_avg"] for s in run["steps"]]
            runs[kind].append(run)
    for kind, rs in runs.items():
        if not rs:
            continue
        measured = [s for run in rs for s in run["steps"][1:]]
        out[kind] = {
            "step_s_median": statistics.median(s["step_s"] for s in measured),
            "peak_tree_rss_gib": max(run["setup"]["peak_tree_rss_gib"] for run in rs),
            "peak_main_rss_gib": max(run["setup"]["peak_main_rss_gib"] for run in rs),
            "setup_s": _median(run["setup"]["setup_s"] for run in rs),
            "parts": {p: statistics.median(s["parts"].get(p, 0.0) for s in measured) for p in measured[0]["parts"]},
            "reward": _median(s.get("reward") for s in measured),
            "runs": rs,
        }
        if kind.startswith("vespo"):
            out[kind]["objective_share"] = statistics.median(s["objective_share"] for s in measured)
    out["rows"] = {name: _row(runs, v, t) for name, (v, t, _) in ROWS.items() if runs.get(v) and runs.get(t)}
    if "trl-vllm" in out["errors"]:
        out["trl_vllm_error"] = out["errors"]["trl-vllm"]["error"]
    return out


def _row(runs: dict, vk: str, tk: str) -> dict:
    by_round = {}
    for run in runs[vk]:
        by_round.setdefault(run["round"], {})["v"] = statistics.median(s["step_s"] for s in run["steps"][1:])
    for run in runs[tk]:
        by_round.setdefault(run["round"], {})["t"] = statistics.median(s["step_s"] for s in run["steps"][1:])
    ratios = [d["t"] / d["v"] for _, d in sorted(by_round.items()) if "t" in d and "v" in d]
    peak = lambda k: max(run["setup"]["peak_tree_rss_gib"] for run in runs[k])  # noqa: E731
    return {
        "vespo": vk,
        "trl": tk,
        "speedup_per_round": ratios,
        "speedup": statistics.median(ratios) if ratios else None,
        "peak_rss_ratio": peak(vk) / peak(tk),
    }
