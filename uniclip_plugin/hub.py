"""Share a plugin model the open_clip way: a hub bundle folder, as open_clip's ``push_to_hf_hub.save_for_hf`` writes it.

``open_clip_config.json`` (``{"model_cfg": {... the marker dict with the options actually used}, "preprocess_cfg":
{...}}``) and ``open_clip_model.safetensors``; no tokenizer files (plugin models use open_clip's default tokenizer,
which ``get_tokenizer`` picks from ``text_cfg``) and no upload. With the plugin registered the folder loads as
``create_model_and_transforms("local-dir:DIR")``; uploaded as a Hugging Face repo (``huggingface-cli upload ORG/NAME
DIR``), as ``"hf-hub:ORG/NAME"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Optional

from torch import nn

from .errors import PluginError
from .io import atomic_path

CONFIG_FILE = "open_clip_config.json"  # open_clip.constants.HF_CONFIG_NAME
WEIGHTS_FILE = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME


def bundle_model_config(model_name: str, model: nn.Module) -> dict[str, Any]:
    """``model_cfg`` of the bundle: the model's config with its marker dict replaced by the options it was built with
    (config defaults, flags and what its checkpoint's shapes said), so the bundle rebuilds the same model.

    Raises:
        PluginError: ``model_name`` is not a plugin model.
    """
    from . import factory, registry

    cfg = factory.plugin_model_config(model_name)
    if cfg is None:
        raise PluginError(
            f"{model_name} is not a plugin model; export plain open_clip models with open_clip's push_to_hf_hub"
        )
    marker = registry.marker_of(cfg)
    options = getattr(model, marker, None)  # plugin models keep their options dataclass under the marker's name
    if not is_dataclass(options):
        raise PluginError(f"{type(model).__name__} keeps no '{marker}' options; it cannot be exported")
    cfg[marker] = json.loads(json.dumps(asdict(options)))  # tuples as lists: config.from_dict turns them back
    return cfg


def export_bundle(checkpoint: Optional[str], model_name: str, out: str, **model_kwargs: Any) -> Path:
    """Write the hub bundle of plugin model ``model_name`` with weights ``checkpoint`` (a file or a tag) to ``out``.

    Args:
        checkpoint: the weights (``pretrained=``: the plugin model's checkpoint, a CLIP file or a base tag).
        model_name: the plugin model config (``UniCLIP-Tiny-32``).
        out: the bundle folder (created; existing bundle files are overwritten).
        **model_kwargs: model options (``uniclip_cfg={...}``) as for ``create_model``.

    Returns:
        The folder.

    Raises:
        PluginError: not a plugin model, or a checkpoint that does not fit it.
    """
    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    from . import factory, register

    register()
    model = factory.create_model(model_name, pretrained=checkpoint, **model_kwargs)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:  # a crash never leaves a half-written bundle file
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(folder / CONFIG_FILE) as tmp:
        save_config_for_hf(model, tmp, model_config=bundle_model_config(model_name, model))
    return folder
