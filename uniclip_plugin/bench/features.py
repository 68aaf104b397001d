"""Image features of a dataset split: decoded once, encoded in fp32 under ``torch.no_grad``, cached by content.

Features are cached per (checkpoint sha256, model config, dataset files, split) under the feature cache
(clip_benchmark keys its cache by name, so a changed checkpoint at the same path would silently reuse stale
features). The preprocessed images are cached too, per (set, split, subset, transform): every model of a study shares
the transform, so the tar reading and decoding is done for the first model only.
"""

from __future__ import annotations

import functools
import hashlib
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from uniclip_plugin.bench.datasets import dataset_fingerprint, is_retrieval
from uniclip_plugin.bench.errors import BenchError, one_line
from uniclip_plugin.io import atomic_torch_save

CACHE_VERSION = "1"  # bump when the cached record changes

__all__ = ["CACHE_VERSION", "extract_features"]


def _build_wds(dataset_dir: Path, split: str, preprocess: Callable) -> Any:
    try:
        from clip_benchmark.datasets.builder import build_dataset
    except ModuleNotFoundError as err:
        # clip_benchmark's builder imports `requests` (and the datasets it lists) without declaring them.
        raise BenchError(
            f"clip_benchmark's dataset builder cannot be imported: {one_line(err)} "
            f"(pip install requests; docs/UPSTREAM.md E2)"
        ) from err
    task = "zeroshot_retrieval" if is_retrieval(dataset_dir) else "zeroshot_classification"
    with warnings.catch_warnings():
        # clip_benchmark builds WebDataset(shardshuffle=None), which warns on every build; order does not matter here.
        warnings.simplefilter("ignore", UserWarning)
        return build_dataset(
            f"wds/{dataset_dir.name}", root=str(dataset_dir), transform=preprocess, split=split, task=task
        )


def _split_keys(split_dir: Path) -> list[str]:
    """Sample keys of a split in shard order, from the tar headers only (no image data is read or decoded)."""
    return list(_split_keys_cached(split_dir, dataset_fingerprint(split_dir.parent, split_dir.name)))


@functools.lru_cache(maxsize=32)
def _split_keys_cached(split_dir: Path, fingerprint: str) -> tuple[str, ...]:
    # Listing 60k Fashion-MNIST samples takes seconds; every run of a bench needs the same list.
    from webdataset.tariterators import base_plus_ext

    keys: list[str] = []
    for i in range(int((split_dir / "nshards.txt").read_text().strip())):
        with tarfile.open(split_dir / f"{i}.tar") as tar:
            for member in tar:
                key = base_plus_ext(member.name)[0] if member.isfile() else None
                if key and (not keys or keys[-1] != key):
                    keys.append(key)
    return tuple(keys)


def _wds_subset(dataset_dir: Path, split: str, preprocess: Callable, keep: set[str]) -> Any:
    """clip_benchmark's classification pipeline (``build_wds_dataset``) with a key filter *before* decoding, so the
    samples a capped probe does not use are neither decoded nor encoded."""
    import webdataset as wds

    n = int((dataset_dir / split / "nshards.txt").read_text().strip())
    exts = ["webp", "png", "jpg", "jpeg"]
    return (
        wds.WebDataset(
            [str(dataset_dir / split / f"{i}.tar") for i in range(n)], shardshuffle=False, nodesplitter=lambda src: src
        )
        .select(lambda sample: sample["__key__"] in keep)
        .decode(wds.autodecode.ImageHandler("pil", extensions=exts))
        .to_tuple(exts, "cls")
        .map_tuple(preprocess, None)
    )


def _preprocess_id(preprocess: Callable) -> str:
    """A process-independent description of an image transform (function reprs carry memory addresses)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def _subset_text(max_samples: Optional[int], seed: int) -> str:
    return f"|max{max_samples}:seed{seed}" if max_samples is not None else ""


def _images_file(
    cache_dir: Path, dataset_dir: Path, split: str, preprocess: Callable, max_samples: Optional[int], seed: int
) -> Path:
    """Cache file of a split's preprocessed images: keyed by the set's files, split, subset and transform."""
    digest = hashlib.sha256(
        f"{CACHE_VERSION}|{dataset_fingerprint(dataset_dir, split)}|{split}"
        f"{_subset_text(max_samples, seed)}|{_preprocess_id(preprocess)}".encode()
    ).hexdigest()[:24]
    return cache_dir / f"images-{dataset_dir.name}-{split}-{digest}.pt"


def _features_file(
    cache_dir: Path, cache_key: str, dataset_dir: Path, split: str, max_samples: Optional[int], seed: int
) -> Path:
    """Cache file of a split's features: keyed by the model (``cache_key``), the set's files, split and subset."""
    digest = hashlib.sha256(
        f"{CACHE_VERSION}|{cache_key}|{dataset_fingerprint(dataset_dir, split)}|{split}"
        f"{_subset_text(max_samples, seed)}".encode()
    ).hexdigest()[:24]
    return cache_dir / f"{dataset_dir.name}-{split}-{digest}.pt"


def _source(ds: Any, dataset_dir: Path, split: str, preprocess: Callable, max_samples: Optional[int], seed: int) -> Any:
    """The dataset to read: ``ds``, or its seeded subset of ``max_samples`` (classification splits only)."""
    if max_samples is not None and not is_retrieval(dataset_dir):
        keys = _split_keys(dataset_dir / split)
        if len(keys) > max_samples:
            # Same draw as linear_probe's cap (permutation of shard-order indices), so both paths agree.
            pick = np.random.default_rng(seed).permutation(len(keys))[:max_samples]
            return _wds_subset(dataset_dir, split, preprocess, {keys[i] for i in pick})
    return ds


def _preprocessed_batches(
    ds: Any,
    dataset_dir: Path,
    split: str,
    preprocess: Callable,
    batch_size: int,
    cache_dir: Optional[Path],
    max_samples: Optional[int],
    seed: int,
) -> Iterator[tuple]:
    """``(images, targets)`` batches of a split after ``preprocess``, decoded once per (set, split, subset, transform).

    Every model of a study shares the transform, so the tar reading, PNG decoding and resizing (most of a Tiny
    model's feature time: 60k Fashion-MNIST headers are read to pick the probe's 10k) is done for the first model
    only; the others read the float32 tensors back from ``cache_dir`` (exact: the same tensors the transform made).
    """
    retrieval = is_retrieval(dataset_dir)
    path = None
    if cache_dir is not None:
        path = _images_file(cache_dir, dataset_dir, split, preprocess, max_samples, seed)
        if path.is_file():
            record = torch.load(path, map_location="cpu", weights_only=True)
            for i in range(0, len(record["images"]), batch_size):
                yield record["images"][i : i + batch_size], record["targets"][i : i + batch_size]
            return
    source = _source(ds, dataset_dir, split, preprocess, max_samples, seed)
    loader = torch.utils.data.DataLoader(source.batched(batch_size), batch_size=None, num_workers=0)
    images, targets = [], []
    for batch_images, batch_targets in loader:
        images.append(batch_images)
        targets.extend([list(c) for c in batch_targets] if retrieval else np.asarray(batch_targets).tolist())
        yield batch_images, batch_targets
    if path is not None and images:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"images": torch.cat(images), "targets": targets}, path)


def _encode(
    model: torch.nn.Module, batches: Iterator[tuple], retrieval: bool, device: str, desc: str
) -> tuple[list, list, list]:
    """L2-normalised fp32 features of every batch, with the labels (classification) or captions (retrieval)."""
    from tqdm import tqdm

    feats, labels, captions = [], [], []
    with torch.no_grad():
        # disable=None: bars only on a terminal, so logs and the one-line error contract stay clean.
        for images, target in tqdm(batches, desc=desc, leave=False, unit="batch", disable=None):
            # Same order of operations as clip_benchmark's evaluate: encode, then normalise.
            x = model.encode_image(images.to(device))
            feats.append(torch.nn.functional.normalize(x.float(), dim=-1).cpu())
            if retrieval:
                captions.extend([list(c) for c in target])
            else:
                labels.append(torch.as_tensor(np.asarray(target)))
    return feats, labels, captions


def extract_features(
    model: torch.nn.Module,
    preprocess: Callable,
    dataset_dir: Path,
    split: str = "test",
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: Optional[Path] = None,
    cache_key: Optional[str] = None,
    max_samples: Optional[int] = None,
    seed: int = 0,
) -> dict[str, Any]:
    """L2-normalised fp32 image features of one split, with labels or captions.

    Args:
        model: anything with ``encode_image`` (called as clip_benchmark calls it: one positional argument).
        preprocess: image transform.
        dataset_dir: clip_benchmark ``wds/`` set folder.
        split: split folder name.
        batch_size: images per forward.
        device: where the model runs.
        cache_dir: when given with ``cache_key``, features are cached there as ``<set>-<split>-<hash>.pt``.
        cache_key: identifies the model's weights and preprocessing (the benchmark uses the checkpoint's sha256 and
            the model config); combined with ``dataset_fingerprint``, so a changed checkpoint or a rebuilt set is
            never served stale features.
        max_samples: for a classification split with more samples, encode only a seeded random subset of this
            size (the same subset ``uniclip_plugin.bench.probe.linear_probe`` would draw from the full split with
            ``max_train=max_samples``), chosen by key before any image is decoded.
        seed: seed of that subset.

    Returns:
        ``{"x": [N, D] float32, "y": [N] labels or None, "captions": list of caption lists or None,
        "classes": class names or None, "templates": prompt templates or None}``.
    """
    path = None
    if cache_dir is not None and cache_key is not None:
        path = _features_file(cache_dir, cache_key, dataset_dir, split, max_samples, seed)
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    retrieval = is_retrieval(dataset_dir)
    ds = _build_wds(dataset_dir, split, preprocess)
    batches = _preprocessed_batches(ds, dataset_dir, split, preprocess, batch_size, cache_dir, max_samples, seed)
    try:
        feats, labels, captions = _encode(model, batches, retrieval, device, f"features {dataset_dir.name}/{split}")
    except (OSError, tarfile.TarError, ValueError) as err:
        raise BenchError(f"cannot read {dataset_dir}/{split}: {one_line(err)}") from err
    if not feats:
        raise BenchError(f"{dataset_dir}/{split} has no samples")
    record = {
        "x": torch.cat(feats),
        "y": None if retrieval else torch.cat(labels),
        "captions": captions if retrieval else None,
        "classes": None if retrieval else list(ds.classes),
        "templates": None if retrieval else list(ds.templates),
    }
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(record, path)
    return record
