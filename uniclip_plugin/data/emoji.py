"""Multi-style emoji: pre-training items (Noto, Twemoji, Fluent 3D) and the held-out OpenMoji evaluation sets.

All styles name their files by Unicode code points; they are joined to OpenMoji's ``openmoji.json`` (the caption
source: CLDR ``annotation``, ``tags`` as keywords, ``group``, ``subgroups``) on the normalised hexcode. Counts and
split policy: ``docs/DATA.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .common import (
    ImageItem,
    Skipped,
    _imap,
    fresh_tmp_dir,
    make_image_sample,
    progress,
    publish_dir,
    write_set_metadata,
    write_split,
)

# The 9 CLDR groups; OpenMoji's "extras-openmoji", "extras-unicode" and "component" have no counterpart in the
# other styles (or are not emoji on their own), so they are left out everywhere.
MAIN_GROUPS = (
    "smileys-emotion",
    "people-body",
    "animals-nature",
    "food-drink",
    "travel-places",
    "activities",
    "objects",
    "symbols",
    "flags",
)
# Class names as Unicode writes the group names (what a user would type), for zero-shot prompts.
GROUP_NAMES = {
    "smileys-emotion": "smileys & emotion",
    "people-body": "people & body",
    "animals-nature": "animals & nature",
    "food-drink": "food & drink",
    "travel-places": "travel & places",
    "activities": "activities",
    "objects": "objects",
    "symbols": "symbols",
    "flags": "flags",
}
EMOJI_TEMPLATES = ("an emoji of {c}.", "an emoji from the category {c}.", "an icon of {c}.")
STYLE_DIRS = {"noto": "img/google/64", "twemoji": "img/twitter/64", "fluent": "assets", "openmoji": "color/svg"}
PRETRAIN_STYLES = ("noto", "twemoji", "fluent")
HELDOUT_STYLE = "openmoji"
HELDOUT_SETS = ("heldout_emoji_retrieval", "heldout_emoji_group", "heldout_emoji_subgroup")


def norm_hexcode(code: str) -> str:
    """Join key across styles: lower case, ``fe0f`` (emoji variation selector) dropped.

    OpenMoji writes ``2764-FE0F`` or ``2764``, emoji-datasource ``2764-fe0f.png``, Fluent ``2764-fe0f.webp``; all
    become ``2764``.
    """
    return "-".join(p for p in code.strip().lower().split("-") if p and p != "fe0f")


def load_openmoji_meta(openmoji_root: Path) -> dict[str, dict]:
    """``openmoji.json`` entries of the 9 CLDR groups, keyed by normalised hexcode."""
    entries = json.loads((openmoji_root / "data" / "openmoji.json").read_text(encoding="utf-8"))
    return {norm_hexcode(e["hexcode"]): e for e in entries if e.get("group") in MAIN_GROUPS}


def style_files(package_root: Path, style: str) -> dict[str, Path]:
    """{normalised hexcode: image file} of one style's extracted package folder."""
    folder = package_root / STYLE_DIRS[style]
    return {
        norm_hexcode(p.stem): p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in (".png", ".webp", ".svg") and not p.name.startswith(".")
    }


def keywords_of(entry: dict, meta: dict[str, dict]) -> list[str]:
    """CLDR keywords (``tags``, comma-separated) as a list, in order, without duplicates.

    Skin-tone variants have no tags of their own in openmoji.json; they inherit their base emoji's.
    """
    tags = entry.get("tags", "")
    if not tags.strip() and entry.get("skintone_base_hexcode"):
        tags = meta.get(norm_hexcode(entry["skintone_base_hexcode"]), {}).get("tags", "")
    return list(dict.fromkeys(t.strip() for t in tags.split(",") if t.strip()))


def overlap(meta: dict[str, dict], styles: dict[str, dict[str, Path]]) -> dict[str, int]:
    """Concepts with metadata present in every given style, with and without skin-tone variants."""
    common = set.intersection(*(set(files) for files in styles.values())) & set(meta)
    return {"with_skin_tones": len(common), "without_skin_tones": sum(1 for k in common if not meta[k].get("skintone"))}


def heldout_concepts(meta: dict[str, dict], styles: dict[str, dict[str, Path]]) -> list[str]:
    """Concepts without skin tone present in all four styles (``docs/DATA.md``: 1,852), sorted.

    Requiring the pre-training styles too means every held-out concept was seen in pre-training in other styles:
    the sets measure cross-style transfer, not novel concepts.
    """
    common = set.intersection(*(set(files) for files in styles.values()))
    return sorted(k for k in common if k in meta and not meta[k].get("skintone"))


def pretrain_items(meta: dict[str, dict], styles: dict[str, dict[str, Path]]) -> list[ImageItem]:
    """One item per (pre-training style, concept with metadata), skin tones included; OpenMoji never."""
    items = []
    for style in PRETRAIN_STYLES:
        for key in sorted(styles[style]):
            e = meta.get(key)
            if e is None:
                continue
            info = {
                "source": "emoji",
                "style": style,
                "hexcode": key,
                "annotation": e["annotation"],
                "keywords": keywords_of(e, meta),
                "group": e["group"],
                "subgroup": e["subgroups"],
                "skintone": e.get("skintone", ""),
            }
            items.append(
                ImageItem(
                    f"{style}_{key}",
                    str(styles[style][key]),
                    style,
                    (("txt", e["annotation"]), ("json", json.dumps(info, ensure_ascii=False))),
                )
            )
    return items


def stratified_split(keys: list[str], label: dict[str, str]) -> dict[str, str]:
    """Deterministic 50/50 train/test split of concepts, stratified by ``label`` (the subgroup).

    Within each subgroup the concepts are ordered by the md5 of their hexcode and alternate test, train, test, ...;
    so test gets ceil(n/2) of every subgroup (every class is in test) and train floor(n/2). The split does not
    depend on which other concepts exist, so it is stable across package versions.
    """
    by_label: dict[str, list[str]] = {}
    for k in keys:
        by_label.setdefault(label[k], []).append(k)
    split = {}
    for members in by_label.values():
        for i, k in enumerate(sorted(members, key=lambda x: hashlib.md5(x.encode()).hexdigest())):
            split[k] = "test" if i % 2 == 0 else "train"
    return split


def _lookup(key: str, images: dict[str, bytes], members: dict[str, dict[str, Any]]) -> dict:
    return {"__key__": key, "png": images[key], **members[key]}


def _render_heldout(
    concepts: list[str], styles: dict[str, dict[str, Path]], res: int, skipped: Skipped, jobs: int
) -> dict[str, bytes]:
    """PNG bytes of each concept's OpenMoji image, rendered once for all three sets; undecodable ones are counted."""
    items = [ImageItem(k, str(styles[HELDOUT_STYLE][k]), HELDOUT_STYLE, ()) for k in concepts]
    images: dict[str, bytes] = {}
    bar = progress(len(items), "held-out OpenMoji")
    for item, sample in zip(items, _imap(functools.partial(make_image_sample, res=res), items, jobs), strict=True):
        bar.update(1)
        if sample is None:
            skipped.add(HELDOUT_STYLE)
        else:
            images[item.key] = sample["png"]
    bar.close()
    return images


def build_heldout(
    wds_dir: Path, meta: dict[str, dict], styles: dict[str, dict[str, Path]], res: int, skipped: Skipped, jobs: int = 1
) -> dict[str, Any]:
    """The three held-out OpenMoji sets under ``wds_dir``, each written to a temp folder and renamed.

    Args:
        wds_dir: ``<out>/wds``.
        meta: ``load_openmoji_meta`` output.
        styles: ``style_files`` of all four styles (the join decides which concepts are held out).
        res: image side in px.
        skipped: collects undecodable OpenMoji SVGs.
        jobs: rendering processes.

    Returns:
        Counts: concepts, per split of each set, classes, per group.
    """
    images = _render_heldout(heldout_concepts(meta, styles), styles, res, skipped, jobs)
    keys = sorted(images)
    wds_dir.mkdir(parents=True, exist_ok=True)
    no_skip = lambda key: None  # noqa: E731 - images are already decoded

    tmp = fresh_tmp_dir(wds_dir / "heldout_emoji_retrieval")
    members = {k: {"txt": meta[k]["annotation"]} for k in keys}
    n = write_split(
        tmp / "test", keys, functools.partial(_lookup, images=images, members=members), no_skip, "held-out retrieval"
    )
    write_set_metadata(tmp, retrieval=True)
    publish_dir(tmp, wds_dir / "heldout_emoji_retrieval")
    counts: dict[str, Any] = {"concepts": len(keys), "heldout_emoji_retrieval": {"test": n}}

    split = stratified_split(keys, {k: meta[k]["subgroups"] for k in keys})
    for name, field, display in (
        ("heldout_emoji_group", "group", GROUP_NAMES.get),
        ("heldout_emoji_subgroup", "subgroups", lambda s: s.replace("-", " ")),
    ):
        classes = sorted(
            {meta[k][field] for k in keys}, key=lambda c: (MAIN_GROUPS.index(c) if c in MAIN_GROUPS else 99, c)
        )
        label = {c: i for i, c in enumerate(classes)}
        members = {k: {"cls": label[meta[k][field]]} for k in keys}
        tmp = fresh_tmp_dir(wds_dir / name)
        counts[name] = {"classes": len(classes)}
        for s in ("train", "test"):
            chosen = [k for k in keys if split[k] == s]
            counts[name][s] = write_split(
                tmp / s, chosen, functools.partial(_lookup, images=images, members=members), no_skip, f"{name}/{s}"
            )
        write_set_metadata(tmp, [display(c) or c for c in classes], EMOJI_TEMPLATES)
        publish_dir(tmp, wds_dir / name)
    counts["per_group"] = dict(sorted(Counter(meta[k]["group"] for k in keys).items()))
    counts["test_per_group"] = dict(sorted(Counter(meta[k]["group"] for k in keys if split[k] == "test").items()))
    counts["subgroups_only_in_test"] = sum(1 for sg, n in Counter(meta[k]["subgroups"] for k in keys).items() if n == 1)
    return counts
