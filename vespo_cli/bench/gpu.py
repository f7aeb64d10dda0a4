"""`make gpu-check` (= `python -m vespo_cli.bench.gpu reports/gpu`): the qwen3-0.6b preset (vLLM colocated
with the trainer on one CUDA device) for a few optimizer steps, with CUDA-synchronised timings (the
trainer's phase clocks synchronise, train/step.py `_clock`), the device's own bf16 matmul peak, train
tokens/s, MFU, and the peak GPU memory against the plan's prediction (`vespo presets --check`'s
`plan.memory.memory_plan`). Writes `<out>/gpu_check.json` and the run under `<out>/run/`.

Without a CUDA device it stops before loading anything, with one line and exit 2."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from ..errors import UserError

PRESET = "qwen3-0.6b"
STEPS = 4  # the first pays compilation and vLLM warm-up; the rest are the figures
NO_CUDA = (
    "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run `make gpu-check` on a machine with one"
)


def require_cuda() -> None:
    """The one-line refusal on a machine torch sees no CUDA device on."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(NO_CUDA)


def cuda_matmul_peak(n: int = 8192, window_s: float = 2.0) -> float:
    """bf16 n×n×n matmul FLOP per second on the current CUDA device, synchronised, after a warm-up."""
    import torch

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    torch.matmul(a, b)
    torch.cuda.synchronize()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < window_s:
        torch.matmul(a, b)
        count += 1
        torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - t0)


def gpu_check(out: Path, steps: int = STEPS) -> dict:
    """Run the check into `out`; its record (also `<out>/gpu_check.json`)."""
    require_cuda()
    import torch

    from ..config import load_config
    from ..fsio import atomic_write_json, read_jsonl
    from ..plan.memory import memory_plan
    from ..plan.models import model_shape as plan_shape
    from ..train.loop import train
    from .flops import shape_from_plan, train_flops

    cfg = load_config(PRESET, None, [f"trainer.steps={steps}", f"trainer.save_every={steps}"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    peak = cuda_matmul_peak()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, out / "run")
    wall = time.perf_counter() - t0
    records = [r for r in read_jsonl(out / "run" / "metrics.jsonl") if r.get("kind") == "train"]
    measured = records[1:] or records
    shape = shape_from_plan(plan_shape(cfg.model.path))
    free, total = torch.cuda.mem_get_info()
    plan = memory_plan(cfg)

    def mfu(r: dict) -> float:  # prompts are not in the record: the response tokens only, a lower bound
        return train_flops(shape, [0], [int(r["n_tokens"])]) / r["train_s"] / peak

    result = {
        "preset": PRESET,
        "device": torch.cuda.get_device_name(),
        "steps": len(records),
        "wall_s": wall,
        "peak_bf16_tflops": peak / 1e12,
        "train_s_median": statistics.median(r["train_s"] for r in measured),
        "rollout_s_median": statistics.median(r["rollout_s"] for r in measured),
        "train_tokens_per_s": statistics.median(r["n_tokens"] / r["train_s"] for r in measured),
        "train_mfu_response_tokens_only": statistics.median(mfu(r) for r in measured),
        "peak_torch_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "device_used_gib_at_end": (total - free) / 2**30,
        "planned_per_gpu_gib": plan.per_gpu / 2**30,
        "records": records,
    }
    atomic_write_json(out / "gpu_check.json", result)
    return result


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("reports/gpu")
    try:
        res = gpu_check(out)
    except UserError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in res.items() if k != "records"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
