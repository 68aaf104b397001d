"""Augmentation-aware embedding (docs/METHODS.md §UniCLIP.4, inferred AugSelf-style design).

The image tower's embedding ``h`` of a view and that view's augmentation parameters ``a`` are fused into the universal
space: ``concat``: ``z = W [h ; e(a)]``; ``add``: ``z = h + e(a)``; ``film``: ``z = h ⊙ (1 + γ(a)) + β(a)`` with
``[γ; β] = e(a)``, with ``e`` a 2-layer MLP on the normalised parameter vector. All start as the identity on ``h``
(concat: W = [I, 0]; add and film: e's last layer zero), so at initialisation the model equals plain CLIP and the
ablation without this part starts from the same point. Only ``film`` lets the parameters act on the image's own
embedding (a crop or colour change can re-weight the dimensions that carry what it changed) and gives ``e`` gradient
from the first step; ``concat`` and ``add`` can only add a vector that does not depend on the image. The same
fused embedding serves image–image and image–text pairs; at evaluation the model feeds the identity view's parameters
or the caption view's mean parameters (``uniclip_cfg.eval_aug_params``).
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
        self.embed_dim = embed_dim
        out_dim = 2 * embed_dim if fusion == "film" else embed_dim  # film: [γ; β]
        self.encoder = nn.Sequential(nn.Linear(param_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        if fusion == "film":
            self.fuse = None
            # γ = β = 0 at init: starts as plain CLIP, and e's last layer gets gradient from the first step
            # (∂L/∂γ = h ⊙ ∂L/∂z ≠ 0), unlike concat, where W₂ = 0 blocks every gradient to e
            nn.init.zeros_(self.encoder[2].weight)
            nn.init.zeros_(self.encoder[2].bias)
        elif fusion == "concat":
            self.fuse = nn.Linear(2 * embed_dim, embed_dim, bias=False)
            with torch.no_grad():  # W = [I, 0]: starts as plain CLIP
                self.fuse.weight.zero_()
                self.fuse.weight[:, :embed_dim].copy_(torch.eye(embed_dim))
        elif fusion == "add":
            self.fuse = None
            nn.init.zeros_(self.encoder[2].weight)  # e(a) = bias = 0 at init: starts as plain CLIP
            nn.init.zeros_(self.encoder[2].bias)
        else:
            raise ValueError(f"fusion must be 'concat', 'add' or 'film', got {fusion!r}")

    def forward(self, h: torch.Tensor, aug_params: torch.Tensor) -> torch.Tensor:
        e = self.encoder(normalize_aug_params(aug_params).to(h.dtype))  # [N, D] ([N, 2D] for film)
        if self.fusion == "film":
            gamma, beta = e.chunk(2, dim=-1)
            return torch.addcmul(h + beta, h, gamma)  # h·(1 + γ) + β
        if self.fuse is None:
            return h + e
        return self.fuse(torch.cat([h, e], dim=-1))
