"""CI smoke of the study driver on generated data: every stage runs and the report is written."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_reproduce_smoke_writes_the_report(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="2")
    cmd = [sys.executable, "harness/reproduce.py", "--profile", "smoke", "--synthetic", "--out", str(tmp_path),
           "--data", str(tmp_path / "data")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "RESULTS.md").read_text()
    for method in ("uniclip", "clip", "clip-aug"):
        assert f"**{method}**" in report
    assert "| dataset | task | metric | uniclip (n=1) | clip (n=1) | clip-aug (n=1) |" in report
    assert "| uniclip-seed0 |" in report  # learned per-domain-pair temperatures and offsets
    assert len(list((tmp_path / "results" / "smoke" / "json").glob("*.json"))) == 3 * 3
    # a second call trains nothing again (resumable)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "Train Epoch" not in proc.stdout
