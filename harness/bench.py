"""Compare trained models with clip_benchmark: zero-shot classification, image↔text retrieval, CPU linear probe.

    python harness/bench.py --models uniclip,clip,slip,declip --runs-dir runs/ --data data/ --out results/
    python harness/bench.py --models uniclip=runs/u1/checkpoints/epoch_30.pt:UniCLIP-Tiny-64,clip=... --tasks retrieval

A model name resolves to the latest checkpoint of every run ``<name>`` / ``<name>-seed<N>`` / ``<name>-s<N>`` in
``--runs-dir`` (open_clip_train's ``checkpoints/epoch_<N>.pt`` or the DeepSpeed harness's ``export/*.pt``; the model
config is read from the run's ``params.txt``); several runs of one method are aggregated as mean ± std.
``name=checkpoint[:model-config]`` names a checkpoint directly. Zero-shot and retrieval use clip_benchmark's own
``evaluate`` functions (fp32, ``amp=False``); retrieval reports R@1/5/10 in both directions. The linear probe is ours
because clip_benchmark's asserts CUDA: scikit-learn logistic regression on L2-normalised frozen image features, the
inverse regularisation C chosen on a validation split carved from train (CLIP's protocol), then refit on all of train.

Outputs under ``--out``: one clip_benchmark-format JSON per (run, dataset, task) (``clip_benchmark build`` reads them),
``results.csv``, ``table.md`` (datasets × methods, Δ against the first method), ``<task>.png`` bar charts and
``training_curves.png`` from the runs' ``out.log``. Image features are cached per (checkpoint sha256, dataset, split):
clip_benchmark keys its cache by name, so a changed checkpoint at the same path would silently reuse stale features.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
MAIN_METRIC = {"zeroshot_classification": "acc1", "zeroshot_retrieval": "image_retrieval_recall@1",
               "linear_probe": "lp_acc1"}
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


class BenchError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class Run:
    method: str
    run: str
    checkpoint: Path
    model_config: str


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _latest_checkpoint(run_dir: Path) -> Optional[Path]:
    epochs = sorted(run_dir.glob("checkpoints/epoch_*.pt"),
                    key=lambda p: int(m.group(1)) if (m := re.search(r"epoch_(\d+)\.pt$", p.name)) else -1)
    numbered = [p for p in epochs if re.search(r"epoch_\d+\.pt$", p.name)]
    if numbered:
        return numbered[-1]
    for pattern in ("checkpoints/epoch_latest.pt", "export/*.pt"):
        found = sorted(run_dir.glob(pattern))
        if found:
            return found[-1]
    return None


def _model_of_run(run_dir: Path) -> str:
    params = run_dir / "params.txt"
    if params.is_file():
        for line in params.read_text().splitlines():
            if line.startswith("model: "):
                return line.split(": ", 1)[1].strip()
    raise BenchError(f"{run_dir}/params.txt has no 'model: NAME' line; give the model as name=checkpoint:CONFIG")


def resolve_models(spec: str, runs_dir: Path) -> list[Run]:
    """Parse ``--models`` into runs (see the module docstring)."""
    runs: list[Run] = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if "=" in item:
            name, target = item.split("=", 1)
            ckpt, _, config = target.partition(":")
            path = Path(ckpt)
            if not path.is_file():
                raise BenchError(f"checkpoint {ckpt} for model {name!r} does not exist")
            if not config:
                config = _model_of_run(path.parent.parent)
            runs.append(Run(name, name, path, config))
            continue
        pattern = re.compile(rf"^{re.escape(item)}(-seed\d+|-s\d+)?$")
        dirs = sorted(d for d in runs_dir.glob("*") if d.is_dir() and pattern.match(d.name)) if runs_dir.is_dir() else []
        if not dirs:
            raise BenchError(f"unknown model {item!r}: no run named {item} or {item}-seed<N> in {runs_dir}; "
                             f"or pass {item}=CHECKPOINT[:MODEL_CONFIG]")
        for d in dirs:
            ckpt = _latest_checkpoint(d)
            if ckpt is None:
                raise BenchError(f"run {d} has no checkpoint (checkpoints/epoch_N.pt or export/*.pt)")
            runs.append(Run(item, d.name, ckpt, _model_of_run(d)))
    return runs


def find_datasets(data_dir: Path, extra: list[str]) -> dict[str, Path]:
    """``wds/<name>`` sets under ``data_dir/wds`` plus ``name=path`` pairs; every split needs ``nshards.txt``."""
    found = {d.name: d for d in sorted((data_dir / "wds").glob("*")) if d.is_dir()} if data_dir else {}
    for item in extra:
        name, _, path = item.partition("=")
        found[name.removeprefix("wds/")] = Path(path)
    for name, path in found.items():
        splits = [s for s in path.glob("*") if s.is_dir()]
        if not splits or not all((s / "nshards.txt").is_file() for s in splits):
            raise BenchError(f"dataset folder {path} is not a clip_benchmark wds set: every split needs nshards.txt "
                             f"(build it with `python harness/data.py build`)")
    return found


def tasks_of(path: Path) -> list[str]:
    kind = (path / "dataset_type.txt").read_text().strip() if (path / "dataset_type.txt").is_file() else ""
    if kind == "retrieval":
        return ["zeroshot_retrieval"]
    return ["zeroshot_classification"] + (["linear_probe"] if (path / "train").is_dir() else [])


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(run: Run) -> tuple[torch.nn.Module, Any, Any]:
    import open_clip

    import uniclip_plugin  # noqa: F401  (plugin configs and classes, E4 fix)
    model, _, preprocess = open_clip.create_model_and_transforms(run.model_config, pretrained=str(run.checkpoint),
                                                                 device="cpu", precision="fp32")
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(run.model_config)


def _loader(name: str, path: Path, preprocess: Any, split: str, task: str, batch_size: int) -> Any:
    from clip_benchmark.datasets.builder import build_dataset
    ds = build_dataset(f"wds/{name}", root=str(path), transform=preprocess, split=split, task=task)
    loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None, num_workers=0)
    return ds, loader


def image_features(model: torch.nn.Module, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    feats, labels = [], []
    with torch.no_grad():
        for images, target in loader:
            feats.append(model.encode_image(images, normalize=True))
            labels.append(torch.as_tensor(target))
    return torch.cat(feats), torch.cat(labels)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0, max_train: int = 10000) -> dict[str, float]:
    """Logistic regression; C from ``C_GRID`` by accuracy on a 20 % validation split of train, then refit on train.

    At most ``max_train`` training samples (a seeded random subset) keep the CPU probe to seconds on Fashion-MNIST.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    if len(train_x) > max_train:
        keep = np.random.default_rng(seed).permutation(len(train_x))[:max_train]
        train_x, train_y = train_x[keep], train_y[keep]
    order = np.random.default_rng(seed).permutation(len(train_x))
    cut = max(1, int(0.8 * len(order)))
    fit_idx, val_idx = order[:cut], order[cut:]

    def fit(c: float, idx: np.ndarray) -> Any:
        return LogisticRegression(C=c, max_iter=1000).fit(train_x[idx], train_y[idx])

    best_c = C_GRID[0]
    if len(val_idx) and len(set(train_y[fit_idx])) > 1:
        scores = {c: fit(c, fit_idx).score(train_x[val_idx], train_y[val_idx]) for c in C_GRID}
        best_c = max(scores, key=lambda c: (scores[c], -c))
    clf = fit(best_c, np.arange(len(train_x)))
    pred = clf.predict(test_x)
    return {"lp_acc1": float((pred == test_y).mean()),
            "lp_mean_per_class_recall": float(balanced_accuracy_score(test_y, pred)), "lp_C": best_c}


def _cached_features(model: torch.nn.Module, run: Run, name: str, path: Path, preprocess: Any, split: str,
                     cache: Path, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = cache / f"{sha256_of(run.checkpoint)[:16]}_{name}_{split}.pt"
    if key.is_file():
        saved = torch.load(key)
        return saved["x"], saved["y"]
    _, loader = _loader(name, path, preprocess, split, "linear_probe", batch_size)
    x, y = image_features(model, loader)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(".tmp-" + key.name)
    torch.save({"x": x, "y": y}, tmp)
    os.replace(tmp, key)
    return x, y


def evaluate_model(model: torch.nn.Module, preprocess: Any, tokenizer: Any, name: str, path: Path, task: str,
                   run: Optional[Run] = None, cache: Optional[Path] = None, batch_size: int = 64) -> dict[str, float]:
    """One (model, dataset, task) evaluation → clip_benchmark-style metrics dict."""
    if task == "zeroshot_retrieval":
        from clip_benchmark.metrics import zeroshot_retrieval
        _, loader = _loader(name, path, preprocess, "test", task, batch_size)
        return zeroshot_retrieval.evaluate(model, loader, tokenizer, device="cpu", amp=False, recall_k_list=[1, 5, 10])
    if task == "zeroshot_classification":
        from clip_benchmark.metrics import zeroshot_classification
        ds, loader = _loader(name, path, preprocess, "test", task, batch_size)
        return zeroshot_classification.evaluate(model, loader, tokenizer, ds.classes, ds.templates, device="cpu",
                                                amp=False)
    if task == "linear_probe":
        if run is not None and cache is not None:
            tx, ty = _cached_features(model, run, name, path, preprocess, "train", cache, batch_size)
            vx, vy = _cached_features(model, run, name, path, preprocess, "test", cache, batch_size)
        else:
            tx, ty = image_features(model, _loader(name, path, preprocess, "train", task, batch_size)[1])
            vx, vy = image_features(model, _loader(name, path, preprocess, "test", task, batch_size)[1])
        return linear_probe(tx.numpy(), ty.numpy(), vx.numpy(), vy.numpy())
    raise BenchError(f"unknown task {task!r}; choices: {', '.join(TASKS)}")


def training_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs from open_clip_train's ``out.log`` lines."""
    points = []
    log = run_dir / "out.log"
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            m = re.search(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*? Loss: ([0-9.]+)", line)
            if m:
                points.append((int(m.group(1)) * int(m.group(3)) + int(m.group(2)), float(m.group(4))))
    return points


def write_report(rows: list[dict], out: Path, methods: list[str], runs: list[Run], runs_dir: Path) -> None:
    """CSV, markdown table (mean ± std over runs, Δ vs the first method) and plots."""
    with open(out / ".tmp-results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "run", "dataset", "task", "metric", "value"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / ".tmp-results.csv", out / "results.csv")
    cells: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r["metric"] == MAIN_METRIC[r["task"]] or r["metric"] == "text_retrieval_recall@1":
            cells.setdefault((r["dataset"] + " · " + r["task"] + " · " + r["metric"], r["method"], ""), []).append(
                r["value"])
    keys = sorted({k[0] for k in cells})
    lines = ["| dataset · task · metric | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for key in keys:
        base = statistics.mean(cells.get((key, methods[0], ""), [float("nan")]))
        vals = []
        for i, m in enumerate(methods):
            v = cells.get((key, m, ""), [])
            if not v:
                vals.append("–")
                continue
            mean, std = statistics.mean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)
            delta = f" (Δ {100 * (mean - base):+.1f})" if i else ""
            vals.append(f"{100 * mean:.1f} ± {100 * std:.1f}{delta}" if len(v) > 1 else f"{100 * mean:.1f}{delta}")
        lines.append(f"| {key} | " + " | ".join(vals) + " |")
    _write_atomic(out / "table.md", "\n".join(lines) + "\n\nValues in %, mean ± std over runs; Δ in points against "
                  f"{methods[0]}.\n")
    _plots(cells, keys, methods, out, runs, runs_dir)


def _plots(cells: dict, keys: list[str], methods: list[str], out: Path, runs: list[Run], runs_dir: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for task in TASKS:
        task_keys = [k for k in keys if f" · {task} · " in k]
        if not task_keys:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(task_keys)), 4))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            means = [100 * statistics.mean(cells.get((k, m, ""), [0.0])) for k in task_keys]
            stds = [100 * statistics.stdev(cells[(k, m, "")]) if len(cells.get((k, m, ""), [])) > 1 else 0.0
                    for k in task_keys]
            ax.bar([j + i * width for j in range(len(task_keys))], means, width, yerr=stds, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(task_keys))])
        ax.set_xticklabels([k.split(" · ")[0] + "\n" + k.split(" · ")[2] for k in task_keys], fontsize=7)
        ax.set_ylabel("%")
        ax.set_title(task)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{task}.png", dpi=100)
        plt.close(fig)
    curves = [(r, training_curve(r.checkpoint.parent.parent)) for r in runs]
    if any(c for _, c in curves):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r, c in curves:
            if c:
                ax.plot([s for s, _ in c], [v for _, v in c], label=r.run)
        ax.set_xlabel("samples seen")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "training_curves.png", dpi=100)
        plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True)
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--data", default="data")
    parser.add_argument("--dataset", action="append", default=[], help="extra clip_benchmark set: wds/NAME=PATH")
    parser.add_argument("--datasets", default=None, help="comma-separated subset of dataset names")
    parser.add_argument("--tasks", default=",".join(TASKS), help="subset of " + ", ".join(TASKS) +
                        " (retrieval = zeroshot_retrieval, zeroshot = zeroshot_classification)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        from tqdm import tqdm
        alias = {"retrieval": "zeroshot_retrieval", "zeroshot": "zeroshot_classification", "probe": "linear_probe"}
        wanted = {alias.get(t.strip(), t.strip()) for t in args.tasks.split(",")}
        if wanted - set(TASKS):
            raise BenchError(f"unknown task(s) {sorted(wanted - set(TASKS))}; choices: {', '.join(TASKS)}")
        runs = resolve_models(args.models, Path(args.runs_dir))
        datasets = find_datasets(Path(args.data), args.dataset)
        if args.datasets:
            keep = {d.strip() for d in args.datasets.split(",")}
            datasets = {k: v for k, v in datasets.items() if k in keep}
        if not datasets:
            raise BenchError(f"no datasets under {args.data}/wds; build them with `python harness/data.py build`")
        out = Path(args.out)
        rows: list[dict] = []
        jobs = [(r, n, p, t) for r in runs for n, p in datasets.items() for t in tasks_of(p) if t in wanted]
        loaded: dict[Run, tuple] = {}
        for run, name, path, task in tqdm(jobs, desc="bench"):
            if run not in loaded:
                loaded = {run: load_model(run)}
            model, preprocess, tokenizer = loaded[run]
            metrics = evaluate_model(model, preprocess, tokenizer, name, path, task, run, out / ".features",
                                     args.batch_size)
            record = {"dataset": name, "model": run.model_config, "pretrained": str(run.checkpoint), "task": task,
                      "metrics": metrics, "language": "en", "method": run.method, "run": run.run}
            _write_atomic(out / "json" / f"{run.run}__{name}__{task}.json", json.dumps(record, indent=2))
            rows += [{"method": run.method, "run": run.run, "dataset": name, "task": task, "metric": k,
                      "value": float(v)} for k, v in metrics.items() if isinstance(v, (int, float))]
        methods = list(dict.fromkeys(r.method for r in runs))
        write_report(rows, out, methods, runs, Path(args.runs_dir))
        print((out / "table.md").read_text())
        return 0
    except BenchError as err:
        print(f"bench.py: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
