"""Compare trained models with clip_benchmark: zero-shot classification, image↔text retrieval, CPU linear probe.

    python harness/bench.py --models uniclip,clip,slip,declip --runs-dir runs/ --data data/ --out results/
    python harness/bench.py --models uniclip=runs/u1/checkpoints/epoch_30.pt:UniCLIP-Tiny-64,clip=... --tasks retrieval
    python harness/bench.py --models clip --dataset wds/mine=path/to/wds_set --datasets mine

Models. A name resolves to the latest checkpoint of every run ``<name>``, ``<name>-seed<N>`` or ``<name>-s<N>`` in
``--runs-dir`` (open_clip_train's ``checkpoints/epoch_<N>.pt`` / ``epoch_latest.pt``, or the DeepSpeed trainer's
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
regression on the L2-normalised frozen features with C chosen on a validation split of train
(``uniclip_plugin.bench.probe``), because clip_benchmark's probe asserts CUDA.

Outputs under ``--out``: ``json/<run>__<dataset>__<task>.json`` in clip_benchmark's format (``clip_benchmark build
OUT/json`` reads them), ``results.csv`` (per run), ``summary.csv`` (mean/std/n per method), ``table.md`` (datasets ×
methods, Δ against the first method named), ``<task>.png`` bar charts and ``training_curves.png`` from the runs'
``out.log`` (``metrics.jsonl`` for DeepSpeed runs). Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import uniclip_plugin
from uniclip_plugin.bench.errors import BenchError
from uniclip_plugin.bench.evaluate import TASKS, run_bench

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``bench.py`` argument parser."""
    p = argparse.ArgumentParser(
        prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", required=True, help="NAME[,NAME...] (runs in --runs-dir) and/or NAME=CKPT[:CONFIG]")
    p.add_argument("--runs-dir", default="runs", help="folder of training runs (default: runs)")
    p.add_argument("--data", default="data", help="folder whose wds/ subfolder holds the evaluation sets")
    p.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="wds/NAME=PATH",
        help="extra clip_benchmark wds set (repeatable)",
    )
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


def main(argv: Optional[list[str]] = None) -> int:
    """Run the benchmark (see the module docstring) and print its table.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 on success, 2 on a user error (printed to stderr as one line starting with ``bench.py: ``).
    """
    uniclip_plugin.register()
    args = build_parser().parse_args(argv)
    try:
        run_bench(
            args.models,
            args.runs_dir,
            args.data,
            args.out,
            tasks=args.tasks,
            datasets=args.datasets,
            extra_datasets=args.dataset,
            probe_max_train=args.probe_max_train,
            feature_cache=args.feature_cache,
            no_cache=args.no_cache,
            batch_size=args.batch_size,
            device=args.device,
            seed=args.seed,
        )
    except BenchError as err:
        print(f"bench.py: {err}", file=sys.stderr)
        return 2
    print((Path(args.out) / "table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
