"""Faults found by reports/reliability/run.py (issue 19), one test each; and the script itself on a
few of its categories (`--quick`), whose table must show every case clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.config import load_config
from vespo_cli.errors import UserError
from vespo_cli.train.checkpoint import MANIFEST, latest_checkpoint, write_manifest

ROOT = Path(__file__).resolve().parent.parent


def test_non_utf8_preset_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"extends: tiny\ntrainer:\n  lr: \xff\xfe\n")
    with pytest.raises(UserError, match=r"bad\.yaml: not UTF-8 text \(byte \d+"):
        load_config(str(p))


BOMB = (
    "["
    + ", ".join(
        ["&a [x, x, x, x, x, x, x, x, x]"]
        + [f"&{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(9)]
    )
    + "]"
)  # billion laughs: 9^10 leaves, shared by reference


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"description: {BOMB}\n", "description: expected a string, got [["),
        (f"trainer:\n  betas: {BOMB}\n", "trainer.betas: expected a list of 2 items"),
        ("trainer: " + "[" * 5000 + "]" * 5000 + "\n", "invalid YAML (nested too deeply)"),
    ],
)
def test_alias_bomb_and_deep_nesting_are_refused_at_once(tmp_path, text, expected):
    p = tmp_path / "bomb.yaml"
    p.write_text("extends: tiny\n" + text)
    with pytest.raises(UserError) as e:
        load_config(str(p))
    assert expected in str(e.value) and len(str(e.value)) < 400


def test_deeply_nested_set_value_is_refused():
    with pytest.raises(UserError, match="trainer.betas"):
        load_config("tiny", None, ["trainer.betas=" + "[" * 5000 + "]" * 5000])


@pytest.mark.parametrize("worker", ["../evil", "w0/../../x", "/tmp/x", "", "..", "w0\n"])
def test_rollout_worker_name_is_not_a_path(tmp_path, worker):
    r = CliRunner().invoke(app, ["rollout", "--preset", "tiny", "--worker", worker, "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 2, r.output
    assert "--worker" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "r").exists()


def test_checkpoint_missing_its_trainer_state_is_named_not_skipped(tmp_path):
    ck = tmp_path / "checkpoints" / "step-1"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"step": 1, "iteration": 0, "ledger": []}))
    (ck / "model.safetensors").write_bytes(b"weights")
    write_manifest(ck)
    assert latest_checkpoint(tmp_path) == ck
    (ck / "trainer_state.json").unlink()
    with pytest.raises(UserError, match=r"step-1: trainer_state\.json: missing"):
        latest_checkpoint(tmp_path)
    (ck / MANIFEST).unlink()  # no manifest, no state (not a vespo checkpoint): not one to resume from
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.slow
def test_reliability_script_quick_is_all_clean(tmp_path):
    """`reports/reliability/run.py --quick` on three categories that need no prepared run (~2 min)."""
    out = tmp_path / "reliability.md"
    js = tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, str(ROOT / "reports/reliability/run.py"), "--quick", "--only", "config,names,fifo"]
        + ["--out", str(out), "--json", str(js), "--work", str(tmp_path / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    results = json.loads(js.read_text())
    bad = [r for r in results if r["outcome"] != "clean" or r["lost"] or r["reused"]]
    assert not bad, (bad, p.stdout[-3000:], p.stderr[-3000:])
    assert p.returncode == 0
    cats = {r["category"] for r in results}
    assert cats == {"config", "names", "FIFO x.parquet"} and len(results) >= 12
    table = out.read_text()
    assert "| **all** |" in table and "reports/reliability/run.py --quick" in table


def test_resume_warns_when_metrics_lines_of_restored_steps_are_gone(tmp_path, capsys):
    from vespo_cli.train.setup import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "train", "step": s} for s in (1, 2, 3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _truncate_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]
    assert "warning" not in capsys.readouterr().err
    path.write_bytes(b'\xff garbage\n[1, 2]\n{"step": "one", "kind": "train"}\n{"kind": "train", "step": 2}\n')
    _truncate_metrics(path, 2)  # a step that is not an integer was a TypeError traceback
    err = capsys.readouterr().err
    assert "metrics.jsonl" in err and "1 of steps 1..2" in err
    path.unlink()
    _truncate_metrics(path, 2)
    assert "2 of steps 1..2" in capsys.readouterr().err and not path.exists()


@pytest.mark.slow
def test_resume_refuses_changed_inputs_before_loading_anything(tmp_path):
    """The trainer's hook (train/setup.settle_inputs → inputs.py): a replay run records its
    inputs; a resume after config.yaml's staleness or the replay directory changed is refused."""
    import yaml
    from test_shards import shard_columns

    from vespo_cli.shards import write_shard
    from vespo_cli.train.loop import train

    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        write_shard(shard_columns(8, k), shards / f"v{k}.parquet")
    run = tmp_path / "run"
    cfg = load_config("tiny", None, ["trainer.steps=1", "trainer.save_every=1"])
    train(cfg, run, replay=shards)
    assert json.loads((run / "inputs.json").read_text())["settings"]["trainer.staleness"] == 2

    def resume() -> str:
        with pytest.raises(UserError) as e:
            train(load_config_run(run), run, resume=True)
        return str(e.value)

    from vespo_cli.config import load_run_config as load_config_run

    text = (run / "config.yaml").read_text()
    edited = yaml.safe_load(text)
    edited["trainer"].update(staleness=1, rollout_batch_prompts=None)
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    assert "trainer.staleness is 1 in config.yaml but the run started with 2" in resume()
    (run / "config.yaml").write_text(text)
    write_shard(shard_columns(8, 5), shards / "v5.parquet")
    assert "v5.parquet added" in resume()
    (shards / "v5.parquet").unlink()
    assert train(load_config_run(run), run, resume=True) == {}  # unchanged: resumes (here: already complete)
