"""Shared pieces of the data builder: the one-line error type, image rendering and webdataset writers.

File writes that must not be seen half-done go through :mod:`uniclip_plugin.io`; a whole set is written to a temp
folder and swapped into place with :func:`fresh_tmp_dir` / :func:`publish_dir`. See ``docs/DATA.md``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

from PIL import Image

from uniclip_plugin.errors import PluginError

# Integer member mtime: a float one (webdataset's default, time.time()) makes tarfile write a pax header per member,
# which doubles the time to read a shard back (fmnist train: 4.2 vs 1.9 s per 15k samples); fixed: shards reproducible.
SHARD_MTIME = 1704067200  # 2024-01-01T00:00:00Z

T = TypeVar("T")

# clip_benchmark's CLI defaults to ``--num_workers 4`` and webdataset raises "No samples found ... fewer shards than
# workers" when a worker gets no shard, so every evaluation split gets (up to) 4 shards.
EVAL_SHARDS = 4


class DataError(PluginError):
    """A problem the user can fix (missing client, unreachable registry, ...); printed as one line, no traceback."""


def progress(total: int, desc: str) -> Any:
    """A tqdm bar (stderr, refreshed at most once a second), or a no-op stand-in when tqdm is missing."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, leave=False, mininterval=1.0, unit="img")
    except ImportError:  # pragma: no cover - tqdm is a dependency; keep the builder usable without it

        class _Null:
            def update(self, n: int = 1) -> None:
                pass

            def close(self) -> None:
                pass

        return _Null()


def composite_on_white(img: Image.Image, res: int) -> Image.Image:
    """Flatten transparency onto white and fit into a ``res``×``res`` RGB square (aspect kept, white padding).

    Compositing happens before resizing so that fully transparent pixels (whose RGB is often black) never bleed into
    the edges of the shape.

    Args:
        img: any PIL image (RGBA, LA, P with transparency, L, RGB, ...).
        res: output side in pixels.

    Returns:
        An RGB image of size ``(res, res)``.
    """
    rgba = img.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if flat.size == (res, res):
        return flat
    w, h = flat.size
    scale = res / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    flat = flat.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    if size == (res, res):
        return flat
    canvas = Image.new("RGB", (res, res), (255, 255, 255))
    canvas.paste(flat, ((res - size[0]) // 2, (res - size[1]) // 2))
    return canvas


def trim_to_content(img: Image.Image, margin: float = 0.04) -> Image.Image:
    """Crop an RGB image on white to the bounding box of its non-white pixels plus a small margin.

    Clip-art pages are often much larger than the drawing on them; without this the drawing ends up a few pixels
    wide at 64 px.
    """
    diff = Image.eval(img.convert("L"), lambda v: 255 if v < 250 else 0)
    box = diff.getbbox()
    if box is None:
        return img
    pad = round(margin * max(box[2] - box[0], box[3] - box[1]))
    return img.crop(
        (max(0, box[0] - pad), max(0, box[1] - pad), min(img.width, box[2] + pad), min(img.height, box[3] + pad))
    )


def render_svg(path: Path, res: int) -> Image.Image:
    """Rasterise an SVG with cairosvg so that its longer side is ``res`` px, then composite onto a white square."""
    try:
        import cairosvg
    except (ImportError, OSError) as err:  # OSError: the cairo C library itself is missing
        raise DataError(
            f"cairosvg is needed to render SVGs ({err}); install it with `pip install cairosvg` "
            f"(and the cairo library, Debian package libcairo2)"
        ) from err
    png = cairosvg.svg2png(url=str(path), output_width=res)
    img = Image.open(io.BytesIO(png))
    if img.height > res:  # portrait artwork: fit the height instead
        img = Image.open(io.BytesIO(cairosvg.svg2png(url=str(path), output_height=res)))
    return composite_on_white(img, res)


def render(path: Path, res: int, trim: bool = False) -> Image.Image:
    """Load a PNG / WebP / SVG file as a ``res``×``res`` RGB image on white.

    Args:
        path: image file.
        res: output side in px.
        trim: crop to the drawn content first (SVGs are then rendered at 4× for the crop to keep detail).
    """
    if path.suffix.lower() == ".svg":
        if trim:
            return composite_on_white(trim_to_content(render_svg(path, max(res, min(4 * res, 512)))), res)
        return render_svg(path, res)
    with Image.open(path) as img:
        img.load()
        return composite_on_white(img, res)


def png_bytes(img: Image.Image) -> bytes:
    """PNG-encode an image (webdataset 1.0.2 has no webp writer, and PNG is lossless)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def json_text(obj: Any) -> str:
    """The builder's JSON file format (``manifest.json``, ``sizes.json``, cache markers): indent 2, UTF-8 kept.

    Written with :func:`uniclip_plugin.io.write_text_atomic`; ``io.write_json_atomic`` escapes non-ASCII text and
    indents by 1, which would change the files.
    """
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def fresh_tmp_dir(final: Path) -> Path:
    """An empty ``.tmp-<name>`` folder beside ``final`` (same file system, so the final rename is atomic)."""
    tmp = final.parent / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temp folder into place.

    The old folder is first renamed aside, so at every instant ``final`` is either the complete old set, absent, or
    the complete new set; never a partly written one.
    """
    old = final.parent / f".old-{final.name}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _imap(make: Callable[[T], Any], items: Sequence[T], jobs: int) -> Iterator[Any]:
    if jobs <= 1 or len(items) < 64:
        return map(make, items)
    import multiprocessing as mp

    pool = mp.get_context("fork").Pool(jobs)  # fork: workers inherit the imported modules (no re-import cost)
    it = pool.imap(make, items, chunksize=16)

    def gen() -> Iterator[Any]:
        try:
            yield from it
        finally:
            pool.terminate()

    return gen()


def write_shards(
    folder: Path,
    names: Sequence[str],
    items: Sequence[T],
    make: Callable[[T], Optional[dict]],
    on_skip: Callable[[T], None],
    desc: str,
    jobs: int = 1,
) -> list[int]:
    """Render ``items`` into ``len(names)`` tar shards of (nearly) equal input counts.

    Args:
        folder: existing folder (normally a temp folder that is published afterwards).
        names: shard file names, one per shard; every shard is created, even if it ends up empty.
        items: work items; contiguous chunks go to consecutive shards (shuffle beforehand if needed).
        make: item → webdataset sample dict (``__key__`` plus members as bytes/str), or None when the item's image
            could not be decoded. Must be picklable when ``jobs`` > 1.
        on_skip: called with each item whose ``make`` returned None (to count skipped images).
        desc: progress-bar label.
        jobs: rendering processes (1: in this process).

    Returns:
        The number of samples written to each shard.
    """
    import webdataset as wds

    bar = progress(len(items), desc)
    results = _imap(make, items, jobs)
    counts, n = [], len(names)
    for k, name in enumerate(names):
        chunk = items[k * len(items) // n : (k + 1) * len(items) // n]
        count = 0
        with wds.TarWriter(str(folder / name), mtime=SHARD_MTIME) as sink:
            for item in chunk:
                sample = next(results)
                bar.update(1)
                if sample is None:
                    on_skip(item)
                    continue
                sink.write(sample)
                count += 1
        counts.append(count)
    bar.close()
    return counts


def write_split(
    split_dir: Path,
    items: Sequence[T],
    make: Callable[[T], Optional[dict]],
    on_skip: Callable[[T], None],
    desc: str,
    jobs: int = 1,
    n_shards: int = EVAL_SHARDS,
) -> int:
    """One clip_benchmark split: ``0.tar .. {N-1}.tar`` + ``nshards.txt``; returns the number of samples written."""
    split_dir.mkdir(parents=True, exist_ok=True)
    n = max(1, min(n_shards, len(items)))
    counts = write_shards(split_dir, [f"{i}.tar" for i in range(n)], items, make, on_skip, desc, jobs)
    (split_dir / "nshards.txt").write_text(f"{n}\n")
    return sum(counts)


def write_set_metadata(
    set_dir: Path,
    classnames: Optional[Iterable[str]] = None,
    templates: Optional[Iterable[str]] = None,
    retrieval: bool = False,
) -> None:
    """clip_benchmark's ``classnames.txt`` / ``zeroshot_classification_templates.txt`` / ``dataset_type.txt``."""
    if classnames is not None:
        (set_dir / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
        (set_dir / "zeroshot_classification_templates.txt").write_text(
            "\n".join(templates or ()) + "\n", encoding="utf-8"
        )
    if retrieval:
        (set_dir / "dataset_type.txt").write_text("retrieval\n")


class Skipped:
    """Counts undecodable images per source: they are skipped, never silently dropped (the card reports them)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, source: str) -> None:
        """Count one skipped image of ``source``."""
        self.counts[source] = self.counts.get(source, 0) + 1


@dataclass(frozen=True)
class ImageItem:
    """A file to render into one sample: ``__key__`` (no dots), image path, source name and the other members."""

    key: str
    path: str
    source: str
    members: tuple[tuple[str, Any], ...]
    trim: bool = False


def make_image_sample(item: ImageItem, res: int) -> Optional[dict]:
    """Render ``item`` into ``{"__key__", "png", **members}``; None when the image cannot be decoded."""
    try:
        img = render(Path(item.path), res, item.trim)
    except DataError:
        raise  # a missing renderer is the user's to fix, not a bad image
    except Exception:  # noqa: BLE001 - any decoder error (PIL, cairo, XML) means "undecodable": count and skip
        return None
    return {"__key__": item.key, "png": png_bytes(img), **dict(item.members)}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_shards(urls: Any) -> Any:
    """Samples of ``urls`` in order (no shuffle), with webdataset 0.2.86 or 1.x: only 1.x has (and needs)
    ``empty_check=False`` to allow a shard set that yields nothing."""
    import inspect

    import webdataset as wds

    options = {"empty_check": False} if "empty_check" in inspect.signature(wds.WebDataset).parameters else {}
    return wds.WebDataset(urls, shardshuffle=False, **options)
