"""The one module that talks to torch.distributed: rank/world helpers and the feature gather of the losses."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """True when a default process group exists (``torch.distributed`` available and initialised)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    return (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)


def _check_group(rank: int, world_size: int) -> None:
    if not is_initialized():
        raise RuntimeError(
            f"world_size={world_size} but torch.distributed has no initialised process group "
            f"(call torch.distributed.init_process_group, or use world_size=1)"
        )
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise RuntimeError(
            f"loss configured for rank {rank} of {world_size}, but the process group says rank "
            f"{dist.get_rank()} of {dist.get_world_size()}"
        )


def gather_universal(
    image_features: torch.Tensor, text_features: torch.Tensor, *, rank: int, world_size: int, gather_with_grad: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather a rank's views and texts along the batch dimension, rank-major.

    Semantics of open_clip's ``gather_features`` (v3.3.0, not horovod), in one collective instead of two:

    * ``gather_with_grad``: ``torch.distributed.nn.all_gather``, whose backward sums every rank's gradient into the
      owner (a reduce-scatter), so ``--local-loss --gather-with-grad`` gives each rank ``world_size ×`` the gradient of
      the global-batch loss w.r.t. its features, which DDP's mean over ranks turns back into the global gradient.
    * without: a plain ``dist.all_gather`` (no gradient) in which this rank's slice is replaced by the live
      ``image_features``/``text_features``, so gradients still reach the local features through the columns.

    Every rank must hold the same ``B`` (all_gather needs equal shapes: open_clip_train drops the last partial batch).

    Args:
        image_features: ``[B, V, D]`` this rank's view embeddings.
        text_features: ``[B, D]`` this rank's text embeddings.
        rank: this process's rank in the default group; world_size: its size.
        gather_with_grad: make the gathered tensors differentiable.

    Returns:
        ``all_image [W·B, V, D]``, ``all_text [W·B, D]`` (rank r's samples at rows ``[r·B, (r+1)·B)``); the inputs
        themselves when ``world_size == 1``.

    Raises:
        RuntimeError: ``world_size > 1`` without an initialised process group, or one of another size or rank.
    """
    if world_size <= 1:
        return image_features, text_features
    _check_group(rank, world_size)
    views = image_features.shape[1]
    dtype = torch.promote_types(image_features.dtype, text_features.dtype)
    # One packed [B, V+1, D] tensor: one collective (and one backward all-to-all) per step instead of two.
    packed = torch.cat([image_features.to(dtype), text_features.to(dtype).unsqueeze(1)], dim=1).contiguous()
    if gather_with_grad:
        # Imported here, not at the top: torch.distributed.nn is missing where torch.distributed is unavailable, and
        # the differentiable all_gather exists only after this import (open_clip #1047).
        from torch.distributed import nn as dist_nn

        gathered = list(dist_nn.all_gather(packed))
    else:
        gathered = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(gathered, packed.detach())
        gathered[rank] = packed  # the live local slice: gradients still reach this rank's features
    everything = torch.cat(gathered, dim=0)  # [W·B, V+1, D]
    return everything[:, :views], everything[:, views]


def gather_rows_with_grad(tensors: Sequence[torch.Tensor], *, rank: int, world_size: int) -> list[torch.Tensor]:
    """All-gather several ``[B, ...]`` tensors along the batch dimension, rank-major, WITH gradient, in one collective.

    ``torch.distributed.nn.all_gather``'s backward sums every rank's gradient into the owner, so with local rows
    (``--local-loss``) rank r receives ``world_size ×`` the global-batch gradient of its inputs, which DDP's mean turns
    back into the global gradient (tests/test_distributed_loss.py). Every rank must hold the same ``B``.

    Args:
        tensors: this rank's tensors, all with the same first dimension ``B``; any float dtypes.
        rank: this process's rank in the default group; world_size: its size.

    Returns:
        The gathered ``[W·B, ...]`` tensors in the input order and dtypes; the inputs themselves when
        ``world_size == 1``.

    Raises:
        RuntimeError: ``world_size > 1`` without an initialised process group, or one of another size or rank.
    """
    if world_size <= 1:
        return list(tensors)
    _check_group(rank, world_size)
    from torch.distributed import nn as dist_nn  # see gather_universal

    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    flat = [t.reshape(t.shape[0], -1) for t in tensors]
    packed = torch.cat([f.to(dtype) for f in flat], dim=1).contiguous()  # [B, ΣF]: one collective
    everything = torch.cat(list(dist_nn.all_gather(packed)), dim=0)  # [W·B, ΣF]
    parts = everything.split([f.shape[1] for f in flat], dim=1)
    return [p.reshape(-1, *t.shape[1:]).to(t.dtype) for p, t in zip(parts, tensors, strict=False)]
