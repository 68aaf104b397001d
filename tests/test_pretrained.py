"""Plugin models start from pretrained open_clip weights (offline): a stock CLIP checkpoint file and a pretrained tag
of the base architecture (a fake tag whose weights sit in huggingface_hub's cache, standing in for the hub). Towers
equal the file's, the method's own parts stay at their init, and two log lines name the new and the unused keys."""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import open_clip
import open_clip.pretrained as ocp
import pytest
import torch

import uniclip_plugin
from uniclip_plugin import factory, pretrained
from uniclip_plugin.similarity import PAIR_IT

uniclip_plugin.register()  # import alone registers nothing
PLUGIN_MODELS = ("UniCLIP-Tiny-32", "SLIP-Tiny-32", "DeCLIP-Tiny-32")
BASE = "CLIP-Tiny-32"


def stock_clip_state() -> dict[str, torch.Tensor]:
    """A stock CLIP-Tiny-32, perturbed so that nothing equals a fresh init by chance."""
    torch.manual_seed(123)
    model = open_clip.create_model(BASE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.logit_scale.fill_(4.2)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip_tiny.pt"
    torch.save(stock_clip_state(), path)
    return path


def _fresh(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return uniclip_plugin.create_model(name).state_dict()


def _loaded(name: str, weights: str, caplog: pytest.LogCaptureFixture, **kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same init as _fresh: the plugin's parts must equal it
    with caplog.at_level(logging.INFO, logger="uniclip_plugin.pretrained"):
        model, _, _ = uniclip_plugin.create_model_and_transforms(name, pretrained=weights, **kwargs)
    return model.state_dict()


def _check_started_from_clip(name: str, got: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture) -> None:
    clip, fresh = stock_clip_state(), _fresh(name)
    assert set(got) == set(fresh), "the model is built with all its parts (not reduced to what the file has)"
    partly = {"logit_scale", "token_embedding.weight"}
    for key, value in got.items():
        if key in partly and value.shape != clip[key].shape:
            continue
        want = clip[key].reshape(value.shape) if key in clip else fresh[key]
        assert torch.equal(value, want), key
    own = [k for k in fresh if k not in clip]
    assert own, "every plugin model has parts of its own"
    lines = [r.getMessage() for r in caplog.records if r.name == "uniclip_plugin.pretrained"]
    new_line = [line for line in lines if "new keys" in line]
    unused_line = [line for line in lines if "unused checkpoint keys" in line]
    assert len(new_line) == 1 and len(unused_line) == 1, lines
    assert all(k in new_line[0] for k in own)
    assert "unused checkpoint keys (0): none" in unused_line[0]


@pytest.mark.parametrize("name", PLUGIN_MODELS)
def test_stock_clip_file_starts_every_plugin_model(
    name: str, clip_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got = _loaded(name, str(clip_file), caplog)
    _check_started_from_clip(name, got, caplog)


def test_uniclip_from_clip_keeps_aug_embedding_and_takes_the_image_text_scale(
    clip_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got, fresh = _loaded("UniCLIP-Tiny-32", str(clip_file), caplog), _fresh("UniCLIP-Tiny-32")
    assert "aug_embed.encoder.0.weight" in got  # not silently built without the augmentation-aware embedding
    want = fresh["logit_scale"].clone()
    want[PAIR_IT] = 4.2
    assert torch.equal(got["logit_scale"], want)  # II, TT: fresh; IT: CLIP's
    assert torch.equal(got["logit_bias"], fresh["logit_bias"])
    assert "partly from the file (rest at init): logit_scale" in caplog.text


def test_declip_from_clip_copies_the_49408_token_rows_and_keeps_the_mask_row(
    clip_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got, fresh = _loaded("DeCLIP-Tiny-32", str(clip_file), caplog), _fresh("DeCLIP-Tiny-32")
    clip_rows = stock_clip_state()["token_embedding.weight"]
    assert got["token_embedding.weight"].shape[0] == clip_rows.shape[0] + 1
    assert torch.equal(got["token_embedding.weight"][:-1], clip_rows)
    assert torch.equal(got["token_embedding.weight"][-1], fresh["token_embedding.weight"][-1])


def test_uniclip_without_domain_similarity_takes_the_scale(clip_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    got = _loaded("UniCLIP-Tiny-32", str(clip_file), caplog, uniclip_cfg={"domain_similarity": False})
    assert torch.equal(got["logit_scale"], torch.tensor([4.2]))


def test_own_checkpoint_still_loads_strictly_with_options_off_its_shapes(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = uniclip_plugin.create_model("UniCLIP-Tiny-32", uniclip_cfg={"aug_embed": False})
    path = tmp_path / "uniclip.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    loaded = uniclip_plugin.create_model("UniCLIP-Tiny-32", pretrained=str(path))
    assert loaded.aug_embed is None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def _hf_cache_repo(cache: Path, repo_id: str, files: dict[str, Path], revision: str = "0" * 40) -> Path:
    """huggingface_hub's cache layout: ``models--ORG--NAME/snapshots/<rev>/<file>`` and ``refs/main`` = rev."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_tag_of_the_base_architecture_from_the_hub_cache(
    tmp_path: Path,
    clip_file: Path,
    offline_hub: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import safetensors.torch

    weights = tmp_path / "open_clip_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in stock_clip_state().items()}, str(weights))
    cache = tmp_path / "hub"
    _hf_cache_repo(cache, "fake-org/clip-tiny", {"open_clip_model.safetensors": weights})
    tags = {"fake_tag": ocp._pcfg(hf_hub="fake-org/clip-tiny/", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))}
    monkeypatch.setitem(ocp._PRETRAINED, BASE, tags)  # open_clip's table of tags, with one for the Tiny base
    assert uniclip_plugin.list_pretrained_tags("UniCLIP-Tiny-32") == ["fake_tag"]
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="uniclip_plugin.pretrained"):
        model, _, val = uniclip_plugin.create_model_and_transforms(
            "UniCLIP-Tiny-32", pretrained="fake_tag", cache_dir=str(cache)
        )
    _check_started_from_clip("UniCLIP-Tiny-32", model.state_dict(), caplog)
    assert model.visual.preprocess_cfg["mean"] == (0.5, 0.5, 0.5)  # the tag's preprocessing, as open_clip does


def test_list_pretrained_tags_answers_the_base_architecture() -> None:
    assert "laion2b_s34b_b79k" in uniclip_plugin.list_pretrained_tags("UniCLIP-ViT-B-32")
    assert uniclip_plugin.list_pretrained_tags("UniCLIP-ViT-B-32") == open_clip.list_pretrained_tags_by_model(
        "ViT-B-32"
    )
    assert uniclip_plugin.list_pretrained_tags("ViT-B-32") == open_clip.list_pretrained_tags_by_model("ViT-B-32")
    assert pretrained.base_model_name("SLIP-Tiny-32", factory.plugin_model_config("SLIP-Tiny-32")) == BASE


def test_open_clip_train_path_takes_a_clip_file(clip_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    """open_clip_train calls open_clip.create_model_and_transforms(args.model, args.pretrained, ...)."""
    factory.check_pretrained("SLIP-Tiny-32", str(clip_file))  # the CLI's early check passes
    torch.manual_seed(0)
    with caplog.at_level(logging.INFO, logger="uniclip_plugin.pretrained"):
        model, _, _ = open_clip.create_model_and_transforms("SLIP-Tiny-32", str(clip_file), output_dict=True)
    _check_started_from_clip("SLIP-Tiny-32", model.state_dict(), caplog)


@pytest.mark.slow
def test_open_clip_train_from_a_clip_file(clip_file: Path, tmp_path: Path) -> None:
    """End to end: `open_clip train --pretrained FILE` for a plugin model (a few steps on CPU)."""
    import os
    import subprocess
    import sys

    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    shards = build_synthetic_pretrain(tmp_path / "shards", n_samples=64, res=32, n_shards=2, seed=0)
    cmd = [
        sys.executable,
        "-m",
        "uniclip_plugin.cli",
        "train",
        "--loss",
        "uniclip_mpnce",
        "--model",
        "UniCLIP-Tiny-32",
        "--pretrained",
        str(clip_file),
        "--train-data",
        shards["pattern"],
        "--dataset-type",
        "webdataset",
        "--dataset-resampled",
        "--train-num-samples",
        "64",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--logs",
        str(tmp_path / "logs"),
        "--name",
        "ft",
        "--zeroshot-frequency",
        "0",
        "--save-frequency",
        "1",
        "--seed",
        "0",
    ]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "logs" / "ft" / "out.log").read_text()
    assert "from CLIP checkpoint" in log and "aug_embed.encoder.0.weight" in log
