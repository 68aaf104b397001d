"""UniCLIP model: open_clip's CLIP towers + in-forward views + augmentation-aware embedding + domain-pair similarity.

State-dict names of the towers are CLIP's own, so tower weights move between CLIP and UniCLIP checkpoints. Added:
``aug_embed.*`` and vector ``logit_scale``/``logit_bias`` (``[P]``: log-scales and offsets per domain pair).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from torch import nn

from ..aug_embed import AugmentationAwareEmbedding
from ..config import UniCLIPCfg, from_dict
from ..similarity import MAX_LOG_SCALE, NUM_DOMAIN_PAIRS, PAIR_IT, domain_logits
from ..views import InForwardViews, identity_aug_params


class UniCLIP(CLIP):
    """UniCLIP (Lee et al., NeurIPS 2022) on open_clip's CLIP towers.

    Training forward (``model.train()``): V views per image are sampled in forward and encoded in ONE concatenated
    image-tower pass (ZeRO-3 fails on repeated forwards, DeepSpeed #5321); outputs are batch-first (docs/DESIGN.md):
    ``image_features [B,V,D]``, ``text_features [B,D]``, ``aug_params [B,V,12]``, ``logit_scale []`` (image–text
    scale), ``logit_bias [2,3]`` (scales and offsets per domain pair II, IT, TT). Scales are clamped to ≤ 100 inside
    forward (DeepSpeed overwrites in-place clamps, docs/UPSTREAM.md D3). Eval forward is plain CLIP
    (identity-augmentation embedding).
    """

    def __init__(
            self,
            embed_dim: int,
            vision_cfg: Any,
            text_cfg: Any,
            uniclip_cfg: Optional[dict] = None,
            quick_gelu: bool = False,
            init_logit_scale: float = np.log(1 / 0.07),
            init_logit_bias: Optional[float] = None,
            nonscalar_logit_scale: bool = False,
            cast_dtype: Optional[torch.dtype] = None,
            output_dict: bool = False,
    ):
        super().__init__(embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype,
                         output_dict=output_dict)
        cfg = from_dict(UniCLIPCfg, uniclip_cfg, "uniclip_cfg")
        self.uniclip_cfg = cfg
        num_params = NUM_DOMAIN_PAIRS if cfg.domain_similarity else 1
        # [P] vectors, never 0-dim (docs/UPSTREAM.md D1); open_clip_train's clamp_(0, ln 100) covers every entry.
        self.logit_scale = nn.Parameter(torch.full([num_params], math.log(1.0 / cfg.init_temperature)))
        self.logit_bias = nn.Parameter(torch.full([num_params], float(cfg.init_offset)))
        self.aug_embed = (AugmentationAwareEmbedding(embed_dim, cfg.aug_hidden, cfg.aug_fusion)
                          if cfg.aug_embed else None)
        self.views = InForwardViews(cfg.view_preset)

    def domain_similarity_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales [3], offsets [3]) per domain pair, scales clamped to [1, 100] inside forward."""
        scales = self.logit_scale.clamp(0, MAX_LOG_SCALE).exp().expand(NUM_DOMAIN_PAIRS)
        offsets = self.logit_bias.expand(NUM_DOMAIN_PAIRS)
        return scales, offsets

    def encode_image(self, image: torch.Tensor, normalize: bool = False,
                     aug_params: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Universal-space image embedding ``[N, D]``; ``aug_params [N, 12]`` default to the identity view."""
        features = self.visual(image)
        if self.aug_embed is not None:
            if aug_params is None:
                aug_params = identity_aug_params(image.shape[0], 1, device=image.device).flatten(0, 1)
            features = self.aug_embed(features, aug_params)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        scales, offsets = self.domain_similarity_params()
        if not self.training or image is None:
            return self._eval_forward(image, text, scales)
        views, aug_params = self.views(image, self.uniclip_cfg.views, self.visual)  # [B,V,C,H,W], [B,V,12]
        batch, num_views = aug_params.shape[:2]
        image_features = self.encode_image(views.flatten(0, 1), normalize=True,
                                           aug_params=aug_params.flatten(0, 1))       # [B*V, D], one tower pass
        out = {
            "image_features": image_features.view(batch, num_views, -1),              # [B, V, D]
            "aug_params": aug_params,                                                  # [B, V, 12]
            "logit_scale": scales[PAIR_IT],                                            # []
            "logit_bias": torch.stack([scales, offsets]),                              # [2, 3]
        }
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)             # [B, D]
        return out

    def _eval_forward(self, image: Optional[torch.Tensor], text: Optional[torch.Tensor], scales: torch.Tensor):
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scales[PAIR_IT]}
            return {k: v for k, v in out.items() if v is not None}
        return image_features, text_features, scales[PAIR_IT]

    def get_logits(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image–text logits ``([N_img, N_txt], [N_txt, N_img])`` with the image–text pair's scale and offset, in the
        model's ``uniclip_cfg.similarity_form`` (``similarity.domain_logits``)."""
        scales, offsets = self.domain_similarity_params()
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        image_dom = torch.zeros(image_features.shape[0], dtype=torch.long, device=image_features.device)
        text_dom = torch.ones(text_features.shape[0], dtype=torch.long, device=text_features.device)
        image_logits = domain_logits(image_features, image_dom, text_features, text_dom, scales, offsets,
                                     self.uniclip_cfg.similarity_form)
        return image_logits, image_logits.T
