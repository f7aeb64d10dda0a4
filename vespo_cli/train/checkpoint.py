"""Checkpoints: HF safetensors weights (loadable by vLLM and transformers) + trainer state.

`checkpoints/step-K/` holds the model (`model.safetensors`, `config.json`, tokenizer), `vespo.json`
(step, policy version), `trainer_state.json` (step, rollout iteration, consumed-shard ledger) and
the optimizer + RNG state (`optim.pt` loaded with `weights_only=True`; a DCP directory under FSDP).
Each checkpoint directory is written under a temporary name and renamed: it is complete or absent.
Its last file, `manifest.json`, holds the sha256 of every other file; a resume verifies it and falls
back to the newest checkpoint that passes. A checkpoint without a manifest (a write cut short by hand,
a copy of part of one) is not trusted: it is named in a warning and skipped like a corrupt one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..fsio import atomic_dir, atomic_write_json, atomic_write_text, remove_temporaries
from ..rundir import MANIFEST, OPTIM_DCP, OPTIM_STATE, TRAINER_STATE, WEIGHTS_META, RunDir, step_dirs
from . import dist


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _hash_files(directory: Path, files: list[str]) -> list[str]:
    """sha256 of each file, several at a time (hashlib releases the GIL on large blocks)."""
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda rel: _sha256(directory / rel), files))


def write_manifest(directory: Path) -> None:
    """Record the sha256 of every file under `directory` in `manifest.json`, written last and atomically."""
    files = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    atomic_write_json(directory / MANIFEST, {"sha256": dict(zip(files, _hash_files(directory, files)))})


def verify_checkpoint(ckpt: Path) -> str | None:
    """None when the manifest is there and every file it lists is there with its sha256; otherwise the
    first problem, naming the file."""
    try:
        listed = json.loads((ckpt / MANIFEST).read_text())["sha256"]
        if not isinstance(listed, dict):
            raise TypeError
    except FileNotFoundError:
        return f"no {MANIFEST} (an incomplete checkpoint: not trusted)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST}: unreadable"
    missing = [rel for rel in listed if not (ckpt / rel).is_file()]
    if missing:
        return f"{missing[0]}: missing"
    for rel, got in zip(listed, _hash_files(ckpt, list(listed))):
        if got != listed[rel]:
            return f"{rel}: sha256 differs from {MANIFEST} (corrupt)"
    return None


def save_weights(model: nn.Module, tokenizer, out: Path, step: int, state_dict=None) -> None:
    """Write an HF checkpoint into the existing directory `out` (rank 0 only)."""
    model.save_pretrained(out, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    (out / WEIGHTS_META).write_text(json.dumps({"step": step, "policy_version": step}) + "\n")


def publish_weights(model: nn.Module, tokenizer, run_dir: Path, step: int, keep: int = 2) -> Path | None:
    """Async: write `published/step-K` and point `published/LATEST` at it; prune old ones."""
    sd = dist.full_state_dict(model)
    if not dist.is_main():
        return None
    run = RunDir(run_dir)
    target = run.published_step(step)
    with atomic_dir(target) as tmp:
        save_weights(model, tokenizer, tmp, step, state_dict=sd)
    atomic_write_text(run.latest, target.name + "\n")
    _prune(run.published, keep + 1, WEIGHTS_META)  # +1: a worker may still be loading the previous one
    return target


def _rng_state() -> dict:
    """Global RNG states as plain data (loadable with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    run_dir: Path, model: nn.Module, tokenizer, optimizer, scheduler, state: dict, keep: int
) -> Path | None:
    """Atomically write checkpoints/step-<state['step']>; collective under FSDP."""
    step = int(state["step"])
    target = RunDir(run_dir).checkpoint(step)
    staging = target.with_name(f".{target.name}.optim")
    sd = dist.full_state_dict(model)
    if dist.world_size() > 1:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if dist.is_main():
            shutil.rmtree(staging, ignore_errors=True)
        dist.barrier()
        dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(staging))
        dist.barrier()
    if dist.is_main():
        with _space_needed(target, sd), atomic_dir(target) as tmp:
            save_weights(model, tokenizer, tmp, step, state_dict=sd)
            if dist.world_size() > 1:
                shutil.move(str(staging), tmp / OPTIM_DCP)
                torch.save({"rng": _rng_state(), "scheduler": scheduler.state_dict()}, tmp / OPTIM_STATE)
            else:
                torch.save(
                    {"optimizer": optimizer.state_dict(), "rng": _rng_state(), "scheduler": scheduler.state_dict()},
                    tmp / OPTIM_STATE,
                )
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
            write_manifest(tmp)
        _prune(target.parent, keep)
    dist.barrier()
    return target


@contextlib.contextmanager
def _space_needed(target: Path, state_dict: dict) -> Iterator[None]:
    """A checkpoint write that fails for space (ENOSPC, or torch's and safetensors' own errors while
    less than a checkpoint is free) becomes an OSError saying how much a checkpoint takes (the last
    one's size, else weights + AdamW moments) and that the last good checkpoint is intact."""
    try:
        yield
    except Exception as e:
        try:
            steps = step_dirs(target.parent)
            last = steps[-1][1] if steps else None
            need = (
                sum(f.stat().st_size for f in last.rglob("*") if f.is_file())
                if last
                else 3 * sum(t.numel() * t.element_size() for t in state_dict.values())
            )
            free = shutil.disk_usage(target.parent).free
        except OSError:
            raise e from None
        if not (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) and free >= need:
            raise
        keep = f"the last good checkpoint, {last.name}, is intact" if last else "no checkpoint was written yet"
        raise OSError(
            errno.ENOSPC,
            f"no space left on device for a checkpoint (one takes about {need / 2**20:,.0f} MiB; {keep})",
            str(target),
        ) from e


def _prune(root: Path, keep: int, marker: str = MANIFEST) -> None:
    """Keep the newest `keep` step-K directories of `root` that hold `marker` (a directory without it
    is not one of ours: left alone, and not counted); remove temporaries of a write killed midway."""
    remove_temporaries(root)  # one writer: this process
    kept = [p for _, p in step_dirs(root) if (p / marker).is_file()]
    for p in kept[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes `verify_checkpoint` (None if there is none yet); each newer
    one that fails is passed to `warn` (default: warnings.warn). UserError when every one fails."""
    steps = [  # one with a manifest is verified whatever it lacks (a missing trainer state is named, not skipped)
        (k, p)
        for k, p in RunDir(run_dir).checkpoint_steps()
        if (p / TRAINER_STATE).is_file() or (p / MANIFEST).is_file()
    ]
    problems = []
    for _, p in reversed(steps):
        problem = verify_checkpoint(p)
        if problem is None:
            for m in problems:
                (warn or (lambda m: warnings.warn(m, stacklevel=4)))(f"{m}; resuming from {p.name} instead")
            return p
        problems.append(f"{p}: {problem}")
    if problems:
        raise UserError(
            f"{problems[0]}; no checkpoint of the run passes verification (move the corrupt ones away to start over)"
        )
    return None


def load_trainer_state(ckpt: Path) -> dict:
    path = ckpt / TRAINER_STATE
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable checkpoint state ({str(e).splitlines()[0][:120]})") from None
    types = {"step": int, "iteration": int, "ledger": list}
    if not isinstance(state, dict) or not all(isinstance(state.get(k), t) for k, t in types.items()):
        raise UserError(f"{path}: not a vespo trainer state (expected step, iteration and ledger)")
    return state


def load_optimizer(ckpt: Path, model: nn.Module, optimizer, scheduler) -> None:
    """Restore optimizer, LR schedule and RNG state (weights_only=True: tensors and plain data only)."""
    path = ckpt / OPTIM_STATE
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol ..." for a foreign pickle
            warnings.simplefilter("ignore", UserWarning)
            blob = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        m = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(e))
        why = (m.group(1) if m else str(e) or type(e).__name__).strip().splitlines()[0].split(". ")[0][:200]
        raise UserError(f"{path}: refused: not a checkpoint of plain tensors and data ({why})") from None
    need = {"rng", "scheduler"} if dist.world_size() > 1 else {"optimizer", "rng", "scheduler"}
    if not isinstance(blob, dict) or not need <= blob.keys():
        raise UserError(f"{path}: not a vespo optimizer state (expected keys {', '.join(sorted(need))})")
    if dist.world_size() > 1:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        osd = {"optim": get_optimizer_state_dict(model, optimizer)}
        dcp.load(osd, checkpoint_id=str(ckpt / OPTIM_DCP))
        set_optimizer_state_dict(model, optimizer, osd["optim"])
    else:
        optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    _set_rng_state(blob["rng"])
