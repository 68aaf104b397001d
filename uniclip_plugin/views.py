"""In-forward multi-view image augmentation on tensors, returning each view's parameter vector.

Own code, not kornia 0.9's augmentation module: kornia syncs with the device (``bool(to_apply.any())``), takes no
``torch.Generator`` and shuffles the jitter order; it is also slower (256 SimCLR views of 64 px, 1 CPU thread: fp32
183 vs 75 ms here, bf16 165 vs 82 ms).

Order of operations (fixed, so a view is a function of its 12 parameters):

1. crop + horizontal flip: one ``affine_grid`` + ``grid_sample`` (bilinear, ``align_corners=False``, border padding);
   the crop box is continuous (sub-pixel) and given in fractions of the source image, so sampling from a source larger
   than the output works unchanged.
2. colour jitter, only where ``jitter_applied = 1``: brightness, contrast, saturation, hue, in that fixed order
   (torchvision's ``ColorJitter`` permutes the four per image; a fixed order keeps the view recomputable). Each step is
   torchvision's float formula, clamp included; hue is a shift in HSV (torchvision's ``adjust_hue``, the op of the
   SimCLR / SLIP / MoCo-v2 recipes), not a YIQ rotation, which is cheaper but a different colour transform.
3. grayscale (ITU-R 601 weights, as torchvision), replicated to 3 channels.
4. Gaussian blur with a per-view σ: separable, grouped conv, reflect padding; the kernel radius is static,
   ``ceil(3 · max σ)`` at the output resolution, so no size depends on sampled values. On CPU only the views with
   σ > 0 are convolved (σ = 0 is the identity; elsewhere every view is, to stay free of host synchronisation).
5. clamp to [0, 1].

Everything is vectorised over the B·V views, sampled on the images' device (optional ``torch.Generator`` on that
device), and free of host synchronisation (no ``.item()``, no Python branch on tensor values): it runs on the ``meta``
device. Colour maths runs in float32 (float64 stays float64) because bf16's 8-bit mantissa is too coarse for chained
colour ops and the HSV divisions; views are cast back to the input dtype.

Parameter vector ``[..., 12]`` (``AUG_PARAM_NAMES``), float32: crop box ``(y0, x0, h, w)`` as fractions of the source
image; flip bit; jitter-applied flag; brightness / contrast / saturation factors (1 = unchanged) and hue shift (fraction
of a turn, 0 = unchanged), neutral when jitter is not applied; grayscale bit; blur σ in pixels at a 224 px output
(0 = no blur), rescaled to the output's shorter side (σ · min(h, w) / 224).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import nn

from .errors import PluginError

AUG_PARAM_NAMES = (
    "crop_y0",
    "crop_x0",
    "crop_h",
    "crop_w",
    "flip",
    "jitter_applied",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur_sigma",
)
AUG_PARAM_DIM = 12
assert len(AUG_PARAM_NAMES) == AUG_PARAM_DIM

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
BLUR_REFERENCE_SIZE = 224.0  # σ is in pixels at this resolution (the SimCLR / SLIP / DeCLIP recipes' size)
MAX_BLUR_SIGMA = 2.0  # default kernel-radius σ of apply_aug_params (the recipes' largest σ)
CPU_CHUNK_IMAGES = 64  # images rendered at a time on CPU (apply_aug_params)
CROP_TRIES = 10  # torchvision RandomResizedCrop's rejection-sampling attempts, drawn at once
# Fixed scales of the encoder-friendly vector (the SimCLR ranges), the same for every preset so one encoder sees one
# coding: jitter factors (f − 1) / 0.4, hue / 0.1, σ / 2.
_NORM_JITTER, _NORM_HUE, _NORM_SIGMA = 0.4, 0.1, MAX_BLUR_SIGMA


@dataclass(frozen=True)
class ViewAugCfg:
    """Augmentation strengths of one view family (defaults: SimCLR, as used by UniCLIP and SLIP's SSL views)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the source image area
    # crop width / height in pixels, log-uniform; None = the source's own aspect ratio
    crop_ratio: Optional[tuple[float, float]] = (3 / 4, 4 / 3)
    flip_p: float = 0.5  # probability of a horizontal flip
    jitter_p: float = 0.8  # probability of colour jitter (all four factors together)
    brightness: float = 0.4  # brightness factor ~ U(max(0, 1 − b), 1 + b)
    contrast: float = 0.4  # contrast factor ~ U(max(0, 1 − c), 1 + c)
    saturation: float = 0.4  # saturation factor ~ U(max(0, 1 − s), 1 + s)
    hue: float = 0.1  # hue shift ~ U(−h, h), fraction of a turn
    gray_p: float = 0.2  # probability of grayscale
    blur_p: float = 0.5  # probability of Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # σ range in pixels at 224 px, rescaled to the output size


VIEW_PRESETS: dict[str, ViewAugCfg] = {
    "simclr": ViewAugCfg(),  # UniCLIP default; SLIP's two SSL views
    "mocov2": ViewAugCfg(crop_scale=(0.2, 1.0)),  # DeCLIP's two image views (MoCo-v2 recipe)
    "clip_weak": ViewAugCfg(crop_scale=(0.5, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0),  # SLIP CLIP view
    "none": ViewAugCfg(
        crop_scale=(1.0, 1.0), crop_ratio=None, flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0
    ),  # identity: whole image (any aspect), nothing else
    # a caption view: open_clip's train transform (RandomResizedCrop scale 0.9–1, ratio 3/4–4/3), nothing else
    "clip": ViewAugCfg(crop_scale=(0.9, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0),
}


def sample_aug_params(
    batch: int,
    views: int,
    cfg: ViewAugCfg,
    *,
    device: Optional[torch.device | str] = None,
    generator: Optional[torch.Generator] = None,
    source_aspect: float = 1.0,
) -> torch.Tensor:
    """Sample view parameters on ``device`` without host synchronisation.

    The crop follows torchvision's ``RandomResizedCrop.get_params`` with its 10 attempts drawn at once (the first
    attempt that fits wins; if none fits, the centre crop clamped to ``crop_ratio``), but in continuous fractions
    instead of whole pixels.

    Args:
        batch: number of source images B.
        views: views per image V.
        cfg: augmentation strengths.
        device: where to sample (the images' device).
        generator: optional ``torch.Generator`` on ``device``, for reproducible views.
        source_aspect: width / height of the source image in pixels, so the crop's pixel aspect ratio follows
            ``cfg.crop_ratio``.

    Returns:
        ``[B, V, 12]`` float32 parameters, laid out as ``AUG_PARAM_NAMES``.
    """
    shape = (batch, views)

    def rand(*extra: int) -> torch.Tensor:
        return torch.rand(*shape, *extra, device=device, generator=generator, dtype=torch.float32)

    def uniform(low: float, high: float, *extra: int) -> torch.Tensor:
        return low + (high - low) * rand(*extra)

    def bernoulli(prob: float) -> torch.Tensor:
        return (rand() < prob).float()

    area = uniform(*cfg.crop_scale, CROP_TRIES)  # [B, V, T]
    if cfg.crop_ratio is None:  # the source's ratio: relative ratio exactly 1, so scale (1, 1) is exactly the image
        ratio_lo = ratio_hi = source_aspect
        rel = torch.ones_like(area)
    else:
        ratio_lo, ratio_hi = cfg.crop_ratio
        rel = uniform(math.log(ratio_lo), math.log(ratio_hi), CROP_TRIES).exp() / source_aspect
    crop_w = (area * rel).sqrt()  # fractions of the source
    crop_h = (area / rel).sqrt()
    fits = (crop_w <= 1.0) & (crop_h <= 1.0)
    first = fits.float().argmax(dim=-1, keepdim=True)  # argmax returns the first maximum: the first try that fits
    any_fits = fits.any(dim=-1)
    # torchvision's fallback when no try fits: the whole image, cut to the nearest allowed ratio, centred
    fallback_w = min(1.0, ratio_hi / source_aspect)
    fallback_h = min(1.0, source_aspect / ratio_lo)
    crop_w = torch.where(any_fits, crop_w.gather(-1, first).squeeze(-1), fallback_w)
    crop_h = torch.where(any_fits, crop_h.gather(-1, first).squeeze(-1), fallback_h)
    pos_y, pos_x = rand(), rand()
    crop_y0 = torch.where(any_fits, pos_y, 0.5) * (1.0 - crop_h)
    crop_x0 = torch.where(any_fits, pos_x, 0.5) * (1.0 - crop_w)

    flip = bernoulli(cfg.flip_p)
    jitter = bernoulli(cfg.jitter_p)
    on = jitter > 0
    brightness = torch.where(on, uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness), 1.0)
    contrast = torch.where(on, uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast), 1.0)
    saturation = torch.where(on, uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation), 1.0)
    hue = torch.where(on, uniform(-cfg.hue, cfg.hue), 0.0)
    gray = bernoulli(cfg.gray_p)
    sigma = bernoulli(cfg.blur_p) * uniform(*cfg.blur_sigma)
    return torch.stack(
        [crop_y0, crop_x0, crop_h, crop_w, flip, jitter, brightness, contrast, saturation, hue, gray, sigma], dim=-1
    )


def identity_aug_params(batch: int, views: int = 1, *, device: Optional[torch.device | str] = None) -> torch.Tensor:
    """Parameters of the identity view: whole image, no flip, no jitter (neutral factors), no grayscale, σ = 0.

    Built with on-device fills (no host-to-device copy): the model calls it on every evaluation forward.

    Returns:
        ``[B, V, 12]`` float32: ``(0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0)`` per view.
    """
    params = torch.zeros(batch, views, AUG_PARAM_DIM, device=device, dtype=torch.float32)
    params[..., 2:4] = 1.0  # crop_h, crop_w
    params[..., 6:9] = 1.0  # brightness, contrast, saturation factors
    return params


def normalize_aug_params(params: torch.Tensor) -> torch.Tensor:
    """Encoder-friendly coding (AugSelf-style) of raw parameters.

    Crop fractions and bits stay as they are; jitter factors become ``(f − 1) / 0.4``, hue ``h / 0.1`` and σ ``σ / 2``
    (fixed SimCLR ranges, whatever the preset), so the SimCLR / MoCo-v2 / SLIP presets land in [−1, 1] and the identity
    view codes as ``(0, 0, 1, 1, 0, …, 0)``. Differentiable, no in-place writes.

    Args:
        params: ``[..., 12]`` raw parameters.

    Returns:
        ``[..., 12]`` in ``params.dtype``.
    """
    return torch.cat(
        [
            params[..., :6],
            (params[..., 6:9] - 1.0) / _NORM_JITTER,
            params[..., 9:10] / _NORM_HUE,
            params[..., 10:11],
            params[..., 11:12] / _NORM_SIGMA,
        ],
        dim=-1,
    )


def blur_scale(out_size: Sequence[int]) -> float:
    """Pixels of the output per pixel of the 224 px reference (σ multiplier): shorter output side / 224."""
    return min(out_size) / BLUR_REFERENCE_SIZE


def blur_radius(out_size: Sequence[int], max_sigma: float = MAX_BLUR_SIGMA) -> int:
    """Static blur-kernel radius at the output resolution: ``ceil(3 · max_sigma · scale)``, below the image size
    (reflect padding needs radius < side); 0 means no blur pass at all."""
    if max_sigma <= 0:
        return 0
    return min(math.ceil(3.0 * max_sigma * blur_scale(out_size)), min(out_size) - 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` RGB → ``[N, 1, H, W]`` luma (torchvision weights)."""
    r, g, b = x.unbind(dim=1)
    return torch.add(r * GRAY_WEIGHTS[0], g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue``: RGB → HSV, ``h ← (h + shift) mod 1``, HSV → RGB.

    Written as ``min + chroma · pure(h)``: HSV → RGB is ``v · (1 − s · (1 − pure))`` and ``v · s`` is the chroma, so the
    saturation never has to be formed (two fewer passes than the textbook round trip).

    Args:
        x: ``[N, 3, ...]`` in [0, 1], channels on dim 1.
        shift: fraction of a turn, broadcastable to one channel plane ``x[:, 0]``.

    Returns:
        a new ``[N, 3, ...]`` tensor.
    """
    r, g, b = x.unbind(dim=1)
    value = x.amax(dim=1)
    low = x.amin(dim=1)
    chroma = value - low
    inv = chroma.clamp(min=1e-12).reciprocal_()  # chroma = 0 ⇒ the hue is irrelevant (pure · 0)
    # hue in sextants, [-1, 5): (g − b)/c where r is the max, (b − r)/c + 2 where g is, (r − g)/c + 4 otherwise.
    # The branch is picked with 0/1 float masks, sign(max − channel), not torch.where: where and bool tensors cost
    # ~10× an arithmetic pass on CPU. Where two channels tie for the max, both branches give the same hue.
    from_r = (g - b).mul_(inv)
    from_g = (b - r).mul_(inv).add_(2.0)
    from_b = (r - g).mul_(inv).add_(4.0)
    r_not_max = (value - r).sign_()
    g_not_max = (value - g).sign_()
    hue6 = from_b.sub_(from_g).mul_(g_not_max).add_(from_g)  # g's branch unless g is not the max
    hue6 = hue6.sub_(from_r).mul_(r_not_max).add_(from_r)  # r's branch wins ties (torchvision's order)
    hue6 += 6.0 * shift
    hue6 -= torch.floor(hue6 * (1.0 / 6.0)).mul_(6.0)  # mod 6 (floor form: remainder() is slow on CPU)
    # pure-hue colour per channel: a triangle wave of hue6, written into its channel (no stack copy); scalar constants
    # only: a tensor of constants built from a Python list is a host-to-device copy, which synchronises on CUDA
    pure = torch.empty_like(x)
    red, green, blue = pure.unbind(dim=1)
    torch.sub(hue6, 3.0, out=red).abs_().sub_(1.0)
    torch.sub(hue6, 2.0, out=green).abs_().neg_().add_(2.0)
    torch.sub(hue6, 4.0, out=blue).abs_().neg_().add_(2.0)
    return pure.clamp_(0.0, 1.0).mul_(chroma.unsqueeze(1)).add_(low.unsqueeze(1))


def _gaussian_blur(planes: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one σ per plane (σ ≈ 0 gives a delta kernel, i.e. no change).

    Args:
        planes: ``[R, H, W]`` single-channel planes.
        sigma: ``[R]`` in output pixels.
        radius: static kernel radius (< H, W).

    Returns:
        ``[R, H, W]``.
    """
    rows, h, w = planes.shape
    offsets = torch.arange(-radius, radius + 1, device=planes.device, dtype=planes.dtype)
    # σ clamped at 1e-3: the neighbours' weights underflow to exactly 0, so σ = 0 is the identity with no branch
    kernel = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3).unsqueeze(1)) ** 2)  # [R, k]
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    flat = F.pad(planes.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")  # [1, R, H+2r, W+2r]
    flat = F.conv2d(flat, kernel.view(rows, 1, 1, -1), groups=rows)  # along W
    flat = F.conv2d(flat, kernel.view(rows, 1, -1, 1), groups=rows)  # along H
    return flat.view(rows, h, w)


def apply_aug_params(
    images: torch.Tensor, params: torch.Tensor, out_size: Sequence[int], *, max_blur_sigma: float = MAX_BLUR_SIGMA
) -> torch.Tensor:
    """Render the views described by ``params`` (order of operations: module docstring).

    On CPU the images are rendered ``CPU_CHUNK_IMAGES`` at a time, so the dozens of temporaries of the colour path stay
    in cache (−20 to −30 % at 64 px); on an accelerator the batch is one chunk. Chunk sizes depend on shapes only.

    Args:
        images: ``[B, 3, H, W]`` in [0, 1], un-normalised, any float dtype.
        params: ``[B, V, 12]`` raw parameters (``sample_aug_params`` / ``identity_aug_params``).
        out_size: ``(h, w)`` of the views.
        max_blur_sigma: largest σ (at 224 px) the static blur kernel covers; larger σ get a truncated (renormalised)
            kernel. ``MultiViewAugment`` passes its config's maximum.

    Returns:
        ``[B, V, 3, h, w]`` in ``images.dtype`` on ``images.device``.
    """
    batch, channels, height, width = images.shape
    if channels != 3:
        raise ValueError(f"views need RGB images [B, 3, H, W], got {tuple(images.shape)}")
    if params.dim() != 3 or params.shape[0] != batch or params.shape[2] != AUG_PARAM_DIM:
        raise ValueError(f"view parameters must be [B={batch}, V, {AUG_PARAM_DIM}], got {tuple(params.shape)}")
    out_h, out_w = int(out_size[0]), int(out_size[1])
    work = torch.promote_types(images.dtype, torch.float32)  # colour maths in ≥ float32, cast back at the end
    params = params.to(device=images.device, dtype=work)
    radius = blur_radius((out_h, out_w), max_blur_sigma)
    chunk = CPU_CHUNK_IMAGES if images.device.type == "cpu" else batch
    out = torch.empty(batch, params.shape[1], channels, out_h, out_w, device=images.device, dtype=images.dtype)
    for i in range(0, batch, chunk):
        _render(images[i : i + chunk].to(work), params[i : i + chunk], radius, out[i : i + chunk])
    return out


def _selects_by_value(device: torch.device) -> bool:
    """Whether rendering may pick views by a sampled value (``nonzero``): free on CPU; on an accelerator it would
    synchronise with the host, so there every view takes every op."""
    return device.type == "cpu"


def _render(src: torch.Tensor, params: torch.Tensor, radius: int, out: torch.Tensor) -> None:
    """``apply_aug_params`` on one chunk: ``src [b, 3, H, W]`` and ``params [b, V, 12]`` in the working dtype, written
    into ``out [b, V, 3, h, w]``.

    The views are kept as ``[b, 3, V, h, w]``, grid_sample's own layout, and turned into ``out``'s layout by the final
    clamp (one pass fewer than a transpose copy); per-view parameters broadcast as ``[b, 1, V, 1, 1]``."""
    batch, channels = src.shape[:2]
    views, out_h, out_w = params.shape[1], out.shape[-2], out.shape[-1]
    n = batch * views
    p = params.reshape(n, AUG_PARAM_DIM)

    def per_view(values: torch.Tensor) -> torch.Tensor:  # [N] → [b, 1, V, 1, 1]
        return values.view(batch, 1, views, 1, 1)

    # 1. crop + flip, one bilinear grid_sample. Output x in [-1, 1] maps to source x_src = sx · x + tx with sx = ±w
    #    (negative = flipped) and tx = the box centre (likewise y): affine_grid's result with align_corners=False,
    #    built by broadcasting instead (affine_grid's batched matmul cost half as much as the sampling). Per-image
    #    grids of V·h rows sample the b sources directly (no V-fold copy of the source).
    y0, x0, crop_h, crop_w, flip = p[:, :5].unbind(dim=1)
    base_x = torch.arange(out_w, device=src.device, dtype=src.dtype).mul_(2.0 / out_w).add_(1.0 / out_w - 1.0)
    base_y = torch.arange(out_h, device=src.device, dtype=src.dtype).mul_(2.0 / out_h).add_(1.0 / out_h - 1.0)
    grid_x = torch.addcmul(
        (2.0 * x0 + crop_w - 1.0).view(n, 1, 1), (crop_w * (1.0 - 2.0 * flip)).view(n, 1, 1), base_x.view(1, 1, out_w)
    )  # [N, 1, w]
    grid_y = torch.addcmul(
        (2.0 * y0 + crop_h - 1.0).view(n, 1, 1), crop_h.view(n, 1, 1), base_y.view(1, out_h, 1)
    )  # [N, h, 1]
    grid = torch.stack(torch.broadcast_tensors(grid_x, grid_y), dim=-1)  # [N, h, w, 2]
    x = F.grid_sample(
        src, grid.view(batch, views * out_h, out_w, 2), mode="bilinear", padding_mode="border", align_corners=False
    ).view(batch, channels, views, out_h, out_w)  # [b, 3, V, h, w]

    # 2. colour jitter (torchvision's float formulas, each clamped). Views without jitter get neutral factors (then
    #    every step is the identity up to float rounding in the hue round trip) instead of an image-sized select: on
    #    CPU a torch.where over the views costs as much as the whole jitter.
    jitter_on = p[:, 5:6] > 0
    factors = torch.where(jitter_on, p[:, 6:9], 1.0)
    shift = torch.where(jitter_on, p[:, 9:10], 0.0)
    bright, contrast, sat = (per_view(f) for f in factors.unbind(dim=1))  # [b, 1, V, 1, 1] each
    x = (x * bright).clamp_(0.0, 1.0)
    mean = _gray(x).mean(dim=(-2, -1), keepdim=True)  # [b, 1, V, 1, 1]
    x = (x * contrast).add_((1.0 - contrast) * mean).clamp_(0.0, 1.0)
    x = torch.addcmul((1.0 - sat) * _gray(x), sat, x).clamp_(0.0, 1.0)
    x = _shift_hue(x, shift.view(batch, views, 1, 1))

    # 3. grayscale, as a lerp with a 0/1 weight (exact at both ends; cheaper than torch.where on CPU)
    x = torch.lerp(x, _gray(x).expand_as(x), per_view(p[:, 10]))

    # 4. blur (σ given at 224 px → output pixels), per (image, channel, view) plane; skipped when the radius is 0
    if radius > 0:
        sigma = per_view(p[:, 11] * blur_scale((out_h, out_w))).expand(batch, channels, views, 1, 1).reshape(-1)
        planes = x.view(-1, out_h, out_w)
        if _selects_by_value(x.device):  # only the blurred planes (half of them); σ = 0 is the identity anyway
            rows = (sigma > 0).nonzero().squeeze(1)
            if rows.numel():
                # .to: under bf16 autocast the conv returns bf16 (as on the every-plane path) into float32 planes
                planes[rows] = _gaussian_blur(planes[rows], sigma[rows], radius).to(planes.dtype)
        else:
            x = _gaussian_blur(planes, sigma, radius).view_as(x)

    # 5. clamp, written into out's [b, V, 3, h, w] layout (and dtype: out= cannot narrow float32 to bf16 / fp16)
    if out.dtype == x.dtype:
        torch.clamp(x, 0.0, 1.0, out=out.transpose(1, 2))
    else:
        out.transpose(1, 2).copy_(x.clamp_(0.0, 1.0))


class MultiViewAugment(nn.Module):
    """Sample and render V views of a normalised batch inside ``forward``.

    Holds no parameters; ``mean`` / ``std`` are non-persistent buffers (not in the state dict).

    Args:
        cfg: augmentation strengths (``VIEW_PRESETS``): one for every view, or a sequence with one per view (a
            caption view next to strong views); ``forward``'s ``views`` must then equal its length.
        mean: per-channel normalisation mean of the incoming images (open_clip's preprocess).
        std: per-channel normalisation std.
        out_size: ``(h, w)`` of the views; ``None`` = the input's size. Crops are fractions of the input, so an
            input larger than ``out_size`` (the source resolution) is cropped first and then resampled.
    """

    def __init__(
        self,
        cfg: ViewAugCfg | Sequence[ViewAugCfg],
        mean: Sequence[float],
        std: Sequence[float],
        out_size: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        self.cfg = cfg
        self.per_view: Optional[tuple[ViewAugCfg, ...]] = None if isinstance(cfg, ViewAugCfg) else tuple(cfg)
        self.out_size = (int(out_size[0]), int(out_size[1])) if out_size is not None else None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(
        self, images: torch.Tensor, views: int, generator: Optional[torch.Generator] = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """De-normalise, sample parameters, render, re-normalise.

        Args:
            images: ``[B, 3, H, W]`` normalised with ``mean`` / ``std``, any float dtype.
            views: V, views per image.
            generator: optional ``torch.Generator`` on ``images.device``.

        Returns:
            views ``[B, V, 3, h, w]`` normalised, in ``images.dtype`` on ``images.device``;
            params ``[B, V, 12]`` float32 on ``images.device``.
        """
        batch, _, height, width = images.shape
        work = torch.promote_types(images.dtype, torch.float32)
        # cast the buffers here (on-device casts): a float32 factor must not promote a bf16 result, and a module
        # converted with .half() must not de-normalise in half precision
        mean = self.mean.to(device=images.device, dtype=work)
        std = self.std.to(device=images.device, dtype=work)
        raw = torch.addcmul(mean, images.to(work), std).clamp_(0.0, 1.0)  # [B, 3, H, W] in [0, 1]
        cfgs = self.per_view or (self.cfg,)
        if self.per_view is not None and views != len(self.per_view):
            raise ValueError(f"{len(self.per_view)} per-view augmentation configs for {views} views")
        params = torch.cat(
            [
                sample_aug_params(
                    batch,
                    1 if self.per_view else views,
                    c,
                    device=images.device,
                    generator=generator,
                    source_aspect=width / height,
                )
                for c in cfgs
            ],
            dim=1,
        )  # [B, V, 12], view-major cfgs
        max_sigma = max((c.blur_sigma[1] if c.blur_p > 0 else 0.0) for c in cfgs)
        out = apply_aug_params(raw, params, self.out_size or (height, width), max_blur_sigma=max_sigma)
        out = torch.addcmul(-(mean / std).unsqueeze(1), out, (1.0 / std).unsqueeze(1))  # (x − mean) / std
        return out.to(images.dtype), params


def normalization_stats(visual: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the data pipeline normalised with (set on ``visual.preprocess_cfg`` by open_clip's factory)."""
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", OPENAI_DATASET_MEAN)), tuple(cfg.get("std", OPENAI_DATASET_STD))


class InForwardViews(nn.Module):
    """Builds the V training views inside ``forward`` (on the batch's device and dtype) at the model's input size;
    no parameters.

    Args:
        preset: one ``VIEW_PRESETS`` name for every view, or a sequence with one name per view.
    """

    def __init__(self, preset: str | Sequence[str]):
        super().__init__()
        names = (preset,) if isinstance(preset, str) else tuple(preset)
        unknown = [p for p in names if p not in VIEW_PRESETS]
        if unknown or not names:
            raise PluginError(f"unknown view preset {unknown or names!r}; choices: {sorted(VIEW_PRESETS)}")
        self.preset: str | tuple[str, ...] = preset if isinstance(preset, str) else names
        self._augment: dict[tuple, MultiViewAugment] = {}  # plain dict: not a submodule, not in the state dict

    def forward(self, images: torch.Tensor, views: int, visual: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``views`` views of each normalised image ``[B, 3, H, W]`` with ``visual``'s normalisation, rendered at
        ``visual.image_size`` (the input may be larger: the source resolution): ``([B, V, 3, h, w], [B, V, 12])``
        as :meth:`MultiViewAugment.forward` returns them."""
        mean, std = normalization_stats(visual)
        out_size = _pair(getattr(visual, "image_size", images.shape[-2:]))
        key = (images.device, mean, std, out_size)
        if key not in self._augment:
            cfg = (
                VIEW_PRESETS[self.preset]
                if isinstance(self.preset, str)
                else tuple(VIEW_PRESETS[p] for p in self.preset)
            )
            self._augment[key] = MultiViewAugment(cfg, mean, std, out_size).to(images.device)
        return self._augment[key](images, views)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
