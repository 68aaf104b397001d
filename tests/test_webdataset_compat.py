"""webdataset 0.2.86 (what ``open_clip_torch[training]`` allows) and 1.0.x both work: the pin admits both, and compat
feature-detects what differs (the end-of-shard marker, ``_shuffle``'s seed argument). The tox env ``wds0286`` runs the
data tests with 0.2.86 installed; the unit env runs them with 1.0.2."""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path
from typing import Any, Iterator

import pytest
import webdataset
from packaging.requirements import Requirement
from packaging.version import Version

import uniclip_plugin
from uniclip_plugin import compat

uniclip_plugin.register()  # import alone registers nothing

ROOT = Path(__file__).resolve().parents[1]


def _our_webdataset_requirement() -> Requirement:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == "webdataset")


def _open_clip_training_webdataset_requirement() -> Requirement:
    reqs = [Requirement(r) for r in importlib.metadata.requires("open_clip_torch") or []]
    return next(r for r in reqs if r.name == "webdataset" and r.marker and r.marker.evaluate({"extra": "training"}))


def test_pin_admits_what_open_clip_training_allows_and_the_installed_version() -> None:
    ours, theirs = _our_webdataset_requirement(), _open_clip_training_webdataset_requirement()
    # `pip install 'open_clip_torch[training]' uniclip-plugin` resolves only if some release satisfies both
    assert ours.specifier.contains("0.2.86") and theirs.specifier.contains("0.2.86")
    assert ours.specifier.contains("1.0.2")
    assert ours.specifier.contains(importlib.metadata.version("webdataset"))


def test_end_of_shard_marker_is_feature_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    import webdataset.tariterators as tariterators

    has_marker = Version(importlib.metadata.version("webdataset")) >= Version("0.2.87")
    assert compat.wds_has_end_of_shard_marker() == has_marker

    def expander_0286(
        data: Any, handler: Any = None, select_files: Any = None, rename_files: Any = None
    ) -> Iterator[dict]:
        yield from ()

    monkeypatch.setattr(tariterators, "tar_file_expander", expander_0286)  # 0.2.86's signature
    assert not compat.wds_has_end_of_shard_marker()


def test_seeded_shuffle_passes_rng_which_both_versions_accept() -> None:
    from webdataset.filters import _shuffle

    assert "rng" in inspect.signature(_shuffle).parameters  # 0.2.86 has no seed= argument
    stage = compat.EpochSeededShuffle(bufsize=20, initial=20)
    stage.bind(seed=0, rank=0, epoch=0)
    assert sorted(stage(iter(range(20)))) == list(range(20))


def test_train_pipeline_reads_shards_with_the_installed_version(tmp_path: Path) -> None:
    """The samples of two shards reach the batches once each, counted per worker, with either webdataset."""
    import argparse

    import torch
    from open_clip_train.data import get_wds_dataset

    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    info = build_synthetic_pretrain(tmp_path, n_samples=16, res=16, n_shards=2, seed=0)
    args = argparse.Namespace(
        train_data=info["pattern"],
        train_num_samples=16,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=0,
        batch_size=2,
        workers=0,
        world_size=1,
        rank=0,
    )
    data = get_wds_dataset(
        args,
        lambda image: torch.tensor(image.size),
        is_train=True,
        epoch=0,
        tokenizer=lambda text: [torch.tensor([len(text)])],
    )
    batches = list(data.dataloader)
    assert len(batches) == 8 and all(images.shape == (2, 2) for images, _ in batches)
    assert webdataset.__version__ == importlib.metadata.version("webdataset")
