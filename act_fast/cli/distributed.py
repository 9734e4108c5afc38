"""Running under ``torchrun``: one process per rank, gloo on CPU and NCCL on GPUs.

``torchrun --nproc-per-node N act-fast collect ...`` sets ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; a plain run has none and is rank 0 of 1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from act_fast.cli.common import CliError


@dataclass
class Dist:
    """This process's place in the run. ``group`` is None for a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    group: Any = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[int]) -> list[int]:
        """Element-wise sum of integer counters over the ranks (a collective)."""
        if self.group is None:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return [int(v) for v in t.tolist()]

    def barrier(self) -> None:
        """Waits for every rank (before tearing the group down: gloo aborts a process whose peer
        is still using the group)."""
        if self.group is not None:
            import torch.distributed as dist

            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.group is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not under torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise CliError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def rank() -> int:
    """``RANK`` as torchrun sets it (0 when not under torchrun)."""
    return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0


def init(device: str) -> Dist:
    """Joins the process group when there is more than one rank. On CUDA each rank uses
    ``cuda:LOCAL_RANK`` (``--device cuda``, not an explicit index)."""
    world = world_size()
    if world == 1:
        return Dist(device=device)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.device(device).type == "cuda":
        if torch.device(device).index is not None:
            raise CliError(f"--device {device}: under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda")
        if local >= torch.cuda.device_count():
            raise CliError(f"local rank {local} has no GPU: {torch.cuda.device_count()} visible; use fewer processes per node")
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    return Dist(rank, world, local, device, dist.group.WORLD)
