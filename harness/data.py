"""Real image–text and labelled datasets built offline from registry packages (DATA.md).

    python harness/data.py build --out data/                      # everything the study needs, cached, idempotent
    python harness/data.py build --only heldout-emoji --res 224 --out data/
    python harness/data.py info data/                             # counts, licences, splits

Sources (downloaded with the ordinary clients into ``<out>/.cache``): emoji in three styles for pre-training — Noto
(``emoji-datasource-google``), Twemoji (``emoji-datasource-twitter``), Fluent 3D (``@lobehub/fluent-emoji-3d``) —
captioned with OpenMoji's CLDR annotations (``openmoji``); OpenMoji's own colour SVGs as the held-out style for
evaluation; Fashion-MNIST (Debian ``dataset-fashion-mnist``); scikit-learn's digits.

Outputs under ``--out``: ``pretrain/emoji-{000000..000007}.tar`` + ``sizes.json`` (open_clip_train reads them
directly), clip_benchmark ``wds/<name>/`` sets (``heldout_emoji_retrieval``, ``heldout_emoji_group``,
``heldout_emoji_subgroup``, ``fmnist``, ``digits``), ``licenses/``, ``manifest.json`` and ``DATA_CARD.md``.
Every shard and set is written under a temp name and renamed, so an interrupted build never looks complete.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.synthetic import write_tar_atomic  # noqa: E402

MAIN_GROUPS = ("smileys-emotion", "people-body", "animals-nature", "food-drink", "travel-places", "activities",
               "objects", "symbols", "flags")
FMNIST_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                  "ankle boot")
FMNIST_TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "an emoji of a {c}.", "a drawing of a {c}.",
                    "a black and white photo of a {c}.")
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("the number {c}.", "a digit {c}.", "a picture of the number {c}.")
EMOJI_TEMPLATES = ("an emoji of {c}.", "an icon of {c}.", "a picture of {c}.")
PRETRAIN_SHARDS = 8
TARGETS = ("pretrain", "heldout-emoji", "fmnist", "digits")


class DataError(Exception):
    """A problem the user can fix; printed as one line."""


@dataclass(frozen=True)
class NpmSource:
    package: str
    version: str
    licence: str
    members: tuple[str, ...]  # archive path prefixes to extract ("package/" is stripped)


NPM = {
    "openmoji": NpmSource("openmoji", "17.0.0", "CC-BY-SA-4.0 (OpenMoji graphics and data)",
                          ("package/data/openmoji.json", "package/color/svg/", "package/LICENSE.txt")),
    "noto": NpmSource("emoji-datasource-google", "16.0.0", "Apache-2.0 (Noto Emoji images); package MIT",
                      ("package/img/google/64/", "package/LICENSE")),
    "twemoji": NpmSource("emoji-datasource-twitter", "16.0.0", "CC-BY-4.0 (Twemoji graphics, © Twitter/X); package MIT",
                         ("package/img/twitter/64/", "package/LICENSE")),
    "fluent": NpmSource("@lobehub/fluent-emoji-3d", "1.1.0", "MIT (Microsoft Fluent Emoji)",
                        ("package/assets/", "package/LICENSE")),
}
STYLE_DIRS = {"noto": "img/google/64", "twemoji": "img/twitter/64", "fluent": "assets", "openmoji": "color/svg"}
PRETRAIN_STYLES = ("noto", "twemoji", "fluent")
FMNIST_DEB = "dataset-fashion-mnist"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not installed; it is needed to download {what} (install it, e.g. "
                        f"`apt-get install {'npm' if cmd[0] == 'npm' else 'apt'}`)")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`{' '.join(cmd)}` failed ({last}); check that the package registry is reachable")
    return proc.stdout


def fetch_npm(key: str, cache: Path) -> dict[str, str]:
    """``npm pack`` a package into the cache and extract the members we use; returns {"root", "archive", "sha256"}."""
    src = NPM[key]
    root, marker = cache / key, cache / f"{key}.complete.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    out = _run(["npm", "pack", f"{src.package}@{src.version}", "--pack-destination", str(cache), "--json"],
               cache, src.package)
    archive = cache / json.loads(out)[0]["filename"].replace("@", "").replace("/", "-")
    tmp = cache / f".tmp-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile() and any(member.name.startswith(p) for p in src.members):
                member.name = member.name[len("package/"):]
                tar.extract(member, tmp, filter="data")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    info = {"root": str(root), "archive": archive.name, "sha256": sha256_of(archive), "package": src.package,
            "version": src.version, "licence": src.licence}
    marker.write_text(json.dumps(info))
    return info


def fetch_deb(package: str, cache: Path) -> dict[str, str]:
    """``apt-get download`` + ``dpkg -x`` into the cache (``apt-get update`` once if the lists are missing)."""
    root, marker = cache / package, cache / f"{package}.complete.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", package], cache, package)
    except DataError:
        _run(["apt-get", "update"], cache, "the Debian package lists")
        _run(["apt-get", "download", package], cache, package)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"apt-get download {package} produced no .deb in {cache}")
    tmp = cache / f".tmp-{package}"
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg", "-x", str(debs[-1]), str(tmp)], cache, package)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    info = {"root": str(root), "archive": debs[-1].name, "sha256": sha256_of(debs[-1]), "package": package,
            "version": debs[-1].name.split("_")[1], "licence": "MIT (Zalando Research)"}
    marker.write_text(json.dumps(info))
    return info


def norm_hexcode(code: str) -> str:
    """Join key across styles: lower case, ``fe0f`` (variation selector) dropped."""
    return "-".join(p for p in code.lower().split("-") if p and p != "fe0f")


def style_files(package_root: Path, style: str) -> dict[str, Path]:
    """{normalised hexcode: image path} of one style's package directory."""
    folder = package_root / STYLE_DIRS[style]
    return {norm_hexcode(p.stem): p for p in sorted(folder.iterdir()) if p.suffix in (".png", ".webp", ".svg")}


def load_openmoji_meta(openmoji_root: Path) -> dict[str, dict]:
    entries = json.loads((openmoji_root / "data" / "openmoji.json").read_text(encoding="utf-8"))
    return {norm_hexcode(e["hexcode"]): e for e in entries if e.get("group") in MAIN_GROUPS}


def composite_on_white(img: Image.Image, res: int) -> Image.Image:
    """RGBA → RGB on white, resized to ``res``×``res``."""
    img = img.convert("RGBA")
    if img.size != (res, res):
        img = img.resize((res, res), Image.LANCZOS)
    canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, img).convert("RGB")


def render(path: Path, res: int) -> Image.Image:
    if path.suffix == ".svg":
        import cairosvg
        png = cairosvg.svg2png(url=str(path), output_width=res, output_height=res)
        return composite_on_white(Image.open(io.BytesIO(png)), res)
    with Image.open(path) as img:
        img.load()
        return composite_on_white(img, res)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _progress(items: list, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
        return tqdm(items, desc=desc, leave=False, mininterval=1.0)
    except ImportError:
        return items


class Skipped:
    """Undecodable images: skipped and counted (reported in the card), never silently dropped."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def render(self, path: Path, res: int, source: str) -> Optional[Image.Image]:
        try:
            return render(path, res)
        except Exception:  # noqa: BLE001  (any decoder error: count it)
            self.counts[source] = self.counts.get(source, 0) + 1
            return None


def heldout_concepts(meta: dict[str, dict], styles: dict[str, dict[str, Path]]) -> list[str]:
    """Concepts without skin tone present in every style (DATA.md: 1,852), sorted."""
    common = set.intersection(*(set(files) for files in styles.values()))
    return sorted(k for k in common if k in meta and not meta[k].get("skintone"))


def build_pretrain(out: Path, meta: dict[str, dict], styles: dict[str, dict[str, Path]], res: int,
                   skipped: Skipped, seed: int = 0) -> dict[str, Any]:
    """Shards of (image, caption, json) over the pre-training styles, skin tones included; OpenMoji never."""
    items = [(style, key) for style in PRETRAIN_STYLES for key in sorted(styles[style]) if key in meta]
    random.Random(seed).shuffle(items)
    samples = []
    for style, key in _progress(items, "pretrain images"):
        img = skipped.render(styles[style][key], res, style)
        if img is None:
            continue
        e = meta[key]
        keywords = [t.strip() for t in e.get("tags", "").split(",") if t.strip()]
        samples.append({"__key__": f"{style}_{key}", "png": png_bytes(img), "txt": e["annotation"],
                        "json": json.dumps({"hexcode": key, "annotation": e["annotation"], "keywords": keywords,
                                            "group": e["group"], "subgroup": e["subgroups"], "style": style,
                                            "skintone": e.get("skintone", "")})})
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes, per = {}, -(-len(samples) // PRETRAIN_SHARDS)
    for k in range(PRETRAIN_SHARDS):
        name = f"emoji-{k:06d}.tar"
        sizes[name] = write_tar_atomic(tmp / name, samples[k * per:(k + 1) * per])
    (tmp / "sizes.json").write_text(json.dumps(sizes))
    _replace_dir(tmp, out)
    per_style = {s: sum(1 for x in samples if x["__key__"].startswith(s + "_")) for s in PRETRAIN_STYLES}
    return {"samples": len(samples), "per_style": per_style,
            "pattern": f"pretrain/emoji-{{000000..{PRETRAIN_SHARDS - 1:06d}}}.tar"}


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_wds_set(out: Path, splits: dict[str, list[dict]], classnames: Optional[Iterable[str]] = None,
                  templates: Optional[Iterable[str]] = None, retrieval: bool = False) -> None:
    """One clip_benchmark ``wds/`` set: ``<split>/0.tar`` + ``nshards.txt``, class names, templates, type."""
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, samples in splits.items():
        (tmp / split).mkdir(parents=True)
        write_tar_atomic(tmp / split / "0.tar", samples)
        (tmp / split / "nshards.txt").write_text("1\n")
    if classnames is not None:
        (tmp / "classnames.txt").write_text("\n".join(classnames) + "\n")
        (tmp / "zeroshot_classification_templates.txt").write_text("\n".join(templates or ()) + "\n")
    if retrieval:
        (tmp / "dataset_type.txt").write_text("retrieval\n")
    _replace_dir(tmp, out)


def split_of(key: str) -> str:
    """Deterministic 50/50 train/test split of held-out concepts (hash of the hexcode)."""
    return "train" if int(hashlib.md5(key.encode()).hexdigest(), 16) % 2 == 0 else "test"


def build_heldout(wds: Path, meta: dict[str, dict], styles: dict[str, dict[str, Path]], res: int,
                  skipped: Skipped) -> dict[str, Any]:
    """OpenMoji images (never in pre-training) of the concepts every style has: retrieval, group, subgroup sets."""
    concepts = heldout_concepts(meta, styles)
    images = {}
    for key in _progress(concepts, "held-out OpenMoji"):
        img = skipped.render(styles["openmoji"][key], res, "openmoji")
        if img is not None:
            images[key] = png_bytes(img)
    keys = sorted(images)
    write_wds_set(wds / "heldout_emoji_retrieval",
                  {"test": [{"__key__": k, "png": images[k], "txt": meta[k]["annotation"]} for k in keys]},
                  retrieval=True)
    groups = sorted({meta[k]["group"] for k in keys})
    subgroups = sorted({meta[k]["subgroups"] for k in keys})
    counts: dict[str, Any] = {"concepts": len(keys)}
    for name, field, classes in (("heldout_emoji_group", "group", groups),
                                 ("heldout_emoji_subgroup", "subgroups", subgroups)):
        label = {c: i for i, c in enumerate(classes)}
        splits = {s: [{"__key__": k, "png": images[k], "cls": label[meta[k][field]]} for k in keys if split_of(k) == s]
                  for s in ("train", "test")}
        write_wds_set(wds / name, splits, [c.replace("-", " ") for c in classes], EMOJI_TEMPLATES)
        counts[name] = {s: len(v) for s, v in splits.items()} | {"classes": len(classes)}
    counts["per_group"] = {g: sum(1 for k in keys if meta[k]["group"] == g) for g in groups}
    return counts


def _idx(path: Path, offset: int) -> np.ndarray:
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=offset)


def _grey_samples(images: np.ndarray, labels: np.ndarray, res: int, prefix: str) -> list[dict]:
    out = []
    for i, (img, y) in enumerate(zip(images, labels)):
        pil = Image.fromarray(img).resize((res, res), Image.BILINEAR)  # greyscale PNG; readers convert to RGB
        out.append({"__key__": f"{prefix}{i:05d}", "png": png_bytes(pil), "cls": int(y)})
    return out


def build_fmnist(wds: Path, deb_root: Path, res: int) -> dict[str, int]:
    base = deb_root / "usr/share/datasets/fashion-mnist"
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = _idx(base / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
        y = _idx(base / f"{stem}-labels-idx1-ubyte.gz", 8)
        splits[split] = _grey_samples(x, y, res, split)
    write_wds_set(wds / "fmnist", splits, FMNIST_CLASSES, FMNIST_TEMPLATES)
    return {s: len(v) for s, v in splits.items()}


def build_digits(wds: Path, res: int, seed: int = 0) -> dict[str, int]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(0.6 * len(order))
    splits = {s: _grey_samples(images[idx], digits.target[idx], res, s)
              for s, idx in (("train", order[:cut]), ("test", order[cut:]))}
    write_wds_set(wds / "digits", splits, DIGIT_CLASSES, DIGIT_TEMPLATES)
    return {s: len(v) for s, v in splits.items()}


def copy_licences(out: Path, sources: dict[str, dict]) -> None:
    lic = out / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    for key, info in sources.items():
        for name in ("LICENSE", "LICENSE.txt"):
            path = Path(info["root"]) / name
            if path.is_file():
                shutil.copy(path, lic / f"{key}-{name}")
    fm = Path(sources.get("fmnist", {}).get("root", "/nonexistent")) / f"usr/share/doc/{FMNIST_DEB}/copyright"
    if fm.is_file():
        shutil.copy(fm, lic / "fashion-mnist-copyright")


CARD_POLICY = """## Split policy
- Pre-training uses three emoji styles (Noto, Twemoji, Fluent 3D), skin-tone variants included, captioned with
  OpenMoji's CLDR annotation. OpenMoji's own images are never pre-training images.
- The held-out sets use OpenMoji images of the concepts present in every style (no skin tones): the same concepts
  appear in pre-training in other styles, so these sets measure cross-style transfer; no evaluation image is a
  pre-training image. Group/subgroup sets split concepts 50/50 by a hash of the hexcode (train for the linear probe,
  test for zero-shot and the probe's score); retrieval uses every held-out concept.
- Fashion-MNIST keeps its official 60k/10k split; digits (scikit-learn) is split 60/40 with a fixed seed.

## Attribution
Twemoji graphics © Twitter/X, CC-BY-4.0. OpenMoji (openmoji.org) CC-BY-SA-4.0: derived images of OpenMoji stay
CC-BY-SA-4.0. Noto Emoji Apache-2.0. Microsoft Fluent Emoji MIT. Fashion-MNIST © Zalando Research, MIT.
scikit-learn digits BSD-3. Licence files are in `licenses/`.
"""


def write_card(out: Path, manifest: dict) -> None:
    lines = ["# DATA_CARD", "", f"Built by `python harness/data.py build` on {manifest['built']} at {manifest['res']} px "
             f"in {manifest['seconds']:.0f} s.", "", "## Sources", "", "| source | package | version | archive sha256 | "
             "licence |", "|---|---|---|---|---|"]
    for key, s in manifest["sources"].items():
        lines.append(f"| {key} | {s['package']} | {s['version']} | `{s['sha256']}` | {s['licence']} |")
    lines += ["", "## Counts", "", "```", json.dumps(manifest["counts"], indent=2), "```", "",
              f"Undecodable images skipped: {manifest['skipped'] or 'none'}", "", CARD_POLICY]
    tmp = out / ".tmp-DATA_CARD.md"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "DATA_CARD.md")


def build(out: Path, only: Iterable[str] = TARGETS, res: int = 64, cache: Optional[Path] = None,
          force: bool = False) -> dict:
    """Build the requested targets (skipping those already built at this resolution unless ``force``)."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    cache = (cache or out / ".cache").resolve()
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"counts": {}, "sources": {}}
    if manifest.get("res") not in (None, res):
        force = True  # another resolution: rebuild everything asked for
    todo = [t for t in only if force or t not in manifest["counts"]]
    if not todo:
        print(f"data.py: everything requested is already built in {out} (use --force to rebuild)")
        return {**manifest, "seconds": 0.0}
    skipped = Skipped()
    if {"pretrain", "heldout-emoji"} & set(todo):
        emoji = {k: fetch_npm(k, cache) for k in NPM}
        manifest["sources"].update(emoji)
        meta = load_openmoji_meta(Path(emoji["openmoji"]["root"]))
        styles = {k: style_files(Path(v["root"]), k) for k, v in emoji.items()}
        if "pretrain" in todo:
            manifest["counts"]["pretrain"] = build_pretrain(out / "pretrain", meta, styles, res, skipped)
        if "heldout-emoji" in todo:
            manifest["counts"]["heldout-emoji"] = build_heldout(out / "wds", meta, styles, res, skipped)
    if "fmnist" in todo:
        manifest["sources"]["fmnist"] = fetch_deb(FMNIST_DEB, cache)
        manifest["counts"]["fmnist"] = build_fmnist(out / "wds", Path(manifest["sources"]["fmnist"]["root"]), res)
    if "digits" in todo:
        import sklearn
        manifest["sources"]["digits"] = {"package": "scikit-learn (load_digits)", "version": sklearn.__version__,
                                         "sha256": "bundled in the wheel", "licence": "BSD-3-Clause", "root": ""}
        manifest["counts"]["digits"] = build_digits(out / "wds", res)
    copy_licences(out, manifest["sources"])
    manifest.update(res=res, built=time.strftime("%Y-%m-%d %H:%M"), seconds=time.time() - start,
                    skipped=skipped.counts)
    tmp = out / ".tmp-manifest.json"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, manifest_path)
    write_card(out, manifest)
    return manifest


def info(out: Path) -> str:
    path = out / "manifest.json"
    if not path.is_file():
        raise DataError(f"no manifest.json in {out}; build it with `python harness/data.py build --out {out}`")
    m = json.loads(path.read_text())
    lines = [f"{out} ({m['res']} px, built {m['built']})"]
    for key, counts in m["counts"].items():
        lines.append(f"  {key}: {json.dumps({k: v for k, v in counts.items() if k != 'per_group'})}")
    lines.append("  licences: " + "; ".join(f"{k}: {s['licence']}" for k, s in m["sources"].items()))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download and build datasets")
    b.add_argument("--out", default="data")
    b.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated subset of {', '.join(TARGETS)}")
    b.add_argument("--res", type=int, default=64)
    b.add_argument("--cache", default=None, help="download cache (default <out>/.cache)")
    b.add_argument("--force", action="store_true")
    i = sub.add_parser("info", help="print counts, licences and splits")
    i.add_argument("out", nargs="?", default="data")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "info":
            print(info(Path(args.out)))
            return 0
        only = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = sorted(set(only) - set(TARGETS))
        if unknown:
            raise DataError(f"unknown --only target(s) {unknown}; choices: {', '.join(TARGETS)}")
        manifest = build(Path(args.out), only, args.res, Path(args.cache) if args.cache else None, args.force)
        print(info(Path(args.out)) + (f"\n  took {manifest['seconds']:.0f} s" if manifest["seconds"] else ""))
        return 0
    except DataError as err:
        print(f"data.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
