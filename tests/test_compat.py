"""Each upstream fix in uniclip_plugin.compat: the upstream failure, then the fix."""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import uniclip_plugin
from uniclip_plugin import compat
from uniclip_plugin.errors import PluginError

from .conftest import png_bytes, write_shard

uniclip_plugin.register()  # import alone registers nothing


def _wds_args(pattern: str, n: int, batch: int = 1) -> argparse.Namespace:
    return argparse.Namespace(
        train_data=pattern,
        train_num_samples=n,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=0,
        batch_size=batch,
        workers=0,
        world_size=1,
    )


def _iterate_train_pipeline(pattern: str, n: int) -> list:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    _, _, preprocess = open_clip.create_model_and_transforms("CLIP-Tiny-32")
    tok = open_clip.get_tokenizer("CLIP-Tiny-32")
    info = get_wds_dataset(_wds_args(pattern, n), preprocess, is_train=True, epoch=0, tokenizer=tok)
    return list(info.dataloader)


def test_e1_e2_dependencies_import_and_missing_ones_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import open_clip_train.main, clip_benchmark.cli"  # docs/UPSTREAM.md E1 (pandas), E2 (requests)
    subprocess.run([sys.executable, "-c", code], check=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pandas" else real(name, *a))
    with pytest.raises(PluginError, match="pip install pandas"):
        compat.check_training_dependencies()


def test_e3_end_of_shard_marker(tiny_shard: Path) -> None:
    import open_clip_train.data as octd

    upstream = compat.UPSTREAM["tarfile_to_samples_nothrow"]
    if compat.wds_has_end_of_shard_marker():  # webdataset >= 0.2.87
        with pytest.raises(KeyError, match="fname"):
            list(upstream([{"url": str(tiny_shard)}]))
    else:  # 0.2.86, what open_clip_torch[training] allows: upstream reads it as is
        assert [s["__key__"] for s in upstream([{"url": str(tiny_shard)}])] == [f"s{i:03d}" for i in range(6)]
    samples = list(octd.tarfile_to_samples_nothrow([{"url": str(tiny_shard)}]))
    assert [s["__key__"] for s in samples] == [f"s{i:03d}" for i in range(6)]
    batches = _iterate_train_pipeline(str(tiny_shard), 6)  # the whole open_clip_train pipeline
    assert len(batches) == 6


def test_corrupt_image_and_empty_caption_are_skipped_and_counted(tmp_path: Path) -> None:
    samples = [{"__key__": f"s{i:03d}", "png": png_bytes((i, 0, 0)), "txt": f"caption {i}"} for i in range(8)]
    samples[2]["png"] = b"not a png at all"
    samples[5]["txt"] = "   "
    shard = write_shard(tmp_path / "shard-000000.tar", samples)
    before = dict(compat.SKIPPED_SAMPLES)
    batches = _iterate_train_pipeline(str(shard), 6)
    assert len(batches) == 6  # 8 written - 1 corrupt - 1 empty caption
    assert compat.SKIPPED_SAMPLES["corrupt"] == before["corrupt"] + 1
    assert compat.SKIPPED_SAMPLES["empty_caption"] == before["empty_caption"] + 1
    assert compat.UPSTREAM["filter_no_caption_or_no_image"]({"txt": b"   ", "png": b""})  # upstream keeps it


def test_e4_numpy24_accuracy() -> None:
    import clip_benchmark.metrics.zeroshot_classification as zc
    import numpy as np
    import open_clip_train.zero_shot as ozs

    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    target = torch.tensor([1, 0, 0])
    if tuple(int(x) for x in np.__version__.split(".")[:2]) >= (2, 4):
        with pytest.raises(TypeError):
            compat.UPSTREAM["open_clip_train.zero_shot.accuracy"](logits, target)
        with pytest.raises(TypeError):
            compat.UPSTREAM["clip_benchmark.accuracy"](logits, target)
    assert ozs.accuracy(logits, target, topk=(1, 2)) == [2.0, 3.0]
    assert zc.accuracy(logits, target, topk=(1, 2)) == pytest.approx([2 / 3, 1.0])


def test_e5_cpu_ddp_device_ids(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        module = torch.nn.Linear(2, 2)
        with pytest.raises(ValueError, match="device_ids"):
            compat.UPSTREAM["DistributedDataParallel"](module, device_ids=[torch.device("cpu")])
        ddp = torch.nn.parallel.DistributedDataParallel(module, device_ids=[torch.device("cpu")])
        assert isinstance(ddp, compat.UPSTREAM["DistributedDataParallel"])
        ddp(torch.ones(1, 2)).sum().backward()
        assert module.weight.grad is not None
    finally:
        dist.destroy_process_group()


def test_e6_torchrun_separator() -> None:
    assert compat.strip_torchrun_separator(["--", "train", "--logs", "x"]) == ["train", "--logs", "x"]
    assert compat.strip_torchrun_separator(["train"]) == ["train"]
    from uniclip_plugin.cli import main

    assert main(["--", "list"]) == 0


def test_atomic_checkpoint_is_the_archive_torch_writes(tmp_path: Path) -> None:
    import open_clip_train.main as ocm

    target, plain = tmp_path / "epoch_1.pt", tmp_path / "plain" / "epoch_1.pt"
    plain.parent.mkdir()
    old_umask = os.umask(0o027)
    try:
        ocm.torch.save({"ok": 1}, target)  # the call main.py makes for epoch_N.pt
        torch.save({"ok": 1}, plain)
    finally:
        os.umask(old_umask)
    names = zipfile.ZipFile(target).namelist()
    assert names == zipfile.ZipFile(plain).namelist() and all(n.startswith("epoch_1/") for n in names)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~0o027 == stat.S_IMODE(plain.stat().st_mode)
    assert torch.load(target) == {"ok": 1}
    assert ocm.torch.nn is torch.nn  # everything else is torch's own


def test_atomic_checkpoint_failed_write_keeps_previous_file_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip_train.main as ocm

    target = tmp_path / "epoch_1.pt"
    ocm.torch.save({"ok": 1}, target)

    def disk_full(obj: object, zip_file: torch._C.PyTorchFileWriter, *args: object, **kwargs: object) -> None:
        zip_file.write_record("data.pkl", b"\0" * 4096, 4096)  # part of the archive reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.serialization, "_save", disk_full)
    with pytest.raises(OSError) as error:  # propagates: open_clip_train's training stops
        ocm.torch.save({"ok": 2}, target)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.load(target) == {"ok": 1}
    assert os.listdir(tmp_path) == ["epoch_1.pt"]  # no temp file or folder left behind


def test_apply_all_is_idempotent() -> None:
    import open_clip_train.data as octd

    fn = octd.tarfile_to_samples_nothrow
    compat.apply_all()
    assert octd.tarfile_to_samples_nothrow is fn
    assert {"wds_eof_value", "numpy24_accuracy", "cpu_ddp_device_ids", "atomic_checkpoints"} <= compat.applied()


def test_sample_shuffle_is_seeded(tmp_path: Path) -> None:
    """Upstream's shuffle seeds from pid + time; with the fix two loader passes with one seed give one order."""
    import open_clip_train.data as octd
    import webdataset

    samples = [{"__key__": f"s{i:03d}", "png": png_bytes((i, i, i)), "txt": f"caption {i}"} for i in range(40)]
    shard = write_shard(tmp_path / "shard-000000.tar", samples)

    def order(shuffle_module: object) -> list[str]:
        stage = shuffle_module.shuffle(bufsize=30, initial=30)
        torch.manual_seed(0)
        return [s["__key__"] for s in stage(iter(octd.tarfile_to_samples_nothrow([{"url": str(shard)}])))]

    assert order(octd.wds) == order(octd.wds)
    assert sorted(order(octd.wds)) == [s["__key__"] for s in samples]
    upstream = [order(webdataset) for _ in range(3)]
    assert len({tuple(o) for o in upstream}) > 1  # unseeded: differs between passes
