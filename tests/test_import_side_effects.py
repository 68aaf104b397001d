"""``import uniclip_plugin`` defines names only: open_clip_train, clip_benchmark, open_clip's factory and torch's DDP
are untouched until ``register()`` (which every console script calls, and the model functions call on first use)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys, torch
import torch.optim.optimizer as topt
import open_clip, open_clip.factory as ocf, open_clip_train.main as ocm, open_clip_train.data as octd
import clip_benchmark.models as cbm, clip_benchmark.metrics.zeroshot_classification as zc
before = {"ddp": torch.nn.parallel.DistributedDataParallel, "create_model": ocf.create_model,
          "create_model_oc": open_clip.create_model, "create_loss": ocm.create_loss, "ocm_torch": ocm.torch,
          "get_tokenizer": ocm.get_tokenizer, "cmt": ocm.create_model_and_transforms, "wds": octd.wds,
          "tar": octd.tarfile_to_samples_nothrow, "accuracy": zc.accuracy, "types": list(cbm.MODEL_TYPES),
          "configs": sorted(ocf._MODEL_CONFIGS), "hooks": len(topt._global_optimizer_pre_hooks)}
import uniclip_plugin
after = {"ddp": torch.nn.parallel.DistributedDataParallel, "create_model": ocf.create_model,
         "create_model_oc": open_clip.create_model, "create_loss": ocm.create_loss, "ocm_torch": ocm.torch,
         "get_tokenizer": ocm.get_tokenizer, "cmt": ocm.create_model_and_transforms, "wds": octd.wds,
         "tar": octd.tarfile_to_samples_nothrow, "accuracy": zc.accuracy, "types": list(cbm.MODEL_TYPES),
         "configs": sorted(ocf._MODEL_CONFIGS), "hooks": len(topt._global_optimizer_pre_hooks)}
changed = sorted(k for k in before if (before[k] is not after[k]) and before[k] != after[k])
uniclip_plugin.register()
registered = ocf.create_model is not before["create_model"] and "UniCLIP-Tiny-32" in ocf._MODEL_CONFIGS
print(json.dumps({"changed": changed, "registered_after_register": registered}))
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_alone_leaves_open_clip_train_clip_benchmark_and_ddp_untouched() -> None:
    result = _run(_PROBE)
    assert result["changed"] == []
    assert result["registered_after_register"]  # the probe would see a change: register() does patch


def test_import_alone_imports_no_heavy_module() -> None:
    code = (
        "import json, sys; import uniclip_plugin; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('open_clip', 'open_clip_train', 'clip_benchmark', 'deepspeed', 'torch', 'webdataset'))))"
    )
    assert _run(code) == []
