"""MP-NCE over the universal image+text space (UniCLIP, PAPER.md §1.2) and its ablation objectives.

Universal set U: every image view and every text of the global batch, M = (V+1)·B_global. For an anchor u, the
positives P(u) are the other elements of the same sample (either domain), the negatives N(u) all elements of other
samples (both domains; text–text negatives can be switched off); self-pairs are excluded. With s the
domain-dependent similarity (``similarity.domain_logits``):

* ``mpnce`` — each positive pair competes only with the anchor's negatives, mean over all (anchor, positive) pairs 𝒫:
  ``L = 1/|𝒫| Σ_{(u,p)} −log( e^{s_up} / (e^{s_up} + Σ_{n∈N(u)} e^{s_un}) ) = 1/|𝒫| Σ softplus(LSE_{N(u)} s_un − s_up)``
* ``infonce`` — one softmax per domain pair ("individual spaces"): the candidates of (u, p) are p and the anchor's
  negatives in p's domain: ``softplus(LSE_{n∈N(u), dom n = dom p} s_un − s_up)``, mean over pairs. With V = 1 this is
  open_clip's ``ClipLoss`` (the image–text offset cancels).
* ``supcon`` (Khosla et al. L_out) — ``1/|U| Σ_u −1/|P(u)| Σ_p log( e^{s_up} / Σ_{a∈P(u)∪N(u)} e^{s_ua} )``
* ``milnce`` — ``1/|U| Σ_u −log( Σ_{p∈P(u)} e^{s_up} / Σ_{a∈P(u)∪N(u)} e^{s_ua} )``

Every anchor has exactly V positives (image: V−1 views + its text; text: its V views), so |𝒫| = V·|rows|.
Rows are this rank's elements and columns the gathered global set (``local_loss``), so memory is
(V+1)·B_local × M, never M × M (USERS.md P14). ``chunk_size`` > 0 computes row chunks under non-reentrant
activation checkpointing: autograd then keeps only the chunk's inputs, not its ``[chunk, M]`` logits (open_clip
PR #1145 chunked only the forward and still kept every chunk's logits: #1214), at the price of recomputing each
chunk's logits in backward.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..distributed import gather_universal
from ..similarity import DOMAIN_IMAGE, DOMAIN_TEXT, PAIR_II, PAIR_IT, PAIR_TT, SIMILARITY_FORMS, domain_logits
from ..similarity import universal_embeddings

OBJECTIVES = ("mpnce", "infonce", "supcon", "milnce")
_NEG_INF = float("-inf")


def _masked_logsumexp(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits.masked_fill(~mask, _NEG_INF), dim=1)


def _chunk_loss_sum(z_rows: torch.Tensor, dom_rows: torch.Tensor, sid_rows: torch.Tensor, self_cols: torch.Tensor,
                    z_cols: torch.Tensor, dom_cols: torch.Tensor, sid_cols: torch.Tensor, scales: torch.Tensor,
                    offsets: torch.Tensor, objective: str, text_text_negatives: bool, form: str) -> torch.Tensor:
    """Sum of the per-pair (mpnce, infonce) or per-anchor (supcon, milnce) losses of a block of rows."""
    logits = domain_logits(z_rows, dom_rows, z_cols, dom_cols, scales, offsets, form)          # [R, M] float32
    same = sid_rows.unsqueeze(1) == sid_cols.unsqueeze(0)                                        # [R, M]
    not_self = torch.arange(z_cols.shape[0], device=z_cols.device).unsqueeze(0) != self_cols.unsqueeze(1)
    pos = same & not_self
    neg = ~same
    if not text_text_negatives:
        neg &= ~((dom_rows == DOMAIN_TEXT).unsqueeze(1) & (dom_cols == DOMAIN_TEXT).unsqueeze(0))
    if objective in ("mpnce", "infonce"):
        if objective == "mpnce":
            lse_neg = _masked_logsumexp(logits, neg).unsqueeze(1)                                  # [R, 1]
        else:  # negatives of the positive's domain only: pick per column the matching domain's LSE
            col_is_img = (dom_cols == DOMAIN_IMAGE).unsqueeze(0)
            lse_img = _masked_logsumexp(logits, neg & col_is_img).unsqueeze(1)
            lse_txt = _masked_logsumexp(logits, neg & ~col_is_img).unsqueeze(1)
            lse_neg = torch.where(col_is_img, lse_img, lse_txt)                                     # [R, M]
        per_pair = F.softplus(lse_neg - logits)                                                     # [R, M]
        return torch.where(pos, per_pair, torch.zeros_like(per_pair)).sum()
    log_denom = _masked_logsumexp(logits, pos | neg)                                                # [R]
    if objective == "supcon":
        log_prob = torch.where(pos, logits - log_denom.unsqueeze(1), torch.zeros_like(logits))
        return -(log_prob.sum(dim=1) / pos.sum(dim=1).clamp(min=1)).sum()
    return (log_denom - _masked_logsumexp(logits, pos)).sum()                                       # milnce


def _check_inputs(image_features: torch.Tensor, text_features: torch.Tensor, scales: torch.Tensor,
                  offsets: torch.Tensor, objective: str, form: str) -> None:
    if image_features.dim() != 3 or image_features.shape[1] < 1:
        raise ValueError(f"image_features must be [B, V, D] with V ≥ 1, got {tuple(image_features.shape)}")
    if text_features.dim() != 2 or text_features.shape[0] != image_features.shape[0] \
            or text_features.shape[1] != image_features.shape[2]:
        raise ValueError(f"text_features must be [B, D] = [{image_features.shape[0]}, {image_features.shape[2]}] to "
                         f"match image_features {tuple(image_features.shape)}, got {tuple(text_features.shape)}")
    if scales.shape != (3,) or offsets.shape != (3,):
        raise ValueError(f"scales and offsets must be [3] (II, IT, TT), got {tuple(scales.shape)}, "
                         f"{tuple(offsets.shape)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if form not in SIMILARITY_FORMS:
        raise ValueError(f"similarity_form must be one of {SIMILARITY_FORMS}, got {form!r}")


@torch.no_grad()
def _metrics(image_features: torch.Tensor, text_features: torch.Tensor, scales: torch.Tensor,
             offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean positive cosine per domain pair and the similarity parameters (detached, for logging)."""
    img, txt = image_features.float(), text_features.float()
    views = img.shape[1]
    out = {"pos_cos_it": torch.einsum("bvd,bd->bv", img, txt).mean()}
    if views > 1:
        gram = torch.einsum("bvd,bwd->bvw", img, img)
        out["pos_cos_ii"] = (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(-1)).mean() / (views * (views - 1))
    for name, idx in (("ii", PAIR_II), ("it", PAIR_IT), ("tt", PAIR_TT)):
        out[f"scale_{name}"] = scales[idx].detach().float()
        out[f"offset_{name}"] = offsets[idx].detach().float()
    return out


def universal_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, scales: torch.Tensor,
                               offsets: torch.Tensor, *, objective: str = "mpnce", text_text_negatives: bool = True,
                               similarity_form: str = "shift_scale", chunk_size: int = 0, local_loss: bool = True,
                               gather_with_grad: bool = True, rank: int = 0, world_size: int = 1
                               ) -> dict[str, torch.Tensor]:
    """MP-NCE (or an ablation objective) over the universal space; see the module docstring.

    Args:
        image_features: ``[B, V, D]`` L2-normalised view embeddings of this rank.
        text_features: ``[B, D]`` L2-normalised text embeddings of this rank.
        scales: ``[3]`` similarity scales per domain pair (II, IT, TT).
        offsets: ``[3]`` similarity offsets per domain pair.
        objective: ``mpnce`` | ``infonce`` | ``supcon`` | ``milnce``.
        text_text_negatives: keep text–text pairs among the negatives.
        similarity_form: ``shift_scale`` or ``scale_shift`` (``similarity.domain_logits``).
        chunk_size: rows per checkpointed chunk; 0 computes all rows at once.
        local_loss: rows are this rank's elements (else every gathered element), columns the gathered set.
        gather_with_grad: differentiable all-gather (needed for the exact global gradient).
        rank, world_size: this process in the loss's process group.

    Returns:
        ``{"contrastive_loss": scalar, ...metrics}``; metric keys do not end in ``_loss``.
    """
    _check_inputs(image_features, text_features, scales, offsets, objective, similarity_form)
    batch, views, _ = image_features.shape
    all_img, all_txt = gather_universal(image_features, text_features, rank=rank, world_size=world_size,
                                        gather_with_grad=gather_with_grad, local_loss=local_loss)
    global_batch = all_img.shape[0]
    z_cols, sid_cols, dom_cols = universal_embeddings(all_img, all_txt)
    if local_loss or world_size <= 1:
        z_rows, sid_rows, dom_rows = universal_embeddings(image_features, text_features, sample_offset=rank * batch)
        local = torch.arange(batch * views, device=z_rows.device)
        self_cols = torch.cat([rank * batch * views + local,                                       # image rows
                               global_batch * views + rank * batch + torch.arange(batch, device=z_rows.device)])
    else:
        z_rows, sid_rows, dom_rows = z_cols, sid_cols, dom_cols
        self_cols = torch.arange(z_cols.shape[0], device=z_cols.device)
    rows = z_rows.shape[0]
    step = rows if chunk_size <= 0 else chunk_size
    total = z_rows.new_zeros((), dtype=torch.promote_types(z_rows.dtype, torch.float32))
    for start in range(0, rows, step):
        block = slice(start, start + step)
        args: tuple[Any, ...] = (z_rows[block], dom_rows[block], sid_rows[block], self_cols[block], z_cols, dom_cols,
                                 sid_cols, scales, offsets, objective, text_text_negatives, similarity_form)
        total = total + (checkpoint(_chunk_loss_sum, *args, use_reentrant=False) if chunk_size > 0
                         else _chunk_loss_sum(*args))
    count = rows * views if objective in ("mpnce", "infonce") else rows
    return {"contrastive_loss": total / count, **_metrics(image_features, text_features, scales, offsets)}


class UniversalContrastiveLoss(nn.Module):
    """Parameter-free module around :func:`universal_contrastive_loss` for open_clip_train (``--loss uniclip_mpnce``).

    Called as ``loss(**model_out, output_dict=True)`` with ``image_features [B, V, D]``, ``text_features [B, D]`` and
    ``logit_bias [2, 3]`` (row 0: scales, row 1: offsets per domain pair, as ``UniCLIP.forward`` returns them);
    ``logit_scale`` and other keys (``aug_params``) are ignored.
    """

    def __init__(self, objective: str = "mpnce", text_text_negatives: bool = True, similarity_form: str = "shift_scale",
                 chunk_size: int = 0, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0,
                 world_size: int = 1):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if similarity_form not in SIMILARITY_FORMS:
            raise ValueError(f"similarity_form must be one of {SIMILARITY_FORMS}, got {similarity_form!r}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be ≥ 0 (0 = unchunked), got {chunk_size}")
        self.objective, self.text_text_negatives, self.similarity_form = objective, text_text_negatives, similarity_form
        self.chunk_size, self.local_loss, self.gather_with_grad = chunk_size, local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_bias: torch.Tensor,
                output_dict: bool = False, **_: Any) -> Any:
        if logit_bias.shape != (2, 3):
            raise ValueError(f"logit_bias must be [2, 3] (scales; offsets per domain pair) as UniCLIP returns it, got "
                             f"{tuple(logit_bias.shape)}: is the model a UniCLIP model?")
        out = universal_contrastive_loss(
            image_features, text_features, logit_bias[0], logit_bias[1], objective=self.objective,
            text_text_negatives=self.text_text_negatives, similarity_form=self.similarity_form,
            chunk_size=self.chunk_size, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
            rank=self.rank, world_size=self.world_size)
        return out if output_dict else out["contrastive_loss"]
