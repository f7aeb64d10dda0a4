"""`vespo bench`: every section, then `<out>/latest.json`, `<out>/latest.md` and the step-breakdown
figure; before overwriting, the ratios are compared with the previous `latest.json` (a report line)."""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .e2e import e2e, wait_for_memory
from .machine import machine_info
from .protocol import run_section
from .section_async import async_summary
from .sizes import HEADLINE, OR_TARGETS, TARGETS, sizes

REGRESSION_TOLERANCE = 0.15
RATIO_KEYS = (  # the ratios the regression check compares with the previous run
    "e2e_speedup_vs_trl_same_engine",
    "e2e_speedup_vs_trl_vllm",
    "e2e_speedup_vs_trl_hf_generate",
    "peak_rss_ratio_vs_trl",
    "objective_share_of_step",
    "train_mfu",
    "train_mfu_kernel_bound",
    "attention_kernel_mfu",
    "study_step_speedup",
    "study_step_vs_plain",
    "study_train_mfu",
    "rollout_speedup_vllm_vs_hf",
    "shard_io_share",
    "publish_share_of_step",
    "async_speedup",
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def regression_check(old: dict | None, new: dict, tolerance: float = REGRESSION_TOLERANCE) -> dict:
    """Ratios that moved more than `tolerance` (relative) against the previous run: {key: (old, new)}."""
    moved = {}
    for key in RATIO_KEYS:
        a, b = (old or {}).get(key), new.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and abs(b / a - 1) > tolerance:
            moved[key] = (a, b)
    return moved


def _passes(value, cmp: str, bound: float):
    if value is None:
        return None
    return {">=": value >= bound, "<=": value <= bound, "<": value < bound}[cmp]


def _objectives(sz: dict) -> dict:
    from ..bench_objectives import bench_objectives

    obj = bench_objectives(B=sz["obj_B"], T=sz["obj_T"], repeats=sz["obj_repeats"])
    return {
        "B": sz["obj_B"],
        "T": sz["obj_T"],
        "threads": 1,
        "timing": "process CPU time",
        "ratio_to_reinforce": {k: v for k, v in obj.items() if k != "reinforce_s"},
        "reinforce_s": obj["reinforce_s"],
    }


def headline(raw: dict) -> dict:
    """The top-level figures of latest.json, from the sections' raw results."""
    ex = raw["e2e"]
    rows = ex.get("rows", {})
    row = lambda name, key: rows.get(name, {}).get(key)  # noqa: E731
    v = ex["vespo-vllm"]
    measured = [s for run in v["runs"] for s in run["steps"][1:]]
    fair = [r for r in (row("same_engine", "peak_rss_ratio"), row("vllm", "peak_rss_ratio")) if r is not None]
    out = {
        "e2e_speedup_vs_trl_same_engine": row("same_engine", "speedup"),
        "e2e_speedup_vs_trl_vllm": row("vllm", "speedup"),
        "e2e_speedup_vs_trl_hf_generate": row("vllm_vs_trl_hf", "speedup"),
        "peak_rss_ratio_vs_trl": max(fair) if fair else None,
        "peak_rss_ratio_vs_trl_same_engine": row("same_engine", "peak_rss_ratio"),
        "peak_rss_ratio_vs_trl_vllm": row("vllm", "peak_rss_ratio"),
        "peak_rss_ratio_vs_trl_hf_generate": row("vllm_vs_trl_hf", "peak_rss_ratio"),
        "objective_share_of_step": v["objective_share"],
        "objective_share_of_step_hf_engine": ex["vespo-hf"]["objective_share"],
        "train_mfu": raw["train"].get("mfu"),
        "study_step_speedup": raw.get("study", {}).get("study_step_speedup"),
        "study_step_vs_plain": raw.get("study", {}).get("study_step_vs_plain"),
        "study_train_mfu": raw.get("study", {}).get("study_train_mfu"),
        "rollout_speedup_vllm_vs_hf": raw["rollout"].get("speedup"),
        "shard_io_share": statistics.median((s["shard_read_s"] + s["shard_write_s"]) / s["step_s"] for s in measured),
        "publish_s_per_step": statistics.median(s["publish_s"] for s in measured),
        "publish_share_of_step": statistics.median(s["publish_s"] / s["step_s"] for s in measured),
        "train_tokens_per_s": raw["train"].get("tokens_per_s"),
        "e2e_train_tokens_per_s": statistics.median(s["tokens"] / s["train_s"] for s in measured),
        "async_speedup": raw["async"].get("async_speedup"),
        "rollout_speedup_2_ranks": raw.get("ranks", {}).get("rollout_speedup_2_ranks"),
    }
    if "trl_vllm_error" in ex:
        out["trl_vllm_error"] = ex["trl_vllm_error"]
    kernel = raw["train"].get("attention_kernel") or {}
    out["attention_kernel_mfu"] = kernel.get("mfu")
    out["attention_flop_share"] = kernel.get("flop_share")
    if kernel_bounded(out["train_mfu"], kernel.get("mfu_bound")):
        out["train_mfu_kernel_bound"] = kernel["mfu_bound"]
    return out


def targets_text() -> dict[str, str]:
    """Each headline target as written in latest.json / latest.md, with its alternative where it has one."""
    out = {k: f"{c} {v}" for k, (c, v) in TARGETS.items()}
    for k, (alt, c, v) in OR_TARGETS.items():
        out[k] += f", or {alt} {c} {v}"
    return out


def passes(res: dict) -> dict[str, bool | None]:
    """Per headline key: met (True), missed (False) or not measured (None); a key with an alternative
    target (`OR_TARGETS`) is met when either is."""
    out = {k: _passes(res.get(k), *TARGETS[k]) for k in HEADLINE}
    for k, (alt, c, v) in OR_TARGETS.items():
        either = [x for x in (out[k], _passes(res.get(alt), c, v)) if x is not None]
        out[k] = any(either) if either else None
    return out


def kernel_bounded(mfu: float | None, bound: float | None) -> bool:
    """Whether the train_mfu target is out of reach because of the attention kernel: the MFU misses it
    and so does the bound (the MFU with attention at its measured speed and all else at the peak)."""
    return _passes(mfu, *TARGETS["train_mfu"]) is False and _passes(bound, *TARGETS["train_mfu"]) is False


def run_bench(out: Path, quick: bool = False) -> dict:
    """Run every section, write `<out>/latest.json`, `<out>/latest.md` and `<out>/step_breakdown.png`."""
    from .figure import step_breakdown_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "latest.json"
    old = json.loads(previous.read_text()) if previous.is_file() else None
    started = time.time()
    t0 = time.perf_counter()
    sz = sizes(quick)
    res: dict = {
        "command": "vespo bench" + (" --quick" if quick else "") + f" --out {shlex.quote(str(out))}",
        "quick": quick,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "machine": machine_info(),
        "sizes": sz,
        "targets": targets_text(),
    }
    raw: dict = {}
    with tempfile.TemporaryDirectory(prefix="vespo-bench-") as tmp:
        logdir = Path(tmp)
        say("e2e: vespo vs TRL GRPO step" + ("" if sz["trl"] else " (quick: vespo only)"))
        raw["e2e"] = e2e(quick, logdir, say)

        def section(name: str, what: str) -> dict:
            say(f"{what} ({wait_for_memory(sz['worker_gib'], say=say):.1f} GiB available)")
            try:  # a section that fails (or is killed for memory) is recorded; the others' figures stand
                return run_section(name, quick, logdir)
            except RuntimeError as e:
                say(f"{name} failed: {str(e).splitlines()[0]}")
                return {"error": str(e)[-2000:]}

        raw["rollout"] = section("rollout", "rollout: vLLM vs HF engine, weight publish")
        raw["train"] = section("train", "train: throughput and MFU")
        raw["study"] = section("study", "study: the cpu-staleness step vs main before issue 33 and plain transformers")
        sync = section("sync_loop", "async: sync loop")
        async_ = section("async_loop", "async: async loop at equal samples") if "error" not in sync else sync
        raw["async"] = async_summary(sync, async_, sz) if "error" not in async_ else {"error": async_["error"]}
        raw["ranks"] = section("ranks", "scale-out: rollout on 2 torchrun ranks vs 1 process (tiny model)")
    say("objectives: forward+backward vs REINFORCE (raw data; the share of a step is the figure)")
    raw["objectives"] = _objectives(sz)
    res.update(headline(raw))
    res["duration_s"] = time.perf_counter() - t0
    res["pass"] = passes(res)
    moved = regression_check(old, res)
    res["regression_check"] = {
        "against": str(previous) if old else None,
        "against_started": (old or {}).get("started"),
        "tolerance": REGRESSION_TOLERANCE,
        "moved": {k: {"previous": a, "now": b} for k, (a, b) in moved.items()},
    }
    for k, (a, b) in moved.items():
        say(f"regression check: {k} moved {100 * (b / a - 1):+.0f}% ({a:.4g} → {b:.4g}) against {previous}")
    if old and not moved:
        say(f"regression check: no ratio moved more than {REGRESSION_TOLERANCE:.0%} against {previous}")
    res["raw"] = raw
    figure = step_breakdown_figure(res, out / "step_breakdown.png")
    res["figure"] = figure.name if figure else None
    write_results(out, res)
    say(f"wrote {out / 'latest.json'} and {out / 'latest.md'} ({res['duration_s']:.0f} s)")
    return res


def rerender(out: Path) -> dict:
    """Re-apply today's targets to `<out>/latest.json`'s measurements and rewrite it and `latest.md` (no timing
    is taken: for a change of targets or of the report's wording)."""
    res = json.loads((Path(out) / "latest.json").read_text())
    res["targets"], res["pass"] = targets_text(), passes(res)
    write_results(Path(out), res)
    return res


def write_results(out: Path, res: dict) -> None:
    """`<out>/latest.json` and its rendering `<out>/latest.md`, each written atomically."""
    from ..fsio import atomic_write_json, atomic_write_text
    from .report import render_markdown

    atomic_write_json(out / "latest.json", res)
    # rendered from what the json holds (keys sorted), so `render` on the file gives the same page
    atomic_write_text(out / "latest.md", render_markdown(json.loads((out / "latest.json").read_text())))
