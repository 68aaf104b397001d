"""Performance benchmarks (targets live here, never in unit tests; docs/PERF.md).

    python harness/perf.py --quick                       # ≤ 2 minutes on a 2-core CPU (batch 64)
    python harness/perf.py --json docs/perf.json         # the full run (batch 256, M up to 3 × 16384, torch.compile)
    python harness/perf.py --quick --default-malloc      # the same under glibc's default malloc settings (A/B)

Prints, in one run on one machine (every target as a ratio of two numbers measured in this run):
  1. tower costs: forward+backward of the image tower on B images and of the text tower on B texts, and ONE pass over
     k·B images / texts for each concatenated pass a method runs (on this CPU a tower is not linear in its batch);
  2. the optimiser-step time (forward, loss, backward, AdamW step) of ``--loss clip``, ``slip``, ``declip`` and
     ``uniclip_mpnce`` on the same tiny towers and batch, each with its ratio to clip, its forward-count bound
     (image passes · I + text rows · T) / (I + T) and its tower-exact bound (its actual passes' measured cost over
     I + T). Towers, steps and the step parts of 3 are timed round-robin in the same rounds, so load drift during a
     run cannot bias one method against another;
  3. UniCLIP's step beyond its towers: in-forward views, augmentation-aware embedding, loss, AdamW step and the rest,
     each as % of the step; the view share for 256 views at 64 px;
  4. open_clip_train's own webdataset loader (2 workers) on generated 64 px shards against the samples/s that the
     UniCLIP step consumes;
  5. options open_clip users expect: ``--grad-checkpointing``, bf16 autocast, ``--torchcompile`` (full run only),
     ``--local-loss --gather-with-grad`` (a 2-process gloo run of the loss and its gather, full run only);
  6. MP-NCE forward+backward time and peak extra memory against M = (V+1)·B, chunked and unchunked;
  7. data efficiency from the study's curves (``results/<profile>/curves.json`` under the working directory, written
     by harness/reproduce.py);
  0. first, when CUDA is available: ViT-B/32 at batch 256 under bf16 autocast, stock open_clip CLIP against UniCLIP
     (samples/s, peak allocated memory, views under CUDA's sync debug mode); ``--gpu-only`` runs just this;
  8. a table of the targets; the LAST line is ``step-cost ratio uniclip/clip = …; bound = …; ratio / bound = …``.
``--malloc-ab`` (allocator A/B) and ``--train-threads`` (the study's thread check) are modes of their own.
The load average at start (and end) and the allocator are printed: on 2 cores a load above 1.5 means another job
shared the machine. Like the training launchers, perf.py sets glibc to keep freed memory
(``uniclip_plugin/cpu_malloc.py``) unless ``--default-malloc`` is given or the environment chooses an allocator.
Times are CPU times of one thread (run with OMP_NUM_THREADS=1).
Peak memory is measured in a fresh subprocess per point: a thread samples the resident set (/proc/self/statm) every
0.2 ms while glibc returns large frees to the OS at once (MALLOC_MMAP_THRESHOLD_), so the peak above the inputs is the
loss's working memory; the bytes autograd keeps for backward are counted exactly with saved-tensor hooks.

``main`` picks the mode's sections, then for each: ``results.update(measure(settings, results))`` and prints
``render(settings, results)``. Keys starting with ``_`` are intermediate values for later sections and never reach
the ``--json`` file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

import uniclip_plugin
from uniclip_plugin.io import write_text_atomic

from . import (
    accelerator,
    allocator,
    efficiency,
    loader,
    loss_memory,
    options,
    report,
    step_cost,
    targets,
    threads,
)
from .settings import Settings

Results = dict[str, Any]


@dataclass(frozen=True)
class Section:
    """One part of the report: what it measures and how it prints.

    ``measure(settings, results)`` returns the section's keys for the JSON (``results`` is the run so far, for the
    sections that reuse an earlier section's numbers; keys starting with ``_`` are passed on but not written);
    ``render(settings, results)`` returns its markdown."""

    measure: Callable[[Settings, Results], Results]
    render: Callable[[Settings, Results], str]


ACCELERATOR = Section(accelerator.measure, report.render_accelerator)
FULL_RUN = (
    ACCELERATOR,
    Section(step_cost.measure_steps, report.render_steps),
    Section(step_cost.measure_beyond_towers, report.render_beyond_towers),
    Section(loader.measure, report.render_loader),  # before torch.compile: its workers fork this process
    Section(options.measure, report.render_options),
    Section(loss_memory.measure, report.render_loss),
    Section(efficiency.measure, report.render_efficiency),
    Section(targets.measure, report.render_targets),
)


def parser() -> argparse.ArgumentParser:
    """The command line of ``harness/perf.py``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, ≤ 2 minutes on 2 cores")
    p.add_argument("--model", default="Tiny-64", help="tiny config suffix: <CLIP|SLIP|DeCLIP|UniCLIP>-<x>")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 256; --quick 64)")
    p.add_argument(
        "--curves",
        default=None,
        help="study curves (default: the first of results/{full-tuned,full,quick-tuned,quick}/curves.json)",
    )
    p.add_argument("--json", default=None, help="also write every number to this JSON file")
    p.add_argument(
        "--gpu-only",
        action="store_true",
        help="only the accelerator section (ViT-B/32, batch 256, bf16: UniCLIP vs stock CLIP)",
    )
    p.add_argument(
        "--malloc-ab",
        action="store_true",
        help="only the allocator A/B: clip, slip and uniclip steps in two fresh processes, glibc "
        "defaults vs the launchers' setting (batch --batch, default 256)",
    )
    p.add_argument(
        "--train-threads",
        action="store_true",
        help="only the study's thread check: `open_clip train` steps at 1 OMP thread and at all "
        "cores, 1 loader worker (Tiny-32 clip / uniclip / declip at batch 128, Tiny-64 clip)",
    )
    p.add_argument(
        "--train-data",
        default=None,
        help="--train-threads: shard pattern to train on (default: generated 64 px shards)",
    )
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default malloc settings (the training launchers tune them on CPU)",
    )
    return p


def sections(args: argparse.Namespace) -> tuple[Section, ...]:
    """The sections of the mode the flags choose (``--train-threads``, ``--malloc-ab``, ``--gpu-only``, full)."""
    if args.train_threads:
        return (Section(threads.measure, report.render_train_threads),)
    if args.malloc_ab:
        return (Section(allocator.measure, report.render_malloc_ab),)
    return (ACCELERATOR,) if args.gpu_only else FULL_RUN


def _run_facts(settings: Settings, malloc_status: str) -> Results:
    from uniclip_plugin.cpu_malloc import allocator_env

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": settings.batch,
        "quick": settings.quick,
        "iters": settings.iters,
        "load_avg_start": list(os.getloadavg()),
        "allocator_env": allocator_env(),
        "allocator": malloc_status,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print the report and optionally write its numbers (``--json``).

    Args:
        argv: the command line (default ``sys.argv[1:]``).

    Returns:
        0, or 1 for ``--gpu-only`` on a machine without CUDA.
    """
    args = parser().parse_args(argv)
    uniclip_plugin.register()  # the plugin configs and losses
    from uniclip_plugin.cpu_malloc import keep_freed_memory

    malloc_status = "default allocator (--default-malloc)" if args.default_malloc else keep_freed_memory()
    settings = Settings.from_args(args)
    results = _run_facts(settings, malloc_status)
    print(report.render_header(settings, results))
    for section in sections(args):
        results.update(section.measure(settings, results))
        print(section.render(settings, results))
    no_gpu = args.gpu_only and "rows" not in results["accelerator"]
    if args.json and not no_gpu:
        public = {k: v for k, v in results.items() if not k.startswith("_")}
        write_text_atomic(Path(args.json), json.dumps(public, indent=2))
    return 1 if no_gpu else 0
