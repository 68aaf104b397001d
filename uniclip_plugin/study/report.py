"""The study's report: a :class:`StudyResult` rendered to markdown (``RESULTS.md`` / ``RESULTS_<label>.md``).

Paths and commands in the report are relative to the project root (the study's ``--out``), and the interpreter is
written ``python``, so a report never names a folder of the machine it was made on. The hand-written
``## Reading these numbers`` section of an existing report is kept as it is.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from uniclip_plugin.io import write_text_atomic
from uniclip_plugin.runs import RunDir, run_name
from uniclip_plugin.study import analysis as study
from uniclip_plugin.study.plan import Method, Profile

__all__ = [
    "StudyResult",
    "ABLATION_METRICS",
    "SUMMARY_METRICS",
    "summary_table",
    "objective_table",
    "ablation_table",
    "tuning_lines",
    "relative_command",
    "render",
    "write_report",
    "READING_MARKER",
    "read_report_tables",
    "parse_cell",
    "write_images",
    "images_from_report",
    "IMAGE_DPI",
    "VALIDATION_COLUMNS",
]

READING_MARKER = "\n## Reading these numbers"  # the hand-written analysis that follows is kept on a rewrite
IMAGE_DPI = 100  # docs/img PNGs: small enough to commit (tens of KB), sharp enough to read
CURVE_DPI = 80  # the curve plots: a smoke study's were 53-58 KB at 100 dpi, a real one has more points
# the validation table's columns drawn as bars in <label>_validation.png
VALIDATION_COLUMNS = ("final val R@1", "best val R@1", "val R@1 at equal wall-clock")

# Compact ablation table: (dataset, task, metric, column label); absent sets are left out
# clip_benchmark's image_retrieval_recall is text → image (a caption retrieves its image), text_retrieval image → text
ABLATION_METRICS = (
    (
        "heldout_emoji_retrieval_test",
        "zeroshot_retrieval",
        "image_retrieval_recall@1",
        "test image retrieval R@1 (T→I)",
    ),
    ("heldout_emoji_retrieval_test", "zeroshot_retrieval", "text_retrieval_recall@1", "test text retrieval R@1 (I→T)"),
    ("heldout_emoji_group", "zeroshot_classification", "acc1", "group zero-shot"),
    ("heldout_emoji_subgroup", "zeroshot_classification", "acc1", "subgroup zero-shot"),
    ("fmnist", "zeroshot_classification", "acc1", "Fashion-MNIST zero-shot"),
    ("fmnist", "linear_probe", "lp_acc1", "Fashion-MNIST probe"),
)


@dataclass
class StudyResult:
    """Everything the report states about one study call.

    Attributes:
        root: the project root (``--out``); paths in the report are relative to it.
        label: the profile name, ``-tuned`` appended with ``--tune``.
        command_line: the study's arguments as given.
        prof: the training profile.
        methods: the methods trained (main methods, then ablations).
        skipped: the methods this version does not register.
        ablations: the names of the ablation rows among ``methods``.
        analysis: ``uniclip_plugin.study.analysis.analyse``'s result.
        commands: every command run (training, benchmark), absolute as run.
        results: the results folder; runs: the runs folder.
        seeds: seeds per method.
        data_note: one sentence on the data.
        elapsed: seconds the whole call took.
        val_samples: validation pairs.
        lrs: the lr of each method.
        tuning: ``uniclip_plugin.study.run.tune``'s result, or None.
        threads: OMP threads per training process; side_by_side_threads: those of each run trained side by side.
        reused: runs an earlier call had trained.
        images: the small PNGs written for the report (``docs/img/<label>_*.png``), shown inline; empty: the report
            lists the results folder's PNGs instead.
        report_dir: the folder of the report file (image links are relative to it).
    """

    root: Path
    label: str
    command_line: str
    prof: Profile
    methods: list[Method]
    skipped: list[Method]
    ablations: list[str]
    analysis: dict
    commands: list[list[str]]
    results: Path
    runs: Path
    seeds: dict[str, int]
    data_note: str
    elapsed: float
    val_samples: int
    lrs: dict[str, float] = field(default_factory=dict)
    tuning: Optional[dict] = None
    threads: int = 1
    side_by_side_threads: Optional[int] = None
    reused: int = 0
    images: list[Path] = field(default_factory=list)
    report_dir: Optional[Path] = None

    def rel(self, path: Path) -> str:
        """``path`` relative to the project root (``..`` steps when it lies outside)."""
        return os.path.relpath(path, self.root)


def _relative_word(word: str, root: Path) -> str:
    if os.path.isabs(word):
        return os.path.relpath(word, root)
    # paths inside a longer argument (--models NAME=CHECKPOINT:CONFIG,...)
    return word.replace(f"{root}{os.sep}", "")


def relative_command(cmd: list[str], root: Path) -> str:
    """A command as the report quotes it: the interpreter as ``python``, absolute paths relative to ``root``.

    Args:
        cmd: the command as run (absolute paths).
        root: the project root (the study's ``--out``).

    Returns:
        The command as one line.
    """
    words = ["python" if i == 0 and word == sys.executable else word for i, word in enumerate(cmd)]
    return " ".join(_relative_word(w, root) for w in words)


# the summary table's columns (the README quotes that table): (dataset, task, metric, header)
SUMMARY_METRICS = (
    ABLATION_METRICS[0][:3] + ("test image R@1",),
    ABLATION_METRICS[1][:3] + ("test text R@1",),
    ("heldout_emoji_group", "linear_probe", "lp_acc1", "emoji-group probe"),
    ("digits", "linear_probe", "lp_acc1", "digits probe"),
)


def _read_per_run(results_csv: Path) -> dict[tuple[str, int, str, str, str], float]:
    """``results.csv`` as (method, seed, dataset, task, metric) → value, for runs named ``<method>-seed<N>``."""
    per_run: dict[tuple[str, int, str, str, str], float] = {}
    if results_csv.is_file():
        with open(results_csv, newline="") as f:
            for r in csv.DictReader(f):
                seed = r["run"].rsplit("-seed", 1)[-1]
                if seed.isdigit():
                    per_run[(r["method"], int(seed), r["dataset"], r["task"], r["metric"])] = float(r["value"])
    return per_run


def _mean_over(values: list[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return statistics.mean(kept) if kept and len(kept) == len(values) else None


def _delta_cell(value: Optional[float], base: Optional[float], scale: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{scale * value:.1f}"
    return text if base is None or math.isnan(base) else text + f" (Δ {scale * (value - base):+.1f})"


def ablation_table(results_csv: Path, rows: list[dict], full: str, ablations: list[str]) -> list[str]:
    """Markdown lines: the full UniCLIP and each ablation, final val R@1 and key test metrics, Δ against ``full``.

    Seed-matched: an ablation run with seeds 0..k-1 is compared with the full model's mean over the same seeds (the
    spread between seeds is as large as most ablation effects at the quick budget)."""
    per_run = _read_per_run(results_csv)
    metrics = [m for m in ABLATION_METRICS if any(k[0] == full and k[2:] == m[:3] for k in per_run)]
    val = {r["method"]: r["final_val_r1"] for r in rows}
    lines = [
        "| run | seeds | final val R@1 | " + " | ".join(m[3] for m in metrics) + " |",
        "|---|---|---|" + "---|" * len(metrics),
    ]
    full_seeds = list(range(len(val.get(full) or [])))
    for name in [full, *ablations]:
        seeds = list(range(len(val.get(name) or [])))
        base_seeds = None if name == full or any(s not in full_seeds for s in seeds) else seeds
        own_val = _mean_over([val[name][s] for s in seeds]) if seeds else None
        base_val = _mean_over([val[full][s] for s in base_seeds]) if base_seeds else None
        cells = [_delta_cell(own_val, base_val, 1.0)]
        for m in metrics:
            own = _mean_over([per_run.get((name, s, *m[:3])) for s in seeds]) if seeds else None
            base = _mean_over([per_run.get((full, s, *m[:3])) for s in base_seeds]) if base_seeds else None
            cells.append(_delta_cell(own, base, 100.0))
        seed_text = "–" if not seeds else f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}..{seeds[-1]}"
        lines.append(f"| {name} | {seed_text} | " + " | ".join(cells) + " |")
    return lines


def summary_table(results_csv: Path, rows: list[dict], lrs: dict[str, float]) -> list[str]:
    """Markdown lines: one row per method (analysis ``rows`` order) with its lr, final validation R@1, the
    ``SUMMARY_METRICS`` at the final epoch and s / step; mean ± std over its seeds (n/a: no value)."""
    per_run = _read_per_run(results_csv)
    lines = [
        "| method | lr | val R@1 (final) | " + " | ".join(m[3] for m in SUMMARY_METRICS) + " | s / step |",
        "|---|---|---|" + "---|" * len(SUMMARY_METRICS) + "---|",
    ]
    for row in rows:
        name, seeds = row["method"], range(len(row["final_val_r1"]))
        cells = [f"{lrs[name]:g}", study.mean_std(row["final_val_r1"])]
        for metric in SUMMARY_METRICS:
            values = [per_run.get((name, s, *metric[:3])) for s in seeds]
            cells.append(study.mean_std([100 * v for v in values if v is not None]))
        step = row["seconds_per_step"]
        cells.append("n/a" if math.isnan(step) else f"{step:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def tuning_lines(tuning: dict) -> list[str]:
    """Markdown: the grid's best-epoch validation R@1 per method, the chosen lr in bold."""
    grid = tuning["grid"]
    lines = [
        "| method | " + " | ".join(f"lr {lr:g}" for lr in grid) + " | chosen |",
        "|---|" + "---|" * (len(grid) + 1),
    ]
    for method, scores in tuning["scores"].items():
        chosen = tuning["chosen"][method]
        cells = [(f"**{scores[lr]:.2f}**" if lr == chosen else f"{scores[lr]:.2f}") for lr in grid]  # ties at .1f
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen:g} |")
    return lines


def tuning_seeds(tuning: dict) -> str:
    """``seed 0`` or ``seeds 0..N-1, mean`` (a search recorded before ``seeds`` existed used seed 0)."""
    n = tuning.get("seeds", 1)
    return "seed 0" if n == 1 else f"seeds 0..{n - 1}, mean"


def _trained_text(r: StudyResult) -> str:
    rows = r.analysis["rows"]
    n_runs = sum(len(row["final_val_r1"]) for row in rows)
    timed = [row for row in rows if not math.isnan(row["seconds_per_run"])]  # side-by-side runs have no cost
    n_timed = sum(len(row["final_val_r1"]) for row in timed)
    train_minutes = sum(row["seconds_per_run"] * len(row["final_val_r1"]) for row in timed) / 60
    if n_timed == n_runs:
        trained = f"the {n_runs} training runs took {train_minutes:.1f} min in all, each timed when it was trained"
    else:
        trained = (
            f"the {n_timed} of the {n_runs} training runs that trained alone took {train_minutes:.1f} min in all, "
            f"each timed when it was trained; the other {n_runs - n_timed} trained side by side and are not timed"
        )
    if r.reused:
        trained += (
            f"; {r.reused} of them had been trained by an earlier call and were reused, so this command's own "
            f"time covers only the rest"
        )
    return trained


def _seed_text(r: StudyResult) -> str:
    main_seeds = max((r.seeds[m.name] for m in r.methods if m.name not in r.ablations), default=1)
    text = f"seeds 0..{main_seeds - 1}" if main_seeds > 1 else "seed 0"
    if r.ablations:
        n_abl = max(r.seeds[name] for name in r.ablations)
        text += f" (ablation rows: {'seeds 0..' + str(n_abl - 1) if n_abl > 1 else 'seed 0'})"
    return text


def _lr_texts(r: StudyResult) -> tuple[str, str]:
    if r.tuning:
        return (
            "with each method's lr as tuned below",
            f"The learning rate was tuned on the validation split with the same effort for every method: "
            f"lr ∈ {{{', '.join(f'{lr:g}' for lr in r.tuning['grid'])}}} on the {r.tuning['profile']} profile, "
            f"{tuning_seeds(r.tuning)}, "
            f'each scored by its best-epoch validation R@1 (the table under "Learning-rate '
            f"tuning\"); the ablations use UniCLIP's lr. Nothing else was tuned.",
        )
    return (
        f"lr {r.prof.lr}",
        "No hyper-parameter was tuned for any method (the same zero tuning effort for all): these are "
        "open_clip-style defaults fixed before the first run (`--tune` searches the lr per method).",
    )


def _header(r: StudyResult) -> list[str]:
    import open_clip
    import torch

    prof, results = r.prof, r.results
    lr_text, tuning_text = _lr_texts(r)
    return [
        f"# Results ({r.label} profile)",
        "",
        f"Made by `python harness/reproduce.py {r.command_line}` on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, {time.strftime('%Y-%m-%d')}; the whole "
        f"command took {r.elapsed / 60:.1f} min (data build, training, validation, benchmark; {_trained_text(r)}). "
        f"Every number below "
        f"comes from `{r.rel(results)}/json/*.json` (one clip_benchmark JSON per run, dataset and task), "
        f"`{r.rel(results)}/best/json/*.json` (best-epoch runs) and `{r.rel(results)}/curves.json` "
        f"(validation curves).",
        "",
        f"Data: {r.data_note}",
        "",
        f"Every method: towers `{prof.size}`, {prof.epochs} epochs of "
        f"{r.analysis['steps_per_epoch']} steps (an epoch = {prof.epoch_fraction:g} × the data, resampled), batch "
        f"{prof.batch}, AdamW {lr_text}, wd 0.1, cosine schedule with {prof.warmup} warm-up steps, fp32, "
        f"{_threads_text(r)}, {_seed_text(r)}. {tuning_text} Only the epoch is "
        f"chosen, on the validation split, for the best-epoch rows. Linear probes use at most "
        f"{prof.probe_max_train:,} training samples per set (a seeded subset).",
        "",
    ]


def _threads_text(r: StudyResult) -> str:
    text = f"{r.threads} OMP thread(s) per training process"
    if r.side_by_side_threads not in (None, r.threads):
        text += f" ({r.side_by_side_threads} for each of the runs trained side by side)"
    return text


def _methods_and_tests(r: StudyResult) -> list[str]:
    size = r.prof.size
    lines = ["## Methods", ""]
    for m in r.methods:
        lines.append(
            f"- **{m.name}** (`--loss {m.loss} --model {m.model.format(size=size)} "
            f"{' '.join(m.flags)}`, lr {r.lrs[m.name]:g}): {m.note or 'ablation'}"
        )
    for m in r.skipped:
        lines.append(
            f"- {m.name}: not run — `--loss {m.loss}` / `{m.model.format(size=size)}` is not "
            f"registered in this version ({m.note})"
        )
    table = (r.results / "table.md").read_text() if (r.results / "table.md").is_file() else "(no bench table)"
    best = r.results / "best" / "table.md"
    best_table = (
        best.read_text()
        if best.is_file()
        else "(every run's best validation epoch is its final epoch: the table above applies)"
    )
    return lines + [
        "",
        "## Test sets, final epoch",
        "",
        table,
        "",
        "`heldout_emoji_retrieval` holds all 1,852 held-out concepts (it shares 896 with the validation "
        "split); `heldout_emoji_retrieval_test` holds only the 956 concepts never used for validation.",
        "",
        "## Test sets, epoch chosen on validation (zero-shot tasks; disjoint from validation)",
        "",
        best_table,
        "",
    ]


def _shared_machine_note(r: StudyResult) -> str:
    """A sentence on the rows without a wall-clock: their runs trained side by side (``--ablation-jobs``)."""
    shared = [row["method"] for row in r.analysis["rows"] if math.isnan(row["seconds_per_run"])]
    if not shared:
        return ""
    return (
        f" {', '.join(shared)}: trained side by side with other runs (`--ablation-jobs`), so their wall-clock is "
        "no cost and they have no equal-wall-clock value (nan, n/a)."
    )


def _validation(r: StudyResult) -> list[str]:
    analysis = r.analysis
    lines = [
        "## Validation, cost and equal wall-clock",
        "",
        f"Validation R@1 = mean of image→text and text→image R@1 over the {r.val_samples} validation pairs "
        f"(open_clip_train `--val-data`, after every epoch). Equal wall-clock: each method's validation R@1 "
        f"interpolated at {analysis['budget_seconds']:.0f} s after its training process started, when the "
        f"cheapest method had finished (n/a: that method's first validation came later). s / run includes "
        f"process start-up and validation; s / step = s / run over the steps." + _shared_machine_note(r),
        "",
        "| method | s / run | s / step | × clip | final val R@1 | best val R@1 | best epoch | "
        "val R@1 at equal wall-clock |",
        "|---|---|---|---|---|---|---|---|",
    ]
    clip_step = next((row["seconds_per_step"] for row in analysis["rows"] if row["method"] == "clip"), float("nan"))
    for row in analysis["rows"]:
        ratio = row["seconds_per_step"] / clip_step if clip_step == clip_step else float("nan")
        lines.append(
            f"| {row['method']} | {row['seconds_per_run']:.0f} | {row['seconds_per_step']:.3f} | "
            f"{ratio:.2f} | {study.mean_std(row['final_val_r1'])} | {study.mean_std(row['best_val_r1'])} | "
            f"{', '.join(str(b) for b in row['best_epochs'])} | {study.mean_std(row['val_r1_at_budget'])} |"
        )
    eff = analysis["data_efficiency"]
    if eff:
        lines += [
            "",
            "Data efficiency (issue 9; the paper's claim): steps UniCLIP needs to reach CLIP's final "
            "validation R@1, as a fraction of CLIP's steps (goal ≤ 0.5): "
            + "; ".join(
                f"seed {e['seed']}: target {e['target_val_r1']:.1f} → "
                + ("not reached" if math.isnan(e["fraction"]) else f"{e['fraction']:.2f}")
                for e in eff
            )
            + ".",
        ]
    return lines


def _ablations_and_tuning(r: StudyResult) -> list[str]:
    lines: list[str] = []
    if r.ablations:
        lines += [
            "",
            "## UniCLIP ablations (docs/METHODS.md §UniCLIP) and view diagnostics",
            "",
            "Final epoch; values in % (val R@1 in % of the validation pairs), mean over the row's seeds; Δ in "
            "points against the full `uniclip` on the same seeds. Every row changes one thing, with the flag "
            "listed under Methods.",
            "",
        ]
        lines += ablation_table(r.results / "results.csv", r.analysis["rows"], "uniclip", r.ablations)
    if r.tuning:
        tuning = r.tuning
        lines += [
            "",
            "## Learning-rate tuning (validation split)",
            "",
            f"Best-epoch validation R@1 (%) of each lr, {tuning['profile']} profile, {tuning_seeds(tuning)} "
            f"({tuning['seconds'] / 60:.1f} min of training; `{r.rel(r.results)}/tuning.json`). The chosen lr "
            f"(bold) trains the runs above. The search runs on the {tuning['profile']} profile to keep its cost "
            f"down; where that profile is shorter than this one, an lr that learns fastest early may not be "
            f"the best over the whole run.",
            "",
        ]
        lines += tuning_lines(tuning)
    return lines


def _plot_lines(r: StudyResult) -> list[str]:
    """The report's plots: the ``docs/img`` images inline, else the results folder's PNGs by name."""
    if not r.images:
        return ["", "Plots: " + ", ".join(f"`{r.rel(p)}`" for p in sorted(r.results.glob("*.png")))]
    where = r.report_dir or r.root
    lines = ["", f"Plots (`{r.rel(r.images[0].parent)}/`; full size in `{r.rel(r.results)}/`):", ""]
    return lines + [f"![{p.stem.replace('_', ' ')}]({os.path.relpath(p, where)})" for p in r.images]


def _similarity_and_commands(r: StudyResult) -> list[str]:
    lines = [
        *_plot_lines(r),
        "",
        "## Learned per-domain-pair similarity (UniCLIP runs)",
        "",
        "| run | τ II | τ IT | τ TT | b II | b IT | b TT |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in r.methods:
        for s in range(r.seeds[m.name]):
            name = run_name(m.name, s)
            sim = study.learned_similarity(r.runs / name / "checkpoints" / f"epoch_{r.prof.epochs}.pt")
            if sim:
                t, b = sim["temperature"], sim["offset"]
                lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in t + b) + " |")
    lines += ["", *objective_table(r.runs, [(m.name, r.seeds[m.name]) for m in r.methods])]
    return lines + ["", "## Commands", "", "```"] + [relative_command(c, r.root) for c in r.commands] + ["```", ""]


# MP-NCE's per-group metrics (uniclip_plugin.losses.mpnce) shown at the end of training
OBJECTIVE_METRICS = ("loss_it", "prob_it", "pos_cos_it", "loss_ii", "prob_ii", "pos_cos_ii")


def objective_table(runs: Path, methods: list[tuple[str, int]]) -> list[str]:
    """Markdown lines: for each method that logs MP-NCE's per-group metrics, their mean over its seeds at the end of
    training (each run: the mean of its last 20 logged batches); empty when no method does."""
    lines = [
        "## UniCLIP's objective at the end of training (training batches)",
        "",
        "Per positive group (IT: image–text, II: image–image): the mean pair loss, the mean probability of a positive "
        "against its negatives, and the mean cosine of a positive pair; each run's last 20 logged batches "
        "(`Loss metrics:` lines of its `out.log`), then the mean ± std over seeds.",
        "",
        "| method | seeds | " + " | ".join(OBJECTIVE_METRICS) + " |",
        "|---|---|" + "---|" * len(OBJECTIVE_METRICS),
    ]
    rows = 0
    for name, seeds in methods:
        per_seed = [RunDir(runs / run_name(name, s)).loss_metrics() for s in range(seeds)]
        if not per_seed or not all("loss_it" in m for m in per_seed):
            continue
        cells = [study.mean_std([m.get(k, float("nan")) for m in per_seed], digits=3) for k in OBJECTIVE_METRICS]
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
        rows += 1
    return lines if rows else []


def _summary(r: StudyResult) -> list[str]:
    return [
        "## Summary",
        "",
        "Final epoch, mean ± std over the seeds; % (test = the held-out concepts disjoint from validation; image R@1: "
        "a caption retrieves its image); s / step as in the validation table below. README quotes this table.",
        "",
        *summary_table(r.results / "results.csv", r.analysis["rows"], r.lrs),
        "",
    ]


def render(result: StudyResult) -> str:
    """The generated part of the report (everything before ``## Reading these numbers``)."""
    lines = (
        _header(result)
        + _summary(result)
        + _methods_and_tests(result)
        + _validation(result)
        + _ablations_and_tuning(result)
        + _similarity_and_commands(result)
    )
    return "\n".join(lines)


def write_report(path: Path, result: StudyResult) -> None:
    """Write the report to ``path``, keeping the hand-written ``## Reading these numbers`` section already there."""
    previous = path.read_text() if path.is_file() else ""
    keep = previous[previous.index(READING_MARKER) :] if READING_MARKER in previous else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(result) + keep)


# ------------------------------------------------------------------------------------------ images for docs/img
def parse_cell(text: str) -> tuple[float, float]:
    """A report cell ``2.0 ± 0.5 (Δ +0.5)`` / ``**2.90**`` / ``1.6`` / ``n/a`` / ``–`` → ``(mean, std)``; the std is 0
    for a single value and both are nan for no value."""
    m = re.match(r"\**\s*(-?\d+(?:\.\d+)?)\**(?:\s*±\s*(\d+(?:\.\d+)?))?", text.strip())
    if not m:
        return float("nan"), float("nan")
    return float(m[1]), float(m[2]) if m[2] else 0.0


def read_report_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The first markdown table under each ``## `` heading of a report, as rows of ``{column header: cell}``.

    Args:
        text: the report's markdown.

    Returns:
        Heading text (without ``## ``) → its table's rows; headings without a table are left out.
    """
    tables: dict[str, list[dict[str, str]]] = {}
    heading, header, done = None, None, set()
    for line in text.splitlines():
        if line.startswith("## "):
            heading, header = line[3:].strip(), None
        elif heading is None or heading in done:
            continue
        elif line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set(line.strip()) <= set("|-: "):  # not the |---| rule
                tables.setdefault(heading, []).append(dict(zip(header, cells, strict=False)))
        elif header is not None:
            done.add(heading)  # the first table ended: later ones under this heading are not read
            header = None
    return tables


def _summary_from_table(rows: list[dict[str, str]]) -> list[dict]:
    """The report's "Test sets" table → ``uniclip_plugin.bench.report.summarise``-style rows (fractions, not %)."""
    summary = []
    for row in rows:
        for column, cell in row.items():
            m = re.fullmatch(r"(.+) \(n=(\d+)\)", column)
            if m:
                mean, std = parse_cell(cell)
                summary.append(
                    {
                        "method": m[1],
                        "dataset": row["dataset"],
                        "task": row["task"],
                        "metric": row["metric"],
                        "mean": mean / 100,
                        "std": std / 100,
                        "n": int(m[2]),
                    }
                )
    return summary


def _read_summary_csv(path: Path) -> list[dict]:
    """``summary.csv`` of the benchmark as summary rows (numbers parsed)."""
    with open(path, newline="") as f:
        return [
            {**r, "mean": float(r["mean"]), "std": float(r["std"] or "nan"), "n": int(r["n"])}
            for r in csv.DictReader(f)
        ]


def _validation_figure(stats: dict[tuple[str, str], tuple[float, float]], methods: list[str]) -> object:
    """Bars of the validation table's ``VALIDATION_COLUMNS``, one colour per method (values in %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from uniclip_plugin.bench.report import grouped_bars

    fig, ax = plt.subplots(figsize=(7, 3.6))
    grouped_bars(ax, list(VALIDATION_COLUMNS), methods, stats, ylabel="validation R@1 (%)")
    ax.set_title("validation R@1 (896 held-out-style pairs)", fontsize=10)
    fig.tight_layout()
    return fig


def _save(fig: object, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    from uniclip_plugin.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path


def write_images(
    out: Path,
    label: str,
    summary: list[dict],
    val_stats: dict[tuple[str, str], tuple[float, float]],
    methods: list[str],
    curves: Optional[dict] = None,
    loss_curves: Optional[dict[str, list[tuple[int, float]]]] = None,
) -> list[Path]:
    """The report's small PNGs, ``<out>/<label>_<name>.png``: a bar chart per benchmark task, the validation bars,
    and the validation and loss curves when their data is given.

    Args:
        out: the image folder (``docs/img``); created when missing.
        label: the study's label (``quick``, ``full-tuned``), the files' prefix.
        summary: benchmark summary rows (``uniclip_plugin.bench.report.summarise``).
        val_stats: (validation column, method) → (mean, std) in %.
        methods: bar order and colours.
        curves: ``curves.json`` (method → seed → points), or None; loss_curves: run → loss points, or None.

    Returns:
        The files written, in report order.
    """
    from uniclip_plugin.bench.report import bar_charts, loss_figure

    out.mkdir(parents=True, exist_ok=True)
    written = bar_charts(summary, methods, out, prefix=f"{label}_", dpi=IMAGE_DPI)
    if val_stats:
        written.append(_save(_validation_figure(val_stats, methods), out / f"{label}_validation.png", IMAGE_DPI))
    # curves carry many more lines than bars: a lower dpi keeps them near the bars' tens of KB
    if curves:
        path = study.curves_plot(curves, out, name=f"{label}_validation_curves.png", dpi=CURVE_DPI)
        written += [path] if path else []
    fig = loss_figure(loss_curves or {})
    if fig is not None:
        written.append(_save(fig, out / f"{label}_training_curves.png", CURVE_DPI))
    return written


def images_from_report(report: Path, out: Path, label: str) -> list[Path]:
    """Redraw a committed report's bar charts from its own tables (the runs and ``results/`` are not committed).

    Per-epoch validation curves and loss curves are not in a report's tables, so they are not drawn.

    Args:
        report: ``docs/RESULTS*.md``.
        out: the image folder (``docs/img``).
        label: the files' prefix (the study's label).

    Returns:
        The files written.
    """
    tables = read_report_tables(report.read_text())
    summary = _summary_from_table(tables.get("Test sets, final epoch", []))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    val_rows = tables.get("Validation, cost and equal wall-clock", [])
    val_stats = {
        (col, row["method"]): parse_cell(row[col]) for row in val_rows for col in VALIDATION_COLUMNS if col in row
    }
    methods += [row["method"] for row in val_rows if row["method"] not in methods]
    return write_images(out, label, summary, val_stats, methods)


def images_from_results(
    results: Path,
    out: Path,
    label: str,
    analysis: dict,
    methods: list[str],
    loss_curves: Optional[dict[str, list[tuple[int, float]]]] = None,
) -> list[Path]:
    """The report's small PNGs from a study's own files: ``<results>/summary.csv`` and its analysis (rows, curves).

    Args:
        results: the study's results folder; out: the image folder (``docs/img``); label: the files' prefix.
        analysis: ``uniclip_plugin.study.analysis.analyse``'s result (or ``analysis.json`` with ``curves``).
        methods: bar order. loss_curves: run → loss points (``RunDir.loss_curve``).

    Returns:
        The files written.
    """
    summary = _read_summary_csv(results / "summary.csv") if (results / "summary.csv").is_file() else []
    keys = {
        "final val R@1": "final_val_r1",
        "best val R@1": "best_val_r1",
        "val R@1 at equal wall-clock": "val_r1_at_budget",
    }
    val_stats = {}
    for row in analysis.get("rows", []):
        for col, key in keys.items():
            finite = [v for v in row[key] if not math.isnan(v)]
            if finite:
                val_stats[(col, row["method"])] = (
                    statistics.mean(finite),
                    statistics.stdev(finite) if len(finite) > 1 else 0.0,
                )
    return write_images(out, label, summary, val_stats, methods, analysis.get("curves"), loss_curves)
