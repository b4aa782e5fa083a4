"""The benchmark suite (``nox -s bench``), run with tiny counts so it never rots: every
server starts, every scenario runs against it and the table renders. No timing is
asserted. WS-Kit on Bun is included only when it is already installed (the suite
itself installs it from npm; the test run does not)."""

from __future__ import annotations

import io
import sys

import pytest

from benchmarks.__main__ import update_readme
from benchmarks.run import SMOKE, render, run_suite, to_json

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_every_server_and_scenario_runs() -> None:
    log = io.StringIO()
    results = run_suite(SMOKE, install_bun=False, log=log)
    names = {row.target.name for row in results.rows}
    assert {"wskit", "wskit-trio-websocket", "bare-wsproto", "websockets"} <= names
    for row in results.rows:
        assert row.errors == [], (row.target.name, row.errors, log.getvalue())
        assert row.echo is not None and row.echo > 0
        assert row.echo_cpu is not None
        assert row.rpc_p50 is not None and row.rpc_p99 is not None
        assert row.memory_kib is not None
        assert (row.fanout is not None) == row.target.fanout
    assert results.cross_instance_error is None
    assert results.cross_instance is not None and results.cross_instance > 0

    table = render(results)
    assert "| wskit_trio, wsproto transport |" in table
    assert "Targets (reported, not asserted)" in table
    assert to_json(results)["rows"][0]["server"] == "wskit"


def test_the_readme_table_is_replaced_between_its_markers(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    assert update_readme("| new |", readme)
    assert readme.read_text() == "intro\n<!-- bench:start -->\n| new |\n<!-- bench:end -->\nrest\n"
    readme.write_text("no markers\n")
    assert not update_readme("| new |", readme)
