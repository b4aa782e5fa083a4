"""Every ```python block of README.md type-checks under mypy --strict, on its own.

Each block is written out as a module of its own and all of them go to one mypy
run (the project's configuration). A block that is deliberately a fragment can be
skipped by putting ``<!-- no-check -->`` on the line before its fence; use it
sparingly: a reader copies these blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from _mypy import run_mypy

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARK = "<!-- no-check -->"


class Block(NamedTuple):
    line: int  # the README line of its opening fence
    code: str
    section: str  # the ``## `` heading it is under

    @property
    def module(self) -> str:
        return f"readme_line_{self.line}"


def python_blocks(markdown: str) -> list[Block]:
    """The ```python blocks, dedented as far as their fence is (blocks may sit in a
    list item), except those marked with ``SKIP_MARK`` on the line before."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    section = ""
    index = 0
    while index < len(lines):
        fence = lines[index]
        if fence.startswith("## "):
            section = fence[3:].strip()
        elif fence.strip() == "```python":
            indent = len(fence) - len(fence.lstrip())
            end = index + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            assert end < len(lines), f"README.md:{index + 1}: unclosed ```python block"
            previous = lines[index - 1].strip() if index else ""
            if previous != SKIP_MARK:
                code = "\n".join(line[indent:] for line in lines[index + 1 : end])
                blocks.append(Block(index + 1, code + "\n", section))
            index = end
        index += 1
    return blocks


def test_python_blocks_are_found_and_the_mark_skips() -> None:
    markdown = "\n".join(
        [
            "## One",  # 1
            "```python",  # 2
            "x = 1",
            "```",
            "<!-- no-check -->",  # 5
            "```python",
            "fragment(",
            "```",
            "## Two",  # 9
            "",
            "  ```python",  # 11
            "  y: int = 2",
            "  ```",
            "```text",  # 14
            "not python",
            "```",
        ]
    )
    assert python_blocks(markdown) == [
        Block(2, "x = 1\n", "One"),
        Block(11, "y: int = 2\n", "Two"),
    ]


def test_readme_python_blocks_type_check(tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    files = []
    for block in blocks:
        path = tmp_path / f"{block.module}.py"
        path.write_text(block.code, encoding="utf-8")
        files.append(path)
    errors = run_mypy(tmp_path / "cache", *files)
    by_module = {block.module: block for block in blocks}
    problems = sorted(
        (found.line + error.line, found.line, error.message, error.code)
        for error in errors
        if (found := by_module.get(Path(error.file).stem)) is not None
    )
    report = [
        f"README.md:{line} (the block at line {start}): {message} [{code}]"
        for line, start, message, code in problems
    ]
    others = [error for error in errors if Path(error.file).stem not in by_module]
    if report or others:
        pytest.fail("\n".join([*report, *map(str, others)]), pytrace=False)


def test_readme_testing_example_passes(pytester: pytest.Pytester) -> None:
    """The "Testing your app" example runs as the README says to run it: pytest,
    pytest-trio, ``trio_mode = true`` in pyproject.toml, and nothing else."""
    (block,) = [
        b
        for b in python_blocks(README.read_text(encoding="utf-8"))
        if b.section == "Testing your app"
    ]
    pytester.makefile(".toml", pyproject="[tool.pytest.ini_options]\ntrio_mode = true\n")
    pytester.makepyfile(test_app=block.code)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
