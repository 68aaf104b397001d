"""``--loss slip``: SLIP's model (``slip_cfg`` configs) and loss, CLIP InfoNCE + ``ssl_scale`` · SimCLR NT-Xent."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from ..losses.slip import SSL_SCALE, SSL_TEMP, SLIPLoss
from ..model.slip import SLIP
from ..registry import MethodSpec, Shapes, register_method

LOSS_FLAGS = {"ssl_scale": "ssl_scale", "ssl_temp": "ssl_temp"}


def add_arguments(group: Any) -> None:
    group.add_argument(
        "--ssl-scale", type=float, default=None, help=f"weight of SLIP's SimCLR term (default {SSL_SCALE}, SLIP's)"
    )
    group.add_argument(
        "--ssl-temp",
        type=float,
        default=None,
        help=f"temperature of SLIP's SimCLR NT-Xent (default {SSL_TEMP}, SLIP's)",
    )


def build_loss(args: argparse.Namespace) -> nn.Module:
    # Always gathers with gradient: with or without --local-loss, DDP's mean over ranks gives the exact gradient of
    # the global-batch loss (the gather's backward sums every rank's share into the owner).
    given = {
        option: getattr(args, flag) for flag, option in LOSS_FLAGS.items() if getattr(args, flag, None) is not None
    }
    return SLIPLoss(**given, local_loss=args.local_loss, rank=args.rank, world_size=args.world_size)


def owns_checkpoint(shapes: Shapes) -> bool:
    """A SLIP checkpoint has the SimCLR head; a stock CLIP one does not."""
    return any(key.startswith("image_mlp.") for key in shapes)


@register_method
def slip() -> MethodSpec:
    return MethodSpec(
        "slip",
        "SLIP: CLIP InfoNCE + ssl_scale x SimCLR NT-Xent",
        build_loss,
        model_prefix="SLIP",
        marker="slip_cfg",
        model_class=SLIP,
        add_arguments=add_arguments,
        owns_checkpoint=owns_checkpoint,
        whole_image_input=True,
        exact_global_loss=True,
    )
