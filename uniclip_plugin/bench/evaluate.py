"""Evaluation: one (model, dataset, task) scored with clip_benchmark's metrics, and the whole benchmark as a function.

Zero-shot classification and retrieval metrics come from clip_benchmark's own ``evaluate`` functions
(``amp=False``) fed with cached features (``uniclip_plugin.bench.features``); retrieval reports R@1/5/10 in both
directions (clip_benchmark's CLI default is R@5 only). The linear probe is ``uniclip_plugin.bench.probe``, because
clip_benchmark's probe asserts CUDA. :func:`run_bench` is what the CLI and the study call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch

import uniclip_plugin
from uniclip_plugin.bench.datasets import find_datasets, tasks_of
from uniclip_plugin.bench.errors import BenchError, one_line
from uniclip_plugin.bench.features import extract_features
from uniclip_plugin.bench.models import Run, load_model, resolve_models
from uniclip_plugin.bench.probe import linear_probe
from uniclip_plugin.bench.report import write_report
from uniclip_plugin.data.common import sha256_of
from uniclip_plugin.io import write_text_atomic
from uniclip_plugin.runs import RunDir

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
TASK_ALIASES = {
    "zeroshot": "zeroshot_classification",
    "classification": "zeroshot_classification",
    "retrieval": "zeroshot_retrieval",
    "probe": "linear_probe",
    "lp": "linear_probe",
}
RECALL_K = (1, 5, 10)

__all__ = ["TASKS", "TASK_ALIASES", "RECALL_K", "evaluate_model", "parse_tasks", "run_bench"]


class _PrecomputedImages(torch.nn.Module):
    """Feeds cached image features to clip_benchmark's ``evaluate``: ``encode_image`` is the identity on the
    features (clip_benchmark normalises them again, a no-op), ``encode_text`` is the real text tower."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def encode_image(self, features: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The cached features themselves (already encoded and normalised)."""
        return features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The real model's text tower (clip_benchmark normalises its output)."""
        return self.model.encode_text(tokens)


class _FeatureSet(torch.utils.data.Dataset):
    """(feature, label) or (feature, captions) pairs with the ``classes`` attribute clip_benchmark reads."""

    def __init__(self, record: dict[str, Any]):
        self.x, self.y, self.captions, self.classes = record["x"], record["y"], record["captions"], record["classes"]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        return self.x[i], (self.captions[i] if self.captions is not None else self.y[i])


def _zero_shot(
    model: torch.nn.Module,
    tokenizer: Any,
    rec: dict[str, Any],
    task: str,
    batch_size: int,
    device: str,
    recall_k: Sequence[int],
) -> dict[str, float]:
    """clip_benchmark's zero-shot retrieval or classification on cached image features."""
    if task == "zeroshot_retrieval":
        from clip_benchmark.metrics import zeroshot_retrieval

        ks = [k for k in recall_k if k <= len(rec["x"])]  # clip_benchmark's topk needs k ≤ #images
        loader = torch.utils.data.DataLoader(
            _FeatureSet(rec),
            batch_size=batch_size,
            collate_fn=lambda b: (torch.stack([x for x, _ in b]), [c for _, c in b]),
        )
        return zeroshot_retrieval.evaluate(
            _PrecomputedImages(model), loader, tokenizer, device=device, amp=False, recall_k_list=ks
        )
    from clip_benchmark.metrics import zeroshot_classification

    loader = torch.utils.data.DataLoader(_FeatureSet(rec), batch_size=batch_size)
    return zeroshot_classification.evaluate(
        _PrecomputedImages(model), loader, tokenizer, rec["classes"], rec["templates"], device=device, amp=False
    )


def evaluate_model(
    model: torch.nn.Module,
    preprocess: Any,
    tokenizer: Any,
    dataset_dir: Union[Path, str],
    task: str,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    cache_dir: Optional[Path] = None,
    cache_key: Optional[str] = None,
    recall_k: Sequence[int] = RECALL_K,
    seed: int = 0,
    probe_max_train: int = 10000,
) -> dict[str, float]:
    """One (model, dataset, task) evaluation → clip_benchmark-style metrics.

    Args:
        model: CLIP-like module with ``encode_image`` and ``encode_text`` (in eval mode).
        preprocess: image transform.
        tokenizer: ``list[str] -> LongTensor``.
        dataset_dir: clip_benchmark ``wds/`` set folder.
        task: ``zeroshot_classification``, ``zeroshot_retrieval`` or ``linear_probe``.
        batch_size: images per forward.
        device: where the model runs (the benchmark uses CPU; evaluation is fp32 there).
        cache_dir: feature cache folder (see ``extract_features``); None disables caching.
        cache_key: identity of the model's weights (see ``extract_features``).
        recall_k: retrieval k values (those above the number of images are dropped).
        seed: linear-probe seed.
        probe_max_train: cap on linear-probe training samples.

    Returns:
        zeroshot_classification: ``acc1``, ``acc5`` (nan below 5 classes), ``mean_per_class_recall`` (or
        ``mean_average_precision`` on multi-label sets); zeroshot_retrieval: ``image_retrieval_recall@k`` (text →
        image) and ``text_retrieval_recall@k`` (image → text); linear_probe: see ``uniclip_plugin.bench.probe``.

    Raises:
        BenchError: an unknown task, a probe without a train split, or an unreadable set.
    """
    uniclip_plugin.register()  # the upstream fixes (numpy 2.4 vs clip_benchmark's accuracy); idempotent
    dataset_dir = Path(dataset_dir)
    kw = dict(batch_size=batch_size, device=device, cache_dir=cache_dir, cache_key=cache_key)
    if task in ("zeroshot_retrieval", "zeroshot_classification"):
        rec = extract_features(model, preprocess, dataset_dir, "test", **kw)
        return _zero_shot(model, tokenizer, rec, task, batch_size, device, recall_k)
    if task == "linear_probe":
        return _probe(model, preprocess, dataset_dir, seed, probe_max_train, kw)
    raise BenchError(f"unknown task {task!r}; choices: {', '.join(TASKS)}")


def _probe(
    model: torch.nn.Module, preprocess: Any, dataset_dir: Path, seed: int, max_train: int, feature_kw: dict[str, Any]
) -> dict[str, float]:
    """The CPU linear probe on the set's train and test features."""
    if not (dataset_dir / "train").is_dir():
        raise BenchError(f"linear probe on {dataset_dir.name} needs a train split")
    train = extract_features(model, preprocess, dataset_dir, "train", max_samples=max_train, seed=seed, **feature_kw)
    test = extract_features(model, preprocess, dataset_dir, "test", **feature_kw)
    xy = (train["x"].numpy(), train["y"].numpy(), test["x"].numpy(), test["y"].numpy())
    try:
        return linear_probe(*xy, seed=seed, max_train=max_train, desc=f"probe {dataset_dir.name}")
    except ValueError as err:
        raise BenchError(f"linear probe on {dataset_dir.name}: {one_line(err)}") from err


# ---------------------------------------------------------------------------------------------- the whole benchmark


def parse_tasks(tasks: Union[str, Iterable[str]]) -> set[str]:
    """``--tasks`` (comma-separated, or a list) → task names, aliases resolved.

    Raises:
        BenchError: an unknown task, or none.
    """
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    wanted = {TASK_ALIASES.get(t.strip(), t.strip()) for t in items if t.strip()}
    if not wanted or wanted - set(TASKS):
        raise BenchError(
            f"unknown task(s) {sorted(wanted - set(TASKS))}; choices: {', '.join(TASKS)} (or {', '.join(TASK_ALIASES)})"
        )
    return wanted


def _select_datasets(
    found: dict[str, Path], names: Optional[Union[str, Sequence[str]]], data: Optional[Path]
) -> dict[str, Path]:
    if names:
        items = names.split(",") if isinstance(names, str) else list(names)
        keep = {d.strip().removeprefix("wds/") for d in items if d.strip()}
        if keep - set(found):
            raise BenchError(f"unknown dataset(s) {sorted(keep - set(found))}; found: {', '.join(found) or '-'}")
        found = {k: v for k, v in found.items() if k in keep}
    if not found:
        raise BenchError(
            f"no datasets under {data}/wds and none given with --dataset; "
            f"build them with `python harness/data.py build`"
        )
    return found


def _evaluate_run(
    run: Run,
    datasets: dict[str, Path],
    plan: dict[str, list[str]],
    cache: Optional[Path],
    out: Path,
    bar: Any,
    opts: dict[str, Any],
) -> list[dict]:
    """Every planned (dataset, task) of one run: a clip_benchmark JSON per evaluation, and the result rows."""
    # The cache key is the content hash; a checkpoint rewritten between hashing and loading (a training run
    # still saving epoch_latest.pt) would pair old features' key with new weights, so refuse that.
    before = run.checkpoint.stat()
    digest = sha256_of(run.checkpoint)
    model, preprocess, tokenizer = load_model(run, opts["device"])
    after = run.checkpoint.stat()
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise BenchError(f"checkpoint {run.checkpoint} changed while it was being read; rerun once it is written")
    rows: list[dict] = []
    for name, path in datasets.items():
        for task in plan[name]:
            bar.set_postfix_str(f"{run.run} {name} {task}")
            metrics = evaluate_model(
                model,
                preprocess,
                tokenizer,
                path,
                task,
                cache_dir=cache,
                cache_key=f"{digest}|{run.model_config}",
                **opts,
            )
            metrics = {k: float(v) for k, v in metrics.items()}
            rows += _record(run, name, task, metrics, digest, out)
            bar.update()
    return rows


def _record(run: Run, dataset: str, task: str, metrics: dict[str, float], digest: str, out: Path) -> list[dict]:
    """Write one evaluation as clip_benchmark's result JSON (extra keys become extra columns in `clip_benchmark
    build`) and return its result rows."""
    record = {
        "dataset": dataset,
        "model": run.model_config,
        "pretrained": str(run.checkpoint),
        "task": task,
        "metrics": metrics,
        "language": "en",
        "method": run.method,
        "run": run.run,
        "checkpoint_sha256": digest,
    }
    (out / "json").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "json" / f"{run.run}__{dataset}__{task}.json", json.dumps(record, indent=2))
    return [
        {
            "method": run.method,
            "run": run.run,
            "dataset": dataset,
            "task": task,
            "metric": k,
            "value": v,
            "model": run.model_config,
            "checkpoint": str(run.checkpoint),
        }
        for k, v in metrics.items()
    ]


def run_bench(
    models: Union[str, Sequence[str]],
    runs_dir: Union[str, Path] = "runs",
    data: Optional[Union[str, Path]] = "data",
    out: Union[str, Path] = "results",
    *,
    tasks: Union[str, Iterable[str]] = TASKS,
    datasets: Optional[Union[str, Sequence[str]]] = None,
    extra_datasets: Sequence[str] = (),
    probe_max_train: int = 10000,
    feature_cache: Optional[Union[str, Path]] = None,
    no_cache: bool = False,
    batch_size: int = 128,
    device: str = "cpu",
    seed: int = 0,
) -> list[dict]:
    """Evaluate every run of ``models`` on every dataset and task, and write the report under ``out``.

    Args:
        models: ``--models``: run/method names in ``runs_dir`` and/or ``name=checkpoint[:config]`` items.
        runs_dir: folder of training runs.
        data: folder whose ``wds/`` subfolder holds the evaluation sets, or None.
        out: output folder (``json/``, ``results.csv``, ``summary.csv``, ``table.md``, plots).
        tasks: subset of ``TASKS`` (aliases allowed).
        datasets: subset of the dataset names, or None for all.
        extra_datasets: ``wds/NAME=PATH`` items (``--dataset``).
        probe_max_train: cap on linear-probe training samples.
        feature_cache: feature cache folder (None: ``out/.features``).
        no_cache: recompute every feature.
        batch_size: images per forward.
        device: torch device (evaluation is fp32).
        seed: linear-probe split/subsample seed.

    Returns:
        One row per (run, dataset, task, metric), as in ``results.csv``.

    Raises:
        BenchError: a problem the user can fix (unknown model or dataset, unreadable checkpoint, ...).
    """
    from tqdm import tqdm

    wanted = parse_tasks(tasks)
    out = Path(out)
    runs = resolve_models(models, Path(runs_dir))
    data_dir = Path(data) if data else None
    found = _select_datasets(find_datasets(data_dir, extra_datasets), datasets, data)
    plan = {name: [t for t in tasks_of(path) if t in wanted] for name, path in found.items()}
    if not any(plan.values()):
        raise BenchError(f"no dataset offers the task(s) {', '.join(sorted(wanted))}")
    cache = None if no_cache else Path(feature_cache) if feature_cache else out / ".features"
    opts = {"batch_size": batch_size, "device": device, "seed": seed, "probe_max_train": probe_max_train}
    rows: list[dict] = []
    bar = tqdm(total=sum(len(plan[n]) for n in found) * len(runs), desc="bench", unit="eval", leave=False, disable=None)
    try:
        for run in runs:
            rows += _evaluate_run(run, found, plan, cache, out, bar, opts)
    finally:
        bar.close()  # leave=False clears the bar, so an error message starts on a clean line
    methods = list(dict.fromkeys(r.method for r in runs))
    curves = {r.run: RunDir(r.run_dir).loss_curve() for r in runs if r.run_dir is not None}
    write_report(rows, methods, out, curves)
    return rows
