"""The model and the optimiser's parameter groups, built as ``open_clip train`` builds them and made fit for
DeepSpeed (no 0-dim parameters, D1 in docs/UPSTREAM.md)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from torch import nn

from uniclip_plugin import integration
from uniclip_plugin.ds.errors import HarnessError


def check_model_and_loss(args: argparse.Namespace) -> Any:
    """Registry lookup plus the same model/loss compatibility check as ``open_clip train``; returns the MethodSpec.

    Raises:
        HarnessError: no or an unknown ``--model``.
        PluginError: the model lacks the parts ``--loss`` trains.
    """
    import open_clip.factory as ocf

    from uniclip_plugin import registry

    if not args.model:
        raise HarnessError("--model is required (e.g. UniCLIP-Tiny-32)")
    if ocf.get_model_config(args.model) is None and not args.model.startswith(("local-dir:", "hf-hub:")):
        raise HarnessError(f"unknown --model {args.model!r}; see `open_clip list` or open_clip.list_models()")
    spec = registry.get_method(args.loss)
    integration.check_model(spec, args.model)
    return spec


def reshape_zero_dim_parameters(model: nn.Module) -> list[str]:
    """Replace 0-dim parameters by ``[1]`` ones: ``deepspeed.initialize`` views every parameter as bytes and fails on
    0-dim tensors (D1, stock CLIP's ``logit_scale``). Forward code broadcasts a ``[1]`` scale the same way.

    Returns:
        The names of the reshaped parameters.
    """
    names = []
    for name, param in list(model.named_parameters()):
        if param.dim() == 0:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            setattr(owner, attr, nn.Parameter(param.detach().reshape(1).clone(), requires_grad=param.requires_grad))
            names.append(name)
    return names


def build_model(args: argparse.Namespace, setup: integration.Setup) -> tuple[nn.Module, Any, Any]:
    """Create the model and its transforms as ``open_clip train`` does (plugin overrides, whole-image training
    transform for models that sample views in forward), identically on every rank (seeded with ``--seed``).

    Args:
        args: the trainer's arguments (``--model``, ``--seed``, ``--pretrained``, ``--grad-checkpointing``).
        setup: the method's set-up (``integration.prepare``).

    Returns:
        ``(model, preprocess_train, preprocess_val)``; the model is fp32 on CPU with no 0-dim parameters.
    """
    seed_everything(args.seed)  # the same initial weights on every rank (DeepSpeed also broadcasts rank 0's)
    pretrained = getattr(args, "pretrained", None)
    extra = {"pretrained": pretrained} if pretrained else {}
    model, preprocess_train, preprocess_val = integration.create_model_and_transforms(
        args.model, setup, precision="fp32", device="cpu", output_dict=True, **extra
    )
    if pretrained:
        logging.info(f"Loaded pretrained weights for {args.model} from {pretrained}")
    if getattr(args, "grad_checkpointing", False):
        model.set_grad_checkpointing(True)  # before deepspeed.initialize, as open_clip_train does before DDP
        logging.info("Gradient checkpointing on (activations recomputed in backward)")
    reshaped = reshape_zero_dim_parameters(model)
    if reshaped:
        logging.info(f"Reshaped 0-dim parameters to [1] for DeepSpeed (D1): {', '.join(reshaped)}")
    return model, preprocess_train, preprocess_val


def no_decay(name: str, param: torch.Tensor) -> bool:
    """open_clip_train's rule (``main.py:335``): no weight decay for gains, biases, norms and the logit scale."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict], list[list[str]]]:
    """open_clip_train's two AdamW groups (no-decay first) and their parameter names (the layout saved for D5)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layout = [[n for n, p in named if no_decay(n, p)], [n for n, p in named if not no_decay(n, p)]]
    params = dict(named)
    groups = [
        {"params": [params[n] for n in names], "weight_decay": wd}
        for names, wd in zip(layout, (0.0, weight_decay), strict=True)
        if names
    ]
    return groups, [names for names in layout if names]


def seed_everything(seed: int) -> None:
    """``open_clip_train.main.random_seed``: python, numpy and torch."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
