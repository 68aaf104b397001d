"""Benchmark harness: metrics on constructed models with known answers, run resolution, one-line errors, the
feature cache, an end-to-end run with a `clip_benchmark build` round trip, and the `uniclip-benchmark` CLI."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uniclip_plugin
from uniclip_plugin.bench import cli as bench_cli
from uniclip_plugin.bench import evaluate, features, models
from uniclip_plugin.bench.probe import linear_probe
from uniclip_plugin.runs import RunDir
from uniclip_plugin.testing.synthetic import build_synthetic_eval, write_tar_atomic

ROOT = Path(__file__).resolve().parents[1]
N = 40  # images in the constructed retrieval set


def test_numpy24_accuracy_fix_is_applied() -> None:
    # E4: zero-shot below goes through clip_benchmark's `accuracy`, which numpy 2.4 breaks; the plugin patches it.
    from clip_benchmark.metrics import zeroshot_classification as zc

    from uniclip_plugin import compat

    uniclip_plugin.register()
    assert "numpy24_accuracy" in compat.applied()
    assert zc.accuracy(torch.eye(6), torch.arange(6), topk=(1, 5)) == [1.0, 1.0]


# ------------------------------------------------------------------------------- constructed models, known answers


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _write_set(path: Path, samples: list[dict], **files: str) -> Path:
    (path / "test").mkdir(parents=True)
    write_tar_atomic(path / "test" / "0.tar", samples)
    (path / "test" / "nshards.txt").write_text("1\n")
    for name, text in files.items():
        (path / name).write_text(text)
    return path


class IdModel(torch.nn.Module):
    """Sample i's image (red channel = 5·i, as the set is written) and its captions ("item i", "photo i") or class
    name ("c i") map to the same one-hot vector: image and text embeddings coincide by construction. With
    ``random=True`` every call returns fresh random unit vectors instead (a seeded generator)."""

    def __init__(self, random: bool = False, seed: int = 0):
        super().__init__()
        self.random, self.g = random, torch.Generator().manual_seed(seed)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.random:
            return torch.nn.functional.normalize(torch.randn(len(ids), 16, generator=self.g), dim=-1)
        return torch.nn.functional.one_hot(ids.long(), 64).float()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._embed(torch.round(images[:, 0, 0, 0] * 255 / 5))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._embed(tokens[:, 0])


def id_tokenizer(texts: list[str]) -> torch.Tensor:
    """The id is the last word of a caption / prompt."""
    return torch.tensor([[int(t.split()[-1])] for t in texts])


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    # Two captions per image: image→text R@1 counts a hit if *any* positive is ranked first (CLIP's convention).
    retrieval = _write_set(
        tmp_path / "ret",
        [{"__key__": f"k{i:03d}", "png": _png(5 * i), "txt": f"item {i}\nphoto {i}"} for i in range(N)],
        **{"dataset_type.txt": "retrieval\n"},
    )
    classes = _write_set(
        tmp_path / "cls",
        [{"__key__": f"k{i:03d}", "png": _png(5 * (i % 8)), "cls": i % 8} for i in range(N)],
        **{
            "classnames.txt": "\n".join(f"c {k}" for k in range(8)) + "\n",
            "zeroshot_classification_templates.txt": "{c}\na photo of {c}\n",
        },
    )
    return {"ret": retrieval, "cls": classes}


def test_retrieval_recalls_are_one_when_embeddings_coincide(sets: dict[str, Path]) -> None:
    out = evaluate.evaluate_model(IdModel(), to_tensor, id_tokenizer, sets["ret"], "zeroshot_retrieval")
    assert out == {f"{d}_retrieval_recall@{k}": 1.0 for d in ("image", "text") for k in (1, 5, 10)}


def test_retrieval_recalls_are_at_chance_for_random_embeddings(sets: dict[str, Path]) -> None:
    reps = 10
    runs = [
        evaluate.evaluate_model(
            IdModel(random=True, seed=s), to_tensor, id_tokenizer, sets["ret"], "zeroshot_retrieval"
        )
        for s in range(reps)
    ]
    for k in (1, 5, 10):
        # text→image: one positive image among N → chance k/N over 2N·reps queries.
        p = k / N
        got = np.mean([r[f"image_retrieval_recall@{k}"] for r in runs])
        assert abs(got - p) < 4 * math.sqrt(p * (1 - p) / (2 * N * reps)) + 0.01, (k, got)
        # image→text: two positive captions among 2N → hit probability 1 - C(2N-2, k)/C(2N, k), N·reps queries.
        q = 1 - math.comb(2 * N - 2, k) / math.comb(2 * N, k)
        got = np.mean([r[f"text_retrieval_recall@{k}"] for r in runs])
        assert abs(got - q) < 4 * math.sqrt(q * (1 - q) / (N * reps)) + 0.01, (k, got)


def test_zero_shot_accuracy_is_one_on_a_known_answer(sets: dict[str, Path]) -> None:
    out = evaluate.evaluate_model(IdModel(), to_tensor, id_tokenizer, sets["cls"], "zeroshot_classification")
    assert out == {"acc1": 1.0, "acc5": 1.0, "mean_per_class_recall": 1.0}


def test_linear_probe_separable_and_shuffled() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    x = np.eye(4)[y] * 3 + 0.1 * rng.standard_normal((600, 4))
    sep = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert sep["lp_acc1"] >= 0.99 and sep["lp_mean_per_class_recall"] >= 0.99
    # Shuffled labels (train and test permuted independently) carry no information about the features: chance.
    # Permuting only the train labels would not do: with 4 clusters the probe learns a random cluster → label map,
    # whose test accuracy is 0, 0.25, 0.5, ... with large variance rather than chance.
    shuffled = [
        linear_probe(x[:400], rng.permutation(y[:400]), x[400:], rng.permutation(y[400:]), seed=s)["lp_acc1"]
        for s in range(3)
    ]
    assert abs(np.mean(shuffled) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / (200 * 3)) + 0.02


class PixelModel(torch.nn.Module):
    """Deterministic "features": a 4×4 average-pooled image, flattened (48-D)."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)


def test_capped_probe_features_are_the_same_subset_linear_probe_draws(tmp_path: Path) -> None:
    # bench encodes only the capped training subset (filtered by key before decoding); it must be exactly the
    # subset linear_probe(max_train=...) draws from the full split, so both paths give the same probe.
    build_synthetic_eval(tmp_path / "wds", res=16, seed=3, n_per_class=5)
    shapes = tmp_path / "wds" / "synth_shapes"
    full = features.extract_features(PixelModel(), to_tensor, shapes, "train")
    capped = features.extract_features(PixelModel(), to_tensor, shapes, "train", max_samples=12, seed=4)
    keep = np.sort(np.random.default_rng(4).permutation(len(full["x"]))[:12])
    assert len(full["x"]) == 30 and torch.allclose(capped["x"], full["x"][keep])
    assert torch.equal(capped["y"], full["y"][keep])
    test = features.extract_features(PixelModel(), to_tensor, shapes, "test")
    a = linear_probe(full["x"].numpy(), full["y"].numpy(), test["x"].numpy(), test["y"].numpy(), seed=4, max_train=12)
    b = linear_probe(
        capped["x"].numpy(), capped["y"].numpy(), test["x"].numpy(), test["y"].numpy(), seed=4, max_train=12
    )
    assert a == b


def test_second_model_reads_the_decoded_images_back_exactly(tmp_path: Path) -> None:
    # The first model decodes and caches the preprocessed images; a second model (other cache key) reads them back
    # instead of decoding, and gets exactly the features it would have computed from the shards.
    build_synthetic_eval(tmp_path / "wds", res=16, seed=3, n_per_class=5)
    cache = tmp_path / "cache"
    for name, split, cap in (
        ("synth_shapes", "train", 12),
        ("synth_shapes", "test", None),
        ("synth_retrieval", "test", None),
    ):
        folder = tmp_path / "wds" / name
        direct = features.extract_features(PixelModel(), to_tensor, folder, split, max_samples=cap, seed=4)
        first = features.extract_features(
            PixelModel(), to_tensor, folder, split, cache_dir=cache, cache_key="m1", max_samples=cap, seed=4
        )
        assert list(cache.glob(f"images-{name}-{split}-*.pt")), "decoded images were not cached"
        second = features.extract_features(
            PixelModel(), to_tensor, folder, split, cache_dir=cache, cache_key="m2", max_samples=cap, seed=4
        )
        for rec in (first, second):
            assert torch.equal(rec["x"], direct["x"])
            assert (
                torch.equal(rec["y"], direct["y"]) if direct["y"] is not None else rec["captions"] == direct["captions"]
            )


# ----------------------------------------------------------------------------------------------- runs and errors


def _ckpt(path: Path, epoch: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "name": "x", "state_dict": {}}, path)
    return path


def test_run_resolution_latest_checkpoint_and_seed_grouping(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name in ("uniclip-seed0", "uniclip-s1", "uniclip", "uniclip-nodsim", "clip", "ds"):
        (runs / name).mkdir(parents=True)
        (runs / name / "params.txt").write_text(f"batch_size: 8\nmodel: Cfg-{name}\n")
    for n in (1, 2, 10):
        _ckpt(runs / "uniclip-seed0" / "checkpoints" / f"epoch_{n}.pt", n)  # numeric, not lexical: 10 > 2
    _ckpt(runs / "uniclip-s1" / "checkpoints" / "epoch_2.pt", 2)
    _ckpt(runs / "uniclip-s1" / "checkpoints" / "epoch_latest.pt", 3)  # --save-most-recent holds a later epoch
    _ckpt(runs / "uniclip" / "checkpoints" / "epoch_4.pt", 4)
    _ckpt(runs / "uniclip" / "checkpoints" / "epoch_latest.pt", 4)
    _ckpt(runs / "uniclip-nodsim" / "checkpoints" / "epoch_1.pt", 1)
    _ckpt(runs / "clip" / "checkpoints" / "epoch_1.pt", 1)
    _ckpt(runs / "ds" / "export" / "step_5.pt", 0)
    _ckpt(runs / "ds" / "export" / "step_40.pt", 0)
    got = models.resolve_models("uniclip,clip,ds,other-seed3=" + str(runs / "clip/checkpoints/epoch_1.pt") + ":X", runs)
    assert [
        (
            r.method,
            r.run,
            r.checkpoint.relative_to(runs).as_posix() if r.checkpoint.is_relative_to(runs) else "",
            r.model_config,
        )
        for r in got
    ] == [
        ("uniclip", "uniclip", "uniclip/checkpoints/epoch_4.pt", "Cfg-uniclip"),
        ("uniclip", "uniclip-seed0", "uniclip-seed0/checkpoints/epoch_10.pt", "Cfg-uniclip-seed0"),
        ("uniclip", "uniclip-s1", "uniclip-s1/checkpoints/epoch_latest.pt", "Cfg-uniclip-s1"),
        ("clip", "clip", "clip/checkpoints/epoch_1.pt", "Cfg-clip"),
        ("ds", "ds", "ds/export/step_40.pt", "Cfg-ds"),
        ("other", "other-seed3", "clip/checkpoints/epoch_1.pt", "X"),  # explicit specs group by method too
    ]
    # name=checkpoint without a config reads params.txt two folders up
    assert models.resolve_models(f"c={runs}/clip/checkpoints/epoch_1.pt", runs)[0].model_config == "Cfg-clip"


def test_user_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def err(argv: list[str]) -> str:
        assert bench_cli.main(argv) == 2
        captured = capsys.readouterr()
        text = captured.err.strip()
        assert len(text.splitlines()) == 1 and text.startswith("bench.py: ") and "Traceback" not in text, text
        return text

    runs, data = tmp_path / "runs", tmp_path / "data"
    assert "does not exist" in err(["--models", f"u={tmp_path}/nope.pt:UniCLIP-Tiny-32", "--runs-dir", str(runs)])
    assert "unknown model 'ghost'" in err(["--models", "ghost", "--runs-dir", str(runs)])
    (runs / "m" / "checkpoints").mkdir(parents=True)
    (runs / "m" / "checkpoints" / "epoch_1.pt").write_bytes(b"")  # truncated checkpoint
    (runs / "m" / "params.txt").write_text("model: CLIP-Tiny-32\n")
    (data / "wds" / "broken" / "test").mkdir(parents=True)
    assert "nshards.txt" in err(["--models", "m", "--runs-dir", str(runs), "--data", str(data)])
    assert "nshards.txt" in err(
        [
            "--models",
            "m",
            "--runs-dir",
            str(runs),
            "--data",
            str(tmp_path / "none"),
            "--dataset",
            f"wds/x={data / 'wds' / 'broken'}",
        ]
    )
    (data / "wds" / "broken" / "test" / "nshards.txt").write_text("1\n")
    write_tar_atomic(data / "wds" / "broken" / "test" / "0.tar", [{"__key__": "a", "png": _png(1), "txt": "a 1"}])
    (data / "wds" / "broken" / "dataset_type.txt").write_text("retrieval\n")
    assert "cannot load" in err(["--models", "m", "--runs-dir", str(runs), "--data", str(data)])
    (runs / "m" / "params.txt").write_text("model: No-Such-Config\n")
    assert "No-Such-Config" in err(["--models", "m", "--runs-dir", str(runs), "--data", str(data)])
    assert "unknown task" in err(["--models", "m", "--runs-dir", str(runs), "--tasks", "captioning"])


def test_training_curve_parses_open_clip_train_log(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    log.write_text(
        "2026-01-01,00:00:00 | INFO | Start epoch 0\n"
        "2026-01-01,00:00:01 | INFO | Train Epoch: 0 [  64/256 (25%)] Data (t): 0.010 Batch (t): 0.100, 640.0/s, "
        "640.0/s/gpu LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 4.1000 (4.1000) Loss: 4.1000 (4.1000)\n"
        "2026-01-01,00:00:02 | INFO | Train Epoch: 1 [ 256/256 (100%)] Data (t): 0.010 Batch (t): 0.100, 640.0/s, "
        "640.0/s/gpu LR: 1.0000e-05 Logit Scale: 14.286 Mpnce_loss: 3.5000e-01 (1.2) Loss: 3.5000e-01 (1.2)\n"
        # the DeepSpeed harness (harness/train.py) logs the same prefix
        "2026-01-01 00:00:03 | INFO | Train Epoch: 2 [128/256 (50%)] step 10/12 Loss: 0.3000 LR: 1.000e-04 9.0 "
        "samples/s\n"
    )
    assert RunDir(tmp_path).loss_curve() == [(64, 4.1), (512, 0.35), (640, 0.3)]
    assert RunDir(tmp_path / "missing").loss_curve() == []


# ------------------------------------------------------------------------------------------------------ end to end

TINY_STOCK = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _save_run(runs: Path, name: str, config: str, seed: int, log: bool = True) -> Path:
    """A run in open_clip_train's layout: checkpoints/epoch_1.pt, params.txt and out.log."""
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(config)
    ckpt = runs / name / "checkpoints" / "epoch_1.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 1, "name": name, "state_dict": model.state_dict()}, ckpt)
    (runs / name / "params.txt").write_text(f"batch_size: 32\nmodel: {config}\nseed: {seed}\n")
    if log:
        (runs / name / "out.log").write_text(
            "".join(
                f"2026 | INFO | Train Epoch: 0 [  {32 * s}/256 ({100 * s // 8}%)] Data (t): 0.1 Batch (t): 0.2, 10/s, "
                f"10/s/gpu LR: 0.001 Logit Scale: 14.2 Contrastive_loss: {4 - 0.1 * s:.4f} (4.0) "
                f"Loss: {4 - 0.1 * s - 0.01 * seed:.4f} (4.0)\n"
                for s in range(1, 9)
            )
        )
    return ckpt


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three runs (two UniCLIP seeds with the plugin's config, one stock open_clip config registered here) and the
    generated shape sets (classification with train/test, retrieval), evaluated once by bench.main."""
    import open_clip

    root = tmp_path_factory.mktemp("bench")
    cfg = root / "configs" / "BenchTiny-32.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(TINY_STOCK))
    open_clip.add_model_config(cfg)  # a plain open_clip model: the harness is not plugin-only
    runs = root / "runs"
    _save_run(runs, "uniclip-seed0", "UniCLIP-Tiny-32", 0)
    _save_run(runs, "uniclip-seed1", "UniCLIP-Tiny-32", 1)
    _save_run(runs, "clip", "BenchTiny-32", 2)
    build_synthetic_eval(root / "data" / "wds", res=32, seed=1, n_per_class=5)
    out = root / "results"
    rc = bench_cli.main(
        [
            "--models",
            "uniclip,clip",
            "--runs-dir",
            str(runs),
            "--data",
            str(root / "data"),
            "--out",
            str(out),
            "--batch-size",
            "32",
        ]
    )
    assert rc == 0
    return {"root": root, "runs": runs, "data": root / "data", "out": out}


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-6)


def test_end_to_end_writes_json_csv_table_and_plots(workspace: dict[str, Path]) -> None:
    out = workspace["out"]
    jsons = sorted((out / "json").glob("*.json"))
    # 3 runs × (synth_shapes: zero-shot + probe; synth_retrieval: retrieval)
    assert len(jsons) == 9
    records = [json.loads(p.read_text()) for p in jsons]
    for r in records:
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(r)
    ret = next(r for r in records if r["task"] == "zeroshot_retrieval")
    assert set(ret["metrics"]) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    probe = next(r for r in records if r["task"] == "linear_probe")
    assert {"lp_acc1", "lp_mean_per_class_recall"} <= set(probe["metrics"])
    assert next(r for r in records if r["run"] == "clip")["model"] == "BenchTiny-32"

    table = (out / "table.md").read_text()
    assert "| dataset | task | metric | uniclip (n=2) | clip (n=1) |" in table
    assert "±" in table and "(Δ " in table and "synth_retrieval" in table and "lp_acc1" in table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["run"] for r in rows} == {"uniclip-seed0", "uniclip-seed1", "clip"}
    summary = list(csv.DictReader(open(out / "summary.csv")))
    acc = [float(r["value"]) for r in rows if r["method"] == "uniclip" and r["metric"] == "acc1"]
    s = next(r for r in summary if r["method"] == "uniclip" and r["metric"] == "acc1")
    assert int(s["n"]) == 2 and float(s["mean"]) == pytest.approx(np.mean(acc))
    assert float(s["std"]) == pytest.approx(np.std(acc, ddof=1))
    for png in ("zeroshot_retrieval.png", "zeroshot_classification.png", "linear_probe.png", "training_curves.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # atomic writes left no temporaries


def test_json_round_trips_through_clip_benchmark_build(workspace: dict[str, Path], tmp_path: Path) -> None:
    from clip_benchmark.cli import main_build  # main_build(args) with args.files (files or folders), args.output

    out = workspace["out"]
    main_build(argparse.Namespace(files=[str(out / "json")], output=str(tmp_path / "built.csv")))
    built = list(csv.DictReader(open(tmp_path / "built.csv")))
    assert len(built) == 9
    for path in (out / "json").glob("*.json"):
        record = json.loads(path.read_text())
        row = next(
            r
            for r in built
            if (r["pretrained"], r["task"], r["dataset"]) == (record["pretrained"], record["task"], record["dataset"])
        )
        assert row["model_fullname"] == f"{record['model']} {record['pretrained']}"
        for key, value in record["metrics"].items():
            assert _same(float(row[key]), value), (path.name, key)


def test_changed_checkpoint_at_same_path_does_not_reuse_stale_features(workspace: dict[str, Path]) -> None:
    runs, data, out = workspace["runs"], workspace["data"], workspace["out"]
    cache = out / ".features"
    before = {p.name for p in cache.glob("synth_shapes-test-*.pt")}
    old = json.loads((out / "json" / "clip__synth_shapes__zeroshot_classification.json").read_text())
    _save_run(runs, "clip", "BenchTiny-32", 7, log=False)  # retrained in place: same path, new weights
    args = [
        "--models",
        "clip",
        "--runs-dir",
        str(runs),
        "--data",
        str(data),
        "--tasks",
        "zeroshot",
        "--datasets",
        "synth_shapes",
    ]
    assert bench_cli.main(args + ["--out", str(out)]) == 0
    after = {p.name for p in cache.glob("synth_shapes-test-*.pt")}
    assert len(after - before) == 1  # a new cache entry for the new content
    fresh_out = workspace["root"] / "fresh"
    assert bench_cli.main(args + ["--out", str(fresh_out), "--no-cache"]) == 0
    new = json.loads((out / "json" / "clip__synth_shapes__zeroshot_classification.json").read_text())
    fresh = json.loads((fresh_out / "json" / "clip__synth_shapes__zeroshot_classification.json").read_text())
    assert new["metrics"] == fresh["metrics"] and new["checkpoint_sha256"] != old["checkpoint_sha256"]
    assert not (fresh_out / ".features").exists()


@pytest.mark.filterwarnings("ignore:WebDataset\\(shardshuffle:UserWarning")  # stock clip_benchmark's builder
def test_uniclip_benchmark_cli_matches_bench(workspace: dict[str, Path]) -> None:
    """`uniclip-benchmark eval --model_type uniclip` in a fresh process (stock clip_benchmark's pipeline: its own
    loader, dataloader and model forward) gives the numbers bench.py computed from cached features."""
    data, out = workspace["data"], workspace["out"]
    ckpt = workspace["runs"] / "uniclip-seed0" / "checkpoints" / "epoch_1.pt"
    result = workspace["root"] / "cli.json"
    cmd = [
        sys.executable,
        "-m",
        "uniclip_plugin.bench_cli",
        "eval",
        "--model_type",
        "uniclip",
        "--model",
        "UniCLIP-Tiny-32",
        "--pretrained",
        str(ckpt),
        "--dataset",
        "wds/synth_shapes",
        "--dataset_root",
        str(data / "wds" / "synth_shapes"),
        "--num_workers",
        "0",
        "--batch_size",
        "32",
        "--output",
        str(result),
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli = json.loads(result.read_text())
    ours = json.loads((out / "json" / "uniclip-seed0__synth_shapes__zeroshot_classification.json").read_text())
    assert cli["model"] == "UniCLIP-Tiny-32"
    for key in ("acc1", "acc5", "mean_per_class_recall"):
        assert _same(cli["metrics"][key], ours["metrics"][key]), key

    # Retrieval with R@1/5/10 through the same entry point, in-process (argv passed to clip_benchmark's parser).
    from uniclip_plugin import bench_cli

    ret_json = workspace["root"] / "cli_ret.json"
    assert (
        bench_cli.main(
            [
                "eval",
                "--model_type",
                "uniclip",
                "--model",
                "UniCLIP-Tiny-32",
                "--pretrained",
                str(ckpt),
                "--dataset",
                "wds/synth_retrieval",
                "--dataset_root",
                str(data / "wds" / "synth_retrieval"),
                "--task",
                "zeroshot_retrieval",
                "--recall_k",
                "1",
                "5",
                "10",
                "--num_workers",
                "0",
                "--output",
                str(ret_json),
                "--quiet",
            ]
        )
        == 0
    )
    cli_ret = json.loads(ret_json.read_text())["metrics"]
    ours_ret = json.loads((out / "json" / "uniclip-seed0__synth_retrieval__zeroshot_retrieval.json").read_text())
    assert cli_ret == pytest.approx(ours_ret["metrics"], abs=1e-6)


def test_probe_warm_start_reaches_the_cold_start_optimum() -> None:
    """The C-grid warm start changes the solver's path only: the convex optimum (hence predictions) is the same."""
    from uniclip_plugin.bench import probe as lp

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8))
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.standard_normal(300) > 0).astype(int) + (x[:, 2] > 1)
    cold = lp._fit(x, y, 3.0, 0)
    warm = lp._fit(x, y, 3.0, 0, init=lp._fit(x, y, 0.01, 0))
    # equal up to L-BFGS's stopping tolerance (tol 1e-4 on the gradient)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-2)
    np.testing.assert_allclose(warm.predict_proba(x), cold.predict_proba(x), atol=5e-3)
