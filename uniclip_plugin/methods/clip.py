"""``--loss clip`` and ``--loss siglip``: open_clip's own ``ClipLoss`` / ``SigLipLoss`` on plain CLIP models."""

from __future__ import annotations

import argparse
import math
from typing import Any

from torch import nn

from ..registry import MethodSpec, register_method


def _open_clip_loss(args: argparse.Namespace) -> nn.Module:
    import open_clip.factory as ocf

    return ocf.create_loss(args)  # open_clip's own choice: ClipLoss, or SigLipLoss with --siglip


def _siglip_loss(args: argparse.Namespace) -> nn.Module:
    args.siglip = True
    return _open_clip_loss(args)


def _siglip_model_kwargs(_: argparse.Namespace) -> dict[str, Any]:
    # what open_clip_train's main passes with --siglip (main.py: init_logit_scale log 10, init_logit_bias -10)
    return {"init_logit_scale": math.log(10), "init_logit_bias": -10}


@register_method
def clip() -> MethodSpec:
    return MethodSpec("clip", "open_clip ClipLoss (InfoNCE)", _open_clip_loss)


@register_method
def siglip() -> MethodSpec:
    return MethodSpec(
        "siglip",
        "open_clip SigLipLoss",
        _siglip_loss,
        model_kwargs=_siglip_model_kwargs,
        open_clip_train_flags=("--siglip",),
    )
