r"""MP-NCE over the universal image+text space (UniCLIP, docs/METHODS.md §UniCLIP.2) and its ablation objectives.

Universal set U: every image view and every text of the global batch, ``M = (V+1)·N`` elements for N samples with V
views each (ordering in ``similarity.py``). For an anchor u of sample i:

* positives ``P(u)``: the other elements of sample i, in either domain (image anchor: its V−1 other views and its text;
  text anchor: its V views), so ``|P(u)| = V`` for every anchor;
* negatives ``N(u)``: every element of every other sample, of both domains; with ``text_text_negatives=False`` a text
  anchor's negatives lose the other texts (text–text pairs are never positive: one caption per sample);
* ``A(u) = P(u) ∪ N(u)``: the allowed candidates (self-pairs are always excluded).

With ``s(u, v)`` the domain-dependent similarity (``similarity.domain_logits``: a scale and an offset per domain pair
II / IT / TT) and ``𝒫 = {(u, p) : u ∈ rows, p ∈ P(u)}`` the ordered positive pairs:

* ``mpnce`` — each positive competes only with the anchor's negatives; mean over all positive pairs:
  ``L = 1/|𝒫| Σ_{(u,p)∈𝒫} −log( e^{s_up} / (e^{s_up} + Σ_{n∈N(u)} e^{s_un}) )
  = 1/|𝒫| Σ_{(u,p)∈𝒫} softplus( logsumexp_{n∈N(u)} s_un − s_up )``
* ``infonce`` — the "individual spaces" baseline: one softmax per domain pair; the candidates of (u, p) are p and the
  anchor's negatives in p's domain only:
  ``L = 1/|𝒫| Σ_{(u,p)∈𝒫} softplus( logsumexp_{n∈N(u), dom n = dom p} s_un − s_up )``.
  With V = 1 this is open_clip's ``ClipLoss`` at ``logit_scale = scale_IT`` (the IT offset cancels in each softmax).
* ``supcon`` — Khosla et al.'s L_out: the other positives sit in the denominator; mean over anchors:
  ``L = 1/|rows| Σ_u −1/|P(u)| Σ_{p∈P(u)} log( e^{s_up} / Σ_{a∈A(u)} e^{s_ua} )``
* ``milnce`` — all positives in one numerator; mean over anchors:
  ``L = 1/|rows| Σ_u −log( Σ_{p∈P(u)} e^{s_up} / Σ_{a∈A(u)} e^{s_ua} )``

Rows and columns: the columns are always the gathered global set; the rows are this rank's elements
(``local_loss`` or one process), else every gathered element. Memory is therefore ``(V+1)·B_local × M`` logits, never
``M × M`` (docs/UPSTREAM.md P14). Every rank has the same number of pairs, so the mean over ranks of the local losses is
the global loss.

Chunked path (``chunk_size > 0``): rows are processed in chunks inside one custom autograd Function that computes each
chunk's loss *and its gradient* in the forward pass (closed-form ``∂ℓ/∂s``, then the similarity's backward on that
chunk only) and keeps just the accumulated input gradients, ``O((R + M)·D)``, for the backward pass. Chunking only the
forward does not bound training memory, because autograd would keep every chunk's ``[chunk, M]`` logits (open_clip
PR #1145, fixed by per-chunk checkpointing in #1214); unlike checkpointing, nothing is recomputed. The closed-form
gradients are checked against autograd of the unchunked path in tests/test_mpnce.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..distributed import gather_universal
from ..similarity import PAIR_II, PAIR_IT, PAIR_TT, SIMILARITY_FORMS, domain_logits, pair_tables, universal_embeddings

OBJECTIVES = ("mpnce", "infonce", "supcon", "milnce")
_PAIR_OBJECTIVES = ("mpnce", "infonce")  # averaged over positive pairs; the others over anchors
TEXT_POSITIVES = ("all", "caption")  # the text's positives: every view (the paper) or view 0, the caption view
BALANCES = ("count", "group")  # mean over all positive pairs (the paper) or per group (IT, II), weighted
_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------------------
# Index structure: which columns are a row's self, positives and (by exclusion) negatives.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    same_idx: torch.Tensor  # [c, V+1] columns of the row's sample (its V views, then its text), self included
    self_idx: torch.Tensor  # [c, 1] the row's own column
    pos_idx: torch.Tensor  # [c, V] columns of its positives (same sample, not self)
    pos_is_text: torch.Tensor  # [c, V] bool: positive is a text
    text_from: int  # first text row of the block (rows are image views, then texts)
    pos_coef: torch.Tensor  # [c, V] weight of each positive pair in the loss (0: not a positive, see _Layout)
    pos_is_it: torch.Tensor  # [c, V] bool: an image–text positive pair
    pos_is_ii: torch.Tensor  # [c, V] bool: an image–image positive pair


@dataclass(frozen=True)
class _Layout:
    """Rows: elements of ``row_batch`` samples starting at global sample ``row_offset``; columns: ``col_batch``."""

    views: int
    row_batch: int
    row_offset: int
    col_batch: int
    text_views: int = 0  # views 0..text_views-1 pair with the text (0: every view)
    coef_it: float = 1.0  # weight of one image–text positive pair (pair objectives)
    coef_ii: float = 1.0  # weight of one image–image positive pair

    @property
    def caption_views(self) -> int:
        return self.text_views or self.views

    def pair_counts(self) -> tuple[int, int]:
        """(image–text, image–image) ordered positive pairs of the rows: 2·N·T and N·V·(V−1) for N row samples."""
        return 2 * self.row_batch * self.caption_views, self.row_batch * self.views * (self.views - 1)

    @property
    def rows(self) -> int:
        return (self.views + 1) * self.row_batch

    @property
    def image_cols(self) -> int:  # columns [0, image_cols) are image views, [image_cols, M) texts
        return self.views * self.col_batch

    def block(self, start: int, stop: int, device: torch.device) -> _Block:
        """Column indices of the rows ``[start, stop)``: O(c·V) work, no ``[c, M]`` mask."""
        v, image_rows = self.views, self.views * self.row_batch
        r = torch.arange(start, stop, device=device)
        is_text = r >= image_rows
        sample = self.row_offset + torch.where(is_text, r - image_rows, torch.div(r, v, rounding_mode="floor"))
        same = torch.cat(
            [
                sample[:, None] * v + torch.arange(v, device=device),  # its views
                (self.image_cols + sample)[:, None],
            ],
            dim=1,
        )  # its text
        self_pos = torch.where(is_text, torch.full_like(r, v), r % v)  # [c]
        keep = torch.arange(v + 1, device=device)[None, :] != self_pos[:, None]  # V per row
        pos = same[keep].view(stop - start, v)
        pos_is_text = pos >= self.image_cols
        # image–text pairs: an image row's text slot (the last), or any slot of a text row
        slot = torch.arange(v, device=device)[None, :]
        is_it = pos_is_text | is_text[:, None]
        # which image view the IT pair involves: the row's own view, or the slot's view for text rows
        view_of_pair = torch.where(is_text[:, None], slot, (r % v)[:, None])
        valid = ~is_it | (view_of_pair < self.caption_views)
        # float64 (a Python-float where() would give float32: 1/N off by 1e-7); cast to the logits' dtype at use
        coef = (
            torch.where(
                is_it,
                torch.tensor(self.coef_it, dtype=torch.float64, device=device),
                torch.tensor(self.coef_ii, dtype=torch.float64, device=device),
            )
            * valid
        )
        return _Block(
            same,
            same.gather(1, self_pos[:, None]),
            pos,
            pos_is_text,
            min(max(image_rows - start, 0), stop - start),
            coef,
            is_it & valid,
            ~is_it,
        )


# ---------------------------------------------------------------------------------------------------------------------
# The objectives on a block of rows: autograd version (unchunked path) and closed-form gradient (chunked path).
# ---------------------------------------------------------------------------------------------------------------------


def _excluded(
    logits: torch.Tensor, index: torch.Tensor, blk: _Block, layout: _Layout, text_text_negatives: bool
) -> torch.Tensor:
    """Copy of ``logits`` with −inf at ``index`` (self, or the whole sample) and, if switched off, at text–text."""
    out = logits.scatter(1, index, _NEG_INF)
    if not text_text_negatives and blk.text_from < out.shape[0]:
        out[blk.text_from :, layout.image_cols :] = _NEG_INF  # text rows × text columns: a block, rows sorted by domain
    return out


def _empty_rows(
    blk: _Block, layout: _Layout, rows: int, device: torch.device, *, text_domain: bool, text_text_negatives: bool
) -> Optional[torch.Tensor]:
    """Rows whose negative set is empty (one sample in all, or text rows' text negatives switched off), else None."""
    if layout.col_batch == 1:
        return torch.ones(rows, dtype=torch.bool, device=device)
    if text_domain and not text_text_negatives and blk.text_from < rows:
        return torch.arange(rows, device=device) >= blk.text_from
    return None


def _lse(x: torch.Tensor, empty: Optional[torch.Tensor]) -> torch.Tensor:
    """Row logsumexp; rows of an empty set give −inf with a zero (not NaN) gradient."""
    if empty is None:
        return torch.logsumexp(x, dim=1)
    return torch.logsumexp(x.masked_fill(empty[:, None], 0.0), dim=1).masked_fill(empty, _NEG_INF)


def _pair_lse(
    logits: torch.Tensor, blk: _Block, layout: _Layout, objective: str, tt: bool
) -> tuple[torch.Tensor, torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Negatives-only filled logits and, per positive pair, the logsumexp of its competing negatives ``[c, V]``."""
    rows, device = logits.shape[0], logits.device
    filled = _excluded(logits, blk.same_idx, blk, layout, tt)
    empty = _empty_rows(blk, layout, rows, device, text_domain=False, text_text_negatives=tt)
    if objective == "mpnce":
        return filled, _lse(filled, empty)[:, None].expand(-1, layout.views), None
    empty_text = _empty_rows(blk, layout, rows, device, text_domain=True, text_text_negatives=tt)
    lse_img = _lse(filled[:, : layout.image_cols], empty)  # [c]
    lse_txt = _lse(filled[:, layout.image_cols :], empty_text)  # [c]
    return filled, torch.where(blk.pos_is_text, lse_txt[:, None], lse_img[:, None]), (lse_img, lse_txt)


@torch.no_grad()
def _pair_stats(margin: torch.Tensor, blk: _Block) -> torch.Tensor:
    """``[Σ ℓ over IT pairs, Σ ℓ over II pairs, Σ p over IT pairs, Σ p over II pairs]`` of a block, with the pair
    loss ``ℓ = softplus(margin)`` and the positive's probability ``p = σ(−margin) = e^{−ℓ}``."""
    loss, prob = F.softplus(margin), torch.sigmoid(-margin)
    it, ii = blk.pos_is_it.to(margin.dtype), blk.pos_is_ii.to(margin.dtype)
    return torch.stack([(loss * it).sum(), (loss * ii).sum(), (prob * it).sum(), (prob * ii).sum()])


def _block_loss(
    logits: torch.Tensor, blk: _Block, layout: _Layout, objective: str, tt: bool
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sum over the block of the per-pair (mpnce, infonce, weighted by the pair coefficients) or per-anchor (supcon,
    milnce) losses, differentiable; and the pair objectives' detached group statistics (``_pair_stats``)."""
    pos = logits.gather(1, blk.pos_idx)  # [c, V]
    if objective in _PAIR_OBJECTIVES:  # Σ coef · ℓ: the coefficients already hold the normalisation
        _, lse, _ = _pair_lse(logits, blk, layout, objective, tt)
        margin = lse - pos
        return (blk.pos_coef.to(margin.dtype) * F.softplus(margin)).sum(), _pair_stats(margin.detach(), blk)
    log_denom = torch.logsumexp(_excluded(logits, blk.self_idx, blk, layout, tt), dim=1)  # [c], never empty
    if objective == "supcon":
        return (log_denom - pos.mean(dim=1)).sum(), None
    return (log_denom - torch.logsumexp(pos, dim=1)).sum(), None  # milnce


@torch.no_grad()
def _block_loss_and_grad(
    logits: torch.Tensor, blk: _Block, layout: _Layout, objective: str, tt: bool
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """``(Σ losses of the block, ∂Σ/∂logits [c, M], group statistics or None)`` in closed form.

    With ``λ`` a logsumexp over a candidate set S and ``σ`` the sigmoid:
    mpnce/infonce (pair coefficient c_up) ``∂/∂s_up = −c_up σ(λ_up − s_up)``,
    ``∂/∂s_un = Σ_{p: n competes with p} c_up σ(λ_up − s_up)·e^{s_un − λ_up}``;
    supcon ``∂/∂s_ua = e^{s_ua − λ_u} − 1{a∈P(u)}/|P(u)|``;
    milnce ``∂/∂s_ua = e^{s_ua − λ_u} − 1{a∈P(u)}·softmax_P(s_u)_a``.
    """
    tiny = torch.finfo(logits.dtype).min  # exponent shift for empty rows: e^{−inf − tiny} = 0, not NaN
    pos = logits.gather(1, blk.pos_idx)  # [c, V]
    if objective in _PAIR_OBJECTIVES:
        grad, lse, per_domain = _pair_lse(logits, blk, layout, objective, tt)  # grad: a fresh copy
        margin = lse - pos
        weight = torch.sigmoid(margin) * blk.pos_coef.to(margin.dtype)  # [c, V]
        if per_domain is None:  # mpnce: one competing set per anchor
            grad.sub_(lse[:, :1].clamp(min=tiny)).exp_().mul_(weight.sum(dim=1, keepdim=True))
        else:  # infonce: the image-domain and text-domain softmaxes of the anchor
            for cols, lse_d, is_d in (
                (slice(0, layout.image_cols), per_domain[0], ~blk.pos_is_text),
                (slice(layout.image_cols, None), per_domain[1], blk.pos_is_text),
            ):
                part = grad[:, cols]
                part.sub_(lse_d[:, None].clamp(min=tiny)).exp_().mul_((weight * is_d).sum(dim=1, keepdim=True))
        grad.scatter_add_(1, blk.pos_idx, -weight)
        return (blk.pos_coef.to(margin.dtype) * F.softplus(margin)).sum(), grad, _pair_stats(margin, blk)
    grad = _excluded(logits, blk.self_idx, blk, layout, tt)
    log_denom = torch.logsumexp(grad, dim=1)  # [c]
    grad.sub_(log_denom[:, None]).exp_()  # softmax over A(u)
    if objective == "supcon":
        grad.scatter_add_(1, blk.pos_idx, torch.full_like(pos, -1.0 / layout.views))
        return (log_denom - pos.mean(dim=1)).sum(), grad, None
    log_pos = torch.logsumexp(pos, dim=1)  # milnce
    grad.scatter_add_(1, blk.pos_idx, -(pos - log_pos[:, None]).exp())
    return (log_denom - log_pos).sum(), grad, None


@dataclass(frozen=True)
class _Spec:
    objective: str
    text_text_negatives: bool
    form: str
    chunk_size: int


class _ChunkedLoss(torch.autograd.Function):
    """Σ of the losses of all rows, row chunk by row chunk, with the gradient computed in the forward pass.

    Per chunk: logits ``[c, M]`` from ``domain_logits``, the closed-form ``G = ∂Σ/∂logits``, and the similarity's
    backward for that chunk, written out for the universal column order (image columns, then text columns; per column
    domain b the logits are ``A_b · Z_bᵀ − icpt_b`` with ``A_b = slope_b ⊙ z_rows``, slope/icpt looked up per row):
    ``∂z_rows = Σ_b (G_b Z_b) ⊙ slope_b``, ``∂Z_b = G_bᵀ A_b``, ``∂slope_b = rowsum((G_b Z_b) ⊙ z_rows)``,
    ``∂icpt_b = −rowsum(G_b)``. Only the accumulated input gradients outlive a chunk, so what autograd keeps is
    ``O((R + M)·D)``; backward only scales them by the incoming gradient (nothing is recomputed).
    """

    @staticmethod
    def forward(
        ctx: Any,
        z_rows: torch.Tensor,
        z_cols: torch.Tensor,
        scales: torch.Tensor,
        offsets: torch.Tensor,
        dom_rows: torch.Tensor,
        dom_cols: torch.Tensor,
        layout: _Layout,
        spec: _Spec,
    ) -> torch.Tensor:
        need_rows, need_cols, need_sc, need_of = ctx.needs_input_grad[:4]
        need_params = need_sc or need_of
        ctx.dtypes = (z_rows.dtype, z_cols.dtype, scales.dtype, offsets.dtype)
        dtype = torch.promote_types(torch.promote_types(z_rows.dtype, z_cols.dtype), torch.float32)
        cols = z_cols.detach().to(dtype)
        sc = scales.detach().to(dtype).requires_grad_(need_params)
        of = offsets.detach().to(dtype).requires_grad_(need_params)
        with torch.enable_grad():  # a 4-element graph: table gradients → scale/offset gradients at the end
            slope_t, icpt_t = pair_tables(sc, of, spec.form)  # [2, 2] each
        slope_rows, _icpt_rows = slope_t.detach()[dom_rows], icpt_t.detach()[dom_rows]  # [R, 2]
        domain_blocks = ((0, slice(0, layout.image_cols)), (1, slice(layout.image_cols, z_cols.shape[0])))
        # Accumulated in the compute dtype, so bf16 inputs sum their chunk gradients in float32.
        d_rows = torch.zeros(z_rows.shape, dtype=dtype, device=z_rows.device) if need_rows else None
        d_cols = torch.zeros_like(cols) if need_cols else None
        d_slope_t, d_icpt_t = torch.zeros_like(slope_t), torch.zeros_like(icpt_t)
        total = torch.zeros((), dtype=dtype, device=z_rows.device)
        stats = torch.zeros(4, dtype=dtype, device=z_rows.device)
        rows = z_rows.shape[0]
        for start in range(0, rows, spec.chunk_size):
            stop = min(start + spec.chunk_size, rows)
            chunk = z_rows[start:stop].detach().to(dtype)  # [c, D]
            logits = domain_logits(chunk, dom_rows[start:stop], cols, dom_cols, sc.detach(), of.detach(), spec.form)
            value, grad, block_stats = _block_loss_and_grad(
                logits, layout.block(start, stop, z_rows.device), layout, spec.objective, spec.text_text_negatives
            )
            del logits
            total += value
            if block_stats is not None:
                stats += block_stats
            if not (need_rows or need_cols or need_params):
                continue
            d_slope = chunk.new_zeros(stop - start, 2)  # per row, per b
            d_icpt = chunk.new_zeros(stop - start, 2)
            for b, cs in domain_blocks:
                grad_b, cols_b, slope_b = grad[:, cs], cols[cs], slope_rows[start:stop, b : b + 1]
                if need_rows or need_params:
                    d_a = grad_b @ cols_b  # [c, D] = ∂A_b
                    if need_rows:
                        d_rows[start:stop].addcmul_(d_a, slope_b)
                    if need_params:
                        d_slope[:, b] = (d_a * chunk).sum(dim=1)
                        d_icpt[:, b] = -grad_b.sum(dim=1)
                if need_cols:
                    d_cols[cs].addmm_(grad_b.T, chunk * slope_b)
            if need_params:  # rows → their row domain's line of the [2, 2] tables
                d_slope_t.index_add_(0, dom_rows[start:stop], d_slope)
                d_icpt_t.index_add_(0, dom_rows[start:stop], d_icpt)
            del grad
        d_sc = d_of = None
        if need_params:
            d_sc, d_of = torch.autograd.grad((slope_t, icpt_t), (sc, of), (d_slope_t, d_icpt_t), allow_unused=True)
            d_sc = torch.zeros_like(sc) if d_sc is None else d_sc
            d_of = torch.zeros_like(of) if d_of is None else d_of
        ctx.save_for_backward(d_rows, d_cols, d_sc if need_sc else None, d_of if need_of else None)
        ctx.mark_non_differentiable(stats)
        return total, stats

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_stats: Any) -> tuple[Optional[torch.Tensor], ...]:
        grads = tuple(
            None if g is None else (grad_total * g).to(dtype)
            for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True)
        )
        return (*grads, None, None, None, None)


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------


def _check_options(
    objective: str,
    similarity_form: str,
    chunk_size: int,
    rank: int,
    world_size: int,
    text_positives: str = "all",
    balance: str = "count",
    group_weights: tuple[float, float] = (1.0, 1.0),
) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if similarity_form not in SIMILARITY_FORMS:
        raise ValueError(f"similarity_form must be one of {SIMILARITY_FORMS}, got {similarity_form!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ValueError(f"chunk_size must be an int ≥ 0 (0 = unchunked), got {chunk_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size ≥ 1 and 0 ≤ rank < world_size, got rank={rank}, world_size={world_size}")
    if text_positives not in TEXT_POSITIVES:
        raise ValueError(f"text_positives must be one of {TEXT_POSITIVES}, got {text_positives!r}")
    if balance not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {balance!r}")
    if len(group_weights) != 2 or min(group_weights) < 0 or sum(group_weights) <= 0:
        raise ValueError(
            f"group_weights must be two weights ≥ 0 (image–text, image–image), not both 0, got {group_weights!r}"
        )
    if objective not in _PAIR_OBJECTIVES and (text_positives != "all" or balance != "count"):
        raise ValueError(
            f"text_positives={text_positives!r} and balance={balance!r} need a per-pair objective "
            f"{_PAIR_OBJECTIVES}; {objective} averages over anchors with every view a positive"
        )


def _with_coefficients(
    layout: _Layout, text_positives: str, balance: str, group_weights: tuple[float, float]
) -> _Layout:
    """The layout with the caption views and the weight of one pair of each group: ``1/(all pairs)`` for ``count``
    (the mean over positive pairs), ``w_g/(pairs of g)`` for ``group`` (each group's mean, then weighted)."""
    layout = dataclasses.replace(layout, text_views=1 if text_positives == "caption" else 0)
    n_it, n_ii = layout.pair_counts()
    if balance == "count":
        return dataclasses.replace(layout, coef_it=1.0 / (n_it + n_ii), coef_ii=1.0 / (n_it + n_ii))
    w_it, w_ii = group_weights
    return dataclasses.replace(layout, coef_it=w_it / n_it, coef_ii=w_ii / n_ii if n_ii else 0.0)


def _group_metrics(stats: Optional[torch.Tensor], layout: _Layout) -> dict[str, torch.Tensor]:
    """Each group's mean pair loss and mean positive probability, over this call's rows."""
    if stats is None:
        return {}
    n_it, n_ii = layout.pair_counts()
    out = {"loss_it": stats[0] / n_it, "prob_it": stats[2] / n_it}
    if n_ii:
        out.update(loss_ii=stats[1] / n_ii, prob_ii=stats[3] / n_ii)
    return {k: v.detach().float() for k, v in out.items()}


def _check_inputs(
    image_features: torch.Tensor, text_features: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor
) -> None:
    if image_features.dim() != 3:
        raise ValueError(f"image_features must be [B, V, D] (V views per sample), got {tuple(image_features.shape)}")
    batch, views, dim = image_features.shape
    if views < 1:
        raise ValueError(f"image_features must hold at least one view per sample (V ≥ 1), got V = {views}")
    if batch < 1:
        raise ValueError("image_features holds an empty batch (B = 0)")
    if text_features.dim() != 2 or tuple(text_features.shape) != (batch, dim):
        raise ValueError(
            f"text_features must be [B, D] = [{batch}, {dim}] to match image_features "
            f"{tuple(image_features.shape)}, got {tuple(text_features.shape)}"
        )
    if not (image_features.is_floating_point() and text_features.is_floating_point()):
        raise ValueError(f"features must be floating point, got {image_features.dtype} and {text_features.dtype}")
    if tuple(scales.shape) != (3,) or tuple(offsets.shape) != (3,):
        raise ValueError(
            f"scales and offsets must be [3] (one per domain pair II, IT, TT), got "
            f"{tuple(scales.shape)} and {tuple(offsets.shape)}"
        )


@torch.no_grad()
def _metrics(
    image_features: torch.Tensor, text_features: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Detached logging values: mean positive cosine per domain pair (this rank's samples) and the similarity params."""
    img, txt = image_features.detach().float(), text_features.detach().float()
    views = img.shape[1]
    out = {"pos_cos_it": torch.einsum("bvd,bd->bv", img, txt).mean()}  # over (sample, view)
    if views > 1:  # II positives exist only with two or more views
        total = img.sum(dim=1)  # [B, D]
        # Σ_{v≠w} z_v·z_w = |Σ_v z_v|² − Σ_v |z_v|²
        off_diag = (total * total).sum(dim=1) - (img * img).sum(dim=(1, 2))  # [B]
        out["pos_cos_ii"] = off_diag.mean() / (views * (views - 1))
    for name, idx in (("ii", PAIR_II), ("it", PAIR_IT), ("tt", PAIR_TT)):
        out[f"scale_{name}"] = scales[idx].detach().float()
        out[f"offset_{name}"] = offsets[idx].detach().float()
    return out


def _rows_and_layout(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    z_cols: torch.Tensor,
    dom_cols: torch.Tensor,
    local_loss: bool,
    rank: int,
    world_size: int,
) -> tuple[torch.Tensor, torch.Tensor, _Layout]:
    """This call's row elements and the row/column layout (one process, local rows, or every gathered row)."""
    batch, views, _ = image_features.shape
    global_batch = z_cols.shape[0] // (views + 1)
    if world_size == 1:
        return z_cols, dom_cols, _Layout(views, batch, 0, batch)
    if local_loss:
        z_rows, _, dom_rows = universal_embeddings(image_features, text_features)  # [(V+1)·B, D]
        return z_rows, dom_rows, _Layout(views, batch, rank * batch, global_batch)
    return z_cols, dom_cols, _Layout(views, global_batch, 0, global_batch)


def universal_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    *,
    objective: str = "mpnce",
    text_text_negatives: bool = True,
    similarity_form: str = "shift_scale",
    chunk_size: int = 0,
    local_loss: bool = True,
    gather_with_grad: bool = True,
    rank: int = 0,
    world_size: int = 1,
    text_positives: str = "all",
    balance: str = "count",
    group_weights: tuple[float, float] = (1.0, 1.0),
) -> dict[str, torch.Tensor]:
    """MP-NCE (or an ablation objective) over the universal space; the equations are in the module docstring.

    Args:
        image_features: ``[B, V, D]`` L2-normalised view embeddings of this rank (V ≥ 1).
        text_features: ``[B, D]`` L2-normalised text embeddings of this rank.
        scales: ``[3]`` similarity scale per domain pair (II, IT, TT); differentiable.
        offsets: ``[3]`` similarity offset per domain pair; differentiable.
        objective: ``mpnce`` | ``infonce`` | ``supcon`` | ``milnce``.
        text_text_negatives: keep the other texts among a text anchor's negatives (and denominators).
        similarity_form: ``shift_scale`` (``scale·(cos − offset)``) or ``scale_shift`` (``scale·cos − offset``).
        chunk_size: rows per chunk of the memory-bounded path (uneven last chunk allowed); 0 = unchunked.
        local_loss: rows are this rank's elements, columns all gathered elements (else rows are all of them too);
            only matters when ``world_size > 1``.
        gather_with_grad: differentiable all-gather (needed for the exact global-batch gradient).
        rank: this process's rank; world_size: number of ranks (1 = no gather).
        text_positives: ``all`` (the paper: every view is a positive of its text) or ``caption`` (only view 0, the
            caption view; the other views of the sample are then neither positives nor negatives of the text).
        balance: ``count`` (the paper: the mean over all positive pairs) or ``group`` (the mean over the image–text
            pairs and the mean over the image–image pairs, combined with ``group_weights``). Pair objectives only.
        group_weights: ``(w_it, w_ii)`` of ``balance="group"``.

    Returns:
        ``{"contrastive_loss": scalar float32 (float64 for float64 features)}`` plus detached metrics, none ending in
        ``_loss``: ``pos_cos_it``, ``pos_cos_ii`` (V ≥ 2 only), ``scale_{ii,it,tt}``, ``offset_{ii,it,tt}`` and, for
        the pair objectives, each group's mean pair loss and positive probability ``loss_it``, ``prob_it``,
        ``loss_ii``, ``prob_ii`` (over this call's rows).

    Raises:
        ValueError: malformed shapes, V < 1, or an unknown option (the message names the valid choices).
    """
    _check_options(objective, similarity_form, chunk_size, rank, world_size, text_positives, balance, group_weights)
    _check_inputs(image_features, text_features, scales, offsets)
    all_img, all_txt = gather_universal(
        image_features, text_features, rank=rank, world_size=world_size, gather_with_grad=gather_with_grad
    )
    z_cols, _, dom_cols = universal_embeddings(all_img, all_txt)  # [M, D], [M]
    z_rows, dom_rows, layout = _rows_and_layout(
        image_features, text_features, z_cols, dom_cols, local_loss, rank, world_size
    )
    layout = _with_coefficients(layout, text_positives, balance, group_weights)
    spec = _Spec(objective, text_text_negatives, similarity_form, chunk_size)
    with torch.autocast(device_type=z_rows.device.type, enabled=False):  # float32 logsumexp/softplus under AMP
        if chunk_size > 0:
            total, stats = _ChunkedLoss.apply(z_rows, z_cols, scales, offsets, dom_rows, dom_cols, layout, spec)
            stats = stats if objective in _PAIR_OBJECTIVES else None
        else:
            logits = domain_logits(z_rows, dom_rows, z_cols, dom_cols, scales, offsets, similarity_form)  # [R, M]
            total, stats = _block_loss(
                logits, layout.block(0, layout.rows, z_rows.device), layout, objective, text_text_negatives
            )
        metrics = _metrics(image_features, text_features, scales, offsets)
    loss = total if objective in _PAIR_OBJECTIVES else total / layout.rows  # pair coefficients hold the mean
    return {"contrastive_loss": loss, **metrics, **_group_metrics(stats, layout)}


class UniversalContrastiveLoss(nn.Module):
    """Parameter-free module around :func:`universal_contrastive_loss` for open_clip_train (``--loss uniclip_mpnce``).

    Called as ``loss(**model_out, output_dict=True)`` with the UniCLIP training outputs ``image_features [B, V, D]``,
    ``text_features [B, D]``, ``logit_scale []`` (ignored: the image–text scale is also ``logit_bias[0, 1]``) and
    ``logit_bias [2, 3]`` (row 0: scale per domain pair II, IT, TT; row 1: offset per domain pair); other keys
    (``aug_params``) are ignored. The constructor arguments mean what they mean for the function, except that
    ``local_loss`` and ``gather_with_grad`` default to False like open_clip_train's flags.

    Raises:
        ValueError: an unknown objective or similarity form, a negative chunk size or an impossible rank, naming the
            valid choices; in forward, malformed features or a ``logit_bias`` that is not ``[2, 3]``.
    """

    def __init__(
        self,
        objective: str = "mpnce",
        text_text_negatives: bool = True,
        similarity_form: str = "shift_scale",
        chunk_size: int = 0,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        rank: int = 0,
        world_size: int = 1,
        text_positives: str = "all",
        balance: str = "count",
        group_weights: tuple[float, float] = (1.0, 1.0),
    ):
        super().__init__()
        group_weights = tuple(float(w) for w in group_weights)  # type: ignore[assignment]
        _check_options(objective, similarity_form, chunk_size, rank, world_size, text_positives, balance, group_weights)
        self.objective, self.text_text_negatives, self.similarity_form = objective, text_text_negatives, similarity_form
        self.chunk_size, self.local_loss, self.gather_with_grad = chunk_size, local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size
        self.text_positives, self.balance, self.group_weights = text_positives, balance, group_weights

    def forward(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        logit_scale: Optional[torch.Tensor],
        logit_bias: torch.Tensor,
        output_dict: bool = False,
        **_: Any,
    ) -> Any:
        """Returns the dict of :func:`universal_contrastive_loss` if ``output_dict`` else the total loss tensor."""
        if not isinstance(logit_bias, torch.Tensor) or tuple(logit_bias.shape) != (2, 3):
            shape = tuple(logit_bias.shape) if isinstance(logit_bias, torch.Tensor) else type(logit_bias).__name__
            raise ValueError(
                f"logit_bias must be [2, 3] (row 0: scales, row 1: offsets per domain pair II, IT, TT) "
                f"as UniCLIP's forward returns it, got {shape}: is the model a UniCLIP model?"
            )
        out = universal_contrastive_loss(
            image_features,
            text_features,
            logit_bias[0],
            logit_bias[1],
            objective=self.objective,
            text_text_negatives=self.text_text_negatives,
            similarity_form=self.similarity_form,
            chunk_size=self.chunk_size,
            local_loss=self.local_loss,
            gather_with_grad=self.gather_with_grad,
            rank=self.rank,
            world_size=self.world_size,
            text_positives=self.text_positives,
            balance=self.balance,
            group_weights=self.group_weights,
        )
        return out if output_dict else out["contrastive_loss"]

    def extra_repr(self) -> str:
        return (
            f"objective={self.objective!r}, text_text_negatives={self.text_text_negatives}, "
            f"similarity_form={self.similarity_form!r}, chunk_size={self.chunk_size}, "
            f"local_loss={self.local_loss}, gather_with_grad={self.gather_with_grad}, "
            f"rank={self.rank}, world_size={self.world_size}, text_positives={self.text_positives!r}, "
            f"balance={self.balance!r}, group_weights={self.group_weights}"
        )
