"""A non-editable install ships everything a user runs: the wheel, installed into a fresh venv with the checkout off
the path, provides every console script, and each answers ``--help``.

The venv reuses this environment's dependencies through a ``.pth`` line (a path added that way is not scanned for
``.pth`` files, so this environment's editable install of the checkout stays invisible); the test checks that the
package is imported from the venv, not from the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _scripts() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(ROOT),
        ],
        check=True,
        timeout=600,
        cwd=tmp,
    )
    wheel = next((tmp / "dist").glob("uniclip_plugin-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True, timeout=300)
    python = tmp / "venv" / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # install first: with this environment's packages visible, pip could take its editable install of the checkout
    # for the package already installed and skip the wheel
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=600,
        cwd=tmp,
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    return tmp / "venv"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_the_package_comes_from_the_wheel_not_the_checkout(venv: Path) -> None:
    code = "import uniclip_plugin.bench.cli, uniclip_plugin; print(uniclip_plugin.__file__)"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=venv, env=_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).is_relative_to(venv), out.stdout
    configs = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import uniclip_plugin, open_clip; uniclip_plugin.register(); "
            "print('UniCLIP-Tiny-32' in open_clip.list_models())",
        ],
        capture_output=True,
        text=True,
        cwd=venv,
        env=_env(),
        timeout=300,
    )
    assert configs.stdout.strip().splitlines()[-1] == "True", configs.stderr[-2000:]  # model configs are shipped


@pytest.mark.slow
@pytest.mark.parametrize("script", _scripts())
def test_every_console_script_answers_help(venv: Path, script: str) -> None:
    out = subprocess.run(
        [str(venv / "bin" / script), "--help"], capture_output=True, text=True, cwd=venv, env=_env(), timeout=300
    )
    assert out.returncode == 0, f"{script}: {out.stderr[-2000:]}"
    assert "usage" in out.stdout.lower(), out.stdout[:500]
