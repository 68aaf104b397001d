"""Glue between plugin losses and open_clip_train's loop (``train.py:107``): the loop sums every value of the loss
dict, so metrics are stripped here and logged; a non-finite loss or gradient stops training before the optimiser
step (open_clip_train has no such check), so parameters and the last checkpoint stay good."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .errors import NonFiniteError


class TrainLossAdapter(nn.Module):
    """Wraps a plugin loss for open_clip_train: returns only ``*_loss`` keys; keeps and logs the metrics."""

    def __init__(self, loss: nn.Module, log_every: int = 100, is_master: bool = True):
        super().__init__()
        self.loss = loss
        self.log_every = max(1, log_every)
        self.is_master = is_master
        self.calls = 0
        self.last_total: Optional[torch.Tensor] = None
        self.last_metrics: dict[str, float] = {}

    def forward(self, **model_out: Any) -> dict[str, torch.Tensor]:
        model_out["output_dict"] = True
        out = self.loss(**model_out)
        losses = {k: v for k, v in out.items() if k.endswith("_loss")}
        self.last_total = sum(losses.values()).detach()
        self.calls += 1
        if self.is_master and (self.calls - 1) % self.log_every == 0:
            self.last_metrics = {k: float(v) for k, v in out.items() if not k.endswith("_loss")}
            if self.last_metrics:
                logging.info("Loss metrics: " + " ".join(f"{k}: {v:.4g}" for k, v in self.last_metrics.items()))
        return losses


class NonFiniteGuard:
    """Optimizer step pre-hook that raises ``NonFiniteError`` on a non-finite loss or gradient (one host sync)."""

    def __init__(self, adapter: Optional[TrainLossAdapter] = None):
        self.adapter = adapter
        self.steps = 0
        self._handle: Any = None

    def __call__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        self.steps += 1
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        checks = [torch.stack([g.detach().float().norm() for g in grads]).sum()] if grads else []
        loss = self.adapter.last_total if self.adapter is not None else None
        if loss is not None:
            checks.append(loss.float())
        if not checks or bool(torch.isfinite(torch.stack([c.reshape(()) for c in checks])).all()):
            return
        if loss is not None and not torch.isfinite(loss):
            raise NonFiniteError(
                f"non-finite loss ({loss.item()}) at optimiser step {self.steps}; stopped before the "
                f"step so the last checkpoint stays good; lower --lr or check the data"
            )
        names = [
            n
            for g in optimizer.param_groups
            for n, p in zip(g.get("param_names", []), g["params"], strict=False)
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        raise NonFiniteError(
            f"non-finite gradient{(' in ' + ', '.join(names[:3])) if names else ''} at optimiser "
            f"step {self.steps}; stopped before the step so the last checkpoint stays good; "
            f"lower --lr, set --grad-clip-norm, or use --precision amp_bf16"
        )

    def install(self) -> "NonFiniteGuard":
        self._handle = register_optimizer_step_pre_hook(self)
        return self

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
