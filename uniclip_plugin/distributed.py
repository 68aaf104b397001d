"""The one module that talks to torch.distributed: rank/world helpers and the feature gather of the losses."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)


def gather_universal(image_features: torch.Tensor, text_features: torch.Tensor, *, rank: int, world_size: int,
                     gather_with_grad: bool, local_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather ``image_features [B, V, D]`` and ``text_features [B, D]`` along dim 0 → ``[W·B, V, D]``, ``[W·B, D]``.

    Same semantics as open_clip's ``gather_features`` (which we call): with ``gather_with_grad`` the gather is
    differentiable (``torch.distributed.nn.all_gather``: its backward sums every rank's gradient into the owner), so
    ``--local-loss --gather-with-grad`` gives exactly the global-batch gradient after DDP's averaging.
    """
    if world_size <= 1:
        return image_features, text_features
    import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.all_gather: open_clip #1047)
    from open_clip.loss import gather_features
    return gather_features(image_features, text_features, local_loss=local_loss, gather_with_grad=gather_with_grad,
                           rank=rank, world_size=world_size)
