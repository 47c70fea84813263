"""`pip install .` works: the project builds a wheel with both packages and the
`vigil` command, and that wheel installs into a fresh virtual environment where the
command runs.

The build uses pip's normal isolated build (setuptools fetched from the configured
package index). The new environment sees the system's site-packages for the
dependencies, so nothing else is downloaded; its own copy of Vigil comes first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_pip_builds_a_wheel_that_installs_and_runs_in_a_fresh_venv(tmp_path: Path) -> None:
    # A copy of what a checkout holds, so the build leaves nothing in the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("bot", "adapters"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))

    built = run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-w",
        tmp_path / "dist",
        src,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("vigil-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = zf.read(entry_points).decode()
    for module in ("bot/__init__.py", "bot/cli.py", "bot/health.py", "adapters/matrix_chat.py"):
        assert module in names, module
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "[console_scripts]" in scripts and "vigil = bot.cli:main" in scripts

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        wheel,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    where = run(
        python, "-c", "import bot.health, adapters.matrix_chat; print(bot.__file__)", cwd=tmp_path
    )
    assert where.returncode == 0, where.stderr[-3000:]
    assert Path(where.stdout.strip()).is_relative_to(env_dir)
    helped = run(env_dir / "bin" / "vigil", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-3000:]
    assert "check" in helped.stdout and "run" in helped.stdout
