"""Feedback on long work: the study's progress line read from a run's growing ``out.log``, a failed run's message
with the last lines of its output, and the child's output streamed to a file in its run folder. No test depends on
timing: every time is passed in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from uniclip_plugin.runs import RunDir
from uniclip_plugin.study import run as study_run
from uniclip_plugin.study.run import OUTPUT_LOG, failure_message, progress_line


def _train_line(epoch: int, seen: int, per_epoch: int, loss: float) -> str:
    # open_clip_train 3.3.0's format (train.py), per-term losses before the total
    return (
        f"2026-11-30,10:00:00 | INFO | Train Epoch: {epoch} [{seen:>4}/{per_epoch} "
        f"({100 * seen / per_epoch:.0f}%)] "
        f"Data (t): 0.012 Batch (t): 0.350, 365.7/s, 365.7/s/gpu LR: 0.000500 Logit Scale: 14.286 "
        f"Contrastive_loss: {loss + 0.5:#.5g} ({loss + 0.6:#.5g}) Loss: {loss:#.5g} ({loss + 0.1:#.5g})\n"
    )


def test_progress_line_follows_a_growing_out_log(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "uniclip-seed0")
    run.path.mkdir()
    start = 1000.0
    # nothing logged yet: the line says so instead of inventing a step
    assert progress_line(run, "run 1 of 5: uniclip seed 0", 2, 4, start, start + 8) == (
        "reproduce.py: run 1 of 5: uniclip seed 0: starting (0:08 elapsed, no step logged yet)"
    )
    log = run.path / "out.log"
    log.write_text("2026-11-30,10:00:00 | INFO | Start epoch 0\n" + _train_line(0, 256, 512, 4.25))
    # a quarter of 2 epochs of 4 steps after 60 s: step 2/8, the rest (3 quarters) at that rate takes 180 s
    assert progress_line(run, "run 1 of 5: uniclip seed 0", 2, 4, start, start + 60) == (
        "reproduce.py: run 1 of 5: uniclip seed 0: step 2/8 (25%), loss 4.25, 1:00 elapsed, ETA 3:00"
    )
    with open(log, "a") as f:  # the log grows: the latest line wins
        f.write(_train_line(0, 512, 512, 3.5) + "2026-11-30,10:00:30 | INFO | Eval Epoch: 1 ...\n")
        f.write(_train_line(1, 256, 512, 2.125))
    assert progress_line(run, "run 1 of 5: uniclip seed 0", 2, 4, start, start + 3750) == (
        "reproduce.py: run 1 of 5: uniclip seed 0: step 6/8 (75%), loss 2.125, 1:02:30 elapsed, ETA 20:50"
    )
    # a resumed run: only the part trained by this process sets the rate (half of it already done before)
    assert progress_line(run, "r", 2, 4, start, start + 100, start_fraction=0.5).endswith("ETA 1:40")
    with open(log, "a") as f:
        f.write(_train_line(1, 512, 512, 2.0))
    assert progress_line(run, "r", 2, 4, start, start + 200).endswith(
        "step 8/8 (100%), loss 2, 3:20 elapsed, validating and saving"
    )


def test_last_train_point_reads_the_tail_of_a_long_log(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "clip-seed1")
    run.path.mkdir()
    lines = [_train_line(0, 32 * (i % 16 + 1), 512, 5.0 - i / 1000) for i in range(800)]  # > 64 KB of log
    (run.path / "out.log").write_text("".join(lines) + "2026-11-30 | INFO | Eval Epoch: 1 val_loss: 3.2\n")
    assert (run.path / "out.log").stat().st_size > 65536
    assert run.last_train_point() == {"epoch": 0, "seen": 512, "per_epoch": 512, "loss": pytest.approx(4.201)}
    assert RunDir(tmp_path / "absent").last_train_point() is None


def test_failure_message_shows_the_last_30_lines_and_the_log(tmp_path: Path) -> None:
    log = tmp_path / OUTPUT_LOG
    log.write_text("".join(f"line {i}\n" for i in range(1, 51)))
    message = failure_message("uniclip seed 0", log, 1)
    assert message.startswith(
        f"reproduce.py: error: training uniclip seed 0 failed (exit status 1); the last 30 lines of its output ({log}):"
    )
    body = message.splitlines()[1:]
    assert body == [f"    line {i}" for i in range(21, 51)]
    assert failure_message("x", tmp_path / "none.log", 2).endswith("\n    (no output)")


def test_a_failed_run_streams_its_output_to_its_folder_and_reports_the_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child's output goes to <run>/train_output.log (never held in memory); its failure names that file and
    shows the last 30 lines."""
    from uniclip_plugin.study.plan import METHODS, PROFILES

    script = "import sys\nfor i in range(1, 46): print('child line', i)\nsys.exit(3)"
    monkeypatch.setattr(study_run, "train_command", lambda *a, **k: [sys.executable, "-c", script])
    with pytest.raises(SystemExit) as err:
        study_run.train(
            METHODS[0],
            PROFILES["smoke"],
            "data",
            64,
            tmp_path,
            0,
            {"val": "-", "val_samples": 1},
            threads=1,
            progress_every=600.0,
        )
    log = tmp_path / "clip-seed0" / OUTPUT_LOG
    message = str(err.value)
    assert "failed (exit status 3)" in message and str(log) in message
    assert message.splitlines()[1:] == [f"    child line {i}" for i in range(16, 46)]
    assert "child line 1\n" in log.read_text()  # the whole output is in the file
