"""Atomic file writes: the one place the project writes a file that a crash must not leave half-written.

Every writer goes through :func:`atomic_path`: the content is written under a temporary name in the target's folder
(unique per process and call, so concurrent writers never share a temp file) and renamed onto the target, which
POSIX makes atomic. Files are created by ``open`` (never ``mkstemp``), so they get the process umask like any other
file. :func:`atomic_torch_save` writes through a temporary *folder* holding a file of the final name, because torch
names the archive's top folder after the file it writes: the result is the archive a plain
``torch.save(obj, path)`` makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def _temp_name(path: Path) -> Path:
    # leading dot: globs such as open_clip_train's ``--resume latest`` (*.pt) never see a temp file
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is renamed onto ``path``, on an error removed.

    Args:
        path: the final file; its folder must exist.

    Yields:
        The temporary path to write (file or folder).
    """
    target = Path(path)
    tmp = _temp_name(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: PathLike, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: PathLike, *args: Any, **kwargs: Any) -> None:
    """``torch.save(obj, path)`` that never leaves a truncated file, with the archive plain ``torch.save`` writes.

    A file-like ``path`` (a buffer) is passed to ``torch.save`` unchanged.
    """
    import torch

    if not isinstance(path, (str, os.PathLike)):
        torch.save(obj, path, *args, **kwargs)
        return
    target = Path(path)
    folder = _temp_name(target)
    folder.mkdir()
    try:
        staged = folder / target.name  # the archive's top folder is named after this file, as for the target
        torch.save(obj, staged, *args, **kwargs)
        os.replace(staged, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
