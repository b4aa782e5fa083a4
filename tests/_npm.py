"""npm packages some tests run (WS-Kit on Bun, TypeScript): installed from each
folder's lock file the first time a test needs them, as ``.ci/run`` does, so
``python -m pytest`` needs only ``npm`` on the machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["npm_ci"]


def npm_ci(folder: Path, marker: str) -> Path:
    """``folder/node_modules``, running ``npm ci`` there first if ``marker`` (a path
    inside it) is missing. Fails the test, saying what to install, without npm."""
    modules = folder / "node_modules"
    if (modules / marker).exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"{folder} needs npm packages and there is no npm: apt-get install npm")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return modules
