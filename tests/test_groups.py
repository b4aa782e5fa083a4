"""Public APIs raise single exceptions: the unwrapping at the boundary."""

from __future__ import annotations

import pytest
import trio

from wskit_trio import Router, serve
from wskit_trio._groups import single_exception, the_one_exception


async def _fail(exc: BaseException) -> None:
    await trio.lowlevel.checkpoint()
    raise exc


async def test_a_group_of_one_leaves_as_that_exception() -> None:
    with pytest.raises(KeyError) as info, single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_fail, KeyError("k"))
    assert info.value.args == ("k",)
    assert info.value.__context__ is None  # as first raised, not "during the group"


async def test_cancellations_beside_the_real_exception_are_dropped() -> None:
    with pytest.raises(ValueError), single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(_fail, ValueError("boom"))


async def test_several_real_exceptions_stay_a_group() -> None:
    group = ExceptionGroup("two", [KeyError("a"), ValueError("b")])
    assert the_one_exception(group) is None
    with pytest.raises(ExceptionGroup), single_exception():
        raise group


def test_nested_groups_of_one_are_flattened() -> None:
    inner = ValueError("deep")
    assert the_one_exception(ExceptionGroup("o", [ExceptionGroup("i", [inner])])) is inner


async def test_serve_raises_the_plain_os_error_for_a_busy_port() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve(Router(), port=0, handle_signals=False))
            with pytest.raises(OSError):
                await serve(Router(), port=server.port, handle_signals=False)()
            await server.aclose()
