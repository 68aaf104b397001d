"""Shared fixtures: tiny webdataset shards written in-test (no downloads)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


def png_bytes(color: tuple[int, int, int], size: int = 16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path: Path, samples: list[dict]) -> Path:
    """Write ``samples`` (dicts with __key__ and raw bytes/str members) as one tar shard."""
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path


@pytest.fixture
def tiny_shard(tmp_path: Path) -> Path:
    samples = [{"__key__": f"s{i:03d}", "png": png_bytes((10 * i, 0, 0)), "txt": f"caption {i}"} for i in range(6)]
    return write_shard(tmp_path / "shard-000000.tar", samples)
