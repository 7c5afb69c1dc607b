"""Training on several processes: ``torchrun`` and DistributedDataParallel.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a prune joins the
process group (NCCL for CUDA tensors, gloo for the CPU's: the gates live on
the CPU) and splits its work so:

- every rank trains (gate training, fine-tuning) its shard of the data, the
  model wrapped in DDP, the gates' gradients averaged by hand (they are not
  the model's parameters); the state is broadcast from rank 0 at the end, so
  that every rank ends with the same weights, BatchNorm statistics included;
- rank 0 alone measures (the base, candidates, the export), scores, decides
  the widths and writes files; the other ranks receive what it decided.

Outside torchrun every function here is the single-process identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from latprune.errors import SpecError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 outside torchrun, and in the work
    rank 0 does alone: :func:`on_main`)."""
    if dist.is_available() and dist.is_initialized() and not _ALONE:
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def join(device_type: str) -> World:
    """Join the process group torchrun's environment describes (once; NCCL for CUDA tensors with
    ``cuda``, gloo for the CPU's: the gates and the LUT live there); the single-process world without one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return world()
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise SpecError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun")
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo")
        _JOINED.append(True)
    return world()


_JOINED: list[bool] = []  # the process group was joined here (not by the caller)
_ALONE: list[bool] = []  # rank 0 is in on_main's work: the other ranks wait, so no collective may run


def leave(done: bool) -> None:
    """Leave the process group :func:`join` joined, once every rank is ``done`` (a barrier; an error
    leaves at once): a process that exits with the group alive can abort in its threads."""
    if not _JOINED or not dist.is_initialized():
        return
    if done:
        dist.barrier()
    dist.destroy_process_group()
    _JOINED.clear()


def on_main(work: Callable[[], T]) -> T:
    """``work()`` run by rank 0 alone, its result (or the error it raised) on every rank: the
    other ranks wait for it, and all raise together rather than wait for a rank that failed.
    Inside ``work`` rank 0 is a world of its own (training there runs without DDP)."""
    if not world().distributed:
        return work()
    outcome: tuple[bool, Any] = (True, None)
    if world().main:
        _ALONE.append(True)
        try:
            outcome = (True, work())
        except Exception as exc:  # every rank raises it below
            outcome = (False, exc)
        finally:
            _ALONE.pop()
    ok, value = broadcast(outcome)
    if not ok:
        raise value
    return value


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not world().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not world().distributed:
        return [value]
    values: list[Any] = [None] * world().size
    dist.all_gather_object(values, value)
    return values


def same_everywhere(what: str, described: dict[str, Any]) -> None:
    """Refuse a world whose ranks were given different ``described`` arguments, naming them."""
    values = gather(described)
    for rank, other in enumerate(values):
        differ = sorted(k for k in {**described, **other} if values[0].get(k) != other.get(k))
        if differ:
            raise SpecError(f"rank {rank} was given other {what} than rank 0 (they differ in: {', '.join(differ)}); "
                            "give every rank the same command")


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers into ``module`` on every rank."""
    broadcast_tensors(module.state_dict().values())


# How far apart the ranks' trained tensors were before each :func:`synchronise` (max |difference|):
# DDP keeps the parameters and the averaged gates equal, so 0 unless something diverged.
DIFFERENCES: dict[str, float] = {}


def synchronise(name: str, module: nn.Module, extra: Iterable[torch.Tensor] = ()) -> None:
    """Record (in :data:`DIFFERENCES`) how far apart the ranks' parameters of ``module`` and
    ``extra`` tensors are, then set ``module``'s state and ``extra`` to rank 0's on every rank."""
    if not world().distributed:
        return
    extra = list(extra)
    worst = 0.0
    with torch.no_grad():
        for tensor in [*module.parameters(), *extra]:
            high, low = _carried(tensor.detach().clone()), _carried(tensor.detach().clone())
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            worst = max(worst, float((high - low).abs().max()) if tensor.numel() else 0.0)
    DIFFERENCES[name] = max(worst, DIFFERENCES.get(name, 0.0))
    broadcast_state(module)
    broadcast_tensors(extra)


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Rank 0's values of ``tensors`` on every rank."""
    if not world().distributed:
        return
    with torch.no_grad():
        for tensor in tensors:
            wire = _carried(tensor.data)
            dist.broadcast(wire, src=0)
            if wire is not tensor.data:
                tensor.data.copy_(wire)


def average_gradients(tensors: Iterable[torch.Tensor]) -> None:
    """Average the ``.grad`` of ``tensors`` (not a DDP model's parameters) over the ranks."""
    w = world()
    if not w.distributed:
        return
    for tensor in tensors:
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        wire = _carried(tensor.grad)
        dist.all_reduce(wire, op=dist.ReduceOp.SUM)
        tensor.grad.copy_(wire / w.size)


def _carried(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, or a copy on this rank's GPU where the process group has no backend for its
    device (a CPU tensor in a group made with ``nccl`` alone, as a caller's own may be)."""
    types = getattr(dist.group.WORLD, "_device_types", None)
    if types is None or any(d.type == tensor.device.type for d in types):
        return tensor
    return tensor.to(torch.device("cuda", torch.cuda.current_device()))


def wrapped(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DDP when the world has several ranks (itself otherwise)."""
    if not world().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
