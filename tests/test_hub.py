"""``open_clip export`` writes an open_clip hub bundle of a plugin checkpoint; it loads as ``local-dir:DIR`` and, from a
pre-populated huggingface_hub cache (offline), as ``hf-hub:ORG/NAME``, encoding fixed images and texts exactly as the
model it was written from."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch

import uniclip_plugin
from uniclip_plugin import cli, hub

uniclip_plugin.register()  # import alone registers nothing
# model -> (creation options, the export's method flags giving the options that do not show in the weights)
CASES = {
    "UniCLIP-Tiny-32": ({"uniclip_cfg": {"aug_fusion": "add", "views": 3}}, ["--views", "3"]),
    "SLIP-Tiny-32": ({}, []),
    "DeCLIP-Tiny-32": ({"declip_cfg": {"simsiam": False}}, []),
}
TEXTS = ["a red circle", "a blue square", "a green cross"]


def _trained_checkpoint(name: str, options: dict, folder: Path) -> tuple[torch.nn.Module, Path]:
    """A perturbed model and its checkpoint as open_clip_train writes it (``state_dict`` with ``module.``)."""
    torch.manual_seed(7)
    model = uniclip_plugin.create_model(name, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = folder / f"{name}.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    return model.eval(), path


def _encodings(model: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer(name)(TEXTS)
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def _export(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> tuple[torch.nn.Module, Path]:
    options, flags = CASES[name]
    model, checkpoint = _trained_checkpoint(name, options, tmp_path)
    out = tmp_path / "bundle"
    rc = cli.main(["export", "--checkpoint", str(checkpoint), "--model", name, "--out", str(out), *flags])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [hub.CONFIG_FILE, hub.WEIGHTS_FILE]
    return model, out


@pytest.mark.parametrize("name", CASES)
def test_local_dir_round_trip(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model, out = _export(name, tmp_path, capsys)
    bundle = json.loads((out / hub.CONFIG_FILE).read_text())
    assert set(bundle) == {"model_cfg", "preprocess_cfg"}
    marker = next(k for k in bundle["model_cfg"] if k.endswith("_cfg") and k not in ("vision_cfg", "text_cfg"))
    for key, value in next(iter(CASES[name][0].values()), {}).items():
        assert bundle["model_cfg"][marker][key] == value  # the options actually used
    loaded, _, val = uniclip_plugin.create_model_and_transforms(f"local-dir:{out}")
    assert type(loaded) is type(model)
    loaded.eval()
    for want, got in zip(_encodings(model, name), _encodings(loaded, f"local-dir:{out}"), strict=True):
        assert torch.equal(want, got)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert tuple(loaded.visual.preprocess_cfg["mean"]) == tuple(model.visual.preprocess_cfg["mean"])


def test_uniclip_bundle_keeps_options_not_in_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, out = _export("UniCLIP-Tiny-32", tmp_path, capsys)
    loaded = uniclip_plugin.create_model(f"local-dir:{out}")
    assert loaded.uniclip_cfg.views == 3 and loaded.uniclip_cfg.aug_fusion == "add"


@pytest.mark.parametrize("name", CASES)
def test_hf_hub_name_from_the_hub_cache_offline(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = _export(name, tmp_path, capsys)
    revision = "1" * 40
    repo = tmp_path / "hub" / "models--someone--tiny-plugin"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in out.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded, _, _ = open_clip.create_model_and_transforms("hf-hub:someone/tiny-plugin", cache_dir=str(tmp_path / "hub"))
    assert type(loaded) is type(model)
    loaded.eval()
    for want, got in zip(_encodings(model, name), _encodings(loaded, name), strict=True):
        assert torch.equal(want, got)


def test_export_refuses_a_plain_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = cli.main(["export", "--checkpoint", "x.pt", "--model", "CLIP-Tiny-32", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a plugin model" in err[0]
