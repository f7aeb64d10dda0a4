"""The seed rules of a run, each written once: every random stream derives from `trainer.seed` here.

  chunk_seed(seed, k)    = seed · 100003 + k    sampling seed of chunk k of the prompt stream (the
                                                rollout batch of a sync run, shard k of `vespo rollout`,
                                                an async worker's shard seq k)
  stream_seed(seed, k)   = seed · 1000003 + k   the trainer's minibatch shuffle of rollout batch k, and
                                                the probe's draws (k = 0)
  offset_seed(seed, k)   = seed + 1000003 · k   the k-th repeat of an eval's sampling settings
  seed_all(seed)                                torch's, NumPy's and Python's global RNGs at a run's start

The two strides are primes, so the streams of different seeds and indices do not collide in practice.
"""

from __future__ import annotations

CHUNK_STRIDE = 100_003
STREAM_STRIDE = 1_000_003


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk `chunk` of the prompt stream under `trainer.seed` = `seed`."""
    return seed * CHUNK_STRIDE + chunk


def stream_seed(seed: int, index: int) -> int:
    """The seed of the trainer-side random stream `index` (the minibatch shuffle of rollout batch `index`)."""
    return seed * STREAM_STRIDE + index


def offset_seed(seed: int, index: int) -> int:
    """`seed` moved to its `index`-th repeat (an eval chunk's sampling seed)."""
    return seed + STREAM_STRIDE * index


def seed_all(seed: int) -> None:
    """Seed every global RNG a run draws from (torch, NumPy, Python's `random`) with `trainer.seed`
    (at most 2^31 − 1), so two fresh runs start from the same states; checkpoints save and restore all
    three (train/checkpoint.py)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
