"""The evaluation sets: clip_benchmark ``wds/`` folders found, validated, fingerprinted, and the tasks each offers.

Every set under ``--data/wds/`` plus ``--dataset wds/NAME=PATH``. Task per set: zeroshot_retrieval if
``dataset_type.txt`` says retrieval, else zeroshot_classification, plus linear_probe when a ``train`` split exists.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

from uniclip_plugin.bench.errors import BenchError

__all__ = ["find_datasets", "tasks_of", "dataset_fingerprint", "is_retrieval", "is_multilabel"]


def is_retrieval(dataset_dir: Path) -> bool:
    """Whether the set's ``dataset_type.txt`` says ``retrieval``."""
    kind = dataset_dir / "dataset_type.txt"
    return kind.is_file() and kind.read_text().strip().lower() == "retrieval"


def is_multilabel(dataset_dir: Path) -> bool:
    """Whether the set's ``dataset_type.txt`` says ``multilabel``."""
    kind = dataset_dir / "dataset_type.txt"
    return kind.is_file() and kind.read_text().strip().lower() == "multilabel"


def _check_split(name: str, path: Path, split: Path) -> None:
    nshards = split / "nshards.txt"
    if not nshards.is_file():
        raise BenchError(
            f"dataset folder {path} is not a clip_benchmark wds set: {split.name}/nshards.txt is "
            f"missing (build it with `python harness/data.py build`)"
        )
    try:
        n = int(nshards.read_text().strip())
    except ValueError:
        raise BenchError(f"{nshards} does not hold a shard count") from None
    missing = [f"{i}.tar" for i in range(n) if not (split / f"{i}.tar").is_file()]
    if missing:
        raise BenchError(f"dataset {name}: {split.name}/nshards.txt says {n} shards but {missing[0]} is missing")


def _check_dataset(name: str, path: Path) -> None:
    if not path.is_dir():
        raise BenchError(f"dataset {name}: folder {path} does not exist")
    splits = [s for s in path.iterdir() if s.is_dir() and not s.name.startswith(".")]
    if not (path / "test").is_dir():
        raise BenchError(
            f"dataset folder {path} is not a clip_benchmark wds set: it has no test/ split "
            f"(expected test/nshards.txt and test/0.tar ...)"
        )
    for split in splits:
        _check_split(name, path, split)
    if not is_retrieval(path):
        for f in ("classnames.txt", "zeroshot_classification_templates.txt"):
            if not (path / f).is_file():
                raise BenchError(f"classification set {path} lacks {f} (zero-shot needs class names and templates)")


def find_datasets(data_dir: Optional[Path], extra: Sequence[str] = ()) -> dict[str, Path]:
    """Every ``wds/`` set under ``data_dir/wds`` plus ``--dataset`` items, validated.

    Args:
        data_dir: the ``--data`` folder (its ``wds/`` subfolder is scanned), or None.
        extra: ``wds/NAME=PATH`` (or ``NAME=PATH``) items; ``wds/NAME`` alone means ``data_dir/wds/NAME``.

    Returns:
        Dataset name → folder, sorted by name.

    Raises:
        BenchError: a folder that is not a clip_benchmark wds set (no ``nshards.txt``, missing shards, ...).
    """
    data_dir = Path(data_dir) if data_dir is not None else None
    found: dict[str, Path] = {}
    if data_dir is not None and (data_dir / "wds").is_dir():
        # Hidden folders are the data builder's temporaries (written, then renamed into place).
        found = {d.name: d for d in sorted((data_dir / "wds").iterdir()) if d.is_dir() and not d.name.startswith(".")}
    for item in extra:
        name, sep, path = item.partition("=")
        name = name.removeprefix("wds/")
        found[name] = Path(path) if sep else (data_dir or Path(".")) / "wds" / name
    for name, path in found.items():
        _check_dataset(name, path)
    return dict(sorted(found.items()))


def tasks_of(dataset_dir: Path) -> list[str]:
    """Retrieval sets → zeroshot_retrieval; others → zeroshot_classification (+ linear_probe with a train split)."""
    if is_retrieval(dataset_dir):
        return ["zeroshot_retrieval"]
    probe = (dataset_dir / "train").is_dir() and not is_multilabel(dataset_dir)
    return ["zeroshot_classification"] + (["linear_probe"] if probe else [])


def dataset_fingerprint(dataset_dir: Path, split: str) -> str:
    """Hash of the names, sizes and mtimes of a split's files and the set's metadata files.

    The data builder writes every file to a temporary name and renames it, so a rebuilt set gets new mtimes; this
    costs a few ``stat`` calls instead of hashing hundreds of MB of shards.
    """
    h = hashlib.sha256()
    files = sorted([p for p in dataset_dir.glob("*.txt")] + [p for p in (dataset_dir / split).glob("*") if p.is_file()])
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(dataset_dir)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]
