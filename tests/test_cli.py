"""The `vespo` command frame: help, presets, inspect, and user errors (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_shard_rows
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.shards import shard_name, write_shard


def shard(rows: int, version: int, rewards: list[float]) -> dict:
    """A valid shard as column lists (conftest.make_shard_rows; tests/test_shards.py tests the contract)."""
    return make_shard_rows(
        rows,
        version,
        tag="s",
        group_id=[f"g{i // 2}" for i in range(rows)],
        prompt_token_ids=[[1, 2]] * rows,
        response_token_ids=[[5, 6, 7]] * rows,
        rollout_logprobs=[[-0.5, -0.1, -2.0]] * rows,
        reward=rewards,
    )


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def shard_dir(tmp_path):
    d = tmp_path / "run" / "rollouts"
    write_shard(shard(4, 0, [1.0, 0.0, 0.0, 0.0]), d / shard_name(0, "w0", 0))
    write_shard(shard(2, 3, [1.0, 1.0]), d / shard_name(3, "w0", 0))
    write_shard(shard(2, 3, [0.0, 0.0]), d / shard_name(3, "w1", 0))
    return d


def vespo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed `vespo` script (or `python -m vespo_cli.cli`) in a fresh process."""
    script = Path(sys.executable).with_name("vespo")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "vespo_cli.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "VESPO_PRESETS")}
    env.update(NO_COLOR="1", COLUMNS="200")
    return subprocess.run(cmd + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in ("rollout", "train", "eval", "compare", "presets", "inspect"):
        assert name in result.stdout
    no_args = runner.invoke(app, [])
    assert "train" in no_args.output  # no_args_is_help


@pytest.mark.parametrize("command", ["rollout", "train", "eval", "compare", "probe", "bench"])
def test_every_writing_command_takes_out(runner, command):
    """One word for where a command writes: --out (rollout and train keep --run-dir as an alias)."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "--out" in result.stdout
    assert ("--run-dir" in result.stdout) == (command in ("rollout", "train"))


@pytest.mark.parametrize("flag", ["--out", "--run-dir"])
def test_train_out_names_the_run_directory(runner, tmp_path, flag):
    run = tmp_path / "here"
    result = runner.invoke(app, ["train", "-p", "tiny", flag, str(run), "--dry-run"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert str(run) in result.stdout and not run.exists()


def test_presets_imports_no_torch():
    """`vespo presets` reads YAML only (vespo_cli/presets.py): it starts without torch or the typed config."""
    code = (
        "import sys; from typer.testing import CliRunner; from vespo_cli.cli import app; "
        "r = CliRunner().invoke(app, ['presets']); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('torch', 'vespo_cli.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_presets_lists_shipped(runner):
    result = runner.invoke(app, ["presets"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "tiny" in result.stdout and "smollm2-arith" in result.stdout
    assert "Run presets" in result.stdout and "Algorithm presets" in result.stdout


@pytest.mark.parametrize("which", ["shards", "run"])
def test_inspect(runner, shard_dir, which):
    target = shard_dir if which == "shards" else shard_dir.parent  # a run dir: its rollouts/ is used
    if which == "run":
        start = {"step": 0, "cpu": "AMD EPYC", "cpu_flags": ["avx512_bf16"], "gpus": ["NVIDIA H100"]}
        (target / "run.json").write_text(json.dumps({"mode": "sync", "replay": None, "starts": [start, start]}))
    result = runner.invoke(app, ["inspect", str(target)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    table = dict(
        (cell.strip() for cell in line.split("\u2502", 1))  # rich's column separator
        for line in result.stdout.splitlines()
        if "\u2502" in line
    )
    assert table["shards"] == "3"
    assert table["rows"] == "8"
    assert table["reward_mean"] == "0.3750" and table["accuracy"] == "0.3750"
    assert table["policy versions"] == "v0: 4, v3: 4"
    assert table["staleness vs newest"] == "0: 4, 3: 4"
    assert table["engines"] == "hf/float32: 8"
    assert table.get("trained on") == (None if which == "shards" else "AMD EPYC (avx512_bf16) + 1× NVIDIA H100")


def test_inspect_a_run_shows_its_training(runner, tmp_path):
    """A run directory without shards (a replayed or kept run): its steps, reward, collapse, evals and
    checkpoints from metrics.jsonl, the numbers `vespo compare` reports."""
    from vespo_cli.config import load_config, save_config

    run = tmp_path / "run"
    save_config(load_config("tiny", "grpo", ["trainer.steps=8"]), run)
    train = [{"kind": "train", "step": k, "reward": 0.1 * k, "loss": 0.0, "grad_norm": 1.0} for k in range(1, 5)]
    evals = [
        {
            "kind": "eval",
            "benchmark": "arith",
            "metric": "avg@1",
            "step": k,
            "avg_at_k": a,
            "ci95_low": a - 0.1,
            "ci95_high": a + 0.1,
        }
        for k, a in ((2, 0.25), (4, 0.5))
    ]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in train[:2] + evals[:1] + train[2:] + evals[1:])
    )
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    table = dict(
        (cell.strip() for cell in line.split("\u2502", 1)) for line in result.stdout.splitlines() if "\u2502" in line
    )
    assert "rows" not in table  # no shards: only the training part
    assert table["steps"] == "4/8" and table["collapse"] == "stable" and table["checkpoints"] == "step-4"
    assert table["reward"].startswith("final 0.400 (last 10% of steps), best ")
    assert table["eval arith avg@1"] == "step 2: 25.0%, step 4: 50.0% (95% [40.0, 60.0])"
    assert table["trained on"] == "– (no record in run.json)"


def test_inspect_a_run_with_a_broken_config_is_one_line(runner, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("trainer: [unclosed\n")
    (run / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "reward": 0.5}) + "\n")
    result = runner.invoke(app, ["inspect", str(run)], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {run / 'config.yaml'}: line 2 invalid YAML (expected ',' or ']', but got '<stream end>')"
    )


def test_inspect_one_shard_file(runner, shard_dir):
    from vespo_cli.shards import list_shards, read_shard

    first = list_shards(shard_dir)[0]
    result = runner.invoke(app, ["inspect", str(first)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    table = dict(
        (cell.strip() for cell in line.split("\u2502", 1)) for line in result.stdout.splitlines() if "\u2502" in line
    )
    assert table["shards"] == "1" and int(table["rows"]) == read_shard(first).num_rows


def test_inspect_reports_bad_shard_and_goes_on(runner, shard_dir):
    bad = shard_dir / shard_name(4, "w0", 0)
    bad.write_bytes(b"PAR1 torn")
    result = runner.invoke(app, ["inspect", str(shard_dir)], env={"COLUMNS": "300"})
    assert result.exit_code == 0
    assert "bad shard:" in result.stderr and bad.name in result.stderr
    assert "rows" in result.stdout and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--preset", "nope"], "error: nope: unknown preset (known: "),
        (
            ["train", "-p", "tiny", "--set", "trainer.lr=fast"],
            "error: --set trainer.lr=fast: trainer.lr: expected a float in (0, 1], got 'fast'",
        ),
        (
            ["train", "-p", "tiny", "--set", "trainer.foo=1"],
            "error: --set trainer.foo=1: trainer.foo: unknown key (expected one of: ",
        ),
    ],
)
def test_user_errors_subprocess(tmp_path, args, message):
    result = vespo(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1, result.stderr
    assert err[0].startswith(message), err[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # no runs/ (or anything else) written


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "--set", "trainer.rollout_batch_prompts=3", "--set", "trainer.minibatch_prompts=2"],
            "error: --set trainer.rollout_batch_prompts=3: trainer.rollout_batch_prompts: 3 is not divisible",
        ),
        (["train", "-p", "tiny", "--algo", "nope"], "error: nope: unknown algorithm preset"),
        (["train", "-p", "tiny", "--set", "trainer.lr"], "error: --set trainer.lr: expected KEY=VALUE"),
        (["train", "--resume", "nowhere"], "error: nowhere: not a vespo run directory (no config.yaml)"),
        (["train", "--resume", "nowhere", "-p", "tiny"], "error: --resume: the run's own config.yaml is used"),
        (
            ["train", "--resume", "nowhere", "--set", "trainer.lr=0.1"],
            "error: --resume: --set trainer.lr=0.1 is refused; a run resumes with its own config.yaml",
        ),
        (
            ["rollout", "-p", "tiny", "--n", "0"],
            "error: --set rollout.n=0: rollout.n: expected an integer in [1, 1024], got 0",
        ),
        (["eval", "aime24", "--engine", "tpu"], "error: --engine tpu: expected one of vllm, hf"),
        (
            ["train", "-p", "tiny", "--set", "trainer.seed=99999999999"],
            "error: --set trainer.seed=99999999999: trainer.seed: "
            "expected an integer in [0, 2147483647], got 99999999999",
        ),
        (["inspect", "missing-dir"], "error: missing-dir: no such shard file or directory"),
    ],
)
def test_user_errors_in_process(runner, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_preset_file_error_names_the_file(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("extends: tiny\ntrainer:\n  lr: fast\n")
    result = runner.invoke(app, ["train", "--preset", "mine.yaml"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: mine.yaml: trainer.lr: expected a float in (0, 1], got 'fast'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.yaml"]


@pytest.mark.parametrize(
    "item, message",
    [
        (
            "trainer.staleness=4",
            "--set trainer.staleness=4 is refused; a run resumes with its own config.yaml (only trainer.steps "
            "may be raised; edit run/config.yaml to change a setting)",
        ),
        ("trainer.steps=3", "--set trainer.steps=3: expected at least the run's 4 (a resume extends a run, it does"),
    ],
)
def test_set_on_resume_is_refused(runner, tmp_path, monkeypatch, item, message):
    """docs/decisions.md: a resumed run is what its config.yaml says; --set there is refused, not ignored,
    except a raised trainer.steps."""
    from vespo_cli.config import load_config, save_config

    monkeypatch.chdir(tmp_path)
    path = save_config(load_config("tiny"), tmp_path / "run")
    before = path.read_text()
    result = runner.invoke(app, ["train", "--resume", "run", "--set", item], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith(f"error: --resume: {message}")
    assert path.read_text() == before and sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]


def _launch_line(output: str) -> str:
    """The command under the dry run's `launch` heading, its shell-wrapped lines joined."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("launch"))
    cmd = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        cmd.append(line.strip().removesuffix("\\").strip())
    return " ".join(cmd)


def test_dry_run_launch_line_reproduces_the_resolved_run(runner, tmp_path):
    """Issue 30: the printed launch line carries the --set items, so running it gives the same config."""
    items = ["trainer.lr=3e-6", "eval.benchmarks=[gsm8k, math500]", "trainer.staleness=4"]
    args = ["train", "-p", "tiny", "-a", "grpo", "--out", str(tmp_path / "r")]
    for item in items:
        args += ["--set", item]
    first = runner.invoke(app, [*args, "--dry-run"], env={"COLUMNS": "300"})
    assert first.exit_code == 0, first.output
    cmd = _launch_line(first.stdout)
    assert cmd == (
        f"vespo train --preset tiny --algo grpo --set trainer.lr=3e-6 --set 'eval.benchmarks=[gsm8k, math500]' "
        f"--set trainer.staleness=4 --run-dir {tmp_path / 'r'}"
    )
    again = runner.invoke(app, [*shlex.split(cmd)[1:], "--dry-run"], env={"COLUMNS": "300"})
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout


def test_dry_run_of_a_resume_launches_the_resume(runner, tmp_path, monkeypatch):
    from vespo_cli.config import load_config, save_config

    monkeypatch.chdir(tmp_path)
    save_config(load_config("tiny"), tmp_path / "run")
    result = runner.invoke(
        app, ["train", "--resume", "run", "--set", "trainer.steps=9", "--dry-run"], env={"COLUMNS": "300"}
    )
    assert result.exit_code == 0, result.output
    assert _launch_line(result.stdout) == "vespo train --resume run --set trainer.steps=9"
    assert "steps: 4" in (tmp_path / "run" / "config.yaml").read_text()  # a dry run records nothing


def test_version_and_short_help(runner):
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"vespo {version('vespo-cli')}"
    for args in (["-h"], ["train", "-h"]):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Usage:" in result.stdout, result.output


def test_inspect_of_a_directory_without_shards_is_one_line(runner, tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["inspect", str(tmp_path / "empty")], env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'empty'}: no shard rows (expected *.parquet rollout shards, or a run directory "
        "with rollouts/)"
    )
