"""Resuming a killed `vespo probe` (measure.py): OUT/partial/ keeps each measured K's records, within a K each
draw's sketches, and the θ_K the walk last reached, so a rerun with the same options goes on where the killed
one stopped and refuses to mix in anything that differs from what it measured."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..compare import jsonable
from ..errors import UserError
from ..fsio import atomic_path, atomic_write_json
from .gradients import Batch, gradient_subset

if TYPE_CHECKING:
    from .measure import Behaviour, Session


class Partial:
    """OUT/partial/: the options (options.json), the sketches of the K being measured (K<k>/, KeptSketches)
    and, per measured K, its records with fingerprints of θ_K and of D₀ and D₀′ (K<k>.json). A rerun with other
    options starts over; a rerun whose D₀ or θ_K differs from the killed one's (its draws and steps are seeded,
    so they should not) is refused rather than mixed."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.live = path, settings  # `live`: the measurement adds the reward used, prompt groups, sizes
        self.records: dict[int, list] = {}
        self.thetas: dict[int, str] = {}
        self.settings: dict = {}
        self.behaviour: str | None = None
        options = jsonable(settings)
        try:
            same = json.loads((path / "options.json").read_text()) == options
        except (OSError, ValueError):
            same = False
        if not same:
            if path.exists():
                print(f"note: {path} holds a probe with other options; starting over", file=sys.stderr)
                shutil.rmtree(path)
            path.mkdir(parents=True)
            atomic_write_json(path / "options.json", options)
            return
        for f in sorted(path.glob("K*.json")):
            saved = json.loads(f.read_text())
            self.records[saved["k"]], self.thetas[saved["k"]] = saved["records"], saved["theta"]
            self.settings, self.behaviour = saved["settings"], saved["behaviour"]
        if self.records:
            print(f"note: resuming the probe: K = {sorted(self.records)} measured before ({path})", file=sys.stderr)

    def check_behaviour(self, d: Behaviour) -> None:
        rows = (d.stale.rows, d.redraw.rows)
        mine = _digest([r.response_ids for r in rows], [r.rewards.tolist() for r in rows])
        if self.behaviour is not None and self.behaviour != mine:
            raise UserError(f"{self.path}: the behaviour data drawn again differs from the killed probe's; delete it")
        self.behaviour = mine

    def check_theta(self, k: int, model, blocks: int) -> None:
        if self.thetas[k] != theta_digest(model, blocks):
            raise UserError(f"{self.path}/K{k}.json: θ_{k} reached again differs from the killed probe's; delete it")

    def at(self, k: int, theta: str) -> KeptSketches:
        """Where K's draws keep their sketches until K's records are written (`add`); θ_K's digest `theta`."""
        return KeptSketches(self.path / f"K{k}", theta)

    @property
    def walk(self) -> Path:
        return self.path / "walk"

    def keep_walk(self, k: int, s: Session, optimizer, scheduler) -> None:
        """θ_k with the optimizer, schedule and RNG state (a trainer checkpoint under partial/walk/, the
        previous one replaced), so a probe killed at a later K walks on from θ_k rather than from θ₀. Where
        the disk has no room for it, a note: the probe goes on, and a killed one walks from θ₀."""
        from ..train.checkpoint import save_checkpoint

        try:
            save_checkpoint(self.walk, s.model, s.tokenizer, optimizer, scheduler, _walk_state(k), keep=1)
        except OSError as e:
            shutil.rmtree(self.walk, ignore_errors=True)
            print(f"note: θ_{k} not kept for resuming ({e}); a killed probe walks again from θ₀", file=sys.stderr)

    def resume_walk(self, ks: list[int], s: Session, optimizer, scheduler) -> int:
        """The step of the kept θ (keep_walk), loaded into the live model, optimizer and engine, where every
        K before it was measured; else 0 (the walk starts at θ₀, as it does where the kept θ fails its
        manifest: torn or corrupt)."""
        from ..train.checkpoint import latest_checkpoint, load_optimizer, load_trainer_state

        try:
            ckpt = latest_checkpoint(self.walk, warn=lambda m: None) if self.walk.is_dir() else None
        except UserError as e:  # torn or corrupt: not trusted, and not needed (the walk is seeded)
            print(f"note: {e}; walking again from θ₀", file=sys.stderr)
            shutil.rmtree(self.walk, ignore_errors=True)
            return 0
        if ckpt is None:
            return 0
        step = load_trainer_state(ckpt)["step"]
        if any(k < step and k not in self.records for k in ks) or step > ks[-1]:
            return 0
        load_weights(s.model, s.tokenizer, ckpt)
        load_optimizer(ckpt, s.model, optimizer, scheduler)
        s.sync.publish()
        print(f"note: resuming the walk at θ_{step} ({ckpt})", file=sys.stderr)
        return step

    def add(self, k: int, records: list[dict], theta: str) -> list[dict]:
        saved = {
            "k": k,
            "records": jsonable(records),
            "theta": theta,
            "behaviour": self.behaviour,
            "settings": jsonable(self.live),
        }
        atomic_write_json(self.path / f"K{k}.json", saved)
        shutil.rmtree(self.path / f"K{k}", ignore_errors=True)  # its draws' sketches: in the records now
        return saved["records"]


def _walk_state(k: int) -> dict:
    """θ_k's trainer state (load_trainer_state's keys): the walk consumes no shards."""
    return {"step": k, "iteration": 0, "ledger": []}


def _digest(*values) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def theta_digest(model, blocks: int) -> str:
    digest = hashlib.sha256()
    with gradient_subset(model, blocks) as params:
        for p in params:
            digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class KeptSketches:
    """partial/K<k>/<draw>.safetensors: one draw's sketches and log-probs at θ_K, written as soon as computed,
    so a probe killed within K resumes at its first draw not yet sketched. A kept draw is used only where
    θ_K and the draw's samples are the ones it was computed from (its key); else it is computed again."""

    path: Path
    theta: str

    def _key(self, batch: Batch) -> str:
        return _digest(self.theta, batch.rows.response_ids, batch.rows.rewards.tolist())

    def get(self, name: str, batch: Batch, tick) -> tuple[dict, list] | None:
        from safetensors import safe_open

        path = self.path / f"{name}.safetensors"
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") != self._key(batch):
                    return None
                tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (OSError, ValueError, RuntimeError):  # absent, or torn by a kill: compute it again
            return None
        series = {n.removeprefix("sketch/"): t for n, t in tensors.items() if n.startswith("sketch/")}
        lengths = tensors["logp_lengths"].tolist()
        parts = torch.split(tensors["logp"], [max(n, 0) for n in lengths])
        logp = [x if n >= 0 else None for x, n in zip(parts, lengths, strict=True)]
        tick(len(batch.groups))
        return series, logp

    def put(self, name: str, batch: Batch, computed: tuple[dict, list]) -> tuple[dict, list]:
        from safetensors.torch import save_file

        series, logp = computed
        tensors = {f"sketch/{n}": t.contiguous() for n, t in series.items()}
        tensors["logp"] = torch.cat([x for x in logp if x is not None] or [torch.zeros(0)]).float()
        tensors["logp_lengths"] = torch.tensor([-1 if x is None else len(x) for x in logp], dtype=torch.int64)
        with atomic_path(self.path / f"{name}.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"key": self._key(batch)})
        return computed


def load_weights(model, tokenizer, ckpt: Path) -> None:
    """θ_K of `--run` into the live model, in place (tied weights handled by the HF engine's loader)."""
    from ..rollout.hf import HFEngine

    HFEngine.from_module(model, tokenizer).load_weights(str(ckpt))
