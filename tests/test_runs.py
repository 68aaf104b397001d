"""The run-folder reader (``uniclip_plugin.runs``) on small hand-written runs of both trainers."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from uniclip_plugin.runs import RunDir, parse_run_name, run_name
from uniclip_plugin.study.run import keep_final_and_best


def _ckpt(path: Path, epoch: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "name": "x", "state_dict": {}}, path)
    return path


def _open_clip_run(root: Path) -> Path:
    """An open_clip_train run: params.txt, command.json, three epochs, results.jsonl and out.log."""
    run = root / "uniclip-seed2"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text(
        "batch_size: 32\nlr: 0.001\nmodel: UniCLIP-Tiny-32\nname: uniclip-seed2\ntrain_data: /x/{0..3}.tar\n"
    )
    (run / "command.json").write_text(json.dumps(["python", "-m", "uniclip_plugin.cli", "train"]))
    for n in (1, 2, 10):
        _ckpt(run / "checkpoints" / f"epoch_{n}.pt", n)
    lines = [
        {"epoch": 0, "image_to_text_R@1": 0.1, "text_to_image_R@1": 0.3, "clip_val_loss": 4.0},
        {"epoch": 1, "image_to_text_R@1": 0.2, "text_to_image_R@1": 0.4},
        {"epoch": 1, "image_to_text_R@1": 0.3, "text_to_image_R@1": 0.5, "clip_val_loss": 3.0},  # resumed
        {"epoch": 2, "zeroshot": 1.0},
    ]  # no retrieval metrics: not a validation point
    (run / "checkpoints" / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (run / "out.log").write_text(
        "2026-01-01,00:00:00 | INFO | Start epoch 0\n"
        "2026-01-01,00:00:01 | INFO | Train Epoch: 0 [  64/256 (25%)] Data (t): 0.010 Batch (t): 0.100, 640.0/s, "
        "640.0/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 4.1000 (4.1000) Loss: 4.1000 (4.1000)\n"
        "2026-01-01,00:00:02 | INFO | Train Epoch: 1 [ 256/256 (100%)] Data (t): 0.020 Batch (t): 0.300, 640.0/s, "
        "640.0/s/gpu LR: 1.0000e-05 Logit Scale: 14.286 Mpnce_loss: 3.5000e-01 (1.2) Loss: 3.5000e-01 (1.2)\n"
        "2026-01-01,00:00:03 | INFO | Train Epoch: 1 [ 256/256 (100%)] Data (t): 0.030 Batch (t): 0.200, 640.0/s, "
        "640.0/s/gpu LR: 1.0000e-05 Logit Scale: 14.286 Mpnce_loss: nan (1.2) Loss: nan (1.2)\n"
    )
    return run


def _deepspeed_run(root: Path) -> Path:
    """A DeepSpeed trainer run: params.txt, ds_config.json, metrics.jsonl (with a cut line), exports, out.log."""
    run = root / "ds-s1"
    run.mkdir(parents=True)
    (run / "params.txt").write_text("batch_size: None\nloss: clip\nmodel: CLIP-Tiny-32\nname: ds-s1\n")
    (run / "ds_config.json").write_text(
        json.dumps({"train_batch_size": 64, "gradient_accumulation_steps": 2, "train_micro_batch_size_per_gpu": 16})
    )
    rows = [{"step": 1, "session": "a", "epoch": 0, "loss": 4.0, "lr": 0.0}, {"step": 2, "session": "a", "loss": 3.5}]
    resumed = [{"step": 2, "session": "b", "epoch": 0, "loss": 3.4}, {"step": 3, "session": "b", "loss": 3.0}]
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows)
        + '\n{"step": 3, "lo\n'
        + "\n".join(json.dumps(r) for r in resumed)
        + "\n"
    )
    # the log's own line format is not what the curve is read from
    (run / "out.log").write_text(
        "2026 | INFO | Train Epoch: 0 [32/256 (12%)] step 1/8 Loss: 9.0 LR: 1e-4 9 samples/s\n"
    )
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    (run / "checkpoints" / "LATEST").write_text("step_3\n")
    _ckpt(run / "export" / "step_5.pt", 0)
    _ckpt(run / "export" / "step_40.pt", 0)
    return run


def test_run_names_round_trip() -> None:
    assert run_name("clip-aug", 3) == "clip-aug-seed3"
    assert run_name("uniclip", 0, 2e-3) == "uniclip-lr0.002-seed0"
    assert parse_run_name("clip-aug-seed3") == ("clip-aug", 3)
    assert parse_run_name("uniclip-s1") == ("uniclip", 1)
    assert parse_run_name("uniclip-lr0.002-seed0") == ("uniclip-lr0.002", 0)
    assert parse_run_name("uniclip-nodsim") == ("uniclip-nodsim", None)
    assert parse_run_name("uniclip@best-seed0") == ("uniclip@best", 0)


def test_open_clip_train_run(tmp_path: Path) -> None:
    run = RunDir(_open_clip_run(tmp_path))
    assert (run.name, run.method, run.seed) == ("uniclip-seed2", "uniclip", 2)
    assert run.params()["lr"] == "0.001" and run.params()["train_data"] == "/x/{0..3}.tar"
    assert run.model_name() == "UniCLIP-Tiny-32"
    assert run.command() == ["python", "-m", "uniclip_plugin.cli", "train"]
    assert [p.name for p in run.checkpoints()] == ["epoch_1.pt", "epoch_2.pt", "epoch_10.pt"]  # numeric order
    assert run.latest_checkpoint() == run.path / "checkpoints" / "epoch_10.pt"
    assert run.epoch_checkpoint(2) == run.path / "checkpoints" / "epoch_2.pt"
    assert not run.has_sharded_checkpoint()
    curve = run.val_curve(steps_per_epoch=4, start=None)
    assert [(p["epoch"], p["step"]) for p in curve] == [(0, 0), (1, 4)]
    assert curve[0]["seconds"] == 0.0 and math.isnan(curve[1]["seconds"])  # no start: nan after epoch 0
    assert curve[1]["val_r1"] == 40.0 and curve[1]["val_loss"] == 3.0  # the resumed line wins
    start = os.stat(run.epoch_checkpoint(1)).st_mtime - 5.0
    assert run.val_curve(4, start)[1]["seconds"] == 5.0
    loss = run.loss_curve()
    assert loss[0] == (64, 4.1) and loss[1][0] == 512 and math.isnan(loss[1][1])  # a repeated step keeps its last
    assert run.step_seconds() == [0.1, 0.3, 0.2] and run.step_seconds("Data") == [0.01, 0.02, 0.03]


def test_pruned_checkpoints_keep_their_place_on_the_wall_clock_axis(tmp_path: Path) -> None:
    run = RunDir(_open_clip_run(tmp_path))
    for n in (1, 2, 10):  # distinct save times, one second apart
        os.utime(run.epoch_checkpoint(n), (1000.0 + n, 1000.0 + n))
    lines = [
        {"epoch": n, "image_to_text_R@1": r, "text_to_image_R@1": r, "clip_val_loss": 1.0}
        for n, r in ((1, 0.2), (2, 0.5), (10, 0.3))
    ]
    (run.path / "checkpoints" / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    before = run.val_curve(4, start=1000.0)
    assert [p["seconds"] for p in before] == [1.0, 2.0, 10.0]
    keep_final_and_best(run, 10)  # the best validation epoch is 2
    assert [p.name for p in run.checkpoints()] == ["epoch_2.pt", "epoch_10.pt"]
    assert run.val_curve(4, start=1000.0) == before
    assert run.prune_checkpoints({10}) == [run.epoch_checkpoint(2)]
    assert run.prune_checkpoints({10}) == []  # nothing left to delete; the recorded times stay
    assert run.val_curve(4, start=1000.0) == before


def test_loss_metrics_average_the_last_logged_lines(tmp_path: Path) -> None:
    run = RunDir(_open_clip_run(tmp_path))
    assert run.loss_metrics() == {}  # no "Loss metrics:" line
    lines = [
        f"2026-01-01,00:00:0{i} | INFO | Loss metrics: loss_it: {v} prob_it: {p} scale_tt: 1.5e+01"
        for i, (v, p) in enumerate([("9.0", "0.5"), ("3.0", "0.1"), ("2.0", "nan"), ("4.0", "0.3")])
    ]
    with open(run.path / "out.log", "a") as f:
        f.write("\n".join(lines) + "\n")
    last3 = run.loss_metrics(last=3)
    assert last3["loss_it"] == 3.0 and last3["scale_tt"] == 15.0 and math.isnan(last3["prob_it"])
    assert run.loss_metrics(last=1) == {"loss_it": 4.0, "prob_it": 0.3, "scale_tt": 15.0}


def test_epoch_latest_wins_only_when_it_holds_a_later_epoch(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "clip")
    _ckpt(run.path / "checkpoints" / "epoch_2.pt", 2)
    _ckpt(run.path / "checkpoints" / "epoch_latest.pt", 2)
    assert run.latest_checkpoint() == run.path / "checkpoints" / "epoch_2.pt"
    _ckpt(run.path / "checkpoints" / "epoch_latest.pt", 3)
    assert run.latest_checkpoint() == run.path / "checkpoints" / "epoch_latest.pt"
    assert [p.name for p in run.checkpoints()] == ["epoch_2.pt"]


def test_deepspeed_run(tmp_path: Path) -> None:
    run = RunDir(_deepspeed_run(tmp_path))
    assert (run.method, run.seed, run.model_name()) == ("ds", 1, "CLIP-Tiny-32")
    assert run.command() is None
    assert [p.name for p in run.checkpoints()] == ["step_5.pt", "step_40.pt"]
    assert run.latest_checkpoint() == run.path / "export" / "step_40.pt"
    assert run.has_sharded_checkpoint()
    # metrics.jsonl, not the log: 64 / 2 = 32 samples per step; the resumed session's step 2 wins; the cut line is
    # skipped
    assert run.loss_curve() == [(32, 4.0), (64, 3.4), (96, 3.0)]
    assert run.val_curve(4, None) == []


def test_an_empty_or_missing_folder_reads_as_nothing(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "nothing")
    assert run.params() == {} and run.model_name() is None and run.command() is None
    assert run.checkpoints() == [] and run.latest_checkpoint() is None
    assert run.loss_curve() == [] and run.step_seconds() == [] and run.val_curve(1, None) == []
