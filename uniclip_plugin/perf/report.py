"""The printed report: one ``render_<section>(settings, results) -> str`` per section (Markdown tables).

Renderers only format what the measurements put in ``results`` (plus the run's settings for the labels); they
measure nothing, so a saved ``--json`` can be re-rendered.
"""

from __future__ import annotations

from typing import Any, Optional

from .loader import loader_samples
from .loss_memory import DIM
from .options import GATHER
from .settings import Settings

LOAD_CONTAMINATED = 1.5  # 1-minute load average above which the machine was shared (2 cores) during the run
OPTION_LABELS = {
    "grad_checkpointing": "--grad-checkpointing (model.set_grad_checkpointing)",
    "bf16_autocast": "bf16 autocast (torch.autocast('cpu', bfloat16))",
    "torchcompile": "--torchcompile",
}

Results = dict[str, Any]


def fmt_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%"


def _verdict(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def render_header(settings: Settings, results: Results) -> str:
    """The machine, torch, threads, mode, load average at start (flagged when shared) and the allocator."""
    load = results["load_avg_start"]
    flag = (
        f" — above {LOAD_CONTAMINATED}: the machine is shared, times are contaminated"
        if load[0] > LOAD_CONTAMINATED
        else ""
    )
    allocator = results["allocator_env"]
    return "\n".join(
        [
            f"# perf.py on {results['machine']}, torch {results['torch']}, {results['threads']} threads, "
            f"{'--quick' if results['quick'] else 'full run'}",
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{flag}",
            f"allocator: {results['allocator']}" + (f"; environment {allocator}" if allocator else ""),
        ]
    )


def accelerator_table(rows: dict[str, dict[str, Any]], device_name: str, batch: int, dtype_name: str) -> str:
    """The accelerator rows (``accelerator.accelerator_compare``) as a table and the UniCLIP / CLIP ratio."""
    lines = [
        f"\n## Accelerator: {device_name}, batch {batch}, {dtype_name} autocast, fused AdamW",
        "| loss | model | step (s) | samples/s | peak allocated | views sync-free |\n|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        peak = "–" if r["peak_allocated_bytes"] is None else fmt_bytes(r["peak_allocated_bytes"])
        sync = {True: "yes", False: f"NO ({r.get('views_sync_error', '')})"}.get(r.get("views_sync_free"), "–")
        lines.append(f"| {name} | {r['model']} | {r['step_s']:.4f} | {r['samples_per_s']:.0f} | {peak} | {sync} |")
    if "clip" in rows and "uniclip_mpnce" in rows:
        lines.append(
            f"UniCLIP / CLIP step time on {device_name}: {rows['uniclip_mpnce']['step_s'] / rows['clip']['step_s']:.2f}"
        )
    return "\n".join(lines)


def render_accelerator(settings: Settings, results: Results) -> str:
    """Section 0: the GPU comparison, or the line saying there is no GPU."""
    acc = results["accelerator"]
    if "rows" not in acc:
        return "\n## Accelerator: no GPU on this machine (torch.cuda.is_available() is False); not measured"
    return accelerator_table(acc["rows"], acc["device"], acc["batch"], "bf16")


def render_steps(settings: Settings, results: Results) -> str:
    """Sections 1–2: the tower passes and the step time per method with its bounds."""
    batch, size, rounds, step, methods = (
        settings.batch,
        settings.size,
        settings.main_iters,
        results["step"],
        results["methods"],
    )
    lines = [
        f"\n## Tower costs, batch {batch}, {size} (forward+backward; towers, steps and parts below timed in the "
        f"same {rounds} rounds, medians)",
        "| tower pass | seconds | / (k × the B pass) |\n|---|---|---|",
    ]
    for key, sec in step.items():
        if key.endswith("_tower_s"):
            name = key[: -len("_tower_s")]
            k = int(name.split("_x")[1]) if "_x" in name else 1
            kind = name.split("_")[0]
            lines.append(
                f"| {kind}, {k}·B = {k * batch} {kind}s in one pass | {sec:.3f} | "
                f"{sec / (k * step[f'{kind}_tower_s']):.2f} |"
            )
    lines += [
        f"\n## Step time per method: forward, loss, backward, AdamW step; batch {batch}, {size} towers "
        f"(median of {rounds})",
        "| loss | image passes + text rows | step (s) | samples/s | / clip | bound | (/ clip) / bound | "
        "tower-exact bound | (/ clip) / exact |\n|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {r['image_passes']} + {r['text_rows']} | {r['step_s']:.3f} | {r['samples_per_s']:.0f} | "
        f"{r['ratio_to_clip']:.2f} | {r['bound']:.2f} | {r['ratio_over_bound']:.2f} | "
        f"{r['exact_bound']:.2f} | {r['ratio_over_exact_bound']:.2f} |"
        for name, r in methods.items()
    ]
    lines.append(
        "bound: the forward-count bound, passes × the per-B tower costs (the target's definition); "
        "tower-exact: the measured cost of the method's actual concatenated passes (one image pass over "
        "passes·B images, one text pass over rows·B texts) over CLIP's I + T; the gap between them is the "
        "towers' own non-linearity in batch."
    )
    lines.append(
        "Published anchor (DeCLIP paper): one DeCLIP iteration ≈ 1.5 × a CLIP iteration "
        f"(here {methods['declip']['ratio_to_clip']:.2f} ×)."
    )
    return "\n".join(lines)


def render_beyond_towers(settings: Settings, results: Results) -> str:
    """Section 3: each part beyond the towers as % of its step, and the view shares."""
    batch, bt = settings.batch, results["beyond_towers"]
    uni, clip = bt["uniclip"], bt["clip"]
    views = results["methods"]["uniclip_mpnce"]["image_passes"]
    t_uni, t_clip = results["methods"]["uniclip_mpnce"]["step_s"], results["methods"]["clip"]["step_s"]
    rows = [
        (f"towers as run: image over {views}·B + text over B (clip: B + B)", uni["towers_s"], clip["towers_s"]),
        (f"in-forward views ({batch}·{views} at the model's px)", uni.get("views"), None),
        ("aug-aware embedding fwd+bwd", uni.get("aug_embed"), None),
        ("loss fwd+bwd", uni["loss"], clip["loss"]),
        ("AdamW step", uni["optimizer"], clip["optimizer"]),
        ("rest (normalise, gather, autograd glue, timing noise)", uni["rest_s"], clip["rest_s"]),
        ("**step − towers as run**", uni["beyond_s"], clip["beyond_s"]),
        (
            f"step − ({views}·image(B) + text(B)), the forward-count definition",
            uni["beyond_linear_s"],
            clip["beyond_s"],
        ),
    ]
    lines = [
        f"\n## Beyond the towers: each part timed alone, as % of its step (batch {batch})",
        "| part | uniclip_mpnce (s) | % of step | clip (s) | % of step |\n|---|---|---|---|---|",
    ]
    for label, u, c in rows:
        us = f"{u:.4f} | {_pct(u, t_uni)}" if u is not None else "– | –"
        cs = f"{c:.4f} | {_pct(c, t_clip)}" if c is not None else "– | –"
        lines.append(f"| {label} | {us} | {cs} |")
    aug256 = bt["views_256_at_64px_s"]
    lines.append(
        f"View share: the step's {batch}·{views} views = {_pct(uni['views'], t_uni)} of the UniCLIP step; "
        f"256 views at 64 px (128 images × 2, simclr) = {aug256:.4f} s = {_pct(aug256, t_uni)} of it."
    )
    return "\n".join(lines)


def render_loader(settings: Settings, results: Results) -> str:
    """Section 4: the loader's samples/s against what the UniCLIP step consumes."""
    loader = results["loader"]
    return (
        f"\n## Data: open_clip_train get_wds_dataset, 2 workers, {loader_samples(settings)} generated 64 px "
        f"samples, UniCLIP-{settings.size} training preprocess, batch {settings.batch}\n"
        f"| measure | samples/s |\n|---|---|\n| loader, epoch 0 (incl. worker start) | "
        f"{loader['epoch0_samples_per_s']:.0f} |\n| loader, epoch 1 (persistent workers) | "
        f"{loader['samples_per_s']:.0f} |\n| UniCLIP step consumes | {loader['training_samples_per_s']:.0f} |\n"
        f"loader / training = {loader['ratio']:.1f} × (goal ≥ 3; measured alone: in training the 2 workers "
        f"share the 2 cores with the step)"
    )


def _gather_line(settings: Settings, row: dict[str, Any]) -> str:
    if settings.quick:
        return f"| --local-loss --gather-with-grad | {row['note']} | – |"
    label = (
        f"--local-loss --gather-with-grad: MP-NCE fwd+bwd + all_gather, 2 gloo processes × {settings.batch // 2}"
        f" (rank 0) vs 1 process × {settings.batch}"
    )
    if "ratio" not in row:
        return f"| {label} | {row['note']} | – |"
    return f"| {label} | {row['two_process_loss_s']:.4f} vs {row['one_process_loss_s']:.4f} | {row['ratio']:.2f} |"


def render_options(settings: Settings, results: Results) -> str:
    """Section 5: each option's step as a ratio to the plain step, and the 2-process loss."""
    opts = results["options"]
    lines = [
        f"\n## Options: UniCLIP step with each option, ratio to the plain step "
        f"({results['methods']['uniclip_mpnce']['step_s']:.3f} s)",
        "| option | step (s) | / plain |\n|---|---|---|",
    ]
    for name, r in opts.items():
        if name == GATHER:
            continue
        if "step_s" in r:
            extra = f" (first step incl. compile {r['first_step_s']:.1f} s)" if "first_step_s" in r else ""
            lines.append(f"| {OPTION_LABELS[name]} | {r['step_s']:.3f}{extra} | {r['ratio_to_plain']:.2f} |")
        else:
            lines.append(f"| {OPTION_LABELS[name]} | {r['note']} | – |")
    lines.append(_gather_line(settings, opts[GATHER]))
    lines.append(
        "--local-loss --gather-with-grad are no-ops on one process (world_size 1: no gather); equality of "
        "the 2-process loss and gradients with the 1-process global batch is proved by "
        "tests/test_distributed_loss.py (MP-NCE, every objective, chunked and not), "
        "tests/test_slip.py::test_two_ranks_equal_one_process and tests/test_declip_multiproc.py."
    )
    return "\n".join(lines)


def render_loss(settings: Settings, results: Results) -> str:
    """Section 6: MP-NCE time, autograd-saved bytes and peak memory against M, and the chunking ratios."""
    views = results["methods"]["uniclip_mpnce"]["image_passes"]
    lines = [
        f"\n## MP-NCE forward+backward against M = (V+1)·B (V={views}, D={DIM}), fresh process per point",
        "| B | M | chunk | time (s) | autograd-saved | peak extra RSS | peak / M |\n|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['B']} | {r['M']} | {r['chunk'] or 'none'} | {r['seconds']:.3f} | {fmt_bytes(r['saved_bytes'])} | "
        f"{fmt_bytes(r['peak_extra_bytes'])} | {fmt_bytes(r['peak_extra_bytes'] / r['M'])} |"
        for r in results["loss"]
    ]
    loss_at_batch, t_uni = results["_loss_at_batch_s"], results["methods"]["uniclip_mpnce"]["step_s"]
    chunked = [r for r in results["loss"] if r["chunk"]]
    lines.append(
        f"\nMP-NCE fwd+bwd at the training batch B={settings.batch}: {loss_at_batch:.4f} s = "
        f"{100 * loss_at_batch / t_uni:.1f}% of a UniCLIP step; chunked / unchunked time: "
        + ", ".join(f"B={b}: {v:.2f}" for b, v in results["loss_chunked_over_unchunked"].items())
        + f"; chunked peak per row, M={chunked[-1]['M']} over M={chunked[0]['M']}: "
        f"{results['loss_peak_per_m_last_over_first']:.2f} (1 = linear)"
    )
    return "\n".join(lines)


def render_efficiency(settings: Settings, results: Results) -> str:
    """Section 7: steps for uniclip to reach clip's final val R@1, per seed, or where the curves come from."""
    eff = results["data_efficiency"]
    lines = ["\n## Data efficiency (held-out val R@1 curves of the study)"]
    if "seeds" not in eff:
        lines.append(
            f"No curves file ({eff['path'] or 'results/{full,quick}/curves.json'}): it comes from the study, "
            f"`python harness/reproduce.py` (then `--curves PATH`)."
        )
        return "\n".join(lines)
    lines += [
        f"From {eff['path']}: steps for uniclip to reach clip's final val R@1, as a fraction of clip's steps",
        "| seed | clip final R@1 | clip steps | uniclip steps | fraction |\n|---|---|---|---|---|",
    ]
    for seed, s in eff["seeds"].items():
        st = "not reached" if s["steps"] is None else f"{s['steps']:.0f}"
        fr = "not reached" if s["fraction"] is None else f"{s['fraction']:.2f}"
        lines.append(f"| {seed} | {s['target_r1']:.2f} | {s['base_steps']} | {st} | {fr} |")
    mean = "n/a (not reached on every seed)" if eff["mean"] is None else f"{eff['mean']:.2f}"
    lines.append(f"mean fraction: {mean}" if eff["seeds"] else f"no common seeds: {eff.get('note', '')}")
    return "\n".join(lines)


def render_targets(settings: Settings, results: Results) -> str:
    """Section 8: the targets table; its LAST line is ``step-cost ratio uniclip/clip = …; bound = …; ratio / bound``."""
    lines = [
        f"\n## Targets (wall time {results['wall_s']:.0f} s; load average at end {results['load_avg_end'][0]:.2f})",
        "| target | measured | goal | met |\n|---|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['measured']} | {t['goal']} | {_verdict(t['met'])} |" for t in results["targets"]]
    ratio = results["methods"]["uniclip_mpnce"]["step_s"] / results["methods"]["clip"]["step_s"]
    bound = results["step"]["bound"]
    lines.append(
        f"\nstep-cost ratio uniclip/clip = {ratio:.3f}; bound = {bound:.3f}; ratio / bound = {ratio / bound:.3f}"
    )
    return "\n".join(lines)


def render_train_threads(settings: Settings, results: Results) -> str:
    """``--train-threads``: the logged step (and its data wait) per OMP thread count."""
    rows = results["train_threads"]
    counts = sorted(int(k.split("_")[1]) for k in rows[0] if k.startswith("threads_"))
    lines = [
        "\n## open_clip train step time by OMP thread count (1 loader worker; median logged step and, in "
        "brackets, its wait for data; s)",
        "| loss | model | batch | " + " | ".join(f"{c} thread(s)" for c in counts) + " | ratio |",
        "|---|---|---|" + "---|" * (len(counts) + 1),
    ]
    for r in rows:
        cells = [r[f"threads_{c}"] for c in counts]
        lines.append(
            f"| {r['loss']} | {r['model']} | {r['batch']} | "
            + " | ".join(f"{c['step_s']:.3f} ({c['data_s']:.3f})" for c in cells)
            + f" | {cells[-1]['step_s'] / cells[0]['step_s']:.2f} |"
        )
    return "\n".join(lines)


def render_malloc_ab(settings: Settings, results: Results) -> str:
    """``--malloc-ab``: each method's step under glibc's defaults and with freed memory kept, and page faults."""
    ab = results["malloc_ab"]
    d, t = ab["default"]["step_s"], ab["tuned"]["step_s"]
    lines = [
        f"\n## Allocator A/B: {settings.size}, batch {settings.batch}, {settings.iters} rounds, fresh process each",
        "| method | glibc defaults (s) | keep freed memory (s) | change |\n|---|---|---|---|",
    ]
    lines += [f"| {name} | {sec:.3f} | {t[name]:.3f} | {100 * (t[name] / sec - 1):+.0f} % |" for name, sec in d.items()]
    lines += [
        f"| uniclip_mpnce / clip | {d['uniclip_mpnce'] / d['clip']:.3f} | {t['uniclip_mpnce'] / t['clip']:.3f} | |",
        f"| minor page faults | {ab['default']['minor_faults']:,} | {ab['tuned']['minor_faults']:,} | |",
        f"tuned process: {ab['tuned']['allocator']}",
    ]
    return "\n".join(lines)
