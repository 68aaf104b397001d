"""The universal space: every image view and every text as one set, and the domain-dependent similarity.

Ordering (docs/DESIGN.md): rows ``[0, B·V)`` are image views, sample-major (row r belongs to sample r // V, view
r % V, i.e. ``image_features.reshape(B·V, D)``); rows ``[B·V, B·V + B)`` are texts. Domain ids: 0 image, 1 text; a
pair's index is ``dom_u + dom_v``: 0 II, 1 IT, 2 TT (docs/METHODS.md §UniCLIP.1, §UniCLIP.3).

Pure functions: no parameters, no torch.distributed.
"""

from __future__ import annotations

import math

import torch

DOMAIN_IMAGE, DOMAIN_TEXT = 0, 1
PAIR_II, PAIR_IT, PAIR_TT = 0, 1, 2
NUM_DOMAIN_PAIRS = 3
MAX_LOG_SCALE = math.log(100.0)  # scales are clamped to [1, 100] (open_clip's logit-scale range)
SIMILARITY_FORMS = ("shift_scale", "scale_shift")

# _PAIR_OF[dom_u, dom_v] = dom_u + dom_v: the 2×2 domain table of the three domain pairs.
_PAIR_OF = ((PAIR_II, PAIR_IT), (PAIR_IT, PAIR_TT))


def universal_embeddings(
    image_features: torch.Tensor, text_features: torch.Tensor, sample_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack the image views and the texts of a batch into one universal set.

    Args:
        image_features: ``[B, V, D]`` view embeddings.
        text_features: ``[B, D]`` text embeddings.
        sample_offset: added to every sample id (``rank · B_local`` for a rank's slice of the global batch).

    Returns:
        ``z [(V+1)·B, D]`` (image views sample-major, then texts; both in their promoted dtype),
        ``sample_id [(V+1)·B]`` (int64: ``sample_offset + r // V`` for view rows, ``sample_offset + i`` for texts),
        ``domain_id [(V+1)·B]`` (int64: ``DOMAIN_IMAGE`` then ``DOMAIN_TEXT``).
    """
    if image_features.dim() != 3 or text_features.dim() != 2:
        raise ValueError(
            f"expected image_features [B, V, D] and text_features [B, D], got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    batch, views, dim = image_features.shape
    dtype = torch.promote_types(image_features.dtype, text_features.dtype)
    device = image_features.device
    z = torch.cat([image_features.reshape(batch * views, dim).to(dtype), text_features.to(dtype)], dim=0)
    ids = torch.arange(batch, device=device) + sample_offset
    sample_id = torch.cat([ids.repeat_interleave(views), ids])
    domain_id = torch.cat(
        [
            torch.full((batch * views,), DOMAIN_IMAGE, device=device, dtype=torch.long),
            torch.full((batch,), DOMAIN_TEXT, device=device, dtype=torch.long),
        ]
    )
    return z, sample_id, domain_id


def pair_tables(
    scales: torch.Tensor, offsets: torch.Tensor, form: str = "shift_scale"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope and intercept ``[2, 2]`` indexed by ``(dom_u, dom_v)``: ``s(u, v) = slope · cos − intercept``.

    ``shift_scale``: ``slope = scale_d``, ``intercept = scale_d · offset_d``;
    ``scale_shift``: ``slope = scale_d``, ``intercept = offset_d``; with ``d = dom_u + dom_v``.
    """
    if form not in SIMILARITY_FORMS:
        raise ValueError(f"similarity form must be one of {SIMILARITY_FORMS}, got {form!r}")
    index = torch.tensor(_PAIR_OF, device=scales.device)
    slope, offset = scales[index], offsets[index]
    return slope, (slope * offset if form == "shift_scale" else offset)


def domain_logits(
    z_rows: torch.Tensor,
    dom_rows: torch.Tensor,
    z_cols: torch.Tensor,
    dom_cols: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    form: str = "shift_scale",
) -> torch.Tensor:
    """Domain-dependent similarities ``s(u, v)`` of every row element with every column element.

    With ``d = dom_u + dom_v`` (0 II, 1 IT, 2 TT) and ``cos = z_u · z_v`` (the features are L2-normalised):

    * ``shift_scale`` (default, docs/METHODS.md §UniCLIP.3): ``s(u, v) = scale_d · (cos − offset_d)``
    * ``scale_shift``: ``s(u, v) = scale_d · cos − offset_d``

    Computed with autocast off in float32 whatever the input dtype (bf16/fp16 logits lose the ranking of close
    negatives and overflow ``exp`` sooner); float64 inputs stay float64 (exact reference tests).

    Args:
        z_rows: ``[R, D]`` row embeddings; dom_rows: ``[R]`` their domain ids.
        z_cols: ``[C, D]`` column embeddings; dom_cols: ``[C]`` their domain ids.
        scales: ``[3]`` scale per domain pair (II, IT, TT); offsets: ``[3]`` offset per domain pair.
        form: ``shift_scale`` or ``scale_shift``.

    Returns:
        ``[R, C]`` logits, float32 (float64 for float64 inputs).
    """
    if form not in SIMILARITY_FORMS:
        raise ValueError(f"similarity form must be one of {SIMILARITY_FORMS}, got {form!r}")
    dtype = torch.promote_types(torch.promote_types(z_rows.dtype, z_cols.dtype), torch.float32)
    with torch.autocast(device_type=z_rows.device.type, enabled=False):
        zr, zc = z_rows.to(dtype), z_cols.to(dtype)
        slope, intercept = pair_tables(scales.to(dtype), offsets.to(dtype), form)
        # Per-row lookups [R, 2] (column domain on dim 1): the row domain folds into a row scaling of z_rows, so the
        # logits need no [R, C] index or where pass (indexing scales[pair] over [R, C] costs more than the matmul
        # and its backward is a scatter-add of R·C values into 3 slots).
        row_slope, row_icpt = slope[dom_rows], intercept[dom_rows]
        col_is_img = dom_cols == DOMAIN_IMAGE
        n_cols, n_img = dom_cols.shape[0], int(col_is_img.sum())
        if n_cols and bool(col_is_img[:n_img].all()):  # image columns first (universal ordering): one addmm per domain
            blocks = [
                torch.addmm(-row_icpt[:, b : b + 1], zr * row_slope[:, b : b + 1], zc[cols].T)
                for b, cols in ((DOMAIN_IMAGE, slice(0, n_img)), (DOMAIN_TEXT, slice(n_img, n_cols)))
                if cols.stop > cols.start
            ]
            return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
        # Any other column order: one matmul on augmented operands, [slope_u0·z_u, slope_u1·z_u, −icpt_u0, −icpt_u1]
        # against [1{b=0}·z_v, 1{b=1}·z_v, 1{b=0}, 1{b=1}] (exact zeros in the unused half).
        onehot = torch.nn.functional.one_hot(dom_cols, 2).to(dtype)  # [C, 2]
        rows = torch.cat([zr * row_slope[:, :1], zr * row_slope[:, 1:], -row_icpt], dim=1)  # [R, 2D+2]
        cols = torch.cat([zc * onehot[:, :1], zc * onehot[:, 1:], onehot], dim=1)  # [C, 2D+2]
        return rows @ cols.T
