"""One writer per directory (issue 19, item 3): `train`, `rollout` and `compare` lock what they write;
a second writer is refused with one line naming the directory and the holder's PID; SIGKILL frees it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vespo_cli import shards as S
from vespo_cli.cli import app
from vespo_cli.config import load_config
from vespo_cli.errors import UserError
from vespo_cli.fsio import read_jsonl
from vespo_cli.lock import LOCK_NAME, hold
from vespo_cli.shards import write_shard
from vespo_cli.train.loop import train

QUIET = {"COLUMNS": "1000", "NO_COLOR": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "VESPO_PRESETS")}
    env.update(NO_COLOR="1", COLUMNS="1000", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return env


@contextlib.contextmanager
def held_elsewhere(directory: Path):
    """Another process holding `directory`'s lock (as a live `vespo train` would); yields its PID."""
    code = (
        f"from vespo_cli.lock import hold\nwith hold({str(directory)!r}, 'vespo train'):\n"
        "    print('held', flush=True)\n    import time; time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=30)


def tiny_replay_run(tmp_path: Path) -> tuple[Path, Path]:
    """A finished one-step replay run (and its shard dir) whose config asks for one more step."""
    from test_reliability import shard_columns

    d = tmp_path / "shards"
    write_shard(shard_columns(seed=1, tag="a"), d / S.shard_name(0, "w0", 0))
    write_shard(shard_columns(seed=2, tag="b"), d / S.shard_name(0, "w0", 1))
    run = tmp_path / "run"
    train(
        load_config("tiny", None, ["trainer.steps=1", "trainer.staleness=1", "trainer.minibatch_prompts=2"]),
        run,
        replay=d,
    )
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 1\n", "steps: 2\n", 1))
    return run, d


def test_second_holder_is_refused_with_the_pid_and_sigkill_frees_the_lock(tmp_path):
    d = tmp_path / "run"
    with held_elsewhere(d) as proc:
        assert (d / LOCK_NAME).read_text() == f"pid {proc.pid} (vespo train)\n"
        with pytest.raises(UserError) as e:
            with hold(d, "vespo rollout"):
                pass
        msg = str(e.value)
        assert msg.startswith(f"{d}: in use by another vespo process (pid {proc.pid} (vespo train))")
        assert "\n" not in msg
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with hold(d, "vespo train") as path:  # the kernel released it with the killed process
            assert path.read_text() == f"pid {os.getpid()} (vespo train)\n"
            with hold(d, "vespo train"):  # re-entrant within one process (compare runs train in-process)
                pass


def test_lock_is_released_after_the_block_and_the_file_stays(tmp_path):
    d = tmp_path / "out"
    with hold(d, "vespo compare"):
        pass
    assert (d / LOCK_NAME).is_file()
    code = f"from vespo_cli.lock import hold\nwith hold({str(d)!r}, 'x'): print('ok')\n"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=60)
    assert p.stdout.strip() == "ok", p.stderr


def test_train_and_rollout_refuse_a_held_run_directory(tmp_path, monkeypatch):
    """While another process holds the directory: `train --resume`, a fresh `train`, `rollout` and
    `compare --out` on it exit 2 with one line naming it and the PID and change nothing; after kill -9
    the resume trains."""
    run, shards = tiny_replay_run(tmp_path)
    fresh = tmp_path / "fresh"
    monkeypatch.chdir(tmp_path)

    def refused(args: list[str], d: Path, pid: int) -> None:
        before = sorted((p.name, p.stat().st_mtime_ns) for p in d.rglob("*"))
        result = CliRunner().invoke(app, args, env=QUIET)
        err = result.stderr.strip().splitlines()
        assert result.exit_code == 2, result.output
        assert len(err) == 1 and err[0].startswith(
            f"error: {d}: in use by another vespo process (pid {pid} (vespo train))"
        ), result.stderr
        assert sorted((p.name, p.stat().st_mtime_ns) for p in d.rglob("*")) == before

    with held_elsewhere(fresh) as proc:
        refused(["train", "-p", "tiny", "--run-dir", str(fresh), "--replay", str(shards)], fresh, proc.pid)
        refused(["compare", str(run), "--out", str(fresh)], fresh, proc.pid)  # compare's report directory
    with held_elsewhere(run) as proc:
        refused(["train", "--resume", str(run)], run, proc.pid)
        refused(["rollout", "-p", "tiny", "--run-dir", str(run), "--num-prompts", "2"], run, proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    result = CliRunner().invoke(app, ["train", "--resume", str(run)], env=QUIET)
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_live_vespo_train_refuses_a_second_one_and_resumes_after_sigkill(tmp_path):
    """Two real processes: `vespo train` on the tiny preset, then a second `vespo train --resume` on
    its run while it trains: refused, naming the first one's PID; SIGKILL the first, resume finishes."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "vespo_cli.cli",
        "train",
        "-p",
        "tiny",
        "--run-dir",
        str(run),
        "--set",
        "trainer.steps=100000",
        "--set",
        "trainer.save_every=1",
    ]
    log = open(tmp_path / "first.log", "wb")
    first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list(run.glob("checkpoints/step-*")):
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        second = subprocess.run(
            [sys.executable, "-m", "vespo_cli.cli", "train", "--resume", str(run)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=300,
        )
        assert first.poll() is None, "the first run ended before the second was refused"
        err = second.stderr.strip().splitlines()
        assert second.returncode == 2 and len(err) == 1, second.stderr
        assert err[0].startswith(f"error: {run}: in use by another vespo process (pid {first.pid} (vespo train))")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    done = max(m["step"] for m in read_jsonl(run / "metrics.jsonl"))
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 100000\n", f"steps: {done + 2}\n", 1))
    third = subprocess.run(
        [sys.executable, "-m", "vespo_cli.cli", "train", "--resume", str(run)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    steps = [m["step"] for m in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, done + 3)), steps


def test_eval_of_a_checkpoint_appends_under_the_runs_lock(tmp_path):
    """`vespo eval` of a checkpoint appends its lines to the run's metrics.jsonl only while it holds the
    run's lock: with a trainer holding it, one line naming the holder and where the results are."""
    from vespo_cli.evaluate.command import _append_to_run

    run, _ = tiny_replay_run(tmp_path)
    before = (run / "metrics.jsonl").read_text()
    summary = {"benchmark": "arith", "k": 1, "num_problems": 1, "avg_at_k": 1.0, "pass_at_k": 1.0}
    ckpt = run / "checkpoints" / "step-1"
    with held_elsewhere(run) as proc:
        with pytest.raises(UserError) as e:
            _append_to_run(ckpt, {"arith": summary}, None, tmp_path / "out")
        assert str(e.value) == (
            f"{run}: in use by another vespo process (pid {proc.pid} (vespo train)); wait for it to finish or stop "
            f"it, then retry (eval lines not appended to {run / 'metrics.jsonl'}; "
            f"the results are in {tmp_path / 'out'})"
        )
    assert (run / "metrics.jsonl").read_text() == before
    from rich.console import Console

    _append_to_run(ckpt, {"arith": summary}, Console(stderr=True), tmp_path / "out")
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval"]
    assert [(r["step"], r["benchmark"]) for r in evals] == [(1, "arith")]
