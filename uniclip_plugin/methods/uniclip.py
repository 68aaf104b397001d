"""``--loss uniclip_mpnce``: UniCLIP's model (``uniclip_cfg`` configs) and MP-NCE over the universal space.

Flags fall in two kinds: model flags (views, augmentation embedding, domain similarity, similarity form) are deep-merged
into the model config's ``uniclip_cfg``; loss flags go to ``UniversalContrastiveLoss``. Every flag defaults to None,
"not given", so the value comes from the model config (``UniCLIPCfg``) or the loss's signature, each written once.
"""
from __future__ import annotations

import argparse
import inspect
import math
from typing import Any

from torch import nn

from ..config import UniCLIPCfg
from ..losses.mpnce import OBJECTIVES, UniversalContrastiveLoss
from ..model.uniclip import UniCLIP
from ..registry import MethodSpec, Shapes, register_method
from ..similarity import SIMILARITY_FORMS
from ..views import VIEW_PRESETS

MODEL_FLAGS = ("views", "view_preset", "aug_embed", "aug_fusion", "domain_similarity", "similarity_form")
LOSS_FLAGS = {"mpnce_objective": "objective", "text_text_negatives": "text_text_negatives",
              "similarity_form": "similarity_form", "loss_chunk_size": "chunk_size"}
_CFG = UniCLIPCfg()
_LOSS_DEFAULTS = {k: p.default for k, p in inspect.signature(UniversalContrastiveLoss).parameters.items()}


def add_arguments(group: Any) -> None:
    """UniCLIP's flags; ``(default: ...)`` quotes the config / loss default."""
    on_off = argparse.BooleanOptionalAction
    group.add_argument("--views", type=int, default=None,
                       help=f"image views per sample; 1 drops image–image pairs (default {_CFG.views})")
    group.add_argument("--view-preset", choices=sorted(VIEW_PRESETS), default=None,
                       help=f"augmentation strengths of the views (default {_CFG.view_preset})")
    group.add_argument("--aug-embed", action=on_off, default=None,
                       help=f"the augmentation-aware embedding; --no-aug-embed ablates it (default {_CFG.aug_embed})")
    group.add_argument("--aug-fusion", choices=["concat", "add"], default=None,
                       help=f"how the augmentation embedding joins the image embedding (default {_CFG.aug_fusion})")
    group.add_argument("--domain-similarity", action=on_off, default=None,
                       help="one temperature and offset per domain pair (II, IT, TT); --no-domain-similarity shares "
                            f"one (default {_CFG.domain_similarity})")
    group.add_argument("--similarity-form", choices=list(SIMILARITY_FORMS), default=None,
                       help=f"shift_scale: s = scale·(cos − offset); scale_shift: s = scale·cos − offset (default "
                            f"{_CFG.similarity_form}; sets the model's and the loss's form)")
    group.add_argument("--mpnce-objective", choices=list(OBJECTIVES), default=None,
                       help=f"MP-NCE or an ablation objective (default {_LOSS_DEFAULTS['objective']})")
    group.add_argument("--text-text-negatives", action=on_off, default=None,
                       help=f"other texts among a text anchor's negatives (default "
                            f"{_LOSS_DEFAULTS['text_text_negatives']})")
    group.add_argument("--loss-chunk-size", type=int, default=None,
                       help="rows per chunk of the memory-bounded loss; 0 = unchunked (default "
                            f"{_LOSS_DEFAULTS['chunk_size']})")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for key in MODEL_FLAGS if getattr(args, key, None) is not None}


def build_loss(args: argparse.Namespace) -> nn.Module:
    given = {option: getattr(args, flag) for flag, option in LOSS_FLAGS.items() if getattr(args, flag, None) is not None}
    return UniversalContrastiveLoss(**given, local_loss=args.local_loss, gather_with_grad=args.gather_with_grad,
                                    rank=args.rank, world_size=args.world_size)


def options_from_checkpoint(shapes: Shapes) -> dict[str, Any]:
    """The ``uniclip_cfg`` switches that change the weights, read off a checkpoint's parameter shapes."""
    if "logit_scale" not in shapes:
        return {}
    options: dict[str, Any] = {"domain_similarity": math.prod(shapes["logit_scale"]) == 3,
                               "aug_embed": "aug_embed.encoder.0.weight" in shapes}
    if options["aug_embed"]:
        options["aug_hidden"] = shapes["aug_embed.encoder.0.weight"][0]
        options["aug_fusion"] = "concat" if "aug_embed.fuse.weight" in shapes else "add"
    return options


@register_method
def uniclip_mpnce() -> MethodSpec:
    return MethodSpec(
        "uniclip_mpnce", "UniCLIP: MP-NCE over one universal image+text space", build_loss, model_prefix="UniCLIP",
        marker="uniclip_cfg", model_class=UniCLIP, add_arguments=add_arguments, model_overrides=model_overrides,
        options_from_checkpoint=options_from_checkpoint, whole_image_input=True)
