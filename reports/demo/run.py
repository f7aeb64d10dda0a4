"""`make demo` as a newcomer runs it, measured: the embedded default (SmolLM2-135M-Instruct, one-digit sums, 32
steps of 2 prompts × 8 samples on the CPU) trained in a fresh run directory, then its report.

    .venv/bin/python reports/demo/run.py [--run DIR]   # → reports/demo/{summary.json, report.md, reward.png}

It runs `make demo DEMO_DIR=DIR` (default: a temporary directory, deleted afterwards) and measures that command's
wall time, CPU time and peak RSS (the largest process's, `getrusage` of the waited-for children), with the load
average before and after (other work on the machine slows the run). Learning is read from the run's shards: the
reward of each prompt group (the mean of its 8 samples) in the first and the last 4 policy versions, with 95%
t intervals over groups and the Welch interval of the difference; a few responses of the first and the last
version show what was learned.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from vespo_cli.bench.machine import machine_info
from vespo_cli.compare.analysis import train_records
from vespo_cli.compare.stats import t_interval, welch_interval
from vespo_cli.fsio import read_jsonl
from vespo_cli.rundir import RunDir
from vespo_cli.shards import list_shards, read_shard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WINDOW = 4  # policy versions at each end of the run
EXAMPLES = 8  # one prompt group


def run_demo(run: Path) -> dict:
    """`make demo` into `run`; its wall and CPU seconds, peak RSS and the load around it."""
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(HERE / "demo.log", "w") as log:
        proc = subprocess.run(["make", "demo", f"DEMO_DIR={run}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        sys.exit(f"make demo failed (exit {proc.returncode}): see {HERE / 'demo.log'}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_gib": after.ru_maxrss / 2**20,  # KiB on Linux
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }


def group_rewards(table: pa.Table, versions: list[int]) -> list[float]:
    """The mean reward of each prompt group sampled by one of `versions`."""
    rows = table.filter(pc.is_in(table["policy_version"], pa.array(versions, pa.int64())))
    means = rows.group_by("group_id").aggregate([("reward", "mean")])
    return [float(x) for x in means["reward_mean"].to_pylist()]


def examples(table: pa.Table, version: int) -> list[dict]:
    rows = table.filter(pc.equal(table["policy_version"], version)).slice(0, EXAMPLES).to_pylist()
    keep = ("prompt_id", "response_text", "extracted_answer", "reward")
    return [{k: r[k] for k in keep} for r in rows]


def learning(run: Path) -> dict:
    rd = RunDir(run)
    table = pa.concat_tables([read_shard(p) for p in list_shards(rd.rollouts)])
    versions = sorted(set(table["policy_version"].to_pylist()))
    first, last = versions[:WINDOW], versions[-WINDOW:]
    a, b = group_rewards(table, first), group_rewards(table, last)
    steps = train_records(read_jsonl(rd.metrics))
    return {
        "policy_versions": len(versions),
        "samples": table.num_rows,
        "first": {"versions": first, "groups": len(a), **(t_interval(a) or {})},
        "last": {"versions": last, "groups": len(b), **(t_interval(b) or {})},
        "gain": welch_interval(b, a),
        "steps": len(steps),
        "step_s_median": sorted(r["time_step_s"] for r in steps)[len(steps) // 2],
        "reward_per_step": [r["reward"] for r in steps],
        "response_length_per_step": [r["response_length"] for r in steps],
        "examples": {"first": examples(table, versions[0]), "last": examples(table, versions[-1])},
    }


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = range(1, len(summary["learning"]["reward_per_step"]) + 1)
    ax.plot(steps, summary["learning"]["reward_per_step"], marker=".", label="reward (16 samples)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training reward")
    ax.set_ylim(-0.02, 1.02)
    twin = ax.twinx()
    twin.plot(steps, summary["learning"]["response_length_per_step"], color="tab:gray", alpha=0.6, label="length")
    twin.set_ylabel("response tokens")
    ax.set_title("make demo: SmolLM2-135M on one-digit sums (one run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def interval(d: dict, lowest: float = 0.0) -> str:
    """The mean and its interval, clipped to the range of the quantity (a reward in [0, 1], a gain in [−1, 1])."""
    return f"{pct(d['mean'])} [{pct(max(d['low'], lowest))}, {pct(min(d['high'], 1.0))}]"


def markdown(s: dict) -> str:
    m, L = s["measured"], s["learning"]
    lines = [
        "# `make demo`, measured",
        "",
        f"Written by `reports/demo/run.py` on {s['date']} at commit {s['commit']} ({s['machine']['cpu']}, "
        f"{s['machine']['cores']} cores, {s['machine']['memory_available_gib_at_start']} GiB available at the start). "
        "One run, the preset's seed: "
        "the figures show that the demo learns and what it costs, not a comparison.",
        "",
        "| | |",
        "|---|---|",
        f"| wall time of `make demo` (setup no-op, train, report) | {m['wall_s'] / 60:.1f} min |",
        f"| CPU time | {m['cpu_s'] / 60:.1f} min |",
        f"| peak RSS (largest process) | {m['peak_rss_gib']:.2f} GiB |",
        f"| load average before / after (1 min) | {m['load_before'][0]:.1f} / {m['load_after'][0]:.1f} |",
        f"| optimizer steps, median step time | {L['steps']}, {L['step_s_median']:.1f} s |",
        f"| samples (shards) | {L['samples']} over {L['policy_versions']} policy versions |",
        f"| reward, first {WINDOW} versions ({L['first']['groups']} prompt groups) | {interval(L['first'])} |",
        f"| reward, last {WINDOW} versions ({L['last']['groups']} prompt groups) | {interval(L['last'])} |",
        f"| gain (Welch, over groups) | {interval(L['gain'], lowest=-1.0)} |",
        "",
        "Intervals are 95% t intervals over prompt groups (a group's reward is the mean of its 8 samples), clipped "
        "to the range of the quantity (summary.json keeps them unclipped). "
        "A load average above the machine's cores means other work shared them and the times are longer than "
        "on a quiet machine.",
        "",
        "![reward](reward.png)",
        "",
    ]
    for which in ("first", "last"):
        lines += [f"The first prompt group at the {which} policy version:", ""]
        for e in L["examples"][which]:
            text = (e["response_text"] or "").strip().replace("\n", " ⏎ ")[:160]
            lines.append(f"- `{e['prompt_id']}` reward {e['reward']:.0f}, answer {e['extracted_answer']!r}: {text!r}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run directory for the demo (default: a temporary one, deleted)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vespo-demo-") as tmp:
        run = (args.run or Path(tmp) / "demo").resolve()
        if (run / "config.yaml").exists():
            sys.exit(f"{run}: already a run; the demo is measured from a fresh directory")
        machine = machine_info()
        measured = run_demo(run)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        summary = {
            "command": "make demo DEMO_DIR=<fresh dir>",
            "date": time.strftime("%Y-%m-%d"),
            "commit": commit.stdout.strip(),
            "machine": machine,
            "measured": measured,
            "learning": learning(run),
        }
    (HERE / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, HERE / "reward.png")
    (HERE / "report.md").write_text(markdown(summary))
    print((HERE / "report.md").read_text())


if __name__ == "__main__":
    main()
