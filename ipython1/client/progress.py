"""Progress bars for long waits on tasks (tqdm), on only where someone is watching."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_enabled() -> bool:
    """Tell whether to draw progress bars: a terminal or a notebook, unless disabled."""
    if os.environ.get("IPYTHON1_NONINTERACTIVE") == "1":
        return False
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            return True
    except Exception:
        pass
    try:
        return sys.stderr.isatty()
    except Exception:
        return False


def progress_bar(total: int, desc: str, enabled: bool | None = None) -> Any:
    """Return a tqdm bar counting items, or a do-nothing stand-in."""
    if enabled is None:
        enabled = progress_enabled()
    if not enabled:
        return _NoBar()
    try:
        import ipywidgets  # noqa: F401 - a notebook draws tqdm's widget with it
        from tqdm.auto import tqdm
    except ImportError:  # without it tqdm.auto warns in a notebook; a text bar works there
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass
