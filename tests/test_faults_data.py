"""A shard truncated in the middle of a member, read by open_clip_train's train loader with the plugin registered:
the samples before the cut train, the rest of that shard is skipped and counted, and the epoch completes."""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import math
import os
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

import uniclip_plugin
from uniclip_plugin import compat

uniclip_plugin.register()  # import alone registers nothing

N_SAMPLES, N_SHARDS, CUT_SHARD, CUT_SAMPLE = 48, 3, 1, 5  # cut inside the 6th sample's image of the 2nd shard


def _fingerprint(image: Image.Image) -> torch.Tensor:
    # stands in for the image transform: an id of the decoded image, so each batch names the sample it came from
    return torch.tensor(list(hashlib.sha1(image.convert("RGB").tobytes()).digest()[:8]), dtype=torch.uint8)


def _no_tokens(text: str) -> torch.Tensor:
    return torch.zeros(1, 4, dtype=torch.long)


def _ids_by_key(shards: list[str]) -> dict[bytes, str]:
    ids = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png"):
                    image = Image.open(io.BytesIO(tar.extractfile(member).read()))
                    ids[bytes(_fingerprint(image).tolist())] = member.name.split(".")[0]
    return ids


def _truncate_inside_image(shard: str, sample: int) -> tuple[list[str], list[str]]:
    """Cut ``shard`` halfway through the ``sample``-th image; return the shard's keys before and from the cut."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    keys = list(dict.fromkeys(m.name.split(".")[0] for m in members))
    png = next(m for m in members if m.name == f"{keys[sample]}.png")
    os.truncate(shard, png.offset_data + png.size // 2)
    return keys[:sample], keys[sample:]


@pytest.fixture
def truncated(tmp_path: Path) -> dict:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    info = build_synthetic_pretrain(tmp_path, n_samples=N_SAMPLES, res=16, n_shards=N_SHARDS, seed=0)
    info["ids"] = _ids_by_key(info["shards"])
    info["before_cut"], info["lost"] = _truncate_inside_image(info["shards"][CUT_SHARD], CUT_SAMPLE)
    info["written"] = sum(json.loads((tmp_path / "sizes.json").read_text()).values())
    return info


def test_truncated_shard_trains_the_samples_before_the_cut_and_counts_the_rest(truncated: dict) -> None:
    from open_clip_train.data import get_wds_dataset

    assert truncated["written"] == N_SAMPLES and len(truncated["ids"]) == N_SAMPLES  # every image distinct
    # --train-num-samples unset: open_clip_train reads sizes.json, which counts the written samples
    args = argparse.Namespace(
        train_data=truncated["pattern"],
        train_num_samples=None,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=0,
        batch_size=1,
        workers=0,
        world_size=1,
        rank=0,
    )
    before = dict(compat.SKIPPED_SAMPLES)
    info = get_wds_dataset(args, _fingerprint, is_train=True, epoch=0, tokenizer=_no_tokens)
    used = [truncated["ids"][bytes(fp.tolist())] for images, _ in info.dataloader for fp in images]

    assert len(used) == info.dataloader.num_batches == N_SAMPLES  # the epoch completes at its planned length
    readable = N_SAMPLES - len(truncated["lost"])
    assert len(truncated["lost"]) == N_SAMPLES // N_SHARDS - CUT_SAMPLE == 11 and readable == 37
    expected = {key for key in truncated["ids"].values() if key not in truncated["lost"]}
    assert set(used) == expected and len(expected) == readable  # exactly the samples before the cut, and the rest
    assert set(truncated["before_cut"]) <= set(used) and not set(truncated["lost"]) & set(used)
    # with_epoch fills the epoch by a second pass over the readable samples (11 of them twice)
    passes = math.ceil(N_SAMPLES / readable)
    assert sorted(collections.Counter(collections.Counter(used).values()).items()) == [(1, 26), (2, 11)]
    skipped = {k: compat.SKIPPED_SAMPLES[k] - before[k] for k in before}
    # each pass reads the whole shard list into the shuffle buffer first, so it meets the read error; the cut
    # sample (its json member only) is dropped as incomplete after the shuffle, in the second pass only if the
    # epoch's last samples reach it
    assert skipped["shard_read_error"] >= passes and 1 <= skipped["incomplete"] <= passes
    assert skipped["corrupt"] == skipped["empty_caption"] == 0
