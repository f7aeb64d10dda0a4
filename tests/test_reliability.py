"""Reliability (issue 6), with real processes and files on the `tiny` preset:

1. crash safety: `vespo train` / `vespo rollout` SIGKILLed several times in a row (during rollout,
   an optimizer step, a checkpoint write, exactly at a checkpoint boundary) and resumed: the same
   metrics and weights as an uninterrupted run, every shard row consumed exactly once, no torn shard;
2. bad shard files: one-line errors naming the file; replay skips them, async quarantines them;
3. bad config / CLI input: one line on stderr, exit 2, no traceback, nothing written;
4. numerics: extreme log W, empty responses, equal rewards, loss spikes, a non-finite gradient;
5. hostile model output for math-verify: bounded time, reward 0;
6. security: safe YAML, weights_only checkpoints, no shell, trust_remote_code only when asked.

Figures for reports/reliability.md: the tests add what they tried to COUNTS; with
VESPO_RELIABILITY_JSON=path they are written there as JSON when the module finishes.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import itertools
import json
import math
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import make_shard_rows, redraw_rewards
from typer.testing import CliRunner

from vespo_cli import shards as S
from vespo_cli.cli import app
from vespo_cli.config import load_config
from vespo_cli.errors import UserError
from vespo_cli.fsio import read_jsonl
from vespo_cli.lock import LOCK_NAME
from vespo_cli.shards import ShardError, list_shards, read_shard, to_table, write_shard
from vespo_cli.train.checkpoint import write_manifest
from vespo_cli.train.loop import train

VOLATILE = {"time", "rollout_s", "rollout_s_max", "logprob_s", "train_s", "tokens_per_s", "sync_s"}  # + time_*
PACKAGE = Path(__file__).resolve().parents[1] / "vespo_cli"
KILL_SEED = int(os.environ.get("VESPO_KILL_SEED", "6"))
COUNTS: dict = {
    "kills": [],
    "bad_inputs": [],
    "rows_expected": 0,
    "rows_consumed": 0,
    "rows_lost": 0,
    "rows_duplicated": 0,
    "rollout_prompts_expected": 0,
    "rollout_prompts_found": 0,
}


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    out = os.environ.get("VESPO_RELIABILITY_JSON")
    if out:
        Path(out).write_text(json.dumps(COUNTS, indent=1, sort_keys=True) + "\n")


def tiny(*overrides: str, algo: str | None = None):
    return load_config("tiny", algo, list(overrides))


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("time_")} for r in records]


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# =========================================================================== 1. crash safety
#
# Each chain: start the run, SIGKILL it when a file-system condition holds (+ a seeded random delay),
# resume with `vespo train --resume RUN`, kill again at another kind of point, ..., then let the last
# resume finish and compare with an uninterrupted run of the same config (made in-process).


def vespo_cmd(*args) -> list[str]:
    script = Path(sys.executable).with_name("vespo")
    return ([str(script)] if script.exists() else [sys.executable, "-m", "vespo_cli.cli"]) + [str(a) for a in args]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "VESPO_PRESETS")}
    env.update(NO_COLOR="1", COLUMNS="200", OMP_NUM_THREADS="1")  # 2 shared cores: no thread oversubscription
    return env


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _reap(proc: subprocess.Popen) -> None:
    """Kill what is left of the process group we started (the reward-scorer helpers), then reap."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def kill_when(
    args: list, cwd: Path, log: Path, condition, delay: float, timeout: float = 300.0, reap: bool = True
) -> subprocess.Popen:
    """Run `vespo *args`; once `condition()` holds wait `delay` s, then SIGKILL the process (only it:
    what it started is left to fend for itself, then killed with its process group if `reap`)."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            vespo_cmd(*args), cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not condition():
            assert time.monotonic() < deadline, f"kill point never reached; log:\n{_tail(log)}"
            time.sleep(0.002)
        assert proc.poll() is None, f"exited ({proc.returncode}) before the kill point; log:\n{_tail(log)}"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, f"finished before the kill; log:\n{_tail(log)}"
    except BaseException:
        _reap(proc)
        raise
    if reap:
        _reap(proc)
    return proc


def run_to_end(args: list, cwd: Path, log: Path, timeout: float = 300.0) -> None:
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            vespo_cmd(*args), cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        assert proc.wait(timeout=timeout) == 0, _tail(log)
    finally:
        _reap(proc)


def ckpt_steps(run: Path) -> list[int]:
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name)))


def tmp_ckpts(run: Path) -> set[str]:
    root = run / "checkpoints"
    return {p.name for p in root.iterdir() if p.name.startswith(".step-")} if root.is_dir() else set()


def metric_lines(run: Path) -> int:
    p = run / "metrics.jsonl"
    return p.read_bytes().count(b"\n") if p.exists() else 0


def assert_consistent(run: Path) -> list[int]:
    """What a killed run leaves behind: only complete shards and checkpoints, metrics 1..k."""
    for p in list_shards(run / "rollouts"):
        read_shard(p)  # a torn shard would raise ShardError here
    for k in ckpt_steps(run):
        ck = run / "checkpoints" / f"step-{k}"
        assert json.loads((ck / "trainer_state.json").read_text())["step"] == k
        assert tensors(ck)
        blob = torch.load(ck / "optim.pt", weights_only=True, map_location="cpu")
        assert {"optimizer", "rng", "scheduler"} <= blob.keys()
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "train"]
    assert steps == list(range(1, len(steps) + 1)), steps
    return steps


def assert_ledger_exact(run: Path, steps: int, shard_dir: Path, iterations: int) -> None:
    """The consumed-shard ledger of the final checkpoint: every row of every good shard once."""
    state = json.loads((run / "checkpoints" / f"step-{steps}" / "trainer_state.json").read_text())
    assert state["step"] == steps and state["iteration"] == iterations
    ledger = state["ledger"]
    assert sorted(e["iteration"] for e in ledger) == sorted(
        {e["iteration"] for e in ledger}
    )  # one shard per batch here
    assert sorted(e["iteration"] for e in ledger) == list(range(iterations))
    used: dict[str, int] = {}
    for e in ledger:
        used[Path(e["shard"]).stem] = used.get(Path(e["shard"]).stem, 0) + e["rows"]
    good = {}
    for p in list_shards(shard_dir):
        with contextlib.suppress(ShardError):
            good[p.stem] = read_shard(p).num_rows
    assert used == good, (used, good)
    expected, consumed = sum(good.values()), sum(used.values())
    COUNTS["rows_expected"] += expected
    COUNTS["rows_consumed"] += consumed
    COUNTS["rows_lost"] += sum(max(0, n - used.get(s, 0)) for s, n in good.items())
    COUNTS["rows_duplicated"] += sum(max(0, u - good.get(s, 0)) for s, u in used.items())


def kill_chain(
    name: str, args: list, run: Path, cwd: Path, plan: list[tuple[str, object, tuple[float, float]]], rng: random.Random
) -> None:
    """SIGKILL the run at each point of `plan` (resuming in between), then let it finish."""
    log = cwd / f"{name}.log"
    for i, (phase, make_condition, (lo, hi)) in enumerate(plan):
        condition = make_condition(run)  # built now: sees the state at the start of this process
        delay = rng.uniform(lo, hi)
        kill_when(args if i == 0 else ["train", "--resume", run], cwd, log, condition, delay)
        steps = assert_consistent(run)
        COUNTS["kills"].append(
            {
                "chain": name,
                "phase": phase,
                "delay_s": round(delay, 3),
                "metrics_lines": len(steps),
                "checkpoints": ckpt_steps(run),
                "complete_shards": len(list_shards(run / "rollouts")),
                "checkpoint_tmp_left": sorted(tmp_ckpts(run)),
            }
        )
    run_to_end(["train", "--resume", run], cwd, log)


def after_checkpoint(step: int):
    return lambda run: lambda: step in ckpt_steps(run)


def during_checkpoint_write(run: Path):
    before = tmp_ckpts(run)
    return lambda: bool(tmp_ckpts(run) - before)


def at_next_checkpoint(run: Path):
    before = max(ckpt_steps(run), default=0)
    return lambda: max(ckpt_steps(run), default=0) > before


def after_metric_lines(k: int):
    return lambda run: lambda: metric_lines(run) >= k


SYNC = ["trainer.steps=8", "trainer.save_every=2"]  # tiny: mbs 2, N 2 → 4 rollout batches, 4 checkpoints


@pytest.fixture(scope="module")
def sync_ref(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sync-ref") / "run"
    train(tiny(*SYNC), run)
    return run


@pytest.fixture(scope="module")
def replay_shards(tmp_path_factory, sync_ref) -> Path:
    """The reference run's shards (one per rollout batch) with re-drawn random rewards, so gradients
    are non-zero (the random model never answers right), plus one truncated shard to be skipped."""
    out = redraw_rewards(sync_ref / "rollouts", tmp_path_factory.mktemp("replay-shards"))
    data = list_shards(out)[-1].read_bytes()
    (out / "v000001-torn-000000.parquet").write_bytes(data[: len(data) // 2])
    return out


@pytest.mark.slow
def test_sync_train_survives_repeated_sigkill(tmp_path, sync_ref):
    """Killed while sampling a rollout batch, then exactly at a checkpoint boundary (where a resume
    that trains 0 steps would go unnoticed without the step count and the final-weights check)."""
    rng = random.Random(KILL_SEED)
    run = tmp_path / "run"
    plan = [
        ("sync: rollout of batch 2", after_checkpoint(2), (0.0, 0.4)),
        ("sync: checkpoint boundary", at_next_checkpoint, (0.0, 0.0)),
    ]
    kill_chain(
        "sync",
        ["train", "--preset", "tiny", "--run-dir", run, *sum((["--set", s] for s in SYNC), [])],
        run,
        tmp_path,
        plan,
        rng,
    )
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(read_jsonl(sync_ref / "metrics.jsonl"))
    assert_same_weights(run / "checkpoints" / "step-8", sync_ref / "checkpoints" / "step-8")
    assert_ledger_exact(run, 8, run / "rollouts", iterations=4)
    assert [p.name for p in list_shards(run / "rollouts")] == [p.name for p in list_shards(sync_ref / "rollouts")]
    assert not tmp_ckpts(run), "stale checkpoint temporaries left behind"


@pytest.mark.slow
def test_replay_train_survives_repeated_sigkill(tmp_path, replay_shards):
    """Replay with random rewards (real gradients): killed mid optimizer step, mid checkpoint write and
    at a checkpoint boundary; weights and metrics equal the uninterrupted run bit for bit."""
    ref = tmp_path / "ref"
    train(tiny(*SYNC), ref, replay=replay_shards)
    ref_metrics = read_jsonl(ref / "metrics.jsonl")
    assert all(m["grad_norm"] > 0 for m in ref_metrics)  # the weights comparison means something
    assert ref_metrics[0]["shards_quarantined"] == 1 and sum(m["shards_quarantined"] for m in ref_metrics) == 1
    rng = random.Random(KILL_SEED + 1)
    run = tmp_path / "run"
    plan = [
        ("replay: optimizer step 4", after_metric_lines(3), (0.0, 0.3)),
        ("replay: checkpoint write", during_checkpoint_write, (0.0, 0.05)),
        ("replay: checkpoint boundary", at_next_checkpoint, (0.0, 0.0)),
    ]
    args = [
        "train",
        "--preset",
        "tiny",
        "--run-dir",
        run,
        "--replay",
        replay_shards,
        *sum((["--set", s] for s in SYNC), []),
    ]
    kill_chain("replay", args, run, tmp_path, plan, rng)
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(ref_metrics)
    assert_same_weights(run / "checkpoints" / "step-8", ref / "checkpoints" / "step-8")
    assert_ledger_exact(run, 8, replay_shards, iterations=4)
    assert not tmp_ckpts(run), "stale checkpoint temporaries left behind"


@pytest.mark.slow
def test_rollout_survives_sigkill_without_torn_or_duplicate_shards(tmp_path):
    """`vespo rollout` killed twice (mid sampling, as a shard appears): complete shards only; the
    resumed run samples each asked prompt exactly once, n times."""
    rng = random.Random(KILL_SEED + 2)
    run = tmp_path / "run"
    out = run / "rollouts"
    num_prompts, n, per_shard = 8, 4, 2
    args = [
        "rollout",
        "--preset",
        "tiny",
        "--num-prompts",
        num_prompts,
        "--run-dir",
        run,
        "--set",
        f"trainer.minibatch_prompts={per_shard}",
    ]
    log = tmp_path / "rollout.log"

    def shards_or_tmp(k: int):
        def cond():
            names = [p.name for p in out.iterdir()] if out.is_dir() else []
            return (
                any(x.startswith(".") and x.endswith(".tmp") for x in names)
                or sum(x.endswith(".parquet") and not x.startswith(".") for x in names) >= k
            )

        return cond

    for phase, (lo, hi) in (("rollout: sampling", (0.0, 0.5)), ("rollout: shard write", (0.0, 0.0))):
        delay = rng.uniform(lo, hi)
        kill_when(args, tmp_path, log, shards_or_tmp(len(list_shards(out)) + 1 if out.is_dir() else 1), delay)
        done = list_shards(out)
        assert len(done) < num_prompts // per_shard
        for p in done:
            read_shard(p)
        COUNTS["kills"].append(
            {
                "chain": "rollout",
                "phase": phase,
                "delay_s": round(delay, 3),
                "complete_shards": len(done),
                "tmp_left": sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")),
            }
        )
    run_to_end(args, tmp_path, log)
    tables = [read_shard(p) for p in list_shards(out)]
    assert len(tables) == num_prompts // per_shard
    rows = pa.concat_tables(tables)
    prompt_ids = rows.column("prompt_id").to_pylist()
    assert rows.num_rows == num_prompts * n
    assert len(set(prompt_ids)) == num_prompts
    owner: dict[str, set] = {}
    for t in tables:
        for pid in t.column("prompt_id").to_pylist():
            owner.setdefault(pid, set()).add(t.column("shard_id")[0].as_py())
    assert all(len(s) == 1 for s in owner.values())  # no prompt sampled in two shards
    assert sorted(zip(prompt_ids, rows.column("sample_idx").to_pylist())) == sorted(
        (p, i) for p in set(prompt_ids) for i in range(n)
    )
    COUNTS["rollout_prompts_expected"] += num_prompts
    COUNTS["rollout_prompts_found"] += len(set(prompt_ids))


# =========================================================================== 2. bad shard files

QUIET = {"COLUMNS": "1000", "NO_COLOR": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}


def shard_columns(rows: int = 8, version: int = 0, seed: int = 0, tag: str = "s") -> dict:
    """A valid shard (conftest.make_shard_rows): groups of 2 samples, random 0/1 rewards, random short responses."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 6, rows).tolist()
    return make_shard_rows(
        rows,
        version,
        tag=tag,
        prompt_id=[f"{tag}p{i // 2}" for i in range(rows)],
        reward=rng.integers(0, 2, rows).astype(float).tolist(),
        response_token_ids=[rng.integers(5, 200, n).tolist() for n in lens],
        rollout_logprobs=[(-rng.uniform(0.1, 3.0, n)).tolist() for n in lens],
    )


def raw_write(table: pa.Table, path: Path, version: bytes | None = b"1") -> None:
    """Write parquet as-is, bypassing vespo's validation (as a buggy or foreign producer would)."""
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))
    pq.write_table(table.replace_schema_metadata({S.SCHEMA_KEY: version} if version else None), path)


def _bad_truncated(path: Path) -> None:
    write_shard(shard_columns(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _bad_missing_column(path: Path) -> None:
    raw_write(to_table(shard_columns()).drop_columns(["reward"]), path)


def _bad_wrong_type(path: Path) -> None:
    t = to_table(shard_columns())
    i = t.schema.get_field_index("reward")
    raw_write(t.set_column(i, "reward", pa.array(["high"] * t.num_rows)), path)


def _bad_list_lengths(path: Path) -> None:
    cols = shard_columns()
    cols["rollout_logprobs"] = [lp[:-1] if i == 3 else lp for i, lp in enumerate(cols["rollout_logprobs"])]
    raw_write(pa.table({k: pa.array(v, S.SCHEMA.field(k).type) for k, v in cols.items()}), path)


def _bad_logprob(value: float):
    def write(path: Path) -> None:
        cols = shard_columns()
        cols["rollout_logprobs"] = [[value] + lp[1:] for lp in cols["rollout_logprobs"]]
        raw_write(pa.table({k: pa.array(v, S.SCHEMA.field(k).type) for k, v in cols.items()}), path)

    return write


def _bad_empty(path: Path) -> None:
    raw_write(to_table(shard_columns()).slice(0, 0), path)


def _bad_future_version(path: Path) -> None:
    raw_write(to_table(shard_columns()), path, version=str(S.SCHEMA_VERSION + 1).encode())


def _bad_foreign(path: Path) -> None:
    raw_write(to_table(shard_columns()), path, version=None)


def _bad_garbage(path: Path) -> None:
    path.write_bytes(b"PAR1" + os.urandom(64))


BAD_SHARDS = {  # name → (writer, fragment the one-line error must contain)
    "truncated parquet": (_bad_truncated, "not a readable parquet file"),
    "garbage bytes": (_bad_garbage, "not a readable parquet file"),
    "missing column": (_bad_missing_column, "missing column reward"),
    "wrong column type": (_bad_wrong_type, "wrong column types"),
    "wrong list lengths": (_bad_list_lengths, "row 3: "),
    "NaN logprobs": (_bad_logprob(math.nan), "rollout_logprobs contain NaN values"),
    "inf logprobs": (_bad_logprob(-math.inf), "rollout_logprobs contain infinite values"),
    "empty shard": (_bad_empty, "empty shard (0 rows)"),
    "future schema version": (_bad_future_version, "newer vespo (schema version 2 > 1)"),
    "not a vespo shard": (_bad_foreign, "not a vespo shard"),
}


def write_bad_shards(directory: Path, version: int = 0) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (name, (writer, _)) in enumerate(BAD_SHARDS.items()):
        path = directory / S.shard_name(version, f"bad{i}", 0)
        writer(path)
        out[name] = path
    return out


@pytest.mark.parametrize("kind", list(BAD_SHARDS))
def test_bad_shard_read_is_one_line_naming_file_and_problem(tmp_path, kind):
    writer, fragment = BAD_SHARDS[kind]
    path = tmp_path / "v000000-w0-000000.parquet"
    writer(path)
    with pytest.raises(ShardError) as e:
        read_shard(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and fragment in msg, msg
    COUNTS["bad_inputs"].append(f"shard read: {kind}")


def test_inspect_names_every_bad_shard_and_goes_on(tmp_path):
    d = tmp_path / "rollouts"
    write_shard(shard_columns(seed=1), d / S.shard_name(1, "w0", 0))
    bad = write_bad_shards(d)
    result = CliRunner().invoke(app, ["inspect", str(d)], env=QUIET)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == len(bad) and "Traceback" not in result.output
    for name, path in bad.items():
        hits = [line for line in lines if line.startswith(f"bad shard: {path}: ")]
        assert len(hits) == 1 and BAD_SHARDS[name][1] in hits[0], (name, lines)
        COUNTS["bad_inputs"].append(f"vespo inspect: {name}")
    assert "rows" in result.stdout and " 8" in result.stdout  # the good shard is still summarised


def test_replay_skips_bad_shards_and_counts_them(tmp_path):
    d = tmp_path / "shards"
    write_shard(shard_columns(seed=1, tag="a"), d / S.shard_name(0, "w0", 0))
    write_shard(shard_columns(seed=2, tag="b"), d / S.shard_name(0, "w0", 1))
    bad = write_bad_shards(d)
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", "trainer.staleness=2", "trainer.minibatch_prompts=2"), run, replay=d)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[0]["shards_quarantined"] == len(bad) and metrics[1]["shards_quarantined"] == 0
    assert all(np.isfinite(m["loss"]) for m in metrics)
    assert sorted(p.name for p in d.iterdir()) == sorted(
        [p.name for p in bad.values()] + [S.shard_name(0, "w0", 0), S.shard_name(0, "w0", 1)]
    )
    COUNTS["bad_inputs"] += [f"train --replay: {name}" for name in bad]


def test_replay_of_only_bad_shards_is_a_user_error(tmp_path):
    d = tmp_path / "shards"
    write_bad_shards(d)
    with pytest.raises(UserError, match="every shard is invalid"):
        train(tiny("trainer.steps=1"), tmp_path / "run", replay=d)
    COUNTS["bad_inputs"].append("train --replay: a directory of only bad shards")


def follow_workers(run: Path) -> list[int]:
    """PIDs of live `vespo rollout --follow RUN` processes (the async workers of our run)."""
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (p / "cmdline").read_bytes().split(b"\0")
                if b"--follow" in argv and str(run).encode() in argv:
                    pids.append(int(p.name))
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find worker processes")
def test_async_train_survives_sigkill_and_quarantines_bad_shards(tmp_path):
    """`vespo train --async` with bad shards planted in rollouts/: they are moved to rollouts/quarantine/
    and counted; the trainer is SIGKILLed after its first checkpoint, its orphaned rollout worker stops
    by itself, the resume finishes with every consumed shard in the ledger exactly once."""
    run = tmp_path / "run"
    bad = write_bad_shards(run / "rollouts")
    args = [
        "train",
        "--preset",
        "tiny",
        "--async",
        "--run-dir",
        run,
        "--set",
        "trainer.steps=4",
        "--set",
        "trainer.max_staleness=8",
    ]
    log = tmp_path / "async.log"
    delay = random.Random(KILL_SEED + 3).uniform(0.0, 0.3)
    proc = kill_when(args, tmp_path, log, after_checkpoint(2)(run), delay, reap=False)
    try:
        deadline = time.monotonic() + 90
        while follow_workers(run) and time.monotonic() < deadline:
            time.sleep(0.2)
        orphans = follow_workers(run)
    finally:
        _reap(proc)
    assert not orphans, "the async worker kept sampling after its trainer was killed"
    steps = assert_consistent(run)
    COUNTS["kills"].append(
        {
            "chain": "async",
            "phase": "async: after checkpoint 2",
            "delay_s": round(delay, 3),
            "metrics_lines": len(steps),
            "checkpoints": ckpt_steps(run),
            "orphaned_workers_left": len(orphans),
        }
    )
    run_to_end(["train", "--resume", run], tmp_path, log)
    assert not follow_workers(run)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert sum(m["shards_quarantined"] for m in metrics) == len(bad)
    quarantine = run / "rollouts" / "quarantine"
    assert sorted(p.name for p in quarantine.iterdir()) == sorted(p.name for p in bad.values())
    shards = {p.name: read_shard(p).num_rows for p in list_shards(run / "rollouts")}  # none torn
    assert not set(shards) & {p.name for p in bad.values()}
    state = json.loads((run / "checkpoints" / "step-4" / "trainer_state.json").read_text())
    used = [e["shard"] for e in state["ledger"]]
    assert used and len(used) == len(set(used)) and not set(used) & set(state["dropped"])
    assert all(e["rows"] == shards[e["shard"]] for e in state["ledger"])  # whole shards, every row once
    COUNTS["rows_expected"] += sum(shards[u] for u in used)
    COUNTS["rows_consumed"] += sum(e["rows"] for e in state["ledger"])
    COUNTS["bad_inputs"] += [f"train --async: {name}" for name in bad]


# =========================================================================== 3. bad config / CLI input

MALICIOUS_YAML = 'extends: tiny\ndescription: !!python/object/apply:os.system ["touch PWNED"]\n'

CLI_ERRORS = [  # (label, args, files to create first, fragment of the one-line error)
    ("unknown preset", ["train", "-p", "no-such-preset"], {}, "no-such-preset: unknown preset"),
    ("unknown key", ["train", "-p", "tiny", "--set", "trainer.nope=1"], {}, "trainer.nope: unknown key"),
    ("unknown section", ["train", "-p", "tiny", "--set", "nope.x=1"], {}, "nope: unknown key"),
    ("wrong type", ["train", "-p", "tiny", "--set", "trainer.steps=many"], {}, "trainer.steps: expected an integer"),
    ("wrong type (list)", ["train", "-p", "tiny", "--set", "trainer.betas=0.9"], {}, "trainer.betas: expected a list"),
    (
        "negative size",
        ["train", "-p", "tiny", "--set", "trainer.minibatch_prompts=-2"],
        {},
        "trainer.minibatch_prompts: expected an integer in [1, 1048576], got -2",
    ),
    (
        "zero size",
        ["train", "-p", "tiny", "--set", "rollout.n=0"],
        {},
        "rollout.n: expected an integer in [1, 1024], got 0",
    ),
    (
        "zero steps",
        ["train", "-p", "tiny", "--set", "trainer.steps=0"],
        {},
        "trainer.steps: expected an integer in [1, ",
    ),
    (
        "negative lr",
        ["train", "-p", "tiny", "--set", "trainer.lr=-1e-3"],
        {},
        "trainer.lr: expected a float in (0, 1], got -0.001",
    ),
    (
        "gbs not divisible by mbs",
        ["train", "-p", "tiny", "--set", "trainer.rollout_batch_prompts=5"],
        {},
        "5 is not divisible by trainer.minibatch_prompts=2",
    ),
    (
        "unknown objective",
        ["train", "-p", "tiny", "--set", "algorithm.objective=magic"],
        {},
        "unknown objective 'magic'",
    ),
    ("unknown algorithm preset", ["train", "-p", "tiny", "--algo", "magic"], {}, "magic: unknown algorithm preset"),
    (
        "missing dataset",
        ["train", "-p", "tiny", "--set", "data.train=missing.jsonl"],
        {},
        "missing.jsonl: file not found",
    ),
    ("missing model path", ["train", "-p", "tiny", "--set", "model.path=./no/such/model"], {}, "not found"),
    (
        "--replay of a missing dir",
        ["train", "-p", "tiny", "--replay", "no-such-dir"],
        {},
        "--replay no-such-dir: no such directory",
    ),
    ("--resume of a missing dir", ["train", "--resume", "no-such-run"], {}, "no-such-run: not a vespo run directory"),
    (
        "rollout: missing dataset",
        ["rollout", "-p", "tiny", "--prompts", "missing.jsonl"],
        {},
        "missing.jsonl: file not found",
    ),
    (
        "rollout: zero prompts",
        ["rollout", "-p", "tiny", "--num-prompts", "0"],
        {},
        "--num-prompts 0: expected a positive integer",
    ),
    ("preset file: invalid YAML", ["train", "-p", "bad.yaml"], {"bad.yaml": "trainer: [1, 2\n"}, "bad.yaml: line"),
    ("preset file: not a mapping", ["train", "-p", "list.yaml"], {"list.yaml": "- 1\n- 2\n"}, "expected a mapping"),
    ("preset file: python object tag", ["train", "-p", "evil.yaml"], {"evil.yaml": MALICIOUS_YAML}, "evil.yaml: line"),
    (
        "--set: python object tag",
        ["train", "-p", "tiny", "--set", 'trainer.lr=!!python/object/apply:os.system ["touch PWNED"]'],
        {},
        "trainer.lr: expected a float",
    ),
    ("inspect: missing dir", ["inspect", "no-such-dir"], {}, "no-such-dir: no such shard file or directory"),
]


@pytest.mark.parametrize("label, args, files, fragment", CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, label, args, files, fragment):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = CliRunner().invoke(app, args, env=QUIET)
    assert result.exit_code == 2, (result.output, result.exception)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # nothing written, nothing executed
    COUNTS["bad_inputs"].append(f"CLI: {label}")


def _tree(root: Path) -> dict:
    """Every file's bytes and mtime, but the writer lock's (it names the last holder, not run data)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
        if p.name != LOCK_NAME
    }


def test_bad_resume_input_leaves_the_run_untouched(tmp_path, monkeypatch):
    """A bad --set on --resume, and a config.yaml carrying a python tag: exit 2, the run dir unchanged."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    from vespo_cli.config import save_config

    save_config(tiny(), run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _tree(run)
    for label, args in (
        ("--resume with a wrong type", ["train", "--resume", "run", "--set", "trainer.steps=x"]),
        ("--resume with --preset", ["train", "--resume", "run", "-p", "tiny"]),
    ):
        result = CliRunner().invoke(app, args, env=QUIET)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert _tree(run) == before
        COUNTS["bad_inputs"].append(f"CLI: {label}")
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text() + 'evil: !!python/object/apply:os.system ["touch PWNED"]\n')
    before = _tree(run)
    result = CliRunner().invoke(app, ["train", "--resume", "run"], env=QUIET)
    assert result.exit_code == 2 and "config.yaml" in result.stderr, result.output
    assert _tree(run) == before and not (tmp_path / "PWNED").exists() and not (run / "PWNED").exists()
    COUNTS["bad_inputs"].append("CLI: run config.yaml with a python object tag")


def test_bad_input_in_a_real_process(tmp_path):
    """The same contract through the installed script: a YAML payload is rejected and never runs."""
    (tmp_path / "evil.yaml").write_text(MALICIOUS_YAML)
    env = {**_env(), "COLUMNS": "1000"}
    p = subprocess.run(
        vespo_cmd("train", "-p", "evil.yaml"), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: evil.yaml: line") and "Traceback" not in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["evil.yaml"]  # no PWNED, no runs/
    COUNTS["bad_inputs"].append("CLI subprocess: preset with a python object tag")


# =========================================================================== 4. numerics


@pytest.fixture(scope="module")
def tiny_model():
    from vespo_cli.models import load_model, resolve_model

    return load_model(resolve_model("tiny"))


def _rows(lens: list[int], rewards: list[float], group: int = 2):
    from vespo_cli.train.batch import rows_from_table

    rng = np.random.default_rng(0)
    n = len(lens)
    cols = shard_columns(n)
    cols["response_token_ids"] = [rng.integers(5, 200, k).tolist() for k in lens]
    cols["rollout_logprobs"] = [[-1.0] * k for k in lens]
    cols["reward"] = rewards
    cols["correct"] = [r > 0 for r in rewards]
    cols["group_id"] = [f"g{i // group}" for i in range(n)]
    return rows_from_table(to_table(cols))


def _opt(model, cfg):
    from vespo_cli.train.step import make_optimizer

    opt = make_optimizer(model, cfg)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _step(model, rows, cfg, advantages=None, shift: float = 0.0, opt=None):
    from vespo_cli.objectives import group_advantages
    from vespo_cli.train.step import old_logprobs, optimizer_step

    opt, sched = opt or _opt(model, cfg)
    adv = group_advantages(rows.rewards, rows.group_ids).float() if advantages is None else advantages
    old = [lp + shift for lp in old_logprobs(model, rows, cfg)]
    return optimizer_step(model, opt, sched, rows, list(range(len(rows))), adv, old, cfg), opt


def _objectives() -> list[str]:
    from vespo_cli.objectives import OBJECTIVES

    return sorted(OBJECTIVES)


@pytest.mark.parametrize("objective", _objectives())
@pytest.mark.parametrize("log_w", [1e4, -1e4, "mixed"])
@pytest.mark.parametrize("correction", [None, "tis"])
def test_extreme_log_w_gives_finite_loss_and_gradient(objective, log_w, correction):
    from vespo_cli.objectives import policy_loss

    g = torch.Generator().manual_seed(0)
    base = -torch.rand(4, 6, generator=g) * 3
    shift = torch.tensor([1e4, -1e4, 1e4, -1e4]).unsqueeze(1) if log_w == "mixed" else torch.full((4, 1), log_w)
    logp = (base - 1e4 * (shift < 0)).requires_grad_()  # log-probs stay <= 0: the small side is -1e4
    old = base - 1e4 * (shift > 0)  # log W = logp - old = ±1e4
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 4:] = False
    adv = torch.tensor([1.0, -1.0, 2.0, -0.5])
    loss, metrics = policy_loss(objective, logp, old, adv, mask, rollout_logp=old.flip(0), correction=correction)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all(), (loss, logp.grad)
    assert all(math.isfinite(v) for v in metrics.values()), metrics


@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_extreme_log_w_optimizer_step_is_finite(tiny_model, shift):
    model = copy.deepcopy(tiny_model)
    cfg = tiny()
    m, _ = _step(model, _rows([3, 4, 2, 5], [1.0, 0.0, 0.0, 1.0]), cfg, shift=shift)
    assert m["skipped_nonfinite"] == 0 and math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]), m
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_zero_length_responses_and_equal_rewards(tiny_model):
    """Empty responses mixed in, then a minibatch of only empty responses in equal-reward groups:
    advantages are exactly 0 and the update is exactly AdamW's weight decay."""
    cfg = tiny()
    model = copy.deepcopy(tiny_model)
    m, opt = _step(model, _rows([0, 3, 0, 2], [1.0, 0.0, 1.0, 1.0]), cfg)
    assert m["skipped_nonfinite"] == 0 and math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    from vespo_cli.objectives import group_advantages

    rows = _rows([0, 0, 0, 0], [1.0, 1.0, 0.0, 0.0])
    assert group_advantages(rows.rewards, rows.group_ids).tolist() == [0.0] * 4
    model = copy.deepcopy(tiny_model)
    before = _params(model)
    m, _ = _step(model, rows, cfg)
    assert m["loss"] == 0.0 and m["grad_norm"] == 0.0 and m["skipped_nonfinite"] == 0
    decay = 1 - cfg.trainer.lr * cfg.trainer.weight_decay
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[k] * decay, rtol=0, atol=1e-7)


@pytest.mark.parametrize("scale", [1e6, 1e20])
def test_loss_spike_gives_a_finite_update(tiny_model, scale):
    """Advantages of 1e6: a huge loss whose gradient is clipped; 1e20: the gradient overflows float32
    and the step is skipped. Either way the weights stay finite."""
    cfg = tiny()
    model = copy.deepcopy(tiny_model)
    before = _params(model)
    rows = _rows([3, 4, 2, 5], [1.0, 0.0, 0.0, 1.0])
    m, _ = _step(model, rows, cfg, advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]) * scale)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if scale < 1e10:
        assert m["skipped_nonfinite"] == 0 and math.isfinite(m["grad_norm"]) and m["grad_norm"] > 1e3, m
    if m["skipped_nonfinite"]:  # the gradient overflowed: the step must have been dropped
        assert all(torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())
    else:  # clipped to norm 1: Adam moves each weight by at most ~lr (+ weight decay)
        delta = max(float((p.detach() - before[k]).abs().max()) for k, p in model.named_parameters())
        assert 0 < delta <= 2 * cfg.trainer.lr, delta


def test_nonfinite_gradient_skips_the_step(tiny_model):
    """A NaN injected into one parameter's gradient: the step is skipped (skipped_nonfinite=1), weights and
    optimizer state are exactly as before; the next clean step trains normally."""
    cfg = tiny()
    model = copy.deepcopy(tiny_model)
    rows = _rows([3, 4, 2, 5], [1.0, 0.0, 0.0, 1.0])
    _, opt = _step(model, rows, cfg)  # one clean step so the optimizer has state to corrupt
    before, state_before = _params(model), copy.deepcopy(opt.state_dict())
    param = next(p for n, p in model.named_parameters() if "layers.0" in n)
    hook = param.register_hook(lambda g: g * float("nan"))
    m, _ = _step(model, rows, cfg, opt=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    hook.remove()
    assert m["skipped_nonfinite"] == 1 and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())
    state_after = opt.state_dict()
    for k, s in state_before["state"].items():
        for name, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(state_after["state"][k][name])), name
    assert all(p.grad is None for p in model.parameters())  # nothing carried into the next step
    m, _ = _step(model, rows, cfg, opt=(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)))
    assert m["skipped_nonfinite"] == 0
    assert any(not torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())


def test_replay_of_pathological_shard_keeps_weights_finite(tmp_path):
    """End to end: engine logprobs of -999 (the lowest a shard may hold, shards.py) used as the proximal
    policy (log W ≈ +999 per token, far past fp32's exp), empty responses, an all-equal-reward group; every
    logged number finite, every saved weight finite."""
    d = tmp_path / "shards"
    cols = shard_columns(8, seed=3)
    cols["response_token_ids"][0] = []
    cols["rollout_logprobs"][0] = []
    cols["rollout_logprobs"] = [[-999.0] * len(lp) for lp in cols["rollout_logprobs"]]
    cols["reward"][2:4] = [1.0, 1.0]
    cols["correct"] = [r > 0 for r in cols["reward"]]
    write_shard(cols, d / S.shard_name(0, "w0", 0))
    run = tmp_path / "run"
    train(tiny("trainer.steps=2", "trainer.staleness=2", "trainer.old_logp=rollout"), run, replay=d)
    metrics = read_jsonl(run / "metrics.jsonl")
    assert len(metrics) == 2
    for m in metrics:
        assert all(math.isfinite(v) for k, v in m.items() if isinstance(v, float)), m
    assert all(torch.isfinite(t).all() for t in tensors(run / "checkpoints" / "step-2").values())


# =========================================================================== 5. hostile model output

HOSTILE = {
    "power tower 9^9^9^9": "The answer is \\boxed{9^{9^{9^{9}}}}",
    "power tower, plain": "Answer: 9^9^9^9",
    "power tower 10^10^10^10": "\\boxed{10^{10^{10^{10}}}}",
    "power tower 10^10^10^10, plain": "so the result is 10^10^10^10",
    "deeply nested braces": "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "unbalanced braces": "\\boxed{" * 20_000,
    "megabyte output": "7 " * 500_000 + "\\boxed{(10^{10})!}",
    "megabyte, no answer": "x" * 1_000_000,
    "\\boxed with 100k digits": "\\boxed{" + "9" * 100_000 + "}",
    "100k-digit plain answer": "Answer: " + "1" * 100_000,
    "huge factorial": "\\boxed{(10^{100})!}",
    "nested fractions": "\\boxed{" + "\\frac{1}{" * 500 + "2" + "}" * 500 + "}",
}


def test_hostile_model_output_is_bounded_and_scores_zero():
    from vespo_cli.rewards import RewardScorer

    responses = list(HOSTILE.values()) + ["\\boxed{42}"]
    with RewardScorer(workers=2, timeout_s=2.0) as scorer:
        scorer.start()
        t0 = time.monotonic()
        scores = scorer.score(responses, ["42"] * len(responses))
        elapsed = time.monotonic() - t0
        stats = dict(scorer.stats)
        assert scorer.score(["\\boxed{\\frac{1}{2}}"], ["0.5"])[0].correct  # the pool survived
    assert elapsed < 30, elapsed
    assert [s.reward for s in scores[:-1]] == [0.0] * len(HOSTILE)
    assert scores[-1].reward == 1.0 and not scores[-1].timed_out
    timed_out = [name for name, s in zip(HOSTILE, scores) if s.timed_out]
    assert stats["timed_out"] == len(timed_out)
    assert "power tower 9^9^9^9" in timed_out  # sympy would evaluate it forever: killed at the deadline
    COUNTS["hostile_outputs"] = {"tried": len(HOSTILE), "timed_out": timed_out, "seconds": round(elapsed, 1)}


# =========================================================================== 6. security


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = (
                ""
                if isinstance(f, ast.Name)
                # a builtin, e.g. eval(...)
                else f.value.id
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                else "<expr>"
            )
            yield node, owner, name


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def test_package_source_has_no_unsafe_loading_or_shell():
    problems = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        src = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        for node, owner, name in _calls(ast.parse(src)):
            at = f"{where}:{node.lineno}"
            if owner == "torch" and name == "load" and _kw(node, "weights_only") is not True:
                problems.append(f"{at}: torch.load without weights_only=True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load", "load_all", "unsafe_load_all"):
                problems.append(f"{at}: yaml.{name}")
            if owner in ("pickle", "dill", "marshal") and name in ("load", "loads"):
                problems.append(f"{at}: {owner}.{name}")
            if owner == "os" and name in ("system", "popen") or owner == "" and name in ("eval", "exec"):
                problems.append(f"{at}: {owner + '.' if owner else ''}{name}")
            if _kw(node, "shell") not in (None, False):
                problems.append(f"{at}: shell=")
            if _kw(node, "trust_remote_code") is True:
                problems.append(f"{at}: trust_remote_code=True hard-coded")
        # and the plain-text patterns, in case of aliases the AST walk cannot see through
        for pattern in (
            r"yaml\.(unsafe_)?load\(",
            r"os\.system\(",
            r"shell\s*=\s*True",
            r"trust_remote_code\s*=\s*True",
        ):
            for m in re.finditer(pattern, src):
                problems.append(f"{where}:{src.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
    assert not problems, "\n".join(problems)
    COUNTS["source_files_scanned"] = len(files)


def test_trust_remote_code_is_off_unless_the_preset_asks(monkeypatch, tmp_path):
    from vespo_cli import models
    from vespo_cli.config import Config, list_presets

    assert Config().model.trust_remote_code is False
    assert not any(load_config(p).model.trust_remote_code for p in list_presets())
    seen: list[tuple[str, object]] = []
    real_resolve = models.resolve_model

    class Stop(Exception):
        pass

    def resolve(spec, cache_dir=None, trust_remote_code=False):
        seen.append(("resolve_model", trust_remote_code))
        return real_resolve(spec, cache_dir)

    def tokenizer(path, trust_remote_code=False):
        seen.append(("load_tokenizer", trust_remote_code))

    def model(path, dtype="float32", trust_remote_code=False):
        seen.append(("load_model", trust_remote_code))
        raise Stop

    monkeypatch.setattr(models, "resolve_model", resolve)
    monkeypatch.setattr(models, "load_tokenizer", tokenizer)
    monkeypatch.setattr(models, "load_model", model)
    for asked in (False, True):
        seen.clear()
        with pytest.raises(Stop):
            train(tiny(f"model.trust_remote_code={str(asked).lower()}"), tmp_path / f"run-{asked}")
        assert {name for name, _ in seen} == {"resolve_model", "load_tokenizer", "load_model"}
        assert all(v is asked for _, v in seen), seen
    from vespo_cli.rollout import run as rollout_run

    engines: list = []
    monkeypatch.setattr("vespo_cli.rollout.make_engine", lambda name, path, **kw: engines.append(kw))
    rollout_run.open_engine(tiny(), "somewhere")
    rollout_run.open_engine(tiny("model.trust_remote_code=true"), "somewhere")
    assert [e["trust_remote_code"] for e in engines] == [False, True]


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_malicious_optimizer_state_is_refused(tmp_path, monkeypatch, request):
    """optim.pt replaced by a pickle with a __reduce__ payload (plain pickle and torch.save's zip format):
    `--resume` refuses it with one line naming the file, runs nothing and changes nothing; first because
    its sha256 no longer matches the checkpoint's manifest, then (manifest re-signed by the attacker)
    because it is not plain tensors and data."""
    d = tmp_path / "shards"
    write_shard(shard_columns(seed=1), d / S.shard_name(0, "w0", 0))
    run = tmp_path / "run"
    train(tiny("trainer.steps=1", "trainer.staleness=1", "trainer.minibatch_prompts=2"), run, replay=d)
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 1\n", "steps: 2\n", 1))
    optim = run / "checkpoints" / "step-1" / "optim.pt"
    marker = tmp_path / "PWNED"
    monkeypatch.chdir(tmp_path)
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # as `vespo` (cli.main) does through HF_HUB_DISABLE_PROGRESS_BARS
    request.addfinalizer(hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)
    for fmt, signed in itertools.product(("pickle", "torch.save"), (False, True)):
        if fmt == "pickle":
            optim.write_bytes(pickle.dumps({"optimizer": _Payload(marker)}))
        else:
            torch.save({"optimizer": _Payload(marker)}, optim)
        if signed:
            write_manifest(optim.parent)
        before = _tree(run)
        result = CliRunner().invoke(app, ["train", "--resume", str(run)], env=QUIET)
        assert result.exit_code == 2, result.output
        err = result.stderr.strip().splitlines()
        expected = f"error: {optim}: refused" if signed else f"error: {optim.parent}: optim.pt: sha256 differs"
        assert len(err) == 1 and err[0].startswith(expected), result.stderr
        assert not marker.exists() and _tree(run) == before
        COUNTS["bad_inputs"].append(f"malicious optim.pt ({fmt}{', manifest re-signed' if signed else ''})")


# =========================================================================== signals


def test_sigterm_ends_train_with_one_line_and_resume_is_bit_for_bit(tmp_path):
    """SIGTERM (SLURM's stop) mid-run: one line naming the step and the resume command, exit status
    128 + 15, no torn checkpoint; stale temporaries of a killed writer are removed by the next start
    that holds the lock, and the resumed run ends where an uninterrupted one does, bit for bit."""
    d = tmp_path / "shards"
    for i, tag in enumerate("abcd"):
        write_shard(shard_columns(seed=i, tag=tag), d / S.shard_name(0, "w0", i))
    overrides = ["trainer.steps=6", "trainer.staleness=1", "trainer.minibatch_prompts=2", "trainer.save_every=2"]
    ref = tmp_path / "ref"
    train(tiny(*overrides), ref, replay=d)
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--run-dir", run, "--replay", d, *sum((["--set", s] for s in overrides), [])]
    env = {**_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's vespo_cli
    cmd = [sys.executable, "-m", "vespo_cli.cli", *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and metric_lines(run) < 3:
            assert time.monotonic() < deadline, "no third step"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    step = int(
        re.fullmatch(rf"interrupted at step (\d+); `vespo train --resume {re.escape(str(run))}` continues", last)[1]
    )
    assert 3 <= step < 6 and "Traceback" not in err
    assert metric_lines(run) == step and not tmp_ckpts(run)
    assert all((run / "checkpoints" / f"step-{k}" / "manifest.json").is_file() for k in ckpt_steps(run))
    stale = [run / "checkpoints" / ".step-9.abc123.tmp", run / ".metrics.jsonl.x1y2.tmp"]
    stale[0].mkdir()
    (stale[0] / "model.safetensors").write_bytes(b"\0" * 1024)
    stale[1].write_text("half")
    resumed = subprocess.run(
        [sys.executable, "-m", "vespo_cli.cli", "train", "--resume", str(run)], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not any(p.exists() for p in stale)
    assert stable(read_jsonl(run / "metrics.jsonl")) == stable(read_jsonl(ref / "metrics.jsonl"))
    assert_same_weights(run / "checkpoints" / "step-6", ref / "checkpoints" / "step-6")
