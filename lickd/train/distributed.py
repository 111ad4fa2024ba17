"""One process per device (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; a plain process is a world
of one): the device each rank trains on, and the few collectives the trainer needs. NCCL on
GPUs, gloo on CPUs."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: str = "auto") -> "World":
        """This process's place: its device (``device`` = auto, cuda or cpu), and the process
        group joined when there are several ranks."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(dev)
        if size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", device_id=dev if cuda else None)
        return cls(size, rank, local_rank, dev)

    def average_gradients(self, params) -> None:
        """Averages the gradients of parameters that live outside DDP over the ranks."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one of them (a SIGTERM seen by one rank)."""
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)  # NCCL needs CUDA tensors
        if self.size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value) -> list:
        """``value`` of every rank, in rank order."""
        if self.size == 1:
            return [value]
        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        """Waits for every rank, then tears the process group down (its threads must not outlive
        the interpreter)."""
        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


__all__ = ["World"]
