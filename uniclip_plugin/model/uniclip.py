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
from ..similarity import MAX_LOG_SCALE, NUM_DOMAIN_PAIRS, PAIR_IT, PAIR_TT, domain_logits
from ..views import VIEW_PRESETS, InForwardViews, identity_aug_params, sample_aug_params


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
        super().__init__(
            embed_dim, vision_cfg, text_cfg, quick_gelu=quick_gelu, cast_dtype=cast_dtype, output_dict=output_dict
        )
        cfg = from_dict(UniCLIPCfg, uniclip_cfg, "uniclip_cfg")
        self.uniclip_cfg = cfg
        temps = cfg.temperatures() if cfg.domain_similarity else cfg.temperatures()[PAIR_IT : PAIR_IT + 1]
        # [P] vectors, never 0-dim (docs/UPSTREAM.md D1); open_clip_train's clamp_(0, ln 100) covers every entry.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / t) for t in temps]))
        raw_offset = math.atanh(cfg.init_offset / cfg.offset_bound) if cfg.offset_bound else float(cfg.init_offset)
        self.logit_bias = nn.Parameter(torch.full([len(temps)], raw_offset))
        self.aug_embed = (
            AugmentationAwareEmbedding(embed_dim, cfg.aug_hidden, cfg.aug_fusion) if cfg.aug_embed else None
        )
        self.views = InForwardViews(cfg.presets() if cfg.view_presets else cfg.view_preset)
        self.view_source_size = cfg.source_size or self.visual.image_size  # what the loader gives for training
        self._eval_params: dict[torch.device, torch.Tensor] = {}

    def domain_similarity_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scales [3], offsets [3]) per domain pair: scales clamped to [1, 100] inside forward, offsets bounded by
        ``offset_bound·tanh`` when set, the text–text offset held at its value when ``tt_offset`` is fixed."""
        cfg = self.uniclip_cfg
        scales = self.logit_scale.clamp(0, MAX_LOG_SCALE).exp().expand(NUM_DOMAIN_PAIRS)
        offsets = self.logit_bias
        if cfg.offset_bound:
            offsets = cfg.offset_bound * torch.tanh(offsets)  # raw at init: atanh(init_offset / bound)
        offsets = offsets.expand(NUM_DOMAIN_PAIRS)
        if cfg.tt_offset == "fixed":  # text–text pairs are never positive: nothing would pull its offset back
            offsets = torch.cat([offsets[:PAIR_TT], offsets[PAIR_TT:].detach()])
        return scales, offsets

    def eval_aug_params(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[batch, 12]`` parameters fed to the augmentation embedding outside training (``eval_aug_params``)."""
        if self.uniclip_cfg.eval_aug_params == "identity":
            return identity_aug_params(batch, 1, device=device).flatten(0, 1)
        if device not in self._eval_params:  # the caption view's mean parameters: a fixed sample of its preset
            preset = VIEW_PRESETS[self.uniclip_cfg.presets()[0]]
            sample = sample_aug_params(4096, 1, preset, generator=torch.Generator().manual_seed(0))
            self._eval_params[device] = sample.mean(dim=(0, 1)).to(device)
        return self._eval_params[device].expand(batch, -1)

    def encode_image(
        self, image: torch.Tensor, normalize: bool = False, aug_params: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Universal-space image embedding ``[N, D]``; ``aug_params [N, 12]`` default to the identity view."""
        features = self.visual(image)
        if self.aug_embed is not None:
            if aug_params is None:
                aug_params = self.eval_aug_params(image.shape[0], image.device)
            features = self.aug_embed(features, aug_params)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Optional[torch.Tensor] = None, text: Optional[torch.Tensor] = None):
        scales, offsets = self.domain_similarity_params()
        if not self.training or image is None:
            return self._eval_forward(image, text, scales)
        views, aug_params = self.views(image, self.uniclip_cfg.views, self.visual)  # [B,V,C,H,W], [B,V,12]
        batch, num_views = aug_params.shape[:2]
        image_features = self.encode_image(
            views.flatten(0, 1), normalize=True, aug_params=aug_params.flatten(0, 1)
        )  # [B*V, D], one tower pass
        out = {
            "image_features": image_features.view(batch, num_views, -1),  # [B, V, D]
            "aug_params": aug_params,  # [B, V, 12]
            "logit_scale": scales[PAIR_IT],  # []
            "logit_bias": torch.stack([scales, offsets]),  # [2, 3]
        }
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)  # [B, D]
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
        image_logits = domain_logits(
            image_features, image_dom, text_features, text_dom, scales, offsets, self.uniclip_cfg.similarity_form
        )
        return image_logits, image_logits.T
