"""Generated, learnable image–text data for tests and CI smoke runs (no downloads).

    python -m uniclip_plugin.testing.synthetic --out DIR [--n 512 --res 32]

Pre-training shards: a coloured shape on a light background, captioned "a red circle" (a few phrasings); open_clip_train
reads them with ``--train-data 'DIR/pretrain/shard-{000000..000003}.tar'``. Evaluation sets in clip_benchmark's
``wds/`` layout: ``synth_shapes`` (zero-shot / linear-probe classification by shape) and ``synth_retrieval``.
Every tar is written to a temp name and renamed, so an interrupted build never leaves a complete-looking shard.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, ImageDraw

from uniclip_plugin.data.common import SHARD_MTIME, fresh_tmp_dir, png_bytes, publish_dir
from uniclip_plugin.io import atomic_path, write_text_atomic

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "cyan": (20, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
PHRASINGS = ("a {c} {s}", "a {s} in {c}", "one {c} {s}", "a picture of a {c} {s}")


def draw_shape(shape: str, colour: str, res: int, rng: random.Random) -> Image.Image:
    """A ``res``×``res`` RGB image of one shape with position/size jitter on a light random background."""
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    img = Image.new("RGB", (res, res), bg)
    d = ImageDraw.Draw(img)
    size = rng.uniform(0.45, 0.75) * res
    cx, cy = rng.uniform(size / 2, res - size / 2), rng.uniform(size / 2, res - size / 2)
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    fill, width = COLOURS[colour], max(1, int(size / 5))
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    elif shape == "cross":
        d.rectangle((cx - width / 2, box[1], cx + width / 2, box[3]), fill=fill)
        d.rectangle((box[0], cy - width / 2, box[2], cy + width / 2), fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=width)
    else:  # bar
        d.rectangle((box[0], cy - width, box[2], cy + width), fill=fill)
    return img


def write_tar_atomic(path: Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write webdataset samples to ``path`` through :func:`uniclip_plugin.io.atomic_path` (never a partial tar).

    Args:
        path: final tar path.
        samples: dicts with ``__key__`` (no dots: webdataset splits the extension at the first dot) and members as
            bytes/str (or values webdataset's TarWriter can encode, e.g. an int for ``cls``).

    Returns:
        The number of samples written.
    """
    import webdataset as wds

    count = 0
    with atomic_path(path) as tmp:
        with wds.TarWriter(str(tmp), mtime=SHARD_MTIME) as sink:  # closed (complete) before the rename
            for sample in samples:
                sink.write(sample)
                count += 1
    return count


def _concept(rng: random.Random) -> tuple[str, str]:
    return rng.choice(SHAPES), rng.choice(list(COLOURS))


def build_synthetic_pretrain(
    out_dir: str | Path,
    n_samples: int = 512,
    res: int = 32,
    n_shards: int = 4,
    seed: int = 0,
    corrupt_images: int = 0,
    empty_captions: int = 0,
) -> dict:
    """Pre-training shards ``out_dir/shard-{000000..}.tar`` + ``sizes.json``, readable by ``open_clip train``.

    Each sample has ``<key>.png`` (a coloured shape with position/size jitter on a light random background),
    ``<key>.txt`` (e.g. "a red circle", four phrasings) and ``<key>.json`` (shape, colour, ``keywords``). 6 shapes ×
    8 colours: a tiny CLIP learns the pairing in a few hundred steps.

    Args:
        out_dir: output folder (created).
        n_samples: samples written in total (including the broken ones below).
        res: image side in px.
        n_shards: shard count (``--workers`` × ranks must not exceed it).
        seed: generator seed.
        corrupt_images: the first this many samples carry ``.png`` bytes that are not a decodable image.
        empty_captions: the next this many samples carry an empty ``.txt``.

    Returns:
        ``{"pattern": brace pattern for --train-data, "n_samples": int, "shards": [paths]}``; ``sizes.json``
        counts every written sample, broken ones included.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = []
    for i in range(n_samples):
        shape, colour = _concept(rng)
        caption = rng.choice(PHRASINGS).format(c=colour, s=shape)
        sample = {
            "__key__": f"{i:06d}",
            "png": png_bytes(draw_shape(shape, colour, res, rng)),
            "txt": caption,
            "json": json.dumps({"shape": shape, "colour": colour, "keywords": [colour, shape]}),
        }
        if i < corrupt_images:
            sample["png"] = b"\x89PNG this is not an image"
        elif i < corrupt_images + empty_captions:
            sample["txt"] = ""
        samples.append(sample)
    shards, sizes = [], {}
    per_shard = -(-n_samples // n_shards)
    for k in range(n_shards):
        path = out / f"shard-{k:06d}.tar"
        sizes[path.name] = write_tar_atomic(path, samples[k * per_shard : (k + 1) * per_shard])
        shards.append(str(path))
    write_text_atomic(out / "sizes.json", json.dumps(sizes))
    return {"pattern": str(out / f"shard-{{000000..{n_shards - 1:06d}}}.tar"), "shards": shards, "n_samples": n_samples}


def _write_split(root: Path, split: str, samples: list[dict]) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    write_tar_atomic(root / split / "0.tar", samples)
    (root / split / "nshards.txt").write_text("1\n")


def build_synthetic_eval(out_root: str | Path, res: int = 32, seed: int = 1, n_per_class: int = 20) -> dict:
    """clip_benchmark ``wds/`` sets of generated shapes, each written to a temp folder and renamed when complete.

    Args:
        out_root: folder that receives ``synth_shapes/`` and ``synth_retrieval/`` (the ``wds/`` folder).
        res: image side in px.
        seed: generator seed (different from the pre-training default, so no evaluation image is a training image).
        n_per_class: images per shape class in each of ``train`` and ``test``.

    Returns:
        ``{"synth_shapes": path, "synth_retrieval": path}``. ``synth_shapes`` is a classification set by shape
        (``classnames.txt``, ``zeroshot_classification_templates.txt`` with ``{c}``, ``train/`` and ``test/`` with
        ``<key>.png`` + ``<key>.cls``); ``synth_retrieval`` is a retrieval set (``dataset_type.txt``, ``test/`` with
        one image per (shape, colour) and two captions per image, one per line).
    """
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    shapes_dir, retrieval_dir = root / "synth_shapes", root / "synth_retrieval"
    tmp = fresh_tmp_dir(shapes_dir)
    for split in ("train", "test"):
        samples = []
        for label, shape in enumerate(SHAPES):
            for i in range(n_per_class):
                colour = rng.choice(list(COLOURS))
                samples.append(
                    {"__key__": f"{shape}{i:04d}", "png": png_bytes(draw_shape(shape, colour, res, rng)), "cls": label}
                )
        rng.shuffle(samples)
        _write_split(tmp, split, samples)
    (tmp / "classnames.txt").write_text("\n".join(SHAPES) + "\n")
    (tmp / "zeroshot_classification_templates.txt").write_text("a {c}\na picture of a {c}\n")
    publish_dir(tmp, shapes_dir)
    tmp = fresh_tmp_dir(retrieval_dir)
    samples = []
    for i, (shape, colour) in enumerate((s, c) for s in SHAPES for c in COLOURS):
        samples.append(
            {
                "__key__": f"r{i:04d}",
                "png": png_bytes(draw_shape(shape, colour, res, rng)),
                "txt": f"a {colour} {shape}\na picture of a {colour} {shape}",
            }
        )
    _write_split(tmp, "test", samples)
    (tmp / "dataset_type.txt").write_text("retrieval\n")
    publish_dir(tmp, retrieval_dir)
    return {"synth_shapes": str(shapes_dir), "synth_retrieval": str(retrieval_dir)}


def main(argv: list[str] | None = None) -> int:
    """Write generated pre-training shards and evaluation sets under ``--out``; print their paths as JSON.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status (0).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--res", type=int, default=32)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args(argv)
    info = build_synthetic_pretrain(Path(args.out) / "pretrain", args.n, args.res, args.shards)
    sets = build_synthetic_eval(Path(args.out) / "wds", args.res)
    print(json.dumps({"pretrain": info["pattern"], **sets}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
