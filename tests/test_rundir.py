"""rundir: the run directory's paths are built and parsed in one place."""

from pathlib import Path

from vespo_cli import rundir
from vespo_cli.rundir import RunDir, ShardName, checkpoint_of, parse_shard_name, parse_step, shard_name, step_dirs


def test_layout_paths():
    r = RunDir("runs/x")
    assert r.root == Path("runs/x")
    assert (r.config, r.info, r.metrics) == (
        Path("runs/x/config.yaml"),
        Path("runs/x/run.json"),
        Path("runs/x/metrics.jsonl"),
    )
    assert r.rollouts == Path("runs/x/rollouts")
    assert r.checkpoint(12) == Path("runs/x/checkpoints/step-12")
    assert r.published_step(3) == Path("runs/x/published/step-3")
    assert r.latest == Path("runs/x/published/LATEST")
    assert r.eval_dir(4) == Path("runs/x/eval/step-4")
    assert r.worker_log(rundir.worker_name(1)) == Path("runs/x/logs/worker-w1.log")
    assert (r.done, r.lock) == (Path("runs/x/DONE"), Path("runs/x/.vespo.lock"))
    assert r.checkpoint(5) / rundir.TRAINER_STATE == Path("runs/x/checkpoints/step-5/trainer_state.json")
    assert r.inputs == Path("runs/x/inputs.json")
    assert rundir.rollout_inputs(r.rollouts) == Path("runs/x/rollouts/rollout-inputs.json")
    assert rundir.quarantine(r.rollouts) == Path("runs/x/rollouts/quarantine")
    ckpt = r.checkpoint(5)
    assert [ckpt / f for f in (rundir.OPTIM_STATE, rundir.OPTIM_DCP, rundir.MANIFEST)] == [
        Path("runs/x/checkpoints/step-5/optim.pt"),
        Path("runs/x/checkpoints/step-5/optim.dcp"),
        Path("runs/x/checkpoints/step-5/manifest.json"),
    ]
    assert rundir.default_dir("a-b") == Path("runs/a-b")


def test_step_names_round_trip():
    assert parse_step(rundir.step_name(32)) == 32
    for bad in ("step-", "step-1a", ".step-3.tmp", "step-3.old", "steps-3", "3"):
        assert parse_step(bad) is None, bad


def test_shard_names_round_trip():
    name = shard_name(7, "w1", 42)
    assert name == "v000007-w1-000042.parquet"
    assert parse_shard_name(name) == ShardName(7, "w1", 42)
    assert parse_shard_name(shard_name(0, "fresh-a", 3)) == ShardName(0, "fresh-a", 3)  # a dash in the worker
    assert parse_shard_name("other.parquet") is None
    assert sorted([shard_name(10, "w0", 0), shard_name(9, "w1", 5)]) == [
        shard_name(9, "w1", 5),
        shard_name(10, "w0", 0),
    ]
    assert rundir.shard_id(Path("d") / name) == "v000007-w1-000042"


def test_checkpoint_of():
    run, step = checkpoint_of("runs/x/checkpoints/step-8")
    assert (run, step) == (RunDir("runs/x"), 8)
    assert checkpoint_of("runs/x/published/step-8") is None
    assert checkpoint_of("runs/x/checkpoints/latest") is None
    assert checkpoint_of("HuggingFaceTB/SmolLM2-135M") is None


def test_disk_reads(tmp_path):
    r = RunDir(tmp_path)
    assert not r.is_run() and not r.has_started() and r.latest_published() is None and r.checkpoint_steps() == []
    for k in (10, 2):
        r.checkpoint(k).mkdir(parents=True)
    (r.checkpoints / ".step-11.abc.tmp").mkdir()
    assert [k for k, _ in r.checkpoint_steps()] == [2, 10]  # numeric order, temporaries skipped
    assert r.has_started()
    assert step_dirs(tmp_path / "missing") == []
    r.latest.parent.mkdir()
    r.latest.write_text("step-3\n")
    assert r.latest_published() is None  # pointer to weights not there (yet)
    r.published_step(3).mkdir()
    assert r.latest_published() == r.published_step(3)
    r.config.write_text("{}\n")
    assert r.is_run()
