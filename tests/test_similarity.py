"""Universal-space ordering and the domain-dependent similarity against explicit loops (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uniclip_plugin.similarity import (
    DOMAIN_IMAGE,
    DOMAIN_TEXT,
    PAIR_II,
    PAIR_IT,
    PAIR_TT,
    SIMILARITY_FORMS,
    domain_logits,
    pair_tables,
    universal_embeddings,
)


def _unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


SCALES = torch.tensor([6.0, 13.0, 3.5], dtype=torch.float64)
OFFSETS = torch.tensor([0.25, -0.1, 0.4], dtype=torch.float64)


def naive_logits(
    z_rows: torch.Tensor,
    dom_rows: torch.Tensor,
    z_cols: torch.Tensor,
    dom_cols: torch.Tensor,
    scales: torch.Tensor,
    offsets: torch.Tensor,
    form: str,
) -> torch.Tensor:
    out = torch.empty(len(z_rows), len(z_cols), dtype=torch.float64)
    for u in range(len(z_rows)):
        for v in range(len(z_cols)):
            d = int(dom_rows[u]) + int(dom_cols[v])
            cos = torch.dot(z_rows[u], z_cols[v])
            out[u, v] = scales[d] * (cos - offsets[d]) if form == "shift_scale" else scales[d] * cos - offsets[d]
    return out


def test_constants_pair_index_is_the_sum_of_domains() -> None:
    assert (DOMAIN_IMAGE, DOMAIN_TEXT) == (0, 1)
    assert (PAIR_II, PAIR_IT, PAIR_TT) == (DOMAIN_IMAGE * 2, DOMAIN_IMAGE + DOMAIN_TEXT, DOMAIN_TEXT * 2)
    slope, icpt = pair_tables(SCALES, OFFSETS, "shift_scale")
    for a in range(2):
        for b in range(2):
            assert slope[a, b] == SCALES[a + b] and icpt[a, b] == SCALES[a + b] * OFFSETS[a + b]
    assert torch.equal(pair_tables(SCALES, OFFSETS, "scale_shift")[1], OFFSETS[torch.tensor([[0, 1], [1, 2]])])


@pytest.mark.parametrize("offset", [0, 12])
def test_universal_embeddings_ordering(offset: int) -> None:
    b, v, d = 3, 2, 4
    img, txt = _unit(b, v, d, seed=0), _unit(b, d, seed=1)
    z, sid, dom = universal_embeddings(img, txt, sample_offset=offset)
    assert z.shape == ((v + 1) * b, d) and sid.dtype == dom.dtype == torch.long
    for i in range(b):
        for k in range(v):
            r = i * v + k  # sample-major views
            assert torch.equal(z[r], img[i, k]) and sid[r] == offset + i and dom[r] == DOMAIN_IMAGE
        assert torch.equal(z[b * v + i], txt[i]) and sid[b * v + i] == offset + i and dom[b * v + i] == DOMAIN_TEXT
    assert torch.equal(z[: b * v], img.reshape(b * v, d))


def test_universal_embeddings_rejects_bad_ranks() -> None:
    with pytest.raises(ValueError, match=r"\[B, V, D\]"):
        universal_embeddings(_unit(3, 4, seed=0), _unit(3, 4, seed=1))


@pytest.mark.parametrize("form", SIMILARITY_FORMS)
@pytest.mark.parametrize("order", ["universal", "shuffled", "images_only", "texts_only"])
def test_domain_logits_match_loops(form: str, order: str) -> None:
    rows, cols, d = 7, 9, 5
    g = torch.Generator().manual_seed(3)
    z_rows, z_cols = _unit(rows, d, seed=4), _unit(cols, d, seed=5)
    dom_rows = torch.randint(0, 2, (rows,), generator=g)
    dom_cols = {
        "universal": torch.tensor([0] * 6 + [1] * 3),  # image columns first: the per-domain addmm path
        "shuffled": torch.tensor([1, 0, 0, 1, 0, 1, 0, 0, 0]),  # any other order: the augmented matmul
        "images_only": torch.zeros(cols, dtype=torch.long),
        "texts_only": torch.ones(cols, dtype=torch.long),
    }[order]
    got = domain_logits(z_rows, dom_rows, z_cols, dom_cols, SCALES, OFFSETS, form)
    assert got.dtype == torch.float64 and got.shape == (rows, cols)
    torch.testing.assert_close(
        got, naive_logits(z_rows, dom_rows, z_cols, dom_cols, SCALES, OFFSETS, form), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("order", ["universal", "shuffled"])
def test_domain_logits_gradcheck(order: str) -> None:
    z_rows, z_cols = _unit(4, 3, seed=6).requires_grad_(), _unit(5, 3, seed=7).requires_grad_()
    dom_rows = torch.tensor([0, 1, 0, 1])
    dom_cols = torch.tensor([0, 0, 0, 1, 1]) if order == "universal" else torch.tensor([1, 0, 1, 0, 0])
    scales, offsets = SCALES.clone().requires_grad_(), OFFSETS.clone().requires_grad_()
    for form in SIMILARITY_FORMS:
        assert torch.autograd.gradcheck(
            lambda a, b, s, o, form=form: domain_logits(a, dom_rows, b, dom_cols, s, o, form),
            (z_rows, z_cols, scales, offsets),
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_domain_logits_are_float32_under_autocast(dtype: torch.dtype) -> None:
    z_rows, z_cols = _unit(16, 32, seed=8, dtype=torch.float32), _unit(24, 32, seed=9, dtype=torch.float32)
    dom_rows, dom_cols = torch.tensor([0] * 12 + [1] * 4), torch.tensor([0] * 16 + [1] * 8)
    scales, offsets = SCALES.float(), OFFSETS.float()
    ref = domain_logits(z_rows, dom_rows, z_cols, dom_cols, scales, offsets)
    with torch.autocast("cpu", dtype=dtype):
        low = domain_logits(z_rows.to(dtype), dom_rows, z_cols.to(dtype), dom_cols, scales, offsets)
    assert low.dtype == torch.float32
    # Only the inputs' rounding remains (|Δcos| ≲ 2⁻⁸·2 for bf16), not a bf16 matmul's or logit's rounding.
    assert (low - ref).abs().max() < 13.0 * 2**-7


def test_domain_logits_rejects_unknown_form() -> None:
    z = _unit(2, 3, seed=0)
    with pytest.raises(ValueError, match="shift_scale"):
        domain_logits(
            z,
            torch.zeros(2, dtype=torch.long),
            z,
            torch.zeros(2, dtype=torch.long),
            SCALES,
            OFFSETS,
            "scale_then_shift",
        )
