"""``python -m benchmarks``: run the suite, print the table, write it and its charts
under ``benchmarks/results/`` (``nox -s bench`` does this on a fresh clone)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .charts import write_charts
from .run import BEFORE_DELIVERY, FULL, QUICK, SMOKE, TARGETS, render, run_suite, to_json

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def update_readme(table: str, readme: Path = README) -> bool:
    """Put ``table`` between the README's benchmark markers; False if they are missing."""
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter runs, 2,000 idle connections")
    size.add_argument("--smoke", action="store_true", help="tiny counts: checks it all runs")
    parser.add_argument("--repeat", type=int, help="rounds of echo and RPC (best kept)")
    parser.add_argument(
        "--only", action="append", choices=[t.name for t in TARGETS], help="servers to measure"
    )
    parser.add_argument("--no-bun", action="store_true", help="skip WS-Kit on Bun")
    parser.add_argument(
        "--no-install", action="store_true", help="do not npm-install bun and WS-Kit"
    )
    parser.add_argument("--no-valkey", action="store_true", help="skip cross-instance fan-out")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also measure wskit_trio of git commit REF, interleaved with this tree "
        f"(default, except with --smoke: {BEFORE_DELIVERY}, the last commit before the "
        "delivery guarantees)",
    )
    baseline.add_argument("--no-baseline", action="store_true", help="no baseline row")
    parser.add_argument("--no-charts", action="store_true", help="do not write the PNG charts")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--update-readme", action="store_true", help="put the table in README.md")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.repeat:
        settings = type(settings)(**{**settings.__dict__, "repeat": args.repeat})
    results = run_suite(
        settings,
        only=set(args.only) if args.only else None,
        bun=not args.no_bun,
        install_bun=not args.no_install,
        valkey=not args.no_valkey,
        baseline_ref=None
        if args.no_baseline
        else args.baseline_ref or (None if args.smoke else BEFORE_DELIVERY),
    )
    table = render(results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(f"# wskit_trio benchmarks\n\n{table}\n")
    (args.out / "latest.json").write_text(json.dumps(to_json(results), indent=2) + "\n")
    if not args.no_charts:
        charts, why = write_charts(results, args.out)
        if why is not None:
            print(f"no charts: {why}", file=sys.stderr)
        for chart in charts:
            print(f"chart: {chart}", file=sys.stderr)
    print(f"\nwritten to {args.out / 'latest.md'}", file=sys.stderr)
    if args.update_readme and not update_readme(table):
        print(f"README.md has no {START} ... {END} markers", file=sys.stderr)
    return 1 if any(row.errors for row in results.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
