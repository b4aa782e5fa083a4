"""The benchmark suite (``nox -s bench``), run with tiny counts so it never rots: every
server starts, every scenario runs against it, the table and the charts render, and
the baseline row runs the wskit_trio of the commit before the delivery guarantees.
No timing is asserted; the one-core RPC (server and load pinned to one CPU) is
there beside the unpinned one. WS-Kit on Bun is included only when it is already installed
(the suite itself installs it from npm; the test run does not)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import update_readme
from benchmarks.charts import CHARTS, write_charts
from benchmarks.run import (
    BASELINE,
    BEFORE_DELIVERY,
    ROOT,
    SMOKE,
    from_json,
    pinned,
    pinning_cpu,
    render,
    run_suite,
    to_json,
)

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
        assert row.rpc_pinned_p50 is not None and row.rpc_pinned_p99 is not None
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
    assert "| RPC p50 / p99 µs | RPC p50 / p99 µs, one core |" in table
    assert "- one core (server and load pinned together, no cross-core wake-ups): wskit_trio" in (
        table
    )
    wskit = results.row("wskit")
    assert wskit is not None and wskit.rpc_pinned_p50 is not None
    wskit_line = next(line for line in table.splitlines() if line.startswith("| wskit_trio, ws"))
    pinned_cell = wskit_line.split(" | ")[5]
    assert pinned_cell == f"{wskit.rpc_pinned_p50:,.0f} / {wskit.rpc_pinned_p99:,.0f}"
    data = to_json(results)
    assert data["rows"][0]["server"] == "wskit"
    assert data["rows"][0]["rpc_pinned_p50_us"] == wskit.rpc_pinned_p50
    assert data["rows"][0]["rpc_pinned_p99_us"] == wskit.rpc_pinned_p99
    assert data["rpc_pinned_cpu"] == max(os.sched_getaffinity(0))
    again = from_json(data).row("wskit")
    assert again is not None and again.rpc_pinned_p99 == wskit.rpc_pinned_p99

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
    assert baseline.rpc_pinned_p50 is not None and baseline.rpc_pinned_p99 is not None
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


def test_pinned_puts_every_thread_on_one_cpu_and_back() -> None:
    cpu, why = pinning_cpu()
    assert cpu is not None, why
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
    code += "print(1, flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline()  # its thread runs
        threads = [int(tid) for tid in os.listdir(f"/proc/{child.pid}/task")]
        assert len(threads) == 2
        before = {tid: os.sched_getaffinity(tid) for tid in threads}
        with pinned([child.pid], cpu):
            assert all(os.sched_getaffinity(tid) == {cpu} for tid in threads)
        assert {tid: os.sched_getaffinity(tid) for tid in threads} == before
    finally:
        child.kill()
        child.wait(5)


def test_an_older_run_without_the_one_core_figures_still_loads(tmp_path: Path) -> None:
    old = {
        "settings": SMOKE.__dict__,
        "machine": {"cpu": "test", "python": "CPython"},
        "rows": [
            {
                "server": "wskit",
                "label": "wskit_trio, wsproto transport",
                "echo_per_s": 1000.0,
                "echo_server_cpu_us": 10.0,
                "rpc_p50_us": 120.0,
                "rpc_p99_us": 300.0,
                "fanout_per_s": 5000.0,
                "memory_kib_per_connection": 9.0,
                "connections_opened_per_s": 2500.0,
                "errors": [],
            }
        ],
        "notes": [],
    }
    results = from_json(old)
    wskit = results.row("wskit")
    assert wskit is not None and wskit.rpc_p50 == 120.0
    assert wskit.rpc_pinned_p50 is None and wskit.rpc_pinned_p99 is None
    assert results.pinned_cpu is None
    table = render(results)
    assert "| 120 / 300 | n/a |" in table
    assert "wskit_trio n/a µs (p99 n/a p50), WS-Kit on Bun n/a" in table
    assert to_json(results)["rows"][0]["rpc_pinned_p50_us"] is None
    written, why = write_charts(results, tmp_path)
    assert why is None and len(written) == len(CHARTS)
