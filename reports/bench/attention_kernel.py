"""The train section's attention measurement alone, at its real shapes, in a minute and ~1.3 GB
(the whole section takes ~6 GB): the kernel bound of the trainer MFU (docs/performance.md, "The
trainer MFU and where the rest goes").

    OMP_NUM_THREADS=1 .venv/bin/python reports/bench/attention_kernel.py [--out reports/bench/attention_kernel.json]

Loads the bench's model under the headline dtype policy, runs the old-logprob forward of one
microbatch of the section's rows (train_micro_rows × (prompt + response) tokens) with
`capture_attention`, times the captured call alone (`attention_kernel`), and splits the step of the
last full bench run (`--latest`, its raw.train: step CPU seconds and matmul peak) with `step_split`.
`--alternatives` also times the same call under SDPA's math backend and transformers' eager attention
(a causal mask, bf16 scores, fp32 softmax), each against the trainer's kernel: could another kernel
torch ships lift the bound?
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vespo_cli.bench.attention import AttentionCall, attention_kernel, capture_attention, step_split
from vespo_cli.bench.flops import model_shape, train_flops
from vespo_cli.bench.machine import machine_info
from vespo_cli.bench.section_train import HEAD_POLICY, _policy_configs
from vespo_cli.bench.sizes import sizes, synthetic_rows
from vespo_cli.models import load_model, resolve_model
from vespo_cli.train.step import old_logprobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/bench/attention_kernel.json")
    ap.add_argument("--latest", default="reports/bench/latest.json")
    ap.add_argument("--alternatives", action="store_true", help="also time SDPA's math backend and eager attention")
    args = ap.parse_args()
    sz = sizes(False)
    cfg = _policy_configs(sz)[HEAD_POLICY]
    model = load_model(resolve_model(cfg.model.path), cfg.model.dtype)
    model.config.use_cache = False
    B, P, R, m = sz["train_rows"], sz["train_prompt"], sz["train_response"], sz["train_micro_rows"]
    rows = synthetic_rows(torch.Generator().manual_seed(0), model.config.vocab_size, P, [R] * m, 2, "bench")
    with capture_attention(model) as calls:
        old_logprobs(model, rows, cfg)
    kernel = attention_kernel(calls[0], sz["matmul_n"], sz["matmul_window_s"])
    shape = model_shape(model)
    latest = json.load(open(args.latest))
    train = latest["raw"]["train"]
    step_cpu_s = statistics.median(r["step_cpu_s"] for r in train["policies"][HEAD_POLICY]["rounds"][1:])
    split = step_split(
        kernel,
        shape,
        [P + R] * B,
        train_flops(shape, [P + R] * B, [R] * B),
        step_cpu_s,
        train["peak_bf16_gflops_per_cpu_s"],
    )
    out = {
        "command": "reports/bench/attention_kernel.py",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "step_from": f"{args.latest} ({latest['started']}): raw.train, {HEAD_POLICY}, train_mfu {latest['train_mfu']}",
        "attention_kernel": split,
    }
    if args.alternatives:
        out["alternatives"] = alternatives(calls[0], sz["matmul_n"], sz["matmul_window_s"], kernel)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(split, indent=1))


def alternatives(call: AttentionCall, matmul_n: int, window_s: float, trainer_kernel: dict) -> dict:
    """The captured call under the other CPU attention paths torch and transformers ship, timed as the
    trainer's kernel is (`attention_kernel`), with the largest |difference| of their output from it."""
    import sys
    from dataclasses import replace

    from torch.nn.attention import SDPBackend, sdpa_kernel

    def math_backend(*a, **kw):
        with sdpa_kernel(SDPBackend.MATH):
            return call.fn(*a, **kw)

    L = call.query.shape[2]
    causal = torch.full((L, L), float("-inf")).triu(1).to(call.query.dtype)[None, None]
    eager = sys.modules[type(call.module).__module__].eager_attention_forward
    variants = {
        "sdpa_math": replace(call, implementation="sdpa (math backend)", fn=math_backend),
        "eager": replace(call, implementation="eager (bf16 scores, fp32 softmax)", fn=eager, mask=causal),
    }
    with torch.no_grad():
        reference = call.fn(call.module, call.query, call.key, call.value, call.mask, **call.kwargs)[0].float()
    out = {}
    for name, variant in variants.items():
        with torch.no_grad():
            o = variant.fn(variant.module, call.query, call.key, call.value, variant.mask, **call.kwargs)[0]
        timed = attention_kernel(variant, matmul_n, window_s)
        out[name] = {
            **timed,
            "fwd_bwd_vs_trainer_kernel": timed["fwd_bwd_cpu_s"] / trainer_kernel["fwd_bwd_cpu_s"],
            "max_abs_diff_vs_trainer_kernel": (o.float() - reference).abs().max().item(),
        }
    return out


if __name__ == "__main__":
    main()
