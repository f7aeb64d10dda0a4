"""Exactly-once under changed inputs (issue 19, item 4): vespo_cli/inputs.py, train/setup.settle_inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_shards import shard_columns

from vespo_cli import inputs as I
from vespo_cli.config import load_config
from vespo_cli.errors import UserError
from vespo_cli.shards import read_shard, shard_hash, write_shard
from vespo_cli.train.setup import settle_inputs


def cfg(*sets: str):
    return load_config("tiny", None, list(sets))


def shard_dir(tmp_path: Path, n: int = 3, rewards_of: dict[int, list[float]] | None = None) -> Path:
    d = tmp_path / "shards"
    d.mkdir(exist_ok=True)
    for k in range(n):
        rewards = (rewards_of or {}).get(k)
        write_shard(shard_columns(4, k, rewards=rewards), d / f"v{k}.parquet")
    return d


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_unchanged_inputs_resume(tmp_path):
    shards = shard_dir(tmp_path)
    rec = I.record_inputs(tmp_path, cfg(), "replay", shards)
    assert rec["settings"]["trainer.staleness"] == 2 and len(rec["replay"]["shards"]) == 3
    I.check_inputs(tmp_path, cfg(), "replay", shards)
    I.check_inputs(tmp_path, cfg("trainer.steps=99", "trainer.lr=0.5"), "replay", shards)  # may change


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.staleness=1", "trainer.staleness"),
        ("trainer.minibatch_prompts=3", "trainer.minibatch_prompts"),
        ("trainer.rollout_batch_prompts=8", "trainer.staleness"),
        ("rollout.n=2", "rollout.n"),
        ("trainer.seed=7", "trainer.seed"),
        ("data.difficulty=2", "data.difficulty"),
        ("trainer.async_workers=2", "trainer.async_workers"),
    ],
)
def test_changed_batch_settings_are_refused_naming_the_key(tmp_path, override, key):
    I.record_inputs(tmp_path, cfg(), "sync", None)
    msg = refused(I.check_inputs, tmp_path, cfg(override), "sync", None)
    assert f"{key} is " in msg and "the run started with" in msg


@pytest.mark.parametrize("change", ["added", "removed", "rewritten", "renamed"])
def test_changed_replay_directory_is_refused_naming_the_shard(tmp_path, change):
    shards = shard_dir(tmp_path)
    I.record_inputs(tmp_path, cfg(), "replay", shards)
    if change == "added":
        write_shard(shard_columns(4, 9), shards / "v9.parquet")
    elif change == "removed":
        (shards / "v1.parquet").unlink()
    elif change == "rewritten":
        (shards / "v1.parquet").unlink()
        write_shard(shard_columns(4, 1, rewards=[0.0, 1.0, 0.0, 0.0]), shards / "v1.parquet")
    else:
        (shards / "v1.parquet").rename(shards / "v1b.parquet")
    msg = refused(I.check_inputs, tmp_path, cfg(), "replay", shards)
    assert "replay directory" in msg and ("v9.parquet" if change == "added" else "v1") in msg


def test_replay_directory_moved_with_the_same_shards_resumes(tmp_path):
    shards = shard_dir(tmp_path)
    I.record_inputs(tmp_path, cfg(), "replay", shards)
    moved = shards.rename(tmp_path / "elsewhere")
    I.check_inputs(tmp_path, cfg(), "replay", moved)


def test_mode_changed_is_refused(tmp_path):
    shards = shard_dir(tmp_path)
    I.record_inputs(tmp_path, cfg(), "replay", shards)
    msg = refused(I.check_inputs, tmp_path, cfg(), "sync", None)
    assert "replay" in msg and "run.json" in msg


def test_missing_record_is_written_after_the_ledger_check(tmp_path):
    shards = shard_dir(tmp_path)
    digest = shard_hash(read_shard(shards / "v0.parquet"))
    ledger = [{"shard": "v0", "iteration": 0, "rows": 4, "first_step": 1, "sha256": digest}]
    I.check_inputs(tmp_path, cfg(), "replay", shards, ledger)  # no inputs.json: an older run
    assert I.read_inputs(tmp_path)["replay"]["shards"]["v0.parquet"] == digest
    other = tmp_path / "other"
    other.mkdir()
    write_shard(shard_columns(4, 0, rewards=[0.0, 0.0, 1.0, 1.0]), other / "v0.parquet")
    (tmp_path / I.INPUTS).unlink()
    msg = refused(I.check_inputs, tmp_path, cfg(), "replay", other, ledger)
    assert "shard v0 (consumed at step 1)" in msg


@pytest.mark.parametrize("text", [b"", b"\xff\xfe garbage", b"[1, 2]", b'{"mode": "sideways", "settings": {}}'])
def test_bad_record_is_named(tmp_path, text):
    (tmp_path / I.INPUTS).write_bytes(text)
    msg = refused(I.check_inputs, tmp_path, cfg(), "sync", None)
    assert I.INPUTS in msg


def test_settle_records_then_checks_the_checkpoint_ledger(tmp_path):
    shards = shard_dir(tmp_path)
    settle_inputs(tmp_path, cfg(), mode="replay", replay=shards, resume=False)
    ck = tmp_path / "checkpoints" / "step-2"
    ck.mkdir(parents=True)
    state = {"step": 2, "iteration": 1, "ledger": [{"shard": "v0", "rows": 4, "first_step": 1, "sha256": "0" * 64}]}
    (ck / "trainer_state.json").write_text(json.dumps(state))
    (tmp_path / I.INPUTS).unlink()  # only the ledger can tell
    msg = refused(settle_inputs, tmp_path, cfg(), mode="replay", replay=shards, resume=True, checkpoint=ck)
    assert "shard v0" in msg


def test_unreadable_shards_count_by_name(tmp_path):
    shards = shard_dir(tmp_path, 1)
    (shards / "torn.parquet").write_bytes(b"PAR1 torn")
    digests = I.shard_digests(shards)
    assert digests["torn.parquet"] is None and digests["v0.parquet"]


def test_rollout_rerun_with_another_batch_size_is_refused(tmp_path):
    out = tmp_path / "rollouts"
    I.check_rollout_inputs(out, cfg())
    write_shard(shard_columns(4, 0), out / "v000000-w0-000000.parquet")
    I.check_rollout_inputs(out, cfg())  # the same settings: continue (more prompts is fine)
    msg = refused(I.check_rollout_inputs, out, cfg("trainer.minibatch_prompts=4"))
    assert "trainer.minibatch_prompts=2, now 4" in msg
    assert "rollout.n=4, now 2" in refused(I.check_rollout_inputs, out, cfg("rollout.n=2"))


def test_rollout_into_unrecorded_shards_is_refused(tmp_path):
    out = tmp_path / "rollouts"
    out.mkdir()
    write_shard(shard_columns(4, 0), out / "v000000-w0-000000.parquet")
    assert I.ROLLOUT_INPUTS in refused(I.check_rollout_inputs, out, cfg())
