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


def test_ablation_table_compares_each_ablation_with_the_full_model_on_the_same_seeds(tmp_path: Path) -> None:
    from harness.reproduce import ablation_table
    results = tmp_path / "results.csv"
    header = "method,run,dataset,task,metric,value,model,checkpoint\n"
    rows = ["uniclip,uniclip-seed0,heldout_emoji_group,zeroshot_classification,acc1,0.25,M,c",
            "uniclip,uniclip-seed1,heldout_emoji_group,zeroshot_classification,acc1,0.05,M,c",
            "uniclip-v1,uniclip-v1-seed0,heldout_emoji_group,zeroshot_classification,acc1,0.20,M,c",
            "uniclip-v1,uniclip-v1-seed0,fmnist,zeroshot_classification,acc1,0.5,M,c"]  # no full-model value: no column
    results.write_text(header + "\n".join(rows) + "\n")
    curves = [{"method": "uniclip", "final_val_r1": [2.0, 1.0]}, {"method": "uniclip-v1", "final_val_r1": [1.5]},
              {"method": "uniclip-infonce", "final_val_r1": []}]
    lines = ablation_table(results, curves, "uniclip", ["uniclip-v1", "uniclip-infonce"])
    assert lines[0] == "| run | seeds | final val R@1 | group zero-shot |"
    assert lines[2] == "| uniclip | 0..1 | 1.5 | 15.0 |"                      # mean over its own seeds
    assert lines[3] == "| uniclip-v1 | 0 | 1.5 (Δ -0.5) | 20.0 (Δ -5.0) |"    # against the full model's seed 0
    assert lines[4] == "| uniclip-infonce | – | – | – |"
