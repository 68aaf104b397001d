"""The built-in methods: which loss each ``--loss`` value builds and which model marker it needs."""
from __future__ import annotations

import argparse

import open_clip.factory as ocf
from torch import nn

from . import registry
from .losses.mpnce import UniversalContrastiveLoss
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


def register_builtin_methods() -> None:
    registry.register_model_class("uniclip_cfg", UniCLIP)
    registry.register_loss(registry.LossSpec("clip", _open_clip_loss, None, "open_clip ClipLoss (InfoNCE)"), True)
    registry.register_loss(registry.LossSpec("siglip", _siglip_loss, None, "open_clip SigLipLoss"), True)
    registry.register_loss(registry.LossSpec("uniclip_mpnce", _uniclip_loss, "uniclip_cfg",
                                             "UniCLIP MP-NCE over one universal image+text space"), True)
