"""``run_until_blocked``: a coroutine run in the current task, with a hook called just
before it first yields to trio (the connection's reader runs RPC handlers this way
and hands its reading over to a new task at that hook)."""

from __future__ import annotations

import contextvars

import pytest
import trio
import trio.testing

from wskit_trio._inline import run_until_blocked

TIMEOUT = 5
var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outside")


async def test_a_coroutine_that_never_yields_runs_to_its_end_with_no_schedule_point() -> None:
    blocked: list[str] = []

    async def quick() -> int:
        return 42

    with trio.fail_after(TIMEOUT), trio.testing.assert_no_checkpoints():
        result = await run_until_blocked(
            quick(), contextvars.copy_context(), lambda: blocked.append("x")
        )
    assert result == 42
    assert blocked == []


async def test_the_hook_runs_once_just_before_the_first_yield_then_the_rest_runs_here() -> None:
    steps: list[str] = []
    me = trio.lowlevel.current_task()

    async def slow() -> str:
        steps.append("before")
        await trio.lowlevel.checkpoint()
        steps.append("between")
        await trio.lowlevel.checkpoint()
        assert trio.lowlevel.current_task() is me  # the same task throughout
        return "done"

    with trio.fail_after(TIMEOUT):
        result = await run_until_blocked(
            slow(), contextvars.copy_context(), lambda: steps.append("blocked")
        )
    assert result == "done"
    assert steps == ["before", "blocked", "between"]


async def test_what_trio_sends_back_reaches_the_coroutine() -> None:
    """A wake-up (a parking lot that recorded this task) and a cancellation pass
    through, after the hook as before it."""
    lot = trio.lowlevel.ParkingLot()
    outcome: list[str] = []
    scopes: list[trio.CancelScope] = []

    async def waits() -> None:
        await lot.park()
        outcome.append("woken")
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                with trio.CancelScope() as scope:
                    scopes.append(scope)
                    await run_until_blocked(waits(), contextvars.copy_context(), lambda: None)

            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked()
            assert lot.unpark() != []
            await trio.testing.wait_all_tasks_blocked()
            scopes[0].cancel()
    assert outcome == ["woken", "cancelled"]
    assert scopes[0].cancelled_caught


@pytest.mark.parametrize("blocks", [False, True])
async def test_exceptions_from_the_coroutine_propagate(blocks: bool) -> None:
    async def fails() -> None:
        if blocks:
            await trio.lowlevel.checkpoint()
        raise ValueError("boom")

    with trio.fail_after(TIMEOUT), pytest.raises(ValueError, match="boom"):
        await run_until_blocked(fails(), contextvars.copy_context(), lambda: None)


async def test_a_failing_hook_closes_the_coroutine_and_propagates() -> None:
    closed: list[str] = []

    async def waits() -> None:
        try:
            await trio.sleep(1)
        finally:
            closed.append("closed")

    def hook() -> None:
        raise RuntimeError("no reader")

    with trio.fail_after(TIMEOUT), pytest.raises(RuntimeError, match="no reader"):
        await run_until_blocked(waits(), contextvars.copy_context(), hook)
    assert closed == ["closed"]


async def test_context_variables_stay_in_the_given_context() -> None:
    """As in a task of its own: what the coroutine sets does not leak out, before or
    after it blocks, and it sees the context it was given."""
    context = contextvars.copy_context()
    seen: list[str] = []

    async def sets() -> None:
        seen.append(var.get())
        var.set("inside")
        await trio.lowlevel.checkpoint()
        seen.append(var.get())

    context.run(var.set, "given")
    var.set("reader")
    with trio.fail_after(TIMEOUT):
        await run_until_blocked(sets(), context, lambda: seen.append(var.get()))
    assert seen == ["given", "reader", "inside"]  # (the hook runs in the caller's)
    assert var.get() == "reader"
    assert context[var] == "inside"
