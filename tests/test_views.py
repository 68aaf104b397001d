"""In-forward views: every view is recomputable from its parameters, identity is identity, dtypes are kept,
sampling follows the config, no host synchronisation.

The reference below is independent of views.py: one sample at a time, float64, crop by explicit pixel coordinates,
flip by ``torch.flip``, colour ops written from their formulas (hue through ``colorsys``), blur by explicit
reflect-indexed taps.
"""

from __future__ import annotations

import colorsys
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from uniclip_plugin.views import (
    AUG_PARAM_DIM,
    AUG_PARAM_NAMES,
    VIEW_PRESETS,
    MultiViewAugment,
    ViewAugCfg,
    apply_aug_params,
    identity_aug_params,
    normalize_aug_params,
    sample_aug_params,
)

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, torchvision's rgb_to_grayscale
# strong enough to matter on 12 px views (σ · 12/224 ≈ 0.5–2.1 output pixels), every op frequent
STRONG = ViewAugCfg(jitter_p=0.6, gray_p=0.3, blur_p=0.6, blur_sigma=(10.0, 40.0))


# ----------------------------------------------------------------------------------------------- reference (float64)
def _crop(img: torch.Tensor, y0: float, x0: float, h: float, w: float, out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear sample of the box at each output pixel centre; source coordinates clamped to the border."""
    c, height, width = img.shape
    res = torch.empty(c, out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        sy = min(max((y0 + h * (i + 0.5) / out_h) * height - 0.5, 0.0), height - 1.0)
        ya = int(math.floor(sy))
        yb, ay = min(ya + 1, height - 1), sy - ya
        for j in range(out_w):
            sx = min(max((x0 + w * (j + 0.5) / out_w) * width - 0.5, 0.0), width - 1.0)
            xa = int(math.floor(sx))
            xb, ax = min(xa + 1, width - 1), sx - xa
            res[:, i, j] = (1 - ay) * ((1 - ax) * img[:, ya, xa] + ax * img[:, ya, xb]) + ay * (
                (1 - ax) * img[:, yb, xa] + ax * img[:, yb, xb]
            )
    return res


def _luma(x: torch.Tensor) -> torch.Tensor:
    return LUMA[0] * x[0] + LUMA[1] * x[1] + LUMA[2] * x[2]


def _hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(x.shape[1]):
        for j in range(x.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*x[:, i, j].tolist())
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v), dtype=torch.float64)
    return out


def _blur(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(taps**2) / (2 * sigma**2))
    k = k / k.sum()

    def reflect(i: torch.Tensor, n: int) -> torch.Tensor:
        i = i.abs()
        return torch.where(i > n - 1, 2 * (n - 1) - i, i)

    _, h, w = x.shape
    cols = reflect(torch.arange(w).view(-1, 1) + taps.long().view(1, -1), w)  # [w, k]
    x = (x[:, :, cols] * k).sum(-1)
    rows = reflect(torch.arange(h).view(-1, 1) + taps.long().view(1, -1), h)  # [h, k]
    return (x[:, rows, :] * k.view(1, 1, -1, 1)).sum(2)


def _reference_view(img: torch.Tensor, q: torch.Tensor, out_h: int, out_w: int, max_sigma: float) -> torch.Tensor:
    """One view from its 12 parameters (documented order: crop+flip, jitter, gray, blur, clamp)."""
    q = q.double().tolist()
    x = _crop(img.double(), q[0], q[1], q[2], q[3], out_h, out_w)
    if q[4] > 0:
        x = torch.flip(x, dims=[-1])
    if q[5] > 0:
        x = (q[6] * x).clamp(0, 1)
        x = (q[7] * x + (1 - q[7]) * _luma(x).mean()).clamp(0, 1)
        x = (q[8] * x + (1 - q[8]) * _luma(x)).clamp(0, 1)
        x = _hue(x, q[9])
    if q[10] > 0:
        x = _luma(x).expand(3, -1, -1)
    scale = min(out_h, out_w) / 224  # σ is given at 224 px
    if q[11] > 0:
        radius = min(math.ceil(3 * max_sigma * scale), min(out_h, out_w) - 1)
        x = _blur(x, q[11] * scale, radius)
    return x.clamp(0, 1).float()


# ------------------------------------------------------------------------------------------------------------ tests
def test_each_view_is_recomputed_from_its_parameters() -> None:
    seen = torch.zeros(4)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(3, 3, 20, 24, generator=g)  # non-square source, smaller square output
        params = sample_aug_params(3, 4, STRONG, generator=g, source_aspect=24 / 20)
        views = apply_aug_params(images, params, (12, 12), max_blur_sigma=STRONG.blur_sigma[1])
        assert views.shape == (3, 4, 3, 12, 12) and views.dtype == torch.float32
        for b in range(3):
            for v in range(4):
                ref = _reference_view(images[b], params[b, v], 12, 12, STRONG.blur_sigma[1])
                assert torch.allclose(views[b, v], ref, atol=1e-5), (seed, b, v, (views[b, v] - ref).abs().max())
        seen += torch.stack([params[..., i].gt(0).any().float() for i in (4, 5, 10, 11)])
    assert (seen > 0).all(), "flip, jitter, grayscale and blur each exercised at least once"


def test_module_views_match_their_parameters_after_normalisation() -> None:
    g = torch.Generator().manual_seed(5)
    raw = torch.rand(2, 3, 16, 20, generator=g)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    aug = MultiViewAugment(STRONG, MEAN, STD, out_size=(10, 14))  # non-square output
    views, params = aug((raw - mean) / std, 3, generator=torch.Generator().manual_seed(9))
    assert views.shape == (2, 3, 3, 10, 14) and params.shape == (2, 3, AUG_PARAM_DIM)
    rendered = views * std.unsqueeze(1) + mean.unsqueeze(1)
    for b in range(2):
        for v in range(3):
            ref = _reference_view(raw[b], params[b, v], 10, 14, STRONG.blur_sigma[1])
            assert torch.allclose(rendered[b, v], ref, atol=1e-5), (b, v)


def test_cpu_blur_of_the_blurred_planes_only_equals_the_accelerator_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU only the planes with σ > 0 are blurred (indexed by value); an accelerator blurs every plane (σ = 0 is a
    delta kernel). Both give the same views, in float32 and bf16, also with no view or every view blurred."""
    import uniclip_plugin.views as views_module

    gen = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 20, 20, generator=gen)
    params = sample_aug_params(6, 3, STRONG, generator=gen)
    none, every = params.clone(), params.clone()
    none[..., 11] = 0.0
    every[..., 11] = 15.0
    for p in (params, none, every):
        for dtype, autocast in ((torch.float32, False), (torch.bfloat16, False), (torch.float32, True)):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # bf16 training: conv runs in bf16
                cpu_path = apply_aug_params(images.to(dtype), p, (12, 12), max_blur_sigma=40.0)
                with monkeypatch.context() as m:
                    m.setattr(views_module, "_selects_by_value", lambda device: False)
                    dense_path = apply_aug_params(images.to(dtype), p, (12, 12), max_blur_sigma=40.0)
            assert cpu_path.dtype == dtype
            if autocast:  # the every-plane path also rounds the σ = 0 planes through the bf16 conv
                assert torch.allclose(cpu_path, dense_path, atol=1 / 128, rtol=0)
            else:
                assert torch.equal(cpu_path, dense_path)


def test_corner_crops_upsample_with_border_clamp() -> None:
    """Small boxes touching the image border, upsampled: edge samples fall outside the pixel centres."""
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    boxes = [(0, 0, 0.25, 0.3, 0), (0.75, 0.7, 0.25, 0.3, 1), (0, 0.6, 0.4, 0.4, 1), (0.2, 0, 0.5, 0.2, 0)]
    params = identity_aug_params(1, len(boxes))
    params[0, :, :5] = torch.tensor(boxes)
    views = apply_aug_params(images, params, (12, 12))
    for v in range(len(boxes)):
        assert torch.allclose(views[0, v], _reference_view(images[0], params[0, v], 12, 12, 2.0), atol=1e-5)


def test_colour_ops_equal_torchvision_in_the_fixed_order() -> None:
    """The jitter / grayscale steps are torchvision's float ops (the SimCLR / SLIP / MoCo-v2 recipe's)."""
    images = torch.rand(4, 3, 9, 9, generator=torch.Generator().manual_seed(3))
    params = identity_aug_params(4, 1)
    params[:, 0, 5:10] = torch.tensor(
        [[1, 1.3, 0.7, 1.2, 0.08], [1, 0.6, 1.4, 0.6, -0.1], [1, 1.0, 1.0, 1.0, 0.05], [0, 1, 1, 1, 0]]
    )
    params[3, 0, 10] = 1.0
    views = apply_aug_params(images, params, (9, 9))[:, 0]
    for i in range(3):
        b, c, s, h = params[i, 0, 6:10].tolist()
        ref = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(images[i], b), c), s), h)
        assert torch.allclose(views[i], ref, atol=1e-5)
    assert torch.allclose(views[3], TF.rgb_to_grayscale(images[3], num_output_channels=3), atol=1e-6)


def test_identity_parameters_give_the_identity_view() -> None:
    images = torch.rand(2, 3, 17, 13)
    ident = identity_aug_params(2, 3)
    assert ident.shape == (2, 3, AUG_PARAM_DIM) and ident.dtype == torch.float32
    assert ident[0, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]
    out = apply_aug_params(images, ident, (17, 13))
    assert torch.allclose(out, images.unsqueeze(1).expand_as(out), atol=1e-5)
    aug = MultiViewAugment(VIEW_PRESETS["none"], MEAN, STD)
    normed = torch.randn(2, 3, 17, 13).clamp(-1.4, 1.4)  # stays inside [0, 1] once de-normalised
    views, params = aug(normed, 2)
    assert torch.allclose(views, normed.unsqueeze(1).expand_as(views), atol=1e-5)
    assert torch.equal(params, identity_aug_params(2, 2))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_keep_their_dtype(dtype: torch.dtype) -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD, out_size=(12, 12))
    images = torch.randn(4, 3, 16, 16).clamp(-1.5, 1.5).to(dtype)
    views, params = aug(images, 2, generator=torch.Generator().manual_seed(0))
    assert views.dtype == dtype and params.dtype == torch.float32
    assert views.device == params.device == images.device
    # same views as the float32 path on the same (rounded) input, up to the output rounding
    ref, ref_params = aug(images.float(), 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(params, ref_params)
    assert (views.float() - ref).abs().max() <= 2 * torch.finfo(dtype).eps * ref.abs().max()
    low = apply_aug_params(torch.rand(2, 3, 8, 8).to(dtype), identity_aug_params(2, 2), (8, 8))
    assert low.dtype == dtype


@pytest.mark.parametrize("preset,aspect", [("simclr", 1.0), ("simclr", 1.5), ("mocov2", 0.75)])
def test_sampled_parameters_follow_the_config(preset: str, aspect: float) -> None:
    cfg = VIEW_PRESETS[preset]
    p = sample_aug_params(2000, 2, cfg, generator=torch.Generator().manual_seed(0), source_aspect=aspect).reshape(
        -1, AUG_PARAM_DIM
    )
    assert p.dtype == torch.float32
    tol = 4 * math.sqrt(0.25 / p.shape[0])  # 4 binomial standard deviations
    assert abs(p[:, 4].mean().item() - cfg.flip_p) < tol
    assert abs(p[:, 5].mean().item() - cfg.jitter_p) < tol
    assert abs(p[:, 10].mean().item() - cfg.gray_p) < tol
    assert abs((p[:, 11] > 0).float().mean().item() - cfg.blur_p) < tol
    area = p[:, 2] * p[:, 3]
    assert area.min() >= cfg.crop_scale[0] - 1e-6 and area.max() <= cfg.crop_scale[1] + 1e-6
    ratio = p[:, 3] / p[:, 2] * aspect  # width / height in pixels
    assert ratio.min() >= cfg.crop_ratio[0] - 1e-5 and ratio.max() <= cfg.crop_ratio[1] + 1e-5
    assert (p[:, :4] >= 0).all() and (p[:, 0] + p[:, 2] <= 1 + 1e-6).all() and (p[:, 1] + p[:, 3] <= 1 + 1e-6).all()
    off = p[:, 5] == 0
    assert torch.equal(p[off][:, 6:10], torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(int(off.sum()), 4))
    on = p[~off]
    assert (on[:, 6:9] >= 1 - cfg.brightness).all() and (on[:, 6:9] <= 1 + cfg.brightness).all()
    assert (on[:, 9].abs() <= cfg.hue).all() and on[:, 9].abs().max() > 0.9 * cfg.hue
    blurred = p[:, 11][p[:, 11] > 0]
    assert (blurred >= cfg.blur_sigma[0]).all() and (blurred <= cfg.blur_sigma[1]).all()
    assert set(p[:, [4, 5, 10]].unique().tolist()) == {0.0, 1.0}
    # crop distribution = torchvision RandomResizedCrop.get_params (SLIP / DeCLIP's transform) on a large image
    height = 600
    src = torch.empty(3, height, round(height * aspect))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        boxes = torch.tensor(
            [RandomResizedCrop.get_params(src, list(cfg.crop_scale), list(cfg.crop_ratio)) for _ in range(2000)],
            dtype=torch.float64,
        )
    tv_area = boxes[:, 2] * boxes[:, 3] / (src.shape[1] * src.shape[2])
    tv_ratio = boxes[:, 3] / boxes[:, 2]
    assert abs(area.double().mean() - tv_area.mean()) < 0.03
    assert abs(ratio.double().log().mean() - tv_ratio.log().mean()) < 0.03


def test_weak_and_none_presets() -> None:
    p = sample_aug_params(500, 2, VIEW_PRESETS["clip_weak"], generator=torch.Generator().manual_seed(1))
    assert (p[..., 2] * p[..., 3] >= 0.5 - 1e-6).all()
    assert torch.equal(p[..., 4:], identity_aug_params(500, 2)[..., 4:])  # crop only, nothing else
    assert torch.equal(sample_aug_params(7, 3, VIEW_PRESETS["none"]), identity_aug_params(7, 3))


def test_same_generator_seed_gives_the_same_views() -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD)
    images = torch.randn(3, 3, 16, 16)
    a = aug(images, 2, generator=torch.Generator().manual_seed(1))
    b = aug(images, 2, generator=torch.Generator().manual_seed(1))
    c = aug(images, 2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_normalised_parameters() -> None:
    ident = normalize_aug_params(identity_aug_params(2, 3))
    assert ident.shape == (2, 3, AUG_PARAM_DIM)
    assert torch.equal(ident[1, 2], torch.tensor([0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float32))
    for name in ("simclr", "mocov2", "clip_weak", "none"):
        raw = sample_aug_params(1000, 2, VIEW_PRESETS[name], generator=torch.Generator().manual_seed(0))
        norm = normalize_aug_params(raw)
        assert norm.shape == raw.shape and norm.dtype == raw.dtype
        assert norm.abs().max() <= 1.0 + 1e-6, name
    assert normalize_aug_params(ident.double()).dtype == torch.float64
    assert len(AUG_PARAM_NAMES) == AUG_PARAM_DIM == 12
    # the SimCLR ranges' extremes code as ±1: jitter factors (f − 1)/0.4, hue h/0.1, σ/2
    extreme = identity_aug_params(1, 1).clone()
    extreme[..., 6:12] = torch.tensor([1.4, 0.6, 1.4, -0.1, 1.0, 2.0])
    assert torch.allclose(normalize_aug_params(extreme)[0, 0, 6:], torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0]))


def test_augment_module_has_no_parameters_and_no_host_sync() -> None:
    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD, out_size=(8, 8))
    assert list(aug.parameters()) == [] and aug.state_dict() == {}
    # meta tensors hold no data: any .item() / Python branch on a tensor value would raise here
    views, params = aug.to("meta")(torch.empty(2, 3, 16, 12, device="meta"), 2)
    assert views.shape == (2, 2, 3, 8, 8) and views.device.type == "meta" and params.shape == (2, 2, 12)


def test_rendering_copies_no_host_tensor_to_the_device() -> None:
    """No host-to-device copy in the hot path (on CUDA a copy from pageable host memory synchronises): with every
    input on the meta device, no aten op may receive a CPU tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CpuTensorSpy(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.offenders: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in flat):
                self.offenders.append(str(func))
            return func(*args, **(kwargs or {}))

    aug = MultiViewAugment(VIEW_PRESETS["simclr"], MEAN, STD, out_size=(8, 8)).to("meta")
    images = torch.empty(2, 3, 16, 12, device="meta")
    # tensors built from Python data copy from the host without passing the dispatcher: record those calls too
    built_from_data: list[str] = []

    def recording(name: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            built_from_data.append(name)
            return fn(*args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in ("tensor", "as_tensor", "from_numpy"):
            mp.setattr(torch, name, recording(f"torch.{name}", getattr(torch, name)))
        mp.setattr(torch.Tensor, "new_tensor", recording("Tensor.new_tensor", torch.Tensor.new_tensor))
        with CpuTensorSpy() as spy:
            aug(images, 2)
    assert spy.offenders == [] and built_from_data == []
