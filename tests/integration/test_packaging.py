"""The installed package: console scripts and Twisted plugin discovery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _env_without_checkout(extra_path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return env


def test_pip_install_ships_the_twistd_plugins(tmp_path: Path) -> None:
    # What `pip install .` puts in site-packages, without the checkout on the path.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", str(target), str(ROOT)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    assert (target / "twisted" / "plugins" / "ipython1_plugins.py").exists()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from twisted.scripts.twistd import run; sys.argv = ['twistd', '--help']; run()",
         str(target)], capture_output=True, text=True, cwd=tmp_path,
        env=_env_without_checkout())
    assert "ipcontroller" in out.stdout and "ipengine" in out.stdout, out.stderr[-2000:]
    # Every package is shipped (setup.py lists them one by one).
    packages = sorted({p.parent.relative_to(ROOT).as_posix().replace("/", ".")
                       for p in (ROOT / "ipython1").rglob("__init__.py")})
    out = subprocess.run(
        [sys.executable, "-c", "import importlib, sys; sys.path.insert(0, sys.argv[1]); "
         "[importlib.import_module(name) for name in sys.argv[2:]]", str(target), *packages],
        capture_output=True, text=True, cwd=tmp_path, env=_env_without_checkout())
    assert out.returncode == 0, out.stderr[-2000:]


def test_this_environment_finds_the_plugins_and_scripts(tmp_path: Path) -> None:
    # The test environment has ipython1 installed (pip install -e . by scripts/test.py).
    bin_dir = Path(sys.executable).parent
    twistd = bin_dir / "twistd"
    out = subprocess.run([str(twistd), "--help"], capture_output=True, text=True,
                         cwd=tmp_path, env=_env_without_checkout())
    assert "ipcontroller" in out.stdout and "ipengine" in out.stdout
    for script in ("ipcluster", "ipcontroller", "ipengine", "ipython1-shell"):
        assert (bin_dir / script).exists(), script
