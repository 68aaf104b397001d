"""The study's validation split and curve analyses (harness/study.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from uniclip_plugin.data.common import read_shards
from uniclip_plugin.study import analysis as study
from uniclip_plugin.testing.synthetic import build_synthetic_eval


def _curve(points: list[tuple[int, float, float]]) -> list[dict]:
    return [{"epoch": i + 1, "step": s, "seconds": t, "val_r1": v} for i, (s, t, v) in enumerate(points)]


def test_best_epoch_interpolation_and_first_reach() -> None:
    c = _curve([(10, 5.0, 1.0), (20, 10.0, 4.0), (30, 15.0, 4.0), (40, 20.0, 3.0)])
    assert study.best_epoch(c) == 2  # tie between epochs 2 and 3 goes to the earlier one
    assert study.value_at(c, "step", 15) == 2.5 and study.value_at(c, "seconds", 12.5) == 4.0
    assert math.isnan(study.value_at(c, "step", 5)) and math.isnan(study.value_at(c, "step", 45))
    assert study.first_reach(c, 2.5) == 15 and study.first_reach(c, 1.0) == 10
    assert math.isnan(study.first_reach(c, 4.5))


def test_data_efficiency_is_the_fraction_of_the_baselines_steps() -> None:
    curves = {
        "clip": {"0": _curve([(10, 1, 1.0), (20, 2, 2.0), (40, 4, 3.0)])},
        "uniclip": {"0": _curve([(10, 1, 2.0), (20, 2, 4.0), (40, 4, 5.0)])},
    }
    (row,) = study.data_efficiency(curves)
    assert row["target_val_r1"] == 3.0 and row["steps_to_reach"] == 15 and row["fraction"] == 15 / 40
    curves["uniclip"]["0"] = _curve([(10, 1, 0.5), (40, 4, 1.0)])
    assert math.isnan(study.data_efficiency(curves)[0]["fraction"])  # never reached


def test_validation_and_test_retrieval_sets_are_disjoint_and_complete(tmp_path: Path) -> None:
    build_synthetic_eval(tmp_path / "wds", res=16, n_per_class=4)
    info = study.build_study_splits(tmp_path, retrieval="synth_retrieval", classification="synth_shapes")
    val = [s["__key__"] for s in read_shards(info["val"])]
    test_dir = Path(info["test"]) / "test"
    n = int((test_dir / "nshards.txt").read_text())
    test = [s["__key__"] for i in range(n) for s in read_shards(str(test_dir / f"{i}.tar"))]
    full = [
        s["__key__"]
        for s in read_shards(sorted(str(p) for p in (tmp_path / "wds" / "synth_retrieval" / "test").glob("*.tar")))
    ]
    assert not set(val) & set(test) and sorted(val + test) == sorted(full)
    assert (info["val_samples"], info["test_samples"]) == (len(val), len(test)) and val and test
    again = study.build_study_splits(tmp_path, retrieval="synth_retrieval", classification="synth_shapes")
    assert again == info == json.loads((tmp_path / "val" / "study_splits.json").read_text())  # idempotent


def test_tone_confusions_split_top1_into_hit_tone_confusion_and_other_miss() -> None:
    import torch

    from uniclip_plugin.bench.tone_confusions import classify_top1, tone_free

    assert tone_free("Man: Medium-Dark skin tone, red hair") == tone_free("man: light skin tone, red hair")
    assert tone_free("man: dark skin tone") != tone_free("woman: dark skin tone")
    captions = ["man: light skin tone", "man: dark skin tone", "chicken", "kiss: light skin tone, dark skin tone"]
    sim = torch.eye(4)
    sim[0, 1] = 2.0  # image 0's top caption: the same man in another tone
    sim[2, 3] = 2.0  # image 2's top caption: another emoji
    r = classify_top1(sim, captions)
    assert (r["i2t_r1"], r["i2t_tone_confusion"], r["i2t_other_miss"]) == (0.5, 0.25, 0.25)
    assert r["i2t_r1_tone_free"] == 0.75
    # text → image: caption 1's top image is image 0 (tone confusion), caption 3's is image 2 (other)
    assert (r["t2i_r1"], r["t2i_tone_confusion"], r["t2i_other_miss"]) == (0.5, 0.25, 0.25)
    assert r["queries_with_tone_variants"] == 0.5


def test_report_quotes_commands_relative_to_the_project_root(tmp_path: Path) -> None:
    import sys

    from uniclip_plugin.study.report import relative_command

    root = tmp_path / "project"
    cmd = [
        sys.executable,
        "-m",
        "uniclip_plugin.cli",
        "train",
        "--train-data",
        str(root / "data" / "pretrain" / "emoji-{000000..000007}.tar"),
        "--logs",
        str(root / "runs" / "quick"),
        "--models",
        f"u@best-seed0={root}/runs/quick/u-seed0/checkpoints/epoch_5.pt:UniCLIP-Tiny-32",
    ]
    assert relative_command(cmd, root) == (
        "python -m uniclip_plugin.cli train --train-data data/pretrain/emoji-{000000..000007}.tar --logs runs/quick "
        "--models u@best-seed0=runs/quick/u-seed0/checkpoints/epoch_5.pt:UniCLIP-Tiny-32"
    )
    assert relative_command(["--out", str(root), "--data", str(tmp_path / "data")], root) == "--out . --data ../data"
