"""The benchmark suite (``nox -s bench``), run with tiny counts so it never rots: every
server starts, every scenario runs against it, the table and the charts render, and
the baseline row runs the wskit_trio of the commit before the delivery guarantees.
No timing is asserted. WS-Kit on Bun is included only when it is already installed
(the suite itself installs it from npm; the test run does not)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import update_readme
from benchmarks.charts import CHARTS, write_charts
from benchmarks.run import BASELINE, BEFORE_DELIVERY, ROOT, SMOKE, render, run_suite, to_json

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def test_every_server_and_scenario_runs(tmp_path: Path) -> None:
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
        assert row.connect_rate is not None and row.connect_rate > 0
        assert (row.fanout is not None) == row.target.fanout
        assert (row.burst is not None) == row.target.burst
    assert results.cross_instance_error is None
    assert results.cross_instance is not None and results.cross_instance > 0
    assert results.cross_instance_history_error is None
    assert results.cross_instance_history is not None
    # Progress: one numbered line per step, the last one says the whole count.
    steps = [line for line in log.getvalue().splitlines() if line.startswith("[")]
    total = len(steps)
    assert steps[0].startswith(f"[1/{total}] ") and steps[-1].startswith(f"[{total}/{total}] ")

    assert [row.setup for row in results.scale_out] == [
        "one Valkey node",
        "3-shard Valkey Cluster",
    ]
    for scale in results.scale_out:
        assert scale.error is None, scale.error
        assert scale.deliveries_per_s and scale.publishes_per_s

    table = render(results)
    assert "| wskit_trio, wsproto transport |" in table
    assert "websockets, asyncio, burst: one handler calling broadcast()" in table
    assert "Targets of wave 2 (issue #15; reported, not asserted)" in table
    assert to_json(results)["rows"][0]["server"] == "wskit"

    written, why = write_charts(results, tmp_path)
    assert why is None
    assert sorted(path.name for path in written) == sorted(CHARTS)
    for path in written:
        assert path.read_bytes().startswith(b"\x89PNG")


def _has_commit(ref: str) -> bool:
    found = subprocess.run(
        ["git", "cat-file", "-e", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, check=False
    )
    return found.returncode == 0


@pytest.mark.skipif(not _has_commit(BEFORE_DELIVERY), reason="needs the git history")
def test_the_baseline_row_runs_the_commit_before_the_delivery_guarantees() -> None:
    log = io.StringIO()
    results = run_suite(SMOKE, only={"wskit"}, valkey=False, baseline_ref=BEFORE_DELIVERY, log=log)
    baseline = results.row(BASELINE)
    assert baseline is not None, results.notes
    assert baseline.target.label == f"wskit_trio @{BEFORE_DELIVERY}"
    assert baseline.errors == [], (baseline.errors, log.getvalue())
    assert baseline.echo is not None and baseline.fanout is not None
    assert [row.target.name for row in results.rows] == ["wskit", BASELINE]
    table = render(results)
    assert f"| ratio: wskit_trio, wsproto transport / wskit_trio @{BEFORE_DELIVERY} |" in table
    assert f"against wskit_trio @{BEFORE_DELIVERY} (same run): echo" in table


def test_the_readme_table_is_replaced_between_its_markers(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    assert update_readme("| new |", readme)
    assert readme.read_text() == "intro\n<!-- bench:start -->\n| new |\n<!-- bench:end -->\nrest\n"
    readme.write_text("no markers\n")
    assert not update_readme("| new |", readme)
