"""Smoke test of the measurements of ``uniclip_plugin.perf`` (``harness/perf.py``) at tiny sizes: structure and
positivity only, never timings (the targets are checked by running ``python harness/perf.py``, not by unit tests)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import uniclip_plugin
from uniclip_plugin.perf import accelerator, allocator, efficiency, loader, loss_memory, options, report, steps, threads
from uniclip_plugin.perf.settings import Settings

uniclip_plugin.register()  # the plugin models and losses

SIZE, BATCH = "Tiny-32", 4


def _positive(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def costs() -> dict[str, float]:
    return steps.tower_costs(f"CLIP-{SIZE}", BATCH, iters=1, warmup=0)


def test_tower_costs_and_method_steps(costs: dict[str, float]) -> None:
    assert set(costs) == {"image", "text"} and all(_positive(v) for v in costs.values())
    rows, medians = steps.method_steps(SIZE, BATCH, iters=1, costs=costs, warmup=0)
    assert medians == costs and list(rows) == list(steps.METHODS)
    for row in rows.values():
        for key in ("step_s", "samples_per_s", "bound", "ratio_to_clip", "ratio_over_bound"):
            assert _positive(float(row[key])), (key, row)
    passes = {name: (r["image_passes"], r["text_rows"]) for name, r in rows.items()}
    assert passes == {"clip": (1, 1), "slip": (3, 1), "declip": (2, 2), "uniclip_mpnce": (2, 1)}
    assert rows["clip"]["bound"] == pytest.approx(1.0) and rows["clip"]["ratio_to_clip"] == pytest.approx(1.0)
    i, t = costs["image"], costs["text"]
    assert rows["slip"]["bound"] == pytest.approx((3 * i + t) / (i + t))
    assert rows["declip"]["bound"] == pytest.approx((2 * i + 2 * t) / (i + t))
    assert rows["uniclip_mpnce"]["bound"] == pytest.approx((2 * i + t) / (i + t))


def test_one_round_robin_times_towers_steps_and_extras() -> None:
    extra = {f"uniclip:{k}": f for k, f in steps.part_passes("uniclip_mpnce", f"UniCLIP-{SIZE}", BATCH).items()}
    rows, medians = steps.method_steps(SIZE, BATCH, iters=1, warmup=0, methods=("clip", "uniclip_mpnce"), extra=extra)
    assert list(rows) == ["clip", "uniclip_mpnce"]
    assert set(medians) == {
        "image",
        "text",
        "image_x2",
        "uniclip:views",
        "uniclip:aug_embed",
        "uniclip:loss",
        "uniclip:optimizer",
    }
    assert all(_positive(v) for v in medians.values())
    uni = rows["uniclip_mpnce"]
    assert uni["bound"] == pytest.approx(steps.bound_of(2, 1, medians))
    assert uni["towers_s"] == pytest.approx(medians["image_x2"] + medians["text"])
    assert uni["exact_bound"] == pytest.approx(uni["towers_s"] / (medians["image"] + medians["text"]))
    assert rows["clip"]["exact_bound"] == pytest.approx(1.0) and _positive(uni["ratio_over_exact_bound"])


def test_declip_batch_uses_the_wrap_tokenizer() -> None:
    images, texts = steps.method_batch("declip", f"DeCLIP-{SIZE}", BATCH)
    assert tuple(images.shape[:2]) == (BATCH, 3) and texts.dim() == 3 and tuple(texts.shape[:2]) == (BATCH, 2)
    _, plain = steps.method_batch("clip", f"CLIP-{SIZE}", BATCH)
    assert plain.dim() == 2 and plain.shape[0] == BATCH


def test_step_parts_views_and_options() -> None:
    uni = steps.step_parts("uniclip_mpnce", f"UniCLIP-{SIZE}", BATCH, iters=1, warmup=0)
    assert set(uni) == {"views", "aug_embed", "loss", "optimizer"} and all(_positive(v) for v in uni.values())
    clip = steps.step_parts("clip", f"CLIP-{SIZE}", BATCH, iters=1, warmup=0)
    assert set(clip) == {"loss", "optimizer"} and all(_positive(v) for v in clip.values())
    assert _positive(steps.augment_time(BATCH, 2, 64, iters=1, warmup=0))
    opts = options.option_steps(f"UniCLIP-{SIZE}", BATCH, iters=1, plain_s=1.0, full=False, warmup=0)
    for name in ("grad_checkpointing", "bf16_autocast"):
        assert _positive(opts[name]["step_s"]) and _positive(opts[name]["ratio_to_plain"])
    assert "not measured in --quick" in opts["torchcompile"]["note"]


def test_loader_throughput(tmp_path) -> None:
    r = loader.loader_throughput(f"UniCLIP-{SIZE}", BATCH, n_samples=16, workers=2, res=32, tmp_dir=str(tmp_path))
    assert r["epoch0_samples"] == r["epoch1_samples"] == 16
    assert _positive(r["samples_per_s"]) and _positive(r["epoch0_samples_per_s"])


def test_loss_point() -> None:
    r = loss_memory.loss_point(8, 2, 8, 3, iters=1)
    assert _positive(r["seconds"]) and r["saved_bytes"] > 0 and r["peak_extra_bytes"] >= 0


@pytest.mark.multiproc
def test_two_process_gather_loss_time() -> None:
    assert _positive(loss_memory.gather_loss_time(8, 2, 8, iters=1))


def test_data_efficiency_interpolates_and_reports_not_reached() -> None:
    clip = [{"epoch": e, "step": 50 * e, "seconds": 1.0 * e, "val_r1": 20.0 * e} for e in (1, 2)]  # final 40 @ 100
    curves = {
        "clip": {"0": clip, "1": clip},
        "uniclip": {
            "0": [
                {"epoch": 1, "step": 20, "seconds": 1.0, "val_r1": 30.0},
                {"epoch": 2, "step": 40, "seconds": 2.0, "val_r1": 50.0},
            ],
            "1": [{"epoch": 1, "step": 100, "seconds": 1.0, "val_r1": 39.0}],
        },
    }
    eff = efficiency.data_efficiency(curves)
    assert eff["seeds"]["0"]["steps"] == pytest.approx(30.0) and eff["seeds"]["0"]["fraction"] == pytest.approx(0.3)
    assert eff["seeds"]["1"]["steps"] is None and eff["seeds"]["1"]["fraction"] is None
    assert eff["mean"] is None
    del curves["uniclip"]["1"]
    assert efficiency.data_efficiency(curves)["mean"] == pytest.approx(0.3)
    assert efficiency.data_efficiency({"clip": {}})["mean"] is None


def test_accelerator_section_runs_its_steps_on_cpu_and_reports_no_gpu() -> None:
    """The GPU comparison's code path, run on CPU with the tiny configs (the GPU numbers come from harness/perf.py
    itself)."""
    rows = accelerator.accelerator_compare(
        "cpu",
        models=(("clip", f"CLIP-{SIZE}"), ("uniclip_mpnce", f"UniCLIP-{SIZE}")),
        batch=BATCH,
        iters=1,
        warmup=1,
        dtype=None,
    )
    assert list(rows) == ["clip", "uniclip_mpnce"]
    for row in rows.values():
        assert _positive(row["step_s"]) and _positive(row["samples_per_s"]) and row["peak_allocated_bytes"] is None
        assert "views_sync_free" not in row  # the sync check needs CUDA's sync debug mode
    assert "UniCLIP / CLIP step time on cpu" in report.accelerator_table(rows, "cpu", BATCH, "fp32")
    if not torch.cuda.is_available():
        results = accelerator.measure(Settings(), {})
        assert "no GPU" in results["accelerator"]["note"]
        assert "no GPU on this machine" in report.render_accelerator(Settings(), results)


def test_allocator_ab_runs_both_processes() -> None:
    ab = allocator.malloc_ab(SIZE, BATCH, iters=1, methods=("clip", "uniclip_mpnce"))
    assert ab["default"]["allocator"] == "glibc defaults"
    if sys.platform.startswith("linux"):  # glibc's mallopt
        assert "keeps freed memory" in ab["tuned"]["allocator"], ab["tuned"]["allocator"]
    for side in ab.values():
        assert set(side["step_s"]) == {"clip", "uniclip_mpnce"} and all(_positive(v) for v in side["step_s"].values())
        assert side["minor_faults"] >= 0


def test_train_threads_times_open_clip_train_steps_per_thread_count() -> None:
    rows = threads.train_threads(configs=(("clip", "CLIP-Tiny-32", 16),), steps=8, thread_counts=(1, 2))
    assert len(rows) == 1 and rows[0]["model"] == "CLIP-Tiny-32"
    for count in (1, 2):
        measured = rows[0][f"threads_{count}"]
        assert measured["logged_steps"] >= 3  # steps 2, 4, 6, 8 logged; the first is left out as warm-up
        assert 0 < measured["step_s"] < measured["wall_s"] and 0 <= measured["data_s"] <= measured["step_s"]
