"""Rollout shards: the parquet contract (round trip, atomic writes, validation, follow, summarize)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SHARD_T0, make_shard_rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vespo_cli import shards as S
from vespo_cli.errors import UserError
from vespo_cli.shards import ShardError, follow, read_shard, summarize, to_table, write_shard


def shard_columns(rows: int = 4, version: int = 0, *, resp_lens=None, rewards=None, **columns) -> dict:
    """A valid shard as column lists (conftest.make_shard_rows): groups of 2 samples, rewards 1/0 alternating
    by default, every finish reason, answers and texts filled in, created_at one ms apart."""
    resp_lens = resp_lens or [3 + i % 3 for i in range(rows)]
    rewards = [float(i % 2 == 0) for i in range(rows)] if rewards is None else rewards
    filled = {
        "response_token_ids": [list(range(10, 10 + n)) for n in resp_lens],
        "rollout_logprobs": [[-0.25] * n for n in resp_lens],
        "reward": rewards,
        "correct": [r > 0 for r in rewards],  # of these rewards even where `columns` replaces the reward column
        "extracted_answer": [str(i) for i in range(rows)],
        "finish_reason": ["stop" if i % 3 else "length" for i in range(rows)],
        "response_text": [f"answer {i}" for i in range(rows)],
        "created_at": [SHARD_T0 + i for i in range(rows)],
    }
    return make_shard_rows(rows, version, tag="v", **{**filled, **columns})


def raw_write(table: pa.Table, path: Path, version: bytes | None = b"1") -> Path:
    """Write a parquet file as-is (no vespo validation), with or without the schema version."""
    meta = {S.SCHEMA_KEY: version} if version is not None else None
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))  # as other tools write
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def shard_error(path) -> str:
    with pytest.raises(ShardError) as info:
        read_shard(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert "\n" not in msg
    assert isinstance(info.value, UserError)
    return msg


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    cols = shard_columns(6, version=3)
    path = write_shard(cols, tmp_path / "rollouts" / S.shard_name(3, "w0", 1))
    assert path == tmp_path / "rollouts" / "v000003-w0-000001.parquet"
    table = read_shard(path)
    assert table.schema.equals(S.SCHEMA)
    assert table.equals(to_table(cols))
    assert table.to_pydict()["response_token_ids"] == cols["response_token_ids"]
    meta = pq.ParquetFile(path).schema_arrow.metadata
    assert meta[S.SCHEMA_KEY] == str(S.SCHEMA_VERSION).encode()


def test_readable_without_vespo(tmp_path, monkeypatch):
    cols = shard_columns(4, version=2)
    path = write_shard(cols, tmp_path / "s.parquet")

    import pandas as pd

    df = pd.read_parquet(path)
    assert list(df.columns) == S.COLUMNS
    assert len(df) == 4 and df["policy_version"].tolist() == [2] * 4
    assert [list(x) for x in df["response_token_ids"]] == cols["response_token_ids"]
    assert df["reward"].mean() == pytest.approx(0.5)
    assert str(df["created_at"].dt.tz) == "UTC"

    t = pq.read_table(path)
    assert t.num_rows == 4 and t.column("rollout_logprobs").to_pylist() == cols["rollout_logprobs"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf-cache"))
    assert ds.num_rows == 4
    assert ds[1]["response_token_ids"] == cols["response_token_ids"][1]
    assert ds[0]["correct"] is True and ds[0]["extracted_answer"] == "0"


def test_optional_columns_omitted(tmp_path):
    cols = shard_columns(3)
    for name in S.OPTIONAL:
        cols.pop(name, None)
    path = write_shard(cols, tmp_path / "a.parquet")
    t = read_shard(path)
    for name in S.OPTIONAL:
        assert t.column(name).null_count == 3
    # a file written without the optional columns at all (e.g. by another tool) reads the same
    raw = to_table(shard_columns(3)).drop_columns(sorted(S.OPTIONAL))
    t2 = read_shard(raw_write(raw, tmp_path / "b.parquet"))
    assert t2.column_names == S.COLUMNS and t2.column("routing").null_count == 3


def test_routing_and_missing_created_at(tmp_path):
    cols = shard_columns(2, resp_lens=[2, 1])
    del cols["created_at"]  # filled with "now"
    cols["routing"] = [[[1, 2], [3, 4]], [[5, 6]]]
    t = read_shard(write_shard(cols, tmp_path / "r.parquet"))
    assert t.column("routing").to_pylist() == [[[1, 2], [3, 4]], [[5, 6]]]
    assert t.column("created_at").null_count == 0


def test_shard_names_sort_by_version():
    names = [S.shard_name(v, w, q) for v, w, q in [(10, "w0", 0), (2, "w1", 5), (2, "w0", 7), (2, "w0", 10)]]
    assert sorted(names) == [names[2], names[3], names[1], names[0]]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lens=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    lp=st.floats(-50.0, 0.0, allow_nan=False, width=32),
    reward=st.floats(-10.0, 10.0, allow_nan=False, width=32),
)
def test_round_trip_property(tmp_path, lens, lp, reward):
    cols = shard_columns(
        len(lens), resp_lens=lens, rewards=[reward] * len(lens), rollout_logprobs=[[lp] * n for n in lens]
    )
    t = read_shard(write_shard(cols, tmp_path / "h.parquet"))
    assert [len(x) for x in t.column("response_token_ids").to_pylist()] == lens
    assert t.column("rollout_logprobs").to_pylist() == [[lp] * n for n in lens]
    assert t.column("reward").to_pylist() == [reward] * len(lens)


# --------------------------------------------------------------------------- atomicity


def test_no_temp_file_left_and_usual_mode(tmp_path):
    path = write_shard(shard_columns(), tmp_path / "d" / "x.parquet")
    assert os.listdir(path.parent) == ["x.parquet"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: other readers see it


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    d = tmp_path / "rollouts"
    d.mkdir()
    seen_tmp = []

    def torn_write(table, where, **kwargs):
        where = Path(where)
        seen_tmp.append(where)
        where.write_bytes(b"PAR1 half a shard")  # partially written ...
        assert S.list_shards(d) == []  # ... and invisible to readers meanwhile
        raise OSError("disk full")

    monkeypatch.setattr(S.pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_shard(shard_columns(), d / "v000000-w0-000000.parquet")
    assert seen_tmp and seen_tmp[0].parent == d and seen_tmp[0].name.startswith(".")
    assert os.listdir(d) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_shard(shard_columns(2), tmp_path / "x.parquet")
    before = path.read_bytes()
    monkeypatch.setattr(S.pq, "write_table", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        write_shard(shard_columns(4), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.parquet"]


def test_invalid_table_is_never_written(tmp_path):
    cols = shard_columns(2, rollout_logprobs=[[-0.1], [-0.1]])  # lengths 3 and 4 expected
    with pytest.raises(ShardError, match="rollout_logprobs"):
        write_shard(cols, tmp_path / "out" / "x.parquet")
    assert not (tmp_path / "out" / "x.parquet").exists()
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# --------------------------------------------------------------------------- rejected files


def test_torn_and_garbage_files(tmp_path):
    good = write_shard(shard_columns(50), tmp_path / "good.parquet")
    data = good.read_bytes()
    torn = tmp_path / "torn.parquet"
    torn.write_bytes(data[: len(data) // 2])
    assert "not a readable parquet file" in shard_error(torn)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[:-3])
    assert "not a readable parquet file" in shard_error(cut)
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    assert "not a readable parquet file" in shard_error(empty)
    junk = tmp_path / "junk.parquet"
    junk.write_text("hello, not parquet")
    assert "not a readable parquet file" in shard_error(junk)
    assert shard_error(tmp_path / "missing.parquet") == f"{tmp_path / 'missing.parquet'}: no such shard"
    assert "not a readable parquet file" in shard_error(tmp_path)  # a directory


def test_missing_required_column(tmp_path):
    t = to_table(shard_columns()).drop_columns(["reward"])
    p = raw_write(t, tmp_path / "m.parquet")
    assert shard_error(p) == f"{p}: missing column reward (float)"


@pytest.mark.parametrize(
    "name, values",
    [
        ("policy_version", ["abc"] * 4),
        ("policy_version", [1.5] * 4),
        ("prompt_token_ids", ["1 2 3"] * 4),
        ("response_token_ids", [1] * 4),
        ("correct", [[True]] * 4),
    ],
)
def test_wrong_column_type(tmp_path, name, values):
    t = to_table(shard_columns())
    t = t.set_column(t.schema.get_field_index(name), name, pa.array(values))
    p = raw_write(t, tmp_path / "w.parquet")
    assert "wrong column types" in shard_error(p)


def test_compatible_types_are_cast(tmp_path):
    t = to_table(shard_columns())
    for name in ("response_token_ids", "prompt_token_ids"):
        t = t.set_column(
            t.schema.get_field_index(name), name, pa.array(t.column(name).to_pylist(), pa.list_(pa.int64()))
        )
    t = t.set_column(t.schema.get_field_index("reward"), "reward", pa.array([0.5] * 4, pa.float64()))
    got = read_shard(raw_write(t, tmp_path / "c.parquet"))
    assert got.schema.equals(S.SCHEMA) and got.column("reward").to_pylist() == [0.5] * 4


def test_mismatched_logprob_lengths(tmp_path):
    cols = shard_columns(3, resp_lens=[3, 3, 3], rollout_logprobs=[[-1.0] * 3, [-1.0] * 2, [-1.0] * 3])
    p = raw_write(to_table(cols), tmp_path / "l.parquet")
    assert shard_error(p) == f"{p}: row 1: 2 rollout_logprobs for 3 response tokens"
    # a null list (engine gave no logprobs) is fine; an empty response with no logprobs too
    cols = shard_columns(3, resp_lens=[3, 0, 3], rollout_logprobs=[None, [], [-1.0] * 3])
    assert read_shard(raw_write(to_table(cols), tmp_path / "ok.parquet")).num_rows == 3


@pytest.mark.parametrize(
    "bad, kind",
    [
        (float("nan"), "NaN values"),
        (float("inf"), "infinite values"),
        (float("-inf"), "infinite values"),
        (0.5, "out-of-range values such as 0.5"),
        (-3e38, "out-of-range values such as -3e+38"),
        (-1000.5, "out-of-range values such as -1000.5"),
    ],
)
def test_bad_logprob_values(tmp_path, bad, kind):
    cols = shard_columns(2, resp_lens=[2, 2], rollout_logprobs=[[-0.1, -0.2], [-0.3, bad]])
    p = raw_write(to_table(cols), tmp_path / "v.parquet")
    expected = "(expected finite log-probabilities in [-1000, 0.0001])"
    assert shard_error(p) == f"{p}: rollout_logprobs contain {kind} {expected}"
    with pytest.raises(ShardError):
        write_shard(cols, tmp_path / "never.parquet")
    assert not (tmp_path / "never.parquet").exists()


def test_logprob_zero_and_rounding_are_accepted(tmp_path):
    cols = shard_columns(1, resp_lens=[2], rollout_logprobs=[[0.0, 5e-5]])
    assert read_shard(write_shard(cols, tmp_path / "z.parquet")).num_rows == 1


def test_range_ends_are_accepted(tmp_path):
    """The documented ends of the valid ranges (shards.py docstring) are inside them."""
    cols = shard_columns(2, resp_lens=[2, 2], rewards=[S.REWARD_MAX, -S.REWARD_MAX])
    cols["rollout_logprobs"] = [[S.LOGPROB_MIN, -1.0], [S.LOGPROB_MAX / 2, 0.0]]
    assert read_shard(write_shard(cols, tmp_path / "ends.parquet")).num_rows == 2


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"reward": [float("nan"), 0.0]}, "reward contains NaN or infinite values"),
        ({"reward": [None, 0.0]}, "column reward has 1 null values"),
        ({"run_id": [None, "r"]}, "column run_id has 1 null values"),
        ({"prompt_token_ids": [[1], []]}, "a row has an empty prompt_token_ids"),
        ({"prompt_token_ids": [[1], [-3]]}, "prompt_token_ids contain negative token ids"),
        ({"policy_version": [-1, 0]}, "policy_version must be >= 0"),
        ({"sample_idx": [0, -1]}, "sample_idx must be >= 0"),
        ({"reward": [3e38, 0.0]}, "reward 3e+38 is out of range (expected |reward| <= 1e+06)"),
        ({"reward": [0.0, -2e6]}, "reward -2e+06 is out of range (expected |reward| <= 1e+06)"),
        ({"temperature": [0.0, 1.0]}, "temperature must be finite and > 0 and top_p in (0, 1]"),
        ({"temperature": [float("inf"), 1.0]}, "temperature must be finite and > 0 and top_p in (0, 1]"),
        ({"top_p": [1.0, 1.5]}, "temperature must be finite and > 0 and top_p in (0, 1]"),
        ({"prompt_id": ["p0", "q0"]}, "group_id 'v0-g0': rows disagree on the prompt (prompt_id 'p0' vs 'q0', row 1)"),
        (
            {"prompt_token_ids": [[1, 2], [1, 3]]},
            "group_id 'v0-g0': rows disagree on the prompt (prompt_token_ids, row 1)",
        ),
    ],
)
def test_bad_values(tmp_path, columns, fragment):
    p = raw_write(to_table(shard_columns(2, **columns)), tmp_path / "b.parquet")
    assert shard_error(p) == f"{p}: {fragment}"


def test_empty_shard(tmp_path):
    with pytest.raises(ShardError, match="empty shard"):
        write_shard(shard_columns(0), tmp_path / "e.parquet")
    assert not (tmp_path / "e.parquet").exists()
    p = raw_write(to_table(shard_columns(0)), tmp_path / "e2.parquet")
    assert shard_error(p) == f"{p}: empty shard (0 rows)"


def test_schema_versions(tmp_path):
    t = to_table(shard_columns())
    p = raw_write(t, tmp_path / "future.parquet", version=b"99")
    assert shard_error(p).startswith(f"{p}: written by a newer vespo (schema version 99 > {S.SCHEMA_VERSION})")
    p = raw_write(t, tmp_path / "garbled.parquet", version=b"one")
    assert shard_error(p) == f"{p}: bad schema version b'one'"
    p = raw_write(t, tmp_path / "plain.parquet", version=None)
    assert shard_error(p) == f"{p}: not a vespo shard (no vespo.schema_version in the parquet metadata)"
    import pandas as pd

    p = tmp_path / "pandas.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(p)
    assert "not a vespo shard" in shard_error(p)


# --------------------------------------------------------------------------- follow


def test_list_shards_ignores_temporary_and_hidden(tmp_path):
    write_shard(shard_columns(), tmp_path / "v000002-w0-000000.parquet")
    write_shard(shard_columns(), tmp_path / "v000001-w0-000000.parquet")
    (tmp_path / ".v000003-w0-000000.parquet.abc123.tmp").write_bytes(b"PAR1")
    (tmp_path / ".hidden.parquet").write_bytes(b"PAR1")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in S.list_shards(tmp_path)] == ["v000001-w0-000000.parquet", "v000002-w0-000000.parquet"]
    assert S.list_shards(tmp_path / "missing") == []


def test_follow_yields_complete_files_in_order(tmp_path):
    d = tmp_path / "rollouts"
    for v in (3, 1, 2):
        write_shard(shard_columns(version=v), d / S.shard_name(v, "w0", 0))
    tmp = d / ".v000004-w0-000000.parquet.x.tmp"  # being written by a worker
    tmp.write_bytes(b"PAR1 partial")
    stop = {"now": False}
    seen: set[str] = set()
    gen = follow(d, seen=seen, poll_s=0.01, stop=lambda: stop["now"])
    first = [next(gen) for _ in range(3)]
    assert [p.name for p in first] == [S.shard_name(v, "w0", 0) for v in (1, 2, 3)]
    assert seen == {p.name for p in first}
    # the worker finishes: its file is renamed into place and then handed out (exactly once)
    write_shard(shard_columns(version=4), tmp)  # a valid shard at the temp name ...
    os.replace(tmp, d / S.shard_name(4, "w0", 0))  # ... renamed into place
    assert next(gen).name == S.shard_name(4, "w0", 0)
    stop["now"] = True
    assert list(gen) == []
    assert all(read_shard(p).num_rows == 4 for p in first)


def test_follow_honours_seen_and_stop(tmp_path):
    for v in (1, 2, 3):
        write_shard(shard_columns(version=v), tmp_path / S.shard_name(v, "w0", 0))
    seen = {S.shard_name(1, "w0", 0), S.shard_name(3, "w0", 0)}
    got = list(follow(tmp_path, seen=seen, poll_s=0.01, stop=lambda: True))
    assert [p.name for p in got] == [S.shard_name(2, "w0", 0)]
    assert len(seen) == 3
    assert list(follow(tmp_path, seen=seen, poll_s=0.01, stop=lambda: True)) == []


def test_follow_waits_then_stops(tmp_path):
    calls = []

    def stop() -> bool:
        calls.append(1)
        if len(calls) == 2:  # a shard appears while the follower is polling an empty directory
            write_shard(shard_columns(), tmp_path / "later" / "v000000-w0-000000.parquet")
        return len(calls) >= 4

    got = list(follow(tmp_path / "later", poll_s=0.001, stop=stop))  # the directory does not exist yet
    assert [p.name for p in got] == ["v000000-w0-000000.parquet"]
    assert len(calls) == 4


# --------------------------------------------------------------------------- summarize


def test_summarize_numbers(tmp_path):
    write_shard(
        shard_columns(4, version=0, resp_lens=[1, 2, 3, 4], rewards=[1.0, 0.0, 1.0, 0.0]),
        tmp_path / S.shard_name(0, "w0", 0),
    )
    write_shard(
        shard_columns(
            2,
            version=2,
            resp_lens=[5, 5],
            rewards=[1.0, 0.5],
            engine=["vllm"] * 2,
            engine_dtype=["bfloat16"] * 2,
            correct=[True, False],
        ),
        tmp_path / S.shard_name(2, "w0", 0),
    )
    write_shard(shard_columns(2, version=2, resp_lens=[6, 6], rewards=[0.0, 0.0]), tmp_path / S.shard_name(2, "w1", 0))
    (tmp_path / ".v000003-w0-000000.parquet.x.tmp").write_bytes(b"partial")
    s = summarize(tmp_path)
    assert s["shards"] == 3 and s["bad_shards"] == []
    assert s["rows"] == 8
    assert s["policy_versions"] == {0: 4, 2: 4}
    assert s["staleness_vs_newest"] == {0: 4, 2: 4}
    assert s["reward_mean"] == pytest.approx(3.5 / 8)
    assert s["accuracy"] == pytest.approx(3 / 8)
    assert s["mean_response_tokens"] == pytest.approx((1 + 2 + 3 + 4 + 5 + 5 + 6 + 6) / 8)
    assert s["engines"] == {"hf/float32": 6, "vllm/bfloat16": 2}
    assert sum(s["finish_reasons"].values()) == 8


def test_summarize_reports_bad_shards(tmp_path):
    write_shard(shard_columns(2, version=5), tmp_path / S.shard_name(5, "w0", 0))
    bad = tmp_path / S.shard_name(6, "w0", 0)
    bad.write_bytes(b"PAR1 torn")
    s = summarize(tmp_path)
    assert s["shards"] == 2 and s["rows"] == 2
    assert len(s["bad_shards"]) == 1 and s["bad_shards"][0].startswith(str(bad))
    assert s["staleness_vs_newest"] == {0: 2}


def test_summarize_empty_and_missing(tmp_path):
    s = summarize(tmp_path)
    assert s["rows"] == 0 and s["shards"] == 0 and math.isnan(s["reward_mean"])
    assert s["staleness_vs_newest"] == {}
    with pytest.raises(UserError, match="nope: no such shard file or directory"):
        summarize(tmp_path / "nope")


def test_to_table_requires_columns():
    cols = shard_columns(2)
    del cols["reward"]
    with pytest.raises(ValueError, match="reward"):
        to_table(cols)
    assert np.allclose(to_table(shard_columns(2)).column("reward").to_numpy(), [1.0, 0.0])


# --------------------------------------------------------------------------- fsio (the atomic writes under shards)


def test_atomic_helpers(tmp_path):
    from vespo_cli import fsio

    fsio.atomic_write_json(tmp_path / "a" / "s.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a" / "s.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with fsio.atomic_dir(tmp_path / "ckpt") as d:
        (d / "w.bin").write_bytes(b"1")
    with pytest.raises(RuntimeError):
        with fsio.atomic_dir(tmp_path / "ckpt") as d:
            (d / "w.bin").write_bytes(b"2")
            raise RuntimeError("killed")
    assert (tmp_path / "ckpt" / "w.bin").read_bytes() == b"1"  # the old checkpoint survives
    with fsio.atomic_dir(tmp_path / "ckpt") as d:
        (d / "w.bin").write_bytes(b"3")
        (d / "w.bin").chmod(0o600)  # as transformers writes model.safetensors
    assert (tmp_path / "ckpt" / "w.bin").read_bytes() == b"3"
    assert (tmp_path / "ckpt" / "w.bin").stat().st_mode & 0o777 == 0o666 & ~fsio._UMASK  # the usual mode
    with fsio.atomic_path(tmp_path / "one.bin") as f:
        f.unlink()
        f.write_bytes(b"4")
        f.chmod(0o600)  # a writer that recreates its file, as safetensors' save_file does
    assert (tmp_path / "one.bin").stat().st_mode & 0o777 == 0o666 & ~fsio._UMASK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ckpt", "one.bin"]


def test_jsonl_survives_a_torn_line(tmp_path):
    from vespo_cli import fsio

    p = tmp_path / "metrics.jsonl"
    assert fsio.read_jsonl(p) == []
    fsio.append_jsonl(p, {"step": 1})
    with open(p, "a") as f:
        f.write('{"step": 2, "loss": 0.')  # killed mid-write
    fsio.append_jsonl(p, {"step": 2})  # the resumed run appends
    assert fsio.read_jsonl(p) == [{"step": 1}, {"step": 2}]
    with open(p, "a") as f:
        f.write("12")  # a torn line that still parses as JSON
    assert fsio.read_jsonl(p) == [{"step": 1}, {"step": 2}]


def test_reward_failure_counts():
    from vespo_cli.shards import reward_failure_counts

    assert reward_failure_counts([None, "timeout", "TypeError", None, "timeout", "WorkerCrashed"]) == {
        "reward_errors": 2,
        "reward_timeouts": 2,
    }
    assert reward_failure_counts([]) == {"reward_errors": 0, "reward_timeouts": 0}
