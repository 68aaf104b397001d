"""End to end: `open_clip train --loss uniclip_mpnce` on generated webdataset shards (tiny config, CPU, fp32)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin
from uniclip_plugin.cli import main
from uniclip_plugin.data.common import read_shards
from uniclip_plugin.model.uniclip import UniCLIP

uniclip_plugin.register()  # import alone registers nothing

NAME = "UniCLIP-Tiny-32"
SAMPLES_PER_EPOCH = 2048
BATCH = 32


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")


def _train(
    logs: Path, name: str, data: str, *extra: str, launcher: list[str] | None = None, resampled: bool = True
) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable, "-m", "uniclip_plugin.cli"]) + [
        "train",
        "--loss",
        "uniclip_mpnce",
        "--model",
        NAME,
        "--train-data",
        data,
        "--dataset-type",
        "webdataset",
        *(["--dataset-resampled"] if resampled else []),
        "--train-num-samples",
        str(SAMPLES_PER_EPOCH),
        "--batch-size",
        str(BATCH),
        "--lr",
        "2e-3",
        "--wd",
        "0.1",
        "--warmup",
        "10",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--workers",
        "1",
        "--logs",
        str(logs),
        "--name",
        name,
        "--log-every-n-steps",
        "8",
        "--zeroshot-frequency",
        "0",
        "--save-frequency",
        "1",
        "--seed",
        "0",
        *extra,
    ]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900)


def _losses(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r" Loss: ([0-9.]+)", log.read_text())]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    return build_synthetic_pretrain(tmp_path_factory.mktemp("shards"), n_samples=512, res=32, n_shards=4, seed=0)


@pytest.fixture(scope="module")
def trained(shards: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    proc = _train(logs, "uni", shards["pattern"], "--epochs", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return logs / "uni"


@pytest.mark.slow
def test_training_lowers_the_loss(trained: Path) -> None:
    losses = _losses(trained / "out.log")
    assert len(losses) >= 20
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, (first, last)


@pytest.mark.slow
def test_trained_model_beats_chance_retrieval_on_its_training_pairs(trained: Path, shards: dict) -> None:
    from PIL import Image

    ckpt = trained / "checkpoints" / "epoch_4.pt"
    model, _, preprocess = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))  # stock open_clip
    assert isinstance(model, UniCLIP)
    model.eval()
    tokenizer = open_clip.get_tokenizer(NAME)
    import io

    images, captions = [], []
    for sample in read_shards(shards["shards"]):
        images.append(preprocess(Image.open(io.BytesIO(sample["png"])).convert("RGB")))
        captions.append(sample["txt"].decode())
    with torch.no_grad():
        img = model.encode_image(torch.stack(images), normalize=True)
        txt = model.encode_text(tokenizer(captions), normalize=True)
    best = (img @ txt.T).argmax(dim=1)
    recall_at_1 = sum(captions[j] == captions[i] for i, j in enumerate(best.tolist())) / len(captions)
    chance = sum(captions.count(c) for c in captions) / len(captions) ** 2
    assert recall_at_1 > 3 * chance, (recall_at_1, chance)


@pytest.mark.slow
def test_checkpoint_encodes_identically_to_the_trained_weights(trained: Path) -> None:
    ckpt = trained / "checkpoints" / "epoch_4.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    live = open_clip.create_model(NAME)
    live.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    loaded, _, _ = open_clip.create_model_and_transforms(NAME, pretrained=str(ckpt))
    live.eval()
    loaded.eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), live.encode_image(images))


@pytest.mark.slow
def test_resume_latest_continues(trained: Path, shards: dict) -> None:
    proc = _train(trained.parent, "uni", shards["pattern"], "--epochs", "5", "--resume", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (trained / "checkpoints" / "epoch_5.pt").is_file()
    assert (
        "resuming checkpoint" in (trained / "out.log").read_text().lower() + proc.stdout.lower() + proc.stderr.lower()
    )
    # CPU training sets glibc to keep freed memory (uniclip_plugin/cpu_malloc.py) unless the environment chose one
    from uniclip_plugin.cpu_malloc import allocator_env

    expected = "allocator left as the environment" if allocator_env() else "keeps freed"
    assert "open_clip train: " in proc.stderr and expected in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_same_seed_gives_the_same_loss_curve(shards: dict, tmp_path: Path) -> None:
    """open_clip_train's sample shuffle is unseeded upstream (open_clip #734); compat seeds it from --seed."""
    curves = []
    for name in ("a", "b"):
        proc = _train(tmp_path, name, shards["pattern"], "--epochs", "1", "--train-num-samples", "512")
        assert proc.returncode == 0, proc.stderr[-3000:]
        curves.append(_losses(tmp_path / name / "out.log"))
    assert len(curves[0]) >= 3 and curves[0] == curves[1]


@pytest.mark.slow
def test_accum_freq_2_runs(shards: dict, tmp_path: Path) -> None:
    proc = _train(
        tmp_path, "accum", shards["pattern"], "--epochs", "1", "--accum-freq", "2", "--train-num-samples", "256"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "accum" / "checkpoints" / "epoch_1.pt").is_file()


@pytest.mark.slow
def test_corrupt_image_and_empty_caption_are_skipped_and_counted_in_training(tmp_path: Path) -> None:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    bad = build_synthetic_pretrain(
        tmp_path / "bad", n_samples=64, res=32, n_shards=1, corrupt_images=2, empty_captions=1
    )
    # Not resampled: one epoch streams every sample of the shard exactly once, so the counts are exact.
    proc = _train(
        tmp_path,
        "bad",
        bad["pattern"],
        "--epochs",
        "1",
        "--train-num-samples",
        "64",
        "--batch-size",
        "8",
        resampled=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr + (tmp_path / "bad" / "out.log").read_text()
    assert "Skipping the sample" in text and "'corrupt': 2" in text  # logged with a running count
    assert "'empty_caption': 1" in text and "with an empty caption" in text


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["amp_bf16", "pure_bf16"])
def test_bf16_precisions_train(shards: dict, tmp_path: Path, precision: str) -> None:
    proc = _train(
        tmp_path, precision, shards["pattern"], "--epochs", "1", "--train-num-samples", "128", "--precision", precision
    )  # the last --precision wins in argparse
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(tmp_path / precision / "out.log")
    assert losses and all(math.isfinite(v) for v in losses)


@pytest.mark.multiproc
def test_torchrun_two_cpu_processes(shards: dict, tmp_path: Path) -> None:
    open_clip_script = shutil.which("open_clip", path=str(Path(sys.executable).parent))
    assert open_clip_script, "the open_clip console script is not installed (pip install -e .)"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", open_clip_script, "--"]
    proc = _train(
        tmp_path,
        "ddp",
        shards["pattern"],
        "--epochs",
        "1",
        "--train-num-samples",
        "256",
        "--local-loss",
        "--gather-with-grad",
        launcher=launcher,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoints" / "epoch_1.pt").is_file()


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_unknown_loss_lists_choices(capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(capsys, ["train", "--loss", "nope", "--model", NAME])
    assert "choices" in err and "uniclip_mpnce" in err and "clip" in err


def test_uniclip_loss_with_plain_clip_model(capsys: pytest.CaptureFixture) -> None:
    err = _one_line_error(capsys, ["train", "--loss", "uniclip_mpnce", "--model", "CLIP-Tiny-32"])
    assert "uniclip_cfg" in err and NAME in err


def test_missing_data_path(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = _one_line_error(
        capsys,
        ["train", "--loss", "uniclip_mpnce", "--model", NAME, "--train-data", str(tmp_path / "nope-{000..003}.tar")],
    )
    assert "no such file" in err and "nope-000.tar" in err


def test_unknown_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert "choices: train" in _one_line_error(capsys, ["trian"])


def test_cpu_is_detected_as_open_clip_train_chooses_it() -> None:
    from uniclip_plugin.cli import _trains_on_cpu

    assert _trains_on_cpu("cpu") and _trains_on_cpu("nosuchaccelerator")
    assert _trains_on_cpu("cuda") == (not torch.cuda.is_available())
    assert _trains_on_cpu("cuda:1") == (not torch.cuda.is_available())


def test_help_lists_subcommands(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
