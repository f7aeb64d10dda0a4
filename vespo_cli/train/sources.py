"""Where the trainer's rollout batches come from (docs/training.md "Three regimes"): a generator per regime.

* `sync_batches`: batch i sampled with the current weights (its shard reused after a resume).
* `replay_batches`: existing shards in name order, cut into batches of whole prompt groups.
* `async_batches`: complete shards of `vespo rollout --follow` workers as they appear; too-stale ones
  dropped, bad ones quarantined, a renamed copy of a used shard skipped.

Batch i's identity (its shard, its prompts, its sampling seed) is a function of (seed, i), so a
resumed run yields the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.markup import escape

from ..config import Config
from ..errors import UserError
from ..inputs import prompt_chunk
from ..rollout.groups import EngineGroup, engine_group
from ..rundir import RunDir, parse_shard_name, quarantine, shard_name
from ..seeds import chunk_seed
from ..shards import ShardError, follow, group_prompts, list_shards, read_shard, shard_hash
from . import dist
from .batch import Rows, rows_from_table

console = Console(stderr=True)


@dataclass
class RolloutBatch:
    iteration: int
    rows: Rows
    shards: list[str]
    rollout_s: float = 0.0
    dropped: list[str] = field(default_factory=list)  # async: shards older than max_staleness
    quarantined: list[str] = field(default_factory=list)  # shards that failed validation
    duplicates: list[str] = field(default_factory=list)  # shards whose rows were already used (a renamed copy)
    digests: dict[str, str] = field(default_factory=dict)  # shard → content hash (its identity in the ledger)
    shard_io_s: float = 0.0  # reading (and, sync, writing) this batch's shards
    rollout_s_max: float = 0.0  # sync: the slowest rank's sampling (rollout_s is the ranks' mean)
    rollout_workers: int = 0  # engines that sampled the batch (sync: ranks; async: workers; replay: 0)
    rollout_wall_s: float = 0.0  # this process's wall time from asking for the batch to holding it


def rollout_group(cfg: Config) -> EngineGroup:
    """This rank's engine group (rollout/groups.py, whose docstring is the contract): every rank
    samples, one engine per group of rollout.tensor_parallel_size ranks (k = 1: one engine per rank).
    One process keeps a group of one, whatever k: its vLLM engine spans k GPUs with its own workers."""
    world = dist.world_size()
    k = cfg.rollout.tensor_parallel_size if world > 1 else 1
    return engine_group(dist.rank(), world, k, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def rank_share(num_prompts: int, parts: int, part: int) -> tuple[int, int]:
    """[lo, hi): the prompts of a rollout batch that part `part` of `parts` samples (contiguous, sizes
    differ by at most one), so the parts in order are the batch in order."""
    return part * num_prompts // parts, (part + 1) * num_prompts // parts


def part_name(version: int, iteration: int, parts: int, part: int) -> str:
    """Part `part`'s shard of sync rollout batch `iteration`: worker `sync` when one engine samples the
    batch, `sync<part>` when several do."""
    return shard_name(version, "sync" if parts == 1 else f"sync{part}", iteration)


def sync_batches(cfg: Config, run_dir: Path, state: dict, sampler: Callable, vocab_size: int) -> Iterator[RolloutBatch]:
    """Sample rollout batch i with the current weights (or reuse its shards after a resume).

    Data parallel: each engine group (`rollout_group`: `count` engines of `size` ranks) samples part
    `index` of the batch's prompts (`rank_share`) into its own shard; per-prompt seeds
    (rollout.base.request_seed of the batch seed and the prompt's index in the batch) make the rows
    those of a one-process run. Every rank of a group calls the engine with the same prompts and seeds
    (a tensor-parallel vLLM engine's ranks generate in lockstep); only the leader writes the part. Every
    rank then reads the whole batch, all parts (simpler than exchanging rows, and a resumed or replayed
    run reads the same shards), and training splits it as it would any batch: each rank trains on its
    slice of every minibatch."""
    out = RunDir(run_dir).rollouts
    gbs = cfg.trainer.rollout_batch_prompts
    group = rollout_group(cfg)
    k, leader = group.count, dist.rank() == group.leader
    while True:
        i, version = state["iteration"], state["step"]
        parts = [(out / part_name(version, i, k, r), *rank_share(gbs, k, r)) for r in range(k)]
        mine = parts[group.index]
        parts = [p for p in parts if p[2] > p[1]]  # a group without prompts (gbs < k) writes nothing
        t0 = time.perf_counter()
        own = {"sample_s": 0.0, "write_s": 0.0}
        # The group's ranks agree on exists(): the leader writes the part only after a generate that
        # (tensor parallel) every rank of the group has entered.
        if mine[2] > mine[1] and not mine[0].exists():
            path, lo, hi = mine
            problems = prompt_chunk(cfg, i * gbs + lo, hi - lo)
            stats = sampler(problems, version, path if leader else None, chunk_seed(cfg.trainer.seed, i), i, lo)
            own = {"sample_s": time.perf_counter() - t0, "write_s": stats.get("write_s", 0.0)}
        total, peak = dist.sum_and_max([own["sample_s"]])  # also the barrier: every part is written
        t1 = time.perf_counter()
        tables = [read_shard(p[0], vocab_size) for p in parts]
        rows = rows_from_table(pa.concat_tables(tables))
        t2 = time.perf_counter()
        yield RolloutBatch(
            i,
            rows,
            [p[0].name for p in parts],
            total[0] / (len(parts) * group.size),  # the mean over the ranks that sampled
            digests={p[0].name: shard_hash(t) for p, t in zip(parts, tables)},
            shard_io_s=own["write_s"] + t2 - t1,
            rollout_s_max=peak[0],
            rollout_workers=len(parts),
            rollout_wall_s=t2 - t0,
        )


def _groups_in_order(rows: Rows) -> list[str]:
    seen: dict[str, None] = {}
    for g in rows.group_ids:
        seen.setdefault(g, None)
    return list(seen)


def _skip(what: str, message: str) -> None:
    """One warning line about a shard left out (`what`: why), never wrapped: it names the file(s) and the id."""
    console.print(f"[yellow]{what}[/] {escape(message)}", highlight=False, soft_wrap=True)


def _check_groups(owners: dict[str, tuple[tuple, Path]], mine: dict[str, tuple], path: Path) -> None:
    """ShardError naming both shards and the id when one of `path`'s groups (`mine`: group_id → prompt)
    is already another shard's (`owners`: group_id → (prompt, shard)) for another prompt: one group's
    advantages must not be normalised across two prompts (shards of other producers included)."""
    for g, prompt in mine.items():
        if g in owners and owners[g][0] != prompt:
            raise ShardError(
                f"{path}: group_id {g!r} is also in {owners[g][1]} for another prompt "
                f"(prompt_id {owners[g][0][0]!r} vs {prompt[0]!r}); group ids must name one prompt"
            )


def _record_groups(owners: dict[str, tuple[tuple, Path]], mine: dict[str, tuple], path: Path) -> None:
    for g, prompt in mine.items():
        owners.setdefault(g, (prompt, path))


def _claim_groups(owners: dict[str, tuple[tuple, Path]], table: pa.Table, path: Path) -> None:
    """Record `path`'s prompt groups in `owners`, after `_check_groups`."""
    mine = group_prompts(table, path)
    _check_groups(owners, mine, path)
    _record_groups(owners, mine, path)


def _shard_keys(table: pa.Table) -> list[tuple[str, str]]:
    """The (run_id, shard_id) pairs of a shard's rows: a shard's name in the run that sampled it (two
    runs name their shards alike: v000000-w0-000000 in both)."""
    return list(dict.fromkeys(zip(table.column("run_id").to_pylist(), table.column("shard_id").to_pylist())))


def _check_shard_keys(names: dict[tuple[str, str], str], keys: list[tuple[str, str]], path: Path) -> None:
    """ShardError naming both shards when `path` claims a run's shard id that another shard (`names`:
    key → its file name) holds with other rows: an altered copy of that shard."""
    taken = next((k for k in keys if k in names), None)
    if taken is not None:
        raise ShardError(
            f"{path}: shard_id {taken[1]!r} of run {taken[0]!r} is also {names[taken]}'s; "
            f"a run's shard ids must name one shard"
        )


@dataclass
class _ReplayShards:
    """The valid, distinct shards of a replay directory, in name order, and those left out."""

    tables: list[pa.Table] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # their file names without .parquet (the ledger's names)
    bad: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # id → content hash
    groups: dict[str, tuple[tuple, Path]] = field(default_factory=dict)  # group_id → (prompt, shard)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (run_id, shard_id) → file name
    first: dict[str, str] = field(default_factory=dict)  # content hash → the file name of its first shard

    def add(self, table: pa.Table, path: Path) -> None:
        """Take `path`'s shard, or skip it with one line: a copy of a taken one's rows, groups that
        are a taken shard's for other prompts, or a taken shard's id with other rows."""
        digest = shard_hash(table)
        if digest in self.first:
            self.duplicates.append(path.name)
            _skip("skipping duplicate shard", f"{path}: the same rows as {self.first[digest]}")
            return
        mine, keys = group_prompts(table, path), _shard_keys(table)
        _check_groups(self.groups, mine, path)  # first: the worse harm, named even when the id is reused too
        _check_shard_keys(self.keys, keys, path)
        _record_groups(self.groups, mine, path)
        self.keys.update(dict.fromkeys(keys, path.name))
        self.tables.append(table)
        self.ids.append(path.stem)
        self.digests[path.stem] = digest
        self.first[digest] = path.name

    def rows(self) -> Rows:
        """Every taken row, its shard id the name of the file it was read from without .parquet (what the
        `shard_id` column says of vespo's own shards), so the ledger counts two runs' alike-named shards
        apart."""
        rows = rows_from_table(pa.concat_tables(self.tables))
        return replace(rows, shard_ids=[i for i, t in zip(self.ids, self.tables) for _ in range(t.num_rows)])


def _read_replay(replay: Path, vocab_size: int) -> _ReplayShards:
    """The valid, distinct shards of `replay`; a bad one is skipped with one line."""
    files = list_shards(replay)
    if not files:
        raise UserError(f"--replay {replay}: no shards (*.parquet) found")
    shards = _ReplayShards()
    for f in files:
        try:
            shards.add(read_shard(f, vocab_size), f)
        except ShardError as e:
            shards.bad.append(f.name)
            _skip("skipping bad shard", str(e))
    if not shards.tables:
        raise UserError(
            f"--replay {replay}: every shard is invalid ({len(shards.bad)} bad, e.g. {shards.bad[0]}; see above)"
        )
    return shards


def replay_batches(cfg: Config, replay: Path, state: dict, vocab_size: int) -> Iterator[RolloutBatch]:
    """Existing shards, in name order, cut into rollout batches of gbs whole prompt groups; a shard
    with the same rows as an earlier one (a renamed copy) is skipped, and so is one that would mix two
    prompts in a group or that holds another's (run_id, shard_id) with other rows. The ledger names a
    replay shard by its file name without .parquet (unique in the directory)."""
    shards = _read_replay(replay, vocab_size)
    rows = shards.rows()
    groups = _groups_in_order(rows)
    gbs = cfg.trainer.rollout_batch_prompts
    index: dict[str, list[int]] = {}
    for r, g in enumerate(rows.group_ids):
        index.setdefault(g, []).append(r)
    num_batches = len(groups) // gbs
    if num_batches == 0:
        raise UserError(
            f"--replay {replay}: {len(groups)} prompt groups < one rollout batch of "
            f"{gbs} (trainer.minibatch_prompts × trainer.staleness)"
        )
    once = state["iteration"] == 0  # counted once per run: a resumed run does not count them again
    while True:
        i = state["iteration"]
        epoch_i = i % num_batches  # replay more steps than data: another epoch over the same shards
        chosen = [r for g in groups[epoch_i * gbs : (epoch_i + 1) * gbs] for r in index[g]]
        batch_rows = rows.select(chosen)
        ids = sorted(set(batch_rows.shard_ids))
        yield RolloutBatch(
            i,
            batch_rows,
            ids,
            quarantined=shards.bad if once else [],
            duplicates=shards.duplicates if once else [],
            digests={s: shards.digests[s] for s in ids},
        )
        once = False


def async_batches(cfg: Config, run_dir: Path, state: dict, workers_alive, vocab_size: int) -> Iterator[RolloutBatch]:
    """Complete shards from async workers; too-stale shards are dropped, bad ones quarantined, and one
    whose rows were already used (a renamed copy) skipped."""
    run = RunDir(run_dir)
    out = run.rollouts
    out.mkdir(parents=True, exist_ok=True)
    seen = {e["shard"] for e in state["ledger"]} | set(state.get("dropped", [])) | set(state.get("duplicates", []))
    used = {e["sha256"]: e["shard"] for e in state["ledger"] if e.get("sha256")}  # content hash → shard
    gbs = cfg.trainer.rollout_batch_prompts
    stream = follow(out, seen=seen, poll_s=0.2, stop=lambda: not workers_alive())
    while True:
        tables, names, dropped, bad, dup, digests = [], [], [], [], [], {}
        owners: dict[str, tuple[tuple, Path]] = {}  # this batch's groups: one prompt each
        t0 = time.perf_counter()
        io_s = 0.0
        while len(owners) < gbs:
            path = next(stream, None)
            if path is None:
                raise UserError(f"{run_dir}: every async rollout worker exited; see {run.worker_log('*')}")
            t1 = time.perf_counter()
            try:
                t = read_shard(path, vocab_size)
            except ShardError as e:
                _quarantine(path, e)
                bad.append(path.name)
                continue
            finally:
                io_s += time.perf_counter() - t1
            version = int(t.column("policy_version")[0].as_py())
            if state["step"] - version > cfg.trainer.max_staleness:
                dropped.append(path.name)
                continue
            digest = shard_hash(t)
            if digest in used:
                dup.append(path.name)
                _skip("skipping duplicate shard", f"{path}: the same rows as {used[digest]}, already used")
                continue
            try:
                _claim_groups(owners, t, path)
            except ShardError as e:
                _quarantine(path, e)
                bad.append(path.name)
                continue
            used[digest] = path.name
            digests[path.name] = digest
            tables.append(t)
            names.append(path.name)
        rows = rows_from_table(pa.concat_tables(tables))
        wait_s = time.perf_counter() - t0
        producers = {n.worker for n in map(parse_shard_name, names) if n is not None}
        yield RolloutBatch(
            state["iteration"],
            rows,
            names,
            wait_s,
            dropped,
            bad,
            dup,
            digests,
            shard_io_s=io_s,
            rollout_s_max=wait_s,
            rollout_workers=len(producers),
            rollout_wall_s=wait_s,
        )


def _quarantine(path: Path, error: ShardError) -> None:
    """Move a shard that failed validation to rollouts/quarantine/ (another reader may have moved it)."""
    _skip("quarantined", str(error))
    aside = quarantine(path.parent)
    aside.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        os.replace(path, aside / path.name)
