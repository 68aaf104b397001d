"""Method registry: one :class:`MethodSpec` per ``--loss`` value, registered by decorator (as timm registers models).

A method is one unit: its CLI flags, the model-config marker its models carry and their class, how its loss is built,
its tokenizer wrapper, how its options are read back from a checkpoint, how it tells its own checkpoints from stock
CLIP ones and starts from the latter, whether its model renders views from whole images, and whether its loss always
needs the exact global batch. The specs live in ``uniclip_plugin.methods`` (one
module per method); this module holds only the type and the private tables, with read-only accessors. Unknown names
raise a ``PluginError`` listing the valid ones; registering a name twice with another spec is an error.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from .errors import PluginError

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class MethodSpec:
    """Everything the trainers, the factory and the harness need to know about one method."""

    name: str  # the --loss value
    description: str  # one line for `open_clip list` and --help
    build_loss: Callable[[argparse.Namespace], nn.Module]  # parsed args (+ rank, world_size, ...) -> loss
    model_prefix: str = "CLIP"  # model configs of the method: <prefix>-Tiny-32, ...
    marker: Optional[str] = None  # model-config key its models carry; None: plain CLIP
    model_class: Optional[type] = None  # class open_clip builds for configs with the marker
    # adds the method's flags to a parser group; every flag defaults to None = "not given" (the config / loss default)
    add_arguments: Optional[Callable[[Any], None]] = None
    # parsed args -> keys deep-merged into the model config's marker dict (flags that change the model)
    model_overrides: Optional[Callable[[argparse.Namespace], dict[str, Any]]] = None
    # parsed args -> extra model constructor kwargs (SigLIP's initial scale and bias)
    model_kwargs: Optional[Callable[[argparse.Namespace], dict[str, Any]]] = None
    # (tokenizer, args) -> tokenizer used by the data pipeline (DeCLIP: caption + EDA caption rows)
    wrap_tokenizer: Optional[Callable[[Callable, argparse.Namespace], Callable]] = None
    # parameter shapes of a checkpoint -> marker keys that change the weights (a run trained with an ablation flag
    # then loads by its base config name)
    options_from_checkpoint: Optional[Callable[[Shapes], dict[str, Any]]] = None
    # parameter shapes of a checkpoint -> True when it carries the method's own parts (one of its checkpoints: loaded
    # strictly, options read off its shapes); False: a stock CLIP checkpoint, whose towers start the model. None:
    # every checkpoint is the method's own
    owns_checkpoint: Optional[Callable[[Shapes], bool]] = None
    # (fresh model, stock CLIP state dict) -> values for the model entries a CLIP checkpoint fills only in part (a
    # scalar spread over per-pair scalars, extra token rows); the factory loads towers and leaves the method's own parts
    # at their init
    init_from_clip: Optional[Callable[[nn.Module, Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = None
    whole_image_input: bool = False  # the model renders its views in forward: the loader must give whole images
    exact_global_loss: bool = False  # the loss gathers with gradient whatever --local-loss / --gather-with-grad say
    # extra open_clip_train argv the method needs (SigLIP: --siglip)
    open_clip_train_flags: tuple[str, ...] = ()


_METHODS: dict[str, MethodSpec] = {}
_BY_MARKER: dict[str, MethodSpec] = {}


def register_method(factory: Callable[[], MethodSpec]) -> Callable[[], MethodSpec]:
    """Decorator: register the spec returned by ``factory`` (called once, at decoration)."""
    spec = factory()
    old = _METHODS.get(spec.name)
    if old is not None and old != spec:
        raise PluginError(f"method {spec.name!r} is already registered (by {old.description!r})")
    if spec.marker is not None:
        owner = _BY_MARKER.get(spec.marker)
        if owner is not None and owner.model_class is not spec.model_class:
            raise PluginError(f"model-config marker {spec.marker!r} is already registered to {owner.name!r}")
        _BY_MARKER.setdefault(spec.marker, spec)
    _METHODS[spec.name] = spec
    return factory


def list_methods() -> list[str]:
    """Registered ``--loss`` values, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of ``--loss name``; a ``PluginError`` listing the choices if unknown."""
    if name not in _METHODS:
        raise PluginError(f"unknown --loss {name!r}; choices: {', '.join(list_methods())}")
    return _METHODS[name]


def markers() -> list[str]:
    """Model-config markers of the registered plugin model classes."""
    return sorted(_BY_MARKER)


def marker_of(model_cfg: Mapping) -> Optional[str]:
    """The plugin marker key present in an open_clip model config, or None for a plain open_clip model."""
    found = [m for m in _BY_MARKER if m in model_cfg]
    if len(found) > 1:
        raise PluginError(f"model config carries several plugin markers {found}; keep one")
    return found[0] if found else None


def method_for_marker(marker: str) -> MethodSpec:
    """The (first registered) method whose models carry ``marker``."""
    return _BY_MARKER[marker]
