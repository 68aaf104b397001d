"""Registration into open_clip's model factory.

open_clip hard-wires the model class (``factory.py:480-490``). The wrapper below detects a plugin marker in the model
config and, under a lock, lets open_clip's own ``create_model`` instantiate the plugin class instead of ``CLIP``:
everything else (precision casting, pretrained loading, preprocess cfg, ``local-dir:`` bundles) stays open_clip's.
``create_model_and_transforms``, ``create_model_from_pretrained`` and open_clip_train resolve ``create_model`` as a
factory global, so they all go through the wrapper.
"""
from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Optional

import open_clip
import open_clip.factory as ocf
import torch

from . import registry
from .config import deep_merge

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_SWAP_LOCK = threading.RLock()
_ORIGINAL_CREATE_MODEL = ocf.create_model
# Overrides deep-merged into plugin configs (the CLI's ablation flags); {marker: {key: value}}.
_MODEL_OVERRIDES: dict[str, dict[str, Any]] = {}


def set_model_overrides(overrides: dict[str, dict[str, Any]]) -> None:
    """Set config overrides applied to every plugin model built afterwards (e.g. ``{"uniclip_cfg": {"views": 1}}``)."""
    _MODEL_OVERRIDES.clear()
    _MODEL_OVERRIDES.update(overrides)


def plugin_model_config(model_name: str) -> Optional[dict]:
    """The model config of ``model_name`` if it is a plugin model (carries a marker), else None."""
    if model_name.startswith("local-dir:"):
        cfg_file = Path(model_name[len("local-dir:"):]) / "open_clip_config.json"
        if not cfg_file.is_file():
            return None
        cfg = json.loads(cfg_file.read_text()).get("model_cfg", {})
    elif model_name.startswith("hf-hub:"):
        return None
    else:
        cfg = ocf._MODEL_CONFIGS.get(model_name.replace("/", "-"))  # the module attribute: it gets rebound
    if not cfg or registry.marker_of(cfg) is None:
        return None
    return cfg


def _checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a local checkpoint without materialising it (mmap / safetensors header)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def architecture_from_checkpoint(marker: str, path: str) -> dict[str, Any]:
    """UniCLIP options that change the weights, read off a checkpoint: a run trained with ``--no-aug-embed``,
    ``--aug-fusion add`` or ``--no-domain-similarity`` then loads by its base config name."""
    hook = getattr(registry.model_class_for(marker), "architecture_from_shapes", None)
    if hook is not None and os.path.isfile(path):  # plugin classes that read their own switches (DeCLIP)
        return hook(_checkpoint_shapes(path))
    if marker != "uniclip_cfg" or not os.path.isfile(path):
        return {}
    shapes = _checkpoint_shapes(path)
    if "logit_scale" not in shapes:
        return {}
    arch: dict[str, Any] = {"domain_similarity": (math.prod(shapes["logit_scale"]) == 3),
                            "aug_embed": "aug_embed.encoder.0.weight" in shapes}
    if arch["aug_embed"]:
        arch["aug_hidden"] = shapes["aug_embed.encoder.0.weight"][0]
        arch["aug_fusion"] = "concat" if "aug_embed.fuse.weight" in shapes else "add"
    return arch


def create_model(model_name: str, *args: Any, **kwargs: Any) -> Any:
    """Drop-in for ``open_clip.create_model`` that builds plugin classes from marked configs."""
    cfg = plugin_model_config(model_name)
    if cfg is None:
        return _ORIGINAL_CREATE_MODEL(model_name, *args, **kwargs)
    marker = registry.marker_of(cfg)
    pretrained = kwargs.get("pretrained", args[0] if args else None)
    merged = deep_merge(cfg.get(marker, {}), _MODEL_OVERRIDES.get(marker, {}))
    if isinstance(pretrained, str):
        merged = deep_merge(merged, architecture_from_checkpoint(marker, pretrained))
    kwargs[marker] = deep_merge(merged, kwargs.get(marker, {}))  # open_clip's own update is shallow
    with _SWAP_LOCK:
        ocf.CLIP = registry.model_class_for(marker)
        try:
            return _ORIGINAL_CREATE_MODEL(model_name, *args, **kwargs)
        finally:
            ocf.CLIP = open_clip.model.CLIP


def install() -> None:
    """Register the bundled configs and route open_clip's factory through the wrapper (idempotent)."""
    if MODEL_CONFIG_DIR not in ocf._MODEL_CONFIG_PATHS:
        ocf.add_model_config(MODEL_CONFIG_DIR)
    ocf.create_model = create_model
    open_clip.create_model = create_model


def plugin_model_names() -> list[str]:
    return sorted(n for n in ocf._MODEL_CONFIGS if plugin_model_config(n) is not None)


