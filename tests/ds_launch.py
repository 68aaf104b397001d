"""Starting the DeepSpeed trainer (``harness/train.py``) from the tests: two CPU ranks under the ``deepspeed``
launcher (gloo, ``DS_ACCELERATOR=cpu``), and the one training command the DeepSpeed test files vary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Union

import pytest

REPO = Path(__file__).resolve().parents[1]
WORLD = 2
DEEPSPEED = str(Path(sys.executable).with_name("deepspeed"))
TRAIN = str(REPO / "harness" / "train.py")
CONFIGS = REPO / "deepspeed_configs"


def env(**extra: str) -> dict[str, str]:
    """The ranks' environment: CPU accelerator, one OMP thread, unbuffered output, the checkout importable."""
    out = dict(os.environ)
    out.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + out.get("PYTHONPATH", ""),
        **extra,
    )
    # A cached extension dir keeps any JIT build of DeepSpeed ops (not needed with --no-cpu-shm-comm) out of each run.
    out.setdefault("TORCH_EXTENSIONS_DIR", "/tmp/uniclip_torch_extensions")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], **kw: Any) -> subprocess.Popen:
    """``deepspeed --num_gpus 2 <args>`` in its own process group (a SIGKILL reaches the launcher and the ranks)."""
    cmd = [DEEPSPEED, "--num_gpus", str(WORLD), "--master_port", str(free_port())] + args
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for a launched job: (exit code, output); the test fails with the output's tail after ``timeout`` s."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out: {proc.args}\n{out[-4000:]}")
    return proc.returncode, out


def run(args: list[str], timeout: float = 300) -> tuple[int, str]:
    return finish(launch(args), timeout)


def train_args(
    train_data: str,
    logs: Path,
    name: str,
    config: Union[str, Path],
    *extra: str,
    log_every: int,
    samples: Optional[int] = None,
    epochs: Optional[int] = 1,
) -> list[str]:
    """``harness/train.py`` on UniCLIP-Tiny-32 (batch 8 per rank, lr 1e-3, 2 warm-up steps, 1 loader worker);
    ``config`` is a path or a name in ``deepspeed_configs/``; ``None`` leaves a flag at the trainer's default."""
    path = Path(config) if Path(config).is_absolute() else CONFIGS / config
    optional = (["--train-num-samples", str(samples)] if samples is not None else []) + (
        ["--epochs", str(epochs)] if epochs is not None else []
    )
    return [
        TRAIN,
        "--deepspeed_config",
        str(path),
        "--model",
        "UniCLIP-Tiny-32",
        "--loss",
        "uniclip_mpnce",
        "--train-data",
        train_data,
        *optional,
        "--batch-size",
        "8",
        "--lr",
        "1e-3",
        "--warmup",
        "2",
        "--workers",
        "1",
        "--logs",
        str(logs),
        "--name",
        name,
        "--log-every-n-steps",
        str(log_every),
        "--no-cpu-shm-comm",
        *extra,
    ]
