"""Benchmark harness: metrics on constructed models with known answers, outputs, errors, and an end-to-end run."""
from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uniclip_plugin  # noqa: F401
from harness import bench
from harness.synthetic import build_synthetic_eval, write_tar_atomic

N = 40


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, samples: list[dict], **files: str) -> Path:
    (path / "test").mkdir(parents=True)
    write_tar_atomic(path / "test" / "0.tar", samples)
    (path / "test" / "nshards.txt").write_text("1\n")
    for name, text in files.items():
        (path / name).write_text(text)
    return path


class IdModel(torch.nn.Module):
    """Image i (red = 5·i) and caption "item i" / class "c i" map to the same one-hot vector; or random vectors."""

    def __init__(self, random: bool = False):
        super().__init__()
        self.random, self.g = random, torch.Generator().manual_seed(0)

    def _onehot(self, ids: torch.Tensor) -> torch.Tensor:
        if self.random:
            return torch.nn.functional.normalize(torch.randn(len(ids), 16, generator=self.g), dim=-1)
        return torch.nn.functional.one_hot(ids.long(), 64).float()

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._onehot(torch.round(images[:, 0, 0, 0] * 255 / 5))

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._onehot(tokens[:, 0])


def tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[int(t.split()[-1])] for t in texts])


def preprocess(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def sets(tmp_path: Path) -> dict[str, Path]:
    retrieval = _write(tmp_path / "ret", [{"__key__": f"k{i:03d}", "png": _png(5 * i), "txt": f"item {i}"}
                                          for i in range(N)], **{"dataset_type.txt": "retrieval\n"})
    classes = _write(tmp_path / "cls", [{"__key__": f"k{i:03d}", "png": _png(5 * (i % 8)), "cls": i % 8}
                                        for i in range(N)],
                     **{"classnames.txt": "\n".join(f"c {k}" for k in range(8)) + "\n",
                        "zeroshot_classification_templates.txt": "{c}\n"})
    return {"ret": retrieval, "cls": classes}


def test_retrieval_is_perfect_when_embeddings_coincide_and_chance_when_random(sets: dict[str, Path]) -> None:
    perfect = bench.evaluate_model(IdModel(), preprocess, tokenizer, "ret", sets["ret"], "zeroshot_retrieval")
    assert {k: perfect[k] for k in ("image_retrieval_recall@1", "text_retrieval_recall@10")} == \
        {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@10": 1.0}
    chance = [bench.evaluate_model(IdModel(random=True), preprocess, tokenizer, "ret", sets["ret"],
                                   "zeroshot_retrieval") for _ in range(5)]
    r10 = np.mean([c["image_retrieval_recall@10"] for c in chance])
    assert abs(r10 - 10 / N) < 0.12  # chance R@10 = 10/N


def test_zero_shot_is_perfect_on_a_known_answer(sets: dict[str, Path]) -> None:
    out = bench.evaluate_model(IdModel(), preprocess, tokenizer, "cls", sets["cls"], "zeroshot_classification")
    assert out["acc1"] == 1.0 and out["mean_per_class_recall"] == 1.0


def test_linear_probe_separable_and_shuffled() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    x = np.eye(4)[y] * 3 + 0.1 * rng.standard_normal((400, 4))
    assert bench.linear_probe(x[:300], y[:300], x[300:], y[300:])["lp_acc1"] >= 0.99
    shuffled = bench.linear_probe(x[:300], rng.permutation(y[:300]), x[300:], y[300:])["lp_acc1"]
    assert abs(shuffled - 0.25) < 0.12


def test_missing_checkpoint_unknown_model_and_bad_dataset_are_one_line_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def err(argv: list[str]) -> str:
        assert bench.main(argv) == 2
        text = capsys.readouterr().err.strip()
        assert len(text.splitlines()) == 1 and text.startswith("bench.py: ")
        return text

    assert "does not exist" in err(["--models", f"u={tmp_path}/nope.pt:UniCLIP-Tiny-32", "--runs-dir", str(tmp_path)])
    assert "unknown model 'ghost'" in err(["--models", "ghost", "--runs-dir", str(tmp_path)])
    bad = tmp_path / "data" / "wds" / "broken" / "test"
    bad.mkdir(parents=True)
    (tmp_path / "runs" / "m" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "m" / "checkpoints" / "epoch_1.pt").write_bytes(b"")
    (tmp_path / "runs" / "m" / "params.txt").write_text("model: CLIP-Tiny-32\n")
    assert "nshards.txt" in err(["--models", "m", "--runs-dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data")])


def _fake_run(runs: Path, name: str, config: str, seed: int) -> None:
    import open_clip
    torch.manual_seed(seed)
    model = open_clip.create_model(config)
    (runs / name / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "name": name, "state_dict": model.state_dict()}, runs / name / "checkpoints" / "epoch_1.pt")
    (runs / name / "params.txt").write_text(f"model: {config}\nseed: {seed}\n")
    (runs / name / "out.log").write_text("".join(
        f"2026 | INFO | Train Epoch: 0 [  {32 * s}/256 ({s}%)] Data (t): 0.1 Loss: {4 - 0.1 * s:.3f} (4.0)\n"
        for s in range(1, 6)))


def test_end_to_end_writes_json_csv_table_and_plots(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _fake_run(runs, "uniclip-seed0", "UniCLIP-Tiny-32", 0)
    _fake_run(runs, "uniclip-seed1", "UniCLIP-Tiny-32", 1)
    _fake_run(runs, "clip", "CLIP-Tiny-32", 0)
    build_synthetic_eval(tmp_path / "data" / "wds", res=32, n_per_class=5)
    out = tmp_path / "results"
    assert bench.main(["--models", "uniclip,clip", "--runs-dir", str(runs), "--data", str(tmp_path / "data"),
                       "--out", str(out)]) == 0
    jsons = sorted((out / "json").glob("*.json"))
    assert len(jsons) == 3 * 3  # 3 runs × (retrieval + zero-shot + probe)
    table = (out / "table.md").read_text()
    assert "| dataset · task · metric | uniclip | clip |" in table and "±" in table and "Δ" in table
    for png in ("zeroshot_retrieval.png", "zeroshot_classification.png", "linear_probe.png", "training_curves.png"):
        assert (out / png).stat().st_size > 1000
    # clip_benchmark build reads our JSON files back into the same numbers
    from clip_benchmark.cli import main_build
    main_build(argparse.Namespace(files=[str(out / "json")], output=str(tmp_path / "built.csv")))
    import csv
    built = list(csv.DictReader(open(tmp_path / "built.csv")))
    record = json.loads(jsons[0].read_text())
    row = next(r for r in built if r["pretrained"] == record["pretrained"] and r["task"] == record["task"]
               and r["dataset"] == record["dataset"])
    for key, value in record["metrics"].items():
        assert float(row[key]) == pytest.approx(value)


def test_uniclip_benchmark_cli_registers_the_model_type() -> None:
    code = ("import sys; sys.argv=['uniclip-benchmark','eval','--help']\n"
            "from uniclip_plugin import bench_cli\nbench_cli.register_model_type()\n"
            "from clip_benchmark import models; assert 'uniclip' in models.MODEL_TYPES\n"
            "m, t, tok = models.TYPE2FUNC['uniclip']('UniCLIP-Tiny-32', '', None, 'cpu'); print(type(m).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("UniCLIP")
