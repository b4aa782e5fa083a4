"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``; and
``nox -s bench``, the benchmark suite (not run by default)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    # As .ci/run does: WS-Kit 0.10 on Bun (the client's compatibility tests) and
    # TypeScript with zod (tsc on the exported contract).
    for folder in ("benchmarks/bun", "tests/ts"):
        if not Path(folder, "node_modules").is_dir():
            with session.chdir(folder):
                session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite: prints the table and writes ``benchmarks/results/``.
    Arguments go to ``python -m benchmarks`` (``nox -s bench -- --quick``)."""
    session.install("-e", ".[dev,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
