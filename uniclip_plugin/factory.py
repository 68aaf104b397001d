"""Plugin models in open_clip's model factory.

open_clip 3.3.0 hard-wires the model class in ``create_model`` (``factory.py:480-490``: CLIP, CustomTextCLIP or CoCa;
no hook, open_clip #1020). For a config that carries a plugin marker (``uniclip_cfg``, ``slip_cfg``, ``declip_cfg``),
:func:`create_model` builds the method's class itself with open_clip's own helpers (config registry, precision and
device casting, ``load_checkpoint``, preprocess config); every other name goes to open_clip's ``create_model``
unchanged. Options arrive as arguments (``uniclip_cfg={"views": 1}``, deep-merged into the config's marker dict),
never through module state. :func:`install` routes ``open_clip.create_model`` (and so ``create_model_and_transforms``,
``create_model_from_pretrained`` and open_clip_train, which look it up as a factory global) through this function.

Weights (``pretrained``) of a plugin model: a pretrained tag of its base architecture (``UniCLIP-ViT-B-32`` takes
``ViT-B-32``'s tags; the base comes by a naming rule, strip the method prefix, see ``pretrained.base_model_name``), or a
checkpoint file. The method's ``owns_checkpoint`` hook (the presence of its own keys) tells the two kinds of file
apart: one of the plugin model's own checkpoints loads strictly, its options read off its shapes; a stock CLIP
checkpoint (and every tag's weights) starts the towers, the method's parts at their init
(``pretrained.load_from_clip``).
``local-dir:DIR`` and ``hf-hub:ORG/NAME`` bundles (``hub.export_bundle``) carry their config and weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import open_clip
import open_clip.factory as ocf
import open_clip.pretrained as ocp
import torch

from . import pretrained as from_pretrained
from . import registry
from .config import merge_options
from .errors import PluginError

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_ORIGINAL_CREATE_MODEL = ocf.create_model


def plugin_model_config(model_name: str, cache_dir: Optional[str] = None) -> Optional[dict]:
    """The model config of ``model_name`` if it is a plugin model (carries a marker), else None. ``hf-hub:`` configs
    come through open_clip's own hub helper (huggingface_hub's cache, so a cached repo works offline)."""
    if model_name.startswith("local-dir:"):
        cfg_file = Path(model_name[len("local-dir:") :]) / "open_clip_config.json"
        if not cfg_file.is_file():
            return None
        cfg = json.loads(cfg_file.read_text()).get("model_cfg", {})
    elif model_name.startswith("hf-hub:"):
        try:
            cfg = ocf._get_hf_config(model_name[len("hf-hub:") :], cache_dir=cache_dir).get("model_cfg", {})
        except Exception:  # not reachable / not an open_clip repo: open_clip's create_model reports it
            return None
    else:
        cfg = ocf._MODEL_CONFIGS.get(model_name.replace("/", "-"))  # the module attribute: it gets rebound
    if not cfg or registry.marker_of(cfg) is None:
        return None
    return json.loads(json.dumps(cfg))  # a copy


def checkpoint_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a local checkpoint without materialising it (mmap / safetensors header)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def options_from_checkpoint(marker: str, path: Optional[str]) -> dict[str, Any]:
    """Marker options that change the weights, read off the checkpoint at ``path`` (a run trained with
    ``--no-aug-embed`` then loads by its base config name); none for a stock CLIP checkpoint."""
    reader = registry.method_for_marker(marker).options_from_checkpoint
    if reader is None or not path or not os.path.isfile(path):
        return {}
    shapes = checkpoint_shapes(path)
    return reader(shapes) if owns_checkpoint(marker, shapes) else {}


def owns_checkpoint(marker: str, shapes: registry.Shapes) -> bool:
    """Whether a checkpoint is one of the plugin model's own (the method's hook; True without one)."""
    hook = registry.method_for_marker(marker).owns_checkpoint
    return True if hook is None else bool(hook(shapes))


def _checkpoint_path(
    model_name: str, cfg: dict, pretrained: Optional[str], cache_dir: Optional[str]
) -> tuple[Optional[str], dict]:
    """(weights file, preprocess overrides) for a plugin model: a bundle's weights, a tag's (of the base
    architecture), or a file."""
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        bundle = json.loads((folder / "open_clip_config.json").read_text())
        return ocf._find_checkpoint_in_dir(folder), bundle.get("preprocess_cfg", {})
    if model_name.startswith("hf-hub:"):
        model_id = model_name[len("hf-hub:") :]
        bundle = ocf._get_hf_config(model_id, cache_dir=cache_dir)
        return ocp.download_pretrained_from_hf(model_id, cache_dir=cache_dir), bundle.get("preprocess_cfg", {})
    if not pretrained:
        return None, {}
    tagged = from_pretrained.resolve_tag(model_name, cfg, pretrained, cache_dir)
    if tagged is not None:
        return tagged
    if os.path.isfile(pretrained):
        return pretrained, {}
    tags = from_pretrained.list_tags(model_name, cfg)
    raise PluginError(
        f"pretrained {pretrained!r} for {model_name} is neither a checkpoint file nor a tag of its base "
        f"architecture {from_pretrained.base_model_name(model_name, cfg) or '(none)'}; tags: "
        f"{', '.join(tags) or 'none'}"
    )


def _model_config(
    model_name: str, cfg: dict, checkpoint: Optional[str], kwargs: dict[str, Any], forced: dict[str, Any]
) -> dict[str, Any]:
    """The constructor arguments: the JSON config, open_clip's ``force_*`` overrides, the marker options read off the
    checkpoint, then the caller's kwargs (marker dicts deep-merged: open_clip's own update is shallow)."""
    marker = registry.marker_of(cfg)
    if forced.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    for key, section, field in (
        ("force_patch_dropout", "vision_cfg", "patch_dropout"),
        ("force_image_size", "vision_cfg", "image_size"),
        ("force_context_length", "text_cfg", "context_length"),
    ):
        if forced.get(key) is not None:
            cfg[section][field] = forced[key]
    cfg[marker] = merge_options(
        merge_options(cfg.get(marker, {}), options_from_checkpoint(marker, checkpoint)), kwargs.pop(marker, None) or {}
    )
    return {**cfg, **kwargs}


def _load_weights(
    model: torch.nn.Module, model_name: str, checkpoint: str, own: bool, model_cfg: dict, weights_only: bool
) -> None:
    """The plugin model's own checkpoint strictly, a stock CLIP one through ``pretrained.load_from_clip``; a file
    of another architecture is a one-line ``PluginError``."""
    marker = registry.marker_of(model_cfg)
    with warnings.catch_warnings():
        if model.logit_scale.is_meta:  # a dry run (check_pretrained): torch warns that copies into meta are no-ops
            warnings.simplefilter("ignore")
        if not own:
            from_pretrained.load_from_clip(model, checkpoint, marker, model_cfg, model_name, weights_only)
            return
        try:
            ocf.load_checkpoint(model, checkpoint, strict=True, weights_only=weights_only)
        except (RuntimeError, AssertionError, ValueError) as err:  # load_state_dict's report / open_clip's resizes
            shapes = checkpoint_shapes(checkpoint)
            details = [
                f"{k} {list(shapes[k])} in the file vs {list(v.shape)} in the model"
                for k, v in model.state_dict().items()
                if k in shapes and tuple(v.shape) != shapes[k]
            ]
            details += [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [str(err).strip()]
            raise PluginError(
                f"--pretrained {checkpoint} does not fit {model_name}: {details[0][:300]}; pass a "
                f"checkpoint of {model_name} (same options) or a CLIP checkpoint of its base "
                f"architecture"
            ) from None


def _build(
    model_name: str,
    cfg: dict,
    pretrained: Optional[str],
    precision: str,
    device: Union[str, torch.device],
    output_dict: Optional[bool],
    weights_only: bool,
    require_pretrained: bool,
    forced: dict[str, Any],
    kwargs: dict[str, Any],
) -> torch.nn.Module:
    checkpoint, preprocess = _checkpoint_path(model_name, cfg, pretrained, forced.get("cache_dir"))
    if require_pretrained and checkpoint is None:
        raise PluginError(f"{model_name}: pretrained weights are required but none were given")
    marker = registry.marker_of(cfg)
    own = checkpoint is not None and owns_checkpoint(marker, checkpoint_shapes(checkpoint))
    model_cfg = _model_config(model_name, cfg, checkpoint if own else None, kwargs, forced)
    model_class = registry.method_for_marker(marker).model_class
    # device "meta": a dry run that checks shapes without memory (check_pretrained)
    with torch.device("meta") if str(device) == "meta" else contextlib.nullcontext():
        model = model_class(**model_cfg, cast_dtype=ocf.get_cast_dtype(precision))
    ocf._set_model_device_and_precision(model, torch.device(device), precision, False)
    if checkpoint is not None:
        _load_weights(model, model_name, checkpoint, own, model_cfg, weights_only)
    if output_dict and hasattr(model, "output_dict"):
        model.output_dict = True
    final = ocf.merge_preprocess_dict(asdict(ocf.PreprocessCfg()), preprocess)
    final["size"] = model.visual.image_size
    ocf.set_model_preprocess_cfg(model, ocf.merge_preprocess_dict(final, forced.get("force_preprocess_cfg") or {}))
    return model


# open_clip.create_model's options that mean nothing for plugin models (timm / HF towers, TorchScript): refused if set
_UNSUPPORTED = {"jit": False, "force_custom_text": False, "pretrained_image_path": None, "pretrained_text_path": None}
_FORCED = (
    "force_quick_gelu",
    "force_patch_dropout",
    "force_image_size",
    "force_context_length",
    "force_preprocess_cfg",
    "cache_dir",
)
# open_clip's options the plugin build reads (with open_clip's defaults) or ignores (pretrained_image / _text: timm /
# HF towers only); every other keyword is a model constructor kwarg, as in open_clip
_OPTIONS = {
    "precision": "fp32",
    "device": "cpu",
    "output_dict": None,
    "require_pretrained": False,
    "weights_only": True,
    "load_weights": True,
    "pretrained_image": False,
    "pretrained_text": True,
    **{k: None for k in _FORCED},
    **_UNSUPPORTED,
}


def create_model(model_name: str, pretrained: Optional[str] = None, **kwargs: Any) -> torch.nn.Module:
    """Drop-in for ``open_clip.create_model`` (same keywords): plugin classes for marked configs, open_clip's own
    otherwise.

    Plugin models take ``pretrained`` as a tag of their base architecture or a checkpoint file (the plugin's own, or a
    stock CLIP one: see the module docstring), or a ``local-dir:`` / ``hf-hub:`` bundle as ``model_name``, and the
    marker options as a kwarg (``uniclip_cfg={...}``); ``jit``, ``force_custom_text`` and tower weight paths are
    refused for them. ``device="meta"`` builds without memory and checks a checkpoint's shapes without loading it.
    """
    cfg = plugin_model_config(model_name, kwargs.get("cache_dir"))
    if cfg is None:
        return _ORIGINAL_CREATE_MODEL(model_name, pretrained, **kwargs)
    opts = {key: kwargs.pop(key, default) for key, default in _OPTIONS.items()}
    if any(opts[key] != default for key, default in _UNSUPPORTED.items()):
        raise PluginError(
            f"{model_name}: jit, force_custom_text and pretrained_image_path / pretrained_text_path are "
            f"not supported for plugin models"
        )
    forced = {key: opts[key] for key in _FORCED}
    if forced["force_quick_gelu"] is None:
        forced["force_quick_gelu"] = False
    return _build(
        model_name,
        cfg,
        pretrained if opts["load_weights"] else None,
        opts["precision"],
        opts["device"],
        opts["output_dict"],
        opts["weights_only"],
        opts["require_pretrained"],
        forced,
        kwargs,
    )


def install() -> None:
    """Register the bundled configs and route open_clip's factory through :func:`create_model` (idempotent)."""
    if MODEL_CONFIG_DIR not in ocf._MODEL_CONFIG_PATHS:
        ocf.add_model_config(MODEL_CONFIG_DIR)
    ocf.create_model = create_model
    open_clip.create_model = create_model


def plugin_model_names() -> list[str]:
    """Registered model configs that carry a plugin marker."""
    return sorted(n for n in ocf._MODEL_CONFIGS if plugin_model_config(n) is not None)


def check_pretrained(model_name: str, pretrained: Optional[str], **model_kwargs: Any) -> None:
    """Fail early, in one line, when ``pretrained`` (a file) does not fit plugin model ``model_name``, or is neither a
    file nor a tag of its base architecture; a dry run on the meta device (no weights are kept). Plain open_clip
    models and bundles are left to open_clip.

    Raises:
        PluginError: the file is of another architecture, or the name is no file and no known tag.
    """
    cfg = plugin_model_config(model_name)
    if cfg is None or not pretrained or model_name.startswith(("local-dir:", "hf-hub:")):
        return
    if not os.path.isfile(pretrained):
        base = from_pretrained.base_model_name(model_name, cfg)
        if base and ocp.get_pretrained_cfg(base, pretrained):
            return  # a tag: its weights are of the base architecture by construction
    create_model(model_name, pretrained=pretrained, device="meta", **model_kwargs)


def list_pretrained_tags(model_name: str) -> list[str]:
    """Pretrained tags ``model_name`` starts from: its base architecture's for a plugin model (``UniCLIP-ViT-B-32``:
    ``ViT-B-32``'s), open_clip's own list otherwise."""
    return from_pretrained.list_tags(model_name, plugin_model_config(model_name))
