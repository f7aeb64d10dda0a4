"""Instruments a bench worker puts into vespo's own code, by replacing module attributes in the worker
process only: `patch_everywhere` swaps a function for a wrapper in every vespo_cli module that imported
it, and `PolicyLossProbe` captures `policy_loss`'s inputs during a real trainer step so that the
objective's own forward+backward can be timed afterwards on exactly those tensors."""

from __future__ import annotations

import statistics
import sys
import time


def patch_everywhere(original, replacement) -> int:
    """Replace `original` by `replacement` wherever a vespo_cli module holds it; how many places."""
    count = 0
    for name, mod in list(sys.modules.items()):
        if not name.startswith("vespo_cli") or mod is None:
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                setattr(mod, attr, replacement)
                count += 1
    return count


def _leaf(x):
    import torch

    if isinstance(x, torch.Tensor):
        y = x.detach().clone()
        return y.requires_grad_(x.requires_grad)
    return x


class PolicyLossProbe:
    """While `.active`, every `policy_loss` call records its arguments (detached copies; the tensor that
    carried a gradient is a leaf that requires one). `objective_s()` then times policy_loss
    forward+backward on each recorded call (median of `repeats`) and sums over the calls."""

    def __init__(self):
        from .. import objectives

        self.original = objectives.policy_loss
        self.calls: list[tuple[tuple, dict]] = []
        self.active = False

        def wrapped(*args, **kwargs):
            if self.active:
                self.calls.append((tuple(_leaf(a) for a in args), {k: _leaf(v) for k, v in kwargs.items()}))
            return self.original(*args, **kwargs)

        self.places = patch_everywhere(self.original, wrapped)

    def start(self) -> None:
        self.calls = []
        self.active = True

    def stop(self) -> None:
        self.active = False

    def objective_s(self, repeats: int = 3) -> float:
        total = 0.0
        for args, kwargs in self.calls:
            times = []
            for _ in range(repeats):
                a, kw = tuple(_leaf(x) for x in args), {k: _leaf(v) for k, v in kwargs.items()}
                t0 = time.perf_counter()
                loss, _ = self.original(*a, **kw)
                loss.backward()
                times.append(time.perf_counter() - t0)
            total += statistics.median(times)
        return total
