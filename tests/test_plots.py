"""Plots a reader sees, checked through the matplotlib figures' own properties (never pixels): bar charts on a
y-range fitted to the values with their error bars, validation curves with one colour per method (thin seeds, thick
mean), loss curves one panel per method, and the small docs/img PNGs redrawn from a report's tables."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from uniclip_plugin.bench.report import fitted_ylim, loss_figure, task_bar_figures  # noqa: E402
from uniclip_plugin.study.analysis import validation_figure  # noqa: E402
from uniclip_plugin.study.report import images_from_report, parse_cell, read_report_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _row(method: str, dataset: str, task: str, metric: str, mean: float, std: float, n: int = 3) -> dict:
    return {"method": method, "dataset": dataset, "task": task, "metric": metric, "mean": mean, "std": std, "n": n}


def test_bar_charts_fit_the_y_range_to_the_values_and_keep_error_bars() -> None:
    summary = [
        _row(m, "emoji", "zeroshot_retrieval", metric, mean, 0.01)
        for m, base in (("uniclip", 0.02), ("clip", 0.05))
        for metric, mean in (("image_retrieval_recall@1", base), ("image_retrieval_recall@5", base + 0.1))
    ]
    summary += [
        _row(m, "fmnist", "linear_probe", "lp_acc1", mean, 0.005) for m, mean in (("uniclip", 0.72), ("clip", 0.82))
    ]
    figs = task_bar_figures(summary, ["uniclip", "clip"])
    try:
        ret = figs["zeroshot_retrieval"].axes[0]
        bottom, top = ret.get_ylim()
        # R@1 of 1-16 %: the axis ends just above the highest error bar (16 %), not at 100 %; bars stay on 0
        assert bottom == 0 and 16 < top <= 16 + 0.1 * 15 + 1e-9
        bars = [c for c in ret.containers if isinstance(c, BarContainer)]
        assert len(bars) == 2 and all(c.errorbar is not None for c in bars)  # error bars kept
        heights = sorted(round(b.get_height(), 6) for c in bars for b in c.patches)
        assert heights == [2.0, 5.0, 12.0, 15.0]
        probe = figs["linear_probe"].axes[0]
        bottom, top = probe.get_ylim()  # 71.5-82.5 %: far from 0, so the axis is cut at the data minus a margin
        low, high, pad = 71.5, 82.5, 0.1 * 11
        assert low - pad - 1e-9 <= bottom < low and high < top <= high + pad + 1e-9
    finally:
        for fig in figs.values():
            plt.close(fig)
    assert fitted_ylim([math.nan], [math.nan]) == (0.0, 100.0)


def _curve(values: list[float], seconds_per_epoch: float) -> list[dict]:
    return [{"epoch": e, "step": 10 * e, "seconds": seconds_per_epoch * e, "val_r1": v} for e, v in enumerate(values)]


def test_validation_curves_give_each_method_one_colour_thin_seeds_and_a_thick_mean() -> None:
    curves = {
        "clip": {str(s): _curve([0.1, 1 + s, 2 + s], 30.0 + s) for s in range(3)},
        "uniclip": {str(s): _curve([0.1, 0.5 + s, 1.5 + s], 40.0) for s in range(3)},
        "slip": {"0": _curve([0.1, 0.7, 1.2], 35.0)},
    }
    fig = validation_figure(curves)
    try:
        for ax in fig.axes:
            lines = ax.get_lines()
            assert len(lines) == 3 + 1 + 3 + 1 + 1  # seeds + mean per multi-seed method; one seed alone: one line
            by_colour: dict[tuple, list] = {}
            for line in lines:
                by_colour.setdefault(to_rgba(line.get_color()), []).append(line)
            assert sorted(len(v) for v in by_colour.values()) == [1, 4, 4]  # the lines of one method share a colour
            for group in by_colour.values():
                thick = max(group, key=lambda ln: ln.get_linewidth())
                assert all(thick.get_linewidth() > ln.get_linewidth() for ln in group if ln is not thick)
                assert not thick.get_label().startswith("_")  # the mean is the labelled line
        clip_mean = next(ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("clip"))
        assert list(clip_mean.get_ydata()) == pytest.approx([0.1, 2.0, 3.0])  # mean over the seeds per epoch
        secs = next(ln for ln in fig.axes[1].get_lines() if ln.get_label().startswith("clip"))
        assert list(secs.get_xdata()) == pytest.approx([0.0, 31.0, 62.0])
    finally:
        plt.close(fig)


def test_loss_curves_get_one_axes_per_method() -> None:
    curves = {
        "clip-seed0": [(0, 5.0), (100, 4.0)],
        "clip-seed1": [(0, 5.1), (100, 4.2)],
        "uniclip-seed0": [(0, 9.0), (100, 7.0)],
        "declip-seed0": [(0, 3.0), (100, 2.5)],
        "slip-seed0": [],
    }
    fig = loss_figure(curves)
    try:
        assert sorted(ax.get_title() for ax in fig.axes) == ["clip", "declip", "uniclip"]
        clip = next(ax for ax in fig.axes if ax.get_title() == "clip")
        assert len(clip.get_lines()) == 2 and len({ln.get_color() for ln in clip.get_lines()}) == 1
    finally:
        plt.close(fig)
    assert loss_figure({"clip-seed0": []}) is None


def test_docs_images_are_redrawn_from_a_reports_tables(tmp_path: Path) -> None:
    assert parse_cell("2.0 ± 0.5 (Δ +0.5)") == (2.0, 0.5)
    assert parse_cell("**2.90**") == (2.9, 0.0)
    assert all(math.isnan(v) for v in parse_cell("n/a") + parse_cell("–"))
    report = (ROOT / "docs" / "RESULTS_full-tuned_before-issue-18.md").read_text()  # archived: its numbers stay
    tables = read_report_tables(report)
    val = {r["method"]: r for r in tables["Validation, cost and equal wall-clock"]}
    assert val["clip"]["final val R@1"] == "6.1 ± 0.2"
    test = tables["Test sets, final epoch"]
    assert len(test) == 16 and test[0]["uniclip (n=3)"] == "12.1 ± 2.8"
    (tmp_path / "RESULTS.md").write_text(report)
    written = images_from_report(tmp_path / "RESULTS.md", tmp_path / "img", "full-tuned")
    assert sorted(p.name for p in written) == sorted(
        f"full-tuned_{n}.png" for n in ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "validation")
    )
    for p in written:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 60_000
