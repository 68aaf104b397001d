"""The benchmark's report: combined CSVs, the markdown table, bar charts and training curves.

Every file is written through ``uniclip_plugin.io`` (a temporary name in the destination folder, renamed into
place), so an interrupted run never leaves a truncated file under a final name. Temporary names end in ``.tmp``
(never ``.json``/``.png``/``.csv``), so ``clip_benchmark build DIR`` (which reads every ``*.json`` in DIR) cannot
pick up a half-written file.
"""
from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence

from uniclip_plugin.io import atomic_path, write_text_atomic

TASK_ORDER = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe")
# Metrics shown in the markdown table and the bar charts (all metrics go to the CSVs). Multi-label sets report
# mean_average_precision instead of acc1 (clip_benchmark's zero-shot evaluate).
TABLE_METRICS = {
    "zeroshot_classification": ("acc1", "mean_average_precision"),
    "zeroshot_retrieval": ("image_retrieval_recall@1", "text_retrieval_recall@1",
                           "image_retrieval_recall@5", "text_retrieval_recall@5"),
    "linear_probe": ("lp_acc1",),
}
ROW_FIELDS = ("method", "run", "dataset", "task", "metric", "value", "model", "checkpoint")
SUMMARY_FIELDS = ("method", "dataset", "task", "metric", "mean", "std", "n")

def _write_csv(path: Path, fields: Sequence[str], rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.mean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def summarise(rows: list[dict]) -> list[dict]:
    """Aggregate per-run rows into mean ± sample std over the runs (seeds) of each method."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["dataset"], r["task"], r["metric"]), []).append(float(r["value"]))
    out = []
    for (method, dataset, task, metric), values in groups.items():
        mean, std = _mean_std(values)
        out.append({"method": method, "dataset": dataset, "task": task, "metric": metric, "mean": mean, "std": std,
                    "n": len(values)})
    return out


def _table_keys(summary: list[dict]) -> list[tuple[str, str, str]]:
    keys = {(s["dataset"], s["task"], s["metric"]) for s in summary if s["metric"] in TABLE_METRICS.get(s["task"], ())}
    return sorted(keys, key=lambda k: (TASK_ORDER.index(k[1]) if k[1] in TASK_ORDER else 99, k[0],
                                       TABLE_METRICS[k[1]].index(k[2])))


def markdown_table(summary: list[dict], methods: list[str]) -> str:
    """Datasets × methods in %, mean ± std over runs, Δ in points against the first method."""
    cell = {(s["dataset"], s["task"], s["metric"], s["method"]): s for s in summary}
    runs = {m: max((s["n"] for s in summary if s["method"] == m), default=0) for m in methods}
    header = ["dataset", "task", "metric"] + [f"{m} (n={runs[m]})" for m in methods]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, task, metric in _table_keys(summary):
        base = cell.get((dataset, task, metric, methods[0]))
        values = []
        for i, m in enumerate(methods):
            s = cell.get((dataset, task, metric, m))
            if s is None or math.isnan(s["mean"]):
                values.append("–")
                continue
            text = f"{100 * s['mean']:.1f}" + (f" ± {100 * s['std']:.1f}" if s["n"] > 1 else "")
            if i and base is not None and not math.isnan(base["mean"]):
                text += f" (Δ {100 * (s['mean'] - base['mean']):+.1f})"
            values.append(text)
        lines.append(f"| {dataset} | {task} | {metric} | " + " | ".join(values) + " |")
    note = (f"\nValues in %; mean ± sample std over the n runs (seeds) of a method; Δ in points against "
            f"{methods[0]}. All metrics: results.csv (per run) and summary.csv (aggregated).\n")
    return "\n".join(lines) + "\n" + note


def _savefig(fig: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)  # type: ignore[attr-defined]


def bar_charts(summary: list[dict], methods: list[str], out: Path) -> list[Path]:
    """One ``<task>.png`` per task: groups = (dataset, metric), bars = methods, error bars = std over runs."""
    import matplotlib
    matplotlib.use("Agg")  # headless: no display on CI or the eval box
    import matplotlib.pyplot as plt
    cell = {(s["dataset"], s["task"], s["metric"], s["method"]): s for s in summary}
    written = []
    keys = _table_keys(summary)
    for task in TASK_ORDER:
        task_keys = [k for k in keys if k[1] == task]
        if not task_keys:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(task_keys) + 2), 4))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            stats = [cell.get((d, t, metric, m)) for d, t, metric in task_keys]
            means = [100 * s["mean"] if s and not math.isnan(s["mean"]) else 0.0 for s in stats]
            stds = [100 * s["std"] if s and s["n"] > 1 else 0.0 for s in stats]
            ax.bar([j + i * width for j in range(len(task_keys))], means, width, yerr=stds, capsize=2, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(task_keys))])
        ax.set_xticklabels([f"{d}\n{metric}" for d, _, metric in task_keys], fontsize=7)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _savefig(fig, out / f"{task}.png")
        plt.close(fig)
        written.append(out / f"{task}.png")
    return written


def curves_plot(curves: dict[str, list[tuple[int, float]]], out: Path) -> Optional[Path]:
    """``training_curves.png`` with one line per run that logged its loss; None when no run did."""
    curves = {name: c for name, c in curves.items() if c}
    if not curves:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot([s for s, _ in c], [v for _, v in c], label=name)
    ax.set_xlabel("samples seen")
    ax.set_ylabel("training loss (out.log / metrics.jsonl)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, out / "training_curves.png")
    plt.close(fig)
    return out / "training_curves.png"


def write_report(rows: list[dict], methods: list[str], out: Path,
                 curves: Optional[dict[str, list[tuple[int, float]]]] = None) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.csv``, ``table.md``, ``<task>.png`` and ``training_curves.png``.

    Args:
        rows: one dict per (run, dataset, task, metric) with the keys of ``ROW_FIELDS``.
        methods: method names in command-line order; the first is the Δ baseline.
        out: output folder.
        curves: run name → training-curve points (``uniclip_plugin.runs.RunDir.loss_curve``).

    Returns:
        Name → path of every file written.
    """
    summary = summarise(rows)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "results.csv", ROW_FIELDS, rows)
    _write_csv(out / "summary.csv", SUMMARY_FIELDS, summary)
    write_text_atomic(out / "table.md", markdown_table(summary, methods))
    written = {"results.csv": out / "results.csv", "summary.csv": out / "summary.csv", "table.md": out / "table.md"}
    written.update({p.name: p for p in bar_charts(summary, methods, out)})
    curve_png = curves_plot(curves or {}, out)
    if curve_png:
        written[curve_png.name] = curve_png
    return written
