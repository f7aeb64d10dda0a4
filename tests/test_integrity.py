"""Integrity (issue 19, item 2): shards carry page checksums and a content hash, verified on read; the
hash is the shard's identity, so a renamed copy is used once; token ids are checked against the
model's vocabulary; checkpoints carry a sha256 manifest and a resume skips a corrupt one."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_reliability import QUIET, assert_same_weights, raw_write, shard_columns, stable, tiny
from typer.testing import CliRunner

from vespo_cli import shards as S
from vespo_cli.cli import app
from vespo_cli.errors import UserError
from vespo_cli.fsio import read_jsonl
from vespo_cli.shards import ShardError, content_hash, list_shards, read_shard, shard_hash, to_table, write_shard
from vespo_cli.train.checkpoint import MANIFEST, latest_checkpoint, verify_checkpoint
from vespo_cli.train.loop import train
from vespo_cli.train.sources import async_batches, replay_batches

REPLAY = ("trainer.staleness=1", "trainer.minibatch_prompts=2", "trainer.save_every=1")


# --------------------------------------------------------------------------- shards


FLIPS = sorted({0, 1, 2, 3, 21, 22, 23} | set(range(5, 100_000, 5)))  # 0-3, 21-23: outside every page checksum


def test_a_flipped_bit_anywhere_in_a_shard_is_named(tmp_path):
    """One flipped bit (bit k mod 8 of byte k) at every 5th byte of a shard, and in the leading magic and
    the first page header, which no page checksum covers: each read fails with one line naming the file.
    (Every bit of every byte of this shard, 8 × 7587 flips, was checked the same way once.)"""
    path = write_shard(shard_columns(), tmp_path / "v000000-w0-000000.parquet")
    data = path.read_bytes()
    bad = tmp_path / "flipped.parquet"
    for k in (k for k in FLIPS if k < len(data)):
        b = bytearray(data)
        b[k] ^= 1 << (k % 8)
        bad.write_bytes(bytes(b))
        with pytest.raises(ShardError) as e:
            read_shard(bad)
        assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value), k


def test_changed_rows_under_the_old_metadata_are_named_corrupt(tmp_path, monkeypatch):
    """Rows rewritten under the old metadata (a page with a valid checksum): the file's sha256 differs.
    Rows that differ from the content hash under a valid file sha256 are caught too."""
    path = write_shard(shard_columns(), tmp_path / "a.parquet")
    meta = pq.ParquetFile(path).schema_arrow.metadata
    t = read_shard(path)
    t = t.set_column(
        t.schema.get_field_index("reward"), "reward", pa.array(1.0 - t.column("reward").to_numpy(), pa.float32())
    )
    pq.write_table(t.replace_schema_metadata(meta), path, write_page_checksum=True)
    with pytest.raises(ShardError) as e:
        read_shard(path)
    assert str(e.value) == f"{path}: corrupt: the file's bytes do not match the sha256 written into it"
    monkeypatch.setattr(S, "content_hash", lambda table: "f" * 64)
    write_shard(t, path)
    monkeypatch.undo()
    with pytest.raises(ShardError) as e:
        read_shard(path)
    assert str(e.value).startswith(f"{path}: corrupt: its rows do not match the content hash written with them")


def test_shards_without_a_hash_stay_readable_and_get_one(tmp_path):
    raw_write(to_table(shard_columns()), tmp_path / "old.parquet")  # an older vespo, another producer
    assert S.HASH_KEY not in pq.ParquetFile(tmp_path / "old.parquet").schema_arrow.metadata
    new = write_shard(shard_columns(), tmp_path / "new.parquet")
    assert shard_hash(read_shard(tmp_path / "old.parquet")) == shard_hash(read_shard(new))
    assert pq.ParquetFile(new).schema_arrow.metadata[S.HASH_KEY] == shard_hash(read_shard(new)).encode()
    data = new.read_bytes()
    stamp = pq.ParquetFile(new).metadata.metadata[S.FILE_KEY]
    assert hashlib.sha256(data.replace(stamp, b"0" * 64)).hexdigest().encode() == stamp
    # the hash is of the rows, not of the file: chunking and the list item's field name do not count
    t = read_shard(new)
    assert content_hash(pa.concat_tables([t.slice(0, 3), t.slice(3)])) == content_hash(pq.read_table(new))
    assert pq.ParquetFile(new).metadata.row_group(0).column(0).statistics is not None  # plain parquet still


def test_token_ids_outside_the_vocabulary_are_named(tmp_path):
    cols = shard_columns()
    cols["response_token_ids"][5] = [7, 49152, 9]
    cols["rollout_logprobs"][5] = [-0.5, -0.5, -0.5]
    path = write_shard(cols, tmp_path / "v000000-w0-000000.parquet")
    assert read_shard(path).num_rows == 8  # no model, no vocabulary: `inspect` accepts it
    with pytest.raises(ShardError) as e:
        read_shard(path, vocab_size=49152)
    assert str(e.value) == (
        f"{path}: response_token_ids contain token id 49152, outside the model's vocabulary "
        f"of 49152 (shard from another tokenizer?)"
    )
    with pytest.raises(UserError, match="every shard is invalid"):  # replay: skipped like any bad shard
        train(tiny("trainer.steps=1", *REPLAY), tmp_path / "run", replay=tmp_path)


def test_inspect_of_a_directory_whose_only_shard_is_torn_fails(tmp_path):
    path = write_shard(shard_columns(), tmp_path / "d" / "v000000-w0-000000.parquet")
    path.write_bytes(path.read_bytes()[:-100])
    result = CliRunner().invoke(app, ["inspect", str(path.parent)], env=QUIET)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path.parent}: no readable shard (1 bad, e.g. {path}: "), err


def test_replay_uses_a_renamed_copy_once(tmp_path):
    """A shard copied under another name into the replay directory: skipped and counted; the run trains
    exactly as without the copy (metrics and weights), and the ledger holds every shard once."""
    d = tmp_path / "shards"
    for i, tag in enumerate("abc"):
        write_shard(shard_columns(seed=i, tag=tag), d / S.shard_name(0, "w0", i))
    ref = tmp_path / "ref"
    train(tiny("trainer.steps=4", *REPLAY), ref, replay=d)
    copy = d / S.shard_name(0, "w0", 1).replace(".parquet", "x.parquet")  # sorts between b and c
    shutil.copy(d / S.shard_name(0, "w0", 1), copy)
    run = tmp_path / "run"
    train(tiny("trainer.steps=4", *REPLAY), run, replay=d)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["shards_duplicate"] for m in metrics] == [1, 0, 0, 0]
    assert stable([{k: v for k, v in m.items() if k != "shards_duplicate"} for m in metrics]) == stable(
        [{k: v for k, v in m.items() if k != "shards_duplicate"} for m in read_jsonl(ref / "metrics.jsonl")]
    )
    assert_same_weights(run / "checkpoints" / "step-4", ref / "checkpoints" / "step-4")
    ledger = json.loads((run / "checkpoints" / "step-4" / "trainer_state.json").read_text())["ledger"]
    digests = [e["sha256"] for e in ledger]
    assert len(digests) == 4 and len(set(digests)) == 2 and all(digests)  # batches 1-2 from a, 3-4 from b


def test_async_skips_a_renamed_copy_of_a_consumed_shard(tmp_path):
    """The trainer's async source: a copy of an already consumed shard under a new name is skipped,
    counted as a duplicate and remembered, so a resumed trainer does not count it again."""
    out = tmp_path / "run" / "rollouts"
    a = write_shard(shard_columns(seed=1, tag="a"), out / S.shard_name(0, "w0", 0))
    write_shard(shard_columns(seed=2, tag="b"), out / S.shard_name(0, "w0", 1))
    copy = out / a.name.replace(".parquet", "x.parquet")  # a renamed copy of the consumed one, read before b
    shutil.copy(a, copy)
    state = {
        "step": 1,
        "iteration": 1,
        "dropped": [],
        "ledger": [{"shard": a.name, "sha256": shard_hash(read_shard(a)), "rows": 8, "iteration": 0}],
    }
    cfg = tiny("trainer.staleness=2", "trainer.minibatch_prompts=2")  # 4 prompt groups per batch: one shard
    batch = next(async_batches(cfg, tmp_path / "run", state, lambda: False, vocab_size=49152))
    assert batch.shards == [S.shard_name(0, "w0", 1)] and batch.duplicates == [copy.name]
    assert batch.digests == {S.shard_name(0, "w0", 1): shard_hash(read_shard(out / S.shard_name(0, "w0", 1)))}


def _colliding(tag: str, seed: int, victim: str) -> pa.Table:
    """A shard of other prompts (`tag`p…) that reuses shard `victim`'s group ids, as another producer or
    a same-named run could write it: no vespo hashes (written as a foreign tool would)."""
    cols = shard_columns(seed=seed, tag=tag)
    cols["group_id"] = [g.replace(tag, victim, 1) for g in cols["group_id"]]
    return to_table(cols)


def test_replay_skips_a_shard_whose_group_ids_are_another_shards_for_other_prompts(tmp_path, capsys):
    """A foreign shard reusing shard a's group ids for its own prompts: skipped with one line naming
    both shards and the id, counted, and the run trains exactly as without it."""
    d = tmp_path / "shards"
    for i, tag in enumerate("ab"):
        write_shard(shard_columns(seed=i, tag=tag), d / S.shard_name(0, "w0", i))
    ref = tmp_path / "ref"
    train(tiny("trainer.steps=2", *REPLAY), ref, replay=d)
    bad = d / S.shard_name(0, "w0", 0).replace(".parquet", "x.parquet")  # sorts after a, before b
    raw_write(_colliding("c", 5, "a"), bad)
    capsys.readouterr()
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", *REPLAY), run, replay=d)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "group_id" in ln]
    first = d / S.shard_name(0, "w0", 0)
    assert lines == [
        f"skipping bad shard {bad}: group_id 'a0-g0' is also in {first} for another prompt (prompt_id 'ap0' vs "
        "'cp0'); group ids must name one prompt"
    ]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["shards_quarantined"] for m in metrics] == [1, 0]
    strip = lambda ms: stable([{k: v for k, v in m.items() if k != "shards_quarantined"} for m in ms])  # noqa: E731
    assert strip(metrics) == strip(read_jsonl(ref / "metrics.jsonl"))


def test_replay_skips_a_shard_reusing_another_shards_id(tmp_path, capsys):
    """A shard holding another's (run_id, shard_id) with other rows (an altered copy) is skipped with
    one line naming both."""
    d = tmp_path / "shards"
    for i, tag in enumerate("ab"):
        write_shard(shard_columns(seed=i, tag=tag), d / S.shard_name(0, "w0", i))
    cols = shard_columns(seed=7, tag="c")
    cols["shard_id"] = ["a0"] * len(cols["shard_id"])
    bad = write_shard(cols, d / S.shard_name(0, "w0", 0).replace(".parquet", "x.parquet"))
    capsys.readouterr()
    train(tiny("trainer.steps=1", *REPLAY), tmp_path / "run", replay=d)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "shard_id" in ln]
    assert lines == [
        f"skipping bad shard {bad}: shard_id 'a0' of run 'run' is also {S.shard_name(0, 'w0', 0)}'s; "
        "a run's shard ids must name one shard"
    ]


def _first_replay_batch(d: Path):
    """Replay batch 0 of directory `d` (2 prompt groups)."""
    state = {"step": 0, "iteration": 0, "ledger": []}
    return next(replay_batches(tiny(*REPLAY), d, state, vocab_size=49152))


def test_replay_names_a_copy_without_hashes_on_one_line(tmp_path, capsys):
    """A copy of a used shard written by another producer (no vespo hashes), under a long path: skipped
    as a duplicate with one warning line (never wrapped) naming it and the shard it copies."""
    d = tmp_path / ("a-long-directory-name-" * 4) / "shards"
    first = write_shard(shard_columns(seed=0, tag="a"), d / S.shard_name(0, "w0", 0))
    write_shard(shard_columns(seed=1, tag="b"), d / S.shard_name(0, "w0", 1))
    copy = d / "zz-foreign.parquet"
    raw_write(pq.read_table(first), copy)
    capsys.readouterr()
    batch = _first_replay_batch(d)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [f"skipping duplicate shard {copy}: the same rows as {first.name}"]
    assert batch.duplicates == [copy.name] and batch.shards == [first.stem]


@pytest.mark.parametrize("name", ["0-collide.parquet", "zz-collide.parquet"])
def test_replay_names_both_shards_of_a_group_collision_in_either_order(tmp_path, capsys, name):
    """A shard reusing shard a's group ids (and its shard id) for other prompts: whichever of the two
    sorts second is skipped with one line naming both shards and the group id, not the shard id."""
    d = tmp_path / "shards"
    a = write_shard(shard_columns(seed=0, tag="a"), d / S.shard_name(0, "w0", 0))
    collide = d / name
    table = _colliding("c", 5, "a")
    raw_write(table.set_column(table.schema.get_field_index("shard_id"), "shard_id", pa.array(["a0"] * 8)), collide)
    capsys.readouterr()
    batch = _first_replay_batch(d)
    taken, skipped = (collide, a) if name < a.name else (a, collide)
    pids = ("cp0", "ap0") if taken == collide else ("ap0", "cp0")
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()] == [
        f"skipping bad shard {skipped}: group_id 'a0-g0' is also in {taken} for another prompt "
        f"(prompt_id {pids[0]!r} vs {pids[1]!r}); group ids must name one prompt"
    ]
    assert batch.quarantined == [skipped.name] and batch.shards == [taken.stem]


def test_replay_trains_on_two_same_named_rollout_runs(tmp_path, capsys):
    """`vespo rollout` in a/roll and b/roll writes alike-named shards with alike shard ids, but the
    runs' ids differ: replaying both trains on every row of both, nothing skipped, and the ledger names
    each shard by its file name."""
    d = tmp_path / "both"
    d.mkdir()
    for parent in ("a", "b"):
        roll = tmp_path / parent / "roll"
        argv = ["rollout", "-p", "tiny", "--num-prompts", "2", "--run-dir", str(roll)]
        result = CliRunner().invoke(app, argv, env=QUIET)
        assert result.exit_code == 0, result.output
        for f in list_shards(roll / "rollouts"):
            shutil.copy(f, d / f"{parent}-{f.name}")
    files = {f.stem: read_shard(f).num_rows for f in list_shards(d)}
    assert len({read_shard(f).column("shard_id")[0].as_py() for f in list_shards(d)}) < len(files)  # ids alike
    capsys.readouterr()
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", *REPLAY), run, replay=d)  # 4 prompt groups, 2 a batch
    assert "skipping" not in capsys.readouterr().err
    ledger = json.loads((run / "checkpoints" / "step-2" / "trainer_state.json").read_text())["ledger"]
    used: dict[str, int] = {}
    for e in ledger:
        used[e["shard"]] = used.get(e["shard"], 0) + e["rows"]
    assert used == files


def test_async_quarantines_a_shard_whose_group_ids_collide_within_a_batch(tmp_path):
    """Two worker shards of one async batch with the same group ids for other prompts: the second is
    quarantined, and the batch's groups are each one prompt's."""
    out = tmp_path / "run" / "rollouts"
    write_shard(shard_columns(rows=4, seed=1, tag="a"), out / S.shard_name(0, "w0", 0))
    write_shard(_colliding("c", 2, "a").slice(0, 4), out / S.shard_name(0, "w1", 0))
    write_shard(shard_columns(rows=4, seed=3, tag="b"), out / S.shard_name(0, "w2", 0))
    state = {"step": 0, "iteration": 0, "dropped": [], "ledger": []}
    cfg = tiny("trainer.staleness=2", "trainer.minibatch_prompts=2")  # 4 prompt groups per batch
    batch = next(async_batches(cfg, tmp_path / "run", state, lambda: False, vocab_size=49152))
    assert batch.shards == [S.shard_name(0, "w0", 0), S.shard_name(0, "w2", 0)]
    assert batch.quarantined == [S.shard_name(0, "w1", 0)]
    assert (out / "quarantine" / S.shard_name(0, "w1", 0)).is_file()


def test_run_json_records_a_run_id_and_the_commit_and_group_ids_use_the_id(tmp_path):
    """Two runs in directories of the same name get different run ids, recorded once in run.json
    (with the git commit the run trained at), and their groups are named by them."""
    import subprocess

    from vespo_cli.runid import code_commit

    ids = []
    for parent in ("a", "b"):
        run = tmp_path / parent / "same"
        train(tiny("trainer.steps=1", "trainer.staleness=1", "trainer.minibatch_prompts=1"), run)
        info = json.loads((run / "run.json").read_text())
        ids.append(info["run_id"])
        groups = {g for f in (run / "rollouts").glob("*.parquet") for g in read_shard(f).column("group_id").to_pylist()}
        assert groups and all(g.startswith(f"{info['run_id']}/") for g in groups)
        assert info["commit"] == code_commit()
    assert len(set(ids)) == 2 and all(len(i) == 16 for i in ids)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(S.__file__).parent)
    assert code_commit() == (head.stdout.strip() if head.returncode == 0 else None)


# --------------------------------------------------------------------------- checkpoints


def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x10
    path.write_bytes(bytes(b))


def _stopped_at_2(tmp_path: Path) -> tuple[Path, Path]:
    """(a 3-step replay reference, the same run stopped after 2 steps with its config asking for 3)."""
    d = tmp_path / "shards"
    for i, tag in enumerate("ab"):
        write_shard(shard_columns(seed=i, tag=tag), d / S.shard_name(0, "w0", i))
    ref = tmp_path / "ref"
    train(tiny("trainer.steps=3", *REPLAY), ref, replay=d)
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", *REPLAY), run, replay=d)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 2\n", "steps: 3\n", 1))
    return ref, run


def _resume_to_ref(run: Path, ref: Path) -> list[str]:
    """`train --resume` (CLI): its warning lines; it must end where `ref` did, bit for bit."""
    result = CliRunner().invoke(app, ["train", "--resume", str(run)], env=QUIET)
    assert result.exit_code == 0, result.output
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(read_jsonl(ref / "metrics.jsonl"))
    assert_same_weights(run / "checkpoints" / "step-3", ref / "checkpoints" / "step-3")
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def test_resume_skips_a_checkpoint_with_a_flipped_byte(tmp_path, monkeypatch):
    """A byte flipped in step-2's model.safetensors: `train --resume` names it in a warning, resumes from
    step-1 and ends exactly where an uninterrupted run ends; run.json records both starts of the trainer."""
    from vespo_cli.bench.machine import cpu_model, hardware
    from vespo_cli.runid import code_commit

    ref, run = _stopped_at_2(tmp_path)
    ckpts = run / "checkpoints"
    assert verify_checkpoint(ckpts / "step-2") is None
    listed = json.loads((ckpts / "step-2" / MANIFEST).read_text())["sha256"]
    assert {"model.safetensors", "optim.pt", "trainer_state.json", "config.json", "vespo.json"} <= set(listed)
    weights = ckpts / "step-2" / "model.safetensors"
    _flip(weights, weights.stat().st_size // 2)
    assert verify_checkpoint(ckpts / "step-2") == "model.safetensors: sha256 differs from manifest.json (corrupt)"
    monkeypatch.chdir(tmp_path)
    assert _resume_to_ref(run, ref) == [
        f"warning: {ckpts / 'step-2'}: model.safetensors: sha256 differs from manifest.json "
        f"(corrupt); resuming from step-1 instead"
    ]
    assert all(verify_checkpoint(p) is None for p in ckpts.glob("step-*"))  # step-2 was written again
    starts = json.loads((run / "run.json").read_text())["starts"]
    assert [(st["step"], st["commit"], st["world_size"], st["cpu"]) for st in starts] == [
        (0, code_commit(), 1, cpu_model()),
        (1, code_commit(), 1, cpu_model()),
    ]
    assert starts[0]["at"] <= starts[1]["at"] and starts[1]["gpus"] == hardware()["gpus"]


def test_resume_passes_a_checkpoint_without_a_manifest(tmp_path, monkeypatch):
    """checkpoints/step-7/ holding only trainer_state.json: `train --resume` names it in one warning
    line and resumes from the last good checkpoint, ending where an uninterrupted run ends."""
    ref, run = _stopped_at_2(tmp_path)
    ckpts = run / "checkpoints"
    (ckpts / "step-7").mkdir()
    (ckpts / "step-7" / "trainer_state.json").write_text(json.dumps({"step": 7, "iteration": 7, "ledger": []}))
    monkeypatch.chdir(tmp_path)
    assert _resume_to_ref(run, ref) == [
        f"warning: {ckpts / 'step-7'}: no manifest.json (an incomplete checkpoint: not trusted); "
        "resuming from step-2 instead"
    ]


def test_checkpoints_without_a_manifest_and_a_missing_file(tmp_path):
    d = tmp_path / "shards"
    write_shard(shard_columns(seed=1), d / S.shard_name(0, "w0", 0))
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", *REPLAY), run, replay=d)
    ckpts = run / "checkpoints"
    (ckpts / "step-2" / MANIFEST).unlink()  # not trusted: named, and the last good one used
    warned: list[str] = []
    assert latest_checkpoint(run, warn=warned.append) == ckpts / "step-1"
    assert warned == [
        f"{ckpts / 'step-2'}: no manifest.json (an incomplete checkpoint: not trusted); resuming from step-1 instead"
    ]
    (ckpts / "step-1" / "model.safetensors").unlink()
    assert verify_checkpoint(ckpts / "step-1") == "model.safetensors: missing"
    with pytest.raises(UserError) as e:
        latest_checkpoint(run)
    assert str(e.value) == (
        f"{ckpts / 'step-2'}: no manifest.json (an incomplete checkpoint: not trusted); no checkpoint of the run "
        f"passes verification (move the corrupt ones away to start over)"
    )
    shutil.rmtree(ckpts / "step-2")
    (ckpts / "step-1" / MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="manifest.json: unreadable"):
        latest_checkpoint(run)


def test_fresh_runs_seed_python_and_numpy_from_the_run_seed(tmp_path):
    """optim.pt saves Python's and NumPy's RNG states; they are seeded from trainer.seed, so two fresh
    runs of one seed save the same states (whatever this process drew before) and another seed others."""
    import random

    import numpy as np
    import torch

    d = tmp_path / "shards"
    write_shard(shard_columns(seed=1), d / S.shard_name(0, "w0", 0))
    states = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        random.random(), np.random.random()  # noqa: B018 - the process's streams move between runs
        train(tiny("trainer.steps=1", f"trainer.seed={seed}", *REPLAY), tmp_path / name, replay=d)
        rng = torch.load(tmp_path / name / "checkpoints" / "step-1" / "optim.pt", weights_only=True)["rng"]
        states.append((rng["python"], rng["numpy"]))
    assert states[0] == states[1] and states[0][0] != states[2][0] and states[0][1] != states[2][1]
