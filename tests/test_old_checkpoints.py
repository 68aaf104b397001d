"""Checkpoints written before the restructure still load: the package as it was at ``BEFORE`` (taken from git
history) writes checkpoints of every plugin model family, ablated ones included, with its own override mechanism;
the current code loads them by their base config names and encodes fixed inputs exactly as the old code did."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin

uniclip_plugin.register()  # import alone registers nothing
ROOT = Path(__file__).resolve().parents[1]
BEFORE = "df5c924"  # main before the restructure
CASES = {  # name -> (model config, overrides as the old CLI set them)
    "uniclip": ("UniCLIP-Tiny-32", {}),
    "uniclip-ablated": ("UniCLIP-Tiny-32", {"uniclip_cfg": {"aug_embed": False, "domain_similarity": False}}),
    "uniclip-add": ("UniCLIP-Tiny-32", {"uniclip_cfg": {"aug_fusion": "add"}}),
    "slip": ("SLIP-Tiny-32", {}),
    "declip-no-simsiam": ("DeCLIP-Tiny-32", {"declip_cfg": {"simsiam": False}}),
}

_WRITER = """
import json, sys, torch, open_clip
import uniclip_plugin  # the old package registered at import
from uniclip_plugin import factory
out = sys.argv[1]
cases = json.loads(sys.argv[2])
images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
for key, (name, overrides) in cases.items():
    factory.set_model_overrides(overrides)
    torch.manual_seed(1)
    model = open_clip.create_model(name)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # trained-like: the aug embedding's fusion no longer the identity
    model.eval()
    tokens = open_clip.get_tokenizer(name)(["a red circle", "a blue square", "a green cross"])
    with torch.no_grad():
        ref = {"image": model.encode_image(images), "text": model.encode_text(tokens)}
    torch.save({"epoch": 1, "name": key, "state_dict": {"module." + k: v for k, v in model.state_dict().items()}},
               f"{out}/{key}.pt")
    torch.save({"images": images, "tokens": tokens, **ref}, f"{out}/{key}.ref.pt")
factory.set_model_overrides({})
"""


@pytest.fixture(scope="module")
def old_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("old")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "uniclip_plugin"], capture_output=True)
    assert archive.returncode == 0, f"git history must hold {BEFORE} (a full clone): {archive.stderr.decode()[-500:]}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp / "src", filter="data")
    import json

    proc = subprocess.run(
        [sys.executable, "-c", _WRITER, str(tmp), json.dumps(CASES)],
        cwd=tmp / "src",
        env={"PYTHONPATH": str(tmp / "src"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


@pytest.mark.parametrize("key", sorted(CASES))
def test_a_checkpoint_of_the_code_before_the_restructure_loads_and_encodes_the_same(
    old_checkpoints: Path, key: str
) -> None:
    name = CASES[key][0]
    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(old_checkpoints / f"{key}.pt"))
    model.eval()
    ref = torch.load(old_checkpoints / f"{key}.ref.pt", weights_only=True)
    with torch.no_grad():
        assert torch.equal(model.encode_image(ref["images"]), ref["image"])
        assert torch.equal(model.encode_text(ref["tokens"]), ref["text"])
