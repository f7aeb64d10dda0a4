"""A run's identity: an id minted once and recorded in its run.json (`run_id`), with the git commit of
the code that ran (`commit`, null outside a git checkout), and each start of its trainer, first or resumed
(`starts`: when, from which step, at which commit, on which hardware), since a resumed run may continue
under other code or on another machine.

Group ids are `<run_id>/<worker>/<chunk>/<prompt>`: a random 64-bit run id keeps two runs' groups
apart even when their directories share a name (`runs/a/x` and `runs/b/x`), so advantages are never
normalised across two prompts of different runs (train/sources.py also refuses such a mix).
"""

from __future__ import annotations

import datetime
import functools
import json
import subprocess
import uuid
from pathlib import Path

from .fsio import atomic_write_json
from .rundir import RunDir


def new_run_id() -> str:
    """A fresh run id: 16 hex digits of a random UUID (64 bits)."""
    return uuid.uuid4().hex[:16]


@functools.cache
def code_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout vespo_cli runs from, None when it is not one (an installed
    package, no git). Read once a process: the code a process runs is the code it imported."""
    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.split()
    if out.returncode or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
        return None  # not a checkout of vespo itself (e.g. site-packages inside another repository)
    return lines[1]


def _read(path: Path) -> dict:
    try:
        info = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def recorded_run_id(root: str | Path) -> str:
    """The run id in `root`'s run.json; a run from before run ids is known by its directory name."""
    run_id = _read(RunDir(root).info).get("run_id")
    return run_id if isinstance(run_id, str) and run_id else Path(root).name


def ensure_run_id(root: str | Path, **fields) -> str:
    """The run id of `root` (held under its lock): minted and written to run.json with the commit (and
    `fields`) when run.json has none; an existing id is kept, so it is minted once per run."""
    run = RunDir(root)
    info = _read(run.info)
    run_id = info.get("run_id")
    if isinstance(run_id, str) and run_id:
        return run_id
    run_id = new_run_id()
    atomic_write_json(run.info, {**info, **fields, "run_id": run_id, "commit": code_commit()})
    return run_id


def record_start(root: str | Path, step: int, world_size: int) -> None:
    """Append this start of the trainer to run.json's `starts` (held under the run's lock)."""
    from .bench.machine import hardware

    run = RunDir(root)
    info = _read(run.info)
    start = {
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "step": step,
        "commit": code_commit(),
        "world_size": world_size,
        **hardware(),
    }
    starts = info.get("starts") if isinstance(info.get("starts"), list) else []
    atomic_write_json(run.info, {**info, "starts": [*starts, start]})


def recorded_hardware(root: str | Path) -> list[str]:
    """The hardware each start of `root`'s trainer ran on (record_start), in order, repeats dropped; [] for a
    run from before run.json kept its starts."""
    starts = _read(RunDir(root).info).get("starts")
    if not isinstance(starts, list):
        return []
    recorded = [s for s in starts if isinstance(s, dict) and isinstance(s.get("cpu"), str)]
    return list(dict.fromkeys(hardware_label(s) for s in recorded))


def hardware_label(start: dict) -> str:
    """`AMD EPYC (avx512f, avx512_bf16, avx2)`, `… + 8× NVIDIA H100 80GB HBM3`: a start's hardware in a line."""
    flags = ", ".join(f for f in start.get("cpu_flags") or [] if isinstance(f, str))
    label = start["cpu"] + (f" ({flags})" if flags else "")
    gpus = [g for g in start.get("gpus") or [] if isinstance(g, str)]
    for name in dict.fromkeys(gpus):
        label += f" + {gpus.count(name)}× {name}"
    return label
