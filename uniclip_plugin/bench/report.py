"""The benchmark's report: combined CSVs, the markdown table, bar charts and training curves.

Bar charts put their y-range on the values (:func:`fitted_ylim`: retrieval R@1 of 1-15 % is not drawn on 0-100 %)
with the std over runs as error bars; the training-loss plot has one panel per method, because the methods' losses
are different objectives on different scales.

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
    "zeroshot_retrieval": (
        "image_retrieval_recall@1",
        "text_retrieval_recall@1",
        "image_retrieval_recall@5",
        "text_retrieval_recall@5",
    ),
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
        out.append(
            {
                "method": method,
                "dataset": dataset,
                "task": task,
                "metric": metric,
                "mean": mean,
                "std": std,
                "n": len(values),
            }
        )
    return out


def _table_keys(summary: list[dict]) -> list[tuple[str, str, str]]:
    keys = {(s["dataset"], s["task"], s["metric"]) for s in summary if s["metric"] in TABLE_METRICS.get(s["task"], ())}
    return sorted(
        keys,
        key=lambda k: (TASK_ORDER.index(k[1]) if k[1] in TASK_ORDER else 99, k[0], TABLE_METRICS[k[1]].index(k[2])),
    )


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
    note = (
        f"\nValues in %; mean ± sample std over the n runs (seeds) of a method; Δ in points against "
        f"{methods[0]}. All metrics: results.csv (per run) and summary.csv (aggregated).\n"
    )
    return "\n".join(lines) + "\n" + note


def _savefig(fig: object, path: Path, dpi: int = 100) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)  # type: ignore[attr-defined]


def fitted_ylim(lows: Sequence[float], highs: Sequence[float], margin: float = 0.1) -> tuple[float, float]:
    """A y-range that fits the values: [lowest low, highest high] widened by ``margin`` of its span on each side.

    Retrieval R@1 of 1-15 % drawn on 0-100 % would leave every bar a sliver, so the range follows the data. Bars
    keep their zero baseline when the values lie closer to 0 than their own span (a cut baseline would make 2 % look
    a third of 6 %); values far from 0 (probe accuracies of 72-82 %) get a cut axis. A flat range gets one point.

    Args:
        lows: the lowest point of each value (mean - std); highs: the highest (mean + std); nan values are ignored.
        margin: room on each side, as a fraction of the span.

    Returns:
        ``(bottom, top)``; ``(0, 100)`` when no value is finite.
    """
    lo = [v for v in lows if math.isfinite(v)]
    hi = [v for v in highs if math.isfinite(v)]
    if not lo or not hi:
        return 0.0, 100.0
    bottom, top = min(lo), max(hi)
    pad = max(margin * (top - bottom), 0.5)
    return (0.0 if 0.0 <= bottom <= top - bottom else bottom - pad), top + pad


def _tick_label(dataset: str, metric: str) -> str:
    """A bar group's label on two to three short lines (long set names overlapped their neighbours)."""
    metric = metric.replace("_retrieval_recall@", " R@").replace("mean_average_precision", "mAP")
    lines: list[str] = []
    for w in dataset.split("_"):
        if lines and len(lines[-1]) + len(w) < 16:
            lines[-1] += "_" + w
        else:
            if lines:
                lines[-1] += "_"  # the break keeps its underscore: the name stays readable as one name
            lines.append(w)
    return "\n".join(lines + [metric])


def method_colours(methods: Sequence[str]) -> dict[str, object]:
    """One colour per method, in order: matplotlib's 10-colour cycle, or tab20 beyond 10 methods."""
    import matplotlib

    if len(methods) <= 10:
        return {m: f"C{i}" for i, m in enumerate(methods)}
    cmap = matplotlib.colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]  # the 10 strong hues first, their light twins after
    return {m: cmap(order[i % 20]) for i, m in enumerate(methods)}


def grouped_bars(
    ax: object,
    groups: list[str],
    methods: list[str],
    stats: dict[tuple[str, str], tuple[float, float]],
    ylabel: str = "%",
) -> None:
    """Draw one bar per (group, method) with its std as an error bar, on a y-range fitted to the values.

    Args:
        ax: the matplotlib axes.
        groups: x-axis groups (tick labels); methods: bars within a group, one colour each (legend order).
        stats: (group, method) → (mean, std) in the plotted unit; a missing pair or nan draws no bar.
        ylabel: the y-axis label.
    """
    width = 0.8 / max(len(methods), 1)
    colours = method_colours(methods)
    lows, highs = [], []
    for i, m in enumerate(methods):
        means = [stats.get((g, m), (math.nan, 0.0))[0] for g in groups]
        stds = [stats.get((g, m), (math.nan, 0.0))[1] for g in groups]
        stds = [0.0 if math.isnan(s) else s for s in stds]
        ax.bar(
            [j + i * width for j in range(len(groups))],
            means,
            width,
            yerr=stds,
            capsize=2,  # type: ignore
            label=m,
            color=colours[m],
            error_kw={"elinewidth": 0.8},
        )
        lows += [v - s for v, s in zip(means, stds, strict=True)]
        highs += [v + s for v, s in zip(means, stds, strict=True)]
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])  # type: ignore[attr-defined]
    ax.set_xticklabels(groups, fontsize=7)  # type: ignore[attr-defined]
    ax.set_ylabel(ylabel)  # type: ignore[attr-defined]
    ax.set_ylim(*fitted_ylim(lows, highs))  # type: ignore[attr-defined]
    ax.grid(axis="y", alpha=0.3)  # type: ignore[attr-defined]
    # outside the axes: with 6-13 methods a legend inside hid the tallest bars
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # type: ignore[attr-defined]


def task_bar_figures(summary: list[dict], methods: list[str]) -> dict[str, object]:
    """One matplotlib figure per task in ``summary``: groups = (dataset, metric), bars = methods, error bars = std
    over runs (values in %); the caller saves and closes them."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or the eval box
    import matplotlib.pyplot as plt

    stats = {
        (_tick_label(s["dataset"], s["metric"]), s["method"]): (100 * s["mean"], 100 * s["std"] if s["n"] > 1 else 0.0)
        for s in summary
    }
    keys = _table_keys(summary)
    figures: dict[str, object] = {}
    for task in TASK_ORDER:
        groups = [_tick_label(d, metric) for d, t, metric in keys if t == task]
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(groups) + 3), 4))
        grouped_bars(ax, groups, methods, stats)
        ax.set_title(task)
        fig.tight_layout()
        figures[task] = fig
    return figures


def bar_charts(summary: list[dict], methods: list[str], out: Path, prefix: str = "", dpi: int = 100) -> list[Path]:
    """One ``<prefix><task>.png`` per task (see :func:`task_bar_figures`)."""
    import matplotlib.pyplot as plt

    written = []
    for task, fig in task_bar_figures(summary, methods).items():
        _savefig(fig, out / f"{prefix}{task}.png", dpi)
        plt.close(fig)  # type: ignore[arg-type]
        written.append(out / f"{prefix}{task}.png")
    return written


def loss_figure(curves: dict[str, list[tuple[int, float]]]) -> Optional[object]:
    """The training-loss figure: one panel per method (the methods' losses are different objectives, so they share
    no scale), each run of the method a line of the method's colour; None when no run logged a loss."""
    from uniclip_plugin.runs import parse_run_name

    by_method: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for name, c in curves.items():
        if c:
            by_method.setdefault(parse_run_name(name)[0], {})[name] = c
    if not by_method:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(by_method))
    rows = math.ceil(len(by_method) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for i, (method, runs) in enumerate(by_method.items()):
        ax = axes[i // cols][i % cols]
        for name, c in runs.items():
            ax.plot([s for s, _ in c], [v for _, v in c], color=f"C{i % 10}", lw=1.0, alpha=0.8, label=name)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("samples seen", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(len(by_method), rows * cols):
        fig.delaxes(axes[j // cols][j % cols])  # one axes per method, no empty panels
    fig.tight_layout()
    return fig


def curves_plot(curves: dict[str, list[tuple[int, float]]], out: Path) -> Optional[Path]:
    """``training_curves.png`` (:func:`loss_figure`); None when no run logged its loss."""
    fig = loss_figure(curves)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    _savefig(fig, out / "training_curves.png")
    plt.close(fig)  # type: ignore[arg-type]
    return out / "training_curves.png"


def write_report(
    rows: list[dict], methods: list[str], out: Path, curves: Optional[dict[str, list[tuple[int, float]]]] = None
) -> dict[str, Path]:
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
