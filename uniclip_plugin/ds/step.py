"""One optimiser step under DeepSpeed, and the watch on steps DeepSpeed skips.

The pitfalls handled here (docs/UPSTREAM.md): D3 the image–text scale is clamped on the model output, D4 inputs in the
engine dtype and loss inputs in fp32, ONE forward per step (DeepSpeed #5321), a shared finite verdict before
``backward`` (D6), and silent bf16 step skips (DeepSpeed #8415).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from torch import nn

from uniclip_plugin.ds.errors import HarnessError


class NonFiniteLoss(HarnessError):
    """A non-finite loss on some rank: every rank stops before ``backward``/``step``."""


def engine_dtype(engine: Any) -> torch.dtype:
    """The dtype DeepSpeed keeps the module in (inputs must match it, D4)."""
    return torch.bfloat16 if engine.bfloat16_enabled() else torch.float32


def loss_inputs(model_out: dict) -> dict:
    """Model outputs as the loss sees them: floating tensors in fp32 (fp32 logits under bf16, D4) and the image–text
    scale clamped to open_clip's range [1, 100] (D3: an in-place clamp of the parameter would be undone by ZeRO)."""
    out = {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in model_out.items()}
    if torch.is_tensor(out.get("logit_scale")):
        out["logit_scale"] = out["logit_scale"].clamp(1.0, 100.0)
    return out


def train_step(
    engine: Any,
    loss_fn: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor,
    step: int,
    on_outputs: Optional[Callable[[dict, dict], None]] = None,
) -> float:
    """One optimiser step: ONE forward (ZeRO-3, #5321), loss in fp32, global finite check, backward, step.

    Args:
        engine: the DeepSpeed engine (train mode).
        loss_fn: a loss returning a dict; keys ending in ``_loss`` are summed (``TrainLossAdapter`` contract).
        images: this rank's images.
        texts: this rank's tokens.
        step: index of this step (for messages).
        on_outputs: optional ``fn(model_out, loss_inputs)`` called after the forward (dtype logging, tests).

    Returns:
        The loss averaged over ranks (each rank's loss covers its own rows, so this is the global-batch loss).

    Raises:
        NonFiniteLoss: on every rank, before ``engine.backward``, when any rank's loss is not finite.
    """
    import torch.distributed as dist

    images = images.to(engine.device, dtype=engine_dtype(engine), non_blocking=True)
    texts = texts.to(engine.device, non_blocking=True)
    raw = engine(images, texts)
    out = loss_inputs(raw)
    if on_outputs is not None:
        on_outputs(raw, out)
    losses = loss_fn(**out)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    finite = torch.isfinite(total.detach())
    # One all-reduce per step gives both the logged global loss and a verdict every rank shares (a rank stopping
    # alone would leave the others blocked in the next collective).
    stats = torch.stack(
        [torch.where(finite, total.detach().float(), torch.zeros((), device=total.device)), (~finite).float()]
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if stats[1].item() > 0:
        raise NonFiniteLoss(
            f"non-finite loss at step {step} (on {int(stats[1].item())} of {world} ranks); stopped "
            f"before the optimiser step, so the last checkpoint stays good; lower --lr or check the "
            f"data"
        )
    engine.backward(total)
    engine.step()
    return stats[0].item() / world


class SkipWatcher:
    """Logs every optimiser step DeepSpeed skipped (bf16 overflow is silent in 0.19, #8415) and stops a run whose
    steps keep being skipped."""

    def __init__(self, max_consecutive: int, total: int = 0):
        self.max_consecutive = max_consecutive
        self.total = total
        self.consecutive = 0

    def update(self, applied: bool, step: int) -> None:
        """Record whether ``step`` changed the weights; raise ``HarnessError`` after too many skips in a row."""
        if applied:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        logging.warning(
            f"DeepSpeed skipped optimiser step {step} (gradient overflow); {self.consecutive} in a row, "
            f"{self.total} in total"
        )
        if self.max_consecutive > 0 and self.consecutive >= self.max_consecutive:
            raise HarnessError(
                f"DeepSpeed skipped the last {self.consecutive} optimiser steps (up to step {step}: "
                f"gradient overflow, DeepSpeed #8415); the weights stopped changing. Lower --lr, set "
                f"--grad-clip-norm, or train in fp32"
            )
