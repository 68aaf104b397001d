"""Integration: the held-out OpenMoji sets built from the real npm packages match the counts measured in docs/DATA.md.

Needs ``npm`` and the npm registry (about 155 MB of tarballs: the held-out concepts are the OpenMoji concepts that
the three pre-training styles also have, so all four emoji packages take part in the join). Set
``UNICLIP_DATA_CACHE`` to a folder to keep the downloads between runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from uniclip_plugin.data import build as D

pytestmark = pytest.mark.integration

# docs/DATA.md ("Targets and counts"), measured on the same package versions (openmoji 17.0.0,
# emoji-datasource-* 16.0.0, fluent 1.1.0).
CONCEPTS = 1852
OVERLAP_WITH_SKIN_TONES = 3372
PER_GROUP = {
    "activities": 85,
    "animals-nature": 157,
    "flags": 253,
    "food-drink": 128,
    "objects": 261,
    "people-body": 361,
    "smileys-emotion": 166,
    "symbols": 223,
    "travel-places": 218,
}


def test_heldout_emoji_from_the_real_packages(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.fail("npm is needed for the integration test (e.g. apt-get install npm)")
    cache = Path(os.environ.get("UNICLIP_DATA_CACHE") or tmp_path / "cache")
    manifest = D.build(tmp_path / "data", ["heldout-emoji"], res=16, cache=cache)
    h = manifest["counts"]["heldout-emoji"]
    assert h["concepts"] == CONCEPTS and h["per_group"] == PER_GROUP
    assert h["overlap_all_styles"] == {"with_skin_tones": OVERLAP_WITH_SKIN_TONES, "without_skin_tones": CONCEPTS}
    assert h["heldout_emoji_group"]["classes"] == 9 and h["heldout_emoji_subgroup"]["classes"] == 97
    assert h["heldout_emoji_retrieval"]["test"] == CONCEPTS
    assert h["heldout_emoji_group"]["train"] + h["heldout_emoji_group"]["test"] == CONCEPTS
    assert manifest["targets"]["heldout-emoji"]["skipped"] == {}  # every OpenMoji SVG renders
    assert {s["version"] for s in manifest["sources"].values()} == {"17.0.0", "16.0.0", "1.1.0"}
    assert all(len(s["sha256"]) == 64 for s in manifest["sources"].values())

    from clip_benchmark.datasets.builder import build_dataset
    from torchvision import transforms

    ds = build_dataset(
        "wds/heldout_emoji_retrieval",
        root=str(tmp_path / "data" / "wds" / "heldout_emoji_retrieval"),
        transform=transforms.ToTensor(),
        split="test",
        task="zeroshot_retrieval",
    )
    captions = [c for _, caps in ds for c in caps]
    assert len(captions) == len(set(captions)) == CONCEPTS  # docs/DATA.md: all annotations are unique (1:1 retrieval)
    assert "dog face" in captions and "flag: Iceland" in captions
