"""Compare trained models with clip_benchmark: zero-shot classification, image↔text retrieval, CPU linear probe.

    python harness/bench.py --models uniclip,clip,slip,declip --runs-dir runs/ --data data/ --out results/
    python harness/bench.py --models uniclip=runs/u1/checkpoints/epoch_30.pt:UniCLIP-Tiny-64,clip=... --tasks retrieval
    python harness/bench.py --models clip --dataset wds/mine=/path/to/wds_set --datasets mine

Models. A name resolves to the latest checkpoint of every run ``<name>``, ``<name>-seed<N>`` or ``<name>-s<N>`` in
``--runs-dir`` (open_clip_train's ``checkpoints/epoch_<N>.pt`` / ``epoch_latest.pt``, or the DeepSpeed harness's
``export/*.pt``; the model config comes from the run's ``params.txt`` line ``model: NAME``); the runs of one method
are aggregated as mean ± std. ``name=checkpoint[:model-config]`` names a checkpoint directly (without the config, the
``params.txt`` two folders up is read). Any open_clip-loadable model works, plugin or not.

Datasets. Every clip_benchmark ``wds/`` set under ``--data/wds/`` plus ``--dataset wds/NAME=PATH``. Task per set:
zeroshot_retrieval if ``dataset_type.txt`` says retrieval, else zeroshot_classification, plus linear_probe when a
``train`` split exists. ``--tasks`` and ``--datasets`` select subsets.

Evaluation. Image features are computed once per (checkpoint sha256, model config, dataset files, split) in fp32
with ``torch.no_grad`` and cached under ``--feature-cache`` (clip_benchmark keys its cache by name, so a changed
checkpoint at the same path would silently reuse stale features). Zero-shot classification and retrieval metrics
come from clip_benchmark's own ``evaluate`` functions (``amp=False``) fed with those features; retrieval reports
R@1/5/10 in both directions (clip_benchmark's CLI default is R@5 only). The linear probe is scikit-learn logistic
regression on the L2-normalised frozen features with C chosen on a validation split of train (harness/linear_probe.py),
because clip_benchmark's probe asserts CUDA.

Outputs under ``--out``: ``json/<run>__<dataset>__<task>.json`` in clip_benchmark's format (``clip_benchmark build
OUT/json`` reads them), ``results.csv`` (per run), ``summary.csv`` (mean/std/n per method), ``table.md`` (datasets ×
methods, Δ against the first method named), ``<task>.png`` bar charts and ``training_curves.png`` from the runs'
``out.log``. Every file is written to a temporary name and renamed.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
import sys
import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch


from uniclip_plugin.bench.report import atomic_path, training_curve, write_report, write_text_atomic
from uniclip_plugin.data.common import sha256_of
from uniclip_plugin.bench.probe import linear_probe

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
TASK_ALIASES = {"zeroshot": "zeroshot_classification", "classification": "zeroshot_classification",
                "retrieval": "zeroshot_retrieval", "probe": "linear_probe", "lp": "linear_probe"}
RECALL_K = (1, 5, 10)
CACHE_VERSION = "1"  # bump when the cached record changes

__all__ = ["BenchError", "Run", "TASKS", "resolve_models", "find_datasets", "tasks_of", "load_model",
           "extract_features", "evaluate_model", "linear_probe", "main"]


class BenchError(Exception):
    """A problem the user can fix; ``main`` prints it as one line starting with ``bench.py: ``."""


@dataclass(frozen=True)
class Run:
    """One checkpoint to evaluate.

    Attributes:
        method: the method it belongs to (runs of one method are aggregated).
        run: unique run name (the run folder, or the name given on the command line).
        checkpoint: the checkpoint file.
        model_config: the open_clip model config name to build it with.
        run_dir: the run folder (for ``out.log``), when known.
    """

    method: str
    run: str
    checkpoint: Path
    model_config: str
    run_dir: Optional[Path] = None


def _register_plugin() -> None:
    """Register the plugin's configs/classes and upstream fixes (E4: numpy 2.4 vs clip_benchmark's ``accuracy``).

    Optional on purpose: the harness evaluates any open_clip-loadable model, with or without the plugin.
    """
    try:
        import uniclip_plugin
        uniclip_plugin.register()
    except (ImportError, AttributeError):
        pass


def _one_line(err: BaseException) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty), at most ~300 characters."""
    lines = str(err).strip().splitlines()
    text = lines[0].split(" Available: ")[0] if lines else ""  # open_clip appends every built-in config name
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------------------------------------------------- models

_SEED_SUFFIX = re.compile(r"-(?:seed|s)\d+$")


def method_of(run_name: str) -> str:
    """``uniclip-seed3`` / ``uniclip-s3`` → ``uniclip``; any other name is its own method."""
    return _SEED_SUFFIX.sub("", run_name)


def _last_int(path: Path) -> int:
    nums = re.findall(r"\d+", path.stem)
    return int(nums[-1]) if nums else -1


def _checkpoint_epoch(path: Path) -> Optional[int]:
    """The ``epoch`` stored in an open_clip_train checkpoint, read through mmap (no tensor data is loaded)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]) if isinstance(state, dict) and "epoch" in state else None
    except Exception:  # noqa: BLE001 (any unreadable file simply has no known epoch)
        return None


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest checkpoint of a run: ``checkpoints/epoch_<max N>.pt``, or ``epoch_latest.pt`` when it holds a
    later epoch (``--save-most-recent`` with ``--save-frequency`` > 1), or else the DeepSpeed harness's newest
    ``export/*.pt`` (by the last number in its name, then mtime). With both layouts, the newer file wins.
    """
    candidates = []
    numbered = [p for p in run_dir.glob("checkpoints/epoch_*.pt") if re.fullmatch(r"epoch_\d+\.pt", p.name)]
    best = max(numbered, key=_last_int, default=None)
    latest = run_dir / "checkpoints" / "epoch_latest.pt"
    if latest.is_file():
        latest_epoch = _checkpoint_epoch(latest)
        if best is None or (latest_epoch is not None and latest_epoch > _last_int(best)):
            best = latest
    if best is not None:
        candidates.append(best)
    exports = [p for p in run_dir.glob("export/*.pt") if p.is_file()]
    if exports:
        candidates.append(max(exports, key=lambda p: (_last_int(p), p.stat().st_mtime)))
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def model_config_of(run_dir: Path) -> str:
    """The ``model: NAME`` line of ``run_dir/params.txt`` (written by open_clip_train and the DeepSpeed harness)."""
    params = run_dir / "params.txt"
    if params.is_file():
        for line in params.read_text(errors="replace").splitlines():
            if line.startswith("model:"):
                return line.split(":", 1)[1].strip()
    raise BenchError(f"{params} has no 'model: NAME' line; give the model as NAME=CHECKPOINT:CONFIG")


def resolve_models(spec: str, runs_dir: Path) -> list[Run]:
    """Parse ``--models``: comma-separated run/method names or ``name=checkpoint[:config]`` items.

    Args:
        spec: the ``--models`` value.
        runs_dir: folder holding the runs (``runs/<name>/...``).

    Returns:
        The runs in command-line order (runs of one method sorted by name).

    Raises:
        BenchError: unknown name, missing checkpoint or config, or a duplicate run.
    """
    runs: list[Run] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if "=" in item:
            name, target = item.split("=", 1)
            # A Windows drive letter aside, "path:CONFIG" splits at the last colon.
            ckpt, sep, config = target.rpartition(":") if ":" in target else (target, "", "")
            path = Path(ckpt)
            if not path.is_file():
                raise BenchError(f"checkpoint {ckpt} for model {name!r} does not exist")
            run_dir = path.parent.parent if path.parent.name in ("checkpoints", "export") else None
            if not config:
                if run_dir is None:
                    raise BenchError(f"no model config for {name!r}: give it as {name}={ckpt}:CONFIG")
                config = model_config_of(run_dir)
            runs.append(Run(method_of(name), name, path, config, run_dir))
            continue
        pattern = re.compile(rf"^{re.escape(item)}(-seed\d+|-s\d+)?$")
        dirs = sorted((d for d in runs_dir.iterdir() if d.is_dir() and pattern.match(d.name)),
                      key=lambda d: (_last_int(d) if d.name != item else -1, d.name)) if runs_dir.is_dir() else []
        if not dirs:
            raise BenchError(f"unknown model {item!r}: no run {item}, {item}-seed<N> or {item}-s<N> in {runs_dir}; "
                             f"or pass {item}=CHECKPOINT[:MODEL_CONFIG]")
        for d in dirs:
            ckpt = latest_checkpoint(d)
            if ckpt is None:
                if (d / "checkpoints" / "LATEST").is_file():  # DeepSpeed harness run: sharded, not yet exported
                    raise BenchError(f"run {d} has only DeepSpeed checkpoints; export one first with "
                                     f"`python harness/train.py --export {d}`")
                raise BenchError(f"run {d} has no checkpoint (checkpoints/epoch_<N>.pt or export/*.pt)")
            runs.append(Run(item, d.name, ckpt, model_config_of(d), d))
    seen: set[str] = set()
    for r in runs:
        if r.run in seen:
            raise BenchError(f"run {r.run!r} is named twice in --models")
        seen.add(r.run)
    return runs


def load_model(run: Run, device: str = "cpu") -> tuple[torch.nn.Module, Callable, Callable]:
    """Build ``run.model_config`` with ``pretrained=run.checkpoint`` in fp32 eval mode.

    Returns:
        ``(model, preprocess, tokenizer)`` as open_clip makes them (validation transform).

    Raises:
        BenchError: the config is unknown or the checkpoint does not load into it.
    """
    _register_plugin()
    import open_clip
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            run.model_config, pretrained=str(run.checkpoint), device=device, precision="fp32")
        tokenizer = open_clip.get_tokenizer(run.model_config)
    except Exception as err:  # noqa: BLE001 (any load failure is the user's checkpoint/config; say which)
        raise BenchError(f"cannot load {run.checkpoint} as {run.model_config} (run {run.run}): "
                         f"{_one_line(err)}") from err
    model.eval()
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------------------------------------- datasets

def _is_retrieval(dataset_dir: Path) -> bool:
    kind = dataset_dir / "dataset_type.txt"
    return kind.is_file() and kind.read_text().strip().lower() == "retrieval"


def _is_multilabel(dataset_dir: Path) -> bool:
    kind = dataset_dir / "dataset_type.txt"
    return kind.is_file() and kind.read_text().strip().lower() == "multilabel"


def _check_dataset(name: str, path: Path) -> None:
    if not path.is_dir():
        raise BenchError(f"dataset {name}: folder {path} does not exist")
    splits = [s for s in path.iterdir() if s.is_dir() and not s.name.startswith(".")]
    if not (path / "test").is_dir():
        raise BenchError(f"dataset folder {path} is not a clip_benchmark wds set: it has no test/ split "
                         f"(expected test/nshards.txt and test/0.tar ...)")
    for split in splits:
        nshards = split / "nshards.txt"
        if not nshards.is_file():
            raise BenchError(f"dataset folder {path} is not a clip_benchmark wds set: {split.name}/nshards.txt is "
                             f"missing (build it with `python harness/data.py build`)")
        try:
            n = int(nshards.read_text().strip())
        except ValueError:
            raise BenchError(f"{nshards} does not hold a shard count") from None
        missing = [f"{i}.tar" for i in range(n) if not (split / f"{i}.tar").is_file()]
        if missing:
            raise BenchError(f"dataset {name}: {split.name}/nshards.txt says {n} shards but {missing[0]} is missing")
    if not _is_retrieval(path):
        for f in ("classnames.txt", "zeroshot_classification_templates.txt"):
            if not (path / f).is_file():
                raise BenchError(f"classification set {path} lacks {f} (zero-shot needs class names and templates)")


def find_datasets(data_dir: Optional[Path], extra: Sequence[str] = ()) -> dict[str, Path]:
    """Every ``wds/`` set under ``data_dir/wds`` plus ``--dataset`` items, validated.

    Args:
        data_dir: the ``--data`` folder (its ``wds/`` subfolder is scanned), or None.
        extra: ``wds/NAME=PATH`` (or ``NAME=PATH``) items; ``wds/NAME`` alone means ``data_dir/wds/NAME``.

    Returns:
        Dataset name → folder, sorted by name.

    Raises:
        BenchError: a folder that is not a clip_benchmark wds set (no ``nshards.txt``, missing shards, ...).
    """
    found: dict[str, Path] = {}
    if data_dir is not None and (data_dir / "wds").is_dir():
        # Hidden folders are the data builder's temporaries (written, then renamed into place).
        found = {d.name: d for d in sorted((data_dir / "wds").iterdir()) if d.is_dir() and not d.name.startswith(".")}
    for item in extra:
        name, sep, path = item.partition("=")
        name = name.removeprefix("wds/")
        found[name] = Path(path) if sep else (data_dir or Path(".")) / "wds" / name
    for name, path in found.items():
        _check_dataset(name, path)
    return dict(sorted(found.items()))


def tasks_of(dataset_dir: Path) -> list[str]:
    """Retrieval sets → zeroshot_retrieval; others → zeroshot_classification (+ linear_probe with a train split)."""
    if _is_retrieval(dataset_dir):
        return ["zeroshot_retrieval"]
    probe = (dataset_dir / "train").is_dir() and not _is_multilabel(dataset_dir)
    return ["zeroshot_classification"] + (["linear_probe"] if probe else [])


def dataset_fingerprint(dataset_dir: Path, split: str) -> str:
    """Hash of the names, sizes and mtimes of a split's files and the set's metadata files.

    The data builder writes every file to a temporary name and renames it, so a rebuilt set gets new mtimes; this
    costs a few ``stat`` calls instead of hashing hundreds of MB of shards.
    """
    h = hashlib.sha256()
    files = sorted([p for p in dataset_dir.glob("*.txt")] + [p for p in (dataset_dir / split).glob("*") if p.is_file()])
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(dataset_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


# --------------------------------------------------------------------------------------------------------- features

def _build_wds(dataset_dir: Path, split: str, preprocess: Callable) -> Any:
    try:
        from clip_benchmark.datasets.builder import build_dataset
    except ModuleNotFoundError as err:
        # E2: clip_benchmark's builder imports `requests` (and the datasets it lists) without declaring them.
        raise BenchError(f"clip_benchmark's dataset builder cannot be imported: {_one_line(err)} "
                         f"(pip install requests; ECOSYSTEM.md E2)") from err
    task = "zeroshot_retrieval" if _is_retrieval(dataset_dir) else "zeroshot_classification"
    with warnings.catch_warnings():
        # clip_benchmark builds WebDataset(shardshuffle=None), which warns on every build; order does not matter here.
        warnings.simplefilter("ignore", UserWarning)
        return build_dataset(f"wds/{dataset_dir.name}", root=str(dataset_dir), transform=preprocess, split=split,
                             task=task)


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
    return (wds.WebDataset([str(dataset_dir / split / f"{i}.tar") for i in range(n)], shardshuffle=False,
                           nodesplitter=lambda src: src)
            .select(lambda sample: sample["__key__"] in keep)
            .decode(wds.autodecode.ImageHandler("pil", extensions=exts))
            .to_tuple(exts, "cls")
            .map_tuple(preprocess, None))


def _preprocess_id(preprocess: Callable) -> str:
    """A process-independent description of an image transform (function reprs carry memory addresses)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def _preprocessed_batches(ds: Any, dataset_dir: Path, split: str, preprocess: Callable, batch_size: int,
                          cache_dir: Optional[Path], max_samples: Optional[int], seed: int) -> Iterator[tuple]:
    """``(images, targets)`` batches of a split after ``preprocess``, decoded once per (set, split, subset, transform).

    Every model of a study shares the transform, so the tar reading, PNG decoding and resizing (most of a Tiny
    model's feature time: 60k Fashion-MNIST headers are read to pick the probe's 10k) is done for the first model
    only; the others read the float32 tensors back from ``cache_dir`` (exact: the same tensors the transform made).
    """
    retrieval = _is_retrieval(dataset_dir)
    path = None
    if cache_dir is not None:
        subset = f"|max{max_samples}:seed{seed}" if max_samples is not None else ""
        digest = hashlib.sha256(f"{CACHE_VERSION}|{dataset_fingerprint(dataset_dir, split)}|{split}{subset}|"
                                f"{_preprocess_id(preprocess)}".encode()).hexdigest()[:24]
        path = cache_dir / f"images-{dataset_dir.name}-{split}-{digest}.pt"
        if path.is_file():
            record = torch.load(path, map_location="cpu", weights_only=True)
            for i in range(0, len(record["images"]), batch_size):
                yield record["images"][i:i + batch_size], record["targets"][i:i + batch_size]
            return
    source = ds
    if max_samples is not None and not retrieval:
        keys = _split_keys(dataset_dir / split)
        if len(keys) > max_samples:
            # Same draw as linear_probe's cap (permutation of shard-order indices), so both paths agree.
            pick = np.random.default_rng(seed).permutation(len(keys))[:max_samples]
            source = _wds_subset(dataset_dir, split, preprocess, {keys[i] for i in pick})
    loader = torch.utils.data.DataLoader(source.batched(batch_size), batch_size=None, num_workers=0)
    images, targets = [], []
    for batch_images, batch_targets in loader:
        images.append(batch_images)
        targets.extend([list(c) for c in batch_targets] if retrieval else np.asarray(batch_targets).tolist())
        yield batch_images, batch_targets
    if path is not None and images:
        with atomic_path(path) as tmp:
            torch.save({"images": torch.cat(images), "targets": targets}, tmp)


def extract_features(model: torch.nn.Module, preprocess: Callable, dataset_dir: Path, split: str = "test",
                     batch_size: int = 64, device: str = "cpu", cache_dir: Optional[Path] = None,
                     cache_key: Optional[str] = None, max_samples: Optional[int] = None,
                     seed: int = 0) -> dict[str, Any]:
    """L2-normalised fp32 image features of one split, with labels or captions.

    Args:
        model: anything with ``encode_image`` (called as clip_benchmark calls it: one positional argument).
        preprocess: image transform.
        dataset_dir: clip_benchmark ``wds/`` set folder.
        split: split folder name.
        batch_size: images per forward.
        device: where the model runs.
        cache_dir: when given with ``cache_key``, features are cached there as ``<set>-<split>-<hash>.pt``.
        cache_key: identifies the model's weights and preprocessing (the harness uses the checkpoint's sha256 and
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
    from tqdm import tqdm
    path = None
    if cache_dir is not None and cache_key is not None:
        subset = f"|max{max_samples}:seed{seed}" if max_samples is not None else ""
        digest = hashlib.sha256(f"{CACHE_VERSION}|{cache_key}|{dataset_fingerprint(dataset_dir, split)}|{split}"
                                f"{subset}".encode()).hexdigest()[:24]
        path = cache_dir / f"{dataset_dir.name}-{split}-{digest}.pt"
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    retrieval = _is_retrieval(dataset_dir)
    ds = _build_wds(dataset_dir, split, preprocess)
    feats, labels, captions = [], [], []
    try:
        with torch.no_grad():
            # disable=None: bars only on a terminal, so logs and the one-line error contract stay clean.
            for images, target in tqdm(_preprocessed_batches(ds, dataset_dir, split, preprocess, batch_size,
                                                             cache_dir, max_samples, seed),
                                       desc=f"features {dataset_dir.name}/{split}", leave=False, unit="batch",
                                       disable=None):
                # Same order of operations as clip_benchmark's evaluate: encode, then normalise.
                x = model.encode_image(images.to(device))
                feats.append(torch.nn.functional.normalize(x.float(), dim=-1).cpu())
                if retrieval:
                    captions.extend([list(c) for c in target])
                else:
                    labels.append(torch.as_tensor(np.asarray(target)))
    except (OSError, tarfile.TarError, ValueError) as err:
        raise BenchError(f"cannot read {dataset_dir}/{split}: {_one_line(err)}") from err
    if not feats:
        raise BenchError(f"{dataset_dir}/{split} has no samples")
    record = {"x": torch.cat(feats), "y": None if retrieval else torch.cat(labels),
              "captions": captions if retrieval else None,
              "classes": None if retrieval else list(ds.classes),
              "templates": None if retrieval else list(ds.templates)}
    if path is not None:
        with atomic_path(path) as tmp:
            torch.save(record, tmp)
    return record


class _PrecomputedImages(torch.nn.Module):
    """Feeds cached image features to clip_benchmark's ``evaluate``: ``encode_image`` is the identity on the
    features (clip_benchmark normalises them again, a no-op), ``encode_text`` is the real text tower."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def encode_image(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode_text(tokens)


class _FeatureSet(torch.utils.data.Dataset):
    """(feature, label) or (feature, captions) pairs with the ``classes`` attribute clip_benchmark reads."""

    def __init__(self, record: dict[str, Any]):
        self.x, self.y, self.captions, self.classes = record["x"], record["y"], record["captions"], record["classes"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        return self.x[i], (self.captions[i] if self.captions is not None else self.y[i])


def evaluate_model(model: torch.nn.Module, preprocess: Callable, tokenizer: Callable, dataset_dir: Path | str,
                   task: str, *, batch_size: int = 64, device: str = "cpu", cache_dir: Optional[Path] = None,
                   cache_key: Optional[str] = None, recall_k: Sequence[int] = RECALL_K, seed: int = 0,
                   probe_max_train: int = 10000) -> dict[str, float]:
    """One (model, dataset, task) evaluation → clip_benchmark-style metrics.

    Args:
        model: CLIP-like module with ``encode_image`` and ``encode_text`` (in eval mode).
        preprocess: image transform.
        tokenizer: ``list[str] -> LongTensor``.
        dataset_dir: clip_benchmark ``wds/`` set folder.
        task: ``zeroshot_classification``, ``zeroshot_retrieval`` or ``linear_probe``.
        batch_size: images per forward.
        device: where the model runs (the harness uses CPU; evaluation is fp32 there).
        cache_dir: feature cache folder (see ``extract_features``); None disables caching.
        cache_key: identity of the model's weights (see ``extract_features``).
        recall_k: retrieval k values (those above the number of images are dropped).
        seed: linear-probe seed.
        probe_max_train: cap on linear-probe training samples.

    Returns:
        zeroshot_classification: ``acc1``, ``acc5`` (nan below 5 classes), ``mean_per_class_recall`` (or
        ``mean_average_precision`` on multi-label sets); zeroshot_retrieval: ``image_retrieval_recall@k`` (text →
        image) and ``text_retrieval_recall@k`` (image → text); linear_probe: see ``harness.linear_probe``.
    """
    _register_plugin()
    dataset_dir = Path(dataset_dir)
    kw = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, cache_key=cache_key)
    if task == "zeroshot_retrieval":
        from clip_benchmark.metrics import zeroshot_retrieval
        rec = extract_features(model, preprocess, dataset_dir, "test", **kw)
        ks = [k for k in recall_k if k <= len(rec["x"])]  # clip_benchmark's topk needs k ≤ #images
        loader = torch.utils.data.DataLoader(_FeatureSet(rec), batch_size=batch_size,
                                             collate_fn=lambda b: (torch.stack([x for x, _ in b]), [c for _, c in b]))
        return zeroshot_retrieval.evaluate(_PrecomputedImages(model), loader, tokenizer, device=device, amp=False,
                                           recall_k_list=ks)
    if task == "zeroshot_classification":
        from clip_benchmark.metrics import zeroshot_classification
        rec = extract_features(model, preprocess, dataset_dir, "test", **kw)
        loader = torch.utils.data.DataLoader(_FeatureSet(rec), batch_size=batch_size)
        return zeroshot_classification.evaluate(_PrecomputedImages(model), loader, tokenizer, rec["classes"],
                                                rec["templates"], device=device, amp=False)
    if task == "linear_probe":
        if not (dataset_dir / "train").is_dir():
            raise BenchError(f"linear probe on {dataset_dir.name} needs a train split")
        train = extract_features(model, preprocess, dataset_dir, "train", max_samples=probe_max_train, seed=seed,
                                 **kw)
        test = extract_features(model, preprocess, dataset_dir, "test", **kw)
        try:
            return linear_probe(train["x"].numpy(), train["y"].numpy(), test["x"].numpy(), test["y"].numpy(),
                                seed=seed, max_train=probe_max_train)
        except ValueError as err:
            raise BenchError(f"linear probe on {dataset_dir.name}: {_one_line(err)}") from err
    raise BenchError(f"unknown task {task!r}; choices: {', '.join(TASKS)}")


# -------------------------------------------------------------------------------------------------------------- CLI

def _parse_tasks(text: str) -> set[str]:
    wanted = {TASK_ALIASES.get(t.strip(), t.strip()) for t in text.split(",") if t.strip()}
    if not wanted or wanted - set(TASKS):
        raise BenchError(f"unknown task(s) {sorted(wanted - set(TASKS))}; choices: {', '.join(TASKS)} "
                         f"(or {', '.join(TASK_ALIASES)})")
    return wanted


def build_parser() -> argparse.ArgumentParser:
    """The ``bench.py`` argument parser."""
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="NAME[,NAME...] (runs in --runs-dir) and/or NAME=CKPT[:CONFIG]")
    p.add_argument("--runs-dir", default="runs", help="folder of training runs (default: runs)")
    p.add_argument("--data", default="data", help="folder whose wds/ subfolder holds the evaluation sets")
    p.add_argument("--dataset", action="append", default=[], metavar="wds/NAME=PATH",
                   help="extra clip_benchmark wds set (repeatable)")
    p.add_argument("--datasets", default=None, help="comma-separated subset of dataset names to evaluate")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of " + ", ".join(TASKS))
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--feature-cache", default=None, help="feature cache folder (default: OUT/.features)")
    p.add_argument("--no-cache", action="store_true", help="recompute every feature")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu", help="torch device (default: cpu; evaluation is fp32)")
    p.add_argument("--seed", type=int, default=0, help="linear-probe split/subsample seed")
    p.add_argument("--probe-max-train", type=int, default=10000, help="cap on linear-probe training samples")
    return p


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    wanted = _parse_tasks(args.tasks)
    runs_dir, out = Path(args.runs_dir), Path(args.out)
    runs = resolve_models(args.models, runs_dir)
    datasets = find_datasets(Path(args.data) if args.data else None, args.dataset)
    if args.datasets:
        keep = {d.strip().removeprefix("wds/") for d in args.datasets.split(",") if d.strip()}
        if keep - set(datasets):
            raise BenchError(f"unknown dataset(s) {sorted(keep - set(datasets))}; found: {', '.join(datasets) or '-'}")
        datasets = {k: v for k, v in datasets.items() if k in keep}
    if not datasets:
        raise BenchError(f"no datasets under {args.data}/wds and none given with --dataset; "
                         f"build them with `python harness/data.py build`")
    plan = {name: [t for t in tasks_of(path) if t in wanted] for name, path in datasets.items()}
    if not any(plan.values()):
        raise BenchError(f"no dataset offers the task(s) {', '.join(sorted(wanted))}")
    cache = None if args.no_cache else Path(args.feature_cache) if args.feature_cache else out / ".features"
    rows: list[dict] = []
    jobs = [(run, name, task) for run in runs for name in datasets for task in plan[name]]
    bar = tqdm(total=len(jobs), desc="bench", unit="eval", leave=False, disable=None)
    try:
        _evaluate_all(args, runs, datasets, plan, cache, rows, out, bar)
    finally:
        bar.close()  # leave=False clears the bar, so an error message starts on a clean line
    methods = list(dict.fromkeys(r.method for r in runs))
    curves = {r.run: training_curve(r.run_dir / "out.log") for r in runs if r.run_dir is not None}
    write_report(rows, methods, out, curves)
    print((out / "table.md").read_text())
    return 0


def _evaluate_all(args: argparse.Namespace, runs: list[Run], datasets: dict[str, Path], plan: dict[str, list[str]],
                  cache: Optional[Path], rows: list[dict], out: Path, bar: Any) -> None:
    for run in runs:
        # The cache key is the content hash; a checkpoint rewritten between hashing and loading (a training run
        # still saving epoch_latest.pt) would pair old features' key with new weights, so refuse that.
        before = run.checkpoint.stat()
        digest = sha256_of(run.checkpoint)
        model, preprocess, tokenizer = load_model(run, args.device)
        after = run.checkpoint.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            raise BenchError(f"checkpoint {run.checkpoint} changed while it was being read; rerun once it is written")
        for name, path in datasets.items():
            for task in plan[name]:
                bar.set_postfix_str(f"{run.run} {name} {task}")
                metrics = evaluate_model(model, preprocess, tokenizer, path, task, batch_size=args.batch_size,
                                         device=args.device, cache_dir=cache, cache_key=f"{digest}|{run.model_config}",
                                         seed=args.seed, probe_max_train=args.probe_max_train)
                metrics = {k: float(v) for k, v in metrics.items()}
                # clip_benchmark's result format; the extra keys become extra columns in `clip_benchmark build`.
                record = {"dataset": name, "model": run.model_config, "pretrained": str(run.checkpoint), "task": task,
                          "metrics": metrics, "language": "en", "method": run.method, "run": run.run,
                          "checkpoint_sha256": digest}
                write_text_atomic(out / "json" / f"{run.run}__{name}__{task}.json", json.dumps(record, indent=2))
                rows += [{"method": run.method, "run": run.run, "dataset": name, "task": task, "metric": k,
                          "value": v, "model": run.model_config, "checkpoint": str(run.checkpoint)}
                         for k, v in metrics.items()]
                bar.update()
        del model


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark (see the module docstring).

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 on success, 2 on a user error (printed to stderr as one line starting with ``bench.py: ``).
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except BenchError as err:
        print(f"bench.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
