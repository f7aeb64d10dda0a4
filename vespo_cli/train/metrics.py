"""Metrics sinks: `metrics.jsonl` always (fsynced per line), TensorBoard and W&B when installed."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

from ..fsio import append_jsonl
from ..rundir import RunDir


class MetricsWriter:
    """Append one record per optimizer step (or eval) to every configured sink."""

    def __init__(self, run_dir: Path, loggers: list[str], config: dict | None = None, enabled: bool = True):
        self.path = RunDir(run_dir).metrics
        self.enabled = enabled
        self._tb = self._wandb = None
        if not enabled:
            return
        if "tensorboard" in loggers:
            if importlib.util.find_spec("tensorboard") is None:
                warnings.warn(
                    "trainer.loggers: tensorboard is not installed; logging to metrics.jsonl only", stacklevel=2
                )
            else:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard))
        if "wandb" in loggers:
            if importlib.util.find_spec("wandb") is None:
                warnings.warn("trainer.loggers: wandb is not installed; logging to metrics.jsonl only", stacklevel=2)
            else:
                import wandb

                self._wandb = wandb.init(
                    project="vespo",
                    name=Path(run_dir).name,
                    dir=str(run_dir),
                    config=config,
                    resume="allow",
                    id=Path(run_dir).name,
                )

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
