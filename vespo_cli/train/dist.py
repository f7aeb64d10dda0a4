"""torch.distributed glue: one process per device under `torchrun`, FSDP2 sharding, tiny helpers.

Without `torchrun` (WORLD_SIZE unset) everything here is a no-op and the trainer is one process.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init() -> torch.device:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """In-place all-reduce of `t`; a CPU tensor under NCCL (which reduces CUDA tensors only) goes
    through a copy on this rank's GPU."""
    if not dist.is_initialized():
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        return t.copy_(on_gpu)
    dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    return _all_reduce(t, dist.ReduceOp.MAX)


def sum_and_max(values: list[float]) -> tuple[list[float], list[float]]:
    """Per-position sums and maxima of `values` over the ranks (itself in one process)."""
    t = torch.tensor(values, dtype=torch.float64)
    return all_reduce_sum(t.clone()).tolist(), all_reduce_max(t.clone()).tolist()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_model(model: nn.Module, bf16_params: bool = False) -> nn.Module:
    """FSDP2: shard every decoder layer, then the root (parameters become DTensors). bf16_params:
    gather the parameters in bf16 for compute and reduce gradients in fp32 (train/precision.py)."""
    if world_size() == 1:
        return model
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs = {"mp_policy": policy} if policy is not None else {}
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers or []:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model: nn.Module, every_rank: bool = False):
    """Unsharded state dict (collective under FSDP; every rank must call it): on rank 0's CPU (other
    ranks get an empty dict), or with `every_rank` on every rank, on its device (each rank's engine),
    as (name, tensor) pairs gathered one tensor at a time while the caller consumes them (every rank
    must consume all, in order): an engine's `load_state_dict` never holds the whole model unsharded."""
    if world_size() == 1:
        return {k: v.detach() for k, v in model.state_dict().items()}
    if every_rank:
        return _gathered_tensors(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _gathered_tensors(model: nn.Module):
    """(name, full tensor) of `model`'s state dict, each FSDP2 shard all-gathered as it is reached."""
    from torch.distributed.tensor import DTensor

    for name, t in model.state_dict().items():
        yield name, (t.full_tensor() if isinstance(t, DTensor) else t).detach()
