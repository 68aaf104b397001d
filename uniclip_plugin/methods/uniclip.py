"""``--loss uniclip_mpnce``: UniCLIP's model (``uniclip_cfg`` configs) and MP-NCE over the universal space.

Flags fall in two kinds: model flags (views, augmentation embedding, domain similarity, similarity form) are deep-merged
into the model config's ``uniclip_cfg``; loss flags go to ``UniversalContrastiveLoss``. Every flag defaults to None,
"not given", so the value comes from the model config (``UniCLIPCfg``) or the loss's signature, each written once.
"""

from __future__ import annotations

import argparse
import inspect
import math
from typing import Any, Mapping

import torch
from torch import nn

from ..config import AUG_FUSIONS, EVAL_AUG_PARAMS, TT_OFFSETS, UniCLIPCfg
from ..losses.mpnce import BALANCES, OBJECTIVES, TEXT_POSITIVES, UniversalContrastiveLoss
from ..model.uniclip import UniCLIP
from ..registry import MethodSpec, Shapes, register_method
from ..similarity import NUM_DOMAIN_PAIRS, PAIR_IT, SIMILARITY_FORMS
from ..views import VIEW_PRESETS

MODEL_FLAGS = {
    "views": "views",
    "view_preset": "view_preset",
    "view_presets": "view_presets",
    "aug_embed": "aug_embed",
    "aug_fusion": "aug_fusion",
    "eval_aug_params": "eval_aug_params",
    "domain_similarity": "domain_similarity",
    "similarity_form": "similarity_form",
    "init_temperatures": "init_temperature",
    "offset_bound": "offset_bound",
    "tt_offset": "tt_offset",
}
LOSS_FLAGS = {
    "mpnce_objective": "objective",
    "text_text_negatives": "text_text_negatives",
    "similarity_form": "similarity_form",
    "loss_chunk_size": "chunk_size",
    "text_positives": "text_positives",
    "mpnce_balance": "balance",
    "mpnce_group_weights": "group_weights",
}
_CFG = UniCLIPCfg()
_LOSS_DEFAULTS = {k: p.default for k, p in inspect.signature(UniversalContrastiveLoss).parameters.items()}


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _floats(text: str) -> Any:
    values = tuple(float(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


_ON_OFF = argparse.BooleanOptionalAction
# flag -> (argparse options, help, the config field or loss argument whose default the help quotes)
_FLAG_HELP: dict[str, tuple[dict[str, Any], str, str]] = {
    "--views": ({"type": int}, "image views per sample; 1 drops image–image pairs", "views"),
    "--view-preset": (
        {"choices": sorted(VIEW_PRESETS)},
        "augmentation strengths of every view (replaces the config's per-view presets)",
        "view_preset",
    ),
    "--view-presets": (
        {"type": _names, "metavar": "P0,P1,..."},
        "one preset per view, e.g. clip,simclr (view 0 a caption view); sets --views",
        "view_presets",
    ),
    "--aug-embed": ({"action": _ON_OFF}, "the augmentation-aware embedding (--no-aug-embed ablates it)", "aug_embed"),
    "--aug-fusion": (
        {"choices": list(AUG_FUSIONS)},
        "how it joins the image embedding: concat W[h; e(a)], add h + e(a), film h·(1+γ(a)) + β(a)",
        "aug_fusion",
    ),
    "--eval-aug-params": ({"choices": list(EVAL_AUG_PARAMS)}, "parameters it is fed at evaluation", "eval_aug_params"),
    "--domain-similarity": (
        {"action": _ON_OFF},
        "a temperature and offset per domain pair (II, IT, TT); --no-domain-similarity shares one",
        "domain_similarity",
    ),
    "--similarity-form": (
        {"choices": list(SIMILARITY_FORMS)},
        "shift_scale: scale·(cos − offset); scale_shift: scale·cos − offset (sets the model's and the loss's form)",
        "similarity_form",
    ),
    "--init-temperatures": (
        {"type": _floats, "metavar": "T|TII,TIT,TTT"},
        "initial temperature, one or per domain pair",
        "init_temperature",
    ),
    "--offset-bound": ({"type": float}, "confine the offsets to (−B, B) by B·tanh; 0: unbounded", "offset_bound"),
    "--tt-offset": ({"choices": list(TT_OFFSETS)}, "fixed: the text–text offset stays at init", "tt_offset"),
    "--mpnce-objective": ({"choices": list(OBJECTIVES)}, "MP-NCE or an ablation objective", "objective"),
    "--text-text-negatives": (
        {"action": _ON_OFF},
        "other texts among a text anchor's negatives",
        "text_text_negatives",
    ),
    "--text-positives": (
        {"choices": list(TEXT_POSITIVES)},
        "the text's positives: all views (the paper) or the caption view (view 0)",
        "text_positives",
    ),
    "--mpnce-balance": (
        {"choices": list(BALANCES)},
        "count: mean over all positive pairs (the paper); group: mean "
        "per group (image–text, image–image), then weighted",
        "balance",
    ),
    "--mpnce-group-weights": (
        {"type": _floats, "metavar": "W_IT,W_II"},
        "weights of --mpnce-balance group",
        "group_weights",
    ),
    "--loss-chunk-size": ({"type": int}, "rows per chunk of the memory-bounded loss; 0: unchunked", "chunk_size"),
}


def add_arguments(group: Any) -> None:
    """UniCLIP's flags, all defaulting to None (not given); each help quotes the loss's default, or the model
    option's when the model config does not set it (the shipped UniCLIP-* configs set views, presets and fusion)."""
    for flag, (options, text, key) in _FLAG_HELP.items():
        if hasattr(_CFG, key):
            where = f"the model config's, else {getattr(_CFG, key)}"
        else:
            where = str(_LOSS_DEFAULTS[key])
        group.add_argument(flag, default=None, help=f"{text} (default {where})", **options)


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {key: getattr(args, flag) for flag, key in MODEL_FLAGS.items() if getattr(args, flag, None) is not None}
    if "view_presets" in out:
        out["views"] = len(out["view_presets"])
    elif "view_preset" in out:  # one preset for every view replaces a config's per-view presets
        out["view_presets"] = None
    return out


def build_loss(args: argparse.Namespace) -> nn.Module:
    given = {
        option: getattr(args, flag) for flag, option in LOSS_FLAGS.items() if getattr(args, flag, None) is not None
    }
    return UniversalContrastiveLoss(
        **given,
        local_loss=args.local_loss,
        gather_with_grad=args.gather_with_grad,
        rank=args.rank,
        world_size=args.world_size,
    )


def options_from_checkpoint(shapes: Shapes) -> dict[str, Any]:
    """The ``uniclip_cfg`` switches that change the weights, read off a checkpoint's parameter shapes."""
    if "logit_scale" not in shapes:
        return {}
    options: dict[str, Any] = {
        "domain_similarity": math.prod(shapes["logit_scale"]) == 3,
        "aug_embed": "aug_embed.encoder.0.weight" in shapes,
    }
    if options["aug_embed"]:
        options["aug_hidden"] = shapes["aug_embed.encoder.0.weight"][0]
        embed_dim = shapes["text_projection"][-1] if "text_projection" in shapes else None
        film = embed_dim is not None and shapes["aug_embed.encoder.2.weight"][0] == 2 * embed_dim
        options["aug_fusion"] = "concat" if "aug_embed.fuse.weight" in shapes else "film" if film else "add"
    return options


def owns_checkpoint(shapes: Shapes) -> bool:
    """A UniCLIP checkpoint has the augmentation embedding, or (ablated without it) vector per-pair ``logit_scale`` and
    ``logit_bias``; a stock CLIP checkpoint has a 0-dim ``logit_scale`` and no ``aug_embed.*``. (A CLIP file with
    ``nonscalar_logit_scale`` and a SigLIP bias reads as UniCLIP without both switches: it then loads strictly.)"""
    if any(key.startswith("aug_embed.") for key in shapes):
        return True
    return len(shapes.get("logit_scale", ())) == 1 and len(shapes.get("logit_bias", ())) == 1


def init_from_clip(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP's image–text log-scale starts the image–text pair (the shared one without domain similarity); the
    image–image and text–text pairs, which CLIP never trained, keep their init, as do the offsets."""
    if "logit_scale" not in state or state["logit_scale"].numel() != 1:
        return {}
    scales = model.logit_scale.detach().clone()
    scales[PAIR_IT if scales.numel() == NUM_DOMAIN_PAIRS else 0] = float(state["logit_scale"].reshape(-1)[0])
    return {"logit_scale": scales}


@register_method
def uniclip_mpnce() -> MethodSpec:
    return MethodSpec(
        "uniclip_mpnce",
        "UniCLIP: MP-NCE over one universal image+text space",
        build_loss,
        model_prefix="UniCLIP",
        marker="uniclip_cfg",
        model_class=UniCLIP,
        add_arguments=add_arguments,
        model_overrides=model_overrides,
        options_from_checkpoint=options_from_checkpoint,
        owns_checkpoint=owns_checkpoint,
        init_from_clip=init_from_clip,
        whole_image_input=True,
        exact_global_loss=True,
    )
