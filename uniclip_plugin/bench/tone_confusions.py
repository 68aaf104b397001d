"""Where the study's retrieval errors go: the same emoji in another skin tone, or another emoji.

    python harness/tone_confusions.py --runs-dir runs/full-tuned --out results/full-tuned

Half of the pre-training captions name a skin tone ("man: medium-dark skin tone"), and the held-out retrieval sets
hold up to five tone variants of a concept. A view with colour jitter or grayscale changes the apparent tone while the
caption keeps it, so a method trained on such views may still find the concept but not its tone. For each run's final
checkpoint this script ranks the retrieval test set (the concepts disjoint from validation) in both directions and
splits each top-1 into: exact hit, tone confusion (the same caption up to its skin-tone words), other miss. Own code,
not clip_benchmark's retrieval metric, because that metric only counts exact hits.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import torch

import uniclip_plugin
from uniclip_plugin.bench.errors import BenchError
from uniclip_plugin.bench.models import Run, load_model, resolve_models
from uniclip_plugin.io import write_text_atomic

TONE = re.compile(r"\b(?:light|medium-light|medium|medium-dark|dark) skin tone\b")


def tone_free(caption: str) -> str:
    """The caption with every skin-tone phrase replaced by one placeholder (tone variants become equal)."""
    return TONE.sub("<tone>", caption.strip().lower())


def load_pairs(split_dir: Path) -> tuple[list, list[str]]:
    """PIL images and captions of a clip_benchmark webdataset retrieval split (one caption per image)."""
    import io

    from PIL import Image

    from uniclip_plugin.study.analysis import read_samples  # the study's own reader of a webdataset split

    samples = read_samples(split_dir)
    images = [
        Image.open(io.BytesIO(next(s[k] for k in ("png", "webp", "jpg") if k in s))).convert("RGB") for s in samples
    ]
    return images, [s["txt"].decode().strip() for s in samples]


def classify_top1(sim: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Image→text and text→image top-1 split into hit / tone confusion / other miss (fractions of the queries).

    ``sim[i, j]`` is image i against caption j; pair i is (image i, caption i)."""
    keys = [tone_free(c) for c in captions]
    out: dict[str, float] = {}
    for name, scores in (("i2t", sim), ("t2i", sim.t())):
        top = scores.argmax(dim=1).tolist()
        hits = sum(t == q for q, t in enumerate(top))
        tone = sum(t != q and keys[t] == keys[q] for q, t in enumerate(top))
        n = len(top)
        out[f"{name}_r1"] = hits / n
        out[f"{name}_tone_confusion"] = tone / n
        out[f"{name}_other_miss"] = (n - hits - tone) / n
        out[f"{name}_r1_tone_free"] = (hits + tone) / n
    counts = Counter(keys)
    with_variants = sum(counts[k] > 1 for k in keys)
    out["queries_with_tone_variants"] = with_variants / len(keys)
    return out


@torch.no_grad()
def analyse_run(run: Run, images: list, captions: list[str]) -> dict[str, float]:
    """:func:`classify_top1` of one run's checkpoint on the given image–caption pairs."""
    model, preprocess, tokenizer = load_model(run)
    pixels = torch.stack([preprocess(im) for im in images])
    img = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    txt = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return classify_top1(img @ txt.t(), captions)


def main(argv: list[str] | None = None) -> int:
    """Write ``tone_confusions.json`` under ``--out`` and print the table (see the module docstring).

    Args:
        argv: command-line arguments without the program name; None reads ``sys.argv``.

    Returns:
        0 on success (a user error exits with a one-line message).
    """
    uniclip_plugin.register()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", required=True, help="a study's run folder, e.g. runs/full-tuned")
    parser.add_argument(
        "--models",
        default="clip,clip-aug,slip,declip,uniclip",
        help="methods or runs, as harness/bench.py --models takes them (final checkpoints)",
    )
    parser.add_argument("--data", default="data")
    parser.add_argument("--dataset", default="heldout_emoji_retrieval_test")
    parser.add_argument("--out", required=True, help="folder for tone_confusions.json")
    args = parser.parse_args(argv)
    split = Path(args.data) / "wds" / args.dataset / "test"
    if not split.is_dir():
        raise SystemExit(
            f"tone_confusions.py: error: no retrieval split at {split}; build the data with python harness/data.py"
        )
    images, captions = load_pairs(split)
    try:
        runs = resolve_models(args.models, Path(args.runs_dir))
    except BenchError as err:
        raise SystemExit(f"tone_confusions.py: error: {err}") from None
    rows = {run.run: analyse_run(run, images, captions) for run in runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / "tone_confusions.json",
        json.dumps({"dataset": args.dataset, "pairs": len(captions), "runs": rows}, indent=1),
    )
    share = next(iter(rows.values()))["queries_with_tone_variants"]
    print(
        f"{args.dataset}: {len(captions)} pairs, {100 * share:.0f} % of them have a tone variant in the set; "
        f"top-1 in %: hit / tone confusion / other miss"
    )
    print("| run | i→t hit | i→t tone | i→t other | t→i hit | t→i tone | t→i other |\n|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | "
            + " | ".join(
                f"{100 * r[f'{d}_{k}']:.1f}" for d in ("i2t", "t2i") for k in ("r1", "tone_confusion", "other_miss")
            )
            + " |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
