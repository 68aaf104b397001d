"""UniCLIP's options beyond the paper's defaults (docs/METHODS.md §UniCLIP.6): views cut from the source resolution,
per-view presets (a caption view), the FiLM augmentation embedding, the evaluation parameters, per-pair initial
temperatures, bounded offsets and a fixed text–text offset; each reaches the model, and checkpoints load by name."""

from __future__ import annotations

import argparse
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin
from tests.test_views import _reference_view
from uniclip_plugin import integration
from uniclip_plugin.cli import plugin_parser
from uniclip_plugin.losses.mpnce import UniversalContrastiveLoss
from uniclip_plugin.views import VIEW_PRESETS, identity_aug_params, normalization_stats

uniclip_plugin.register()  # import alone registers nothing
NAME = "UniCLIP-Tiny-32"


def _model(**cfg: object) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(NAME, uniclip_cfg=cfg, output_dict=True)


def _batch(size: int = 32, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    images = torch.randn(n, 3, size, size, generator=g)
    return images, open_clip.get_tokenizer(NAME)([f"caption {i}" for i in range(n)])


def test_views_from_a_larger_source_equal_the_per_view_reference_at_the_input_size() -> None:
    model = _model(source_size=64, view_presets=["clip", "simclr"], views=2)
    images, _ = _batch(64, 3)
    torch.manual_seed(11)
    views, params = model.views(images, 2, model.visual)
    assert views.shape == (3, 2, 3, 32, 32) and params.shape == (3, 2, 12)
    mean, std = (torch.tensor(t).view(1, 3, 1, 1) for t in normalization_stats(model.visual))
    raw = (images * std + mean).clamp(0, 1)
    rendered = views * std.unsqueeze(1) + mean.unsqueeze(1)
    for b in range(3):
        for v in range(2):
            ref = _reference_view(raw[b], params[b, v], 32, 32, VIEW_PRESETS["simclr"].blur_sigma[1])
            assert torch.allclose(rendered[b, v], ref, atol=1e-5), (b, v)
    caption = params[:, 0]
    area = caption[:, 2] * caption[:, 3]
    assert ((area >= 0.9 - 1e-6) & (area <= 1.0 + 1e-6)).all()  # open_clip's crop scale (0.9, 1)
    assert (caption[:, [4, 5, 10, 11]] == 0).all()  # no flip, colour, grayscale or blur


def test_the_shipped_presets_fit_any_number_of_views_and_one_preset_replaces_them() -> None:
    def presets(**flags: object) -> tuple[str, ...]:
        setup = integration.prepare(argparse.Namespace(loss="uniclip_mpnce", **flags))
        model, _, _ = integration.create_model_and_transforms(NAME, setup)
        return model.uniclip_cfg.presets(), model.views.preset

    assert presets() == (("clip", "simclr"), ("clip", "simclr"))  # the shipped config: a caption view, a strong one
    assert presets(views=1) == (("clip",), ("clip",))  # V=1 keeps the caption view
    assert presets(views=3) == (("clip", "simclr", "simclr"),) * 2  # the last preset repeats
    assert presets(view_presets=("simclr",)) == (("simclr",), ("simclr",))
    # one preset for every view: the per-view list goes, and the views are sampled as before issue 18
    assert presets(view_preset="mocov2") == (("mocov2", "mocov2"), "mocov2")
    by_kwargs = open_clip.create_model(NAME, uniclip_cfg={"view_preset": "none"})  # the Python API alike
    assert (by_kwargs.uniclip_cfg.presets(), by_kwargs.views.preset) == (("none", "none"), "none")
    both = open_clip.create_model(NAME, uniclip_cfg={"view_preset": "none", "view_presets": ["clip"], "views": 1})
    assert both.views.preset == ("clip",)


def test_the_training_transform_delivers_the_source_resolution_uncropped() -> None:
    setup = integration.prepare(argparse.Namespace(loss="uniclip_mpnce", view_source_size=64))
    model, train, val = integration.create_model_and_transforms(NAME, setup)
    assert model.view_source_size == 64 and model.visual.image_size == (32, 32)
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    assert train(image).shape == (3, 64, 64) and val(image).shape == (3, 32, 32)
    assert torch.equal(train(image), train(image))  # deterministic: no random crop
    shipped, train_shipped, _ = integration.create_model_and_transforms(NAME, None)
    assert shipped.view_source_size == 64 and train_shipped(image).shape == (3, 64, 64)  # the config's default
    at_input = integration.prepare(argparse.Namespace(loss="uniclip_mpnce", view_source_size=0))
    plain, train_plain, val_plain = integration.create_model_and_transforms(NAME, at_input)
    assert train_plain is val_plain  # source = input size: the eval transform


def test_film_starts_as_plain_clip_and_its_encoder_gets_gradient_at_step_0() -> None:
    images, texts = _batch()
    film = _model(aug_fusion="film")
    params = torch.rand(4, 12)
    with torch.no_grad():
        plain = film.visual(images)
        assert torch.equal(film.encode_image(images, aug_params=params), plain)  # γ = β = 0 at init
    film.train()
    UniversalContrastiveLoss()(**film(images, texts)).backward()
    last = film.aug_embed.encoder[2].weight.grad
    assert last is not None and last.abs().sum() > 0  # e(a) gets gradient from the first step
    concat = _model(aug_fusion="concat")
    concat.train()
    UniversalContrastiveLoss()(**concat(images, texts)).backward()
    assert concat.aug_embed.encoder[2].weight.grad.abs().sum() == 0  # why film: concat's W₂ = 0 blocks it


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.aug_embed.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("fusion", ["concat", "add", "film"])
def test_evaluation_feeds_the_documented_parameters(fusion: str) -> None:
    """With a trained-like augmentation embedding (a fresh one ignores its parameters), evaluation embeds with the
    identity view's parameters, or the caption preset's mean ones; not zeros, not anything else."""
    images, _ = _batch()
    identity = _trained_like(_model(aug_fusion=fusion))
    with torch.no_grad():
        h = identity.visual(images)
        want = identity.aug_embed(h, identity_aug_params(4, 1).flatten(0, 1))
        assert torch.allclose(identity.encode_image(images), want)
        assert not torch.allclose(identity.encode_image(images), identity.aug_embed(h, torch.zeros(4, 12)))
    mean = _trained_like(
        _model(aug_fusion=fusion, eval_aug_params="caption_mean", views=2, view_presets=["clip", "simclr"])
    )
    params = mean.eval_aug_params(4, torch.device("cpu"))
    area = params[0, 2] * params[0, 3]
    assert 0.9 < area < 1.0 and (params[:, [4, 5, 10, 11]] == 0).all()
    with torch.no_grad():
        assert torch.allclose(mean.encode_image(images), mean.aug_embed(mean.visual(images), params))


def test_per_pair_temperatures_bounded_offsets_and_a_fixed_text_text_offset() -> None:
    model = _model(init_temperature=[0.1, 0.07, 0.05], offset_bound=0.5, init_offset=0.2, tt_offset="fixed")
    scales, offsets = model.domain_similarity_params()
    assert torch.allclose(scales, torch.tensor([10.0, 1 / 0.07, 20.0]))
    assert torch.allclose(offsets, torch.full((3,), 0.2))
    with torch.no_grad():
        model.logit_bias.fill_(50.0)  # far out: tanh keeps it inside the bound
    assert (model.domain_similarity_params()[1].abs() <= 0.5).all()
    images, texts = _batch()
    model = _model(init_temperature=[0.1, 0.07, 0.05], offset_bound=0.5, init_offset=0.2, tt_offset="fixed")
    model.train()
    out = model(images, texts)
    UniversalContrastiveLoss()(**out).backward()
    grad = model.logit_bias.grad
    assert grad[2] == 0 and grad[:2].abs().sum() > 0  # TT held, II and IT learn


def test_every_new_flag_reaches_the_model_or_the_loss() -> None:
    argv = [
        "--loss",
        "uniclip_mpnce",
        "--view-presets",
        "clip,simclr,simclr",
        "--aug-fusion",
        "film",
        "--eval-aug-params",
        "caption_mean",
        "--init-temperatures",
        "0.1,0.07,0.07",
        "--offset-bound",
        "0.5",
        "--tt-offset",
        "fixed",
        "--text-positives",
        "caption",
        "--mpnce-balance",
        "group",
        "--mpnce-group-weights",
        "1,0.5",
        "--view-source-size",
        "64",
    ]
    setup = integration.prepare(plugin_parser().parse_known_args(argv)[0], rank=0)
    cfg = integration.create_model_and_transforms(NAME, setup)[0].uniclip_cfg
    assert (cfg.views, cfg.view_presets, cfg.aug_fusion, cfg.eval_aug_params) == (
        3,
        ("clip", "simclr", "simclr"),
        "film",
        "caption_mean",
    )
    assert (cfg.init_temperature, cfg.offset_bound, cfg.tt_offset, cfg.source_size) == (
        (0.1, 0.07, 0.07),
        0.5,
        "fixed",
        64,
    )
    loss = setup.loss
    assert (loss.text_positives, loss.balance, loss.group_weights) == ("caption", "group", (1.0, 0.5))


@pytest.mark.parametrize("fusion", ["concat", "add", "film"])
def test_a_checkpoint_with_each_fusion_loads_by_its_base_name(fusion: str, tmp_path: Path) -> None:
    model = _trained_like(_model(aug_fusion=fusion))
    path = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(path))
    assert loaded.uniclip_cfg.aug_fusion == fusion
    images, _ = _batch()
    with torch.no_grad():
        assert torch.equal(loaded.eval().encode_image(images), model.encode_image(images))


def test_film_applies_gamma_as_a_scale_and_beta_as_a_shift() -> None:
    """z = h ⊙ (1 + γ) + β with [γ; β] = e(a), checked against the encoder's own output on a trained-like embedding."""
    from uniclip_plugin.views import normalize_aug_params

    model = _trained_like(_model(aug_fusion="film"))
    h, params = torch.randn(5, 64, generator=torch.Generator().manual_seed(4)), torch.rand(5, 12)
    with torch.no_grad():
        gamma, beta = model.aug_embed.encoder(normalize_aug_params(params)).chunk(2, dim=-1)
        assert torch.allclose(model.aug_embed(h, params), h * (1 + gamma) + beta, atol=1e-6)
