"""MP-NCE and its ablation objectives: naive float64 loops from the formulas, gradcheck, closed forms, open_clip's
ClipLoss, chunked-path parity and its saved-memory bound, bf16 autocast, the module contract."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

import uniclip_plugin.losses.mpnce as mpnce
from uniclip_plugin.losses import OBJECTIVES, UniversalContrastiveLoss, universal_contrastive_loss
from uniclip_plugin.similarity import SIMILARITY_FORMS, universal_embeddings
from uniclip_plugin.testing.memory import saved_tensor_bytes

F64 = torch.float64


def _features(b: int, v: int, d: int, seed: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, v, d, generator=g, dtype=F64), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=F64), dim=-1)
    return img.to(dtype), txt.to(dtype)


def _params(domain: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct scale/offset per domain pair (domain similarity on) or one shared pair (off)."""
    if not domain:
        return torch.full((3,), 7.5, dtype=F64), torch.full((3,), 0.1, dtype=F64)
    g = torch.Generator().manual_seed(100 + seed)
    return 2 + 10 * torch.rand(3, generator=g, dtype=F64), 0.3 * torch.randn(3, generator=g, dtype=F64)


def naive_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    objective: str,
    tt_neg: bool = True,
    form: str = "shift_scale",
) -> torch.Tensor:
    """Python loops over anchors and pairs, straight from the definitions in losses/mpnce.py."""
    b, v, _ = img.shape
    elems = [(img[i, k], i, 0) for i in range(b) for k in range(v)] + [(txt[i], i, 1) for i in range(b)]

    def s(a: int, c: int) -> torch.Tensor:
        (za, _, da), (zc, _, dc) = elems[a], elems[c]
        cos, pair = torch.dot(za, zc), da + dc
        return scales[pair] * (cos - offsets[pair]) if form == "shift_scale" else scales[pair] * cos - offsets[pair]

    def e(a: int, c: int) -> torch.Tensor:
        return torch.exp(s(a, c))

    terms = []
    for u, (_, iu, du) in enumerate(elems):
        pos = [p for p, (_, ip, _) in enumerate(elems) if p != u and ip == iu]
        neg = [n for n, (_, i_n, dn) in enumerate(elems) if i_n != iu and (tt_neg or not (du == 1 and dn == 1))]
        if objective == "mpnce":  # each positive against the anchor's negatives
            for p in pos:
                terms.append(-torch.log(e(u, p) / (e(u, p) + sum(e(u, n) for n in neg))))
        elif objective == "infonce":  # each positive against the anchor's negatives in the positive's domain
            for p in pos:
                same_dom = [n for n in neg if elems[n][2] == elems[p][2]]
                terms.append(-torch.log(e(u, p) / (e(u, p) + sum(e(u, n) for n in same_dom))))
        elif objective == "supcon":
            denom = sum(e(u, a) for a in pos + neg)
            terms.append(-sum(torch.log(e(u, p) / denom) for p in pos) / len(pos))
        elif objective == "milnce":
            denom = sum(e(u, a) for a in pos + neg)
            terms.append(-torch.log(sum(e(u, p) for p in pos) / denom))
    return torch.stack(terms).mean()


def _loss(*args: torch.Tensor, **kw: object) -> torch.Tensor:
    return universal_contrastive_loss(*args, **kw)["contrastive_loss"]


# ---------------------------------------------------------------------------------------------------------------------
# Exactness
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("domain", [True, False], ids=["domain_sim", "shared_sim"])
def test_matches_naive_reference(objective: str, views: int, domain: bool) -> None:
    for seed in range(3):
        img, txt = _features(4, views, 6, seed)
        scales, offsets = _params(domain, seed)
        for tt_neg, form in itertools.product([True, False], SIMILARITY_FORMS):
            want = naive_loss(img, txt, scales, offsets, objective, tt_neg, form)
            for chunk in (0, 5):  # unchunked (autograd) and chunked (closed-form gradient) paths
                got = _loss(
                    img,
                    txt,
                    scales,
                    offsets,
                    objective=objective,
                    text_text_negatives=tt_neg,
                    similarity_form=form,
                    chunk_size=chunk,
                )
                assert got.dtype == F64
                assert abs(got.item() - want.item()) <= 1e-10, (seed, tt_neg, form, chunk, got, want)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("chunk", [0, 4], ids=["unchunked", "chunked"])
def test_gradcheck(objective: str, chunk: int) -> None:
    """d/d(image features, text features, scales, offsets), with text–text negatives on and off."""
    img, txt = _features(3, 2, 4, seed=7)
    scales, offsets = _params(True, 7)
    inputs = tuple(t.clone().requires_grad_() for t in (img, txt, scales, offsets))
    for tt_neg, form in ((True, "shift_scale"), (False, "scale_shift")):
        assert torch.autograd.gradcheck(
            lambda a, b, c, d, tt_neg=tt_neg, form=form: _loss(
                a, b, c, d, objective=objective, text_text_negatives=tt_neg, similarity_form=form, chunk_size=chunk
            ),
            inputs,
        )


def _closed_form(objective: str, b: int, v: int, tt_neg: bool) -> float:
    """All features equal, one shared scale/offset: every similarity is the same c, so e^c cancels everywhere.

    |N(u)| = (V+1)(B−1) for every anchor with text–text negatives, V(B−1) for a text anchor without them;
    |A(u)| = |P(u)| + |N(u)| with |P(u)| = V. Per term: mpnce log(1 + |N(u)|); supcon log|A(u)|; milnce log(|A(u)|/V);
    infonce log(1 + #negatives in the positive's domain) = log(1 + V(B−1)) for image positives, log(B) for texts.
    Image anchors: B·V of them, text anchors: B; V positive pairs each.
    """
    n_img_anchor = (v + 1) * (b - 1)
    n_txt_anchor = (v + 1) * (b - 1) if tt_neg else v * (b - 1)
    if objective == "mpnce":  # mean over pairs = mean over anchors (V pairs each)
        per_img, per_txt = math.log(1 + n_img_anchor), math.log(1 + n_txt_anchor)
    elif objective == "supcon":
        per_img, per_txt = math.log(v + n_img_anchor), math.log(v + n_txt_anchor)
    elif objective == "milnce":
        per_img, per_txt = math.log((v + n_img_anchor) / v), math.log((v + n_txt_anchor) / v)
    else:  # infonce: image anchor = (V−1) image positives + 1 text; text anchor = V images
        per_img = ((v - 1) * math.log(1 + v * (b - 1)) + math.log(b)) / v
        per_txt = math.log(1 + v * (b - 1))
    return (v * per_img + per_txt) / (v + 1)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("tt_neg", [True, False])
def test_closed_form_when_all_features_coincide(objective: str, tt_neg: bool) -> None:
    b, v, d = 5, 2, 8
    img = F.normalize(torch.ones(b, v, d, dtype=F64), dim=-1)
    txt = F.normalize(torch.ones(b, d, dtype=F64), dim=-1)
    scales, offsets = torch.full((3,), 10.0, dtype=F64), torch.full((3,), 0.2, dtype=F64)
    for chunk in (0, 4):
        got = _loss(img, txt, scales, offsets, objective=objective, text_text_negatives=tt_neg, chunk_size=chunk)
        assert got.item() == pytest.approx(_closed_form(objective, b, v, tt_neg), abs=1e-12)
    if objective == "mpnce" and tt_neg:  # the headline value: log(1 + (V+1)(B−1)) = log 13
        assert got.item() == pytest.approx(math.log(13), abs=1e-12)


def test_closed_form_with_domain_dependent_similarity() -> None:
    """All cosines 1, logit c_d = scale_d·(1 − offset_d) per domain pair: the pair loss is log(1 + Σ_n e^{c_n − c_p}).

    Image anchor: negatives V(B−1) images (c_II) + (B−1) texts (c_IT); positives V−1 images (c_II), 1 text (c_IT).
    Text anchor: negatives V(B−1) images (c_IT) + (B−1) texts (c_TT); positives V images (c_IT).
    infonce is unchanged: each of its softmaxes holds a single domain pair.
    """
    b, v, d = 4, 3, 6
    img, txt = F.normalize(torch.ones(b, v, d, dtype=F64), dim=-1), F.normalize(torch.ones(b, d, dtype=F64), dim=-1)
    scales, offsets = torch.tensor([12.0, 5.0, 2.0], dtype=F64), torch.tensor([0.1, -0.3, 0.5], dtype=F64)
    c_ii, c_it, c_tt = (scales * (1 - offsets)).tolist()
    neg_img = v * (b - 1) * math.exp(c_ii) + (b - 1) * math.exp(c_it)
    neg_txt = v * (b - 1) * math.exp(c_it) + (b - 1) * math.exp(c_tt)
    image_anchor = ((v - 1) * math.log(1 + neg_img / math.exp(c_ii)) + math.log(1 + neg_img / math.exp(c_it))) / v
    text_anchor = math.log(1 + neg_txt / math.exp(c_it))
    want = (v * image_anchor + text_anchor) / (v + 1)
    assert _loss(img, txt, scales, offsets).item() == pytest.approx(want, rel=1e-12)
    assert _loss(img, txt, scales, offsets, objective="infonce").item() == pytest.approx(
        _closed_form("infonce", b, v, True), abs=1e-12
    )


@pytest.mark.parametrize("chunk", [0, 4])
def test_infonce_with_one_view_is_open_clip_clip_loss(chunk: int) -> None:
    for seed in range(3):
        img, txt = _features(6, 1, 8, seed)
        scales = torch.tensor([3.0, 11.0, 5.0], dtype=F64)
        offsets = torch.tensor([0.2, 0.3, -0.1], dtype=F64)  # the IT offset cancels in each softmax
        ours = _loss(img, txt, scales, offsets, objective="infonce", chunk_size=chunk)
        theirs = ClipLoss()(img[:, 0], txt, scales[1])
        assert abs(ours.item() - theirs.item()) <= 1e-10


def test_one_sample_has_no_negatives_and_stays_finite() -> None:
    """B = 1 (one process): no negatives at all; pair objectives give softplus(−inf) = 0 with zero, not NaN, grads."""
    img, txt = _features(1, 2, 6, seed=1)
    scales, offsets = _params(True, 1)
    for objective, chunk, tt_neg in itertools.product(OBJECTIVES, (0, 2), (True, False)):
        leaves = [t.clone().requires_grad_() for t in (img, txt, scales, offsets)]
        loss = _loss(*leaves, objective=objective, chunk_size=chunk, text_text_negatives=tt_neg)
        loss.backward()
        assert abs(loss.item() - naive_loss(img, txt, scales, offsets, objective, tt_neg).item()) <= 1e-12
        assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_row_layout_follows_sample_and_domain_ids() -> None:
    """The column indices the loss uses are exactly the id-based sets of DESIGN.md (rank 1 of 3, local rows)."""
    b, v, world, rank = 3, 2, 3, 1
    img, txt = _features(world * b, v, 4, seed=0)
    _, sid_cols, _ = universal_embeddings(img, txt)
    _, sid_rows, dom_rows = universal_embeddings(
        img[rank * b : (rank + 1) * b], txt[rank * b : (rank + 1) * b], sample_offset=rank * b
    )
    layout = mpnce._Layout(v, b, rank * b, world * b)
    blk = layout.block(0, layout.rows, torch.device("cpu"))
    for r in range(layout.rows):
        same = set(torch.nonzero(sid_cols == sid_rows[r]).flatten().tolist())
        self_col = (rank * b * v + r) if dom_rows[r] == 0 else (world * b * v + rank * b + r - b * v)
        assert set(blk.same_idx[r].tolist()) == same and blk.self_idx[r].item() == self_col
        assert set(blk.pos_idx[r].tolist()) == same - {self_col}
        assert blk.pos_is_text[r].tolist() == [c >= world * b * v for c in blk.pos_idx[r].tolist()]
    assert blk.text_from == b * v


# ---------------------------------------------------------------------------------------------------------------------
# Chunked path
# ---------------------------------------------------------------------------------------------------------------------


def _loss_and_grads(chunk: int, objective: str, tt_neg: bool, dtype: torch.dtype = F64) -> list[torch.Tensor]:
    img, txt = _features(7, 2, 8, seed=3, dtype=dtype)
    scales, offsets = (t.to(dtype) for t in _params(True, 3))
    leaves = [t.clone().requires_grad_() for t in (img, txt, scales, offsets)]
    loss = _loss(*leaves, objective=objective, chunk_size=chunk, text_text_negatives=tt_neg)
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("tt_neg", [True, False])
def test_chunked_equals_unchunked(objective: str, tt_neg: bool) -> None:
    """Loss and d/d(features, scales, offsets). 21 rows: chunk 7 divides them, 5 and 8 leave an uneven last chunk,
    1 is one row per chunk, 100 is one chunk for all rows.

    float64: the two paths (autograd vs closed-form gradient in forward) agree to 1e-10. float32: they differ only by
    summation order, up to ~2e-6 relative on the scale/offset gradients (sums over all R·M logits), hence rtol 1e-5.
    """
    want64, want32 = _loss_and_grads(0, objective, tt_neg), _loss_and_grads(0, objective, tt_neg, torch.float32)
    for chunk in (7, 5, 8, 1, 100):
        for w, g in zip(want64, _loss_and_grads(chunk, objective, tt_neg), strict=False):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-10)
        for w, g in zip(want32, _loss_and_grads(chunk, objective, tt_neg, torch.float32), strict=False):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _saved_bytes(b: int, chunk: int) -> int:
    """Bytes of the distinct storages autograd saves for backward (saved_tensors_hooks, deduplicated by pointer)."""
    img, txt = _features(b, 2, 16, seed=0, dtype=torch.float32)
    img, txt = img.requires_grad_(), txt.requires_grad_()
    scales, offsets = torch.full((3,), 10.0, requires_grad=True), torch.zeros(3, requires_grad=True)
    return saved_tensor_bytes(lambda: _loss(img, txt, scales, offsets, chunk_size=chunk))


def test_chunking_bounds_the_memory_autograd_keeps() -> None:
    """Unchunked, autograd keeps [rows, M] logits (quadratic in M); chunked, only O((rows + M)·D) (linear)."""
    small, large = 32, 128  # M = 96 and 384
    unchunked = _saved_bytes(small, 0), _saved_bytes(large, 0)
    chunked = _saved_bytes(small, 16), _saved_bytes(large, 16)
    assert unchunked[1] / unchunked[0] > 12  # ≈ (384/96)² = 16
    assert chunked[1] / chunked[0] < 5  # ≈ 384/96 = 4
    m = 3 * large
    assert chunked[1] < m * m * 4 / 8  # far below one fp32 M × M matrix
    assert unchunked[1] > m * m * 4  # while the unchunked path keeps at least one


# ---------------------------------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 6])
def test_bf16_autocast_keeps_fp32_logits(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    img, txt = _features(8, 2, 16, seed=1, dtype=torch.float32)
    scales, offsets = torch.tensor([14.0, 12.0, 9.0]), torch.tensor([0.1, 0.0, 0.2])
    seen: list[torch.dtype] = []
    original = mpnce.domain_logits

    def spy(*args: object, **kw: object) -> torch.Tensor:
        logits = original(*args, **kw)
        seen.append(logits.dtype)
        return logits

    monkeypatch.setattr(mpnce, "domain_logits", spy)
    leaves = [img.bfloat16().requires_grad_(), txt.bfloat16().requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = universal_contrastive_loss(*leaves, scales, offsets, chunk_size=chunk)
    loss = out["contrastive_loss"]
    loss.backward()
    assert seen and set(seen) == {torch.float32}
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in leaves)
    # The same bf16-rounded features in fp32 without autocast: only fp32 rounding apart.
    exact = _loss(img.bfloat16().float(), txt.bfloat16().float(), scales, offsets)
    assert abs(loss.item() - exact.item()) < 1e-5
    # And close to the loss of the unrounded fp32 features.
    assert abs(loss.item() - _loss(img, txt, scales, offsets).item()) < 0.05
    assert all(v.dtype == torch.float32 for v in out.values())


# ---------------------------------------------------------------------------------------------------------------------
# Module contract, metrics, validation
# ---------------------------------------------------------------------------------------------------------------------


def test_module_has_no_parameters_and_reads_logit_bias() -> None:
    loss = UniversalContrastiveLoss(objective="supcon", chunk_size=3)
    assert list(loss.parameters()) == [] and list(loss.buffers()) == [] and loss.state_dict() == {}
    img, txt = _features(4, 2, 8, seed=2)
    scales, offsets = _params(True, 2)
    out = loss(
        image_features=img,
        text_features=txt,
        logit_scale=torch.tensor(123.0),
        aug_params=torch.zeros(4, 2, 12),
        logit_bias=torch.stack([scales, offsets]),
        output_dict=True,
    )
    assert abs(out["contrastive_loss"].item() - naive_loss(img, txt, scales, offsets, "supcon").item()) <= 1e-10
    assert [k for k in out if k.endswith("_loss")] == ["contrastive_loss"]
    total = loss(img, txt, None, torch.stack([scales, offsets]))  # positional; logit_scale is ignored
    assert isinstance(total, torch.Tensor) and total.dim() == 0 and torch.equal(total, out["contrastive_loss"])
    assert "objective='supcon'" in repr(loss)


def test_metrics_are_detached_means_of_positive_cosines_and_the_parameters() -> None:
    b, v = 5, 3
    img, txt = _features(b, v, 8, seed=4)
    scales, offsets = (t.clone().requires_grad_() for t in _params(True, 4))
    out = universal_contrastive_loss(img.requires_grad_(), txt, scales, offsets)
    ii = [img[i, k] @ img[i, w] for i in range(b) for k in range(v) for w in range(v) if k != w]
    it = [img[i, k] @ txt[i] for i in range(b) for k in range(v)]
    assert out["pos_cos_ii"].item() == pytest.approx(torch.stack(ii).mean().item(), abs=1e-6)
    assert out["pos_cos_it"].item() == pytest.approx(torch.stack(it).mean().item(), abs=1e-6)
    for k, name in enumerate(("ii", "it", "tt")):
        assert out[f"scale_{name}"].item() == pytest.approx(scales[k].item())
        assert out[f"offset_{name}"].item() == pytest.approx(offsets[k].item())
    assert all(not out[k].requires_grad for k in out if k != "contrastive_loss")
    assert out["contrastive_loss"].requires_grad
    assert "pos_cos_ii" not in universal_contrastive_loss(img[:, :1], txt, scales, offsets)  # V = 1: no II pairs


def test_bad_inputs_are_clear_errors() -> None:
    img, txt = _features(4, 2, 8, seed=0)
    s, o = torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64)
    with pytest.raises(ValueError, match=r"text_features must be \[B, D\] = \[4, 8\]"):
        universal_contrastive_loss(img, txt[:3], s, o)
    with pytest.raises(ValueError, match=r"text_features must be \[B, D\]"):
        universal_contrastive_loss(img, txt[:, :5], s, o)
    with pytest.raises(ValueError, match="V ≥ 1"):
        universal_contrastive_loss(img[:, :0], txt, s, o)
    with pytest.raises(ValueError, match=r"image_features must be \[B, V, D\]"):
        universal_contrastive_loss(img[:, 0], txt, s, o)
    with pytest.raises(ValueError, match="scales and offsets must be"):
        universal_contrastive_loss(img, txt, s[:1], o)
    with pytest.raises(ValueError, match=r"objective must be one of \('mpnce', 'infonce', 'supcon', 'milnce'\)"):
        UniversalContrastiveLoss(objective="nce")
    with pytest.raises(ValueError, match=r"similarity_form must be one of \('shift_scale', 'scale_shift'\)"):
        UniversalContrastiveLoss(similarity_form="cosine")
    with pytest.raises(ValueError, match="chunk_size"):
        UniversalContrastiveLoss(chunk_size=-1)
    with pytest.raises(ValueError, match="rank"):
        UniversalContrastiveLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"logit_bias must be \[2, 3\]"):
        UniversalContrastiveLoss()(img, txt, None, logit_bias=torch.ones(3))
    with pytest.raises(RuntimeError, match="no initialised process group"):
        universal_contrastive_loss(img, txt, s, o, rank=0, world_size=2)


# ---------------------------------------------------------------------------------------------------------------------
# Caption-view positives and group-balanced MP-NCE (per-pair objectives)
# ---------------------------------------------------------------------------------------------------------------------


def naive_pair_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    objective: str,
    text_positives: str,
    balance: str,
    weights: tuple[float, float],
) -> dict[str, torch.Tensor]:
    """Loops from the definitions: positives are same-sample pairs, minus the text's pairs with views ≥ 1 when only
    the caption view (view 0) pairs with the text; those pairs are then neither positive nor negative. ``count``:
    mean over every positive pair; ``group``: w_it · mean over IT pairs + w_ii · mean over II pairs."""
    b, v, _ = img.shape
    elems = [(img[i, k], i, 0, k) for i in range(b) for k in range(v)] + [(txt[i], i, 1, 0) for i in range(b)]

    def s(a: int, c: int) -> torch.Tensor:
        (za, _, da, _), (zc, _, dc, _) = elems[a], elems[c]
        return scales[da + dc] * (torch.dot(za, zc) - offsets[da + dc])

    def pairs_with_text(a: int, c: int) -> bool:
        (_, _, da, ka), (_, _, dc, kc) = elems[a], elems[c]
        return da != dc and (text_positives == "all" or (ka if da == 0 else kc) == 0)

    groups: dict[str, list[torch.Tensor]] = {"it": [], "ii": []}
    for u, (_, iu, du, _) in enumerate(elems):
        pos = [
            p
            for p, (_, ip, dp, _) in enumerate(elems)
            if p != u and ip == iu and (du == dp == 0 or pairs_with_text(u, p))
        ]
        neg = [n for n, (_, i_n, _, _) in enumerate(elems) if i_n != iu]
        for p in pos:
            cands = neg if objective == "mpnce" else [n for n in neg if elems[n][2] == elems[p][2]]
            term = -torch.log(torch.exp(s(u, p)) / (torch.exp(s(u, p)) + sum(torch.exp(s(u, n)) for n in cands)))
            groups["it" if elems[p][2] != du else "ii"].append(term)
    every = groups["it"] + groups["ii"]
    if balance == "count":
        loss = torch.stack(every).mean()
    else:
        loss = weights[0] * torch.stack(groups["it"]).mean()
        if groups["ii"]:
            loss = loss + weights[1] * torch.stack(groups["ii"]).mean()
    out = {
        "loss": loss,
        "loss_it": torch.stack(groups["it"]).mean(),
        "prob_it": torch.stack([torch.exp(-t) for t in groups["it"]]).mean(),
    }
    if groups["ii"]:
        out.update(
            loss_ii=torch.stack(groups["ii"]).mean(), prob_ii=torch.stack([torch.exp(-t) for t in groups["ii"]]).mean()
        )
    return out


@pytest.mark.parametrize("objective", ["mpnce", "infonce"])
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("text_positives", ["all", "caption"])
@pytest.mark.parametrize("balance", ["count", "group"])
def test_caption_positives_and_group_balance_match_the_naive_reference(
    objective: str, views: int, text_positives: str, balance: str
) -> None:
    for seed in range(3):
        img, txt = _features(4, views, 6, seed)
        scales, offsets = _params(True, seed)
        weights = (1.0, 0.5) if seed % 2 else (0.7, 1.3)
        want = naive_pair_loss(img, txt, scales, offsets, objective, text_positives, balance, weights)
        for chunk in (0, 5):
            got = universal_contrastive_loss(
                img,
                txt,
                scales,
                offsets,
                objective=objective,
                chunk_size=chunk,
                text_positives=text_positives,
                balance=balance,
                group_weights=weights,
            )
            assert abs(got["contrastive_loss"].item() - want["loss"].item()) <= 1e-10, (seed, chunk)
            for key in ("loss_it", "prob_it", "loss_ii", "prob_ii"):
                assert (key in got) == (key in want), key
                if key in want:
                    assert abs(got[key].item() - want[key].item()) <= 1e-6, (key, seed, chunk)


@pytest.mark.parametrize("chunk", [0, 4], ids=["unchunked", "chunked"])
def test_gradcheck_of_caption_positives_and_group_balance(chunk: int) -> None:
    img, txt = _features(3, 3, 4, seed=5)
    scales, offsets = _params(True, 5)
    inputs = tuple(t.clone().requires_grad_() for t in (img, txt, scales, offsets))
    assert torch.autograd.gradcheck(
        lambda a, b, c, d: _loss(
            a, b, c, d, chunk_size=chunk, text_positives="caption", balance="group", group_weights=(1.0, 0.3)
        ),
        inputs,
    )


def test_the_paper_settings_are_the_defaults_and_equal_the_count_weighted_mean() -> None:
    img, txt = _features(5, 2, 8, seed=2)
    scales, offsets = _params(True, 2)
    default = _loss(img, txt, scales, offsets)
    explicit = _loss(img, txt, scales, offsets, text_positives="all", balance="count")
    assert torch.equal(default, explicit)


def test_new_options_are_refused_where_they_have_no_meaning() -> None:
    img, txt = _features(3, 2, 4, seed=1)
    scales, offsets = _params(True, 1)
    for objective in ("supcon", "milnce"):
        with pytest.raises(ValueError, match="per-pair objective"):
            _loss(img, txt, scales, offsets, objective=objective, balance="group")
    with pytest.raises(ValueError, match="text_positives"):
        UniversalContrastiveLoss(text_positives="first")
    with pytest.raises(ValueError, match="group_weights"):
        UniversalContrastiveLoss(balance="group", group_weights=(0.0, 0.0))
