"""SLIP (docs/METHODS.md §SLIP): the loss against naive float64 loops written from SLIP's ``losses.py``, its gradient,
the model's one-pass training forward and plain-CLIP eval, 2 gloo ranks == 1 process, the CLI errors, and
``open_clip train``.

Only torch and pytest are imported at the top: ``mp.spawn`` children re-import this module, and the package import
(open_clip + registration) would cost each of them several seconds (see tests/test_distributed_loss.py).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.cpu_train import cpu_train_argv

F64 = torch.float64
NAME = "SLIP-Tiny-32"


def _loss_module(light: bool = False) -> Any:
    """``uniclip_plugin.losses.slip``; ``light`` (spawned children only): without running ``uniclip_plugin/__init__``,
    whose registration the loss does not need (see test_distributed_loss.py)."""
    if light:
        return importlib.import_module("uniclip_plugin.losses.slip")
    return importlib.import_module("uniclip_plugin.losses.slip")


def _inputs(b: int, d: int, e: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Un-normalised features (the loss normalises, as SLIP's) and a logit scale."""
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(b, d, generator=g, dtype=F64), torch.randn(b, d, generator=g, dtype=F64)
    z_1, z_2 = torch.randn(b, e, generator=g, dtype=F64), torch.randn(b, e, generator=g, dtype=F64)
    return img, txt, torch.tensor(3.0 + 10 * torch.rand((), generator=g, dtype=F64).item(), dtype=F64), z_1, z_2


# ---------------------------------------------------------------------------------------------------------------------
# Naive references: explicit loops over rows and candidates, from the formulas of losses/slip.py
# ---------------------------------------------------------------------------------------------------------------------


def _nll(pos: torch.Tensor, candidates: list[torch.Tensor]) -> torch.Tensor:
    """−log(e^pos / Σ_c e^c); ``candidates`` include the positive."""
    return -torch.log(torch.exp(pos) / sum(torch.exp(c) for c in candidates))


def naive_clip(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    n = img.shape[0]
    i2t = [
        _nll(scale * torch.dot(img[i], txt[i]), [scale * torch.dot(img[i], txt[j]) for j in range(n)]) for i in range(n)
    ]
    t2i = [
        _nll(scale * torch.dot(txt[i], img[i]), [scale * torch.dot(txt[i], img[j]) for j in range(n)]) for i in range(n)
    ]
    return (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2


def naive_ntxent(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """For each view: candidates = every other-view sample + every same-view sample but itself."""
    z_a, z_b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    n = z_a.shape[0]

    def one_view(q: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        terms = []
        for i in range(n):
            cands = [torch.dot(q[i], other[j]) / tau for j in range(n)]
            cands += [torch.dot(q[i], q[j]) / tau for j in range(n) if j != i]
            terms.append(_nll(torch.dot(q[i], other[i]) / tau, cands))
        return torch.stack(terms).mean()

    return (one_view(z_a, z_b) + one_view(z_b, z_a)) / 2


def _total(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(v for k, v in out.items() if k.endswith("_loss"))


# ---------------------------------------------------------------------------------------------------------------------
# Loss: exactness, gradient, contract
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("b", [1, 2, 5])
@pytest.mark.parametrize("tau,ssl_scale", [(0.1, 1.0), (0.3, 0.5)])
def test_terms_match_naive_float64_reference(seed: int, b: int, tau: float, ssl_scale: float) -> None:
    slip = _loss_module()
    img, txt, scale, z_1, z_2 = _inputs(b, 6, 5, seed)
    out = slip.slip_loss(img, txt, scale, z_1, z_2, ssl_scale=ssl_scale, ssl_temp=tau)
    want_clip, want_ssl = naive_clip(img, txt, scale), naive_ntxent(z_1, z_2, tau)
    assert out["clip_loss"].dtype == F64
    assert torch.allclose(out["clip_loss"], want_clip, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out["ssl_ntxent"], want_ssl, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out["ssl_loss"], ssl_scale * want_ssl, rtol=1e-12, atol=1e-12)
    module_total = slip.SLIPLoss(ssl_scale=ssl_scale, ssl_temp=tau)(img, txt, scale, z_1, z_2, aug_params=None)
    assert torch.allclose(module_total, want_clip + ssl_scale * want_ssl, rtol=1e-12, atol=1e-12)
    assert set(out) == {"clip_loss", "ssl_loss", "ssl_ntxent", "clip_acc", "ssl_acc"}
    assert all(not v.requires_grad for k, v in out.items() if not k.endswith("_loss"))


def test_closed_forms() -> None:
    """Identical SSL embeddings: every candidate ties, NT-Xent = log(2B − 1) (lightly's degenerate check); orthogonal
    matched image/text pairs at scale s: CLIP = log(1 + (B − 1)·e^{−s})."""
    slip = _loss_module()
    b = 4
    same = torch.ones(b, 3, dtype=F64)
    eye = torch.eye(b, dtype=F64)
    scale = torch.tensor(5.0, dtype=F64)
    out = slip.slip_loss(eye, eye, scale, same, same)
    assert torch.allclose(out["ssl_ntxent"], torch.log(torch.tensor(2.0 * b - 1, dtype=F64)))
    assert torch.allclose(out["clip_loss"], torch.log(1 + (b - 1) * torch.exp(-scale)))
    assert out["clip_acc"] == 100.0


def test_gradcheck_and_gradient_equals_reference() -> None:
    slip = _loss_module()
    leaves = [t.clone().requires_grad_() for t in _inputs(3, 4, 3, seed=7)]

    def total(
        img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, z_1: torch.Tensor, z_2: torch.Tensor
    ) -> torch.Tensor:
        return _total(slip.slip_loss(img, txt, scale, z_1, z_2, ssl_scale=0.7, ssl_temp=0.2))

    assert torch.autograd.gradcheck(total, tuple(leaves))
    got = torch.autograd.grad(total(*leaves), leaves)
    img, txt, scale, z_1, z_2 = leaves
    want = torch.autograd.grad(naive_clip(img, txt, scale) + 0.7 * naive_ntxent(z_1, z_2, 0.2), leaves)
    for g, w in zip(got, want, strict=False):
        assert torch.allclose(g, w, rtol=1e-10, atol=1e-12)


def test_bad_options_and_shapes_are_clear_errors() -> None:
    slip = _loss_module()
    img, txt, scale, z_1, z_2 = _inputs(3, 4, 3, seed=0)
    with pytest.raises(ValueError, match="ssl_temp must be > 0"):
        slip.SLIPLoss(ssl_temp=0.0)
    with pytest.raises(ValueError, match="rank"):
        slip.SLIPLoss(rank=2, world_size=2)
    with pytest.raises(ValueError, match="SLIP model"):
        slip.slip_loss(img[:, None], txt, scale, z_1, z_2)  # UniCLIP's [B, V, D] layout
    with pytest.raises(ValueError, match="ssl_embed_2"):
        slip.slip_loss(img, txt, scale, z_1, z_2[:2])


def test_float32_under_bf16_autocast() -> None:
    slip = _loss_module()
    img, txt, scale, z_1, z_2 = (t.to(torch.bfloat16) for t in _inputs(4, 6, 5, seed=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = slip.slip_loss(img, txt, scale, z_1, z_2)
    assert out["clip_loss"].dtype == torch.float32 and torch.isfinite(_total(out))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def _model(**kwargs: Any) -> Any:
    import open_clip

    import uniclip_plugin

    uniclip_plugin.register()  # import alone registers nothing
    from uniclip_plugin.model.slip import SLIP

    torch.manual_seed(0)
    model = open_clip.create_model(NAME, output_dict=True, **kwargs)
    assert isinstance(model, SLIP)
    return model


def _batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    import open_clip

    images = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return images, open_clip.get_tokenizer(NAME)([f"a photo of thing {i}" for i in range(b)])


def _reference_pooled(visual: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip 3.3.0 ``VisionTransformer.forward`` without its last line (``pooled @ self.proj``)."""
    return visual._pool(visual.transformer(visual._embeds(x)))[0]


def test_training_forward_contract_and_one_tower_pass() -> None:
    model = _model(embed_dim=32)  # D = 32 ≠ vision width 64: the head input must be the width
    model.train()
    seen: list[torch.Tensor] = []
    hooks = [
        model.visual.register_forward_pre_hook(lambda _m, args: seen.append(args[0])),
        model.visual.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0])),
    ]
    images, texts = _batch(b=4)
    out = model(images, texts)
    for h in hooks:
        h.remove()
    assert [tuple(x.shape[:1]) for x in seen] == [(12,), (12,)]  # ONE tower pass (and transformer pass) for 3·B views
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "image_features": (4, 32),
        "text_features": (4, 32),
        "logit_scale": (),
        "ssl_embed_1": (4, 64),
        "ssl_embed_2": (4, 64),
    }
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(out["logit_scale"], torch.tensor(1 / 0.07), rtol=1e-6)
    assert model.image_mlp.layer1.in_features == 64 == model.visual.transformer.width
    assert (model.views["clip"].preset, model.views["ssl"].preset) == ("clip_weak", "simclr")
    # Outputs from the captured views: CLIP embedding of view 0; head on the pre-projection feature of views 1, 2.
    views = seen[0].detach()
    with torch.no_grad():
        pooled = _reference_pooled(model.visual, views)  # [12, 64]
        assert torch.allclose(out["image_features"], F.normalize(model.visual(views[:4]), dim=-1), atol=1e-6)
        for k, part in ((1, slice(4, 8)), (2, slice(8, 12))):  # BatchNorm statistics per view, as SLIP
            assert torch.allclose(out[f"ssl_embed_{k}"], model.image_mlp(pooled[part]), atol=1e-5)


def test_head_reads_the_pooled_feature_before_proj() -> None:
    model = _model(embed_dim=32)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        projected, pooled = model.encode_image_and_backbone(x)
        want = _reference_pooled(model.visual, x)
    assert pooled.shape == (5, 64) and torch.equal(pooled, want)
    assert torch.allclose(projected, want @ model.visual.proj, atol=1e-6)


def test_joint_batchnorm_option() -> None:
    model = _model(slip_cfg={"ssl_bn_per_view": False})
    model.train()
    seen: list[torch.Tensor] = []
    hook = model.visual.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    out = model(*_batch(b=3))
    hook.remove()
    with torch.no_grad():
        want = model.image_mlp(_reference_pooled(model.visual, seen[0][3:]))
    assert torch.allclose(torch.cat([out["ssl_embed_1"], out["ssl_embed_2"]]), want, atol=1e-5)


def test_eval_forward_is_plain_clip_and_towers_share_state_dict_names() -> None:
    import open_clip

    model = _model().eval()
    clip = open_clip.create_model("CLIP-Tiny-32", output_dict=True).eval()
    tower_state = {k: v for k, v in model.state_dict().items() if not k.startswith("image_mlp.")}
    clip.load_state_dict(tower_state, strict=True)  # every non-head key is CLIP's
    assert all(k.startswith("image_mlp.") for k in set(model.state_dict()) - set(clip.state_dict()))
    images, texts = _batch(b=3)
    with torch.no_grad():
        got, want = model(images, texts), clip(images, texts)
        assert torch.equal(model.encode_image(images), clip.encode_image(images))
    assert set(got) == set(want) == {"image_features", "text_features", "logit_scale"}
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert model.logit_scale.dim() == 0  # open_clip's scalar parameter


def test_logit_scale_output_is_clamped_in_forward() -> None:
    model = _model().train()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert torch.allclose(model(*_batch(b=2))["logit_scale"], torch.tensor(100.0))


def test_config_errors_are_one_line_plugin_errors() -> None:
    from uniclip_plugin.config import from_dict
    from uniclip_plugin.errors import PluginError
    from uniclip_plugin.model.slip import SLIPCfg

    for values, match in (
        ({"ssl_views": 3}, "ssl_views must be 2"),
        ({"ssl_view_preset": "strong"}, "choices"),
        ({"ssl_mlp_dim": 0}, "ssl_mlp_dim"),
        ({"ssl_heads": 2}, "valid keys"),
    ):
        with pytest.raises(PluginError, match=match) as err:
            from_dict(SLIPCfg, values, "slip_cfg")
        assert "\n" not in str(err.value)


def test_configs_share_towers_with_their_clip_configs() -> None:
    import json

    import uniclip_plugin

    configs = Path(uniclip_plugin.__file__).parent / "model_configs"
    for slip_name, base in (
        ("SLIP-Tiny-32", "CLIP-Tiny-32"),
        ("SLIP-Tiny-64", "CLIP-Tiny-64"),
        ("SLIP-ViT-B-32", "UniCLIP-ViT-B-32"),
    ):
        slip_cfg, base_cfg = (json.loads((configs / f"{n}.json").read_text()) for n in (slip_name, base))
        assert {k: slip_cfg[k] for k in ("embed_dim", "vision_cfg", "text_cfg")} == {
            k: base_cfg[k] for k in ("embed_dim", "vision_cfg", "text_cfg")
        }
        assert "slip_cfg" in slip_cfg
    assert json.loads((configs / "SLIP-ViT-B-32.json").read_text())["slip_cfg"]["ssl_mlp_dim"] == 4096


# ---------------------------------------------------------------------------------------------------------------------
# CLI wiring and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_cli_flags_build_the_loss_and_whole_image_transform() -> None:
    import argparse

    import open_clip

    from uniclip_plugin import integration
    from uniclip_plugin.cli import plugin_parser

    ours, rest = plugin_parser().parse_known_args(
        ["--loss", "slip", "--ssl-scale", "0.5", "--ssl-temp", "0.2", "--local-loss"]
    )
    assert rest == ["--local-loss"]
    setup = integration.prepare(ours)
    loss = setup.build_loss(argparse.Namespace(local_loss=True, rank=0, world_size=1))
    assert (loss.ssl_scale, loss.ssl_temp, loss.local_loss) == (0.5, 0.2, True)
    model, train, val = integration.create_model_and_transforms(NAME, setup)
    # views are sampled in forward from the whole image, at the config's source size (64 px for Tiny-32)
    from PIL import Image

    image = Image.new("RGB", (80, 64), (30, 200, 30))
    assert model.view_source_size == 64 and train(image).shape == (3, 64, 64) and val(image).shape == (3, 32, 32)
    assert torch.equal(train(image), train(image))  # no random crop
    at_input = integration.prepare(argparse.Namespace(loss="slip", view_source_size=0))
    _, train, val = integration.create_model_and_transforms(NAME, at_input)
    assert train is val  # source = input size: the eval transform
    _, train, val = open_clip.create_model_and_transforms(NAME)
    assert train is not val  # plain open_clip keeps its own training transform


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    from uniclip_plugin.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_slip_loss_with_a_non_slip_model_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(capsys, ["train", "--loss", "slip", "--model", "CLIP-Tiny-32"])
    assert "slip_cfg" in err and NAME in err
    err = _one_line_error(capsys, ["train", "--loss", "slip", "--model", "UniCLIP-Tiny-32"])
    assert "slip_cfg" in err
    err = _one_line_error(capsys, ["train", "--loss", "clip", "--model", NAME])
    assert "plugin model" in err and "slip_cfg" in err


# ---------------------------------------------------------------------------------------------------------------------
# 2 gloo ranks == 1 process (world-size factor: tests/test_distributed_loss.py docstring)
# ---------------------------------------------------------------------------------------------------------------------

WORLD, B_LOCAL = 2, 4
DIST_KW = {"ssl_scale": 0.7, "ssl_temp": 0.1}


def _run(fn: Any, features: tuple[torch.Tensor, ...], **kw: Any) -> list[torch.Tensor]:
    """Total loss, the two terms, and the gradients w.r.t. (img, txt, scale, z_1, z_2)."""
    leaves = [t.clone().requires_grad_() for t in features]
    out = fn(*leaves, **DIST_KW, **kw)
    _total(out).backward()
    return [_total(out).detach(), out["clip_loss"].detach(), out["ssl_loss"].detach()] + [t.grad for t in leaves]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from uniclip_plugin.testing.gloo_group import gloo_group

    with gloo_group(rank, WORLD, init_file):
        slip = _loss_module(light=True)
        img, txt, scale, z_1, z_2 = _inputs(WORLD * B_LOCAL, 6, 5, seed=11)
        part = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        local = (img[part], txt[part], scale, z_1[part], z_2[part])
        results = {
            name: _run(slip.slip_loss, local, local_loss=local_loss, rank=rank, world_size=WORLD)
            for name, local_loss in (("local", True), ("global_rows", False))
        }
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm().clamp(min=1e-12)).item()


@pytest.mark.multiproc
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    slip = _loss_module()
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    want = _run(slip.slip_loss, _inputs(WORLD * B_LOCAL, 6, 5, seed=11))  # one process, global batch
    local = [r["local"] for r in ranks]
    for k in range(3):  # total, clip, ssl: the mean over ranks of the local losses is the global loss
        assert _rel_err(sum(g[k] for g in local) / WORLD, want[k]) <= 1e-5, k
    for k in (3, 4, 6, 7):  # features (every term gathered with grad): rank r's gradient / W is the global one
        assert _rel_err(torch.cat([g[k] for g in local]) / WORLD, want[k]) <= 1e-5, k
    assert _rel_err(sum(g[5] for g in local) / WORLD, want[5]) <= 1e-5  # replicated scale: DDP's mean
    for r in ranks:  # without local loss every rank computes the global loss; features get W × the gradient
        assert _rel_err(r["global_rows"][0], want[0]) <= 1e-5
        assert _rel_err(r["global_rows"][5], want[5]) <= 1e-5
    assert _rel_err(torch.cat([r["global_rows"][3] for r in ranks]), WORLD * want[3]) <= 1e-5


# ---------------------------------------------------------------------------------------------------------------------
# End to end: open_clip train --loss slip
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    shards = build_synthetic_pretrain(tmp_path_factory.mktemp("slip_shards"), n_samples=512, res=32, n_shards=4)
    logs = tmp_path_factory.mktemp("slip_logs")
    cmd = cpu_train_argv(
        "slip",
        NAME,
        shards["pattern"],
        logs,
        "slip",
        train_num_samples="512",
        batch_size="32",
        epochs="3",
        save_frequency="3",
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return logs / "slip"


@pytest.mark.slow
def test_training_lowers_the_loss_and_logs_both_terms(trained: Path) -> None:
    log = (trained / "out.log").read_text()
    losses = [float(m) for m in re.findall(r" Loss: ([0-9.]+)", log)]
    assert len(losses) >= 12
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.85 * first, (first, last)
    assert "Clip_loss:" in log and "Ssl_loss:" in log and "ssl_acc:" in log


@pytest.mark.slow
def test_checkpoint_loads_in_stock_open_clip_and_encodes_identically(trained: Path) -> None:
    import open_clip

    import uniclip_plugin
    from uniclip_plugin.model.slip import SLIP

    uniclip_plugin.register()  # what a user does before open_clip can build SLIP-Tiny-32 (not left to other tests)
    ckpt = trained / "checkpoints" / "epoch_3.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    live = open_clip.create_model(NAME)
    live.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))
    assert isinstance(loaded, SLIP)
    live.eval()
    loaded.eval()
    images, texts = _batch(b=3, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), live.encode_image(images))
        assert torch.equal(loaded.encode_text(texts), live.encode_text(texts))
