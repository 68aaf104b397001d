"""The study: UniCLIP against CLIP, SLIP and DeCLIP at equal budget on the embedded data.

    python harness/reproduce.py --profile quick            # minutes, one seed
    python harness/reproduce.py --profile full --seeds 3
    python harness/reproduce.py --ablations                # UniCLIP's components (one seed each: --ablation-seeds)
    python harness/reproduce.py --profile full --tune      # lr tuned per method on validation (4-point grid, quick)
    python harness/reproduce.py --profile smoke --synthetic --out smoke   # CI: generated data, a few steps

Every method trains with ``open_clip train`` on the same tiny towers, data, epochs, batch, optimiser and schedule;
then the benchmark (``uniclip_plugin.bench``) evaluates every run and ``<out>/docs/RESULTS.md`` (``--out .``, the
default: the project root) or ``<out>/RESULTS.md`` is written with the tables, plots, learned per-domain-pair
temperatures and offsets, wall-clock per run, the machine, versions and the exact commands (relative to the project
root). A run whose final checkpoint exists is not trained again.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import uniclip_plugin
from uniclip_plugin.bench.datasets import find_datasets
from uniclip_plugin.bench.errors import BenchError
from uniclip_plugin.bench.evaluate import run_bench
from uniclip_plugin.io import write_text_atomic
from uniclip_plugin.runs import RunDir, run_name
from uniclip_plugin.study import analysis as study
from uniclip_plugin.study.plan import ABLATIONS, METHODS, PROFILES, TUNE_LRS, Method, available, profile_samples
from uniclip_plugin.study.report import (
    StudyResult,
    images_from_report,
    images_from_results,
    relative_command,
    write_report,
)
from uniclip_plugin.study.run import OUTPUT_LOG, PROGRESS_EVERY, train, tune, write_tuning

__all__ = ["build_parser", "main", "pick_methods"]


def _add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tune`` and the lr search's profile, seeds and parallel runs."""
    parser.add_argument(
        "--tune",
        action="store_true",
        help=f"first choose each method's lr on the validation split: {', '.join(map(str, TUNE_LRS))} "
        "on --tune-profile, --tune-seeds seeds; the ablations use UniCLIP's (runs in runs/<profile>-tuned)",
    )
    parser.add_argument("--tune-profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--tune-seeds", type=int, default=1, help="seeds of each lr in the search (default 1)")
    parser.add_argument(
        "--tune-jobs",
        type=int,
        default=1,
        help="lr-search runs trained side by side (default 1); the study's own runs always train one at a time, "
        "so their wall-clock is a cost",
    )


def _add_ablation_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ablations`` and their seeds and parallel runs."""
    parser.add_argument(
        "--ablations",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="also train UniCLIP's ablations: all of them, or a comma-separated subset of "
        + ",".join(m.name for m in ABLATIONS),
    )
    parser.add_argument(
        "--ablation-seeds", type=int, default=1, help="seeds of each ablation row (default 1, whatever --seeds says)"
    )
    parser.add_argument(
        "--ablation-jobs",
        type=int,
        default=1,
        help="ablation runs trained side by side once the main methods' runs are done (default 1); their "
        "wall-clock is then no cost, and the report gives none",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``reproduce.py`` argument parser."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seeds", type=int, default=1)
    _add_ablation_arguments(parser)
    parser.add_argument(
        "--data",
        default=None,
        help="data folder (built by harness/data.py if missing; default data/, with --synthetic <out>/synthetic-data/)",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="generated data instead of the real sets (CI smoke); never written into a folder holding the real data",
    )
    parser.add_argument("--out", default=".", help="folder for runs/, results/ and the report")
    _add_tune_arguments(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP threads per training process (default: the profile's; quick: all cores, split between the runs "
        "that train side by side)",
    )
    parser.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY,
        metavar="SECONDS",
        help=f"seconds between the progress lines of a training run (default {PROGRESS_EVERY:g})",
    )
    parser.add_argument(
        "--plots-only",
        action="store_true",
        help="only redraw the report's small PNGs (<out>/docs/img/<label>_*.png) from "
        "results/<label>/ when it exists, else from docs/RESULTS*.md's tables; trains nothing",
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of " + ",".join(m.name for m in METHODS) + " (default: all)",
    )
    return parser


def pick_methods(parser: argparse.ArgumentParser, option: str, text: str, pool: list[Method]) -> list[Method]:
    """The methods of ``pool`` named in the comma-separated ``text``, in ``pool``'s order; an unknown name is a usage
    error that lists the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - {m.name for m in pool})
    if unknown:
        parser.error(f"{option}: unknown {', '.join(unknown)}; choose from " + ", ".join(m.name for m in pool))
    return [m for m in pool if m.name in names]


def _prepare_data(data: Path, synthetic: bool) -> tuple[str, int, str, dict]:
    """Build (or reuse) the data and the study's splits: (shard pattern, pairs, one-line note, validation info)."""
    if synthetic:
        from uniclip_plugin.testing.synthetic import build_synthetic_eval, build_synthetic_pretrain

        if (data / "manifest.json").is_file():  # generated shards and splits would replace the real validation split
            raise SystemExit(
                f"reproduce.py: error: --synthetic would write generated data into {data}, which holds the built "
                f"dataset (its manifest.json); pass --data <another folder>, or leave --data out "
                f"(<out>/synthetic-data)"
            )

        info = build_synthetic_pretrain(data / "pretrain", n_samples=256, res=32, n_shards=4)
        build_synthetic_eval(data / "wds", res=32, n_per_class=8)
        val = study.build_study_splits(data, retrieval="synth_retrieval", classification="synth_shapes")
        return info["pattern"], info["n_samples"], "generated shapes (uniclip_plugin.testing.synthetic)", val
    from uniclip_plugin.data import build as data_builder

    manifest = data_builder.build(data, res=64)
    pattern = str(data / manifest["counts"]["pretrain"]["pattern"])
    samples = manifest["counts"]["pretrain"]["samples"]
    val = study.build_study_splits(data)
    note = (
        f"{samples:,} emoji image–caption pairs in 3 styles (harness/data.py, see data/DATA_CARD.md); "
        f"validation: {val['val_samples']} held-out-style pairs; tests: the held-out OpenMoji style "
        f"(retrieval, 9-group and 97-subgroup zero-shot and probe), Fashion-MNIST and MNIST-5k digits"
    )
    return pattern, samples, note, val


def _tune_stage(args: argparse.Namespace, ctx: dict[str, Any]) -> Optional[dict]:
    """``--tune``: the lr search, its record, and the study's lrs; seed 0 reuses the tuning run on the same profile."""
    if not args.tune:
        return None
    out, runs, methods, lrs = ctx["out"], ctx["runs"], ctx["methods"], ctx["lrs"]
    tuned = [m for m in methods if m not in ABLATIONS]
    tune_runs = out / "runs" / f"tune-{args.tune_profile}"
    # the study's thread count (split between side-by-side runs), not the tune profile's
    tuning = tune(
        tuned,
        args.tune_profile,
        ctx["pattern"],
        ctx["data_samples"],
        tune_runs,
        ctx["val"],
        threads_each(ctx, args.tune_jobs),
        progress_every=ctx["progress_every"],
        seeds=args.tune_seeds,
        jobs=args.tune_jobs,
    )
    lrs.update(tuning["chosen"])
    if args.tune_profile == args.profile:  # seed 0 at the chosen lr is the tuning run itself: reuse it
        runs.mkdir(parents=True, exist_ok=True)
        for m in tuned:
            link = runs / run_name(m.name, 0)
            if not link.exists():
                link.symlink_to(tune_runs / run_name(m.name, 0, lrs[m.name]), target_is_directory=True)
    for m in methods:
        if m in ABLATIONS:  # an ablation changes one thing against the tuned UniCLIP; a reference row has its lr
            lrs[m.name] = m.lr or tuning["chosen"].get("uniclip", ctx["prof"].lr)
    ctx["results"].mkdir(parents=True, exist_ok=True)
    write_tuning(ctx["results"] / "tuning.json", tuning)
    return tuning


def threads_each(ctx: dict[str, Any], jobs: int) -> int:
    """OMP threads of each of ``jobs`` runs training at once: the study's threads split between them, unless --threads
    set them (on 2 cores, a pair of quick-profile runs took 4-5 min with 2 threads each, 1.4-1.7 min with 1 each)."""
    return ctx["threads"] if ctx.get("threads_given") else max(1, ctx["threads"] // jobs)


def _train_one(ctx: dict[str, Any], m: Method, seed: int, label: str, side_by_side: int) -> dict:
    """One (method, seed) run at its lr; a run that shared the machine gets no wall-clock (nan, no start)."""
    output = ctx["runs"] / run_name(m.name, seed) / OUTPUT_LOG
    print(f"reproduce.py: {label} (lr {ctx['lrs'][m.name]:g}; output: {output}) ...", flush=True)
    r = train(
        m,
        ctx["prof"],
        ctx["pattern"],
        ctx["samples"],
        ctx["runs"],
        seed,
        ctx["val"],
        threads_each(ctx, side_by_side),
        lr=ctx["lrs"][m.name],
        label=label,
        progress_every=ctx["progress_every"],
        side_by_side=side_by_side,
    )
    # a long study's progress at a glance: each run's own time, or that it was reused
    print(
        f"reproduce.py: {label}: "
        + ("reused (already trained)" if r["skipped"] else f"done in {r['seconds'] / 60:.1f} min"),
        flush=True,
    )
    return r if r["side_by_side"] == 1 else {**r, "seconds": float("nan"), "start": None}


def _train_all(ctx: dict[str, Any]) -> tuple[dict[str, list[dict]], list[list[str]]]:
    """Every (method, seed) run at its lr: the timings per method and the training commands. The main methods train
    one at a time (their wall-clock is compared); the ablations then ``ablation_jobs`` side by side."""
    jobs = [(m, seed) for m in ctx["methods"] for seed in range(ctx["seeds"][m.name])]
    jobs = [(m, seed, f"run {k} of {len(jobs)}: {m.name} seed {seed}") for k, (m, seed) in enumerate(jobs, start=1)]
    main_jobs = [j for j in jobs if j[0] not in ABLATIONS]
    ablation_jobs = [j for j in jobs if j[0] in ABLATIONS]
    done = [_train_one(ctx, *job, side_by_side=1) for job in main_jobs]
    parallel = min(ctx["ablation_jobs"], max(1, len(ablation_jobs)))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        done += pool.map(lambda job: _train_one(ctx, *job, side_by_side=parallel), ablation_jobs)
    timings: dict[str, list[dict]] = {}
    for (m, _, _), r in zip(main_jobs + ablation_jobs, done, strict=True):
        timings.setdefault(m.name, []).append(r)
    return timings, [r["command"] for r in done]


def _bench(
    models: list[str], out: Path, data: Path, what: str, runs_dir: Optional[Path] = None, **options: Any
) -> list[str]:
    """The benchmark on ``models`` (printing its table as ``harness/bench.py`` does); returns its command."""
    try:
        run_bench(models, runs_dir or "runs", data, out, **options)
    except BenchError as err:
        print(f"bench.py: {err}", file=sys.stderr)
        raise SystemExit(f"reproduce.py: error: {what} failed (see above)") from None
    print((out / "table.md").read_text())
    argv = ["--models", ",".join(models)] + (["--runs-dir", str(runs_dir)] if runs_dir else [])
    argv += ["--data", str(data), "--out", str(out)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", ",".join(value) if isinstance(value, list) else str(value)]
    return [sys.executable, "harness/bench.py", *argv]


def _bench_stages(ctx: dict[str, Any], analysis: dict) -> list[list[str]]:
    """The benchmark of every final checkpoint, then of every best-validation epoch that is not the final one."""
    prof, results, data, methods = ctx["prof"], ctx["results"], ctx["data"], ctx["methods"]
    ordered = sorted(methods, key=lambda m: m.name != "uniclip")
    commands = [
        _bench(
            [m.name for m in ordered], results, data, "the benchmark", ctx["runs"], probe_max_train=prof.probe_max_train
        )
    ]
    # Best epoch on validation, evaluated on the zero-shot test tasks (the probe's cost is kept to the final epoch)
    best_models = []
    for m in ordered:
        for seed in range(ctx["seeds"][m.name]):
            epoch = study.best_epoch(analysis["curves"][m.name][str(seed)])
            if epoch is not None:
                ckpt = RunDir(ctx["runs"] / run_name(m.name, seed)).epoch_checkpoint(epoch)
                best_models.append(f"{m.name}@best-seed{seed}={ckpt}:{m.model.format(size=prof.size)}")
    if best_models and not all(f"epoch_{prof.epochs}.pt" in b for b in best_models):
        overlapping = Path(ctx["val"]["test"]).name.removesuffix("_test")  # the retrieval set with the val concepts
        disjoint = [name for name in find_datasets(data) if name != overlapping]
        commands.append(
            _bench(
                best_models,
                results / "best",
                data,
                "the best-epoch benchmark",
                feature_cache=results / ".features",
                datasets=disjoint,
                tasks="zeroshot_classification,zeroshot_retrieval",
            )
        )
    return commands


def _plan(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The study's folders, methods, seeds, threads and data, from the arguments (data built when missing)."""
    prof = PROFILES[args.profile]
    out = Path(args.out).resolve()
    label = args.profile + ("-tuned" if args.tune else "")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be ≥ 1, got {args.threads}")
    if min(args.tune_seeds, args.tune_jobs, args.ablation_jobs) < 1:
        parser.error(
            f"--tune-seeds, --tune-jobs and --ablation-jobs must be ≥ 1, got {args.tune_seeds}, {args.tune_jobs} "
            f"and {args.ablation_jobs}"
        )
    if not args.progress_every > 0:
        parser.error(f"--progress-every must be > 0, got {args.progress_every:g}")
    main_methods = METHODS if not args.methods else pick_methods(parser, "--methods", args.methods, METHODS)
    ablations = (
        []
        if args.ablations is None
        else ABLATIONS
        if args.ablations == "all"
        else pick_methods(parser, "--ablations", args.ablations, ABLATIONS)
    )
    data = Path(args.data or (Path(args.out) / "synthetic-data" if args.synthetic else "data")).resolve()
    pattern, data_samples, data_note, val = _prepare_data(data, args.synthetic)
    samples = profile_samples(prof, data_samples)
    wanted = main_methods + ablations
    methods = [m for m in wanted if available(m, prof.size)]
    return {
        "prof": prof,
        "out": out,
        "label": label,
        "runs": out / "runs" / label,
        "results": out / "results" / label,
        # OMP threads of every training process: --threads, else the profile's, else the caller's setting / cores
        "threads": args.threads or prof.threads or int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)),
        "threads_given": args.threads is not None,
        "data": data,
        "pattern": pattern,
        "data_samples": data_samples,
        "data_note": data_note,
        "val": val,
        "samples": samples,
        "steps_per_epoch": math.ceil(samples / prof.batch),  # open_clip_train, 1 worker
        "methods": methods,
        "skipped": [m for m in wanted if m not in methods],
        "seeds": {m.name: min(args.seeds, args.ablation_seeds) if m in ABLATIONS else args.seeds for m in methods},
        "lrs": {m.name: m.lr or prof.lr for m in methods},
        "progress_every": args.progress_every,
        "ablation_jobs": args.ablation_jobs,
    }


def _side_by_side_threads(timings: dict[str, list[dict]]) -> Optional[int]:
    """The OMP threads the runs trained side by side had, when all recorded the same count (else None)."""
    counts = {r.get("threads") for ts in timings.values() for r in ts if r.get("side_by_side", 1) > 1}
    return counts.pop() if len(counts) == 1 else None


def _report_name(label: str) -> str:
    return "RESULTS.md" if label == "quick" else f"RESULTS_{label}.md"


def _images(results: Path, runs: Path, out: Path, label: str, analysis: dict, methods: list[str]) -> list[Path]:
    """``<out>/<label>_*.png`` from the study's results and runs (loss curves from each run's log)."""
    loss = {d.name: RunDir(d).loss_curve() for d in sorted(runs.glob("*-seed*")) if d.is_dir()}
    return images_from_results(results, out, label, analysis, methods, loss)


def _plots_only(args: argparse.Namespace) -> int:
    """``--plots-only``: redraw ``docs/img/<label>_*.png`` from ``results/<label>/`` (curves included) when the
    study's files are there, else from the committed report's tables (bar charts only: no per-epoch data)."""
    out = Path(args.out).resolve()
    label = args.profile + ("-tuned" if args.tune else "")
    results, report, images = out / "results" / label, out / "docs" / _report_name(label), out / "docs" / "img"
    if (results / "analysis.json").is_file() and (results / "curves.json").is_file():
        analysis = {
            **json.loads((results / "analysis.json").read_text()),
            "curves": json.loads((results / "curves.json").read_text()),
        }
        written = _images(
            results, out / "runs" / label, images, label, analysis, [row["method"] for row in analysis["rows"]]
        )
    elif report.is_file():
        written = images_from_report(report, images, label)
    else:
        raise SystemExit(f"reproduce.py: error: neither {results}/analysis.json nor {report} exists")
    for path in written:
        print(f"reproduce.py: wrote {path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


def _analyse(ctx: dict[str, Any], timings: dict) -> dict[str, Any]:
    """Curves and analysis of the trained runs, written to the results folder with the validation plot."""
    analysis = study.analyse(
        [m.name for m in ctx["methods"]], ctx["prof"].epochs, ctx["runs"], ctx["seeds"], ctx["steps_per_epoch"], timings
    )
    results = ctx["results"]
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "curves.json", json.dumps(analysis["curves"], indent=1))
    write_text_atomic(
        results / "analysis.json", json.dumps({k: v for k, v in analysis.items() if k != "curves"}, indent=1)
    )
    study.curves_plot(analysis["curves"], results)
    return analysis


def _result(
    args: argparse.Namespace,
    argv: Optional[list[str]],
    ctx: dict[str, Any],
    analysis: dict[str, Any],
    commands: list,
    tuning: Optional[dict],
    timings: dict,
    elapsed: float,
) -> tuple[Path, StudyResult]:
    """Where the report goes and what it says: the project root's docs/ (with small PNGs in docs/img) for a real
    study run there, else beside runs/ and results/, pointing at the results folder's PNGs."""
    results = ctx["results"]
    in_docs = args.out == "." and not args.synthetic
    report = (ctx["out"] / "docs" if in_docs else ctx["out"]) / _report_name(ctx["label"])
    order = sorted((m.name for m in ctx["methods"]), key=lambda n: n != "uniclip")
    images = _images(results, ctx["runs"], report.parent / "img", ctx["label"], analysis, order) if in_docs else []
    words = relative_command(list(sys.argv[1:] if argv is None else argv), ctx["out"])  # no machine paths
    result = StudyResult(
        root=ctx["out"],
        label=ctx["label"],
        command_line=words or f"--profile {args.profile}",
        prof=ctx["prof"],
        methods=ctx["methods"],
        skipped=ctx["skipped"],
        ablations=[m.name for m in ctx["methods"] if m in ABLATIONS],
        analysis=analysis,
        commands=commands,
        results=results,
        runs=ctx["runs"],
        seeds=ctx["seeds"],
        data_note=ctx["data_note"],
        elapsed=elapsed,
        val_samples=ctx["val"]["val_samples"],
        lrs=ctx["lrs"],
        tuning=tuning,
        threads=ctx["threads"],
        side_by_side_threads=_side_by_side_threads(timings),
        reused=sum(r["skipped"] for ts in timings.values() for r in ts),
        images=images,
        report_dir=report.parent,
    )
    return report, result


def main(argv: Optional[list[str]] = None) -> int:
    """Run the study (see the module docstring): train, analyse, benchmark, write the report.

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 on success (user errors exit with a one-line ``reproduce.py: error:`` message).
    """
    uniclip_plugin.register()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plots_only:
        return _plots_only(args)
    began = time.time()
    ctx = _plan(args, parser)
    tuning = _tune_stage(args, ctx)
    timings, commands = _train_all(ctx)
    commands = (list(tuning["commands"]) if tuning else []) + commands
    analysis = _analyse(ctx, timings)
    commands += _bench_stages(ctx, analysis)
    report, result = _result(args, argv, ctx, analysis, commands, tuning, timings, time.time() - began)
    write_report(report, result)
    print(f"reproduce.py: wrote {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
