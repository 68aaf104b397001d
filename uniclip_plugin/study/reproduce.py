"""The study: UniCLIP against CLIP (and SLIP / DeCLIP once registered) at equal budget on the embedded data.

    python harness/reproduce.py --profile quick            # minutes, one seed
    python harness/reproduce.py --profile full --seeds 3
    python harness/reproduce.py --ablations                # UniCLIP's components (one seed each: --ablation-seeds)
    python harness/reproduce.py --profile full --tune      # lr tuned per method on validation (4-point grid, quick)
    python harness/reproduce.py --profile smoke --synthetic --out /tmp/smoke   # CI: generated data, a few steps

Every method trains with ``open_clip train`` on the same tiny towers, data, epochs, batch, optimiser and schedule;
then ``harness/bench.py`` evaluates every run and ``docs/RESULTS.md`` (or ``<out>/RESULTS.md``) is written with the
tables, plots, learned per-domain-pair temperatures and offsets, wall-clock per run, the machine, versions and the exact
commands. A run whose final checkpoint exists is not trained again.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[2]  # the checkout (repo root)


@dataclass(frozen=True)
class Profile:
    size: str            # tiny config suffix: CLIP-<size>, UniCLIP-<size>
    epochs: int
    batch: int
    lr: float
    warmup: int
    samples: Optional[int] = None  # --train-num-samples per epoch (None: the data's sizes.json)
    epoch_fraction: float = 1.0    # an "epoch" is this fraction of the data (more validation points per pass)
    probe_max_train: int = 10000   # linear-probe training samples (Fashion-MNIST's probe dominates the bench)
    threads: Optional[int] = None  # OMP threads per training process (None: all cores)


PROFILES = {
    "smoke": Profile("Tiny-32", 2, 32, 1e-3, 2, samples=64),
    "quick": Profile("Tiny-32", 6, 128, 1e-3, 50, epoch_fraction=0.5, probe_max_train=5000),  # 3 passes, 6 val points
    # 20 passes, 40 val points. Tiny-32 at one thread: on 2 cores the loader worker needs the other core, and 2 OMP
    # threads beside it made each step 1.1-1.45x slower (docs/PERF.md); Tiny-64 would allow ~6 passes in 90 min.
    "full": Profile("Tiny-32", 40, 128, 1e-3, 200, epoch_fraction=0.5, threads=1),
}
TUNE_LRS = (5e-4, 1e-3, 2e-3, 4e-3)  # the same grid, seed and budget for every method


@dataclass(frozen=True)
class Method:
    name: str
    loss: str
    model: str            # "{size}" is replaced by the profile's size
    flags: tuple[str, ...] = field(default_factory=tuple)
    note: str = ""


METHODS = [
    Method("clip", "clip", "CLIP-{size}", note="open_clip ClipLoss, open_clip's train transform"),
    Method("clip-aug", "uniclip_mpnce", "UniCLIP-{size}",
           ("--views", "1", "--no-aug-embed", "--no-domain-similarity", "--mpnce-objective", "infonce"),
           "control: CLIP loss on one UniCLIP-strength view (= ClipLoss with UniCLIP's augmentations)"),
    Method("slip", "slip", "SLIP-{size}", note="SLIP: CLIP loss on a weak view + SimCLR on two strong views"),
    Method("declip", "declip", "DeCLIP-{size}", note="DeCLIP: 0.4 MVS + 0.2 SimSiam + 0.2 MLM + 0.2 NNS"),
    Method("uniclip", "uniclip_mpnce", "UniCLIP-{size}", note="UniCLIP: V=2, aug-aware embedding, MP-NCE, domain sim"),
]
ABLATIONS = [
    Method("uniclip-no-aug-embed", "uniclip_mpnce", "UniCLIP-{size}", ("--no-aug-embed",),
           "without the augmentation-aware image embedding"),
    Method("uniclip-infonce", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "infonce"),
           "MP-NCE replaced by InfoNCE on the universal space"),
    Method("uniclip-supcon", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "supcon"),
           "MP-NCE replaced by SupCon"),
    Method("uniclip-milnce", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "milnce"),
           "MP-NCE replaced by MIL-NCE"),
    Method("uniclip-shared-sim", "uniclip_mpnce", "UniCLIP-{size}", ("--no-domain-similarity",),
           "one shared temperature and offset for all domain pairs instead of one per pair"),
    Method("uniclip-v1", "uniclip_mpnce", "UniCLIP-{size}", ("--views", "1"), "V = 1: no image–image pairs"),
    # not paper ablations: the augmentation-strength diagnosis (the quick study's clip-aug control lost 1.1 points)
    Method("uniclip-mocov2-views", "uniclip_mpnce", "UniCLIP-{size}", ("--view-preset", "mocov2"),
           "diagnostic: MoCo-v2 views (crop area ≥ 0.2 instead of ≥ 0.08)"),
    Method("uniclip-weak-views", "uniclip_mpnce", "UniCLIP-{size}", ("--view-preset", "clip_weak"),
           "diagnostic: SLIP's weak CLIP view (crop area ≥ 0.5, no flip, jitter, grayscale or blur)"),
]


def available(method: Method, size: str) -> bool:
    import open_clip

    import uniclip_plugin  # noqa: F401
    from uniclip_plugin import registry
    return method.loss in registry.list_losses() and method.model.format(size=size) in open_clip.list_models()


def profile_samples(prof: Profile, data_samples: int) -> int:
    """Samples per epoch (``--train-num-samples``) of ``prof`` on a dataset of ``data_samples`` pairs."""
    return prof.samples or max(prof.batch, int(data_samples * prof.epoch_fraction))


def run_name(method: Method, seed: int, lr: Optional[float] = None) -> str:
    return f"{method.name}-seed{seed}" if lr is None else f"{method.name}-lr{lr:g}-seed{seed}"


def train_command(method: Method, prof: Profile, data: str, samples: int, runs: Path, seed: int,
                  val: dict, lr: Optional[float] = None, name: Optional[str] = None) -> list[str]:
    return [sys.executable, "-m", "uniclip_plugin.cli", "train", "--loss", method.loss,
            "--model", method.model.format(size=prof.size), *method.flags,
            "--train-data", data, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(samples), "--batch-size", str(prof.batch), "--epochs", str(prof.epochs),
            "--lr", str(prof.lr if lr is None else lr), "--wd", "0.1", "--warmup", str(prof.warmup),
            "--precision", "fp32",
            "--device", "cpu", "--workers", "1", "--seed", str(seed), "--logs", str(runs),
            "--name", name or run_name(method, seed), "--save-frequency", "1", "--zeroshot-frequency", "0",
            "--log-every-n-steps", "10", "--val-data", val["val"], "--val-num-samples", str(val["val_samples"]),
            "--val-frequency", "1"]


# open_clip_train's params.txt keys checked before a run is reused or resumed (the flags that change its result)
CHECKED_PARAMS = {"--model": "model", "--lr": "lr", "--batch-size": "batch_size", "--epochs": "epochs",
                  "--seed": "seed", "--train-num-samples": "train_num_samples", "--warmup": "warmup", "--wd": "wd"}


# where a run lives, not how it trains: a moved checkout or data folder, or the lr search's seed-0 run linked into the
# study under the study's name, is the same run
WHERE_FLAGS = ("--train-data", "--val-data", "--logs", "--name")


def _settings(cmd: list[str]) -> list[str]:
    """``cmd`` without the interpreter and with the ``WHERE_FLAGS`` values blanked, for comparing two commands."""
    args = list(cmd[1:])
    for i in range(1, len(args)):
        if args[i - 1] in WHERE_FLAGS:
            args[i] = "<where>"
    return args


def stale_settings(run_dir: Path, cmd: list[str]) -> list[str]:
    """What differs between ``cmd`` and the run already in ``run_dir`` (its ``command.json``, else the hyper-parameters
    open_clip_train wrote to ``params.txt``); empty when the run is new or matches."""
    recorded = run_dir / "command.json"
    if recorded.is_file():
        old, new = _settings(json.loads(recorded.read_text())), _settings(cmd)
        if old == new:
            return []
        changed = [f"{old[i - 1]} {a} -> {b}" if i and old[i - 1].startswith("--") else f"{a} -> {b}"
                   for i, (a, b) in enumerate(zip(old, new)) if a != b]
        return changed or [f"{len(old)} -> {len(new)} arguments"]
    params = run_dir / "params.txt"
    if not params.is_file():
        return []
    values = dict(line.split(": ", 1) for line in params.read_text().splitlines() if ": " in line)
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


def train(method: Method, prof: Profile, data: str, samples: int, runs: Path, seed: int, val: dict,
          threads: int, lr: Optional[float] = None, name: Optional[str] = None) -> dict:
    """Train one run with ``threads`` OMP threads unless its final checkpoint exists; returns {"seconds", "start",
    "command", "skipped"}."""
    name = name or run_name(method, seed)
    run_dir = runs / name
    final = run_dir / "checkpoints" / f"epoch_{prof.epochs}.pt"
    cmd = train_command(method, prof, data, samples, runs, seed, val, lr, name)
    timing = run_dir / "wallclock.json"
    stale = stale_settings(run_dir, cmd)
    if stale:
        raise SystemExit(f"reproduce.py: error: {run_dir} was trained with other settings than this study asks for "
                         f"({'; '.join(stale)}); delete that run folder, or pass another --out / runs folder")
    if final.is_file():
        record = json.loads(timing.read_text()) if timing.is_file() else {}
        return {"seconds": record.get("seconds", float("nan")), "start": record.get("start"), "command": cmd,
                "skipped": True}
    resume = ["--resume", "latest"] if (run_dir / "checkpoints").is_dir() else []
    from uniclip_plugin.bench.report import write_text_atomic
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "command.json", json.dumps(cmd))
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd + resume, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not final.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"reproduce.py: error: training {method.name} seed {seed} failed: {tail}")
    seconds = time.time() - start
    # a resumed run's epochs before the resume have no wall-clock on this timeline
    timing.write_text(json.dumps({"seconds": seconds, "start": None if resume else start}))
    return {"seconds": seconds, "start": None if resume else start, "command": cmd, "skipped": False}


def choose_lr(scores: dict[float, float], default: float) -> float:
    """The lr with the highest best-epoch validation R@1 (nan: lowest); ties go to ``default``, then to the smaller
    lr."""
    return max(scores, key=lambda lr: (-math.inf if math.isnan(scores[lr]) else scores[lr], lr == default, -lr))


def tune(methods: list[Method], prof_name: str, data: str, data_samples: int, runs: Path, val: dict,
         threads: int) -> dict:
    """Learning-rate search, the same for every method: each lr of ``TUNE_LRS`` on profile ``prof_name``, seed 0,
    scored by the best validation R@1 over its epochs (the validation split only, never a test set).

    Returns ``{"profile", "grid", "scores": {method: {lr: val R@1}}, "chosen": {method: lr}, "seconds",
    "commands"}``; runs live in ``runs`` as ``<method>-lr<lr>-seed0`` and are not trained again."""
    from uniclip_plugin.study import analysis as study
    prof = PROFILES[prof_name]
    samples = profile_samples(prof, data_samples)
    steps_per_epoch = math.ceil(samples / prof.batch)
    scores: dict[str, dict[float, float]] = {}
    seconds, commands = 0.0, []
    for m in methods:
        for lr in TUNE_LRS:
            name = run_name(m, 0, lr)
            print(f"reproduce.py: tuning {m.name} lr {lr:g} ({prof_name} profile) ...", flush=True)
            r = train(m, prof, data, samples, runs, 0, val, threads, lr=lr, name=name)
            seconds += 0.0 if math.isnan(r["seconds"]) else r["seconds"]
            commands.append(r["command"])
            curve = study.val_curve(runs / name, steps_per_epoch, None)
            scores.setdefault(m.name, {})[lr] = max((p["val_r1"] for p in curve if p["epoch"] >= 1),
                                                    default=float("nan"))
    chosen = {m: choose_lr(s, prof.lr) for m, s in scores.items()}
    return {"profile": prof_name, "grid": list(TUNE_LRS), "scores": scores, "chosen": chosen, "seconds": seconds,
            "commands": commands}


def tuning_lines(tuning: dict) -> list[str]:
    """Markdown: the grid's best-epoch validation R@1 per method, the chosen lr in bold."""
    grid = tuning["grid"]
    lines = ["| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
             "|---|" + "---|" * (len(grid) + 1)]
    for method, scores in tuning["scores"].items():
        chosen = tuning["chosen"][method]
        cells = [(f"**{scores[lr]:.2f}**" if lr == chosen else f"{scores[lr]:.2f}") for lr in grid]  # ties at .1f
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen:g} |")
    return lines


def learned_similarity(run_dir: Path, epochs: int) -> Optional[dict[str, list[float]]]:
    """Per-domain-pair temperature (1/scale) and offset of a UniCLIP checkpoint."""
    state = torch.load(run_dir / "checkpoints" / f"epoch_{epochs}.pt", map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if sd.get("logit_scale") is None or sd["logit_scale"].numel() != 3:
        return None
    scales = sd["logit_scale"].clamp(0, 4.6052).exp()
    return {"temperature": (1 / scales).tolist(), "offset": sd["logit_bias"].tolist()}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def analyse(methods: list[Method], prof: Profile, runs: Path, seeds: dict[str, int], steps_per_epoch: int,
            timings: dict[str, list[dict]]) -> dict:
    """Validation curves, best epochs, equal-wall-clock values and data efficiency of every run (→ curves.json)."""
    from uniclip_plugin.study import analysis as study
    curves: dict[str, dict[str, list[dict]]] = {}
    for m in methods:
        for seed in range(seeds[m.name]):
            start = timings[m.name][seed]["start"] if seed < len(timings.get(m.name, [])) else None
            curves.setdefault(m.name, {})[str(seed)] = study.val_curve(runs / f"{m.name}-seed{seed}",
                                                                        steps_per_epoch, start)
    totals = {m: [t["seconds"] for t in ts] for m, ts in timings.items()}
    # Equal wall-clock budget: the time at which the cheapest method's last validation point was reached
    lasts = [[c[-1]["seconds"] for c in per_seed.values() if c] for per_seed in curves.values()]
    finite = [statistics.mean(v) for v in lasts if v and not any(math.isnan(x) for x in v)]
    budget = min(finite) if finite else float("nan")
    rows = []
    for m in methods:
        per_seed = curves.get(m.name, {})
        finals = [c[-1]["val_r1"] for c in per_seed.values() if c]
        bests = [study.best_epoch(c) for c in per_seed.values() if c]
        best_vals = [max(p["val_r1"] for p in c if p["epoch"] >= 1) for c in per_seed.values() if c]
        at_budget = [study.value_at(c, "seconds", budget) for c in per_seed.values() if c]
        secs = totals.get(m.name, [])
        rows.append({"method": m.name, "seconds_per_run": statistics.mean(secs) if secs else float("nan"),
                     "seconds_per_step": (statistics.mean(secs) / (prof.epochs * steps_per_epoch)) if secs else
                     float("nan"), "final_val_r1": finals, "best_epochs": bests, "best_val_r1": best_vals,
                     "val_r1_at_budget": at_budget})
    return {"curves": curves, "budget_seconds": budget, "rows": rows, "steps_per_epoch": steps_per_epoch,
            "data_efficiency": study.data_efficiency(curves)}


# Compact ablation table: (dataset, task, metric, column label); absent sets are left out
# clip_benchmark's image_retrieval_recall is text → image (a caption retrieves its image), text_retrieval image → text
ABLATION_METRICS = (("heldout_emoji_retrieval_test", "zeroshot_retrieval", "image_retrieval_recall@1",
                     "test image retrieval R@1 (T→I)"),
                    ("heldout_emoji_retrieval_test", "zeroshot_retrieval", "text_retrieval_recall@1",
                     "test text retrieval R@1 (I→T)"),
                    ("heldout_emoji_group", "zeroshot_classification", "acc1", "group zero-shot"),
                    ("heldout_emoji_subgroup", "zeroshot_classification", "acc1", "subgroup zero-shot"),
                    ("fmnist", "zeroshot_classification", "acc1", "Fashion-MNIST zero-shot"),
                    ("fmnist", "linear_probe", "lp_acc1", "Fashion-MNIST probe"))


def ablation_table(results_csv: Path, rows: list[dict], full: str, ablations: list[str]) -> list[str]:
    """Markdown lines: the full UniCLIP and each ablation, final val R@1 and key test metrics, Δ against ``full``.

    Seed-matched: an ablation run with seeds 0..k-1 is compared with the full model's mean over the same seeds (the
    spread between seeds is as large as most ablation effects at the quick budget)."""
    import csv
    per_run: dict[tuple[str, int, str, str, str], float] = {}
    if results_csv.is_file():
        with open(results_csv, newline="") as f:
            for r in csv.DictReader(f):
                seed = r["run"].rsplit("-seed", 1)[-1]
                if seed.isdigit():
                    per_run[(r["method"], int(seed), r["dataset"], r["task"], r["metric"])] = float(r["value"])
    metrics = [m for m in ABLATION_METRICS if any(k[0] == full and k[2:] == m[:3] for k in per_run)]
    val = {r["method"]: r["final_val_r1"] for r in rows}

    def mean_over(values: list[Optional[float]]) -> Optional[float]:
        kept = [v for v in values if v is not None]
        return statistics.mean(kept) if kept and len(kept) == len(values) else None

    def cell(value: Optional[float], base: Optional[float], scale: float) -> str:
        if value is None or math.isnan(value):
            return "–"
        text = f"{scale * value:.1f}"
        return text if base is None or math.isnan(base) else text + f" (Δ {scale * (value - base):+.1f})"

    lines = ["| run | seeds | final val R@1 | " + " | ".join(m[3] for m in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for name in [full, *ablations]:
        seeds = list(range(len(val.get(name) or [])))
        full_seeds = list(range(len(val.get(full) or [])))
        base_seeds = None if name == full or any(s not in full_seeds for s in seeds) else seeds
        own_val = mean_over([val[name][s] for s in seeds]) if seeds else None
        base_val = mean_over([val[full][s] for s in base_seeds]) if base_seeds else None
        cells = [cell(own_val, base_val, 1.0)]
        for m in metrics:
            own = mean_over([per_run.get((name, s, *m[:3])) for s in seeds]) if seeds else None
            base = mean_over([per_run.get((full, s, *m[:3])) for s in base_seeds]) if base_seeds else None
            cells.append(cell(own, base, 100.0))
        seed_text = ("–" if not seeds else f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}")
        lines.append(f"| {name} | {seed_text} | " + " | ".join(cells) + " |")
    return lines


def write_results(path: Path, command_line: str, prof_name: str, prof: Profile, methods: list[Method],
                  skipped: list[Method], analysis: dict, commands: list[str], results: Path, runs: Path,
                  seeds: dict[str, int], data_note: str, elapsed: float, val_samples: int,
                  lrs: Optional[dict[str, float]] = None, tuning: Optional[dict] = None, threads: int = 1,
                  reused: int = 0) -> None:
    import open_clip

    from uniclip_plugin.study import analysis as study
    table = (results / "table.md").read_text() if (results / "table.md").is_file() else "(no bench table)"
    best_table = ((results / "best" / "table.md").read_text() if (results / "best" / "table.md").is_file()
                  else "(every run's best validation epoch is its final epoch: the table above applies)")
    main_seeds = max((seeds[m.name] for m in methods if m not in ABLATIONS), default=1)
    seed_text = f"seeds 0..{main_seeds - 1}" if main_seeds > 1 else "seed 0"
    n_runs = sum(len(r["final_val_r1"]) for r in analysis["rows"])
    train_minutes = sum(r["seconds_per_run"] * len(r["final_val_r1"]) for r in analysis["rows"]
                        if not math.isnan(r["seconds_per_run"])) / 60
    trained = f"the {n_runs} training runs took {train_minutes:.1f} min in all, each timed when it was trained"
    if reused:
        trained += (f"; {reused} of them had been trained by an earlier call and were reused, so this command's own "
                    f"time covers only the rest")
    lrs = lrs or {m.name: prof.lr for m in methods}
    if tuning:
        lr_text = "with each method's lr as tuned below"
        tuning_text = (f"The learning rate was tuned on the validation split with the same effort for every method: "
                       f"lr ∈ {{{', '.join(f'{lr:g}' for lr in tuning['grid'])}}} on the {tuning['profile']} profile, "
                       f"seed 0, each scored by its best-epoch validation R@1 (the table under \"Learning-rate "
                       f"tuning\"); the ablations use UniCLIP's lr. Nothing else was tuned.")
    else:
        lr_text = f"lr {prof.lr}"
        tuning_text = ("No hyper-parameter was tuned for any method (the same zero tuning effort for all): these are "
                       "open_clip-style defaults fixed before the first run (`--tune` searches the lr per method).")
    if any(m in ABLATIONS for m in methods):
        n_abl = max(seeds[m.name] for m in methods if m in ABLATIONS)
        seed_text += f" (ablation rows: {'seeds 0..' + str(n_abl - 1) if n_abl > 1 else 'seed 0'})"
    lines = [f"# Results ({prof_name} profile)", "",
             f"Made by `python harness/reproduce.py {command_line}` on "
             f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
             f"torch {torch.__version__}, open_clip {open_clip.__version__}, {time.strftime('%Y-%m-%d')}; the whole "
             f"command took {elapsed / 60:.1f} min (data build, training, validation, benchmark; {trained}). "
             f"Every number below "
             f"comes from `{_rel(results)}/json/*.json` (one clip_benchmark JSON per run, dataset and task), "
             f"`{_rel(results)}/best/json/*.json` (best-epoch runs) and `{_rel(results)}/curves.json` "
             f"(validation curves).", "",
             f"Data: {data_note}", "",
             f"Every method: towers `{prof.size}`, {prof.epochs} epochs of "
             f"{analysis['steps_per_epoch']} steps (an epoch = {prof.epoch_fraction:g} × the data, resampled), batch "
             f"{prof.batch}, AdamW {lr_text}, wd 0.1, cosine schedule with {prof.warmup} warm-up steps, fp32, "
             f"{threads} OMP thread(s) per training process, {seed_text}. {tuning_text} Only the epoch is chosen, "
             f"on the validation split, for the best-epoch rows. Linear probes use at most "
             f"{prof.probe_max_train:,} training samples per set (a seeded subset).", "",
             "## Methods", ""]
    for m in methods:
        lines.append(f"- **{m.name}** (`--loss {m.loss} --model {m.model.format(size=prof.size)} "
                     f"{' '.join(m.flags)}`, lr {lrs[m.name]:g}): {m.note or 'ablation'}")
    for m in skipped:
        lines.append(f"- {m.name}: not run — `--loss {m.loss}` / `{m.model.format(size=prof.size)}` is not "
                     f"registered in this version ({m.note})")
    lines += ["", "## Test sets, final epoch", "", table, "",
              "`heldout_emoji_retrieval` holds all 1,852 held-out concepts (it shares 896 with the validation split); "
              "`heldout_emoji_retrieval_test` holds only the 956 concepts never used for validation.", "",
              "## Test sets, epoch chosen on validation (zero-shot tasks; disjoint from validation)", "", best_table,
              "", "## Validation, cost and equal wall-clock", "",
              f"Validation R@1 = mean of image→text and text→image R@1 over the {val_samples} validation pairs "
              f"(open_clip_train `--val-data`, after every epoch). Equal wall-clock: each method's validation R@1 "
              f"interpolated at {analysis['budget_seconds']:.0f} s after its training process started, when the "
              f"cheapest method had finished (n/a: that method's first validation came later). s / run includes "
              f"process start-up and validation; s / step = s / run over the steps.", "",
              "| method | s / run | s / step | × clip | final val R@1 | best val R@1 | best epoch | "
              "val R@1 at equal wall-clock |", "|---|---|---|---|---|---|---|---|"]
    clip_step = next((r["seconds_per_step"] for r in analysis["rows"] if r["method"] == "clip"), float("nan"))
    for r in analysis["rows"]:
        ratio = r["seconds_per_step"] / clip_step if clip_step == clip_step else float("nan")
        lines.append(f"| {r['method']} | {r['seconds_per_run']:.0f} | {r['seconds_per_step']:.3f} | {ratio:.2f} | "
                     f"{study.mean_std(r['final_val_r1'])} | {study.mean_std(r['best_val_r1'])} | "
                     f"{', '.join(str(b) for b in r['best_epochs'])} | {study.mean_std(r['val_r1_at_budget'])} |")
    eff = analysis["data_efficiency"]
    if eff:
        lines += ["", "Data efficiency (issue 9; the paper's claim): steps UniCLIP needs to reach CLIP's final "
                  "validation R@1, as a fraction of CLIP's steps (goal ≤ 0.5): " + "; ".join(
                      f"seed {e['seed']}: target {e['target_val_r1']:.1f} → "
                      + ("not reached" if math.isnan(e["fraction"]) else f"{e['fraction']:.2f}") for e in eff) + "."]
    ablations = [m.name for m in methods if m in ABLATIONS]
    if ablations:
        lines += ["", "## UniCLIP ablations (PAPER.md §1) and view-strength diagnostics", "",
                  "Final epoch; values in % (val R@1 in % of the validation pairs), mean over the row's seeds; Δ in "
                  "points against the full `uniclip` on the same seeds. Every row changes one thing, with the flag "
                  "listed under Methods.", ""]
        lines += ablation_table(results / "results.csv", analysis["rows"], "uniclip", ablations)
    if tuning:
        lines += ["", "## Learning-rate tuning (validation split)", "",
                  f"Best-epoch validation R@1 (%) of each lr, {tuning['profile']} profile, seed 0 "
                  f"({tuning['seconds'] / 60:.1f} min of training; `{_rel(results)}/tuning.json`). The chosen lr "
                  f"(bold) trains the runs above. The search runs on the {tuning['profile']} profile to keep its cost "
                  f"down; where that profile is shorter than this one, an lr that learns fastest early may not be "
                  f"the best over the whole run.", ""]
        lines += tuning_lines(tuning)
    plots = ", ".join(f"`{_rel(p)}`" for p in sorted(results.glob("*.png")))
    lines += ["", f"Plots: {plots}", "",
              "## Learned per-domain-pair similarity (UniCLIP runs)", "",
              "| run | τ II | τ IT | τ TT | b II | b IT | b TT |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        for s in range(seeds[m.name]):
            sim = learned_similarity(runs / f"{m.name}-seed{s}", prof.epochs)
            if sim:
                t, b = sim["temperature"], sim["offset"]
                lines.append(f"| {m.name}-seed{s} | " + " | ".join(f"{v:.4f}" for v in t + b) + " |")
    lines += ["", "## Commands", "", "```"] + [" ".join(c) for c in commands] + ["```", ""]
    from uniclip_plugin.bench.report import write_text_atomic
    previous = path.read_text() if path.is_file() else ""
    marker = "\n## Reading these numbers"
    keep = previous[previous.index(marker):] if marker in previous else ""  # the hand-written analysis
    write_text_atomic(path, "\n".join(lines) + keep)


def pick_methods(parser: argparse.ArgumentParser, option: str, text: str, pool: list[Method]) -> list[Method]:
    """The methods of ``pool`` named in the comma-separated ``text``, in ``pool``'s order; an unknown name is a usage
    error that lists the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - {m.name for m in pool})
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from " + ", ".join(m.name for m in pool))
    return [m for m in pool if m.name in names]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--ablations", nargs="?", const="all", default=None, metavar="NAMES",
                        help="also train UniCLIP's ablations: all of them, or a comma-separated subset of "
                             + ",".join(m.name for m in ABLATIONS))
    parser.add_argument("--ablation-seeds", type=int, default=1,
                        help="seeds of each ablation row (default 1, whatever --seeds says)")
    parser.add_argument("--data", default="data", help="data folder (built by harness/data.py if missing)")
    parser.add_argument("--synthetic", action="store_true", help="generated data instead of the real sets (CI smoke)")
    parser.add_argument("--out", default=".", help="folder for runs/, results/ and the report")
    parser.add_argument("--tune", action="store_true",
                        help=f"first choose each method's lr on the validation split: {', '.join(map(str, TUNE_LRS))} "
                             "on --tune-profile, seed 0; the ablations use UniCLIP's (runs in runs/<profile>-tuned)")
    parser.add_argument("--tune-profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads per training process (default: the profile's; quick: all cores)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ",".join(m.name for m in METHODS) + " (default: all)")
    args = parser.parse_args(argv)
    began = time.time()
    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    label = args.profile + ("-tuned" if args.tune else "")
    runs, results = out / "runs" / label, out / "results" / label
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be ≥ 1, got {args.threads}")
    # OMP threads of every training process: --threads, else the profile's, else the caller's OMP_NUM_THREADS / cores
    threads = args.threads or prof.threads or int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    main_methods = METHODS if not args.methods else pick_methods(parser, "--methods", args.methods, METHODS)
    ablations = ([] if args.ablations is None else ABLATIONS if args.ablations == "all" else
                 pick_methods(parser, "--ablations", args.ablations, ABLATIONS))
    data = Path(args.data).resolve()
    if args.synthetic:
        from uniclip_plugin.testing.synthetic import build_synthetic_eval, build_synthetic_pretrain
        info = build_synthetic_pretrain(data / "pretrain", n_samples=256, res=32, n_shards=4)
        build_synthetic_eval(data / "wds", res=32, n_per_class=8)
        pattern, samples, data_note = info["pattern"], info["n_samples"], "generated shapes (harness/synthetic.py)"
        from uniclip_plugin.study.analysis import build_study_splits
        val = build_study_splits(data, retrieval="synth_retrieval", classification="synth_shapes")
    else:
        from uniclip_plugin.data import build as data_builder
        manifest = data_builder.build(data, res=64)
        pattern = str(data / manifest["counts"]["pretrain"]["pattern"])
        samples = manifest["counts"]["pretrain"]["samples"]
        from uniclip_plugin.study.analysis import build_study_splits
        val = build_study_splits(data)
        data_note = (f"{samples:,} emoji image–caption pairs in 3 styles (harness/data.py, see data/DATA_CARD.md); "
                     f"validation: {val['val_samples']} held-out-style pairs; tests: the held-out OpenMoji style "
                     f"(retrieval, 9-group and 97-subgroup zero-shot and probe), Fashion-MNIST and MNIST-5k digits")
    data_samples = samples
    samples = profile_samples(prof, data_samples)
    steps_per_epoch = math.ceil(samples / prof.batch)  # open_clip_train, 1 worker, resampled shards
    wanted = main_methods + ablations
    methods = [m for m in wanted if available(m, prof.size)]
    skipped = [m for m in wanted if m not in methods]
    seeds = {m.name: min(args.seeds, args.ablation_seeds) if m in ABLATIONS else args.seeds for m in methods}
    from uniclip_plugin.bench.report import write_text_atomic
    lrs = {m.name: prof.lr for m in methods}
    tuning = None
    if args.tune:
        tuned = [m for m in methods if m not in ABLATIONS]
        tuning = tune(tuned, args.tune_profile, pattern, data_samples, out / "runs" / f"tune-{args.tune_profile}",
                      val, threads)  # the study's thread count, not the tune profile's
        lrs.update(tuning["chosen"])
        if args.tune_profile == args.profile:  # seed 0 at the chosen lr is the tuning run itself: reuse it
            runs.mkdir(parents=True, exist_ok=True)
            for m in tuned:
                link = runs / run_name(m, 0)
                if not link.exists():
                    link.symlink_to(out / "runs" / f"tune-{args.tune_profile}" / run_name(m, 0, lrs[m.name]),
                                    target_is_directory=True)
        for m in methods:
            if m in ABLATIONS:  # an ablation changes one thing against the tuned UniCLIP
                lrs[m.name] = tuning["chosen"].get("uniclip", prof.lr)
        results.mkdir(parents=True, exist_ok=True)
        write_text_atomic(results / "tuning.json", json.dumps(
            {**tuning, "scores": {m: {f"{lr:g}": v for lr, v in s.items()} for m, s in tuning["scores"].items()}},
            indent=1))
    timings: dict[str, list[dict]] = {}
    commands = list(tuning["commands"]) if tuning else []
    for m in methods:
        for seed in range(seeds[m.name]):
            print(f"reproduce.py: training {m.name} seed {seed} (lr {lrs[m.name]:g}) ...", flush=True)
            r = train(m, prof, pattern, samples, runs, seed, val, threads, lr=lrs[m.name])
            timings.setdefault(m.name, []).append(r)
            commands.append(r["command"])
    analysis = analyse(methods, prof, runs, seeds, steps_per_epoch, timings)
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "curves.json", json.dumps(analysis["curves"], indent=1))
    write_text_atomic(results / "analysis.json", json.dumps({k: v for k, v in analysis.items() if k != "curves"},
                                                             indent=1))
    from uniclip_plugin.bench import evaluate as bench
    from uniclip_plugin.study import analysis as study
    study.curves_plot(analysis["curves"], results)
    model_list = ",".join(m.name for m in sorted(methods, key=lambda m: m.name != "uniclip"))
    bench_argv = ["--models", model_list, "--runs-dir", str(runs), "--data", str(data), "--out", str(results),
                  "--probe-max-train", str(prof.probe_max_train)]
    if bench.main(bench_argv) != 0:
        raise SystemExit("reproduce.py: error: the benchmark failed (see above)")
    commands.append([sys.executable, "harness/bench.py", *bench_argv])
    # Best epoch on validation, evaluated on the zero-shot test tasks (the probe's cost is kept to the final epoch)
    best_models = []
    for m in sorted(methods, key=lambda m: m.name != "uniclip"):
        for seed in range(seeds[m.name]):
            epoch = study.best_epoch(analysis["curves"][m.name][str(seed)])
            if epoch is not None:
                ckpt = runs / f"{m.name}-seed{seed}" / "checkpoints" / f"epoch_{epoch}.pt"
                best_models.append(f"{m.name}@best-seed{seed}={ckpt}:{m.model.format(size=prof.size)}")
    finals_only = all(f"epoch_{prof.epochs}.pt" in b for b in best_models)
    if best_models and not finals_only:
        from uniclip_plugin.bench.evaluate import find_datasets
        overlapping = Path(val["test"]).name.removesuffix("_test")  # the retrieval set that holds the val concepts
        disjoint = [name for name in find_datasets(data) if name != overlapping]
        best_argv = ["--models", ",".join(best_models), "--data", str(data), "--out", str(results / "best"),
                     "--feature-cache", str(results / ".features"), "--datasets", ",".join(disjoint), "--tasks",
                     "zeroshot_classification,zeroshot_retrieval"]
        if bench.main(best_argv) != 0:
            raise SystemExit("reproduce.py: error: the best-epoch benchmark failed (see above)")
        commands.append([sys.executable, "harness/bench.py", *best_argv])
    report_name = "RESULTS.md" if label == "quick" else f"RESULTS_{label}.md"
    report = (ROOT / "docs" / report_name) if (args.out == "." and not args.synthetic) else out / report_name
    command_line = " ".join(sys.argv[1:] if argv is None else argv) or f"--profile {args.profile}"
    write_results(report, command_line, label, prof, methods, skipped, analysis, commands, results, runs, seeds,
                  data_note, time.time() - began, val["val_samples"], lrs, tuning, threads,
                  sum(r["skipped"] for ts in timings.values() for r in ts))
    print(f"reproduce.py: wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
