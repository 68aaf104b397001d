"""Mutation testing by a curated list: realistic one-line bugs in the core modules, each applied to a temporary copy of
the checkout and run against the tests of that module. A mutation is *killed* when a test fails; the score is the
share killed. Not part of CI (about half an hour on 2 cores); the latest report is in docs/TESTING.md.

    python harness/mutation.py                     # every mutation, 2 at a time
    python harness/mutation.py --only M19,M31      # a subset
    python harness/mutation.py --markdown out.md   # also write the report table

Why a curated list and not mutmut / cosmic-ray: their generated mutants number in the thousands for these modules,
and each test run here pays ~10 s of imports (torch, open_clip_train, clip_benchmark), so a full run would take days on
2 cores; a list of the bugs that matter (off-by-one pair sets, a dropped stop-gradient, a transposed matrix, a wrong
split) runs in minutes and names what each test protects.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Mutation:
    """One bug: ``old`` (exactly once in ``path``) replaced by ``new``; ``tests`` are the pytest targets run."""

    id: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


T_MPNCE, T_SIM, T_VIEWS = "tests/test_mpnce.py", "tests/test_similarity.py", "tests/test_views.py"
T_OPTIONS, T_MODEL = "tests/test_uniclip_options.py", "tests/test_model.py"
MUTATIONS = (
    Mutation(
        "M1",
        "uniclip_plugin/losses/mpnce.py",
        "return (blk.pos_coef.to(margin.dtype) * F.softplus(margin)).sum(), _pair_stats(margin.detach(), blk)",
        "return F.softplus(margin).sum(), _pair_stats(margin.detach(), blk)",
        (T_MPNCE,),
        "pair coefficients dropped in the autograd path",
    ),
    Mutation(
        "M2",
        "uniclip_plugin/losses/mpnce.py",
        "out[blk.text_from :, layout.image_cols :] = _NEG_INF",
        "out[blk.text_from :, : layout.image_cols] = _NEG_INF",
        (T_MPNCE,),
        "text–text negatives off removes the image columns instead",
    ),
    Mutation(
        "M3",
        "uniclip_plugin/losses/mpnce.py",
        "grad.sub_(lse[:, :1].clamp(min=tiny)).exp_().mul_(weight.sum(dim=1, keepdim=True))",
        "grad.sub_(lse[:, :1].clamp(min=tiny)).exp_().mul_(weight.mean(dim=1, keepdim=True))",
        (T_MPNCE,),
        "closed-form negative gradient averaged instead of summed over positives",
    ),
    Mutation(
        "M4",
        "uniclip_plugin/losses/mpnce.py",
        "valid = ~is_it | (view_of_pair < self.caption_views)",
        "valid = ~is_it | (view_of_pair <= self.caption_views)",
        (T_MPNCE,),
        "caption-only positives admit one view too many",
    ),
    Mutation(
        "M5",
        "uniclip_plugin/losses/mpnce.py",
        "coef_ii=w_ii / n_ii if n_ii else 0.0",
        "coef_ii=w_it / n_ii if n_ii else 0.0",
        (T_MPNCE,),
        "group balance weighs II pairs with the IT weight",
    ),
    Mutation(
        "M6",
        "uniclip_plugin/losses/mpnce.py",
        "grad.scatter_add_(1, blk.pos_idx, torch.full_like(pos, -1.0 / layout.views))",
        "grad.scatter_add_(1, blk.pos_idx, torch.full_like(pos, -1.0 / (layout.views + 1)))",
        (T_MPNCE,),
        "SupCon closed-form gradient divides by |P| + 1",
    ),
    Mutation(
        "M7",
        "uniclip_plugin/losses/mpnce.py",
        "self_pos = torch.where(is_text, torch.full_like(r, v), r % v)",
        "self_pos = torch.where(is_text, torch.full_like(r, v), r // v)",
        (T_MPNCE,),
        "an image row's own column taken as its sample index",
    ),
    Mutation(
        "M8",
        "uniclip_plugin/similarity.py",
        'return slope, (slope * offset if form == "shift_scale" else offset)',
        'return slope, (offset if form == "shift_scale" else slope * offset)',
        (T_SIM, T_MPNCE),
        "similarity forms swapped",
    ),
    Mutation(
        "M9",
        "uniclip_plugin/similarity.py",
        "_PAIR_OF = ((PAIR_II, PAIR_IT), (PAIR_IT, PAIR_TT))",
        "_PAIR_OF = ((PAIR_II, PAIR_IT), (PAIR_TT, PAIR_TT))",
        (T_SIM, T_MPNCE),
        "text→image pairs use the text–text scale",
    ),
    Mutation(
        "M10",
        "uniclip_plugin/similarity.py",
        "sample_id = torch.cat([ids.repeat_interleave(views), ids])",
        "sample_id = torch.cat([ids.repeat(views), ids])",
        (T_SIM,),
        "views laid out view-major, not sample-major",
    ),
    Mutation(
        "M11",
        "uniclip_plugin/views.py",
        "crop_y0 = torch.where(any_fits, pos_y, 0.5) * (1.0 - crop_h)",
        "crop_y0 = torch.where(any_fits, pos_y, 0.5) * (1.0 - crop_w)",
        (T_VIEWS,),
        "crop's vertical position range from its width",
    ),
    Mutation(
        "M12",
        "uniclip_plugin/views.py",
        "return min(out_size) / BLUR_REFERENCE_SIZE",
        "return max(out_size) / BLUR_REFERENCE_SIZE",
        (T_VIEWS,),
        "blur σ scaled by the longer side",
    ),
    Mutation(
        "M13",
        "uniclip_plugin/views.py",
        "(crop_w * (1.0 - 2.0 * flip)).view(n, 1, 1)",
        "(crop_w * (1.0 + 2.0 * flip)).view(n, 1, 1)",
        (T_VIEWS,),
        "flip stretches instead of mirroring",
    ),
    Mutation(
        "M14",
        "uniclip_plugin/views.py",
        '"clip": ViewAugCfg(crop_scale=(0.9, 1.0),',
        '"clip": ViewAugCfg(crop_scale=(0.8, 1.0),',
        (T_OPTIONS,),
        "caption view crops wider than open_clip's",
    ),
    Mutation(
        "M15",
        "uniclip_plugin/views.py",
        'out_size = _pair(getattr(visual, "image_size", images.shape[-2:]))',
        "out_size = _pair(images.shape[-2:])",
        (T_OPTIONS,),
        "views rendered at the source size, not the input size",
    ),
    Mutation(
        "M16",
        "uniclip_plugin/aug_embed.py",
        "return torch.addcmul(h + beta, h, gamma)",
        "return torch.addcmul(h + beta, h, beta)",
        (T_OPTIONS,),
        "FiLM scales by β instead of γ",
    ),
    Mutation(
        "M17",
        "uniclip_plugin/aug_embed.py",
        "self.fuse.weight[:, :embed_dim].copy_(torch.eye(embed_dim))",
        "self.fuse.weight[:, embed_dim:].copy_(torch.eye(embed_dim))",
        (T_MODEL, T_OPTIONS),
        "concat fusion starts on e(a), not on h",
    ),
    Mutation(
        "M18",
        "uniclip_plugin/views.py",
        "params[..., 9:10] / _NORM_HUE,",
        "params[..., 9:10] * _NORM_HUE,",
        (T_VIEWS,),
        "hue coded on the wrong scale",
    ),
    Mutation(
        "M19",
        "uniclip_plugin/model/uniclip.py",
        "return identity_aug_params(batch, 1, device=device).flatten(0, 1)",
        "return torch.zeros(batch, 12, device=device)",
        (T_OPTIONS, T_MODEL),
        "evaluation feeds zeros instead of the identity view's parameters",
    ),
    Mutation(
        "M20",
        "uniclip_plugin/model/uniclip.py",
        "offsets = torch.cat([offsets[:PAIR_TT], offsets[PAIR_TT:].detach()])",
        "offsets = torch.cat([offsets[:PAIR_TT], offsets[PAIR_TT:]])",
        (T_OPTIONS,),
        "the fixed text–text offset still learns",
    ),
    Mutation(
        "M21",
        "uniclip_plugin/model/uniclip.py",
        "offsets = cfg.offset_bound * torch.tanh(offsets)",
        "offsets = cfg.offset_bound * torch.tanh(offsets / cfg.offset_bound)",
        (T_OPTIONS,),
        "bounded offsets start away from their init",
    ),
    Mutation(
        "M22",
        "uniclip_plugin/distributed.py",
        "gathered[rank] = packed  # the live local slice",
        "pass  # the live local slice",
        ("tests/test_distributed_loss.py",),
        "gather without grad loses the local slice's gradient",
    ),
    Mutation(
        "M23",
        "uniclip_plugin/distributed.py",
        "return everything[:, :views], everything[:, views]",
        "return everything[:, 1:], everything[:, 0]",
        ("tests/test_distributed_loss.py",),
        "gathered views and texts unpacked from the wrong columns",
    ),
    Mutation(
        "M24",
        "uniclip_plugin/compat.py",
        'SKIPPED_SAMPLES["empty_caption"] += 1',
        "pass",
        ("tests/test_compat.py",),
        "empty captions skipped without a count",
    ),
    Mutation(
        "M25",
        "uniclip_plugin/bench/probe.py",
        "c, _, init = _search_c(train_feats, train_labels, seed, bar)",
        "c, _, init = _search_c(test_feats, test_labels, seed, bar)",
        ("tests/test_survivors.py",),
        "the probe's C chosen on the test split",
    ),
    Mutation(
        "M26",
        "uniclip_plugin/bench/probe.py",
        "scaler = StandardScaler().fit(train_feats)",
        "scaler = StandardScaler().fit(test_feats)",
        ("tests/test_bench.py", "tests/test_survivors.py"),
        "standardised with test-split statistics",
    ),
    Mutation(
        "M27",
        "uniclip_plugin/bench/tone_confusions.py",
        'for name, scores in (("i2t", sim), ("t2i", sim.t())):',
        'for name, scores in (("i2t", sim), ("t2i", sim)):',
        ("tests/test_survivors.py",),
        "text→image retrieval on the untransposed similarity",
    ),
    Mutation(
        "M28",
        "uniclip_plugin/study/analysis.py",
        'trained = [p for p in curve if p["epoch"] >= 1]',
        'trained = [p for p in curve if p["epoch"] >= 0]',
        ("tests/test_survivors.py",),
        "the untrained epoch 0 may be the best epoch",
    ),
    Mutation(
        "M29",
        "uniclip_plugin/methods/uniclip.py",
        '"text_text_negatives": "text_text_negatives",',
        '"text_text_negative": "text_text_negatives",',
        ("tests/test_survivors.py",),
        "a typo keeps --no-text-text-negatives from the loss",
    ),
    Mutation(
        "M30",
        "uniclip_plugin/model/declip.py",
        "mlm_probability: float = 0.15",
        "mlm_probability: float = 0.10",
        ("tests/test_survivors.py",),
        "DeCLIP's MLM rate off its published 15 %",
    ),
    Mutation(
        "M31",
        "uniclip_plugin/losses/slip.py",
        "logits_aa = (q_a @ k_a.T / temperature).masked_fill(self_mask, -SELF_MASK)",
        "logits_aa = (q_a @ k_a.T / temperature).masked_fill(self_mask, SELF_MASK)",
        ("tests/test_slip.py",),
        "SLIP's self-similarity unmasked (pushed up)",
    ),
    Mutation(
        "M32",
        "uniclip_plugin/losses/declip.py",
        "z = z.detach()  # stop-gradient",
        "z = z  # stop-gradient",
        ("tests/test_declip.py",),
        "SimSiam without its stop-gradient",
    ),
    Mutation(
        "M33",
        "uniclip_plugin/study/analysis.py",
        'return max(trained, key=lambda p: (p["val_r1"], -p["epoch"]))["epoch"] if trained else None',
        'return max(trained, key=lambda p: (p["val_r1"], p["epoch"]))["epoch"] if trained else None',
        ("tests/test_survivors.py", "tests/test_study.py"),
        "ties go to the later epoch",
    ),
)


def _copy_checkout(root: Path, dest: Path) -> None:
    files = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if name.startswith(("uniclip_plugin/", "tests/")) or name in ("pyproject.toml",):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)


def run_one(m: Mutation, root: Path) -> dict:
    """Apply ``m`` to a fresh copy of the checkout and run its tests; ``status`` killed / survived / stale."""
    with tempfile.TemporaryDirectory(prefix=f"mut-{m.id}-") as tmp:
        dest = Path(tmp)
        _copy_checkout(root, dest)
        target = dest / m.path
        text = target.read_text()
        if text.count(m.old) != 1:
            return {"id": m.id, "status": "stale", "seconds": 0.0}
        target.write_text(text.replace(m.old, m.new))
        start = time.time()
        env = dict(os.environ, PYTHONPATH=str(dest), OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "", *m.tests],
            cwd=dest,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        return {"id": m.id, "status": "survived" if proc.returncode == 0 else "killed", "seconds": time.time() - start}


def report(results: list[dict]) -> str:
    """The markdown table and the score line."""
    by_id = {m.id: m for m in MUTATIONS}
    scored = [r for r in results if r["status"] != "stale"]
    killed = sum(r["status"] == "killed" for r in scored)
    lines = ["| id | where | mutation | tests | result |", "|---|---|---|---|---|"]
    for r in results:
        m = by_id[r["id"]]
        lines.append(
            f"| {m.id} | `{m.path}` | {m.what} | {', '.join(t.split('/')[-1] for t in m.tests)} | {r['status']} |"
        )
    share = 100.0 * killed / len(scored) if scored else 0.0
    return "\n".join(lines) + f"\n\nMutation score: {killed}/{len(scored)} killed ({share:.0f} %)\n"


def main(argv: Optional[list[str]] = None) -> int:
    """Run the mutations (``--jobs`` at a time) from the checkout root; print the table and the score."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None, help="comma-separated mutation ids")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--markdown", default=None, help="also write the report here")
    args = p.parse_args(argv)
    root = Path.cwd()
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only.split(",")]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda m: run_one(m, root), chosen))
    for r in results:
        print(f"{r['id']}: {r['status']} ({r['seconds']:.0f} s)", flush=True)
    text = report(results)
    print(text)
    if args.markdown:
        from ..io import write_text_atomic

        write_text_atomic(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
