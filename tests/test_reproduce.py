"""CI smoke of the study driver on generated data: every stage runs and the report is written."""
from __future__ import annotations

import json
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
    methods = ("uniclip", "clip", "clip-aug", "slip", "declip")
    for method in methods:
        assert f"**{method}**" in report
        assert f"| {method} | " in report  # validation / cost / equal wall-clock row
    assert "| dataset | task | metric | uniclip (n=1) | clip (n=1) | clip-aug (n=1) | slip (n=1) | declip (n=1) |" in report
    assert "| uniclip-seed0 |" in report  # learned per-domain-pair temperatures and offsets
    assert "Data efficiency" in report and "validation_curves.png" in report
    # 4 evaluations per run: shapes zero-shot + probe, the full retrieval set, the validation-disjoint retrieval set
    assert len(list((tmp_path / "results" / "smoke" / "json").glob("*.json"))) == len(methods) * 4
    curves = json.loads((tmp_path / "results" / "smoke" / "curves.json").read_text())
    assert set(curves) == set(methods) and all(len(c["0"]) == 2 for c in curves.values())  # a point per epoch
    # a second call trains nothing again (resumable)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "Train Epoch" not in proc.stdout


def test_ablation_table_reports_each_ablation_against_the_full_model(tmp_path: Path) -> None:
    from harness.reproduce import ablation_table
    summary = tmp_path / "summary.csv"
    summary.write_text("method,dataset,task,metric,mean,std,n\n"
                       "uniclip,heldout_emoji_group,zeroshot_classification,acc1,0.25,0,1\n"
                       "uniclip-v1,heldout_emoji_group,zeroshot_classification,acc1,0.20,0,1\n"
                       "uniclip-v1,fmnist,zeroshot_classification,acc1,0.5,0,1\n")  # no full-model value: no column
    rows = [{"method": "uniclip", "final_val_r1": [2.0]}, {"method": "uniclip-v1", "final_val_r1": [1.5]},
            {"method": "uniclip-infonce", "final_val_r1": []}]
    lines = ablation_table(summary, rows, "uniclip", ["uniclip-v1", "uniclip-infonce"])
    assert lines[0] == "| run | final val R@1 | group zero-shot |"
    assert lines[2] == "| uniclip | 2.0 | 25.0 |"
    assert lines[3] == "| uniclip-v1 | 1.5 (Δ -0.5) | 20.0 (Δ -5.0) |"
    assert lines[4] == "| uniclip-infonce | – | – |"
