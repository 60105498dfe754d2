"""Data parallelism for ``train()``: one model over several processes (``torchrun``).

    torchrun --nproc_per_node 8 -m mimetic.cli train --task copy ...            # DDP
    torchrun --nproc_per_node 8 -m mimetic.cli train --parallel fsdp ...        # FSDP2

``train()`` looks at the process group (or, if none is set up yet, at torchrun's
``WORLD_SIZE``/``RANK``/``LOCAL_RANK``) and, with more than one process, trains through
:class:`DataParallel` (``torch.nn.parallel.DistributedDataParallel``) or
:class:`FullyShardedParallel` (FSDP2, ``torch.distributed.fsdp.fully_shard``), chosen by
``TrainConfig.parallel``. One process gets :class:`SingleProcess`, whose every hook is the
plain single-device code, so ``train()`` has one loop for both.

What stays the same as one process with the same ``batch_size`` (the *global* batch):

* data: every rank draws the global batch of step s from the same ``("train", seed, s)``
  stream and keeps its own rows, ``batch_size / world_size`` of them (a contiguous slice);
* loss and gradient: each rank scales its local mean loss by its share of the scored
  positions, so the all-reduced (averaged) gradient is the gradient of the global masked
  mean; the loss that is logged and checked for NaN is the global one, the same on every rank;
* files: only rank 0 writes metrics, checkpoints and ``result.json``; checkpoints hold the
  full (unsharded) model and optimizer state in the one-process format, so a run resumes
  on any world size, with or without FSDP.

Evaluation runs on every rank on the same batches (FSDP2 needs every rank for a forward),
so every rank takes the same early-stop decision.
"""
from __future__ import annotations

import copy
import gc
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

#: Values of ``TrainConfig.parallel``.
PARALLEL_MODES = ("ddp", "fsdp")


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_size() -> int:
    """Processes in the default group, else torchrun's count (1 when neither)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else env_world_size()


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """True on the rank that writes files (rank 0), and in a single process."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` without an index means GPU ``LOCAL_RANK`` (one per process)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init_from_env(device: torch.device) -> None:
    """Join torchrun's process group if it is not set up yet: NCCL for CUDA, gloo for the CPU."""
    if dist.is_initialized():
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def shutdown() -> None:
    """Leave the process group (if any) once every rank is here; the CLI calls it before exiting.

    Objects in reference cycles (a caught exception's traceback holding a DDP wrapper, whose
    reducer holds the group) are freed first: otherwise the group outlives this call and is torn
    down during interpreter exit, when gloo's worker threads can no longer take the GIL to free
    the tensors of their last collective, and the process aborts.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def local_batch_size(batch_size: int, world: int) -> int:
    """The rows of the global batch one of ``world`` ranks trains; ValueError if they do not divide."""
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {world} processes "
                         "(each trains batch_size / world_size rows of the global batch)")
    return batch_size // world


class SingleProcess:
    """The hooks of ``train()`` for one process: the plain single-device behaviour."""

    rank = 0
    world_size = 1
    is_main = True

    def __init__(self, device: torch.device):
        self.device = device

    def place(self, model: nn.Module) -> None:
        """Put ``model`` where training starts: on the device."""
        model.to(self.device)

    def shard(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's rows of a global batch (each tensor (B, ...) -> (B / world, ...))."""
        return batch

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training forward goes through (``model`` keeps its identity)."""
        return model

    def reduce_loss(self, loss: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(loss to backpropagate, global loss value) from the local masked mean ``loss``
        (scalar) over the scored positions ``mask`` (b, L) of this rank."""
        return loss, loss.item()

    def clip_grad_norm(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip the gradients to global norm ``max_norm``; returns the norm as a plain tensor."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def gather_model(self, model: nn.Module) -> nn.Module:
        """A module holding the full weights on the main rank (collective under FSDP)."""
        return model

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full ``state_dict()`` in the one-process format (collective under FSDP)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a one-process-format optimizer ``state`` (as checkpoints hold it)."""
        optimizer.load_state_dict(state)

    def barrier(self) -> None:
        """Wait for every rank (so that files rank 0 wrote exist when any rank goes on)."""

    def from_main(self, value: Any) -> Any:
        """The main rank's ``value`` (picklable) on every rank (a collective: every rank calls it)."""
        return value


class DataParallel(SingleProcess):
    """DistributedDataParallel over the default process group: a full replica per rank."""

    def __init__(self, device: torch.device, batch_size: int):
        super().__init__(device)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.is_main = self.rank == 0
        self.local_batch = local_batch_size(batch_size, self.world_size)

    def shard(self, batch):
        # The whole batch is drawn on every rank (the tasks draw a batch in one go from one
        # generator, so a rank cannot draw only its rows and get the same numbers); the rows
        # are cheap next to a training step.
        lo = self.rank * self.local_batch
        return tuple(t[lo:lo + self.local_batch] for t in batch)

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers off: the models' buffers are constants set at init, equal on every
        # rank; broadcasting them would cost a collective per forward.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False,
                                       gradient_as_bucket_view=True)

    def reduce_loss(self, loss, mask):
        n = mask.sum().to(loss.dtype)
        # One all-reduce gives both the global scored count and the global loss sum.
        stats = torch.stack([loss.detach() * n, n])
        dist.all_reduce(stats)
        total, count = stats.unbind()
        # DDP/FSDP average gradients over ranks: scale so the average is d(global mean)/dw.
        scaled = loss * (n * self.world_size / count)
        return scaled, (total / count).item()

    def barrier(self):
        dist.barrier()

    def from_main(self, value):
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class FullyShardedParallel(DataParallel):
    """FSDP2: each block (every element of the model's ``nn.ModuleList``s) and the root
    sharded over the ranks with ``fully_shard``; parameters become DTensors in place.

    Checkpoints gather the full weights into a CPU copy of the model kept on rank 0, so
    they are the same files a one-process run writes.
    """

    def __init__(self, device: torch.device, batch_size: int):
        super().__init__(device, batch_size)
        self._full: nn.Module | None = None

    def place(self, model):
        # Left where it is (the host, usually): ``fully_shard`` moves one block at a time to
        # the device and keeps this rank's shard, so the whole model is never on one GPU.
        pass

    def wrap(self, model):
        from torch.distributed.device_mesh import init_device_mesh

        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch < 2.6 kept FSDP2 under _composable
            from torch.distributed._composable.fsdp import fully_shard

        if self.is_main:  # the vessel for checkpoints: the full model, on the host
            self._full = copy.deepcopy(model).to("cpu")
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def clip_grad_norm(self, params, max_norm):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def gather_model(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self._full is not None:
            self._full.load_state_dict(full)
        return self._full if self._full is not None else model

    def optimizer_state(self, optimizer):
        state = optimizer.state_dict()
        # Same keys and order on every rank, so the full_tensor() collectives line up.
        full = {pid: {k: _full_tensor(v) for k, v in s.items()} for pid, s in state["state"].items()}
        return {"state": full, "param_groups": state["param_groups"]}

    def load_optimizer_state(self, optimizer, state):
        try:
            from torch.distributed.tensor import DTensor
        except ImportError:  # torch < 2.5
            from torch.distributed._tensor import DTensor

        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = {}
        for pid, s in state["state"].items():
            p = params[int(pid)]
            sharded[pid] = {
                k: _shard_like(v.to(self.device), p) if isinstance(p, DTensor) and torch.is_tensor(v)
                and v.shape == p.shape else v
                for k, v in s.items()
            }
        optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})


def _shard_like(full: torch.Tensor, param) -> Any:
    """``full`` (held by every rank) as a DTensor placed like the DTensor ``param``."""
    from torch.distributed.tensor import distribute_tensor

    try:  # src_data_rank=None: every rank has the full tensor, each keeps its shard, no traffic
        return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    except TypeError:  # torch < 2.7: scattered from rank 0 (the same values)
        return distribute_tensor(full, param.device_mesh, param.placements)


def _full_tensor(v: Any) -> Any:
    return v.full_tensor().cpu() if hasattr(v, "full_tensor") else v


def parallel_for(config, device: torch.device) -> SingleProcess:
    """The hooks for this process: ``SingleProcess`` alone, else DDP or FSDP2 per
    ``config.parallel`` (joining torchrun's process group if needed)."""
    if world_size() <= 1:
        return SingleProcess(device)
    device = local_device(device)
    if config.cuda_graph:
        raise ValueError("cuda_graph=True does not work across processes yet; "
                         "use cuda_graph=None or False with torchrun")
    init_from_env(device)
    cls = FullyShardedParallel if config.parallel == "fsdp" else DataParallel
    return cls(device, config.batch_size)


__all__ = [
    "PARALLEL_MODES",
    "SingleProcess",
    "DataParallel",
    "FullyShardedParallel",
    "parallel_for",
    "is_main_process",
    "world_size",
    "rank",
    "shutdown",
]
