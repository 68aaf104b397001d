"""The universal space: every image view and every text as one set, and the domain-dependent similarity.

Ordering (docs/DESIGN.md): rows ``[0, B·V)`` are image views, sample-major (row r belongs to sample r // V); rows
``[B·V, B·V + B)`` are texts. Domain ids: 0 image, 1 text; a pair's index is ``dom_u + dom_v``: 0 II, 1 IT, 2 TT.
"""
from __future__ import annotations

import torch

DOMAIN_IMAGE, DOMAIN_TEXT = 0, 1
PAIR_II, PAIR_IT, PAIR_TT = 0, 1, 2
SIMILARITY_FORMS = ("shift_scale", "scale_shift")


def universal_embeddings(image_features: torch.Tensor, text_features: torch.Tensor, sample_offset: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack ``[B, V, D]`` views and ``[B, D]`` texts into ``z [(V+1)·B, D]`` with sample and domain ids ``[(V+1)·B]``."""
    batch, views, dim = image_features.shape
    device = image_features.device
    z = torch.cat([image_features.reshape(batch * views, dim), text_features.to(image_features.dtype)], dim=0)
    ids = torch.arange(batch, device=device) + sample_offset
    sample_id = torch.cat([ids.repeat_interleave(views), ids])
    domain_id = torch.cat([torch.full((batch * views,), DOMAIN_IMAGE, device=device),
                           torch.full((batch,), DOMAIN_TEXT, device=device)])
    return z, sample_id, domain_id


def domain_logits(z_rows: torch.Tensor, dom_rows: torch.Tensor, z_cols: torch.Tensor, dom_cols: torch.Tensor,
                  scales: torch.Tensor, offsets: torch.Tensor, form: str = "shift_scale") -> torch.Tensor:
    """``[R, C]`` similarities (float32, or float64 for float64 inputs) ``s(u, v)`` with the scale and offset of each pair's domain pair.

    ``shift_scale``: ``s = scale_d · (cos − offset_d)`` (PAPER.md §1.3, inferred default);
    ``scale_shift``: ``s = scale_d · cos − offset_d``. Features are L2-normalised, so ``cos`` is a dot product.
    Computed in float32 with autocast off, whatever the input dtype (bf16 logits lose the ranking of close negatives).
    """
    dtype = torch.promote_types(z_rows.dtype, torch.float32)                     # float64 stays float64 (tests)
    with torch.autocast(device_type=z_rows.device.type, enabled=False):
        cos = z_rows.to(dtype) @ z_cols.to(dtype).T                               # [R, C]
        pair = dom_rows.unsqueeze(1) + dom_cols.unsqueeze(0)                      # [R, C] in {0, 1, 2}
        scale, offset = scales.to(dtype)[pair], offsets.to(dtype)[pair]
        if form == "shift_scale":
            return scale * (cos - offset)
        if form == "scale_shift":
            return scale * cos - offset
    raise ValueError(f"similarity form must be one of {SIMILARITY_FORMS}, got {form!r}")
