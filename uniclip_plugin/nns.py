"""DeCLIP's nearest-neighbour supervision (NNS) memory bank: a FIFO queue of L2-normalised text features.

Upstream: ``prototype/model/utils/nnclr_modules/{nn_memory_bank,memory_bank_cuda}.py`` in Sense-GVT/DeCLIP (Lightly's
NNCLR bank): ``[D, size]`` bank initialised with random unit vectors (so lookups before the bank is full may return
random vectors: we keep that), top-1 cosine neighbour looked up BEFORE the update, FIFO enqueue with wrap-around.

Where we differ from DeCLIP's code, and why:

* The queue is a persistent buffer ``[size, D]`` (checkpointed and resumed; Lightly keeps it off the state dict) that
  DDP must not broadcast from rank 0 every step: the owning model lists it in ``_ddp_params_and_buffers_to_ignore``
  (``DeCLIP.__init__``), which ``torch.nn.parallel.DistributedDataParallel`` honours.
* ``enqueue`` all-gathers the features (no gradient), so every rank holds the same global queue (DeCLIP enqueues each
  rank's local features only, so ranks hold different queues; with ours, W processes = 1 process on the W·B batch).
* fp32 queue (DeCLIP: fp16 on the GPU); it follows the model's dtype under ``--precision pure_*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed


class NNMemoryBank(nn.Module):
    """FIFO queue of ``size`` unit vectors of dimension ``dim`` with top-1 cosine lookup.

    Buffers (both persistent, both in the state dict): ``queue [size, dim]`` and ``ptr []`` (int64, next write row).
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"NN memory bank size must be ≥ 1, got {size}")
        # random unit vectors, as Lightly/DeCLIP (drawn from the global RNG: same on every rank under a common seed)
        self.register_buffer("queue", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def lookup(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest queue entry (cosine, top-1) of each row of ``features [..., dim]``, L2-normalised, no gradient."""
        query = F.normalize(features.detach().to(self.queue.dtype), dim=-1)
        flat = query.reshape(-1, query.shape[-1])
        index = (flat @ self.queue.T).argmax(dim=-1)  # [N]
        return F.normalize(self.queue[index], dim=-1).view_as(query).to(features.dtype)

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor, gather: bool = True) -> None:
        """Write ``features`` at ``ptr`` in FIFO order, wrapping around; normalised here.

        ``features`` is ``[N, dim]`` or ``[N, K, dim]`` (K groups per sample, written group by group: all samples'
        group 0, then group 1, ...). With ``gather``, every rank's samples (rank-major) are written on every rank, so a
        W-process run writes exactly what one process with the W·B batch writes. No host sync (index scatter).
        """
        rank, world = distributed.rank_and_world()
        feats = F.normalize(features.detach().to(self.queue.dtype), dim=-1)
        if gather and world > 1:
            feats = distributed.gather_rows_with_grad([feats.contiguous()], rank=rank, world_size=world)[0]
        if feats.dim() == 3:
            feats = feats.transpose(0, 1).reshape(-1, feats.shape[-1])  # group-major
        if feats.shape[0] > self.size:  # only the newest `size` rows survive a write longer than the queue
            skipped = feats.shape[0] - self.size
            feats = feats[skipped:]
            self.ptr.add_(skipped).remainder_(self.size)
        rows = (self.ptr + torch.arange(feats.shape[0], device=self.queue.device)) % self.size
        self.queue.index_copy_(0, rows, feats)
        self.ptr.add_(feats.shape[0]).remainder_(self.size)
