"""Method registry: ``--loss`` name -> loss builder and the model-config marker the loss needs.

Model classes register themselves under their config marker (``uniclip_cfg``, ``slip_cfg``, ``declip_cfg``); the
factory wrapper looks the class up from the marker found in a model config. Unknown names raise a ``PluginError``
listing the valid ones.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from torch import nn

from .errors import PluginError


@dataclass(frozen=True)
class LossSpec:
    name: str                                              # the --loss value
    build: Callable[[argparse.Namespace], nn.Module]       # open_clip_train args (+ plugin options) -> loss module
    marker: Optional[str]                                  # model-config key the model must carry; None: plain CLIP
    description: str = ""
    # Optional (tokenizer, args) -> tokenizer used by the data pipeline, for methods that need more than one token
    # row per caption (DeCLIP's EDA caption): it must return [N, R, context] for R rows per caption.
    wrap_tokenizer: Optional[Callable[[Callable, argparse.Namespace], Callable]] = None


_LOSSES: dict[str, LossSpec] = {}
_MODEL_CLASSES: dict[str, type] = {}


def register_loss(spec: LossSpec, overwrite: bool = False) -> None:
    if spec.name in _LOSSES and not overwrite and _LOSSES[spec.name] != spec:
        raise PluginError(f"loss {spec.name!r} is already registered")
    _LOSSES[spec.name] = spec


def register_model_class(marker: str, cls: type) -> None:
    if marker in _MODEL_CLASSES and _MODEL_CLASSES[marker] is not cls:
        raise PluginError(f"model-config marker {marker!r} is already registered to {_MODEL_CLASSES[marker].__name__}")
    _MODEL_CLASSES[marker] = cls


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str) -> LossSpec:
    if name not in _LOSSES:
        raise PluginError(f"unknown --loss {name!r}; choices: {', '.join(list_losses())}")
    return _LOSSES[name]


def markers() -> list[str]:
    return sorted(_MODEL_CLASSES)


def marker_of(model_cfg: Mapping) -> Optional[str]:
    """The plugin marker key present in an open_clip model config, or None for a plain open_clip model."""
    found = [m for m in _MODEL_CLASSES if m in model_cfg]
    if len(found) > 1:
        raise PluginError(f"model config carries several plugin markers {found}; keep one")
    return found[0] if found else None


def model_class_for(marker: str) -> type:
    return _MODEL_CLASSES[marker]
