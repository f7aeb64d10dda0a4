"""The status paragraph at the top of reports/staleness-ii/README.md, written from what is committed beside it:
summary.json (the report of the kept runs), runs/commit (the pinned trainer), runs/stress-lr and screen/ (the
stress screen), probe/probe.json (Probe II). run.sh's report step runs it; no figure in it is typed by hand.

    python reports/staleness-ii/status.py     # rewrites the paragraph between the status markers
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = (
    "<!-- status: written by status.py from the committed results; edits here are overwritten -->",
    "<!-- /status -->",
)
# Seeds planned per cell where they differ from the N's plan (summary.json's planned_seeds): at N = 1 the claims
# file planned GRPO and VESPO seq-mean for seed 0 only (on-policy identity), phase 4 (amended 2026-12-07) adds 1-2.
PLANNED = {("grpo", 1): 3, ("vespo+aggregation=seq-mean-token-mean", 1): 3}
NAMES = {"vespo": "VESPO", "grpo": "GRPO", "sapo": "SAPO", "vespo+aggregation=seq-mean-token-mean": "VESPO seq-mean"}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def points(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def seed_cell(group: dict | None, planned: int | str) -> str:
    """`34.7 / 35.9* / 37.0 (3 of 4)`: the final held-out accuracy of each kept seed, in seed order, * where the
    study's collapse rule flags the run, then how many of the planned seeds are in."""
    if group is None:
        return f"– (0 of {planned})"
    hit = {c["seed"] for c in group["collapse"] if c["status"] == "collapsed"}
    finals = [
        f"{pct(s['final_eval'])}{'*' if seed in hit else ''}" for seed, s in zip(group["seeds"], group["per_seed"])
    ]
    return f"{' / '.join(finals)} ({len(group['seeds'])} of {planned})"


def cells(summary: dict) -> list[str]:
    """A table: per arm (row) and N (column), the final held-out accuracy of the kept runs, seed by seed."""
    planned = summary["settings"]["claims"].get("planned_seeds", {})
    by_cell = {(g["label"], g["staleness"]): g for g in summary["groups"]}
    ns = sorted({n for _, n in by_cell})
    arms = sorted({a for a, _ in by_cell}, key=lambda a: list(NAMES).index(a) if a in NAMES else 99)
    header = "| arm | " + " | ".join(f"N = {n}" for n in ns) + " |"
    rows = [
        f"| {NAMES.get(a, a)} | "
        + " | ".join(seed_cell(by_cell.get((a, n)), PLANNED.get((a, n), planned.get(str(n), "?"))) for n in ns)
        + " |"
        for a in arms
    ]
    return [header, "|---|" + "---|" * len(ns), *rows]


# The machine of every run before run.sh logged its starts (runs/machines.jsonl, from 2026-12-07 09:19): the README's
# "Machines" paragraph; that machine's CPU named in reports/demo/summary.json and the benches of 2026-12-06/07.
FIRST_MACHINE = "Intel Xeon (AMX)"


def machine_of(when: float, starts: list[tuple[float, str]]) -> str:
    """The machine of the lanes' start that was running at epoch time `when`."""
    before = [cpu for at, cpu in starts if at <= when]
    return before[-1] if before else FIRST_MACHINE


def train_rows(run: dict) -> list[dict]:
    """A kept run's training lines (summary.json's `path`, relative to this folder), read once for all lines."""
    return _train_rows(run["path"])


@functools.cache
def _train_rows(path: str) -> list[dict]:
    from vespo_cli.compare.analysis import train_records
    from vespo_cli.fsio import read_jsonl

    return train_records(read_jsonl(HERE / path / "metrics.jsonl"))


def machines(summary: dict) -> str:
    """Where each kept run trained: its step times against the lanes' starts in runs/machines.jsonl."""
    log = HERE / "runs" / "machines.jsonl"
    logged = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
    starts = sorted((dt.datetime.fromisoformat(m["start"]).timestamp(), m["cpu"]) for m in logged)
    where: dict[str, list[str]] = {}
    for run in summary["runs"]:
        times = [r["time"] for r in train_rows(run)]
        ran = " → ".join(dict.fromkeys(machine_of(t, starts) for t in (min(times), max(times))))
        cell = f"{NAMES.get(run['label'], run['label'])} N = {run['staleness']} s{run['seed']}"
        where.setdefault(ran, []).append(cell)
    parts = []
    for ran, cells in where.items():
        parts.append(f"{ran}: {len(cells)} run(s)" + ("" if len(cells) > 12 else f" ({', '.join(cells)})"))
    return "Trained on (each run's step times against `runs/machines.jsonl`): " + "; ".join(parts)


def entropy_line(summary: dict) -> str:
    """Exploratory (no claim reads it): each arm's policy entropy over its runs' last 32 steps, per N, from the kept
    runs' metrics (the stress cell's entropy curves, entropy.png, split GRPO from the other three arms)."""
    by_cell: dict[tuple[str, int], list[float]] = {}
    for run in summary["runs"]:
        tail = [r["entropy"] for r in train_rows(run) if isinstance(r.get("entropy"), float)][-32:]
        if tail:
            by_cell.setdefault((run["label"], run["staleness"]), []).append(sum(tail) / len(tail))
    parts = []
    for n in sorted({n for _, n in by_cell}):
        arms = [
            f"{NAMES.get(a, a)} {sum(v) / len(v):.2f} ({min(v):.2f}–{max(v):.2f})"
            for a in NAMES
            if (v := by_cell.get((a, n)))
        ]
        parts.append(f"N = {n}: " + ", ".join(arms))
    return (
        "Exploratory, not pre-registered: policy entropy (nats) over each run's last 32 steps, mean over seeds "
        "(min–max): " + "; ".join(parts)
    )


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(HERE), *args], capture_output=True, text=True)


def done_criteria(summary: dict) -> str:
    """Issue 29's done criteria that the committed results decide (`make test` is CI's), each met or what is short."""
    checks = []
    arm_cells = [(a, n) for a in NAMES for n in (1, 16, 32)]
    runs = summary["runs"]
    full = {
        c: [r for r in runs if (r["label"], r["staleness"]) == c and r["steps_done"] >= 128 and r["evals_per_run"] >= 4]
        for c in arm_cells
    }
    short = [f"{NAMES[a]} N = {n} ({len(full[(a, n)])})" for a, n in arm_cells if len(full[(a, n)]) < 3]
    checks.append(("≥ 3 seeds of ≥ 128 steps and ≥ 4 evals in every arm at N = 1, 16, 32", short))
    rows = summary["verdict"]
    unjudged = [r["claim"] for r in rows if r["verdict"] == "interim" or r.get("p_adjusted") is None]
    checks.append(
        (f"{len(rows)} verdict rows judged with Holm-adjusted p", [f"{len(unjudged)} not yet"] if unjudged else [])
    )
    no_count = [
        f"{NAMES.get(g['label'], g['label'])} N = {g['staleness']}" for g in summary["groups"] if not g["collapse"]
    ]
    checks.append(("collapse counts in every group", no_count))
    claims = summary["settings"]["claims"]["commit"]
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "runs", "pre-fix/runs").stdout.split()
    first = added[-1] if added else None
    before = (
        first is not None and first != claims and _git("merge-base", "--is-ancestor", claims, first).returncode == 0
    )
    checks.append((f"claims commit {claims[:7]} before the first committed run", [] if before else ["no"]))
    probe = HERE / "probe" / "probe.json"
    k0 = [r for r in json.loads(probe.read_text()) if r["staleness"] == 0] if probe.is_file() else []
    floors = [NAMES.get(r["objective"], r["objective"]) for r in k0 if not r.get("floor_resolved")]
    checks.append(("Probe II's noise floor resolved at K = 0 for every objective", floors if k0 else ["no probe"]))
    met = sum(not miss for _, miss in checks)
    return f"Issue 29's done criteria from the committed results: {met} of {len(checks)} met; " + "; ".join(
        f"{what}: {'yes' if not miss else 'short: ' + ', '.join(miss)}" for what, miss in checks
    )


def verdicts(summary: dict) -> str:
    rows = summary["verdict"]
    counts = Counter(r["verdict"] for r in rows)
    text = f"{len(rows)} claim rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    judged = [r for r in rows if r.get("p") is not None]
    if judged:
        best = min(judged, key=lambda r: r["p"])
        text += (
            f". Smallest p: \"{best['claim']}\", {points(best['estimate'])} points "
            f"[{points(best['low'])}, {points(best['high'])}], p {best['p']:.3f}, Holm p {best['p_adjusted']:.3f}"
            f" ({best['verdict']})"
        )
    return text


def phase_two() -> str:
    """The stress screen's runs and the stress learning rate, and Probe II, as far as they are committed."""
    parts = []
    screened = sorted((HERE / "screen").glob("lr-*/runs/*/metrics.jsonl"))
    if screened:
        sys.path.insert(0, str(HERE.parent))
        from study import collapse_status  # reports/study.py: the rule run.sh's screen applies

        tried = [f"{m.parent.parent.parent.name.removeprefix('lr-')}: {collapse_status(m.parent)}" for m in screened]
        parts.append("stress screen (N = 32, seed 100) " + "; ".join(tried))
    lr = HERE / "runs" / "stress-lr"
    parts.append(
        f"stress learning rate {lr.read_text().strip()}" if lr.is_file() else "stress learning rate not yet chosen"
    )
    probe = HERE / "probe" / "probe.json"
    if probe.is_file():
        from vespo_cli.probe.judge import calibrated, leaves_floor

        records = json.loads(probe.read_text())
        k0 = [r for r in records if r["staleness"] == 0]
        resolved = sum(bool(r.get("floor_resolved")) for r in k0)
        ages = sorted({r["staleness"] for r in records})
        left = []
        for o in dict.fromkeys(r["objective"] for r in records):
            first = leaves_floor(records, o)
            # where a floor is unresolved no gap can be resolved: "at no K" there is a lack of power, not fidelity
            blind = [str(r["staleness"]) for r in records if r["objective"] == o and not r.get("floor_resolved")]
            where = f"at K = {first['staleness']}" if first else "at no K measured"
            unresolved = f" (floor unresolved at K = {', '.join(blind)})" if blind else ""
            left.append(f"{NAMES.get(o, o)} {where}{unresolved}")
        parts.append(
            f"Probe II done (K = {', '.join(map(str, ages))}): noise floors resolved at K = 0 for {resolved} of "
            f"{len(k0)} objectives, {'calibrated' if calibrated(records) else 'NOT calibrated'} at K = 0; the stale "
            f"gradient leaves the floor: {', '.join(left)} (probe/report.md)"
        )
    else:
        parts.append("Probe II not yet kept (probe/ is written when its last K is measured)")
    return "; ".join(parts)


def paragraph() -> str:
    summary = json.loads((HERE / "summary.json").read_text())
    commit = (HERE / "runs" / "commit").read_text().strip()[:7]
    day = dt.datetime.now(dt.timezone.utc).date()  # the report is rebuilt just before (run.sh --report)
    return "\n".join(
        [
            f"**Status ({day}): {len(summary['runs'])} runs kept, trained at commit {commit}.** {verdicts(summary)}.",
            "",
            "Final held-out accuracy (%) of each kept run, in seed order (seeds 0, 1, …; * collapsed by the study's "
            "rule), and the seeds kept of those planned:",
            "",
            *cells(summary),
            "",
            f"{entropy_line(summary)}.",
            "",
            f"{machines(summary)}.",
            "",
            f"{done_criteria(summary)} (and `make test` green, which CI checks).",
            "",
            f"Phase 2: {phase_two()}.",
        ]
    )


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{readme}: no status markers ({BEGIN} … {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{paragraph()}\n{END}{tail}")


if __name__ == "__main__":
    main()
