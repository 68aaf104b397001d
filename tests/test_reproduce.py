"""CI smoke of the study driver on generated data: every stage runs and the report is written."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reproduce_smoke_writes_the_report(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [
        sys.executable,
        "harness/reproduce.py",
        "--profile",
        "smoke",
        "--synthetic",
        "--out",
        str(tmp_path),
        "--data",
        str(tmp_path / "data"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # feedback on long work: "run k of N" per run, each child's output in a file of its run folder, not on stdout
    assert "run 1 of 5: clip seed 0" in proc.stdout and "run 5 of 5: uniclip seed 0" in proc.stdout
    assert "Train Epoch" in (tmp_path / "runs" / "smoke" / "clip-seed0" / "train_output.log").read_text()
    report = (tmp_path / "RESULTS_smoke.md").read_text()
    methods = ("uniclip", "clip", "clip-aug", "slip", "declip")
    for method in methods:
        assert f"**{method}**" in report
        assert f"| {method} | " in report  # validation / cost / equal wall-clock row
    assert (
        "| dataset | task | metric | uniclip (n=1) | clip (n=1) | clip-aug (n=1) | slip (n=1) | declip (n=1) |"
        in report
    )
    assert "| uniclip-seed0 |" in report  # learned per-domain-pair temperatures and offsets
    summary = report[report.index("## Summary") : report.index("## Methods")]
    assert all(f"| {method} | 0.001 | " in summary for method in methods)  # the table README quotes
    assert "## UniCLIP's objective at the end of training" in report and "| uniclip | 1 | " in report
    assert "Data efficiency" in report and "validation_curves.png" in report
    # 4 evaluations per run: shapes zero-shot + probe, the full retrieval set, the validation-disjoint retrieval set
    assert len(list((tmp_path / "results" / "smoke" / "json").glob("*.json"))) == len(methods) * 4
    curves = json.loads((tmp_path / "results" / "smoke" / "curves.json").read_text())
    assert set(curves) == set(methods) and all(len(c["0"]) == 2 for c in curves.values())  # a point per epoch
    # a second call trains nothing again (resumable)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "reused (already trained)" in proc.stdout and "done in" not in proc.stdout


@pytest.mark.slow
def test_tuning_picks_each_methods_lr_on_validation_and_trains_with_it(tmp_path: Path) -> None:
    """--tune: every method gets the same lr grid (seed 0, validation split only); the study then trains each method
    at the lr with the best validation R@1 and the report shows the grid."""
    from uniclip_plugin.study import analysis as study
    from uniclip_plugin.study.plan import TUNE_LRS
    from uniclip_plugin.study.run import choose_lr

    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [
        sys.executable,
        "harness/reproduce.py",
        "--profile",
        "smoke",
        "--synthetic",
        "--out",
        str(tmp_path),
        "--data",
        str(tmp_path / "data"),
        "--tune",
        "--tune-profile",
        "smoke",
        "--methods",
        "clip,uniclip",
        "--threads",
        "1",
        "--seeds",
        "2",
        "--ablations",
        "uniclip-v1",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tuning = json.loads((tmp_path / "results" / "smoke-tuned" / "tuning.json").read_text())
    assert set(tuning["scores"]) == {"clip", "uniclip"}
    for method, scores in tuning["scores"].items():
        assert [float(lr) for lr in scores] == list(TUNE_LRS)  # the same grid for every method
        chosen = tuning["chosen"][method]
        assert chosen == choose_lr({float(lr): v for lr, v in scores.items()}, 1e-3)
        # the tuning run's validation curve is the one scored: its best epoch gives the recorded value
        curve = tmp_path / "runs" / "tune-smoke" / f"{method}-lr{chosen:g}-seed0" / "checkpoints" / "results.jsonl"
        points = study.val_curve(curve.parents[1], 2, None)
        assert max(p["val_r1"] for p in points if p["epoch"] >= 1) == scores[f"{chosen:g}"]
        run = tmp_path / "runs" / "smoke-tuned" / f"{method}-seed0"
        assert f"lr: {chosen}" in (run / "params.txt").read_text()  # the study's run has the chosen lr
        assert run.resolve() == curve.parents[1].resolve()  # same profile: seed 0 is the tuning run, not retrained
        seed1 = tmp_path / "runs" / "smoke-tuned" / f"{method}-seed1"
        assert not seed1.is_symlink() and f"lr: {chosen}" in (seed1 / "params.txt").read_text()
    ablation = tmp_path / "runs" / "smoke-tuned" / "uniclip-v1-seed0" / "params.txt"  # one seed: --ablation-seeds 1
    assert f"lr: {tuning['chosen']['uniclip']}" in ablation.read_text()  # an ablation takes the tuned UniCLIP's lr
    assert not (tmp_path / "runs" / "smoke-tuned" / "uniclip-supcon-seed0").exists()  # only the named ablation
    report = (tmp_path / "RESULTS_smoke-tuned.md").read_text()
    assert "| uniclip-v1 | 0 |" in report  # the seed-matched ablation table
    assert "## Learning-rate tuning (validation split)" in report
    assert "| method | " + " | ".join(f"lr {lr:g}" for lr in TUNE_LRS) + " | chosen |" in report
    assert "1 OMP thread(s) per training process" in report


def test_choose_lr_prefers_the_best_score_then_the_default_then_the_smaller_lr() -> None:
    from uniclip_plugin.study.run import choose_lr

    assert choose_lr({5e-4: 1.0, 1e-3: 2.0, 2e-3: 3.0}, 1e-3) == 2e-3
    assert choose_lr({5e-4: 3.0, 1e-3: 3.0, 2e-3: 3.0}, 1e-3) == 1e-3
    assert choose_lr({5e-4: 3.0, 1e-3: 1.0, 2e-3: 3.0}, 1e-3) == 5e-4
    assert choose_lr({5e-4: float("nan"), 1e-3: 0.5, 2e-3: float("nan")}, 2e-3) == 1e-3


def _results_csv(folder: Path, rows: list[str]) -> Path:
    """A benchmark ``results.csv`` (the columns ``uniclip_plugin.bench`` writes) holding ``rows``."""
    path = folder / "results.csv"
    path.write_text("method,run,dataset,task,metric,value,model,checkpoint\n" + "\n".join(rows) + "\n")
    return path


def test_ablation_table_compares_each_ablation_with_the_full_model_on_the_same_seeds(tmp_path: Path) -> None:
    from uniclip_plugin.study.report import ablation_table

    results = _results_csv(
        tmp_path,
        [
            "uniclip,uniclip-seed0,heldout_emoji_group,zeroshot_classification,acc1,0.25,M,c",
            "uniclip,uniclip-seed1,heldout_emoji_group,zeroshot_classification,acc1,0.05,M,c",
            "uniclip-v1,uniclip-v1-seed0,heldout_emoji_group,zeroshot_classification,acc1,0.20,M,c",
            "uniclip-v1,uniclip-v1-seed0,fmnist,zeroshot_classification,acc1,0.5,M,c",
        ],  # no full-model value: no column
    )
    curves = [
        {"method": "uniclip", "final_val_r1": [2.0, 1.0]},
        {"method": "uniclip-v1", "final_val_r1": [1.5]},
        {"method": "uniclip-infonce", "final_val_r1": []},
    ]
    lines = ablation_table(results, curves, "uniclip", ["uniclip-v1", "uniclip-infonce"])
    assert lines[0] == "| run | seeds | final val R@1 | group zero-shot |"
    assert lines[2] == "| uniclip | 0..1 | 1.5 | 15.0 |"  # mean over its own seeds
    assert lines[3] == "| uniclip-v1 | 0 | 1.5 (Δ -0.5) | 20.0 (Δ -5.0) |"  # against the full model's seed 0
    assert lines[4] == "| uniclip-infonce | – | – | – |"


def test_a_finished_run_trained_with_other_settings_is_refused_not_reused(tmp_path: Path) -> None:
    """Widening the lr grid can change a method's chosen lr; its old run folder must then stop the study with a clear
    error instead of being reported under the new lr."""
    from uniclip_plugin.study.plan import METHODS, PROFILES
    from uniclip_plugin.study.run import stale_settings, train, train_command

    clip, prof, val = METHODS[0], PROFILES["smoke"], {"val": "unused", "val_samples": 1}
    run = tmp_path / "clip-seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / f"epoch_{prof.epochs}.pt").write_bytes(b"")
    # a run from before command.json existed: open_clip_train's params.txt is compared
    (run / "params.txt").write_text("batch_size: 32\nepochs: 2\nlr: 0.002\nmodel: CLIP-Tiny-32\nseed: 0\nwd: 0.1\n")
    with pytest.raises(SystemExit, match=r"other settings .*lr 0\.002, asked 0\.001.*delete that run folder"):
        train(clip, prof, "data", 64, tmp_path, 0, val, threads=1, lr=1e-3)
    reused = train(clip, prof, "data", 64, tmp_path, 0, val, threads=1, lr=2e-3)
    assert reused["skipped"]  # the same settings: reused, not trained
    # command.json, written when a run starts, is compared argument by argument; the interpreter and the data, val
    # and logs paths may move with the checkout
    command = reused["command"]
    (run / "command.json").write_text(json.dumps(["/old/python", *command[1:]]))
    assert stale_settings(run, command) == []
    moved = train_command(
        clip,
        prof,
        "/elsewhere/data",
        64,
        tmp_path / "moved",
        0,
        {"val": "/elsewhere/val", "val_samples": 1},
        lr=2e-3,
        name="clip-seed0",
    )
    assert stale_settings(run, moved) == []
    with pytest.raises(SystemExit, match=r"asks for \(--batch-size 32 -> 64\)"):
        train(clip, dataclasses.replace(prof, batch=64), "data", 64, tmp_path, 0, val, threads=1, lr=2e-3)


def test_tuning_over_seeds_scores_each_lr_by_its_mean_best_epoch_over_the_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--tune-seeds N: every (method, lr) trains seeds 0..N-1 (--tune-jobs side by side) and is scored by the mean
    of each seed's best-epoch validation R@1; each seed's score is kept."""
    from uniclip_plugin.study import plan
    from uniclip_plugin.study import run as study_run

    rng = __import__("random").Random(5)
    recorded: dict[tuple[str, float, int], list[float]] = {}

    def fake_train(method, prof, data, samples, runs, seed, val, threads, lr=None, name=None, **kw):  # noqa: ANN001, ANN202
        r1 = [rng.random() for _ in range(3)]  # epochs 1..3, the fraction of pairs found
        recorded[(method.name, lr, seed)] = r1
        out = runs / name / "checkpoints"
        out.mkdir(parents=True)
        rows = [{"epoch": e + 1, "image_to_text_R@1": v, "text_to_image_R@1": v} for e, v in enumerate(r1)]
        (out / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return {"seconds": 1.0, "start": None, "command": [name], "skipped": False}

    monkeypatch.setattr(study_run, "train", fake_train)
    methods = [m for m in plan.METHODS if m.name in ("clip", "uniclip")]
    tuning = study_run.tune(methods, "smoke", "d", 64, tmp_path, {}, 1, seeds=3, jobs=2)
    assert len(recorded) == 2 * len(plan.TUNE_LRS) * 3 and tuning["seeds"] == 3
    for m in ("clip", "uniclip"):
        for lr in plan.TUNE_LRS:
            best = [100 * max(recorded[(m, lr, s)]) for s in range(3)]
            assert tuning["per_seed"][m][lr] == pytest.approx(best)
            assert tuning["scores"][m][lr] == pytest.approx(sum(best) / 3)
        assert tuning["chosen"][m] == study_run.choose_lr(tuning["scores"][m], 1e-3)
    study_run.write_tuning(tmp_path / "tuning.json", tuning)
    saved = json.loads((tmp_path / "tuning.json").read_text())
    assert saved["per_seed"]["clip"]["0.001"] == pytest.approx(tuning["per_seed"]["clip"][1e-3])


def test_a_synthetic_study_never_writes_into_the_real_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    (data / "val" / "heldout-val-000000.tar").write_bytes(b"real")
    cmd = [sys.executable, "harness/reproduce.py", "--profile", "smoke", "--synthetic", "--out", str(tmp_path)]
    proc = subprocess.run(cmd + ["--data", str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--synthetic would write generated data into" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in data.rglob("*")) == ["heldout-val-000000.tar", "manifest.json", "val"]
    assert (data / "val" / "heldout-val-000000.tar").read_bytes() == b"real"


def _study_with_recorded_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, dict]:
    """A two-method, two-ablation study context (2 threads, --ablation-jobs 2) whose training only records each
    call: ``seen`` holds the calls (method, seed, side_by_side), the threads each method got, and the peak of runs
    at once."""
    import collections
    import threading
    import time

    from uniclip_plugin.study import cli, plan

    seen: dict = {"calls": [], "threads": collections.defaultdict(set), "peak": 0}
    active, lock = [0], threading.Lock()

    def fake_train(method, prof, data, samples, runs, seed, val, threads, lr=None, side_by_side=1, **kw):  # noqa: ANN001, ANN202
        with lock:
            seen["calls"].append((method.name, seed, side_by_side))
            seen["threads"][method.name].add(threads)
            active[0] += 1
            seen["peak"] = max(seen["peak"], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return {
            "seconds": 10.0,
            "start": 5.0,
            "command": [method.name, str(seed)],
            "skipped": False,
            "side_by_side": side_by_side,
        }

    monkeypatch.setattr(cli, "train", fake_train)
    main = [m for m in plan.METHODS if m.name in ("clip", "uniclip")]
    ablations = [m for m in plan.ABLATIONS if m.name in ("uniclip-v1", "uniclip-infonce")]
    seeds = {"clip": 2, "uniclip": 2, "uniclip-v1": 2, "uniclip-infonce": 1}
    ctx = {
        "methods": main + ablations,
        "seeds": seeds,
        "runs": tmp_path,
        "lrs": dict.fromkeys(seeds, 1e-3),
        "prof": plan.PROFILES["smoke"],
        "pattern": "d",
        "samples": 64,
        "val": {},
        "threads": 2,
        "progress_every": 60.0,
        "ablation_jobs": 2,
    }
    return ctx, seen


def test_main_runs_train_one_at_a_time_then_ablations_side_by_side_without_a_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ablation-jobs N: the main methods' runs train alone (their wall-clock is compared), then the ablations N at
    a time; those runs' wall-clock is recorded as shared and left out of the cost and equal-wall-clock figures."""
    import math

    from uniclip_plugin.study import cli

    ctx, seen = _study_with_recorded_training(tmp_path, monkeypatch)
    timings, commands = cli._train_all(ctx)
    calls = seen["calls"]
    assert calls[:4] == [("clip", 0, 1), ("clip", 1, 1), ("uniclip", 0, 1), ("uniclip", 1, 1)]
    assert sorted(calls[4:]) == [("uniclip-infonce", 0, 2), ("uniclip-v1", 0, 2), ("uniclip-v1", 1, 2)]
    assert seen["peak"] == 2  # the ablations did train side by side
    assert [(t["seconds"], t["start"]) for t in timings["clip"] + timings["uniclip"]] == [(10.0, 5.0)] * 4
    shared = timings["uniclip-v1"] + timings["uniclip-infonce"]
    assert len(shared) == 3 and all(math.isnan(t["seconds"]) and t["start"] is None for t in shared)
    assert commands[:4] == [["clip", "0"], ["clip", "1"], ["uniclip", "0"], ["uniclip", "1"]] and len(commands) == 7


def test_runs_side_by_side_split_the_threads_unless_threads_sets_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from uniclip_plugin.study import cli

    ctx, seen = _study_with_recorded_training(tmp_path, monkeypatch)
    cli._train_all(ctx)
    # 2 runs with 2 threads each on 2 cores ran 3x slower than with 1 each
    assert dict(seen["threads"]) == {"clip": {2}, "uniclip": {2}, "uniclip-v1": {1}, "uniclip-infonce": {1}}
    seen["threads"].clear()
    cli._train_all({**ctx, "threads_given": True})  # --threads 2: every run gets 2
    assert set().union(*seen["threads"].values()) == {2}


def test_report_says_how_many_threads_the_runs_side_by_side_had() -> None:
    import types

    from uniclip_plugin.study.cli import _side_by_side_threads
    from uniclip_plugin.study.report import _threads_text

    alone, beside, old = {"side_by_side": 1, "threads": 2}, {"side_by_side": 2, "threads": 1}, {"side_by_side": 2}
    assert _side_by_side_threads({"clip": [alone], "uniclip-v1": [beside, beside]}) == 1
    assert _side_by_side_threads({"clip": [alone]}) is None
    assert _side_by_side_threads({"uniclip-v1": [beside, old]}) is None  # an older run without a record: unknown
    text = _threads_text(types.SimpleNamespace(threads=2, side_by_side_threads=1))
    assert text == "2 OMP thread(s) per training process (1 for each of the runs trained side by side)"
    assert (
        _threads_text(types.SimpleNamespace(threads=1, side_by_side_threads=1))
        == "1 OMP thread(s) per training process"
    )
    assert _threads_text(types.SimpleNamespace(threads=2, side_by_side_threads=None)).endswith("training process")


def test_report_gives_runs_trained_side_by_side_no_cost() -> None:
    """The report names the runs trained side by side, and the header's training time sums only the runs trained
    alone."""
    import types

    from uniclip_plugin.study.report import _shared_machine_note, _trained_text

    rows = [{"method": "clip", "seconds_per_run": 10.0}, {"method": "uniclip-v1", "seconds_per_run": float("nan")}]
    note = _shared_machine_note(types.SimpleNamespace(analysis={"rows": rows}))
    assert note.startswith(" uniclip-v1: trained side by side") and "clip," not in note
    assert _shared_machine_note(types.SimpleNamespace(analysis={"rows": rows[:1]})) == ""
    rows = [
        {"method": "clip", "seconds_per_run": 60.0, "final_val_r1": [1.0, 2.0]},
        {"method": "uniclip-v1", "seconds_per_run": float("nan"), "final_val_r1": [1.0, 2.0, 3.0]},
    ]
    text = _trained_text(types.SimpleNamespace(analysis={"rows": rows}, reused=0))
    assert text.startswith("the 2 of the 5 training runs that trained alone took 2.0 min in all")
    assert text.endswith("the other 3 trained side by side and are not timed")
    text = _trained_text(types.SimpleNamespace(analysis={"rows": rows[:1]}, reused=0))
    assert text == "the 2 training runs took 2.0 min in all, each timed when it was trained"


def test_summary_table_gives_each_method_its_lr_and_mean_over_its_own_seeds(tmp_path: Path) -> None:
    from uniclip_plugin.study.report import summary_table

    results = _results_csv(
        tmp_path,
        [
            "clip,clip-seed0,heldout_emoji_retrieval_test,zeroshot_retrieval,image_retrieval_recall@1,0.06,M,c",
            "clip,clip-seed1,heldout_emoji_retrieval_test,zeroshot_retrieval,image_retrieval_recall@1,0.08,M,c",
            "clip,clip-seed0,digits,linear_probe,lp_acc1,0.5,M,c",
            "clip,clip-seed1,digits,linear_probe,lp_acc1,0.7,M,c",
            "uniclip,uniclip-seed0,heldout_emoji_group,linear_probe,lp_acc1,0.25,M,c",
            "uniclip,uniclip-seed0,digits,zeroshot_classification,acc1,0.9,M,c",  # not a summary column
        ],
    )
    curves = [
        {"method": "clip", "final_val_r1": [2.0, 4.0], "seconds_per_step": 0.25},
        {"method": "uniclip", "final_val_r1": [3.0], "seconds_per_step": float("nan")},
    ]
    lines = summary_table(results, curves, {"clip": 2e-3, "uniclip": 1e-3})
    assert lines[0] == (
        "| method | lr | val R@1 (final) | test image R@1 | test text R@1 | emoji-group probe | digits probe "
        "| s / step |"
    )
    assert lines[2] == "| clip | 0.002 | 3.0 ± 1.4 | 7.0 ± 1.4 | n/a | n/a | 60.0 ± 14.1 | 0.250 |"
    assert lines[3] == "| uniclip | 0.001 | 3.0 | n/a | n/a | 25.0 | n/a | n/a |"


def test_objective_table_shows_each_uniclip_methods_group_metrics_over_its_seeds(tmp_path: Path) -> None:
    from uniclip_plugin.study.report import OBJECTIVE_METRICS, objective_table

    def run(name: str, values: dict[str, float]) -> None:
        (tmp_path / name).mkdir()
        fields = " ".join(f"{k}: {v}" for k, v in values.items())
        (tmp_path / name / "out.log").write_text(f"2026 | INFO | Loss metrics: {fields}\n")

    base = dict.fromkeys(OBJECTIVE_METRICS, 1.0)
    run("uniclip-seed0", {**base, "loss_it": 2.0})
    run("uniclip-seed1", {**base, "loss_it": 4.0})
    run("slip-seed0", {"simclr_acc": 0.5})  # another method's metrics: no row
    lines = objective_table(tmp_path, [("uniclip", 2), ("slip", 1), ("clip", 1)])
    assert lines[4] == "| method | seeds | " + " | ".join(OBJECTIVE_METRICS) + " |"
    assert lines[6:] == ["| uniclip | 2 | 3.000 ± 1.414 | " + " | ".join(["1.000 ± 0.000"] * 5) + " |"]
    assert objective_table(tmp_path, [("slip", 1)]) == []


def test_ablations_take_the_tuned_uniclip_lr_and_a_reference_row_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from uniclip_plugin.study import cli, plan

    chosen = {"clip": 1e-3, "uniclip": 4e-3}
    searched_with: list[int] = []

    def fake_tune(methods, prof_name, data, data_samples, runs, val, threads, **kw):  # noqa: ANN001, ANN202
        searched_with.append(threads)
        return {"chosen": chosen, "methods": [m.name for m in methods]}

    monkeypatch.setattr(cli, "tune", fake_tune)
    monkeypatch.setattr(cli, "write_tuning", lambda path, tuning: None)
    pick = {m.name: m for m in plan.METHODS + plan.ABLATIONS}
    methods = [pick[n] for n in ("clip", "uniclip", "uniclip-v1", "clip-lr2e-3")]
    ctx = {
        "out": tmp_path,
        "runs": tmp_path / "runs",
        "results": tmp_path / "results",
        "methods": methods,
        "lrs": {m.name: m.lr or 1e-3 for m in methods},
        "prof": plan.PROFILES["full"],
        "pattern": "d",
        "data_samples": 64,
        "val": {},
        "threads": 1,
        "progress_every": 60.0,
    }
    args = argparse.Namespace(tune=True, tune_profile="third", tune_seeds=2, tune_jobs=2, profile="full")
    tuning = cli._tune_stage(args, ctx)
    assert tuning["methods"] == ["clip", "uniclip"]  # only the main methods are searched
    assert searched_with == [1]  # the full profile's 1 thread, not split below 1 by --tune-jobs 2
    assert ctx["lrs"] == {"clip": 1e-3, "uniclip": 4e-3, "uniclip-v1": 4e-3, "clip-lr2e-3": 2e-3}
