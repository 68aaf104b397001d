"""The no-training diagnostic (``python -m uniclip_plugin.study.diagnose``): the negative-mass shares equal a float64
loop over anchors and negatives, and the script runs end to end on a tiny checkpoint and generated shards."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

import uniclip_plugin
from uniclip_plugin.study.diagnose import main, negative_mass_share

uniclip_plugin.register()  # import alone registers nothing


def test_negative_mass_share_equals_a_loop_over_anchors() -> None:
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        img = F.normalize(torch.randn(4, 2, 5, generator=g, dtype=torch.float64), dim=-1)
        txt = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=-1)
        scales = torch.tensor([9.0, 14.0, 11.0], dtype=torch.float64)
        offsets = torch.tensor([0.1, -0.05, 0.2], dtype=torch.float64)
        elems = [(img[i, v], i, 0) for i in range(4) for v in range(2)] + [(txt[i], i, 1) for i in range(4)]
        shares = {0: [], 1: []}
        for zu, iu, du in elems:
            mass = {0: 0.0, 1: 0.0}
            for zn, i_n, dn in elems:
                if i_n != iu:
                    mass[dn] += float(torch.exp(scales[du + dn] * (zu @ zn - offsets[du + dn])))
            shares[du].append(mass[du] / (mass[0] + mass[1]))
        got = negative_mass_share(img, txt, scales, offsets)
        assert abs(got["neg_share_own_image"] - sum(shares[0]) / 8) < 1e-12
        assert abs(got["neg_share_own_text"] - sum(shares[1]) / 4) < 1e-12


def test_the_script_runs_on_a_checkpoint(tmp_path: Path) -> None:
    from uniclip_plugin.testing.synthetic import build_synthetic_pretrain

    shards = build_synthetic_pretrain(tmp_path / "shards", n_samples=64, res=32, n_shards=2, seed=0)
    torch.manual_seed(0)
    model = open_clip.create_model("UniCLIP-Tiny-32", uniclip_cfg={"view_presets": ["clip", "simclr"]})
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "diag.json"
    assert (
        main(
            [
                "--checkpoint",
                str(ckpt),
                "--data",
                shards["pattern"],
                "--batch",
                "16",
                "--batches",
                "2",
                "--uniclip-cfg",
                '{"view_presets": ["clip", "simclr"]}',
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    for key in ("neg_share_own_image", "neg_share_own_text", "prob_it", "prob_ii"):
        assert 0.0 < result[key] < 1.0, (key, result)
