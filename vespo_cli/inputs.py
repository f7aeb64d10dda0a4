"""What a run consumes, below train/ and rollout/ (both consume it): the prompt stream (`prompt_chunk`)
and the inputs that decide which rows each optimizer step takes.

Exactly-once under changed inputs: what a run consumes is recorded at its start and compared on resume.

Which rows each optimizer step takes is decided by a few inputs: the mode, the replay directory's
shards (replay batches are cut from them in name order), the batch sizes (`trainer.minibatch_prompts`,
`trainer.staleness`, the rollout batch `mbs × N`, `rollout.n`), the prompt stream (`data.*`,
`trainer.seed`) and, async, the number of workers (worker k takes prompt chunks k, k+K, …). A resumed
run that sees other values cuts its remaining batches differently, so samples already consumed (in
the checkpoint's ledger) would be used again, or others skipped. `record_inputs` writes them to
`inputs.json` when a run starts; `check_inputs` compares them on `--resume` (with the ledger: every
consumed replay shard must still be there, with the same rows) and refuses with one line naming what
changed (the trainer calls both through train/setup.settle_inputs). Settings that do not decide which
rows a step takes (`trainer.steps`, `trainer.lr`, …) may be edited in config.yaml between runs.

`vespo rollout` into an existing shard directory: `check_rollout_inputs` keeps `rollout-inputs.json`
beside the shards (their names are `v<V>-<worker>-<chunk>`, chunks of `trainer.minibatch_prompts`
prompts, so another batch size, n or prompt stream would sample prompts again or skip some).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from .config import Config
from .data import Problem, arith_problem, load_problems
from .errors import UserError
from .fsio import atomic_write_json
from .rundir import INPUTS, ROLLOUT_INPUTS, RunDir, rollout_inputs
from .shards import HASH_KEY, list_shards, read_shard, shard_hash

# --------------------------------------------------------------------------- the prompt stream


@functools.lru_cache(maxsize=4)
def _problem_pool(source: str, seed: int, shuffle: bool) -> tuple[Problem, ...]:
    """A finite prompt source, loaded once (`arith` is drawn by index instead: prompt_chunk)."""
    return tuple(load_problems(source, seed=seed, shuffle=shuffle))


def prompt_chunk(cfg: Config, start: int, size: int) -> list[Problem]:
    """Problems start..start+size of the run's prompt stream (a finite dataset wraps around: epochs)."""
    d = cfg.data
    if d.train == "arith":  # procedural: an endless deterministic stream, random access by index
        return [arith_problem(cfg.trainer.seed, d.difficulty, i) for i in range(start, start + size)]
    pool = _problem_pool(d.train, cfg.trainer.seed, d.shuffle)
    if not pool:
        raise UserError(f"data.train={d.train}: no problems")
    return [pool[(start + i) % len(pool)] for i in range(size)]


# --------------------------------------------------------------------------- recorded inputs

VERSION = 1

_SETTINGS: dict[str, Callable[[Config], object]] = {  # config key → value (what config.yaml says)
    "trainer.minibatch_prompts": lambda c: c.trainer.minibatch_prompts,
    "trainer.staleness": lambda c: c.trainer.staleness,
    "trainer.rollout_batch_prompts": lambda c: c.rollout_batch_prompts,
    "rollout.n": lambda c: c.rollout.n,
    "trainer.seed": lambda c: c.trainer.seed,
    "trainer.async_workers": lambda c: c.trainer.async_workers,
    "data.train": lambda c: c.data.train,
    "data.difficulty": lambda c: c.data.difficulty,
    "data.shuffle": lambda c: c.data.shuffle,
    "model.path": lambda c: c.model.path,
}
_ROLLOUT_SETTINGS = (
    "trainer.minibatch_prompts",
    "rollout.n",
    "trainer.seed",
    "data.train",
    "data.difficulty",
    "data.shuffle",
)


def settings(cfg: Config, keys=tuple(_SETTINGS)) -> dict[str, object]:
    return {k: _SETTINGS[k](cfg) for k in keys}


def shard_digests(directory: str | os.PathLike) -> dict[str, str | None]:
    """Shard file name → its content hash, from the parquet footer (no rows read: `read_shard` checks
    it against the rows when the shard is consumed) or, for a shard without one, from its rows; None
    for a file that cannot be read (replay skips it)."""
    out: dict[str, str | None] = {}
    for f in list_shards(directory):
        try:
            if not f.is_file():
                raise OSError("not a regular file")
            digest = (pq.read_metadata(f).metadata or {}).get(HASH_KEY)
            out[f.name] = digest.decode() if digest else shard_hash(read_shard(f))  # another producer's shard
        except Exception:  # a torn, corrupt or FIFO file: replay skips it, so it only counts by name
            out[f.name] = None
    return out


def _replay_record(replay: Path) -> dict:
    return {"path": str(Path(replay).resolve()), "shards": shard_digests(replay)}


def record_inputs(run_dir: str | os.PathLike, cfg: Config, mode: str, replay: str | os.PathLike | None) -> dict:
    """Write `run_dir/inputs.json`: the mode, the settings that cut batches and the replay shards."""
    rec = {
        "version": VERSION,
        "mode": mode,
        "settings": settings(cfg),
        "replay": _replay_record(Path(replay)) if replay is not None else None,
    }
    atomic_write_json(RunDir(run_dir).inputs, rec)
    return rec


def read_inputs(run_dir: str | os.PathLike) -> dict | None:
    """The recorded inputs (None when the run has none: it started before vespo recorded them)."""
    path = RunDir(run_dir).inputs
    try:
        rec = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable run file ({str(e).splitlines()[0][:120]}); restore it") from None
    ok = (
        isinstance(rec, dict)
        and rec.get("mode") in ("sync", "replay", "async")
        and isinstance(rec.get("settings"), dict)
        and (
            rec.get("replay") is None
            or isinstance(rec["replay"], dict)
            and isinstance(rec["replay"].get("shards"), dict)
        )
    )
    if not ok:
        raise UserError(f"{path}: not a vespo inputs record (expected mode, settings and replay); restore it")
    return rec


def _show(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v)


def _shard_changes(then: dict[str, str | None], now: dict[str, str | None]) -> list[str]:
    added = sorted(set(now) - set(then))
    removed = sorted(set(then) - set(now))
    changed = sorted(n for n in set(then) & set(now) if then[n] != now[n])
    return [f"{n} added" for n in added] + [f"{n} removed" for n in removed] + [f"{n} rewritten" for n in changed]


def check_inputs(
    run_dir: str | os.PathLike,
    cfg: Config,
    mode: str,
    replay: str | os.PathLike | None,
    ledger: list[dict] | None = None,
) -> None:
    """On resume: UserError naming the first input that differs from `inputs.json`, or a consumed
    replay shard (in `ledger`) that is gone or has other rows now. A run without `inputs.json` (older
    vespo) gets one recorded now, after the ledger check."""
    run_dir = Path(run_dir)
    rec = read_inputs(run_dir)
    where = f"--resume {run_dir}"
    now_replay = _replay_record(Path(replay)) if replay is not None else None
    if rec is not None:
        if rec["mode"] != mode:
            then = f"{rec['mode']}" + (f" from {rec['replay']['path']}" if rec.get("replay") else "")
            raise UserError(
                f"{where}: the run started in {then} mode ({INPUTS}), but run.json now says {mode}; restore run.json"
            )
        for key, get in _SETTINGS.items():  # in this order: staleness is named before the gbs it implies
            then = rec["settings"].get(key, get(cfg))
            if get(cfg) != then:
                raise UserError(
                    f"{where}: {key} is {_show(get(cfg))} in config.yaml but the run started with "
                    f"{_show(then)}; the remaining batches would be cut differently (samples used twice or "
                    f"skipped): set it back, or start a new run"
                )
        if rec.get("replay") is not None and now_replay is not None:
            changes = _shard_changes(rec["replay"]["shards"], now_replay["shards"])
            if changes:
                more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
                raise UserError(
                    f"{where}: the replay directory {replay} changed since the run started "
                    f"({', '.join(changes[:3])}{more}); restore it, or start a new run"
                )
    if now_replay is not None and ledger:
        have = {d for d in now_replay["shards"].values() if d}
        names = set(now_replay["shards"])
        for e in ledger:
            digest, name = e.get("sha256"), str(e.get("shard", ""))
            if digest and digest not in have or not digest and name not in names and f"{name}.parquet" not in names:
                raise UserError(
                    f"{where}: shard {name} (consumed at step {e.get('first_step', '?')}) is no longer in the "
                    f"replay directory {replay} with the same rows; restore it, or start a new run"
                )
    if rec is None:
        record_inputs(run_dir, cfg, mode, replay)


def check_rollout_inputs(out: str | os.PathLike, cfg: Config) -> None:
    """`vespo rollout` into `out`: refuse when its shards were sampled with another batch size, n or
    prompt stream (`rollout-inputs.json` beside them); record the settings for a new directory."""
    out = Path(out)
    path = rollout_inputs(out)
    now = settings(cfg, _ROLLOUT_SETTINGS)
    try:
        then = json.loads(path.read_bytes())
    except FileNotFoundError:
        then = None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({str(e).splitlines()[0][:120]}); restore it") from None
    if then is not None:
        if not isinstance(then, dict) or not isinstance(then.get("settings"), dict):
            raise UserError(f"{path}: not a vespo rollout inputs record; restore it")
        for key in _ROLLOUT_SETTINGS:
            value = then["settings"].get(key, now[key])
            if now[key] != value:
                raise UserError(
                    f"{out}: its shards were sampled with {key}={_show(value)}, now {_show(now[key])}: continuing "
                    f"would sample prompts twice or skip some (or mix group sizes); use {key}={_show(value)}, or "
                    f"another output directory"
                )
        return
    if list_shards(out):  # shards from an older vespo, no record: the chunking they used is unknown
        raise UserError(
            f"{out}: holds shards without {ROLLOUT_INPUTS} (written by an older vespo): their batch size is "
            f"unknown, so prompts could be sampled twice; use another output directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"version": VERSION, "settings": now})
