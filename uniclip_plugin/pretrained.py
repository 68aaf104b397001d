"""Plugin models from pretrained open_clip weights: tags of the base architecture and stock CLIP checkpoint files.

Base architecture, by a naming rule: ``<method prefix>-REST`` (``UniCLIP-ViT-B-32``) has the base ``REST``
(``ViT-B-32``) when open_clip knows that config, else ``CLIP-REST`` (the plugin's plain configs, ``CLIP-Tiny-32``).
A plugin model takes every pretrained tag of its base (:func:`resolve_tag`, fetched by open_clip's
``download_pretrained`` into its usual caches).

A stock CLIP checkpoint (one the method's ``owns_checkpoint`` hook does not claim) starts the model
(:func:`load_from_clip`): every tensor a plain CLIP of the same config has is loaded from the file (a scalar into a
one-element vector as open_clip does; the method's ``init_from_clip`` hook fills entries the file covers only in
part); the method's own parts (every other tensor) keep their init. One log line names the new keys, one the unused
ones. A tensor of the towers that is missing from the file or has another shape is a ``PluginError``: the file is of
another architecture.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Optional

import open_clip.factory as ocf
import open_clip.pretrained as ocp
import torch
from open_clip.model import CLIP
from torch import nn

from . import registry
from .errors import PluginError

_LOG = logging.getLogger(__name__)
PLAIN_PREFIX = "CLIP"  # the plugin's own plain configs: CLIP-Tiny-32, CLIP-Tiny-64


def base_model_name(model_name: str, cfg: Mapping[str, Any]) -> Optional[str]:
    """The open_clip architecture a plugin model config extends (see the module docstring), or None."""
    spec = registry.method_for_marker(registry.marker_of(cfg))
    prefix = spec.model_prefix + "-"
    if not model_name.startswith(prefix):
        return None
    rest = model_name[len(prefix) :]
    for name in (rest, f"{PLAIN_PREFIX}-{rest}"):
        if name in ocf._MODEL_CONFIGS:
            return name
    return None


def resolve_tag(
    model_name: str, cfg: Mapping[str, Any], tag: str, cache_dir: Optional[str]
) -> Optional[tuple[str, dict[str, Any]]]:
    """``(weights file, tag config)`` when ``tag`` is a pretrained tag of the model's base architecture, else None.

    Raises:
        PluginError: the tag is known but its weights cannot be fetched (offline and not in the cache).
    """
    base = base_model_name(model_name, cfg)
    tag_cfg = ocp.get_pretrained_cfg(base, tag) if base else {}
    if not tag_cfg:
        return None
    try:
        path = ocp.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # urllib / huggingface_hub errors: name the tag, not the stack
        raise PluginError(
            f"pretrained tag {tag!r} of {base} (base of {model_name}): cannot fetch its weights "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the "
            f"network or the cache (--cache-dir / HF_HOME)"
        ) from err
    if not path:
        raise PluginError(f"pretrained tag {tag!r} of {base} names no weights file")
    if bool(tag_cfg.get("quick_gelu", False)) != bool(cfg.get("quick_gelu", False)):
        _LOG.warning(
            f"{model_name}: tag {tag!r} was trained with quick_gelu={tag_cfg.get('quick_gelu', False)}; "
            f"pass --force-quick-gelu (force_quick_gelu=True) to match it"
        )
    return path, dict(tag_cfg)


def list_tags(model_name: str, cfg: Optional[Mapping[str, Any]]) -> list[str]:
    """Pretrained tags a model starts from: its base architecture's for a plugin model, its own otherwise."""
    base = base_model_name(model_name, cfg) if cfg is not None else model_name
    return ocp.list_pretrained_tags_by_model(base) if base else []


def base_clip_keys(model_cfg: Mapping[str, Any], marker: str) -> set[str]:
    """State-dict keys of a plain CLIP with the same towers (built on the meta device: no memory, no init cost)."""
    accepted = set(inspect.signature(CLIP.__init__).parameters)
    kwargs = {k: v for k, v in model_cfg.items() if k != marker and k in accepted}
    with torch.device("meta"):
        return set(CLIP(**kwargs).state_dict())


def _fit(key: str, ours: torch.Tensor, theirs: torch.Tensor) -> Optional[torch.Tensor]:
    """``theirs`` shaped as ``ours`` (same shape, or a scalar vs a one-element vector), else None."""
    if theirs.shape == ours.shape:
        return theirs
    if theirs.numel() == ours.numel() == 1:
        return theirs.reshape(ours.shape)
    return None


def plan_clip_load(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    base_keys: set[str],
    adapted: Mapping[str, torch.Tensor],
    source: str,
) -> dict[str, torch.Tensor]:
    """The tensors to load into ``model`` from a stock CLIP ``state``.

    Raises:
        PluginError: a tower tensor is missing from the file or has another shape.
    """
    ours = model.state_dict()
    load, missing, mismatched = dict(adapted), [], []
    for key in ours:
        if key in adapted or key not in base_keys:
            continue  # filled in part by the method's hook / the method's own part: at init
        if key not in state:
            missing.append(key)
            continue
        fitted = _fit(key, ours[key], state[key])
        if fitted is None:
            mismatched.append(f"{key} {list(state[key].shape)} in the file vs {list(ours[key].shape)} in the model")
        else:
            load[key] = fitted
    if mismatched or missing:
        what = (
            f"{len(mismatched)} tensors differ in shape, e.g. {mismatched[0]}"
            if mismatched
            else f"{len(missing)} tower tensors are missing from it, e.g. {missing[0]}"
        )
        raise PluginError(
            f"{source} does not fit this model's architecture: {what}; pass a checkpoint of the same "
            f"architecture (its base CLIP or the plugin model itself)"
        )
    return load


def load_from_clip(
    model: nn.Module, path: str, marker: str, model_cfg: Mapping[str, Any], model_name: str, weights_only: bool = True
) -> None:
    """Start ``model`` from the stock CLIP checkpoint at ``path``: towers loaded, the method's parts at init.

    Raises:
        PluginError: the file is of another architecture.
    """
    spec = registry.method_for_marker(marker)
    state = ocf.load_state_dict(path, weights_only=weights_only)
    state = ocf.convert_state_dict(model, state)  # third-party layouts, as open_clip's load_checkpoint
    for resize in (ocf.resize_pos_embed, ocf.resize_text_pos_embed):
        try:
            resize(state, model)  # another grid or context length, as open_clip's load_checkpoint
        except (AssertionError, RuntimeError, ValueError):
            pass  # another width: plan_clip_load names the mismatch
    adapted = spec.init_from_clip(model, state) if spec.init_from_clip is not None else {}
    source = f"--pretrained {path} (a CLIP checkpoint) for {model_name}"
    load = plan_clip_load(model, state, base_clip_keys(model_cfg, marker), adapted, source)
    new = [k for k in model.state_dict() if k not in load]
    unused = [k for k in state if k not in load]
    model.load_state_dict(load, strict=False)
    if model.logit_scale.is_meta:
        return  # a dry run (factory.check_pretrained): the real load logs
    partly = f"; partly from the file (rest at init): {', '.join(adapted)}" if adapted else ""
    _LOG.info(
        f"{model_name} from CLIP checkpoint {path}: new keys at their init ({len(new)}): "
        f"{', '.join(new) or 'none'}{partly}"
    )
    _LOG.info(
        f"{model_name} from CLIP checkpoint {path}: unused checkpoint keys ({len(unused)}): "
        f"{', '.join(unused) or 'none'}"
    )
