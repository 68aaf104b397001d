"""``--loss declip``: DeCLIP's model (``declip_cfg`` configs), its weighted loss and the EDA caption tokenizer.

A term with weight 0 also switches its model part off (no unused parameters under DDP, no wasted compute).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..losses.declip import DEFAULT_WEIGHTS, DeCLIPLoss
from ..model.declip import MASK_TOKEN_ID, DeCLIP
from ..registry import MethodSpec, Shapes, register_method

TERMS_WITH_MODEL_PARTS = ("simsiam", "mlm", "nns")
OWN_PARTS = ("simsiam_projector.", "simsiam_predictor.", "mlm_head.", "nns.")
TOKEN_EMBEDDING = "token_embedding.weight"


def add_arguments(group: Any) -> None:
    names = {
        "mvs": "multi-view InfoNCE",
        "simsiam": "image SimSiam",
        "mlm": "masked language modelling",
        "nns": "nearest-neighbour text",
    }
    for term, what in names.items():
        group.add_argument(
            f"--declip-{term}-weight",
            type=float,
            default=None,
            help=f"{what} (default {DEFAULT_WEIGHTS[term]}, DeCLIP's; 0 switches the term off)",
        )
    group.add_argument(
        "--declip-no-eda", action="store_true", default=None, help="no EDA text view (MVS over (x1,t), (x2,t) only)"
    )


def _weight(args: argparse.Namespace, term: str) -> float:
    value = getattr(args, f"declip_{term}_weight", None)
    return DEFAULT_WEIGHTS[term] if value is None else float(value)


def build_loss(args: argparse.Namespace) -> nn.Module:
    return DeCLIPLoss(
        **{f"{term}_weight": _weight(args, term) for term in DEFAULT_WEIGHTS},
        local_loss=args.local_loss,
        rank=args.rank,
        world_size=args.world_size,
    )


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {term: False for term in TERMS_WITH_MODEL_PARTS if _weight(args, term) == 0.0}


def wrap_tokenizer(tokenizer: Callable, args: argparse.Namespace) -> Callable:
    """Caption + EDA caption → ``[N, 2, ctx]`` (``text_aug``), seeded by ``--seed``; ``--declip-no-eda`` keeps the plain
    tokenizer (``[N, ctx]``: no EDA view). Checks for WordNet here, in the main process, so a missing install fails
    before training starts."""
    if getattr(args, "declip_no_eda", None):
        return tokenizer
    from ..text_aug import EDA, EDATokenizer

    eda = EDA()
    eda.check()
    return EDATokenizer(tokenizer, seed=int(getattr(args, "seed", 0) or 0), eda=eda)


def options_from_checkpoint(shapes: Shapes) -> dict[str, Any]:
    return DeCLIP.architecture_from_shapes(dict(shapes))


def owns_checkpoint(shapes: Shapes) -> bool:
    """A DeCLIP checkpoint has a term's head, or (every term off) the ``<|mask|>`` token row; a stock CLIP one has
    neither (49408 token rows)."""
    if any(key.startswith(OWN_PARTS) for key in shapes):
        return True
    return TOKEN_EMBEDDING in shapes and shapes[TOKEN_EMBEDDING][0] > MASK_TOKEN_ID


def init_from_clip(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP's token embedding fills the leading rows; the extra ``<|mask|>`` row keeps its init."""
    ours, theirs = model.state_dict()[TOKEN_EMBEDDING], state.get(TOKEN_EMBEDDING)
    if theirs is None or theirs.shape[1:] != ours.shape[1:] or theirs.shape[0] >= ours.shape[0]:
        return {}  # same rows: loaded as is; anything else: the factory reports the mismatch
    rows = ours.detach().clone()
    rows[: theirs.shape[0]].copy_(theirs)
    return {TOKEN_EMBEDDING: rows}


@register_method
def declip() -> MethodSpec:
    return MethodSpec(
        "declip",
        "DeCLIP: 0.4 MVS + 0.2 SimSiam + 0.2 MLM + 0.2 NNS",
        build_loss,
        model_prefix="DeCLIP",
        marker="declip_cfg",
        model_class=DeCLIP,
        add_arguments=add_arguments,
        model_overrides=model_overrides,
        wrap_tokenizer=wrap_tokenizer,
        options_from_checkpoint=options_from_checkpoint,
        owns_checkpoint=owns_checkpoint,
        init_from_clip=init_from_clip,
        whole_image_input=True,
        exact_global_loss=True,
    )
