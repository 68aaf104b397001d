"""Every registered method honours the same contract (timm style: the cases come from the registry, so a new method is
tested by registering it): its Tiny model trains one finite step in which every trainable parameter gets a gradient,
its checkpoint reloads in stock open_clip once the plugin is registered, in eval mode it is a plain CLIP, and its
flags are listed by ``open_clip train --help``."""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin
from uniclip_plugin import integration, registry
from uniclip_plugin.cli import main as cli_main

uniclip_plugin.register()  # import alone registers nothing
METHODS = registry.list_methods()
BATCH = 6


def _setup(method: str) -> integration.Setup:
    return integration.prepare(argparse.Namespace(loss=method), rank=0, world_size=1)


def _model(method: str) -> tuple[torch.nn.Module, str]:
    name = f"{registry.get_method(method).model_prefix}-Tiny-32"
    torch.manual_seed(0)
    model, _, _ = integration.create_model_and_transforms(name, _setup(method), output_dict=True)
    return model, name


def _batch(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    texts = open_clip.get_tokenizer(name)([f"a picture of thing {i}" for i in range(BATCH)])
    return images, texts


def test_the_registry_holds_the_five_methods() -> None:
    assert METHODS == ["clip", "declip", "siglip", "slip", "uniclip_mpnce"]


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_is_finite_and_reaches_every_parameter(method: str) -> None:
    model, name = _model(method)
    model.train()
    images, texts = _batch(name)
    losses = _setup(method).loss(**model(images, texts), output_dict=True)
    total = sum(v for k, v in losses.items() if k.endswith("_loss"))
    assert torch.isfinite(total), losses
    total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == [], f"{method}: no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("method", METHODS)
def test_the_checkpoint_reloads_in_stock_open_clip(method: str, tmp_path: Path) -> None:
    model, name = _model(method)
    with torch.no_grad():  # perturb every tensor, so a reload that silently re-initialises fails
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": method, "state_dict": model.state_dict()}, path)
    spec = registry.get_method(method)
    # a SigLIP model needs its logit bias declared to load (open_clip's own rule), as with open_clip's SigLIP configs
    extra = spec.model_kwargs(argparse.Namespace()) if spec.model_kwargs is not None else {}
    loaded, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(path), **extra)
    assert type(loaded) is type(model)
    reloaded = loaded.state_dict()
    assert reloaded.keys() == model.state_dict().keys()
    assert all(torch.equal(reloaded[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", METHODS)
def test_eval_mode_is_a_plain_clip(method: str) -> None:
    model, name = _model(method)
    model.eval()
    images, texts = _batch(name)
    with torch.no_grad():
        out = model(images, texts)
        image, text = model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)
    dim = model.text_projection.shape[1] if isinstance(model.text_projection, torch.Tensor) else image.shape[1]
    assert out["image_features"].shape == (BATCH, dim) and out["text_features"].shape == (BATCH, dim)
    assert torch.allclose(out["image_features"], image, atol=1e-6) and torch.allclose(out["text_features"], text)
    assert out["logit_scale"].numel() == 1


@pytest.mark.parametrize("method", METHODS)
def test_its_flags_are_listed_by_open_clip_train_help(method: str, capsys: pytest.CaptureFixture) -> None:
    spec = registry.get_method(method)
    parser = argparse.ArgumentParser(add_help=False)
    if spec.add_arguments is not None:
        spec.add_arguments(parser)
    flags = [s for action in parser._actions for s in action.option_strings]
    assert cli_main(["train", "--help"]) == 0
    shown = capsys.readouterr().out
    assert f"{method}: {spec.description}" in " ".join(shown.split())  # in --loss's help
    assert [f for f in flags if f not in shown] == []
