"""The trainer's process group: ranks from the launcher, device selection, ``deepspeed.init_distributed``, and the
broadcast and barrier the set-up and the checkpoints use."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Optional

from uniclip_plugin.ds.errors import PROG


def dist_env(args: argparse.Namespace) -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; a bare ``python train.py`` is one rank."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), args.local_rank


def env_rank() -> int:
    """This process's rank as the launcher set it (0 without a launcher); usable before the group exists."""
    return int(os.environ.get("RANK", "0"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(no_cpu_shm_comm: bool, timeout_s: Optional[float] = None) -> None:
    """``deepspeed.init_distributed`` (nccl on GPUs, gloo or ccl on CPU); a bare ``python`` run gets a 1-rank group.

    Args:
        no_cpu_shm_comm: skip DeepSpeed's shared-memory allreduce op on CPU.
        timeout_s: how long a collective waits for the other ranks (``--dist-timeout``); None: DeepSpeed's default.
    """
    from datetime import timedelta

    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
        )
    if no_cpu_shm_comm:
        import deepspeed.ops

        # A private DeepSpeed switch: there is no public way to skip the shm op's JIT build (docs/UPSTREAM.md).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    kwargs = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    deepspeed.init_distributed(**kwargs)


def start(no_cpu_shm_comm: bool, rank: int, local_rank: int, timeout_s: Optional[float] = None) -> tuple[int, int]:
    """Select this rank's device (on CPU: keep freed memory, as ``open_clip train``) and join the process group.

    Args:
        no_cpu_shm_comm: ``--no-cpu-shm-comm``.
        rank: the launcher's rank (only rank 0 reports the allocator setting).
        local_rank: ``--local_rank``.
        timeout_s: ``--dist-timeout`` (see :func:`init_distributed`).

    Returns:
        (rank, world size) of the joined group.
    """
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        accelerator.set_device(local_rank)
    else:
        from uniclip_plugin.cpu_malloc import keep_freed_memory

        malloc_status = keep_freed_memory()
        if rank == 0:
            print(f"{PROG}: {malloc_status}", file=sys.stderr)
    init_distributed(no_cpu_shm_comm, timeout_s)
    return dist.get_rank(), dist.get_world_size()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (one rank decides, so no rank fails alone and leaves the others waiting)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def agreed(err: BaseException) -> BaseException:
    """Mark ``err`` as raised on every rank at once (after a broadcast), so the ranks may leave together."""
    err.every_rank = True  # type: ignore[attr-defined]
    return err


def leave_together() -> None:
    """Meet every rank, then close the process group: a rank that exits while its peer still holds a gloo connection
    can have that peer aborted by gloo's destructor (SIGABRT). Only for errors every rank raised (:func:`agreed`)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank died or stopped answering (gloo: the peer
    closed its connection; any backend: the ``--dist-timeout`` expired)."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()  # older torch raises plain RuntimeErrors from the backends
    return isinstance(err, RuntimeError) and any(
        k in text for k in ("connection closed by peer", "connection reset by peer", "gloo", "nccl")
    )
