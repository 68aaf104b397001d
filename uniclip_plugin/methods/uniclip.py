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

from ..config import AUG_FUSIONS, EVAL_AUG_PARAMS, TT_OFFSETS, UniCLIPCfg
from ..losses.mpnce import BALANCES, OBJECTIVES, TEXT_POSITIVES, UniversalContrastiveLoss
from ..model.uniclip import UniCLIP
from ..registry import MethodSpec, Shapes, register_method
from ..similarity import SIMILARITY_FORMS
from ..views import VIEW_PRESETS

MODEL_FLAGS = {"views": "views", "view_preset": "view_preset", "view_presets": "view_presets",
               "aug_embed": "aug_embed", "aug_fusion": "aug_fusion", "eval_aug_params": "eval_aug_params",
               "domain_similarity": "domain_similarity", "similarity_form": "similarity_form",
               "init_temperatures": "init_temperature", "offset_bound": "offset_bound", "tt_offset": "tt_offset"}
LOSS_FLAGS = {"mpnce_objective": "objective", "text_text_negatives": "text_text_negatives",
              "similarity_form": "similarity_form", "loss_chunk_size": "chunk_size", "text_positives": "text_positives",
              "mpnce_balance": "balance", "mpnce_group_weights": "group_weights"}
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
    group.add_argument("--view-presets", type=_names, default=None, metavar="P0,P1,...",
                       help="one preset per view, e.g. clip,simclr (view 0 a caption view); sets --views")
    group.add_argument("--aug-fusion", choices=list(AUG_FUSIONS), default=None,
                       help=f"how the augmentation embedding joins the image embedding: concat W[h; e(a)], add h + e(a), "
                            f"film h·(1+γ(a)) + β(a) (default {_CFG.aug_fusion})")
    group.add_argument("--eval-aug-params", choices=list(EVAL_AUG_PARAMS), default=None,
                       help=f"parameters fed to the augmentation embedding at evaluation (default "
                            f"{_CFG.eval_aug_params})")
    group.add_argument("--init-temperatures", type=_floats, default=None, metavar="T or TII,TIT,TTT",
                       help=f"initial temperature, one or per domain pair (default {_CFG.init_temperature})")
    group.add_argument("--offset-bound", type=float, default=None,
                       help="confine the offsets to (−B, B) with B·tanh; 0 = unbounded (default 0)")
    group.add_argument("--tt-offset", choices=list(TT_OFFSETS), default=None,
                       help=f"fixed: the text–text offset stays at init (default {_CFG.tt_offset})")
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
    group.add_argument("--text-positives", choices=list(TEXT_POSITIVES), default=None,
                       help=f"the text's positives: all views (the paper) or the caption view (view 0) (default "
                            f"{_LOSS_DEFAULTS['text_positives']})")
    group.add_argument("--mpnce-balance", choices=list(BALANCES), default=None,
                       help=f"count: mean over all positive pairs (the paper); group: mean per group (image–text, "
                            f"image–image), then weighted (default {_LOSS_DEFAULTS['balance']})")
    group.add_argument("--mpnce-group-weights", type=_floats, default=None, metavar="W_IT,W_II",
                       help=f"weights of --mpnce-balance group (default {_LOSS_DEFAULTS['group_weights']})")
    group.add_argument("--loss-chunk-size", type=int, default=None,
                       help="rows per chunk of the memory-bounded loss; 0 = unchunked (default "
                            f"{_LOSS_DEFAULTS['chunk_size']})")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _floats(text: str) -> Any:
    values = tuple(float(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {key: getattr(args, flag) for flag, key in MODEL_FLAGS.items() if getattr(args, flag, None) is not None}
    if "view_presets" in out:
        out["views"] = len(out["view_presets"])
    return out


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
        embed_dim = shapes["text_projection"][-1] if "text_projection" in shapes else None
        film = embed_dim is not None and shapes["aug_embed.encoder.2.weight"][0] == 2 * embed_dim
        options["aug_fusion"] = "concat" if "aug_embed.fuse.weight" in shapes else "film" if film else "add"
    return options


@register_method
def uniclip_mpnce() -> MethodSpec:
    return MethodSpec(
        "uniclip_mpnce", "UniCLIP: MP-NCE over one universal image+text space", build_loss, model_prefix="UniCLIP",
        marker="uniclip_cfg", model_class=UniCLIP, add_arguments=add_arguments, model_overrides=model_overrides,
        options_from_checkpoint=options_from_checkpoint, whole_image_input=True)
