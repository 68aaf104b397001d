"""The built-in methods: which loss each ``--loss`` value builds and which model marker it needs."""
from __future__ import annotations

import argparse

import open_clip.factory as ocf
from torch import nn

from . import registry
from .losses.declip import build_declip_loss, declip_wrap_tokenizer
from .losses.mpnce import UniversalContrastiveLoss
from .losses.slip import SLIPLoss
from .model.slip import SLIP
from .model.declip import DeCLIP
from .model.uniclip import UniCLIP


def _open_clip_loss(args: argparse.Namespace) -> nn.Module:
    return ocf.create_loss(args)  # open_clip's own choice: ClipLoss, or SigLipLoss with --siglip


def _siglip_loss(args: argparse.Namespace) -> nn.Module:
    args.siglip = True
    return ocf.create_loss(args)


def _uniclip_loss(args: argparse.Namespace) -> nn.Module:
    return UniversalContrastiveLoss(
        objective=getattr(args, "mpnce_objective", "mpnce"),
        text_text_negatives=getattr(args, "text_text_negatives", True),
        similarity_form=getattr(args, "similarity_form", "shift_scale"),
        chunk_size=getattr(args, "loss_chunk_size", 0),
        local_loss=getattr(args, "local_loss", False),
        gather_with_grad=getattr(args, "gather_with_grad", False),
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
    )


def _slip_loss(args: argparse.Namespace) -> nn.Module:
    # Always gathers with gradient: with or without --local-loss, DDP's mean over ranks gives the exact gradient of
    # the global-batch loss (the gather's backward sums every rank's share into the owner).
    return SLIPLoss(
        ssl_scale=getattr(args, "ssl_scale", 1.0),
        ssl_temp=getattr(args, "ssl_temp", 0.1),
        local_loss=getattr(args, "local_loss", False),
        rank=getattr(args, "rank", 0),
        world_size=getattr(args, "world_size", 1),
    )


def register_builtin_methods() -> None:
    registry.register_model_class("uniclip_cfg", UniCLIP)
    registry.register_model_class("declip_cfg", DeCLIP)
    registry.register_model_class("slip_cfg", SLIP)
    registry.register_loss(registry.LossSpec("clip", _open_clip_loss, None, "open_clip ClipLoss (InfoNCE)"), True)
    registry.register_loss(registry.LossSpec("siglip", _siglip_loss, None, "open_clip SigLipLoss"), True)
    registry.register_loss(registry.LossSpec("uniclip_mpnce", _uniclip_loss, "uniclip_cfg",
                                             "UniCLIP MP-NCE over one universal image+text space"), True)
    registry.register_loss(registry.LossSpec("slip", _slip_loss, "slip_cfg",
                                             "SLIP: CLIP InfoNCE + ssl_scale x SimCLR NT-Xent"), True)
    registry.register_loss(registry.LossSpec("declip", build_declip_loss, "declip_cfg",
                                             "DeCLIP: 0.4 MVS + 0.2 SimSiam + 0.2 MLM + 0.2 NNS",
                                             wrap_tokenizer=declip_wrap_tokenizer), True)
