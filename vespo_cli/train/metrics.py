"""Metrics sinks: `metrics.jsonl` always (fsynced per line), TensorBoard and W&B when trainer.loggers asks.

A requested tracker that is not installed stops the run at its start (`check_trackers`), before a model
loads; the extras `vespo-cli[tensorboard]` and `vespo-cli[wandb]` install them. A W&B run is placed by
trainer.wandb (project, entity, group) and identified by run.json's `run_id` (`tracker_run_id`), so two
sweeps' `grpo-N8-s0` are two W&B runs and a resumed run continues its own.

accelerate.tracking was considered: its trackers gate on accelerate's PartialState, which would set up
the process group that train/dist.py owns; the two sinks here are a few lines each.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

from ..errors import UserError
from ..fsio import append_jsonl, atomic_write_json
from ..rundir import RunDir


def check_trackers(loggers: list[str]) -> None:
    """A one-line UserError naming the extra to install when a requested tracker (trainer.loggers: each
    name is the module to import and the extra that installs it) is missing."""
    for name in loggers:
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"trainer.loggers: {name} is not installed (expected `pip install 'vespo-cli[{name}]'`, "
                f"or drop {name} from trainer.loggers)"
            )


def tracker_run_id(run_dir: Path) -> str:
    """The run's unique id: run.json's `run_id`; a run.json without one gets a fresh uuid4, stored there."""
    path = RunDir(run_dir).info
    info = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(info.get("run_id"), str) or not info["run_id"]:
        info["run_id"] = uuid.uuid4().hex
        atomic_write_json(path, info)
    return info["run_id"]


def wandb_init_kwargs(run_dir: Path, wandb_cfg: dict, config: dict | None) -> dict:
    """wandb.init's arguments: project/entity/group from trainer.wandb, the run's unique id (resumable)
    and its directory's name as the display name."""
    return {
        "project": wandb_cfg.get("project", "vespo"),
        "entity": wandb_cfg.get("entity"),
        "group": wandb_cfg.get("group"),
        "name": Path(run_dir).name,
        "id": tracker_run_id(run_dir),
        "dir": str(run_dir),
        "config": config,
        "resume": "allow",
    }


class MetricsWriter:
    """Append one record per optimizer step (or eval) to every configured sink."""

    def __init__(self, run_dir: Path, loggers: list[str], config: dict | None = None, enabled: bool = True):
        self.path = RunDir(run_dir).metrics
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        check_trackers(loggers)
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard))
        if "wandb" in loggers:
            import wandb

            wandb_cfg = (config or {}).get("trainer", {}).get("wandb", {})
            self._wandb = wandb.init(**wandb_init_kwargs(run_dir, wandb_cfg, config))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        step = int(record.get("step", 0))
        prefix = f"eval/{record['benchmark']}/" if record.get("kind") == "eval" else "train/"
        scalars = {
            prefix + k: float(v)
            for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "time")
        }
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
