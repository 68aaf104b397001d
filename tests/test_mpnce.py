"""MP-NCE and its ablation objectives against naive loops written from the formulas (float64)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from uniclip_plugin.losses.mpnce import OBJECTIVES, UniversalContrastiveLoss, universal_contrastive_loss


def _features(b: int, v: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, v, d, generator=g, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return img, txt


def _params(domain: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + seed)
    if not domain:  # one shared scale and offset
        return torch.full((3,), 7.5, dtype=torch.float64), torch.full((3,), 0.1, dtype=torch.float64)
    return 2 + 10 * torch.rand(3, generator=g, dtype=torch.float64), 0.3 * torch.randn(3, generator=g, dtype=torch.float64)


def naive_loss(img: torch.Tensor, txt: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, objective: str,
               tt_neg: bool = True, form: str = "shift_scale") -> torch.Tensor:
    """Python loops over anchors and pairs, straight from the definitions in losses/mpnce.py."""
    b, v, _ = img.shape
    elems = [(img[i, k], i, 0) for i in range(b) for k in range(v)] + [(txt[i], i, 1) for i in range(b)]

    def s(a: int, c: int) -> torch.Tensor:
        (za, ia, da), (zc, ic, dc) = elems[a], elems[c]
        cos, pair = torch.dot(za, zc), da + dc
        return scales[pair] * (cos - offsets[pair]) if form == "shift_scale" else scales[pair] * cos - offsets[pair]

    terms = []
    for u, (_, iu, du) in enumerate(elems):
        pos = [p for p, (_, ip, _) in enumerate(elems) if p != u and ip == iu]
        neg = [n for n, (_, i_n, dn) in enumerate(elems) if i_n != iu and (tt_neg or not (du == 1 and dn == 1))]
        if objective == "mpnce":
            for p in pos:
                terms.append(-torch.log(torch.exp(s(u, p)) / (torch.exp(s(u, p)) + sum(torch.exp(s(u, n)) for n in neg))))
        elif objective == "infonce":
            for p in pos:
                same_dom = [n for n in neg if elems[n][2] == elems[p][2]]
                terms.append(-torch.log(torch.exp(s(u, p)) / (torch.exp(s(u, p)) + sum(torch.exp(s(u, n)) for n in same_dom))))
        elif objective == "supcon":
            denom = sum(torch.exp(s(u, a)) for a in pos + neg)
            terms.append(-sum(torch.log(torch.exp(s(u, p)) / denom) for p in pos) / len(pos))
        elif objective == "milnce":
            denom = sum(torch.exp(s(u, a)) for a in pos + neg)
            terms.append(-torch.log(sum(torch.exp(s(u, p)) for p in pos) / denom))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("domain", [True, False])
def test_matches_naive_reference(objective: str, views: int, domain: bool) -> None:
    for seed in range(3):
        img, txt = _features(4, views, 6, seed)
        scales, offsets = _params(domain, seed)
        for tt_neg, form in itertools.product([True, False], ["shift_scale", "scale_shift"]):
            got = universal_contrastive_loss(img, txt, scales, offsets, objective=objective, text_text_negatives=tt_neg,
                                             similarity_form=form)["contrastive_loss"]
            want = naive_loss(img, txt, scales, offsets, objective, tt_neg, form)
            assert torch.allclose(got, want, rtol=0, atol=1e-10), (seed, tt_neg, form, got, want)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradcheck(objective: str) -> None:
    img, txt = _features(3, 2, 4, seed=7)
    scales, offsets = _params(True, 7)
    inputs = tuple(t.clone().requires_grad_() for t in (img, txt, scales, offsets))

    def fn(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return universal_contrastive_loss(a, b, c, d, objective=objective)["contrastive_loss"]

    assert torch.autograd.gradcheck(fn, inputs)


def test_closed_form_when_all_features_coincide() -> None:
    """All similarities equal → each pair's loss is log(1 + |N(u)|) with |N(u)| = (V+1)(B−1)."""
    b, v, d = 5, 2, 8
    img = F.normalize(torch.ones(b, v, d, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.ones(b, d, dtype=torch.float64), dim=-1)
    loss = universal_contrastive_loss(img, txt, torch.full((3,), 10.0, dtype=torch.float64),
                                      torch.zeros(3, dtype=torch.float64))["contrastive_loss"]
    assert loss.item() == pytest.approx(math.log(1 + (v + 1) * (b - 1)), abs=1e-12)


def test_infonce_with_one_view_is_open_clip_clip_loss() -> None:
    for seed in range(3):
        img, txt = _features(6, 1, 8, seed)
        scales = torch.tensor([3.0, 11.0, 5.0], dtype=torch.float64)
        offsets = torch.tensor([0.2, 0.3, -0.1], dtype=torch.float64)  # the IT offset cancels in each softmax
        ours = universal_contrastive_loss(img, txt, scales, offsets, objective="infonce")["contrastive_loss"]
        theirs = ClipLoss()(img[:, 0], txt, scales[1])
        assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)


def _loss_and_grads(chunk: int, b: int = 7, v: int = 2, objective: str = "mpnce") -> list[torch.Tensor]:
    img, txt = _features(b, v, 8, seed=3)
    scales, offsets = _params(True, 3)
    leaves = [t.clone().requires_grad_() for t in (img, txt, scales, offsets)]
    loss = universal_contrastive_loss(*leaves, objective=objective, chunk_size=chunk)["contrastive_loss"]
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("chunk", [7, 3, 1, 100])  # divides the 21 rows, uneven last chunk, chunk 1, one chunk
def test_chunked_equals_unchunked(objective: str, chunk: int) -> None:
    for want, got in zip(_loss_and_grads(0, objective=objective), _loss_and_grads(chunk, objective=objective)):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)


def _saved_bytes(b: int, chunk: int) -> int:
    img, txt = _features(b, 2, 16, seed=0)
    img, txt = img.float().requires_grad_(), txt.float().requires_grad_()
    scales, offsets = torch.full((3,), 10.0, requires_grad=True), torch.zeros(3, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        universal_contrastive_loss(img, txt, scales, offsets, chunk_size=chunk)
    return sum(storages.values())


def test_chunking_bounds_the_memory_autograd_keeps() -> None:
    """Unchunked, autograd keeps [rows, M] logits (quadratic in M); chunked, only inputs (linear in M)."""
    small, large = 32, 128  # M = 96 and 384
    unchunked_growth = _saved_bytes(large, 0) / _saved_bytes(small, 0)
    chunked_growth = _saved_bytes(large, 16) / _saved_bytes(small, 16)
    assert unchunked_growth > 10  # ~ (384/96)² = 16
    assert chunked_growth < 5     # ~ 384/96 = 4
    m = 3 * large
    assert _saved_bytes(large, 16) < m * m * 4 / 4  # far below one fp32 M × M matrix


def test_bf16_autocast_keeps_fp32_logits() -> None:
    img, txt = _features(8, 2, 16, seed=1)
    scales, offsets = torch.full((3,), 14.0), torch.zeros(3)
    ref = universal_contrastive_loss(img.float(), txt.float(), scales, offsets)["contrastive_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = universal_contrastive_loss(img.bfloat16(), txt.bfloat16(), scales, offsets)["contrastive_loss"]
    assert out.dtype == torch.float32
    assert torch.isfinite(out) and abs(out.item() - ref.item()) < 0.05


def test_module_has_no_parameters_and_reads_logit_bias() -> None:
    loss = UniversalContrastiveLoss()
    assert list(loss.parameters()) == [] and list(loss.buffers()) == []
    img, txt = _features(4, 2, 8, seed=2)
    scales, offsets = _params(True, 2)
    out = loss(image_features=img, text_features=txt, logit_scale=scales[1], logit_bias=torch.stack([scales, offsets]),
               aug_params=torch.zeros(4, 2, 12), output_dict=True)
    assert torch.allclose(out["contrastive_loss"], naive_loss(img, txt, scales, offsets, "mpnce"), atol=1e-10)
    assert [k for k in out if k.endswith("_loss")] == ["contrastive_loss"]
    assert {"pos_cos_it", "pos_cos_ii", "scale_it", "offset_tt"} <= set(out)


def test_bad_inputs_are_clear_errors() -> None:
    img, txt = _features(4, 2, 8, seed=0)
    s, o = torch.ones(3), torch.zeros(3)
    with pytest.raises(ValueError, match="text_features must be"):
        universal_contrastive_loss(img, txt[:3], s, o)
    with pytest.raises(ValueError, match="objective must be one of"):
        UniversalContrastiveLoss(objective="nce")
    with pytest.raises(ValueError, match="logit_bias must be"):
        UniversalContrastiveLoss()(img, txt, logit_bias=torch.ones(3))
