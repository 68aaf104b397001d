"""Bad inputs to ``open_clip train`` fail before open_clip_train starts, as one line on stderr naming the fix (exit code
2, no traceback): a learning rate that is nan, negative or 0, and a ``--pretrained`` file of another architecture."""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
import pytest
import torch

import uniclip_plugin
from uniclip_plugin import cli
from uniclip_plugin.errors import PluginError

uniclip_plugin.register()  # import alone registers nothing
TRAIN = ["train", "--loss", "uniclip_mpnce", "--model", "UniCLIP-Tiny-32"]


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("lr", ["nan", "-0.001", "0", "inf", "fast"])
def test_bad_learning_rate(lr: str, capsys: pytest.CaptureFixture) -> None:
    line = _one_line_error([*TRAIN, f"--lr={lr}"], capsys)
    assert f"--lr {lr}" in line and "--lr 5e-4" in line


def test_bad_learning_rate_as_two_tokens(capsys: pytest.CaptureFixture) -> None:
    assert "positive finite" in _one_line_error([*TRAIN, "--lr", "nan"], capsys)


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints of the 64-px Tiny architecture (another width): a stock CLIP one and a UniCLIP one."""
    folder = tmp_path_factory.mktemp("wrong")
    files = {"clip": folder / "clip_tiny64.pt", "uniclip": folder / "uniclip_tiny64.pt"}
    torch.save(open_clip.create_model("CLIP-Tiny-64").state_dict(), files["clip"])
    torch.save({"state_dict": uniclip_plugin.create_model("UniCLIP-Tiny-64").state_dict()}, files["uniclip"])
    return files


@pytest.mark.parametrize("kind", ["clip", "uniclip"])
def test_pretrained_file_of_another_architecture(
    kind: str, wrong_files: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    line = _one_line_error([*TRAIN, "--pretrained", str(wrong_files[kind])], capsys)
    assert str(wrong_files[kind]) in line and "UniCLIP-Tiny-32" in line and "pass a checkpoint of" in line


@pytest.mark.parametrize("kind", ["clip", "uniclip"])
def test_pretrained_file_of_another_architecture_in_python(kind: str, wrong_files: dict[str, Path]) -> None:
    with pytest.raises(PluginError) as err:
        uniclip_plugin.create_model_and_transforms("UniCLIP-Tiny-32", pretrained=str(wrong_files[kind]))
    assert len(str(err.value).splitlines()) == 1


def test_pretrained_neither_file_nor_tag(capsys: pytest.CaptureFixture) -> None:
    line = _one_line_error(
        ["train", "--loss", "slip", "--model", "SLIP-Tiny-32", "--pretrained", "no_such_tag"], capsys
    )
    assert "neither a checkpoint file nor a tag of its base architecture CLIP-Tiny-32" in line


@pytest.mark.parametrize("make_out", ["under_a_file", "read_only"])
def test_data_build_into_an_impossible_or_unwritable_folder_is_one_line(
    make_out: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``harness/data.py build --out`` into a path under a file, or a read-only folder: exit 2, one line naming the
    fix, before any download."""
    from uniclip_plugin.data.cli import main as data_main

    if make_out == "under_a_file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "data"
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
        if os.access(out, os.W_OK):  # root ignores permission bits: use a path it cannot create either
            out = Path("/proc/uniclip-test/data")
    assert data_main(["build", "--out", str(out), "--only", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "writable" in err[0], err
