"""A CPU process group for the 2-process tests and benchmarks (``mp.spawn`` workers): one thread, gloo, torn down
cleanly.

Imports torch only, so spawned children stay light.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


@contextlib.contextmanager
def gloo_group(rank: int, world_size: int, init_file: str) -> Iterator[None]:
    """Join a gloo group through ``init_file`` with one OMP thread; on leaving, wait for every rank, then destroy it.

    The barrier runs only when the body succeeded: gloo aborts a rank (SIGABRT) whose peer tears the group down while
    it is still sending, which failed a CI run; a failed body skips it so the error surfaces instead of a hang."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
