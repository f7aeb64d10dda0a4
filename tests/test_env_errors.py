"""Faults of the machine and corrupt run files (issue 19, item 5): one line naming the path and the
cause, exit 1 for the environment (disk full, read-only, permissions, a file where a directory
belongs), exit 2 for bad input, and the traceback only with --debug or VESPO_DEBUG=1."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_lock import _env, tiny_replay_run
from test_reliability import QUIET
from typer.testing import CliRunner

from vespo_cli.cli import app
from vespo_cli.fsio import read_jsonl
from vespo_cli.train.checkpoint import verify_checkpoint, write_manifest

CAUSES = [
    (errno.ENOSPC, "no space left on device"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.ENOTDIR, "a part of the path is a file, not a directory"),
    (errno.EEXIST, "exists, and is not a directory"),
]


def one_line(result, code: int) -> str:
    assert result.exit_code == code, (result.output, result.exception)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    return err[0]


@pytest.mark.parametrize("code, cause", CAUSES, ids=[errno.errorcode[c] for c, _ in CAUSES])
def test_an_os_error_is_one_line_exit_1_and_a_traceback_only_when_asked(monkeypatch, code, cause):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), "runs/x/metrics.jsonl")

    monkeypatch.setattr("vespo_cli.train.loop.train", fail)
    monkeypatch.setenv("VESPO_DEBUG", "0")  # restored after the test: --debug sets it for this process
    assert (
        one_line(CliRunner().invoke(app, ["train", "-p", "tiny"], env=QUIET), 1)
        == f"error: runs/x/metrics.jsonl: {cause}"
    )
    for args, env in ((["--debug", "train", "-p", "tiny"], {}), (["train", "-p", "tiny"], {"VESPO_DEBUG": "1"})):
        result = CliRunner().invoke(app, args, env={**QUIET, **env})
        assert isinstance(result.exception, OSError) and result.exception.errno == code
        os.environ["VESPO_DEBUG"] = "0"


class _Coded(Exception):
    errno = errno.EACCES  # as some libraries' own exceptions carry one


def _chained() -> Exception:
    try:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "runs/x/tok.json")
    except OSError as e:
        try:
            raise RuntimeError("could not save the tokenizer") from e
        except RuntimeError as r:
            return r


LIBRARY_FAULTS = [  # what libraries raise for a fault of the machine, and the line it becomes
    (Exception("No space left on device (os error 28)"), "no space left on device (raised as Exception)"),
    (_Coded("denied"), "permission denied (raised as test_env_errors._Coded)"),
    (_chained(), "runs/x/tok.json: read-only file system"),
]


@pytest.mark.parametrize("exc, line", LIBRARY_FAULTS, ids=["tokenizers-enospc", "errno-attribute", "chained"])
def test_a_library_error_with_an_errno_or_a_disk_message_is_one_line_exit_1(monkeypatch, exc, line):
    """tokenizers raises a plain Exception("No space left on device") while building its cache: the
    same one line, exit 1, as an OSError; any other exception keeps its traceback (a bug)."""

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("vespo_cli.train.loop.train", fail)
    monkeypatch.setenv("VESPO_DEBUG", "0")
    assert one_line(CliRunner().invoke(app, ["train", "-p", "tiny"], env=QUIET), 1) == f"error: {line}"
    monkeypatch.setattr("vespo_cli.train.loop.train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bug")))
    result = CliRunner().invoke(app, ["train", "-p", "tiny"], env=QUIET)
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "bug"


def test_a_directory_in_place_of_the_lock_is_named_as_the_lock(tmp_path, monkeypatch):
    (tmp_path / "run" / ".vespo.lock").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "-p", "tiny", "--run-dir", "run"], env=QUIET)
    assert one_line(result, 1) == "error: run/.vespo.lock: is a directory, expected a file"


def test_a_file_where_the_run_directory_belongs(tmp_path, monkeypatch):
    from test_reliability import shard_columns

    from vespo_cli.shards import shard_name, write_shard

    write_shard(shard_columns(), tmp_path / "shards" / shard_name(0, "w0", 0))
    (tmp_path / "afile").write_text("not a directory\n")
    monkeypatch.chdir(tmp_path)
    replay = ["train", "-p", "tiny", "--replay", "shards", "--set", "trainer.steps=1"]
    assert (
        one_line(CliRunner().invoke(app, [*replay, "--run-dir", "afile"], env=QUIET), 1)
        == "error: afile: exists, and is not a directory"
    )
    assert (
        one_line(CliRunner().invoke(app, [*replay, "--run-dir", "afile/run"], env=QUIET), 1)
        == "error: afile/run: a part of the path is a file, not a directory"
    )
    assert (
        one_line(
            CliRunner().invoke(app, ["rollout", "-p", "tiny", "--run-dir", "afile", "--num-prompts", "1"], env=QUIET), 1
        )
        == "error: afile: exists, and is not a directory"
    )
    assert (tmp_path / "afile").read_text() == "not a directory\n"


def test_corrupt_run_files_on_resume(tmp_path, monkeypatch, request):
    """run.json and trainer_state.json that are garbage, not UTF-8 or of the wrong shape: exit 2, one
    line naming the file. Garbage lines in metrics.jsonl are dropped like a torn last line."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # as `vespo` (cli.main) does through HF_HUB_DISABLE_PROGRESS_BARS
    request.addfinalizer(hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)
    run, _ = tiny_replay_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = {
        "run.json": [
            (b"{not json", "unreadable run file"),
            (b"\xff\xfe\x00", "unreadable run file"),
            (b'{"mode": "magic"}', "not a vespo run file"),
            (b"[1, 2]", "not a vespo run file"),
        ],
        "checkpoints/step-1/trainer_state.json": [
            (b"", "unreadable checkpoint state"),
            (b'{"step": "one"}', "not a vespo trainer state"),
        ],
    }
    for name, variants in cases.items():
        for i, (data, fragment) in enumerate(variants):
            copy = tmp_path / f"case-{name.replace('/', '_')}-{i}"
            shutil.copytree(run, copy)
            (copy / name).write_bytes(data)
            if name.endswith("trainer_state.json"):
                write_manifest(copy / "checkpoints" / "step-1")  # vouched for: the state's own check speaks
            line = one_line(CliRunner().invoke(app, ["train", "--resume", str(copy)], env=QUIET), 2)
            assert line.startswith(f"error: {copy / name}: {fragment}"), line
    (run / "metrics.jsonl").write_bytes(b'\xff\xfegarbage\n{"step": 1, "kind": "train"}\n[3]\n')
    result = CliRunner().invoke(app, ["train", "--resume", str(run)], env=QUIET)
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


# --------------------------------------------------------------------------- real faults, in a mount namespace


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_unshare = pytest.mark.skipif(not _can_unshare(), reason="needs unshare -rm (user + mount namespaces)")


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell script as root of a new user + mount namespace (its mounts vanish with it)."""
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=_env(), timeout=600
    )


def vespo(*args) -> str:
    return " ".join([sys.executable, "-m", "vespo_cli.cli", *map(str, args)])


@pytest.mark.slow
@needs_unshare
def test_read_only_run_directory(tmp_path):
    """A fresh run on a read-only file system, and `--resume` of a run bind-mounted read-only: exit 1,
    one line naming the path and the cause."""
    run, shards = tiny_replay_run(tmp_path)
    (tmp_path / "ro").mkdir()
    p = in_namespace(
        f"mount -t tmpfs -o ro none ro && {vespo('train', '-p', 'tiny', '--replay', shards, '--run-dir', 'ro/run')}"
        f"; echo rc=$? >&2; mount --bind {run} {run} && mount -o remount,bind,ro {run} && "
        f"{vespo('train', '--resume', run)}; echo rc=$? >&2",
        tmp_path,
    )
    err = [line for line in p.stderr.splitlines() if line.strip()]
    assert err == ["error: ro/run: read-only file system", "rc=1", f"error: {run}: read-only file system", "rc=1"], (
        p.stderr
    )


@pytest.mark.slow
@needs_unshare
def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(tmp_path):
    """A 120 MiB file system holds one 79 MiB tiny checkpoint, not two: the second write fails with one
    line saying what a checkpoint takes, exit 1, and step-1 is intact."""
    _, shards = tiny_replay_run(tmp_path)
    (tmp_path / "full").mkdir()
    p = in_namespace(
        "mount -t tmpfs -o size=120m none full && "
        + vespo(
            'train',
            '-p',
            'tiny',
            '--replay',
            shards,
            '--run-dir',
            'full/run',
            '--set',
            'trainer.steps=3',
            '--set',
            'trainer.save_every=1',
            '--set',
            'trainer.staleness=1',
            '--set',
            'trainer.minibatch_prompts=2',
        )
        + "; echo rc=$? >&2; ls full/run/checkpoints >&2; cp -r full/run/checkpoints/step-1 step-1",
        tmp_path,
    )
    err = [line for line in p.stderr.splitlines() if line.startswith(("error", "rc=", "step-"))]
    assert len(err) == 3 and err[1:] == ["rc=1", "step-1"], p.stderr
    assert err[0].startswith(
        "error: full/run/checkpoints/step-2: no space left on device for a checkpoint (one takes about 7"
    ) and err[0].endswith(" MiB; the last good checkpoint, step-1, is intact)")
    assert verify_checkpoint(tmp_path / "step-1") is None
    assert json.loads((tmp_path / "step-1" / "trainer_state.json").read_text())["step"] == 1
