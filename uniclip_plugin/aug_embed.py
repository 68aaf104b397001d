"""Augmentation-aware embedding (docs/METHODS.md §UniCLIP.4, inferred AugSelf-style design).

The image tower's embedding ``h`` of a view and that view's augmentation parameters ``a`` are fused into the universal
space: ``concat``: ``z = W [h ; e(a)]``; ``add``: ``z = h + e(a)``, with ``e`` a 2-layer MLP on the normalised
parameter vector. Both start as the identity on ``h`` (W = [I, 0]; e's last layer zero), so at initialisation the model
equals plain CLIP and the ablation without this part starts from the same point. The same fused embedding serves
image–image and image–text pairs; at evaluation the identity augmentation's parameters are fed.
"""
from __future__ import annotations

import torch
from torch import nn

from .views import AUG_PARAM_DIM, normalize_aug_params


class AugmentationAwareEmbedding(nn.Module):
    """Fuse an embedding ``h [N, D]`` with its view parameters ``a [N, 12]`` into ``z [N, D]``."""

    def __init__(self, embed_dim: int, hidden: int = 256, fusion: str = "concat", param_dim: int = AUG_PARAM_DIM):
        super().__init__()
        self.fusion = fusion
        self.encoder = nn.Sequential(nn.Linear(param_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))
        if fusion == "concat":
            self.fuse = nn.Linear(2 * embed_dim, embed_dim, bias=False)
            with torch.no_grad():  # W = [I, 0]: starts as plain CLIP
                self.fuse.weight.zero_()
                self.fuse.weight[:, :embed_dim].copy_(torch.eye(embed_dim))
        elif fusion == "add":
            self.fuse = None
            nn.init.zeros_(self.encoder[2].weight)  # e(a) = bias = 0 at init: starts as plain CLIP
            nn.init.zeros_(self.encoder[2].bias)
        else:
            raise ValueError(f"fusion must be 'concat' or 'add', got {fusion!r}")

    def forward(self, h: torch.Tensor, aug_params: torch.Tensor) -> torch.Tensor:
        e = self.encoder(normalize_aug_params(aug_params).to(h.dtype))  # [N, D]
        if self.fuse is None:
            return h + e
        return self.fuse(torch.cat([h, e], dim=-1))
