"""Rollout shards: the parquet contract between stages (docs/shards.md).

One file = one slice of a rollout batch, one row per sampled response. Files are written to a
hidden temporary name and renamed, so a reader never sees a half shard. The reader validates the
schema, list lengths and value ranges and names the bad file. Plain parquet: pandas, polars,
duckdb and `datasets` read it without vespo.

Integrity: the parquet key-value metadata carries `vespo.file_sha256`, the sha256 of the whole file
with that value's own 64 bytes read as "0" (written into the finished file), so any flipped bit is
caught; `vespo.content_sha256`, a sha256 of the rows (`content_hash`), which is also the shard's
identity (a renamed copy has the same one); and parquet page checksums (CRC32 per page), which other
readers can check. Shards without the two hashes (older vespo, other producers) are read as before and
get their content hash computed on read.

Valid ranges of the numeric columns (whoever wrote the shard; a value outside is refused with one line):

- `reward`: finite, |r| <= REWARD_MAX = 1e6. Rewards are scores (0/1 correctness, shaped rewards of
  order 1); the bound keeps a batch's sums and squares (2^31 rows × 1e12) far inside float32
  (3.4e38), so the trainer's float32 tensors and its float64 reductions stay exact enough.
- `rollout_logprobs`: finite, in [LOGPROB_MIN, LOGPROB_MAX] = [-1000, 1e-4]. A sampled token's log-
  probability: a float32 sampler cannot draw a token of probability below 2^-149 (ln ≈ -103.3), and
  an engine's unscaled log-prob of it at temperature T is about T times that (T ≤ 2 gives > -300 with
  a 50k vocabulary); the upper end admits a kernel's rounding above 0.
- `temperature` finite and > 0, `top_p` in (0, 1], token ids in [0, vocab), `policy_version` and
  `sample_idx` >= 0.
- a group (`group_id`) is the samples of one prompt: its rows agree on `prompt_id` and
  `prompt_token_ids`.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import UserError
from .fsio import atomic_path
from .rundir import SHARD_GLOB
from .rundir import shard_name as shard_name  # re-exported for existing imports

SCHEMA_VERSION = 1
SCHEMA_KEY = b"vespo.schema_version"
HASH_KEY = b"vespo.content_sha256"
FILE_KEY = b"vespo.file_sha256"
_UNSTAMPED = b"0" * 64
REWARD_MAX = 1e6  # |reward| (module docstring: valid ranges)
LOGPROB_MIN, LOGPROB_MAX = -1000.0, 1e-4  # rollout_logprobs

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("policy_version", pa.int64(), nullable=False),  # trainer step whose weights sampled it
        pa.field("engine", pa.string(), nullable=False),  # vllm | hf
        pa.field("engine_dtype", pa.string(), nullable=False),
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),  # samples of one prompt in one rollout batch
        pa.field("sample_idx", pa.int32(), nullable=False),
        pa.field("prompt_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("response_token_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("rollout_logprobs", pa.list_(pa.float32()), nullable=True),  # null: engine gave none
        pa.field("reward", pa.float32(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("extracted_answer", pa.string(), nullable=True),
        pa.field("reward_error", pa.string(), nullable=True),  # null: scored; "timeout" or the exception type
        pa.field("finish_reason", pa.string(), nullable=False),  # stop | length
        pa.field("response_text", pa.string(), nullable=True),
        pa.field("created_at", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("routing", pa.list_(pa.list_(pa.int16())), nullable=True),  # MoE: per token, layer×top-k experts
    ],
    metadata={SCHEMA_KEY: str(SCHEMA_VERSION).encode()},
)
_NULLABLE = pa.schema([f.with_nullable(True) for f in SCHEMA], metadata=SCHEMA.metadata)
COLUMNS = SCHEMA.names
OPTIONAL = {"rollout_logprobs", "extracted_answer", "reward_error", "response_text", "routing"}


class ShardError(UserError):
    """A shard file that violates the contract; the message starts with the file's path."""


def to_table(columns: dict[str, list]) -> pa.Table:
    """Build a schema-conforming table from column lists; optional columns may be omitted."""
    n = len(next(iter(columns.values()))) if columns else 0
    if "created_at" not in columns:
        columns = {**columns, "created_at": [int(time.time() * 1000)] * n}
    arrays = []
    for f in SCHEMA:
        if f.name in columns:
            arrays.append(pa.array(columns[f.name], type=f.type))
        elif f.name in OPTIONAL:
            arrays.append(pa.nulls(n, type=f.type))
        else:
            raise ValueError(f"shard column {f.name} missing")
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _hash_array(h, arr: pa.Array) -> None:
    t = arr.type
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t)
    h.update(f"{'list' if is_list else t}\0{len(arr)}\0{arr.null_count}\0".encode())  # not the list item's name
    if arr.null_count:
        h.update(np.packbits(arr.is_null().to_numpy(zero_copy_only=False)).tobytes())
    if is_list:
        h.update(pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        _hash_array(h, pc.list_flatten(arr))
        return
    values = arr.drop_null()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        blobs = values.cast(pa.large_binary()).to_pylist()
        h.update(np.array([len(b) for b in blobs], "<i8").tobytes())
        h.update(b"".join(blobs))
    elif pa.types.is_timestamp(t):
        h.update(values.cast(pa.int64()).to_numpy().astype("<i8").tobytes())
    else:
        a = values.to_numpy(zero_copy_only=False)
        h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())


def content_hash(table: pa.Table) -> str:
    """sha256 of a table's rows: column names, types, null masks and values, whatever the file layout."""
    h = hashlib.sha256()
    for name, col in zip(table.column_names, table.columns):
        h.update(f"{name}\0".encode())
        _hash_array(h, col.combine_chunks())
    return h.hexdigest()


def shard_hash(table: pa.Table) -> str:
    """The content hash `read_shard` attached to a table it returned."""
    return table.schema.metadata[HASH_KEY].decode()


def write_shard(table: pa.Table | dict, path: str | os.PathLike) -> Path:
    """Validate and write atomically (temp file + fsync + rename), with page checksums and the
    content hash. Returns the final path."""
    if isinstance(table, dict):
        table = to_table(table)
    path = Path(path)
    validate(table, path)
    meta = {**SCHEMA.metadata, HASH_KEY: content_hash(table).encode(), FILE_KEY: _UNSTAMPED}
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp, compression="zstd", write_page_checksum=True)
        with open(tmp, "r+b") as f:  # the file's sha256 into its placeholder
            data = f.read()
            at = _stamp_offset(data, _UNSTAMPED)
            if at is None:  # pragma: no cover - a pyarrow that encodes the footer differently
                raise RuntimeError(f"{path}: could not place {FILE_KEY.decode()} in the parquet footer")
            f.seek(at)
            f.write(hashlib.sha256(data).hexdigest().encode())
    return path


def _stamp_offset(data: bytes | bytearray, value: bytes) -> int | None:
    """Where `value` of the file_sha256 entry starts in the footer (thrift compact: key, field header
    0x18, length 64), or None."""
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    i = data.find(FILE_KEY + b"\x18\x40" + value, max(footer, 0))
    return None if i < 0 else i + len(FILE_KEY) + 2


def _check_stamp(data: bytes, raw: dict, path: Path) -> None:
    """The whole-file sha256 (and, written with it, the content hash) must be there and match."""
    stamp = raw.get(FILE_KEY)
    if stamp is None and HASH_KEY not in raw:
        return  # written without integrity hashes (older vespo, another producer)
    at = None if stamp is None or HASH_KEY not in raw else _stamp_offset(data, stamp)
    if at is None or hashlib.sha256(data[:at] + _UNSTAMPED + data[at + 64 :]).hexdigest().encode() != stamp:
        raise ShardError(f"{path}: corrupt: the file's bytes do not match the sha256 written into it")


def read_shard(path: str | os.PathLike, vocab_size: int | None = None) -> pa.Table:
    """Read, verify and validate one shard; raises ShardError naming the file and the problem.

    With `vocab_size`, token ids must be below it (the model that will train on them)."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a directory, or a FIFO that would block the read
        raise ShardError(f"{path}: not a readable parquet file (not a regular file)")
    try:
        data = path.read_bytes()
        with pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True) as pf:
            meta = pf.schema_arrow.metadata or {}
            raw = pf.metadata.metadata or {}
            table = pf.read()
    except FileNotFoundError:
        raise ShardError(f"{path}: no such shard") from None
    except (pa.ArrowException, OSError, ValueError) as e:  # ValueError: e.g. a flipped bit in a column name's UTF-8
        raise ShardError(
            f"{path}: not a readable parquet file ({(str(e) or type(e).__name__).splitlines()[0][:200]})"
        ) from None
    _check_stamp(data, raw, path)
    version = meta.get(SCHEMA_KEY)
    if version is None:
        raise ShardError(f"{path}: not a vespo shard (no {SCHEMA_KEY.decode()} in the parquet metadata)")
    try:
        version = int(version)
    except ValueError:
        raise ShardError(f"{path}: bad schema version {version!r}") from None
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{path}: written by a newer vespo (schema version {version} > {SCHEMA_VERSION}); upgrade vespo"
        )
    digest = content_hash(table)
    stored = meta.get(HASH_KEY)
    if stored is not None and stored != digest.encode():
        raise ShardError(
            f"{path}: corrupt: its rows do not match the content hash written with them "
            f"(sha256 {digest[:16]}…, expected {stored[:16].decode(errors='replace')}…)"
        )
    for f in SCHEMA:
        if f.name not in table.column_names:
            if f.name in OPTIONAL:
                table = table.append_column(f, pa.nulls(table.num_rows, type=f.type))
                continue
            raise ShardError(f"{path}: missing column {f.name} ({f.type})")
    try:  # nulls in required columns are reported by validate(), not as a failed cast
        table = table.select(COLUMNS).cast(_NULLABLE)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise ShardError(f"{path}: wrong column types ({str(e).splitlines()[0][:200]})") from None
    validate(table, path, vocab_size)
    return table.cast(SCHEMA).replace_schema_metadata({**SCHEMA.metadata, HASH_KEY: digest.encode()})


def validate(table: pa.Table, path: str | os.PathLike, vocab_size: int | None = None) -> None:
    """Contract checks: non-empty, no nulls where required, list lengths, finite values, ranges
    (token ids below `vocab_size` when given)."""

    def bad(msg: str) -> ShardError:
        return ShardError(f"{path}: {msg}")

    if table.num_rows == 0:
        raise bad("empty shard (0 rows)")
    for f in SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            raise bad(f"column {f.name} has {table.column(f.name).null_count} null values")
    resp_len = pc.list_value_length(table.column("response_token_ids")).to_numpy(zero_copy_only=False)
    logprobs = table.column("rollout_logprobs")
    lp_len = pc.list_value_length(logprobs).to_numpy(zero_copy_only=False)
    present = ~np.isnan(lp_len.astype(float)) if logprobs.null_count else np.ones(len(lp_len), bool)
    mismatch = np.nonzero(present & (lp_len != resp_len))[0]
    if len(mismatch):
        i = int(mismatch[0])
        raise bad(f"row {i}: {int(lp_len[i])} rollout_logprobs for {int(resp_len[i])} response tokens")
    flat = pc.list_flatten(logprobs).to_numpy(zero_copy_only=False)
    if flat.size and not (np.isfinite(flat).all() and (flat <= LOGPROB_MAX).all() and (flat >= LOGPROB_MIN).all()):
        kind = "NaN" if np.isnan(flat).any() else "infinite" if np.isinf(flat).any() else "out-of-range"
        worst = flat[np.nanargmax(np.abs(np.nan_to_num(flat, nan=0.0)))] if kind == "out-of-range" else None
        got = f" such as {float(worst):.6g}" if worst is not None else ""
        raise bad(
            f"rollout_logprobs contain {kind} values{got} "
            f"(expected finite log-probabilities in [{LOGPROB_MIN:g}, {LOGPROB_MAX:g}])"
        )
    reward = table.column("reward").to_numpy(zero_copy_only=False)
    if not np.isfinite(reward).all():
        raise bad("reward contains NaN or infinite values")
    if (np.abs(reward) > REWARD_MAX).any():
        worst = float(reward[np.argmax(np.abs(reward))])
        raise bad(f"reward {worst:.6g} is out of range (expected |reward| <= {REWARD_MAX:g})")
    for name in ("prompt_token_ids", "response_token_ids"):
        ids = pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False)
        if ids.size and ids.min() < 0:
            raise bad(f"{name} contain negative token ids")
        if ids.size and vocab_size is not None and ids.max() >= vocab_size:
            raise bad(
                f"{name} contain token id {int(ids.max())}, outside the model's vocabulary of {vocab_size} "
                f"(shard from another tokenizer?)"
            )
    if pc.min(pc.list_value_length(table.column("prompt_token_ids"))).as_py() == 0:
        raise bad("a row has an empty prompt_token_ids")
    if pc.min(table.column("policy_version")).as_py() < 0:
        raise bad("policy_version must be >= 0")
    if pc.min(table.column("sample_idx")).as_py() < 0:
        raise bad("sample_idx must be >= 0")
    group_prompts(table, path)
    temp = table.column("temperature").to_numpy(zero_copy_only=False)
    top_p = table.column("top_p").to_numpy(zero_copy_only=False)
    if not ((np.isfinite(temp) & (temp > 0)).all() and ((top_p > 0) & (top_p <= 1)).all()):
        raise bad("temperature must be finite and > 0 and top_p in (0, 1]")


def group_prompts(table: pa.Table, path: str | os.PathLike) -> dict[str, tuple[str, bytes]]:
    """group_id → (prompt_id, prompt token ids as bytes) of a shard's rows; ShardError naming the
    group when its rows disagree on the prompt (a group is the samples of one prompt)."""
    ids = table.column("prompt_token_ids").combine_chunks()
    offsets = ids.offsets.to_numpy()
    tokens = ids.values.to_numpy(zero_copy_only=False).astype("<i4")
    seen: dict[str, tuple[str, bytes]] = {}
    for r, (g, pid) in enumerate(zip(table.column("group_id").to_pylist(), table.column("prompt_id").to_pylist())):
        key = (pid, tokens[offsets[r] : offsets[r + 1]].tobytes())
        first = seen.setdefault(g, key)
        if first != key:
            what = f"prompt_id {first[0]!r} vs {pid!r}" if first[0] != pid else "prompt_token_ids"
            raise ShardError(f"{path}: group_id {g!r}: rows disagree on the prompt ({what}, row {r})")
    return seen


def reward_failure_counts(reward_errors) -> dict[str, int]:
    """`reward_errors` (the grader raised) and `reward_timeouts` among values of the `reward_error`
    column (null: scored; "timeout"; else the exception type)."""
    errs = [e for e in reward_errors if e]
    return {"reward_errors": sum(1 for e in errs if e != "timeout"), "reward_timeouts": errs.count("timeout")}


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """Complete shards in `directory`, oldest first (temporary and hidden files are ignored)."""
    d = Path(directory)
    files = [p for p in d.glob(SHARD_GLOB) if not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.name)


def follow(
    directory: str | os.PathLike,
    seen: set[str] | None = None,
    poll_s: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Path]:
    """Yield shards as they appear in `directory` (by name order), forever or until `stop()`.

    `seen` holds the names already handed out (e.g. restored from the trainer's ledger)."""
    seen = set() if seen is None else seen
    while True:
        fresh = [p for p in list_shards(directory) if p.name not in seen]
        for p in fresh:
            seen.add(p.name)
            yield p
        if stop is not None and stop():
            return
        if not fresh:
            time.sleep(poll_s)


def summarize(directory: str | os.PathLike) -> dict:
    """Rows, policy versions, staleness histogram, reward mean and engines of a shard directory (or of
    one shard file)."""
    if Path(directory).is_file():
        files = [Path(directory)]
    elif Path(directory).is_dir():
        files = list_shards(directory)
    else:
        raise UserError(f"{directory}: no such shard file or directory")
    versions: Counter = Counter()
    engines: Counter = Counter()
    finish: Counter = Counter()
    rows = 0
    reward_sum = correct_sum = resp_tokens = 0.0
    reward_errors: list = []
    bad: list[str] = []
    for f in files:
        try:
            t = read_shard(f)
        except ShardError as e:
            bad.append(str(e))
            continue
        rows += t.num_rows
        versions.update(t.column("policy_version").to_pylist())
        engines.update(f"{e}/{d}" for e, d in zip(t.column("engine").to_pylist(), t.column("engine_dtype").to_pylist()))
        finish.update(t.column("finish_reason").to_pylist())
        reward_errors += t.column("reward_error").to_pylist()
        reward_sum += float(pc.sum(pc.cast(t.column("reward"), pa.float64())).as_py())
        correct_sum += float(pc.sum(pc.cast(t.column("correct"), pa.int64())).as_py() or 0)
        resp_tokens += float(pc.sum(pc.list_value_length(t.column("response_token_ids"))).as_py() or 0)
    newest = max(versions) if versions else 0
    staleness: Counter = Counter()
    for v, c in versions.items():
        staleness[newest - v] += c
    return {
        "directory": str(directory),
        "shards": len(files),
        "bad_shards": bad,
        "rows": rows,
        "policy_versions": dict(sorted(versions.items())),
        "staleness_vs_newest": dict(sorted(staleness.items())),
        "reward_mean": reward_sum / rows if rows else math.nan,
        "accuracy": correct_sum / rows if rows else math.nan,
        "mean_response_tokens": resp_tokens / rows if rows else math.nan,
        "engines": dict(engines),
        "finish_reasons": dict(finish),
        **reward_failure_counts(reward_errors),
    }
