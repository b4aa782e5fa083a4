"""Run mypy --strict, with the project's configuration, from a test."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from mypy import api as mypy_api

__all__ = ["MypyError", "run_mypy"]

ROOT = Path(__file__).resolve().parent.parent

_REPORTED = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*)\s\[(?P<code>[\w-]+)\]$"
)


class MypyError(NamedTuple):
    file: str  # the file's name, without its directory
    line: int
    code: str
    message: str


def run_mypy(cache_dir: Path, *files: Path) -> list[MypyError]:
    """Run mypy --strict (pyproject.toml's configuration: its ``files`` replaced by
    ``files``) and return the errors it reported; notes are dropped. A private cache
    keeps it hermetic (a cold run takes a few seconds)."""
    stdout, stderr, status = mypy_api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            "--cache-dir",
            str(cache_dir),
            "--no-error-summary",
            "--show-error-codes",
            "--no-pretty",
            "--hide-error-context",
            *map(str, files),
        ]
    )
    assert status in (0, 1), f"mypy crashed:\n{stdout}\n{stderr}"
    errors = []
    for line in stdout.splitlines():
        match = _REPORTED.match(line)
        if match is not None:
            errors.append(
                MypyError(
                    Path(match["path"]).name, int(match["line"]), match["code"], match["message"]
                )
            )
        else:
            assert ": note: " in line, f"unexpected mypy output: {line}"
    return errors
