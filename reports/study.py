"""Keep a study's finished runs in the repository, and put them back before a sweep (reports/cpu-staleness and
reports/staleness-ii run.sh).

    python reports/study.py collect STUDY_DIR KEEP_DIR   # finished, evaluated runs → KEEP_DIR
    python reports/study.py restore KEEP_DIR STUDY_DIR   # KEEP_DIR → missing runs
    python reports/study.py unevaluated LANE_DIR...      # their finished runs without an eval
    python reports/study.py collapsed RUN_DIR...         # exit 0 when any of these runs collapsed (analysis.py rule)

A run is `STUDY_DIR/<lane>/runs/<run>/`; it is finished when `vespo compare` would reuse it (its metrics reach
`trainer.steps` and its newest checkpoint, if any, is the last step's). Only evaluated runs are kept (a kept
run comes back without checkpoints, so it could not be evaluated later); once kept, `collect` deletes its
checkpoints (1.5 GB each; 30 of them filled the disk). Only
config.yaml, run.json and metrics.jsonl are kept (and STUDY_DIR/commit, the code they trained with): what
`vespo compare` reports from, and what its sweep checks to reuse a run); checkpoints and shards stay behind.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

from vespo_cli.compare.sweep import is_complete

KEPT = ("config.yaml", "run.json", "metrics.jsonl")


def finished(run: Path) -> bool:
    try:
        steps = int(yaml.safe_load((run / "config.yaml").read_text())["trainer"]["steps"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return False
    return is_complete(run, steps)


def evaluated(run: Path) -> bool:
    return (run / "metrics.jsonl").is_file() and '"kind": "eval"' in (run / "metrics.jsonl").read_text()


def _size(run: Path) -> int:
    try:
        return (run / "metrics.jsonl").stat().st_size
    except OSError:
        return 0


def copy_run(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEPT:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def collect(study: Path, keep: Path) -> int:
    n = 0
    if (study / "commit").is_file():  # the code the runs trained with
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy2(study / "commit", keep / "commit")
    for run in sorted(study.glob("*/runs/*")):
        dst = keep / run.parent.parent.name / "runs" / run.name
        if finished(run) and evaluated(run) and (not finished(dst) or _size(run) > _size(dst)):  # new, or re-evaluated
            copy_run(run, dst)
            n += 1
        if finished(run) and evaluated(run) and evaluated(dst) and (run / "checkpoints").is_dir():
            shutil.rmtree(run / "checkpoints")  # its numbers are kept; the weights are not needed again
    return n


def restore(keep: Path, study: Path) -> int:
    n = 0
    for run in sorted(keep.glob("*/runs/*")):
        dst = study / run.parent.parent.name / "runs" / run.name
        if finished(run) and not (dst / "metrics.jsonl").exists():
            copy_run(run, dst)
            n += 1
    return n


def unevaluated(lanes: list[Path]) -> list[Path]:
    """Finished runs of these lanes (`LANE/runs/<run>`) with a last checkpoint and no eval line yet.

    Each lane evaluates only its own runs, so two lanes never evaluate one run at once."""
    out = []
    for run in sorted(run for lane in lanes for run in lane.glob("runs/*")):
        if finished(run) and any((run / "checkpoints").glob("step-*")) and not evaluated(run):
            out.append(run)
    return out


def collapse_status(run: Path) -> str:
    """The run's status by the compare's collapse rule (`detect_collapse` over its full step budget)."""
    from vespo_cli.compare.analysis import detect_collapse
    from vespo_cli.fsio import read_jsonl

    steps = int(yaml.safe_load((run / "config.yaml").read_text())["trainer"]["steps"])
    return detect_collapse(list(read_jsonl(run / "metrics.jsonl")), total_steps=steps)["status"]


def collapsed(runs: list[Path]) -> list[Path]:
    """The runs that collapsed by the compare's rule."""
    return [run for run in runs if collapse_status(run) == "collapsed"]


if __name__ == "__main__":
    if sys.argv[1] == "collapsed":
        hit = collapsed([Path(a) for a in sys.argv[2:]])
        print("\n".join(f"collapsed: {p}" for p in hit) or "no run collapsed")
        sys.exit(0 if hit else 1)
    if sys.argv[1] == "unevaluated":
        print("\n".join(str(p) for p in unevaluated([Path(a) for a in sys.argv[2:]])))
        sys.exit(0)
    cmd, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    n = {"collect": collect, "restore": restore}[cmd](a, b)
    print(f"{cmd}: {n} run(s)")
