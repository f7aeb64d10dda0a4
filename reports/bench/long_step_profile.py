"""Where the long-sequence train step's time goes: one microbatch of the train section's rows
(prompt 128 + response 896 tokens, SmolLM2-135M, the headline dtype policy bf16_params, one thread)
through the trainer's own forward + loss + backward (`train.step._accumulate` inside
`precision.compute`). Each aten op's time is grouped by what the op is (matmul, attention, LM head
matmuls, the head's log-softmax, elementwise, casts/copies, fp32 gradient accumulation), forward and
backward apart, each with its FLOP/s against the bf16 matmul peak measured in the same process
(docs/performance.md, "The long-sequence step, op by op"). The figures are thread CPU seconds per op
(`CpuClock`, a dispatch mode): on shared, loaded cores torch.profiler's self times are wall time and
count the time the thread sat descheduled inside an op; its grouping (record_shapes, with_flops) is
kept next to them as `profiler_wall`.

    OMP_NUM_THREADS=1 .venv/bin/python reports/bench/long_step_profile.py [--rows 1] [--layers 10 5] \
        [--compile] [--compile-pair 6] [--out reports/bench/long_step_profile.json]

The whole model at 1 row × 1024 tokens needs ~2.9 GB (fp32 masters, bf16 copy, fp32 gradients, ~33 MB of
activations per layer), so the step is measured with the decoder cut to each of `--layers` (the first
n blocks, a fresh process each) and extrapolated to the model's own depth (`extrapolate`). --compile
compiles the decoder blocks (`trainer.compile`) and profiles the compiled step; --compile-pair n times
the eager and the compiled step side by side at n blocks in one process. No optimizer step.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import multiprocessing
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode

from vespo_cli.bench.flops import matmul_peak, model_shape, train_flops
from vespo_cli.bench.machine import machine_info
from vespo_cli.bench.section_train import HEAD_POLICY, _policy_configs
from vespo_cli.bench.sizes import sizes, synthetic_rows
from vespo_cli.models import load_model, resolve_model
from vespo_cli.train import forward, precision, step
from vespo_cli.train.compile import compile_decoder_blocks

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
MATMUL_WRAPPERS = {"aten::linear", "aten::matmul", "aten::t", "aten::transpose", "aten::expand", "aten::view"}
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention")
COPIES = {"aten::to", "aten::_to_copy", "aten::copy_", "aten::clone", "aten::contiguous", "aten::empty_like"}
HEAD_MARK, LOSS_MARK, STEP_MARK = "vespo::head", "vespo::loss", "vespo::step"
BACKWARD_MARK = "autograd::engine::evaluate_function: "


def marked(fn, name: str):
    """`fn` run inside a profiler range `name`."""

    def wrapper(*args, **kwargs):
        CpuClock.marks.add(name)
        try:
            with record_function(name):
                return fn(*args, **kwargs)
        finally:
            CpuClock.marks.discard(name)

    return wrapper


def ancestors(evt) -> list[str]:
    names, p = [], evt.cpu_parent
    while p is not None:
        names.append(p.name)
        p = p.cpu_parent
    return names


def attention_flops(name: str, shapes: list) -> float:
    """FLOPs of one flash-attention call from its query shape [b, h, L, d] (the backward's second
    argument): QKᵀ and AV, 4·b·h·L²·d forward, twice that backward (train_flops' convention, causal
    half not discounted)."""
    backward = "backward" in name
    b, h, L, d = shapes[1 if backward else 0][:4]
    return (8.0 if backward else 4.0) * b * h * L * L * d


def classify(evt) -> tuple[str, str]:
    """(phase, group) of a profiler event (`group` of its name, its autograd node and marks)."""
    up = ancestors(evt)
    node = next((a[len(BACKWARD_MARK) :] for a in up if a.startswith(BACKWARD_MARK)), "")
    if evt.name.startswith(BACKWARD_MARK):
        node = evt.name[len(BACKWARD_MARK) :]
    marks = {m for m in (HEAD_MARK, LOSS_MARK) if m in up or evt.name == m}
    return group(evt.name, node, marks)


def group(name: str, node: str, marks: set[str]) -> tuple[str, str]:
    """(phase, group) of an op: the phase is backward inside an autograd node (`node`, its name),
    else forward; the group what the op is, `marks` the vespo ranges it runs in."""
    phase = "backward" if node else "forward"
    if "AccumulateGrad" in node:
        return phase, "grad_accumulation_fp32"
    if HEAD_MARK in marks or "_HeadLogprobsBackward" in node:
        return phase, "head_matmul" if name in MATMULS else "head_logsoftmax"
    if LOSS_MARK in marks:
        return phase, "loss"
    if name.startswith(ATTENTION):
        return phase, "attention"
    if name in MATMULS or name in MATMUL_WRAPPERS:
        return phase, "matmul"
    if name in COPIES:
        return phase, "casts_copies"
    if name.startswith("aten::"):
        return phase, "elementwise"
    return phase, "framework"


def op_flops(evt) -> float:
    if evt.name in MATMULS:
        return float(evt.flops or 0)
    if evt.name.startswith(ATTENTION[0]):
        return attention_flops(evt.name, evt.input_shapes)
    return 0.0


def shape_flops(name: str, shapes: list) -> float:
    """FLOPs of a matmul or flash-attention call from its argument shapes (0 for anything else)."""
    if name in ("aten::mm", "aten::bmm"):
        return 2.0 * math.prod(shapes[0]) * shapes[1][-1]
    if name in ("aten::addmm", "aten::baddbmm"):
        return 2.0 * math.prod(shapes[1]) * shapes[2][-1]
    if name.startswith(ATTENTION[0]):
        return attention_flops(name, shapes)
    return 0.0


class CpuClock(TorchDispatchMode):
    """Thread CPU seconds and FLOPs of every aten op the trainer dispatches, forward and backward, by
    `group`: unlike the profiler's timestamps, time the thread spent descheduled is not counted."""

    marks: set[str] = set()  # the vespo ranges running now (`marked`)

    def __init__(self):
        super().__init__()
        self.secs: dict = collections.defaultdict(float)
        self.flops: dict = collections.defaultdict(float)
        self.ops: dict = collections.defaultdict(lambda: collections.defaultdict(float))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        c0 = time.thread_time()
        out = func(*args, **(kwargs or {}))
        dt = time.thread_time() - c0
        node = torch._C._current_autograd_node()
        name = "aten::" + func.__name__.split(".")[0]
        key = group(name, node.name() if node is not None else "", CpuClock.marks)
        shapes = [list(a.shape) for a in args if isinstance(a, torch.Tensor)]
        self.secs[key] += dt
        self.flops[key] += shape_flops(name, shapes)
        self.ops[key][f"{name} {shapes[:3]}" if name in MATMULS else name] += dt
        return out


def profiler_groups(events) -> CpuClock:
    """The profiler's events summed like `CpuClock` does (self time: wall time inside each op)."""
    acc = CpuClock()
    for evt in events:
        key = classify(evt)
        acc.secs[key] += evt.self_cpu_time_total / 1e6
        acc.flops[key] += op_flops(evt)
        acc.ops[key][f"{evt.name} {evt.input_shapes[:3]}" if evt.name in MATMULS else evt.name] += (
            evt.self_cpu_time_total / 1e6
        )
    return acc


def breakdown(acc: CpuClock, peak: float) -> dict:
    """Seconds, share and fraction of `peak` (FLOP per CPU second) per (phase, group), and the ten
    largest ops by time in each group."""
    total = sum(acc.secs.values())
    out = {}
    for key in sorted(acc.secs, key=acc.secs.get, reverse=True):
        top = sorted(acc.ops[key].items(), key=lambda kv: kv[1], reverse=True)[:10]
        secs, flops = acc.secs[key], acc.flops[key]
        out[f"{key[0]}/{key[1]}"] = {
            "self_cpu_s": secs,
            "share": secs / total,
            "gflops": flops / 1e9,
            "fraction_of_peak": flops / secs / peak if flops and secs else None,
            "top_ops": {k: round(v, 4) for k, v in top},
        }
    return {"self_cpu_s_total": total, "groups": out}


def setup(n_rows: int):
    """Model, config, rows and advantages of one microbatch of the train section's rows."""
    sz = sizes(False)
    cfg = _policy_configs(sz)[HEAD_POLICY]
    P, R = sz["train_prompt"], sz["train_response"]
    cfg.trainer.micro_token_budget = n_rows * (P + R)
    model = load_model(resolve_model(cfg.model.path), cfg.model.dtype)
    model.config.use_cache = False
    model.train()
    g = torch.Generator().manual_seed(0)
    rows = synthetic_rows(g, model.config.vocab_size, P, [R] * n_rows, n_rows, "profile")
    adv = torch.randn(n_rows, generator=g)  # one group per microbatch would give advantages of 0
    return model, cfg, rows, adv


def fwd_bwd(model, cfg, rows, adv) -> dict:
    """The trainer's forward + loss + backward over every row, gradients dropped afterwards."""
    idx = list(range(len(rows)))
    n_tok = float(sum(len(r) for r in rows.response_ids))
    with record_function(STEP_MARK), precision.compute(model, cfg):
        sums = step._accumulate(model, rows, idx, adv, None, cfg, n_tok, float(len(idx)))
    model.zero_grad(set_to_none=True)
    return sums


def truncate(model, n_layers: int) -> None:
    """Keep the first `n_layers` decoder blocks (the rest are freed)."""
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[:n_layers])
    model.config.num_hidden_layers = n_layers


ROOT_GROUPS = ("head_matmul", "head_logsoftmax", "loss")  # once per microbatch, whatever the depth


def extrapolate(by_depth: dict[int, dict], depth: int) -> dict:
    """Each group's seconds and GFLOPs at `depth` blocks from two measured depths. Times are first put
    in peak-seconds (seconds × that process's matmul peak: the load on the shared cores moves both), then
    the root's groups (ROOT_GROUPS) are their mean, every other group linear in the depth; shares and
    fractions of the peak are recomputed at the mean peak."""
    (d1, b1), (d2, b2) = sorted(by_depth.items())[:2]
    peak = (b1["peak"] + b2["peak"]) / 2

    def at(b: dict, key: str, g: str) -> float:
        v = b["groups"].get(g, {}).get(key, 0.0)
        return v * b["peak"] / peak if key == "self_cpu_s" else v

    def line(key: str, g: str) -> float:
        v1, v2 = at(b1, key, g), at(b2, key, g)
        if g.split("/")[1] in ROOT_GROUPS:
            return (v1 + v2) / 2
        return v1 + (depth - d1) * (v2 - v1) / (d2 - d1)

    groups = set(b1["groups"]) | set(b2["groups"])
    secs = {g: max(line("self_cpu_s", g), 0.0) for g in groups}
    total = sum(secs.values())
    out = {}
    for g in sorted(groups, key=secs.get, reverse=True):
        flops = line("gflops", g)
        out[g] = {
            "self_cpu_s": secs[g],
            "share": secs[g] / total,
            "gflops": flops,
            "fraction_of_peak": flops * 1e9 / secs[g] / peak if flops and secs[g] else None,
        }
    return {"depth": depth, "peak_bf16_gflops_per_cpu_s": peak / 1e9, "self_cpu_s_total": total, "groups": out}


def timed(model, cfg, rows, adv, repeats: int) -> list[dict]:
    """CPU seconds of `repeats` unprofiled forward+backward passes (forward, backward as the trainer splits them)."""
    out = []
    for _ in range(repeats):
        c0 = time.process_time()
        sums = fwd_bwd(model, cfg, rows, adv)
        out.append(
            {"cpu_s": time.process_time() - c0, "forward_s": sums["_forward_s"], "backward_s": sums["_backward_s"]}
        )
    return out


def measure(model, cfg, rows, adv, repeats: int, window: tuple[int, float], compiled: bool) -> dict:
    """Unprofiled forward+backward CPU times, then one pass under `CpuClock` (eager only) and one under
    torch.profiler, between two matmul peaks."""
    peak_before = matmul_peak(*window)[1]
    runs = timed(model, cfg, rows, adv, repeats)
    clock = CpuClock()
    if not compiled:  # a dispatch mode would send compiled blocks back to eager
        with clock:
            fwd_bwd(model, cfg, rows, adv)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        fwd_bwd(model, cfg, rows, adv)
    peak = (peak_before + matmul_peak(*window)[1]) / 2
    lens = [len(p) + len(r) for p, r in zip(rows.prompt_ids, rows.response_ids)]
    flops = train_flops(model_shape(model), lens, [len(r) for r in rows.response_ids])
    return {
        "fwd_bwd_cpu_s": [r["cpu_s"] for r in runs],
        "forward_s": [r["forward_s"] for r in runs],
        "backward_s": [r["backward_s"] for r in runs],
        "model_flops": flops,
        "mfu": flops / statistics.median(r["cpu_s"] for r in runs) / peak,
        "peak_bf16_gflops_per_cpu_s": peak / 1e9,
        "peak": peak,
        **breakdown(clock, peak),
        "profiler_wall": breakdown(profiler_groups(prof.events()), peak),
    }


def measure_at_depth(n_rows: int, n_layers: int, repeats: int, compiled: bool) -> dict:
    """`measure` of `n_rows` rows with the decoder cut to `n_layers` blocks (compiled or not), after a
    warm-up pass (that pays the compile); the process's peak RSS."""
    forward.head_logprobs = marked(forward.head_logprobs, HEAD_MARK)
    step.policy_loss = marked(step.policy_loss, LOSS_MARK)
    model, cfg, rows, adv = setup(n_rows)
    model_depth = model.config.num_hidden_layers
    truncate(model, n_layers)
    if compiled:
        compile_decoder_blocks(model)
    c0 = time.process_time()
    fwd_bwd(model, cfg, rows, adv)
    warmup = time.process_time() - c0
    sz = sizes(False)
    out = measure(model, cfg, rows, adv, repeats, (sz["matmul_n"], sz["matmul_window_s"]), compiled)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"model_depth": model_depth, "warmup_cpu_s": warmup, "peak_rss_gib": rss, **out}


def compile_pair(n_rows: int, n_layers: int, repeats: int) -> dict:
    """Forward+backward CPU seconds of the eager and the compiled decoder (a copy of the same cut
    model) in alternating passes, after a warm-up of each (the compile's CPU seconds reported)."""
    import copy

    model, cfg, rows, adv = setup(n_rows)
    truncate(model, n_layers)
    compiled = copy.deepcopy(model)
    compile_decoder_blocks(compiled)
    warmup = {name: timed(m, cfg, rows, adv, 1)[0]["cpu_s"] for name, m in (("eager", model), ("compiled", compiled))}
    runs: dict = {"eager": [], "compiled": []}
    for _ in range(repeats):
        for name, m in (("eager", model), ("compiled", compiled)):
            runs[name].append(timed(m, cfg, rows, adv, 1)[0]["cpu_s"])
    ratios = [e / c for e, c in zip(runs["eager"], runs["compiled"])]
    return {"layers": n_layers, "warmup_cpu_s": warmup, "fwd_bwd_cpu_s": runs, "speedup": statistics.median(ratios)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--layers", type=int, nargs=2, default=[10, 5])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-pair", type=int, metavar="LAYERS", help="also time eager vs compiled at this depth")
    ap.add_argument("--out", default="reports/bench/long_step_profile.json")
    args = ap.parse_args()
    by_depth, pair = {}, None
    for n in sorted(args.layers, reverse=True):  # a fresh process per depth: the profiler's memory
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            by_depth[n] = pool.submit(measure_at_depth, args.rows, n, args.repeats, args.compile).result()
    if args.compile_pair:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pair = pool.submit(compile_pair, args.rows, args.compile_pair, args.repeats + 1).result()
    depth = by_depth[n]["model_depth"]
    full = extrapolate(by_depth, depth)
    out = {
        "command": " ".join(["reports/bench/long_step_profile.py", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine_info(),
        "policy": HEAD_POLICY,
        "compile": args.compile,
        "rows": args.rows,
        "threads": torch.get_num_threads(),
        "tokens_per_row": sum(sizes(False)[k] for k in ("train_prompt", "train_response")),
        "extrapolated": full,
        "measured": by_depth,
        "compile_pair": pair,
    }
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(summary(out), indent=1))


def summary(out: dict) -> dict:
    """The printed digest: times, MFU and each group's (share, fraction of peak) at full depth."""
    short = {
        n: {k: m[k] for k in ("fwd_bwd_cpu_s", "forward_s", "backward_s", "mfu")} for n, m in out["measured"].items()
    }
    groups = out["extrapolated"]["groups"]
    return {
        "peak_rss_gib": {n: m["peak_rss_gib"] for n, m in out["measured"].items()},
        "measured": short,
        "compile_pair": out["compile_pair"],
        "full_depth_self_cpu_s": out["extrapolated"]["self_cpu_s_total"],
        "groups (share, fraction_of_peak)": {
            g: (round(v["share"], 3), v["fraction_of_peak"] and round(v["fraction_of_peak"], 3))
            for g, v in groups.items()
        },
    }


if __name__ == "__main__":
    main()
