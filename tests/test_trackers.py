"""Experiment trackers (trainer.loggers): a missing one fails at start, W&B placement and run id,
TensorBoard event files end to end (issue 30)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.config import load_config, to_dict
from vespo_cli.fsio import read_jsonl
from vespo_cli.train.metrics import tracker_run_id, wandb_init_kwargs

MISSING = [name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(not MISSING, reason="every tracker is installed")
def test_a_missing_tracker_fails_at_start_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = MISSING[0]
    args = ["train", "-p", "tiny", "--set", f"trainer.loggers=[{name}]", "--out", "r"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: trainer.loggers: {name} is not installed (expected `pip install 'vespo-cli[{name}]'`, "
        f"or drop {name} from trainer.loggers)"
    )
    assert list(tmp_path.iterdir()) == []


def test_run_id_is_stored_once_in_run_json(tmp_path):
    (tmp_path / "run.json").write_text('{"mode": "sync", "replay": null}')
    first = tracker_run_id(tmp_path)
    assert len(first) == 32 and int(first, 16) >= 0  # a uuid4 hex
    assert json.loads((tmp_path / "run.json").read_text()) == {"mode": "sync", "replay": None, "run_id": first}
    assert tracker_run_id(tmp_path) == first
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text('{"mode": "sync", "replay": null}')
    assert tracker_run_id(other) != first  # two runs of the same name in two sweeps: two W&B runs


def test_wandb_is_placed_by_the_config(tmp_path):
    run = tmp_path / "grpo-N8-s0"
    run.mkdir()
    (run / "run.json").write_text('{"mode": "sync", "replay": null, "run_id": "abc123"}')
    cfg = to_dict(load_config("tiny", None, ["trainer.wandb.entity=lab", "trainer.wandb.group=sweep-7"]))
    assert wandb_init_kwargs(run, cfg["trainer"]["wandb"], cfg) == {
        "project": "vespo",
        "entity": "lab",
        "group": "sweep-7",
        "name": "grpo-N8-s0",
        "id": "abc123",
        "dir": str(run),
        "config": cfg,
        "resume": "allow",
    }


@pytest.mark.skipif("tensorboard" in MISSING, reason="needs the tensorboard extra (part of the test extra)")
def test_tensorboard_event_files_hold_every_step(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vespo_cli.train.loop import train

    cfg = load_config("tiny", None, ["trainer.steps=2", "trainer.loggers=[tensorboard]"])
    train(cfg, tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r.get("kind") == "train"]
    for key in ("loss", "reward", "grad_norm"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == [float(np.float32(r[key])) for r in steps]
