"""GRPO group-normalised advantages (docs/objectives.md "Advantages")."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards, group_ids) -> Tensor:
    """GRPO group normalisation A_i = (r_i − mean_g r) / (std_g r + 1e-6), population std; a group of
    identical rewards gives exactly 0. group_ids: [B] tensor or sequence of hashables."""
    r = torch.as_tensor(rewards)
    out_dtype = r.dtype if r.is_floating_point() else torch.float32
    r = r.to(torch.float64).reshape(-1)
    if isinstance(group_ids, Tensor):
        _, gid = torch.unique(group_ids.reshape(-1), return_inverse=True)
    else:
        index: dict = {}
        gid = torch.tensor([index.setdefault(g, len(index)) for g in group_ids], dtype=torch.long)
    gid = gid.to(r.device)
    if gid.numel() != r.numel():
        raise ValueError(f"group_advantages: {r.numel()} rewards but {gid.numel()} group ids")
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=r.device)
    count = zeros.index_add(0, gid, torch.ones_like(r))
    mean = zeros.index_add(0, gid, r) / count
    centred = r - mean[gid]
    var = zeros.index_add(0, gid, centred * centred) / count
    lo = zeros.scatter_reduce(0, gid, r, "amin", include_self=False)
    hi = zeros.scatter_reduce(0, gid, r, "amax", include_self=False)
    adv = centred / (var.sqrt()[gid] + 1e-6)
    return torch.where((hi == lo)[gid], 0.0, adv).to(out_dtype)
