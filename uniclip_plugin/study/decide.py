"""Paired option decisions on the validation split (issue 18's protocol): every arm trains UniCLIP with the same
seeds, data, schedule and budget (a third of the full profile), changing only its flags; the score is the final
validation R@1 (mean of both directions). Never a test set.

    python -m uniclip_plugin.study.decide --data data --out runs/decide --seeds 2 --jobs 2
    python -m uniclip_plugin.study.decide --arms old-default,caption-view --report results/decide/summary.json

Runs that finished are reused (their final checkpoint exists); each run's output goes to ``<run>/train.log``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from ..cli import train_argv
from ..io import write_json_atomic
from ..runs import RunDir
from .plan import PROFILES

# A third of the full profile (1,720 steps): 14 epochs of half the data = 602 steps, warm-up scaled alike.
_THIRD = PROFILES["third"]
EPOCHS, BATCH, WARMUP, EPOCH_FRACTION, LR = _THIRD.epochs, _THIRD.batch, _THIRD.warmup, _THIRD.epoch_fraction, _THIRD.lr
# Every arm spells out its views, fusion and source size: the shipped UniCLIP-Tiny-32 config changed after these
# decisions (to caption-film's settings), and the arms must keep meaning what they meant.
PAPER = ("--view-presets", "simclr,simclr", "--aug-fusion", "concat")  # the config before issue 18
SOURCE = ("--view-source-size", "64")
CAPTION = ("--view-presets", "clip,simclr", "--aug-fusion", "concat", *SOURCE)
FILM = ("--view-presets", "clip,simclr", "--aug-fusion", "film", *SOURCE)  # the shipped config since
# name -> flags on top of `--loss uniclip_mpnce --model UniCLIP-Tiny-32`; each arm changes one thing against the arm
# named in its comment (the comparison is made on the same seeds)
ARMS: dict[str, tuple[str, ...]] = {
    "old-default": (*PAPER, "--view-source-size", "0"),  # as shipped before issue 18
    "source-res": (*PAPER, *SOURCE),  # vs old-default
    "caption-view": CAPTION,  # vs source-res
    "caption-film": FILM,  # vs caption-view
    "caption-group": (*CAPTION, "--mpnce-balance", "group", "--mpnce-group-weights", "1,0.5"),  # vs caption-view
    "caption-domain": (
        *CAPTION,
        "--init-temperatures",
        "0.1,0.07,0.07",
        "--offset-bound",
        "0.5",
        "--tt-offset",
        "fixed",
    ),  # vs caption-view
    "caption-only-text": (*CAPTION, "--text-positives", "caption"),  # vs caption-view ("SLIP in one space")
    "caption-film-lr2e-3": FILM,  # vs caption-film: CLIP's tuned lr
    "clip-lr2e-3": (),  # the reference: CLIP, its tuned lr
}
# arms that differ in more than flags: (loss, model, lr)
SETTINGS: dict[str, tuple[str, str, float]] = {
    "caption-film-lr2e-3": ("uniclip_mpnce", "UniCLIP-Tiny-32", 2e-3),
    "clip-lr2e-3": ("clip", "CLIP-Tiny-32", 2e-3),
}


def command(arm: str, seed: int, data: Path, val: dict, runs: Path, samples: int) -> list[str]:
    """The training command of one arm and seed (the study's flags at a third of its budget)."""
    loss, model, lr = SETTINGS.get(arm, ("uniclip_mpnce", "UniCLIP-Tiny-32", LR))
    return train_argv(
        loss,
        model,
        *ARMS[arm],
        train_data=data,
        dataset_type="webdataset",
        dataset_resampled=True,
        train_num_samples=samples,
        batch_size=BATCH,
        epochs=EPOCHS,
        lr=lr,
        wd=0.1,
        warmup=WARMUP,
        precision="fp32",
        device="cpu",
        workers=1,
        seed=seed,
        logs=runs,
        name=f"{arm}-seed{seed}",
        save_frequency=EPOCHS,
        zeroshot_frequency=0,
        log_every_n_steps=10,
        val_data=val["val"],
        val_num_samples=val["val_samples"],
        val_frequency=1,
    )


def train(cmd: list[str], run_dir: Path) -> float:
    """Run ``cmd`` unless the run's final checkpoint exists; returns the seconds it took (0 when reused)."""
    if (run_dir / "checkpoints" / f"epoch_{EPOCHS}.pt").is_file():
        return 0.0
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = ["--resume", "latest"] if (run_dir / "checkpoints").is_dir() else []
    start = time.time()
    with open(run_dir.parent / f"{run_dir.name}.train.log", "w") as log:
        proc = subprocess.run(
            cmd + resume, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1")
        )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{run_dir.name} failed (exit {proc.returncode}); see {run_dir.parent}/{run_dir.name}.train.log"
        )
    return time.time() - start


def summarise(runs: Path, arms: list[str], seeds: int, steps_per_epoch: int) -> dict:
    """Final and best validation R@1 of every arm and seed, with mean ± std over seeds."""
    out: dict = {}
    for arm in arms:
        finals, bests = [], []
        for seed in range(seeds):
            curve = RunDir(runs / f"{arm}-seed{seed}").val_curve(steps_per_epoch, None)
            finals.append(curve[-1]["val_r1"] if curve else math.nan)
            bests.append(max((p["val_r1"] for p in curve if p["epoch"] >= 1), default=math.nan))
        out[arm] = {
            "flags": list(ARMS[arm]),
            "final": finals,
            "best": bests,
            "final_mean": statistics.fmean(finals),
            "final_std": statistics.stdev(finals) if seeds > 1 else 0,
        }
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Train the arms (``--jobs`` at a time) and write the summary."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data")
    p.add_argument("--out", default="runs/decide")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--report", default="results/decide/summary.json")
    args = p.parse_args(argv)
    from .analysis import build_study_splits

    data, runs = Path(args.data), Path(args.out)
    val = build_study_splits(data)
    manifest = json.loads((data / "manifest.json").read_text())["counts"]["pretrain"]
    samples = max(BATCH, int(manifest["samples"] * EPOCH_FRACTION))
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    jobs = [(arm, seed) for seed in range(args.seeds) for arm in arms]  # seed-major: every arm's seed 0 first
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (arm, seed), secs in zip(
            jobs,
            pool.map(
                lambda j: train(
                    command(j[0], j[1], data / manifest["pattern"], val, runs, samples), runs / f"{j[0]}-seed{j[1]}"
                ),
                jobs,
            ),
            strict=False,
        ):
            print(f"decide: {arm} seed {seed}: {secs:.0f} s", flush=True)
    summary = summarise(runs, arms, args.seeds, math.ceil(samples / BATCH))
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.report, summary)
    for arm, row in summary.items():
        print(f"{arm:20s} final val R@1 {row['final_mean']:.2f} ± {row['final_std']:.2f}  {row['final']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
