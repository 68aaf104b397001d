"""The accelerator section (``--gpu-only`` runs just this): ViT-B/32 at batch 256 under bf16 autocast, stock
open_clip CLIP against UniCLIP, with samples/s, peak allocated memory and the views checked for host syncs."""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

import uniclip_plugin

from .settings import Settings
from .steps import build_step

BATCH, DTYPE_NAME = 256, "bfloat16"  # the section's fixed setting (the ViT-B/32 comparison of docs/PERF.md)
PAIR = (("clip", "ViT-B-32"), ("uniclip_mpnce", "UniCLIP-ViT-B-32"))


def accelerator_compare(
    device: str = "cuda",
    models: tuple[tuple[str, str], ...] = PAIR,
    batch: int = BATCH,
    iters: int = 10,
    warmup: int = 3,
    dtype: Optional[torch.dtype] = torch.bfloat16,
) -> dict[str, dict[str, Any]]:
    """Training step on an accelerator for each ``(loss, model config)``.

    On CUDA each UniCLIP model's in-forward views also run under ``torch.cuda.set_sync_debug_mode("error")``, which
    raises on any host synchronisation (``views_sync_free``). Runs on CPU too (the unit test's path).

    Args:
        device: where the steps run.
        models: ``(loss, model config)`` pairs; default stock ViT-B/32 CLIP against UniCLIP on the same tower.
        batch: B.
        iters: timed steps.
        warmup: untimed steps.
        dtype: autocast dtype (None: no autocast).

    Returns:
        Per loss: ``model``, ``step_s``, ``samples_per_s``, ``peak_allocated_bytes``
        (``torch.cuda.max_memory_allocated``; None off CUDA) and, on CUDA for UniCLIP, ``views_sync_free``.
    """
    uniclip_plugin.register()
    rows: dict[str, dict[str, Any]] = {}
    for loss_name, model_name in models:
        rows[loss_name] = _accelerator_row(loss_name, model_name, torch.device(device), batch, iters, warmup, dtype)
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()  # the next model starts from an empty cache (its peak is its own)
    return rows


def _views_sync_free(model: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    try:
        torch.cuda.set_sync_debug_mode("error")
        with torch.no_grad():
            model.views(images, int(model.uniclip_cfg.views), model.visual)
        return {"views_sync_free": True}
    except RuntimeError as err:  # the sync debug mode raises RuntimeError naming the synchronising op
        return {"views_sync_free": False, "views_sync_error": str(err).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _accelerator_row(
    loss_name: str,
    model_name: str,
    dev: torch.device,
    batch: int,
    iters: int,
    warmup: int,
    dtype: Optional[torch.dtype],
) -> dict[str, Any]:
    cuda = dev.type == "cuda"
    step, parts = build_step(loss_name, model_name, batch, autocast_dtype=dtype, device=dev)
    model, images = parts["model"], parts["images"]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / iters
    row: dict[str, Any] = {
        "model": model_name,
        "step_s": seconds,
        "samples_per_s": batch / seconds,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
    }
    if cuda and isinstance(getattr(model, "views", None), torch.nn.Module) and hasattr(model, "uniclip_cfg"):
        row.update(_views_sync_free(model, images))
    return row


def measure(settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    """Section 0: the GPU comparison when CUDA is available, else a note.

    Args:
        settings: the run's settings (the section's sizes are fixed).
        results: the run so far (unused).

    Returns:
        ``accelerator``: ``device``, ``batch``, ``dtype`` and ``rows`` (``accelerator_compare``), or a ``note``.
    """
    if not torch.cuda.is_available():
        return {"accelerator": {"note": "no GPU on this machine: the ViT-B/32 bf16 comparison was not measured"}}
    name = torch.cuda.get_device_name(0)
    rows = accelerator_compare("cuda")
    return {"accelerator": {"device": name, "batch": BATCH, "dtype": DTYPE_NAME, "rows": rows}}
