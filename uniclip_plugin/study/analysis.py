"""The study's validation split and its analyses: per-epoch validation curves, best epoch, equal wall-clock, data
efficiency, learned per-domain-pair similarity (used by the study, ``uniclip_plugin.study.cli``; ``harness/perf.py``
reads the curves it writes).

Validation split (study policy, never a test set): the held-out style's linear-probe *train* concepts (896 OpenMoji
images with their captions; ``heldout_emoji_group/train``) become ``<data>/val/heldout-val-000000.tar``, which
open_clip_train evaluates after every epoch (``--val-data``: image↔text R@1 over the whole set, written to
``checkpoints/results.jsonl``). The retrieval test set shares those concepts, so a second retrieval set,
``wds/heldout_emoji_retrieval_test``, holds only the other 956 concepts: numbers at the epoch chosen on validation
are reported on it and on the classification test splits, which never contain a validation image.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from pathlib import Path
from typing import Any, Optional

from uniclip_plugin.data.common import SHARD_MTIME, fresh_tmp_dir, publish_dir, read_shards
from uniclip_plugin.io import atomic_path, write_text_atomic
from uniclip_plugin.runs import RunDir, run_name

VAL_NAME = "heldout-val-000000.tar"
TEST_SHARDS = 4  # clip_benchmark's CLI reads with 4 workers; each needs a shard


def read_samples(split_dir: Path) -> list[dict]:
    """Every sample of a webdataset split (``nshards.txt`` + ``<i>.tar``) as ``{extension: bytes, "__key__": key}``."""
    n = int((split_dir / "nshards.txt").read_text().strip())
    urls = [str(split_dir / f"{i}.tar") for i in range(n)]
    return [{k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"} for s in read_shards(urls)]


def _write_tar(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(path), mtime=SHARD_MTIME) as sink:
        for s in samples:
            sink.write(s)


def build_study_splits(
    data: Path, retrieval: str = "heldout_emoji_retrieval", classification: str = "heldout_emoji_group", seed: int = 0
) -> dict[str, Any]:
    """Write the validation shard and the disjoint retrieval test set (idempotent: kept when newer than the sources).

    Validation keys: the retrieval samples whose key is in ``<classification>/train``; when none are (generated
    data), a seeded half of the retrieval set.

    Returns:
        ``{"val": path of the tar, "val_samples": n, "test": folder of the retrieval test set, "test_samples": m}``.
    """
    wds_dir = data / "wds"
    src = wds_dir / retrieval / "test"
    val_dir, test_dir = data / "val", wds_dir / f"{retrieval}_test"
    record = data / "val" / "study_splits.json"
    newest_source = max(p.stat().st_mtime for p in [*src.iterdir(), *(wds_dir / classification).rglob("*")])
    if record.is_file() and record.stat().st_mtime >= newest_source and test_dir.is_dir():
        return json.loads(record.read_text())
    samples = read_samples(src)
    train_dir = wds_dir / classification / "train"
    val_keys = {s["__key__"] for s in read_samples(train_dir)} if train_dir.is_dir() else set()
    val_keys &= {s["__key__"] for s in samples}
    if not val_keys:
        keys = sorted(s["__key__"] for s in samples)
        val_keys = set(random.Random(seed).sample(keys, len(keys) // 2))
    val = [s for s in samples if s["__key__"] in val_keys]
    test = [s for s in samples if s["__key__"] not in val_keys]
    tmp = fresh_tmp_dir(val_dir)
    _write_tar(tmp / VAL_NAME, val)
    publish_dir(tmp, val_dir)
    tmp = fresh_tmp_dir(test_dir)
    (tmp / "test").mkdir()
    shards = min(TEST_SHARDS, len(test))
    for i in range(shards):
        _write_tar(tmp / "test" / f"{i}.tar", test[i * len(test) // shards : (i + 1) * len(test) // shards])
    (tmp / "test" / "nshards.txt").write_text(f"{shards}\n")
    for meta in (wds_dir / retrieval).glob("*.txt"):
        (tmp / meta.name).write_bytes(meta.read_bytes())
    publish_dir(tmp, test_dir)
    info = {"val": str(val_dir / VAL_NAME), "val_samples": len(val), "test": str(test_dir), "test_samples": len(test)}
    write_text_atomic(record, json.dumps(info, indent=2))
    return info


def val_curve(run_dir: Path, steps_per_epoch: int, start: Optional[float]) -> list[dict[str, float]]:
    """Per-epoch validation points of one run from open_clip_train's ``checkpoints/results.jsonl``.

    Returns:
        ``[{"epoch", "step", "seconds", "val_r1", "val_i2t_r1", "val_t2i_r1", "val_loss"}]`` sorted by epoch; ``val_r1``
        is the mean of image→text and text→image R@1 in %; ``seconds`` is the wall-clock from the start of training
        to the epoch's checkpoint (nan without a recorded start, e.g. a resumed run). See
        ``uniclip_plugin.runs.RunDir.val_curve``.
    """
    return RunDir(run_dir).val_curve(steps_per_epoch, start)


def best_epoch(curve: list[dict[str, float]]) -> Optional[int]:
    """Epoch (≥ 1) with the highest validation R@1; ties go to the earlier epoch."""
    trained = [p for p in curve if p["epoch"] >= 1]
    return max(trained, key=lambda p: (p["val_r1"], -p["epoch"]))["epoch"] if trained else None


def value_at(curve: list[dict[str, float]], x_key: str, x: float) -> float:
    """Validation R@1 at ``x`` (step or seconds) by linear interpolation; nan outside the curve."""
    pts = [(p[x_key], p["val_r1"]) for p in curve if not math.isnan(p[x_key])]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float("nan")


def first_reach(curve: list[dict[str, float]], target: float, x_key: str = "step") -> float:
    """Smallest ``x`` (step or seconds) at which the interpolated validation R@1 reaches ``target``; nan if never."""
    pts = [(p[x_key], p["val_r1"]) for p in curve if not math.isnan(p[x_key])]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if y0 >= target:
            return x0
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return pts[-1][0] if pts and pts[-1][1] >= target else float("nan")


def data_efficiency(
    curves: dict[str, dict[str, list[dict]]], method: str = "uniclip", baseline: str = "clip"
) -> list[dict[str, float]]:
    """Per seed: steps for ``method`` to reach ``baseline``'s final validation R@1, as a fraction of the baseline's
    steps (the paper's data-efficiency claim; goal ≤ 0.5)."""
    rows = []
    for seed, base in sorted(curves.get(baseline, {}).items()):
        mine = curves.get(method, {}).get(seed)
        if not base or not mine:
            continue
        target, steps = base[-1]["val_r1"], base[-1]["step"]
        reach = first_reach(mine, target)
        rows.append(
            {
                "seed": seed,
                "target_val_r1": target,
                "baseline_steps": steps,
                "steps_to_reach": reach,
                "fraction": reach / steps if steps else float("nan"),
            }
        )
    return rows


def mean_std(values: list[float], digits: int = 1) -> str:
    """``mean ± std`` of the finite values with ``digits`` decimals (just the mean for one value; ``n/a`` for
    none)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    spread = f" ± {statistics.stdev(finite):.{digits}f}" if len(finite) > 1 else ""
    return f"{statistics.mean(finite):.{digits}f}" + spread


def _mean_curve(per_seed: dict[str, list[dict]], key: str) -> list[tuple[float, float]]:
    """The seeds' mean (x, validation R@1) per epoch that every seed reached, with x = mean ``key`` (step or
    seconds); epochs where a seed's x is unknown (nan) are left out."""
    curves = [{p["epoch"]: p for p in c} for c in per_seed.values() if c]
    if not curves:
        return []
    epochs = sorted(set.intersection(*(set(c) for c in curves)))
    points = []
    for e in epochs:
        xs = [c[e][key] for c in curves]
        if not any(math.isnan(x) for x in xs):
            points.append((statistics.mean(xs), statistics.mean(c[e]["val_r1"] for c in curves)))
    return points


def validation_figure(curves: dict[str, dict[str, list[dict]]]) -> Optional[Any]:
    """Validation R@1 against training step and against wall-clock: one colour per method, each seed a thin line of
    that colour and the seeds' mean a thick one (labelled); None without any point."""
    if not any(c for per_seed in curves.values() for c in per_seed.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (method, per_seed) in enumerate(curves.items()):
        colour = f"C{i % 10}"  # the method's colour, whatever its number of seeds
        for ax, key in zip(axes, ("step", "seconds"), strict=True):
            for _, curve in sorted(per_seed.items()):
                pts = [(p[key], p["val_r1"]) for p in curve if not math.isnan(p[key])]
                if pts and len(per_seed) > 1:
                    ax.plot(*zip(*pts, strict=True), color=colour, lw=0.8, alpha=0.45)
            mean = _mean_curve(per_seed, key)
            if mean:
                ax.plot(
                    *zip(*mean, strict=True),
                    color=colour,
                    lw=2.2,
                    marker="o",
                    ms=3,
                    label=method + (f" (mean of {len(per_seed)} seeds)" if len(per_seed) > 1 else ""),
                )
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock (s, this machine)")
    for ax in axes:
        ax.set_ylabel("validation R@1 (%, mean of i→t and t→i)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def curves_plot(
    curves: dict[str, dict[str, list[dict]]], out: Path, name: str = "validation_curves.png", dpi: int = 110
) -> Optional[Path]:
    """``<out>/<name>``: :func:`validation_figure` saved atomically; None without any point."""
    fig = validation_figure(curves)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    path = out / name
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def learned_similarity(checkpoint: Path) -> Optional[dict[str, list[float]]]:
    """Per-domain-pair temperature (1/scale) and offset of a UniCLIP checkpoint; None for other models."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if sd.get("logit_scale") is None or sd["logit_scale"].numel() != 3:
        return None
    scales = sd["logit_scale"].clamp(0, 4.6052).exp()
    return {"temperature": (1 / scales).tolist(), "offset": sd["logit_bias"].tolist()}


def _method_row(
    name: str, per_seed: dict[str, list[dict]], seconds: list[float], steps: int, budget: float
) -> dict[str, Any]:
    """One method's row of ``analysis.json``: cost, final and best validation R@1, best epochs, value at budget."""
    curves = [c for c in per_seed.values() if c]
    return {
        "method": name,
        "seconds_per_run": statistics.mean(seconds) if seconds else float("nan"),
        "seconds_per_step": (statistics.mean(seconds) / steps) if seconds else float("nan"),
        "final_val_r1": [c[-1]["val_r1"] for c in curves],
        "best_epochs": [best_epoch(c) for c in curves],
        "best_val_r1": [max(p["val_r1"] for p in c if p["epoch"] >= 1) for c in curves],
        "val_r1_at_budget": [value_at(c, "seconds", budget) for c in curves],
    }


def analyse(
    methods: list[str],
    epochs: int,
    runs: Path,
    seeds: dict[str, int],
    steps_per_epoch: int,
    timings: dict[str, list[dict]],
) -> dict:
    """Validation curves, best epochs, equal-wall-clock values and data efficiency of every run (→ curves.json).

    Args:
        methods: method names, in report order.
        epochs: epochs of every run.
        runs: the folder of the runs (``<method>-seed<N>``).
        seeds: seeds per method.
        steps_per_epoch: optimiser steps per epoch.
        timings: per method, per seed, ``{"seconds", "start"}`` of its training.

    Returns:
        ``{"curves", "budget_seconds", "rows", "steps_per_epoch", "data_efficiency"}``.
    """
    curves: dict[str, dict[str, list[dict]]] = {}
    for m in methods:
        for seed in range(seeds[m]):
            start = timings[m][seed]["start"] if seed < len(timings.get(m, [])) else None
            curves.setdefault(m, {})[str(seed)] = val_curve(runs / run_name(m, seed), steps_per_epoch, start)
    # Equal wall-clock budget: the time at which the cheapest method's last validation point was reached
    lasts = [[c[-1]["seconds"] for c in per_seed.values() if c] for per_seed in curves.values()]
    finite = [statistics.mean(v) for v in lasts if v and not any(math.isnan(x) for x in v)]
    budget = min(finite) if finite else float("nan")
    rows = [
        _method_row(m, curves.get(m, {}), [t["seconds"] for t in timings.get(m, [])], epochs * steps_per_epoch, budget)
        for m in methods
    ]
    return {
        "curves": curves,
        "budget_seconds": budget,
        "rows": rows,
        "steps_per_epoch": steps_per_epoch,
        "data_efficiency": data_efficiency(curves),
    }
