"""Set up the project's own virtualenv (.venv) and re-run a script inside it.

Used by scripts/demo.py and scripts/test.py so that both work on a fresh
machine that has nothing but Python: the first run creates .venv and installs
the project (editable) with the extras it needs; later runs reuse it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("IPYTHON1_VENV", ROOT / ".venv"))


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _stamp(extras: str) -> str:
    digest = hashlib.sha256((ROOT / "setup.py").read_bytes() + extras.encode()).hexdigest()
    return digest[:16]


def ensure_venv(extras: str = "") -> Path:
    """Create .venv and install the project with extras, unless already done."""
    stamp_file = VENV / ".ipython1-installed"
    wanted = _stamp(extras)
    if stamp_file.exists() and stamp_file.read_text() == wanted and venv_python().exists():
        return venv_python()
    if not venv_python().exists():
        print(f"[setup] creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    target = f".[{extras}]" if extras else "."
    print(f"[setup] installing ipython1{'[' + extras + ']' if extras else ''} into {VENV} "
          "(first run only)", flush=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["--upgrade", "pip", "setuptools", "wheel"], check=True)
    subprocess.run(pip + ["-e", target], check=True, cwd=ROOT)
    stamp_file.write_text(wanted)
    return venv_python()


def reexec_in_venv(extras: str = "") -> None:
    """Re-run the calling script with the venv's python, unless already there."""
    python = ensure_venv(extras)
    if Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), *sys.argv])
