"""Where a step goes: one stacked bar per configuration of the e2e section (median seconds per part)."""

from __future__ import annotations

from pathlib import Path

PART_COLORS = {
    "rollout": "#4C72B0",
    "old_logprob": "#8172B3",
    "forward": "#55A868",
    "backward": "#C44E52",
    "optimizer": "#CCB974",
    "train": "#55A868",  # forward + backward + optimizer, where the trainer does not log them apart
    "publish": "#DD8452",
    "shard_io": "#64B5CD",
    "other": "#B0B0B0",
}
LABELS = {
    "vespo-hf": "vespo, HF engine",
    "vespo-vllm": "vespo, vLLM",
    "trl-hf": "TRL, HF generate",
    "trl-vllm": "TRL, vLLM colocate",
}


def breakdown(res: dict) -> dict[str, dict[str, float]]:
    """{configuration: {part: median seconds}} of the e2e configurations that ran."""
    e2e = res["raw"]["e2e"]
    return {k: dict(e2e[k]["parts"]) for k in LABELS if k in e2e and e2e[k].get("parts")}


def step_breakdown_figure(res: dict, path: Path) -> Path | None:
    """The stacked-bar figure at `path` (None where matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    data = breakdown(res)
    if not data:
        return None
    names = list(data)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.6 * len(names)))
    left = [0.0] * len(names)
    for part, color in PART_COLORS.items():
        widths = [data[n].get(part, 0.0) for n in names]
        if not any(widths):
            continue
        ax.barh([LABELS[n] for n in names], widths, left=left, color=color, label=part.replace("_", "-"))
        left = [a + b for a, b in zip(left, widths)]
    e2e = res["raw"]["e2e"]
    ax.invert_yaxis()
    ax.set_xlabel("seconds per GRPO step (median of measured steps)")
    ax.set_title(
        f"Where a step goes: {e2e['prompts']} prompts × {e2e['n']} samples, ≤ {e2e['max_tokens']} tokens, "
        f"{res['machine']['cores']} cores",
        fontsize=10,
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), fontsize=8, ncols=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
