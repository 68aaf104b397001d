"""UniCLIP model: registration in open_clip's factory, output contract, ablation switches, checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin
from uniclip_plugin.errors import PluginError
from uniclip_plugin.losses.mpnce import UniversalContrastiveLoss
from uniclip_plugin.model.uniclip import UniCLIP

uniclip_plugin.register()  # import alone registers nothing

NAME = "UniCLIP-Tiny-32"


def _batch(model: torch.nn.Module, b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 32, 32, generator=g)
    texts = open_clip.get_tokenizer(NAME)([f"a photo of thing {i}" for i in range(b)])
    return images, texts


def _model(**uniclip_cfg: object) -> UniCLIP:
    torch.manual_seed(0)
    model = open_clip.create_model(NAME, uniclip_cfg=uniclip_cfg, output_dict=True)
    assert isinstance(model, UniCLIP)
    return model


def test_factory_builds_plugin_class_and_leaves_clip_alone() -> None:
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(NAME)
    assert isinstance(model, UniCLIP)
    assert type(open_clip.create_model("CLIP-Tiny-32")) is open_clip.CLIP
    assert model.visual.preprocess_cfg["size"] == (32, 32)
    assert open_clip.factory.CLIP is open_clip.model.CLIP  # the class swap is undone
    assert all(p.dim() > 0 for p in model.parameters())  # no 0-dim parameters (docs/UPSTREAM.md D1)
    assert model.logit_scale.shape == (3,) and model.logit_bias.shape == (3,)


def test_training_output_contract_is_batch_first() -> None:
    model = _model(views=3)
    model.train()
    images, texts = _batch(model)
    out = model(images, texts)
    assert out["image_features"].shape == (4, 3, 64)
    assert out["text_features"].shape == (4, 64)
    assert out["aug_params"].shape == (4, 3, 12)
    assert out["logit_scale"].shape == () and out["logit_bias"].shape == (2, 3)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4, 3), atol=1e-5)
    assert torch.allclose(out["logit_bias"][0], torch.full((3,), 1 / 0.07), rtol=1e-5)


def test_all_views_go_through_the_image_tower_in_one_forward() -> None:
    model = _model(views=2)
    model.train()
    calls = []
    model.visual.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model(*_batch(model, b=5))
    assert calls == [10]


def test_scales_are_clamped_inside_forward() -> None:
    model = _model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100
    model.train()
    out = model(*_batch(model))
    assert torch.allclose(out["logit_bias"][0], torch.full((3,), 100.0))


def test_starts_as_plain_clip_and_eval_uses_identity_view() -> None:
    """Aug-aware fusion is the identity at init, so the eval embedding equals CLIP's on the same tower weights."""
    model = _model()
    clip = open_clip.create_model("CLIP-Tiny-32")
    towers = {k: v for k, v in model.state_dict().items() if k in clip.state_dict() and not k.startswith("logit_")}
    assert clip.load_state_dict(towers, strict=False).missing_keys == ["logit_scale"]
    model.eval()
    clip.eval()
    images, texts = _batch(model)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), clip.encode_image(images), atol=1e-6)
        out = model(images, texts)
    assert out["image_features"].shape == (4, 64)
    assert out["logit_scale"].shape == ()


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"views": 1},
        {"aug_embed": False},
        {"domain_similarity": False},
        {"aug_fusion": "add"},
        {"views": 3, "view_preset": "mocov2"},
    ],
)
def test_every_parameter_gets_a_gradient(cfg: dict) -> None:
    """DDP (no find_unused_parameters in open_clip_train) needs a gradient for every parameter at every step."""
    model = _model(**cfg)
    model.train()
    out = model(*_batch(model))
    UniversalContrastiveLoss()(**out).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_ablation_switches_change_the_model() -> None:
    assert _model(aug_embed=False).aug_embed is None
    assert _model(domain_similarity=False).logit_scale.shape == (1,)
    assert _model(aug_fusion="add").aug_embed.fuse is None


def test_overrides_are_deep_merged() -> None:
    from uniclip_plugin import integration

    setup = integration.prepare(argparse.Namespace(loss="uniclip_mpnce", views=3))
    model, _, _ = integration.create_model_and_transforms(NAME, setup, uniclip_cfg={"aug_fusion": "add"})
    assert model.uniclip_cfg.views == 3 and model.uniclip_cfg.aug_fusion == "add"
    assert model.uniclip_cfg.aug_hidden == 64  # from the JSON config, not lost in the merge
    assert open_clip.create_model(NAME).uniclip_cfg.views == 2  # nothing leaked into later builds


def test_unknown_config_key_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match="valid keys"):
        open_clip.create_model(NAME, uniclip_cfg={"viewz": 2})


def test_bf16_forward_keeps_dtype() -> None:
    model = _model().to(torch.bfloat16)
    model.train()
    images, texts = _batch(model)
    out = model(images.to(torch.bfloat16), texts)
    assert out["image_features"].dtype == torch.bfloat16
    assert torch.isfinite(out["image_features"].float()).all()


def test_open_clip_train_checkpoint_loads_in_stock_open_clip(tmp_path: Path) -> None:
    model = _model()
    with torch.no_grad():
        for p in model.parameters():  # perturb so identity-init shortcuts cannot hide a loading bug
            p.add_(0.01 * torch.randn_like(p))
    ckpt = tmp_path / "epoch_1.pt"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as saved under DDP
    torch.save({"epoch": 1, "name": "x", "state_dict": state, "optimizer": {}}, ckpt)
    loaded, _, preprocess = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))
    assert isinstance(loaded, UniCLIP)
    model.eval()
    loaded.eval()
    images, texts = _batch(model)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), model.encode_text(texts))


def test_local_dir_bundle(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _model(views=1)
    cfg = dict(open_clip.get_model_config(NAME))
    cfg["uniclip_cfg"] = dict(cfg["uniclip_cfg"], views=1)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    loaded, _ = open_clip.create_model_from_pretrained(f"local-dir:{tmp_path}")
    assert isinstance(loaded, UniCLIP) and loaded.uniclip_cfg.views == 1
    images, _ = _batch(model)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))


@pytest.mark.parametrize(
    "cfg",
    [
        {"aug_embed": False},
        {"domain_similarity": False},
        {"aug_fusion": "add"},
        {"views": 1, "aug_embed": False, "domain_similarity": False},
    ],
)
def test_ablated_checkpoint_loads_by_its_base_name(tmp_path: Path, cfg: dict) -> None:
    """Options that change the weights are read off the checkpoint, so an ablation run loads like any other."""
    model = _model(**cfg)
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))
    assert (loaded.aug_embed is None) == (not cfg.get("aug_embed", True))
    assert loaded.logit_scale.shape == model.logit_scale.shape
    model.eval()
    loaded.eval()
    images, _ = _batch(model)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
