"""SLIP model (Mu et al., ECCV 2022): open_clip's CLIP towers + a SimCLR head on the image backbone feature.

Follows ``facebookresearch/SLIP`` ``models.py`` (``class SLIP(CLIP)``, ``_build_mlp``) and ``datasets.py``
(``ImageCaptionDatasetSLIP``: one CLIP view + two SimCLR views per image). State-dict names of the towers are CLIP's
own, so tower weights move between CLIP and SLIP checkpoints; added: ``image_mlp.*`` (SLIP's name for the head).
The scalar ``logit_scale`` stays open_clip's.

Deviations from SLIP's code, each for a reason:

* The three views are sampled inside ``forward`` (``views.py`` presets ``clip_weak`` and ``simclr``, SLIP's recipes)
  and encoded in ONE concatenated image-tower pass instead of three ``self.visual`` calls: ZeRO-3 fails on repeated
  forwards (DeepSpeed #5321), and the ViT has no batch-coupled layer, so the features are the same.
* The head uses ``BatchNorm1d`` (SLIP: ``SyncBatchNorm``); open_clip_train's ``--use-bn-sync`` converts it, which is
  SLIP's behaviour under DDP. The head is applied to each SSL view separately, as SLIP does, so its BatchNorm
  statistics are per view (``ssl_bn_per_view=False`` normalises both views together in one head call).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer
from torch import nn

from ..config import from_dict
from ..errors import PluginError
from ..similarity import MAX_LOG_SCALE
from ..views import VIEW_PRESETS, InForwardViews


@dataclass(frozen=True)
class SLIPCfg:
    """SLIP's parts (docs/METHODS.md §SLIP); defaults are SLIP's ViT-B recipe (``main.py``: ``--ssl-mlp-dim 4096``,
    ``--ssl-emb-dim 256``), used by SLIP-ViT-B-32. The tiny configs scale the head with the backbone: hidden 4·width,
    output = width (SLIP-Tiny-32: 256/64, SLIP-Tiny-64: 512/128)."""

    ssl_mlp_dim: int = 4096  # hidden width of the SimCLR head
    ssl_emb_dim: int = 256  # output width of the SimCLR head (the NT-Xent space)
    clip_view_preset: str = "clip_weak"  # the CLIP view: RandomResizedCrop(scale=(0.5, 1)) only
    ssl_view_preset: str = "simclr"  # the two SSL views: SimCLR augmentations
    ssl_views: int = 2  # SLIP's NT-Xent pairs exactly two views
    ssl_bn_per_view: bool = True  # SLIP: head (and BatchNorm statistics) per view; False: both views at once

    source_size: int = 0  # side of the training image the views are cut from (0: input size)

    def __post_init__(self) -> None:
        for key in ("ssl_mlp_dim", "ssl_emb_dim"):
            if getattr(self, key) < 1:
                raise PluginError(f"slip_cfg.{key} must be ≥ 1, got {getattr(self, key)}")
        for key in ("clip_view_preset", "ssl_view_preset"):
            if getattr(self, key) not in VIEW_PRESETS:
                raise PluginError(
                    f"slip_cfg.{key} {getattr(self, key)!r} is not a view preset; choices: "
                    f"{', '.join(sorted(VIEW_PRESETS))}"
                )
        if self.ssl_views != 2:
            raise PluginError(
                f"slip_cfg.ssl_views must be 2 (SLIP's SimCLR loss pairs two views), got {self.ssl_views}"
            )


def build_ssl_head(in_dim: int, mlp_dim: int, out_dim: int) -> nn.Sequential:
    """SLIP's SimCLR head (``models.py`` ``_build_mlp``): Linear–BN–ReLU–Linear–BN–ReLU–Linear, SLIP's layer names."""
    return nn.Sequential(
        OrderedDict(
            [
                ("layer1", nn.Linear(in_dim, mlp_dim)),
                ("bn1", nn.BatchNorm1d(mlp_dim)),
                ("relu1", nn.ReLU(inplace=True)),
                ("layer2", nn.Linear(mlp_dim, mlp_dim)),
                ("bn2", nn.BatchNorm1d(mlp_dim)),
                ("relu2", nn.ReLU(inplace=True)),
                ("layer3", nn.Linear(mlp_dim, out_dim)),
            ]
        )
    )


class SLIP(CLIP):
    """SLIP on open_clip's CLIP towers.

    Training forward (``model.train()``): per image, one CLIP view (``clip_view_preset``) and two SSL views
    (``ssl_view_preset``) are sampled in forward and encoded in ONE image-tower pass over ``3·B`` images (view-major:
    CLIP views, SSL view 1, SSL view 2). Outputs: ``image_features [B, D]`` (normalised CLIP-view embedding),
    ``text_features [B, D]``, ``logit_scale []`` (exp'd, clamped to ≤ 100 inside forward, docs/UPSTREAM.md D3),
    ``ssl_embed_1``, ``ssl_embed_2`` ``[B, ssl_emb_dim]`` (head outputs, un-normalised: the loss normalises, as SLIP's
    ``SIMCLRLoss``). The head reads the pooled backbone feature BEFORE ``visual.proj`` (SLIP: the timm ViT's
    ``num_classes=0`` output, i.e. the final-norm CLS token), width ``vision_cfg.width``.

    Eval forward, ``encode_image`` and ``encode_text`` are plain CLIP's (zero-shot and retrieval are CLIP's).
    """

    def __init__(
        self,
        embed_dim: int,
        vision_cfg: Any,
        text_cfg: Any,
        slip_cfg: Optional[dict] = None,
        quick_gelu: bool = False,
        init_logit_scale: float = np.log(1 / 0.07),
        init_logit_bias: Optional[float] = None,
        nonscalar_logit_scale: bool = False,
        cast_dtype: Optional[torch.dtype] = None,
        output_dict: bool = False,
    ):
        super().__init__(
            embed_dim,
            vision_cfg,
            text_cfg,
            quick_gelu=quick_gelu,
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            nonscalar_logit_scale=nonscalar_logit_scale,
            cast_dtype=cast_dtype,
            output_dict=output_dict,
        )
        cfg = from_dict(SLIPCfg, slip_cfg, "slip_cfg")
        self.slip_cfg = cfg
        self.vision_width = _check_vision_tower(self.visual)
        self.image_mlp = build_ssl_head(self.vision_width, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)
        self.views = nn.ModuleDict(
            {"clip": InForwardViews(cfg.clip_view_preset), "ssl": InForwardViews(cfg.ssl_view_preset)}
        )
        self.view_source_size = cfg.source_size or self.visual.image_size  # what the loader gives for training

    def encode_image_and_backbone(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One image-tower pass: ``(projected [N, D], pooled backbone feature before visual.proj [N, width])``.

        The tower runs as a module call (its hooks, DDP and ZeRO-3 parameter gathering stay intact); a temporary
        hook on ``ln_post`` keeps its output, from which the pooled feature is taken exactly as
        ``VisionTransformer._pool`` takes it (open_clip 3.3.0, non-attention-pool branches).
        """
        visual = self.visual
        kept: list[torch.Tensor] = []
        handle = visual.ln_post.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            projected = visual(image)
        finally:
            handle.remove()
        normed = kept[-1]
        pooled = normed if visual.final_ln_after_pool else visual._global_pool(normed)[0]
        return projected, pooled

    def ssl_head(self, pooled_1: torch.Tensor, pooled_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SimCLR head on the two SSL views' backbone features ``[B, width]`` -> ``[B, ssl_emb_dim]`` each."""
        if self.slip_cfg.ssl_bn_per_view:  # SLIP: image_mlp(visual(aug1)), image_mlp(visual(aug2))
            return self.image_mlp(pooled_1), self.image_mlp(pooled_2)
        both = self.image_mlp(torch.cat([pooled_1, pooled_2]))  # [2B, E]
        return both[: pooled_1.shape[0]], both[pooled_1.shape[0] :]

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        if not self.training or image is None:
            return super().forward(image, text)  # plain CLIP
        batch = image.shape[0]
        clip_view, _ = self.views["clip"](image, 1, self.visual)  # [B, 1, C, H, W]
        ssl_views, _ = self.views["ssl"](image, self.slip_cfg.ssl_views, self.visual)  # [B, 2, C, H, W]
        views = torch.cat([clip_view[:, 0], ssl_views[:, 0], ssl_views[:, 1]])  # [3B, C, H, W], view-major
        projected, pooled = self.encode_image_and_backbone(views)  # [3B, D], [3B, width]
        ssl_1, ssl_2 = self.ssl_head(pooled[batch : 2 * batch], pooled[2 * batch :])
        out = {
            "image_features": F.normalize(projected[:batch], dim=-1),  # [B, D]
            "logit_scale": self.logit_scale.clamp(0, MAX_LOG_SCALE).exp(),  # [] (or [1] under DeepSpeed)
            "ssl_embed_1": ssl_1,  # [B, E]
            "ssl_embed_2": ssl_2,  # [B, E]
        }
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)  # [B, D]
        return out


def _check_vision_tower(visual: nn.Module) -> int:
    """The backbone width, or a PluginError for towers whose pre-projection feature this class cannot take."""
    if not isinstance(visual, VisionTransformer):
        raise PluginError(
            f"SLIP needs open_clip's VisionTransformer image tower (a ViT vision_cfg), got {type(visual).__name__}"
        )
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg") or visual.output_tokens:
        raise PluginError(
            "SLIP needs a ViT with 'tok' or 'avg' pooling, no attentional pooler and no output_tokens "
            "(its SimCLR head reads the pooled feature before visual.proj)"
        )
    return int(visual.transformer.width)
