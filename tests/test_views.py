"""In-forward views: each view is recomputable from its parameters, identity is identity, dtypes are kept."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from uniclip_plugin.views import (AUG_PARAM_DIM, VIEW_PRESETS, MultiViewAugment, ViewAugCfg, apply_aug_params,
                                  blur_radius, identity_aug_params, normalize_aug_params, sample_aug_params)

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _crop_reference(img: torch.Tensor, y0: float, x0: float, h: float, w: float, flip: bool, out: int) -> torch.Tensor:
    """Bilinear resampling of the crop box, pixel by pixel (pixel centres, border clamp), flipped if asked."""
    c, height, width = img.shape
    res = torch.zeros(c, out, out, dtype=torch.float64)
    src = img.double()
    for i in range(out):
        for j in range(out):
            fx = (j + 0.5) / out
            fx = 1 - fx if flip else fx
            sx = (x0 + w * fx) * width - 0.5           # source pixel coordinates
            sy = (y0 + h * (i + 0.5) / out) * height - 0.5
            sx, sy = min(max(sx, 0.0), width - 1.0), min(max(sy, 0.0), height - 1.0)
            xa, ya = int(math.floor(sx)), int(math.floor(sy))
            xb, yb = min(xa + 1, width - 1), min(ya + 1, height - 1)
            ax, ay = sx - xa, sy - ya
            res[:, i, j] = ((1 - ay) * ((1 - ax) * src[:, ya, xa] + ax * src[:, ya, xb])
                            + ay * ((1 - ax) * src[:, yb, xa] + ax * src[:, yb, xb]))
    return res.float()


def _view_reference(img: torch.Tensor, q: torch.Tensor, out: int) -> torch.Tensor:
    """One view from its 12 parameters with torchvision's functional ops (independent of views.py)."""
    x = _crop_reference(img, *q[:4].tolist(), flip=bool(q[4] > 0), out=out)
    if q[5] > 0:
        x = TF.adjust_brightness(x, q[6].item())
        x = TF.adjust_contrast(x, q[7].item())
        x = TF.adjust_saturation(x, q[8].item())
        x = TF.adjust_hue(x, q[9].item())
    if q[10] > 0:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    sigma = q[11].item() * out / 224
    if sigma > 0:
        r = blur_radius((out, out))
        x = TF.gaussian_blur(x, [2 * r + 1, 2 * r + 1], [sigma, sigma])
    return x.clamp(0, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_view_is_recomputed_from_its_parameters(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(3, 3, 20, 24, generator=g)
    cfg = ViewAugCfg(blur_sigma=(2.0, 8.0))  # σ big enough to matter at this small size
    params = sample_aug_params(3, 4, cfg, generator=g)
    views = apply_aug_params(images, params, (12, 12))
    assert views.shape == (3, 4, 3, 12, 12)
    for b in range(3):
        for v in range(4):
            assert torch.allclose(views[b, v], _view_reference(images[b], params[b, v], 12), atol=1e-5), (b, v)


def test_module_views_match_their_parameters_after_normalisation() -> None:
    g = torch.Generator().manual_seed(5)
    raw = torch.rand(2, 3, 16, 16, generator=g)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD)
    views, params = aug((raw - mean) / std, 2, generator=torch.Generator().manual_seed(9))
    rendered = views * std.unsqueeze(1) + mean.unsqueeze(1)
    for b in range(2):
        for v in range(2):
            assert torch.allclose(rendered[b, v], _view_reference(raw[b], params[b, v], 16), atol=1e-5)


def test_identity_parameters_give_the_identity_view() -> None:
    images = torch.rand(2, 3, 17, 17)
    assert torch.allclose(apply_aug_params(images, identity_aug_params(2, 3))[:, 2], images, atol=1e-5)  # fp32 grid
    aug = MultiViewAugment(VIEW_PRESETS["none"], MEAN, STD)
    normed = torch.randn(2, 3, 17, 17).clamp(-1.4, 1.4)  # stays inside [0, 1] once de-normalised
    views, params = aug(normed, 1)
    assert torch.allclose(views[:, 0], normed, atol=1e-5)
    assert torch.equal(params, identity_aug_params(2, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_their_dtype(dtype: torch.dtype) -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD)
    views, params = aug(torch.randn(4, 3, 16, 16).to(dtype), 2)
    assert views.dtype == dtype and params.dtype == torch.float32
    assert views.device == params.device == torch.device("cpu")
    assert torch.isfinite(views.float()).all()


def test_sampled_parameters_follow_the_config() -> None:
    cfg = VIEW_PRESETS["simclr"]
    p = sample_aug_params(2000, 2, cfg, generator=torch.Generator().manual_seed(0)).reshape(-1, AUG_PARAM_DIM)
    n = p.shape[0]
    tol = 4 * math.sqrt(0.25 / n)  # 4 binomial standard deviations
    assert abs(p[:, 4].mean().item() - cfg.flip_p) < tol
    assert abs(p[:, 5].mean().item() - cfg.jitter_p) < tol
    assert abs(p[:, 10].mean().item() - cfg.gray_p) < tol
    assert abs((p[:, 11] > 0).float().mean().item() - cfg.blur_p) < tol
    area = p[:, 2] * p[:, 3]
    assert area.min() >= cfg.crop_scale[0] - 1e-6 and area.max() <= cfg.crop_scale[1] + 1e-6
    unclamped = (p[:, 2] < 1) & (p[:, 3] < 1)
    ratio = p[unclamped, 3] / p[unclamped, 2]
    assert ratio.min() >= cfg.crop_ratio[0] - 1e-5 and ratio.max() <= cfg.crop_ratio[1] + 1e-5
    assert (p[:, 0] + p[:, 2] <= 1 + 1e-6).all() and (p[:, 1] + p[:, 3] <= 1 + 1e-6).all()
    off = p[:, 5] == 0
    assert torch.equal(p[off][:, 6:10], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(int(off.sum()), 4))
    on = p[~off]
    assert (on[:, 6:9] >= 0.6).all() and (on[:, 6:9] <= 1.4).all() and (on[:, 9].abs() <= 0.1).all()
    assert ((p[:, 11] == 0) | ((p[:, 11] >= 0.1) & (p[:, 11] <= 2.0))).all()


def test_same_generator_seed_gives_the_same_views() -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD)
    images = torch.randn(3, 3, 16, 16)
    a = aug(images, 2, generator=torch.Generator().manual_seed(1))
    b = aug(images, 2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_normalised_parameters() -> None:
    ident = normalize_aug_params(identity_aug_params(1, 1))[0, 0]
    assert torch.equal(ident, torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float32))
    p = normalize_aug_params(sample_aug_params(500, 2, VIEW_PRESETS["simclr"]))
    assert p.abs().max() <= 1.0 + 1e-6


def test_augment_module_has_no_parameters() -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD)
    assert list(aug.parameters()) == [] and aug.state_dict() == {}
