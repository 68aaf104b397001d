"""Data builder on tiny fixtures shaped like the real packages (offline), plus one integration build."""
from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import uniclip_plugin  # noqa: F401  (E3 fix for open_clip_train's loader)
from harness import data as D

SVG = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="30" '
       'fill="{c}"/></svg>')
# hexcode (as OpenMoji writes it), group, subgroup, annotation, skintone
ENTRIES = [("1F600", "smileys-emotion", "face-smiling", "grinning face", ""),
           ("2764-FE0F", "smileys-emotion", "heart", "red heart", ""),
           ("1F436", "animals-nature", "animal-mammal", "dog face", ""),
           ("1F44D", "people-body", "hand-fingers-closed", "thumbs up", ""),
           ("1F44D-1F3FB", "people-body", "hand-fingers-closed", "thumbs up: light skin tone", "1F3FB"),
           ("1F355", "food-drink", "food-prepared", "pizza", ""),
           ("E000", "extras-openmoji", "extras", "openmoji extra", "")]


def _rgba(colour: tuple[int, int, int], size: int = 64) -> Image.Image:
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))  # transparent corners must become white
    img.paste(Image.new("RGBA", (size // 2, size // 2), colour + (255,)), (size // 4, size // 4))
    return img


def make_packages(cache: Path) -> None:
    """The extracted-package directories fetch_npm/fetch_deb would leave in the cache, plus their markers."""
    om = cache / "openmoji"
    (om / "data").mkdir(parents=True)
    (om / "color" / "svg").mkdir(parents=True)
    (om / "data" / "openmoji.json").write_text(json.dumps([
        {"hexcode": h, "group": g, "subgroups": s, "annotation": a, "skintone": t, "tags": "tag one, tag two"}
        for h, g, s, a, t in ENTRIES]))
    for h, *_ in ENTRIES:
        (om / "color" / "svg" / f"{h}.svg").write_text(SVG.format(c="#d22"))
    (om / "LICENSE.txt").write_text("CC-BY-SA-4.0")
    layouts = {"noto": ("img/google/64", ".png"), "twemoji": ("img/twitter/64", ".png"), "fluent": ("assets", ".webp")}
    for style, (folder, ext) in layouts.items():
        d = cache / style / folder
        d.mkdir(parents=True)
        for h, *_ in ENTRIES:
            if style == "fluent" and h == "1F355":
                continue  # pizza missing from one style: not a held-out concept
            name = h.lower() + ext  # real packages name files by lower-case hexcode (fe0f kept)
            _rgba((200, 30, 30)).save(d / name)
        (cache / style / "LICENSE").write_text("licence")
    (cache / "noto" / "img" / "google" / "64" / "1f436.png").write_bytes(b"not a png")  # undecodable: skipped
    fm = cache / D.FMNIST_DEB / "usr/share/datasets/fashion-mnist"
    fm.mkdir(parents=True)
    for stem, n in (("train", 20), ("t10k", 10)):
        images = np.random.default_rng(0).integers(0, 255, (n, 28, 28), dtype=np.uint8)
        with gzip.open(fm / f"{stem}-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\0" * 16 + images.tobytes())
        with gzip.open(fm / f"{stem}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(b"\0" * 8 + (np.arange(n) % 10).astype(np.uint8).tobytes())
    for key in list(D.NPM):
        src = D.NPM[key]
        (cache / f"{key}.complete.json").write_text(json.dumps(
            {"root": str(cache / key), "archive": f"{key}.tgz", "sha256": "0" * 64, "package": src.package,
             "version": src.version, "licence": src.licence}))
    (cache / f"{D.FMNIST_DEB}.complete.json").write_text(json.dumps(
        {"root": str(cache / D.FMNIST_DEB), "archive": "x.deb", "sha256": "0" * 64, "package": D.FMNIST_DEB,
         "version": "0", "licence": "MIT"}))


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, dict]:
    make_packages(tmp_path / "cache")
    manifest = D.build(tmp_path / "data", res=16, cache=tmp_path / "cache")
    return tmp_path / "data", manifest


def test_hexcode_normalisation() -> None:
    assert D.norm_hexcode("2764-FE0F") == "2764" == D.norm_hexcode("2764-fe0f")
    assert D.norm_hexcode("1F44D-1F3FB") == "1f44d-1f3fb"
    assert D.norm_hexcode("0023-FE0F-20E3") == "0023-20e3"


def test_compositing_makes_transparency_white() -> None:
    img = D.composite_on_white(_rgba((10, 20, 30), 8), 8)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((4, 4)) == (10, 20, 30)


def test_counts_joins_and_split_policy(built: tuple[Path, dict]) -> None:
    out, manifest = built
    counts = manifest["counts"]
    # 6 concepts in main groups (the extra is excluded) × 3 styles, minus fluent pizza, minus one corrupt noto image
    assert counts["pretrain"]["samples"] == 6 * 3 - 1 - 1
    assert manifest["skipped"] == {"noto": 1}
    # held-out: in every style, no skin tone → grinning, heart, dog, thumbs up (pizza lacks fluent)
    assert counts["heldout-emoji"]["concepts"] == 4
    assert counts["fmnist"] == {"train": 20, "test": 10}
    assert not list(out.rglob(".tmp-*"))  # atomic writes left no temp files
    card = (out / "DATA_CARD.md").read_text()
    assert "CC-BY-SA-4.0" in card and "cross-style transfer" in card
    assert (out / "licenses" / "openmoji-LICENSE.txt").is_file()


def test_pretrain_shards_read_by_open_clip_train(built: tuple[Path, dict]) -> None:
    import open_clip
    from open_clip_train.data import get_wds_dataset
    out, manifest = built
    sizes = json.loads((out / "pretrain" / "sizes.json").read_text())
    assert len(sizes) == D.PRETRAIN_SHARDS and sum(sizes.values()) == manifest["counts"]["pretrain"]["samples"]
    args = argparse.Namespace(train_data=str(out / manifest["counts"]["pretrain"]["pattern"]), train_num_samples=None,
                              train_data_upsampling_factors=None, dataset_resampled=False, seed=0, batch_size=1,
                              workers=0, world_size=1)
    _, _, preprocess = open_clip.create_model_and_transforms("CLIP-Tiny-32")
    info = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=open_clip.get_tokenizer("CLIP-Tiny-32"))
    assert len(list(info.dataloader)) == manifest["counts"]["pretrain"]["samples"]
    import webdataset as wds
    sample = next(iter(wds.WebDataset(str(out / "pretrain" / "emoji-000000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    assert meta["style"] in D.PRETRAIN_STYLES and meta["keywords"] == ["tag one", "tag two"]
    assert sample["txt"].decode() == {D.norm_hexcode(h): a for h, _, _, a, _ in ENTRIES}[meta["hexcode"]]
    assert not any(k.startswith("openmoji") for k in [sample["__key__"]])


def test_eval_sets_read_by_clip_benchmark(built: tuple[Path, dict]) -> None:
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset
    out, _ = built
    _, _, preprocess = open_clip.create_model_and_transforms("CLIP-Tiny-32")
    ds = build_dataset("wds/heldout_emoji_retrieval", root=str(out / "wds" / "heldout_emoji_retrieval"),
                       transform=preprocess, split="test", task="zeroshot_retrieval")
    captions = sorted(c for _, caps in ds for c in caps)
    assert captions == ["dog face", "grinning face", "red heart", "thumbs up"]
    ds = build_dataset("wds/fmnist", root=str(out / "wds" / "fmnist"), transform=preprocess, split="test",
                       task="zeroshot_classification")
    assert ds.classes[0] == "t-shirt" and len(list(ds)) == 10
    groups = (out / "wds" / "heldout_emoji_group" / "classnames.txt").read_text().split("\n")
    assert "smileys emotion" in groups


def test_second_build_does_no_work(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    stamp = (out / "pretrain" / "emoji-000000.tar").stat().st_mtime_ns
    again = D.build(out, res=16, cache=tmp_path / "cache")
    assert again["seconds"] == 0.0 and (out / "pretrain" / "emoji-000000.tar").stat().st_mtime_ns == stamp


def test_missing_client_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert D.main(["build", "--out", str(tmp_path / "d"), "--only", "heldout-emoji"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`npm` is not installed" in err


def test_unknown_target_is_a_one_line_error(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert D.main(["build", "--out", str(tmp_path), "--only", "cifar"]) == 2
    assert "choices" in capsys.readouterr().err


@pytest.mark.integration
def test_heldout_set_from_the_real_packages(tmp_path: Path) -> None:
    """Downloads the four emoji packages (~155 MB via npm) and checks the counts DATA.md states."""
    if shutil.which("npm") is None:
        pytest.fail("npm is needed for the integration test (apt-get install npm)")
    manifest = D.build(tmp_path / "data", only=["heldout-emoji"], res=16)
    counts = manifest["counts"]["heldout-emoji"]
    assert counts["concepts"] == 1852  # DATA.md §1.1: 1,852 concepts without skin tones in all four styles
    assert counts["per_group"] == {"activities": 85, "animals-nature": 157, "flags": 253, "food-drink": 128,
                                   "objects": 261, "people-body": 361, "smileys-emotion": 166, "symbols": 223,
                                   "travel-places": 218}  # DATA.md's per-group split of the 1,852
    assert counts["heldout_emoji_subgroup"]["classes"] == 97 and counts["heldout_emoji_group"]["classes"] == 9
    assert manifest["skipped"] == {}
