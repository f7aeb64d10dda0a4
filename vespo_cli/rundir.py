"""The run directory's layout: every path under `runs/<name>/` is built and parsed here, nowhere else.

```
config.yaml                  the resolved config that ran          RunDir.config
run.json                     mode, base model, run_id, commit,     RunDir.info
                             starts (each start: step, commit, hardware)
inputs.json                  what the run consumes (resume checks) RunDir.inputs
metrics.jsonl                one line per optimizer step (+ eval)  RunDir.metrics
rollouts/v<V>-<worker>-<seq>.parquet   shards                     RunDir.rollouts, shard_name
rollouts/rollout-inputs.json the prompt stream of a shard dir      rollout_inputs(dir)
rollouts/quarantine/         shards that failed validation         quarantine(dir)
checkpoints/step-K/          weights + trainer_state.json, optim.pt (optim.dcp under FSDP),
                             manifest.json (sha256s, written last) RunDir.checkpoint(K)
published/step-K/, LATEST    weights for async workers             RunDir.published_step(K), .latest
eval/step-K/<bench>/         per_sample.parquet + summary.json     RunDir.eval_dir(K)
logs/worker-<w>.log          async workers' output                 RunDir.worker_log(w)
DONE                         the trainer finished (workers stop)   RunDir.done
.vespo.lock                  one writer at a time (lock.py)        RunDir.lock
```
Path arithmetic; only `step_dirs` and the `RunDir` methods (`is_run`, `has_started`, `checkpoint_steps`,
`latest_published`) look at the disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

RUNS = Path("runs")  # where commands put their output by default
CONFIG = "config.yaml"
INFO = "run.json"
METRICS = "metrics.jsonl"
ROLLOUTS = "rollouts"
CHECKPOINTS = "checkpoints"
PUBLISHED = "published"
LATEST = "LATEST"
EVAL = "eval"
LOGS = "logs"
TENSORBOARD = "tensorboard"
DONE = "DONE"
LOCK = ".vespo.lock"
INPUTS = "inputs.json"  # mode, batch settings, replay shards' hashes: what a resume must see again
ROLLOUT_INPUTS = "rollout-inputs.json"  # in a shard directory: the settings its shards were sampled with
QUARANTINE = "quarantine"  # in a shard directory: shards that failed validation, moved aside
TRAINER_STATE = "trainer_state.json"  # in a checkpoint: step, rollout iteration, consumed-shard ledger
OPTIM_STATE = "optim.pt"  # in a checkpoint: optimizer (one process), RNG and LR-schedule state
OPTIM_DCP = "optim.dcp"  # in a checkpoint under FSDP: the sharded optimizer state (torch DCP)
MANIFEST = "manifest.json"  # in a checkpoint: the sha256 of every other file, written last
WEIGHTS_META = "vespo.json"  # next to published or checkpointed weights: {"step", "policy_version"}
EVAL_SAMPLES = "per_sample.parquet"  # in an eval directory, one per benchmark
EVAL_SUMMARY = "summary.json"
SHARD_GLOB = "*.parquet"

STEP_PREFIX = "step-"
_STEP = re.compile(r"^step-(\d+)$")
_SHARD = re.compile(r"^v(\d+)-(.+)-(\d+)\.parquet$")


def default_dir(name: str) -> Path:
    """`runs/<name>`: a command's output directory when none is given."""
    return RUNS / name


def step_name(step: int) -> str:
    """`step-K`: the directory of step K under checkpoints/, published/ and eval/."""
    return f"{STEP_PREFIX}{int(step)}"


def parse_step(name: str) -> int | None:
    """K of a `step-K` directory name, else None."""
    m = _STEP.match(name)
    return int(m.group(1)) if m else None


def step_dirs(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(K, path) of every `step-K` entry of `root`, oldest first; [] when `root` is not a directory."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((k, p) for p in root.iterdir() if (k := parse_step(p.name)) is not None)


def rollout_inputs(shard_dir: str | os.PathLike) -> Path:
    """`<shard_dir>/rollout-inputs.json`: the sampling settings of the shards in `shard_dir`."""
    return Path(shard_dir) / ROLLOUT_INPUTS


def quarantine(shard_dir: str | os.PathLike) -> Path:
    """`<shard_dir>/quarantine/`: where shards of `shard_dir` that failed validation are moved."""
    return Path(shard_dir) / QUARANTINE


def worker_name(k: int) -> str:
    """`w<k>`: async rollout worker k's name (in its shard names and log file)."""
    return f"w{k}"


@dataclass(frozen=True)
class ShardName:
    policy_version: int
    worker: str
    seq: int


def shard_name(policy_version: int, worker: str, seq: int) -> str:
    """Sortable file name: policy version, then producer, then sequence number."""
    return f"v{policy_version:06d}-{worker}-{seq:06d}.parquet"


def parse_shard_name(name: str) -> ShardName | None:
    """The parts of a `shard_name`, else None (a shard file under another name)."""
    m = _SHARD.match(name)
    return ShardName(int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def shard_id(path: str | os.PathLike) -> str:
    """A shard's id (its `shard_id` column): the file name without `.parquet`."""
    return Path(path).stem


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def info(self) -> Path:
        return self.root / INFO

    @property
    def inputs(self) -> Path:
        return self.root / INPUTS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def rollouts(self) -> Path:
        return self.root / ROLLOUTS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def published(self) -> Path:
        return self.root / PUBLISHED

    @property
    def latest(self) -> Path:
        """`published/LATEST`: the name of the newest published `step-K`."""
        return self.published / LATEST

    @property
    def logs(self) -> Path:
        return self.root / LOGS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_name(step)

    def published_step(self, step: int) -> Path:
        return self.published / step_name(step)

    def eval_dir(self, step: int) -> Path:
        return self.root / EVAL / step_name(step)

    def worker_log(self, worker: str) -> Path:
        return self.logs / f"worker-{worker}.log"

    def is_run(self) -> bool:
        """A run directory: it has its config.yaml."""
        return self.config.is_file()

    def has_started(self) -> bool:
        """Training wrote here already (metrics or checkpoints)."""
        return self.metrics.exists() or self.checkpoints.exists()

    def checkpoint_steps(self) -> list[tuple[int, Path]]:
        """(K, checkpoints/step-K) of every checkpoint directory, oldest first."""
        return step_dirs(self.checkpoints)

    def latest_published(self) -> Path | None:
        """The newest complete published weights (`published/LATEST` names them), or None yet."""
        if not self.latest.is_file():
            return None
        path = self.published / self.latest.read_text().strip()
        return path if path.is_dir() else None


def checkpoint_of(path: str | os.PathLike) -> tuple[RunDir, int] | None:
    """(run, K) when `path` is `<run>/checkpoints/step-K`, else None."""
    p = Path(path)
    step = parse_step(p.name)
    if step is None or p.parent.name != CHECKPOINTS:
        return None
    return RunDir(p.parent.parent), step
