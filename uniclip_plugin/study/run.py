"""The study's training runs: the ``open_clip train`` command, the stale-run check, training, and the lr search.

A run lives in ``<runs>/<method>-seed<N>`` (``uniclip_plugin.runs.run_name``); one whose final checkpoint exists is
not trained again, but only when it was trained with the settings the study asks for now (``stale_settings``).

While a run trains, its process writes its console output to ``<run>/train_output.log`` (appended on a resume; never
held in memory), and every ``PROGRESS_EVERY`` seconds the study prints the run's step / total steps, latest loss and
ETA, read from open_clip_train's own ``out.log`` (:func:`progress_line`). A failed run is reported with the last
``FAIL_TAIL`` lines of its output and the log's path (:func:`failure_message`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from uniclip_plugin.cli import train_argv
from uniclip_plugin.io import write_text_atomic
from uniclip_plugin.runs import RunDir, run_name
from uniclip_plugin.study.analysis import best_epoch
from uniclip_plugin.study.plan import PROFILES, TUNE_LRS, Method, Profile, profile_samples

__all__ = [
    "train_command",
    "stale_settings",
    "train",
    "choose_lr",
    "tune",
    "write_tuning",
    "CHECKED_PARAMS",
    "WHERE_FLAGS",
    "progress_line",
    "failure_message",
    "OUTPUT_LOG",
    "PROGRESS_EVERY",
    "FAIL_TAIL",
]

# open_clip_train's params.txt keys checked before a run is reused or resumed (the flags that change its result)
CHECKED_PARAMS = {
    "--model": "model",
    "--lr": "lr",
    "--batch-size": "batch_size",
    "--epochs": "epochs",
    "--seed": "seed",
    "--train-num-samples": "train_num_samples",
    "--warmup": "warmup",
    "--wd": "wd",
}

# where a run lives, not how it trains: a moved checkout or data folder, or the lr search's seed-0 run linked into the
# study under the study's name, is the same run
WHERE_FLAGS = ("--train-data", "--val-data", "--logs", "--name")

OUTPUT_LOG = "train_output.log"  # the child's stdout + stderr; open_clip_train writes its own out.log beside it
WALLCLOCK = "wallclock.json"  # {"seconds", "start", "side_by_side", "threads"} of a finished run
PROGRESS_EVERY = 20.0  # seconds between progress lines (open_clip_train logs every 10 steps: ~3-10 s on 2 cores)
FAIL_TAIL = 30  # lines of a failed run's output shown with the error


def train_command(
    method: Method,
    prof: Profile,
    data: str,
    samples: int,
    runs: Path,
    seed: int,
    val: dict,
    lr: Optional[float] = None,
    name: Optional[str] = None,
) -> list[str]:
    """The ``python -m uniclip_plugin.cli train`` command of one run (absolute paths as given)."""
    return train_argv(
        method.loss,
        method.model.format(size=prof.size),
        *method.flags,
        train_data=data,
        dataset_type="webdataset",
        dataset_resampled=True,
        train_num_samples=samples,
        batch_size=prof.batch,
        epochs=prof.epochs,
        lr=prof.lr if lr is None else lr,
        wd=0.1,
        warmup=prof.warmup,
        precision="fp32",
        device="cpu",
        workers=1,
        seed=seed,
        logs=runs,
        name=name or run_name(method.name, seed),
        save_frequency=1,
        zeroshot_frequency=0,
        log_every_n_steps=10,
        val_data=val["val"],
        val_num_samples=val["val_samples"],
        val_frequency=1,
    )


def _settings(cmd: list[str]) -> list[str]:
    """``cmd`` without the interpreter and with the ``WHERE_FLAGS`` values blanked, for comparing two commands."""
    args = list(cmd[1:])
    for i in range(1, len(args)):
        if args[i - 1] in WHERE_FLAGS:
            args[i] = "<where>"
    return args


def _stale_params(values: dict[str, str], cmd: list[str]) -> list[str]:
    """The ``CHECKED_PARAMS`` whose ``params.txt`` value differs from ``cmd``'s (numbers compared as numbers)."""
    stale = []
    for flag, key in CHECKED_PARAMS.items():
        if flag in cmd and key in values:
            asked = cmd[cmd.index(flag) + 1]
            try:
                same = float(values[key]) == float(asked)
            except ValueError:
                same = values[key] == asked
            if not same:
                stale.append(f"{key} {values[key]}, asked {asked}")
    return stale


def stale_settings(run_dir: Path, cmd: list[str]) -> list[str]:
    """What differs between ``cmd`` and the run already in ``run_dir`` (its ``command.json``, else the hyper-parameters
    open_clip_train wrote to ``params.txt``); empty when the run is new or matches."""
    run = RunDir(run_dir)
    recorded = run.command()
    if recorded is not None:
        old, new = _settings(recorded), _settings(cmd)
        if old == new:
            return []
        # strict=False: a changed length is reported when no common argument differs
        changed = [
            f"{old[i - 1]} {a} -> {b}" if i and old[i - 1].startswith("--") else f"{a} -> {b}"
            for i, (a, b) in enumerate(zip(old, new, strict=False))
            if a != b
        ]
        return changed or [f"{len(old)} -> {len(new)} arguments"]
    return _stale_params(run.params(), cmd)


def _clock(seconds: float) -> str:
    """``seconds`` as ``M:SS`` or ``H:MM:SS`` (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _fraction(point: Optional[dict[str, float]], epochs: int) -> float:
    """How much of ``epochs`` epochs the logged training point has done (0 without a point)."""
    if point is None or not epochs:
        return 0.0
    within = min(point["seen"] / point["per_epoch"], 1.0) if point["per_epoch"] else 0.0
    return min((point["epoch"] + within) / epochs, 1.0)


def progress_line(
    run: RunDir, label: str, epochs: int, steps_per_epoch: int, start: float, now: float, start_fraction: float = 0.0
) -> str:
    """One progress line of a training run, from the last ``Train Epoch`` line of its ``out.log``.

    Args:
        run: the run folder.
        label: what the line is about (``run 3 of 25: uniclip seed 0``).
        epochs: epochs the run trains; steps_per_epoch: optimiser steps per epoch.
        start: ``time.time()`` when this training process started; now: the time of the line.
        start_fraction: the part of the run done before this process started (a resumed run).

    Returns:
        ``reproduce.py: <label>: step S/T (P%), loss L, M:SS elapsed, ETA M:SS``; the ETA extrapolates this
        process's own rate (start-up and validation included), so it is pessimistic during the first steps.
    """
    elapsed = now - start
    point = run.last_train_point()
    if point is None:
        return f"reproduce.py: {label}: starting ({_clock(elapsed)} elapsed, no step logged yet)"
    done = _fraction(point, epochs)
    within = min(point["seen"] / point["per_epoch"], 1.0) if point["per_epoch"] else 0.0
    step = int(point["epoch"]) * steps_per_epoch + round(within * steps_per_epoch)
    rate = (done - start_fraction) / elapsed if elapsed > 0 else 0.0
    eta = "validating and saving" if done >= 1.0 else (f"ETA {_clock((1.0 - done) / rate)}" if rate > 0 else "ETA ?")
    return (
        f"reproduce.py: {label}: step {step}/{epochs * steps_per_epoch} ({100 * done:.0f}%), "
        f"loss {point['loss']:.4g}, {_clock(elapsed)} elapsed, {eta}"
    )


def failure_message(what: str, log: Path, returncode: int, lines: int = FAIL_TAIL) -> str:
    """The error of a failed training process: its exit status, the last ``lines`` lines of its output and where
    the whole output is."""
    text = log.read_text(errors="replace").splitlines() if log.is_file() else []
    tail = text[-lines:] or ["(no output)"]
    return (
        f"reproduce.py: error: training {what} failed (exit status {returncode}); the last {len(tail)} lines "
        f"of its output ({log}):\n" + "\n".join("    " + line for line in tail)
    )


def _run_child(
    cmd: list[str], env: dict[str, str], run: RunDir, label: str, epochs: int, steps_per_epoch: int, every: float
) -> int:
    """Run ``cmd`` with its output streamed to ``<run>/OUTPUT_LOG``, printing a progress line every ``every`` s;
    returns its exit status."""
    start_fraction = _fraction(run.last_train_point(), epochs)  # a resumed run's earlier epochs
    start = time.time()
    with open(run.path / OUTPUT_LOG, "a") as out:
        out.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
        out.flush()
        # every path in cmd is absolute, so the process may start in the caller's working folder
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while True:
                try:
                    return proc.wait(timeout=every)
                except subprocess.TimeoutExpired:
                    print(
                        progress_line(run, label, epochs, steps_per_epoch, start, time.time(), start_fraction),
                        flush=True,
                    )
        except BaseException:
            proc.kill()  # Ctrl-C or an error here: never leave a training process behind
            proc.wait()
            raise


def train(
    method: Method,
    prof: Profile,
    data: str,
    samples: int,
    runs: Path,
    seed: int,
    val: dict,
    threads: int,
    lr: Optional[float] = None,
    name: Optional[str] = None,
    *,
    label: str = "",
    progress_every: float = PROGRESS_EVERY,
    side_by_side: int = 1,
) -> dict:
    """Train one run with ``threads`` OMP threads unless its final checkpoint exists; returns {"seconds", "start",
    "command", "skipped", "side_by_side", "threads"}. ``label`` starts its progress lines (default: the method and
    seed); ``side_by_side`` (runs training at once) is recorded with the wall-clock, which is a cost only when it is
    1."""
    name = name or run_name(method.name, seed)
    run = RunDir(runs / name)
    final = run.epoch_checkpoint(prof.epochs)
    cmd = train_command(method, prof, data, samples, runs, seed, val, lr, name)
    timing = run.path / WALLCLOCK
    stale = stale_settings(run.path, cmd)
    if stale:
        raise SystemExit(
            f"reproduce.py: error: {run.path} was trained with other settings than this study asks "
            f"for ({'; '.join(stale)}); delete that run folder, or pass another --out / runs folder"
        )
    if final.is_file():
        return _reused(run, prof.epochs, cmd)
    resume = ["--resume", "latest"] if (run.path / "checkpoints").is_dir() else []
    run.path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run.path / "command.json", json.dumps(cmd))
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    returncode = _run_child(
        cmd + resume,
        env,
        run,
        label or f"{method.name} seed {seed}",
        prof.epochs,
        math.ceil(samples / prof.batch),
        progress_every,
    )
    if returncode != 0 or not final.is_file():
        raise SystemExit(failure_message(f"{method.name} seed {seed}", run.path / OUTPUT_LOG, returncode))
    seconds = time.time() - start
    keep_final_and_best(run, prof.epochs)
    # a resumed run's epochs before the resume have no wall-clock on this timeline
    record = {"seconds": seconds, "start": None if resume else start, "side_by_side": side_by_side, "threads": threads}
    write_text_atomic(timing, json.dumps(record))
    return {**record, "command": cmd, "skipped": False}


def _reused(run: RunDir, final_epoch: int, cmd: list[str]) -> dict:
    """``train``'s result for a run that had finished: its recorded wall-clock (nan when none was recorded)."""
    keep_final_and_best(run, final_epoch)
    timing = run.path / WALLCLOCK
    record = json.loads(timing.read_text()) if timing.is_file() else {}
    return {
        "seconds": record.get("seconds", float("nan")),
        "start": record.get("start"),
        "command": cmd,
        "skipped": True,
        "side_by_side": record.get("side_by_side", 1),
        "threads": record.get("threads"),  # None: trained before the thread count was recorded
    }


def keep_final_and_best(run: RunDir, final_epoch: int) -> None:
    """Delete a finished run's epoch checkpoints but the final and the best-validation one (the benchmark reads
    both; the others only cost disk, and their save times are kept for the wall-clock curves)."""
    best = best_epoch(run.val_curve(1, None))
    run.prune_checkpoints({final_epoch} | ({best} if best is not None else set()))


def choose_lr(scores: dict[float, float], default: float) -> float:
    """The lr with the highest best-epoch validation R@1 (nan: lowest); ties go to ``default``, then to the smaller
    lr."""
    return max(scores, key=lambda lr: (-math.inf if math.isnan(scores[lr]) else scores[lr], lr == default, -lr))


def tune(
    methods: list[Method],
    prof_name: str,
    data: str,
    data_samples: int,
    runs: Path,
    val: dict,
    threads: int,
    progress_every: float = PROGRESS_EVERY,
    seeds: int = 1,
    jobs: int = 1,
) -> dict:
    """Learning-rate search, the same for every method: each lr of ``TUNE_LRS`` on profile ``prof_name``, seeds
    0..``seeds``-1, scored by the best validation R@1 over its epochs averaged over the seeds (the validation split
    only, never a test set). ``jobs`` runs train side by side (their wall-clock is not reported as a cost).

    Returns ``{"profile", "grid", "seeds", "scores": {method: {lr: mean val R@1}}, "per_seed": {method: {lr: [val
    R@1 per seed]}}, "chosen": {method: lr}, "seconds", "commands"}``; runs live in ``runs`` as
    ``<method>-lr<lr>-seed<N>`` and are not trained again."""
    prof = PROFILES[prof_name]
    samples = profile_samples(prof, data_samples)
    steps_per_epoch = math.ceil(samples / prof.batch)
    grid = [(m, lr, seed) for m in methods for lr in TUNE_LRS for seed in range(seeds)]

    def one(i: int, m: Method, lr: float, seed: int) -> dict:
        name = run_name(m.name, seed, lr)
        label = f"tuning run {i} of {len(grid)}: {m.name} lr {lr:g} seed {seed}"
        print(f"reproduce.py: {label} ({prof_name} profile; output: {runs / name / OUTPUT_LOG}) ...", flush=True)
        r = train(
            m,
            prof,
            data,
            samples,
            runs,
            seed,
            val,
            threads,
            lr=lr,
            name=name,
            label=label,
            progress_every=progress_every,
            side_by_side=min(jobs, len(grid)),
        )
        curve = RunDir(runs / name).val_curve(steps_per_epoch, None)
        return {**r, "best": max((p["val_r1"] for p in curve if p["epoch"] >= 1), default=float("nan"))}

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done = list(pool.map(lambda job: one(job[0], *job[1]), enumerate(grid, start=1)))
    return _tuning_record(prof_name, seeds, grid, done)


def _tuning_record(prof_name: str, seeds: int, grid: list[tuple[Method, float, int]], done: list[dict]) -> dict:
    """The search's record from each (method, lr, seed) run's result: per-seed and mean scores, the chosen lrs."""
    per_seed: dict[str, dict[float, list[float]]] = {}
    for (m, lr, _), r in zip(grid, done, strict=True):
        per_seed.setdefault(m.name, {}).setdefault(lr, []).append(r["best"])
    scores = {m: {lr: sum(v) / len(v) for lr, v in s.items()} for m, s in per_seed.items()}
    return {
        "profile": prof_name,
        "grid": list(TUNE_LRS),
        "seeds": seeds,
        "scores": scores,
        "per_seed": per_seed,
        "chosen": {m: choose_lr(s, PROFILES[prof_name].lr) for m, s in scores.items()},
        "seconds": sum(0.0 if math.isnan(r["seconds"]) else r["seconds"] for r in done),
        "commands": [r["command"] for r in done],
    }


def write_tuning(path: Path, tuning: dict) -> None:
    """``tuning.json``: the search's record with the lrs as ``%g`` strings (JSON keys)."""
    write_text_atomic(
        path,
        json.dumps(
            {
                **tuning,
                **{
                    key: {m: {f"{lr:g}": v for lr, v in s.items()} for m, s in tuning[key].items()}
                    for key in ("scores", "per_seed")
                    if key in tuning
                },
            },
            indent=1,
        ),
    )
