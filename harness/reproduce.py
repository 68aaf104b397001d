"""The study: UniCLIP against CLIP (and SLIP / DeCLIP once registered) at equal budget on the embedded data.

    python harness/reproduce.py --profile quick            # minutes, one seed
    python harness/reproduce.py --profile full --seeds 3
    python harness/reproduce.py --ablations                # UniCLIP's components
    python harness/reproduce.py --profile smoke --synthetic --out /tmp/smoke   # CI: generated data, a few steps

Every method trains with ``open_clip train`` on the same tiny towers, data, epochs, batch, optimiser and schedule;
then ``harness/bench.py`` evaluates every run and ``docs/RESULTS.md`` (or ``<out>/RESULTS.md``) is written with the
tables, plots, learned per-domain-pair temperatures and offsets, wall-clock per run, the machine, versions and the exact
commands. A run whose final checkpoint exists is not trained again.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Profile:
    size: str            # tiny config suffix: CLIP-<size>, UniCLIP-<size>
    epochs: int
    batch: int
    lr: float
    warmup: int
    samples: Optional[int] = None  # --train-num-samples per epoch (None: the data's sizes.json)


PROFILES = {
    "smoke": Profile("Tiny-32", 1, 32, 1e-3, 2, samples=128),
    "quick": Profile("Tiny-32", 3, 128, 1e-3, 50),
    "full": Profile("Tiny-64", 15, 256, 1e-3, 200),
}


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
    Method("slip", "slip", "SLIP-{size}", note="SLIP (issue 7)"),
    Method("declip", "declip", "DeCLIP-{size}", note="DeCLIP (issue 7)"),
    Method("uniclip", "uniclip_mpnce", "UniCLIP-{size}", note="UniCLIP: V=2, aug-aware embedding, MP-NCE, domain sim"),
]
ABLATIONS = [
    Method("uniclip-no-aug-embed", "uniclip_mpnce", "UniCLIP-{size}", ("--no-aug-embed",)),
    Method("uniclip-infonce", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "infonce")),
    Method("uniclip-supcon", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "supcon")),
    Method("uniclip-milnce", "uniclip_mpnce", "UniCLIP-{size}", ("--mpnce-objective", "milnce")),
    Method("uniclip-shared-sim", "uniclip_mpnce", "UniCLIP-{size}", ("--no-domain-similarity",)),
    Method("uniclip-v1", "uniclip_mpnce", "UniCLIP-{size}", ("--views", "1")),
]


def available(method: Method, size: str) -> bool:
    import open_clip

    import uniclip_plugin  # noqa: F401
    from uniclip_plugin import registry
    return method.loss in registry.list_losses() and method.model.format(size=size) in open_clip.list_models()


def train_command(method: Method, prof: Profile, data: str, samples: int, runs: Path, seed: int) -> list[str]:
    return [sys.executable, "-m", "uniclip_plugin.cli", "train", "--loss", method.loss,
            "--model", method.model.format(size=prof.size), *method.flags,
            "--train-data", data, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(samples), "--batch-size", str(prof.batch), "--epochs", str(prof.epochs),
            "--lr", str(prof.lr), "--wd", "0.1", "--warmup", str(prof.warmup), "--precision", "fp32",
            "--device", "cpu", "--workers", "1", "--seed", str(seed), "--logs", str(runs),
            "--name", f"{method.name}-seed{seed}", "--save-frequency", "1", "--zeroshot-frequency", "0",
            "--log-every-n-steps", "10"]


def train(method: Method, prof: Profile, data: str, samples: int, runs: Path, seed: int) -> dict:
    """Train one run unless its final checkpoint exists; returns {"seconds", "command", "skipped"}."""
    run_dir = runs / f"{method.name}-seed{seed}"
    final = run_dir / "checkpoints" / f"epoch_{prof.epochs}.pt"
    cmd = train_command(method, prof, data, samples, runs, seed)
    timing = run_dir / "wallclock.json"
    if final.is_file():
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        return {"seconds": seconds, "command": cmd, "skipped": True}
    resume = ["--resume", "latest"] if (run_dir / "checkpoints").is_dir() else []
    start = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)))
    proc = subprocess.run(cmd + resume, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not final.is_file():
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"reproduce.py: error: training {method.name} seed {seed} failed: {tail}")
    seconds = time.time() - start
    timing.write_text(json.dumps({"seconds": seconds}))
    return {"seconds": seconds, "command": cmd, "skipped": False}


def learned_similarity(run_dir: Path, epochs: int) -> Optional[dict[str, list[float]]]:
    """Per-domain-pair temperature (1/scale) and offset of a UniCLIP checkpoint."""
    state = torch.load(run_dir / "checkpoints" / f"epoch_{epochs}.pt", map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    if sd.get("logit_scale") is None or sd["logit_scale"].numel() != 3:
        return None
    scales = sd["logit_scale"].clamp(0, 4.6052).exp()
    return {"temperature": (1 / scales).tolist(), "offset": sd["logit_bias"].tolist()}


def write_results(path: Path, prof_name: str, prof: Profile, methods: list[Method], skipped: list[Method],
                  timings: dict[str, list[float]], commands: list[str], results: Path, runs: Path, seeds: int,
                  data_note: str) -> None:
    import open_clip
    table = (results / "table.md").read_text() if (results / "table.md").is_file() else "(no bench table)"
    lines = [f"# Results ({prof_name} profile)", "",
             f"Made by `python harness/reproduce.py --profile {prof_name} --seeds {seeds}` on "
             f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
             f"torch {torch.__version__}, open_clip {open_clip.__version__}, {time.strftime('%Y-%m-%d')}.", "",
             f"Data: {data_note}", "",
             f"Every method: towers `{prof.size}`, {prof.epochs} epochs, batch {prof.batch}, AdamW lr {prof.lr} wd 0.1, "
             f"cosine schedule with {prof.warmup} warm-up steps, fp32, seed(s) 0..{seeds - 1}. Numbers come from "
             f"`{results}/json/*.json` (one clip_benchmark JSON per run, dataset and task).", "",
             "## Methods", ""]
    for m in methods:
        secs = timings.get(m.name, [])
        wall = f"{sum(secs) / len(secs):.0f} s per run" if secs else "n/a"
        lines.append(f"- **{m.name}** (`--loss {m.loss} --model {m.model.format(size=prof.size)} "
                     f"{' '.join(m.flags)}`): {m.note or 'ablation'}; wall-clock {wall}")
    for m in skipped:
        lines.append(f"- {m.name}: not run — `--loss {m.loss}` / `{m.model.format(size=prof.size)}` is not "
                     f"registered in this version ({m.note})")
    plots = ", ".join(f"`{p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}`" for p in sorted(results.glob("*.png")))
    lines += ["", "## Evaluation", "", table, "", f"Plots: {plots}", "",
              "## Learned per-domain-pair similarity (UniCLIP runs)", "",
              "| run | τ II | τ IT | τ TT | b II | b IT | b TT |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        for s in range(seeds):
            sim = learned_similarity(runs / f"{m.name}-seed{s}", prof.epochs)
            if sim:
                t, b = sim["temperature"], sim["offset"]
                lines.append(f"| {m.name}-seed{s} | " + " | ".join(f"{v:.4f}" for v in t + b) + " |")
    lines += ["", "## Commands", "", "```"] + [" ".join(c) for c in commands] + ["```", ""]
    tmp = path.with_name(".tmp-" + path.name)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--ablations", action="store_true", help="also train UniCLIP's ablations")
    parser.add_argument("--data", default="data", help="data folder (built by harness/data.py if missing)")
    parser.add_argument("--synthetic", action="store_true", help="generated data instead of the real sets (CI smoke)")
    parser.add_argument("--out", default=".", help="folder for runs/, results/ and the report")
    args = parser.parse_args(argv)
    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    runs, results = out / "runs" / args.profile, out / "results" / args.profile
    data = Path(args.data).resolve()
    if args.synthetic:
        from harness.synthetic import build_synthetic_eval, build_synthetic_pretrain
        info = build_synthetic_pretrain(data / "pretrain", n_samples=256, res=32, n_shards=4)
        build_synthetic_eval(data / "wds", res=32, n_per_class=8)
        pattern, samples, data_note = info["pattern"], info["n_samples"], "generated shapes (harness/synthetic.py)"
    else:
        from harness import data as data_builder
        manifest = data_builder.build(data, res=64)
        pattern = str(data / manifest["counts"]["pretrain"]["pattern"])
        samples = manifest["counts"]["pretrain"]["samples"]
        data_note = (f"{samples} emoji image–caption pairs in 3 styles (harness/data.py, see data/DATA_CARD.md); "
                     f"evaluation on the held-out OpenMoji style, Fashion-MNIST and digits")
    samples = prof.samples or samples
    wanted = METHODS + (ABLATIONS if args.ablations else [])
    methods = [m for m in wanted if available(m, prof.size)]
    skipped = [m for m in wanted if m not in methods]
    timings: dict[str, list[float]] = {}
    commands = []
    for m in methods:
        for seed in range(args.seeds):
            print(f"reproduce.py: training {m.name} seed {seed} ...", flush=True)
            r = train(m, prof, pattern, samples, runs, seed)
            timings.setdefault(m.name, []).append(r["seconds"])
            commands.append(r["command"])
    from harness import bench
    model_list = ",".join(m.name for m in sorted(methods, key=lambda m: m.name != "uniclip"))
    bench_argv = ["--models", model_list, "--runs-dir", str(runs), "--data", str(data), "--out", str(results)]
    if bench.main(bench_argv) != 0:
        raise SystemExit("reproduce.py: error: the benchmark failed (see above)")
    commands.append([sys.executable, "harness/bench.py", *bench_argv])
    report = (ROOT / "docs" / "RESULTS.md") if (args.out == "." and not args.synthetic) else out / "RESULTS.md"
    write_results(report, args.profile, prof, methods, skipped, timings, commands, results, runs, args.seeds,
                  data_note)
    print(f"reproduce.py: wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
