"""``--export``: consolidate a run's DeepSpeed checkpoint into a plain open_clip checkpoint (fp32 ``state_dict``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from uniclip_plugin.ds import checkpoint as ckpt
from uniclip_plugin.ds.errors import HarnessError
from uniclip_plugin.io import atomic_torch_save
from uniclip_plugin.runs import RunDir


def _check_params_model(run_dir: Path, model_name: str) -> None:
    """The bench reads the model from ``params.txt``: refuse an export that would disagree with it."""
    named = RunDir(run_dir).params().get("model")
    if named is not None and named != model_name:
        raise HarnessError(f"{run_dir / 'params.txt'} names model {named!r} but the checkpoint {model_name!r}")


def export_target(run_dir: Path, meta: dict, out: Optional[str]) -> Path:
    """Where ``--out`` puts the export: None → ``run_dir/export/<name>.pt``; a bare file name →
    ``run_dir/export/<out>``; a path → as given."""
    if out is None:
        return run_dir / "export" / f"{meta.get('name') or run_dir.name}.pt"
    if os.path.dirname(out) == "":
        return run_dir / "export" / out
    return Path(out)


def model_kwargs_from_overrides(model_name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The creation kwargs that rebuild a run's model: its meta's ``model_overrides`` entry for the model's own marker
    (``uniclip_cfg={...}``); other entries, and any for a plain open_clip model, do not apply (as when training)."""
    from uniclip_plugin import factory, registry

    cfg = factory.plugin_model_config(model_name)
    marker = registry.marker_of(cfg) if cfg else None
    return {marker: overrides[marker]} if marker in overrides else {}


def _verify(model_name: str, target: Path, sd: dict, model_kwargs: dict[str, Any]) -> None:
    """Load ``target`` back through ``open_clip.create_model_and_transforms`` with the run's model options and compare
    every floating tensor with what was written."""
    import open_clip

    loaded, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(target), **model_kwargs)
    for key, value in loaded.state_dict().items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.equal(value, sd[key].to(value.dtype)):
            raise HarnessError(f"export check failed: {key} differs after loading {target} in open_clip")


def export_run(run_dir: Path, out: Optional[str] = None, tag: Optional[str] = None, verify: bool = True) -> Path:
    """Consolidate a run's checkpoint into fp32 weights that stock ``open_clip.create_model_and_transforms`` loads.

    Args:
        run_dir: the run directory (``<logs>/<name>``).
        out: output file; None → ``run_dir/export/<name>.pt``; a bare file name → ``run_dir/export/<out>``.
        tag: checkpoint tag; None → the one ``LATEST`` names.
        verify: load the file back through ``open_clip.create_model_and_transforms(model, pretrained=file)`` (with
            the run's model options) and compare.

    Returns:
        The written file. Its ``state_dict`` holds fp32 tensors named as open_clip names them.

    Raises:
        PluginError: no complete checkpoint, a model mismatch, or a failed check.
    """
    import open_clip

    import uniclip_plugin

    uniclip_plugin.register()  # open_clip's factory builds plugin models only once registered
    ckpt_dir = run_dir / "checkpoints"
    tag = tag or ckpt.read_latest(ckpt_dir)
    if tag is None or not (ckpt_dir / tag / ckpt.META_FILE).is_file():
        raise HarnessError(f"--export {run_dir}: no complete checkpoint in {ckpt_dir}")
    meta = ckpt.read_meta(ckpt_dir, tag)
    model_name = meta["model"]
    _check_params_model(run_dir, model_name)
    overrides = meta.get("model_overrides") or {}
    target = export_target(run_dir, meta, out)
    sd = ckpt.consolidated_fp32_state_dict(ckpt_dir, tag)
    model_kwargs = model_kwargs_from_overrides(model_name, overrides)
    reference = open_clip.create_model(model_name, precision="fp32", device="cpu", **model_kwargs).state_dict()
    sd = ckpt.match_shapes(sd, reference)
    ts = meta["train_state"]
    payload = {
        "name": meta.get("name"),
        "model": model_name,
        "epoch": ts["epoch"],
        "step": ts["step"],
        "model_overrides": overrides,
        "state_dict": sd,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, target)
    if verify:
        _verify(model_name, target, sd, model_kwargs)
    return target
