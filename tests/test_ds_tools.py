"""The DeepSpeed trainer with DeepSpeed's own tools and the flags users reach for (docs/DEEPSPEED.md): DeepSpeed's
``latest`` pointer (``zero_to_fp32.py`` and ``engine.load_checkpoint`` without a tag), the DeepSpeed Monitor
(``csv_monitor``), ``--pretrained``, ``--grad-checkpointing``, in-training validation (``--val-data``) and the ZeRO-3
CPU-offload config.

Two 2-rank CPU runs (gloo, ``deepspeed --num_gpus 2``) start together and differ only in ``--grad-checkpointing``;
both use a ``csv_monitor`` config, ``--val-data`` and ``--pretrained``. The engine-load check runs this file as a
worker under the launcher (``python tests/test_ds_tools.py --load-dir D --out F``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.ds_launch import REPO, env, finish, launch, train_args

STEPS_PER_EPOCH = 4  # 64 samples, 8 per rank
MODEL = "UniCLIP-Tiny-32"


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    rc, out = finish(proc, timeout)
    assert rc == 0, out[-4000:]
    return out


def _train_args(data: dict, logs: Path, name: str, config: str | Path, *extra: str) -> list[str]:
    return train_args(data["train"], logs, name, config, *extra, log_every=2, samples=STEPS_PER_EPOCH * 16, epochs=None)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _pretrained_file(path: Path) -> Path:
    """A checkpoint of the model with other initial weights (seed 123): what ``--pretrained FILE`` loads."""
    import open_clip

    import uniclip_plugin

    uniclip_plugin.register()
    torch.manual_seed(123)
    torch.save({"state_dict": open_clip.create_model(MODEL).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    root = tmp_path_factory.mktemp("tools_data")
    train = build_synthetic_pretrain(root / "train", n_samples=128, res=32, n_shards=4, seed=0)
    val = build_synthetic_pretrain(root / "val", n_samples=24, res=32, n_shards=1, seed=1)
    return {"train": train["pattern"], "val": val["pattern"], "pretrained": _pretrained_file(root / "init.pt")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, data: dict) -> dict:
    """Two runs started together: ``plain`` and ``gc`` (``--grad-checkpointing``); 2 epochs, validation after each,
    a csv_monitor section, ``--pretrained``."""
    logs = tmp_path_factory.mktemp("tools_runs")
    cfg = json.loads((REPO / "deepspeed_configs" / "zero2.json").read_text())
    cfg["csv_monitor"] = {"enabled": True}
    config = logs / "zero2_csv.json"
    config.write_text(json.dumps(cfg))
    common = (
        "--epochs",
        "2",
        "--save-every-n-steps",
        "2",
        "--val-data",
        data["val"],
        "--val-frequency",
        "1",
        "--pretrained",
        str(data["pretrained"]),
    )
    procs = {
        name: launch(_train_args(data, logs, name, config, *common, *extra))
        for name, extra in (("plain", ()), ("gc", ("--grad-checkpointing",)))
    }
    outs = {name: _finish(proc, 400) for name, proc in procs.items()}
    return {"logs": logs, "out": outs}


# ------------------------------------------------------------------------------------------------------------- task 1
@pytest.mark.multiproc
def test_zero_to_fp32_script_converts_a_checkpoint_without_a_tag(runs: dict, tmp_path: Path) -> None:
    import open_clip

    import uniclip_plugin
    from uniclip_plugin.ds import checkpoint as ckpt

    ckpt_dir = runs["logs"] / "plain" / "checkpoints"
    tag = ckpt.read_latest(ckpt_dir)
    assert tag == ckpt.tag_of(2 * STEPS_PER_EPOCH) == (ckpt_dir / ckpt.DS_LATEST).read_text().strip()
    script = ckpt_dir / "zero_to_fp32.py"  # DeepSpeed copies its converter next to the checkpoints
    assert script.is_file()
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt_dir), str(tmp_path / "fp32")],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted((tmp_path / "fp32").iterdir())
    assert [f.name for f in files] == ["pytorch_model.bin"], files
    converted = torch.load(files[0], map_location="cpu", weights_only=False)
    uniclip_plugin.register()
    model = open_clip.create_model(MODEL)
    model.load_state_dict(ckpt.match_shapes(converted, model.state_dict()), strict=True)
    ours = ckpt.consolidated_fp32_state_dict(ckpt_dir, tag)
    assert all(torch.equal(converted[k], ours[k]) for k in converted)


@pytest.mark.multiproc
def test_a_fresh_engine_loads_the_checkpoint_without_a_tag(runs: dict, tmp_path: Path) -> None:
    from uniclip_plugin.ds import checkpoint as ckpt

    ckpt_dir = runs["logs"] / "plain" / "checkpoints"
    proc = launch([str(Path(__file__).resolve()), "--load-dir", str(ckpt_dir), "--out", str(tmp_path / "loaded.pt")])
    _finish(proc, 300)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=False)
    assert Path(loaded["path"]).name == "mp_rank_00_model_states.pt"
    assert Path(loaded["path"]).parent.name == ckpt.read_latest(ckpt_dir)
    assert loaded["global_steps"] == 2 * STEPS_PER_EPOCH and loaded["client"]["harness"]["tag"] == loaded["tag"]
    expected = ckpt.consolidated_fp32_state_dict(ckpt_dir, loaded["tag"])
    assert all(torch.equal(v, expected[k].reshape(v.shape)) for k, v in loaded["params"].items())


# ------------------------------------------------------------------------------------------------------------- task 2
@pytest.mark.multiproc
def test_csv_monitor_gets_loss_lr_and_validation(runs: dict) -> None:
    run_dir = runs["logs"] / "plain"
    rows = _metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # metrics.jsonl is still written
    with open(run_dir / "csv_monitor" / "Train_Samples_train_loss.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["step", "train_loss"]
    assert [(int(s), float(v)) for s, v in table[1:]] == [(16 * r["step"], r["loss"]) for r in rows]
    assert (run_dir / "csv_monitor" / "Train_Samples_lr.csv").is_file()  # written by DeepSpeed's engine
    with open(run_dir / "csv_monitor" / "Val_Samples_image_to_text_R@1.csv") as f:
        assert [int(s) for s, _ in list(csv.reader(f))[1:]] == [16 * STEPS_PER_EPOCH, 32 * STEPS_PER_EPOCH]
    assert json.loads((run_dir / "ds_config.json").read_text())["csv_monitor"]["output_path"].startswith(str(run_dir))


# ------------------------------------------------------------------------------------------------------------- task 3
@pytest.mark.multiproc
def test_validation_writes_eval_lines_and_results_jsonl(runs: dict) -> None:
    from uniclip_plugin.runs import RunDir

    run_dir = runs["logs"] / "plain"
    results = [json.loads(line) for line in (run_dir / "checkpoints" / "results.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in results] == [1, 2]
    for r in results:
        assert {"image_to_text_R@1", "text_to_image_R@1", "clip_val_loss", "num_samples"} <= set(r)
        assert 0 <= r["image_to_text_R@1"] <= 1 and r["num_samples"] == 24
    log = (run_dir / "out.log").read_text()
    assert "Eval Epoch: 1 image_to_text_mean_rank: " in log and "Eval Epoch: 2 " in log
    curve = RunDir(run_dir).val_curve(STEPS_PER_EPOCH, None)
    assert [p["epoch"] for p in curve] == [1, 2] and all(p["val_r1"] >= 0 for p in curve)


@pytest.mark.multiproc
def test_grad_checkpointing_gives_the_same_losses(runs: dict) -> None:
    plain = [r["loss"] for r in _metrics(runs["logs"] / "plain")]
    gc = [r["loss"] for r in _metrics(runs["logs"] / "gc")]
    assert "Gradient checkpointing on" in (runs["logs"] / "gc" / "out.log").read_text()
    assert "Gradient checkpointing on" not in (runs["logs"] / "plain" / "out.log").read_text()
    assert gc[0] == pytest.approx(plain[0], abs=1e-6)
    assert gc == pytest.approx(plain, rel=1e-4)
    print(
        f"\nfirst-step loss {plain[0]:.7f} vs {gc[0]:.7f} with --grad-checkpointing; max |Δloss| over "
        f"{len(plain)} steps {max(abs(a - b) for a, b in zip(plain, gc, strict=True)):.1e}"
    )


@pytest.mark.multiproc
def test_pretrained_is_logged(runs: dict, data: dict) -> None:
    log = (runs["logs"] / "plain" / "out.log").read_text()
    assert f"Loaded pretrained weights for {MODEL} from {data['pretrained']}" in log


def test_pretrained_reaches_model_creation(data: dict) -> None:
    from uniclip_plugin import integration
    from uniclip_plugin.ds.build import build_model
    from uniclip_plugin.ds.cli import build_parser

    args = build_parser().parse_args(
        ["--model", MODEL, "--loss", "uniclip_mpnce", "--pretrained", str(data["pretrained"])]
    )
    model, _, _ = build_model(args, integration.prepare(args))
    saved = torch.load(data["pretrained"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k].reshape(v.shape)) for k, v in model.state_dict().items())
    args.pretrained = None
    fresh, _, _ = build_model(args, integration.prepare(args))
    assert not torch.equal(fresh.state_dict()["positional_embedding"], saved["positional_embedding"])


# ------------------------------------------------------------------------------------------------------------- task 4
def test_offload_config_is_accepted_by_the_config_loader() -> None:
    from uniclip_plugin.ds.config import load_config, prepare_config, zero_stage_of

    cfg = prepare_config(
        load_config(REPO / "deepspeed_configs" / "zero3_offload.json"),
        world_size=2,
        batch_size=8,
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.2,
        on_cpu=True,
    )
    zero = cfg["zero_optimization"]
    assert zero_stage_of(cfg) == 3 and cfg["gradient_clipping"] == 0.0
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"


@pytest.mark.multiproc
def test_zero3_offload_trains_on_cpu(tmp_path: Path, data: dict) -> None:
    """Smoke test; the first run JIT-builds DeepSpeed's CPU Adam (about 3.5 min on 2 busy cores), later ones reuse
    TORCH_EXTENSIONS_DIR."""
    args = _train_args(data, tmp_path, "offload", "zero3_offload.json", "--epochs", "1", "--val-data", data["val"])
    out = _finish(launch(args), 590)
    rows = _metrics(tmp_path / "offload")
    assert len(rows) == STEPS_PER_EPOCH and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows), out[-3000:]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "offload" / "checkpoints" / "latest").is_file()
    results = (tmp_path / "offload" / "checkpoints" / "results.jsonl").read_text().splitlines()
    assert len(results) == 1 and json.loads(results[0])["num_samples"] == 24  # validation under ZeRO-3 gathers


# --------------------------------------------------------------------------------------- worker (run by the launcher)
def _load_worker(ckpt_dir: Path, out: Path) -> None:
    """Build a fresh engine from the run's ds_config.json and load its checkpoint with no tag (DeepSpeed's
    ``latest``); rank 0 saves the gathered parameters and what ``load_checkpoint`` returned."""
    import deepspeed
    import torch.distributed as dist

    import uniclip_plugin
    from uniclip_plugin import integration
    from uniclip_plugin.ds.build import build_model, param_groups
    from uniclip_plugin.ds.cli import build_parser
    from uniclip_plugin.ds.distributed import init_distributed

    uniclip_plugin.register()
    init_distributed(no_cpu_shm_comm=True)
    cfg = json.loads((ckpt_dir.parent / "ds_config.json").read_text())
    cfg.pop("csv_monitor", None)
    args = build_parser().parse_args(["--model", MODEL, "--loss", "uniclip_mpnce", "--seed", "0"])
    setup = integration.prepare(args, rank=dist.get_rank(), world_size=dist.get_world_size(), exact_global_loss=True)
    model, _, _ = build_model(args, setup)
    groups, _ = param_groups(model, cfg["optimizer"]["params"]["weight_decay"])
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=cfg)
    path, client = engine.load_checkpoint(str(ckpt_dir))  # no tag: DeepSpeed reads checkpoints/latest
    params = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    if dist.get_rank() == 0:
        torch.save(
            {
                "path": path,
                "client": client,
                "tag": Path(path).parent.name,
                "params": params,
                "global_steps": engine.global_steps,
            },
            out,
        )


def _worker_main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--local_rank", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _load_worker(args.load_dir, args.out)


if __name__ == "__main__":
    _worker_main()
