"""Types flow from schemas, in both directions, under mypy --strict:

* ``tests/typing/check_types.py`` holds ``assert_type`` inferences that must hold
  (no errors at all);
* :data:`MISTAKES` below is code with deliberate mistakes, each marked ``# E: <code>``
  on its line; mypy must report exactly those lines with those codes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _mypy import run_mypy

ROOT = Path(__file__).resolve().parent.parent
CHECK_TYPES = ROOT / "tests" / "typing" / "check_types.py"
CHECK_CLIENT_TYPES = ROOT / "tests" / "typing" / "check_client_types.py"

MISTAKES = """\
from __future__ import annotations

import attrs

from wskit_trio import Context, Router, RpcContext, message, rpc
from wskit_trio.testing import TestClient


@attrs.frozen
class Ping:
    text: str


@attrs.frozen
class Pong:
    reply: str


@attrs.define
class Conn:
    user_id: str | None = None


@attrs.define
class OtherData:
    token: str = ""


PING = message("PING", Ping)
PONG = message("PONG", Pong)
LEAVE = message("LEAVE")
ECHO = rpc("ECHO", Ping, "ECHOED", Pong)
router: Router[Conn] = Router()


@router.on(PING)  # E: arg-type
async def wrong_payload_type(ctx: Context[Pong, Conn]) -> None: ...


@router.on(PING)  # E: arg-type
async def wrong_data_type(ctx: Context[Ping, OtherData]) -> None: ...


async def for_pong(ctx: Context[Pong, Conn]) -> None: ...


router.on(PING, for_pong)  # E: arg-type


@router.rpc(ECHO)  # E: arg-type
async def wrong_response_type(ctx: RpcContext[Ping, Ping, Conn]) -> None: ...


@router.on(PING)
async def sends_wrong(ctx: Context[Ping, Conn]) -> None:
    await ctx.send(PONG, Ping("x"))  # E: misc
    await ctx.send(LEAVE, Ping("x"))  # E: misc
    await ctx.send(PING)  # E: arg-type
    count: int = ctx.payload.text  # E: assignment
    ctx.payload.nope  # E: attr-defined
    ctx.data.token  # E: attr-defined


@router.rpc(ECHO)
async def replies_wrong(ctx: RpcContext[Ping, Pong, Conn]) -> None:
    await ctx.reply(Ping("x"))  # E: arg-type
    await ctx.progress(Ping("x"))  # E: arg-type
    await ctx.send(PING, Pong("x"))  # E: misc


router.on(ECHO, for_pong)  # E: call-overload
router.rpc(PING, for_pong)  # E: call-overload


async def client_side(client: TestClient[Conn]) -> None:
    await client.request(ECHO, Pong("x"))  # E: misc
    pong: Ping = await client.receive_payload(PONG)  # E: arg-type
    await client.send(PING, Pong("x"))  # E: misc
"""

_EXPECTED = re.compile(r"#\s*E:\s*(?P<code>[\w-]+)\s*$")


def _run_mypy(cache_dir: Path, *files: Path) -> dict[str, set[tuple[int, str]]]:
    """The errors mypy --strict reports on ``files``, by file name: ``{(line, code)}``."""
    found: dict[str, set[tuple[int, str]]] = {f.name: set() for f in files}
    for error in run_mypy(cache_dir, *files):
        found.setdefault(error.file, set()).add((error.line, error.code))
    return found


@pytest.fixture(scope="module")
def mypy_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[tuple[int, str]]]:
    workdir = tmp_path_factory.mktemp("typing")
    mistakes = workdir / "mistakes.py"
    mistakes.write_text(MISTAKES)
    return _run_mypy(workdir / "cache", CHECK_TYPES, CHECK_CLIENT_TYPES, mistakes)


def test_inferred_types_hold(mypy_results: dict[str, set[tuple[int, str]]]) -> None:
    assert mypy_results["check_types.py"] == set()


def test_client_types_hold(mypy_results: dict[str, set[tuple[int, str]]]) -> None:
    # Inferences, and mistakes proven by `type: ignore`s that strict mode needs used.
    assert mypy_results["check_client_types.py"] == set()


def test_mistakes_are_reported(mypy_results: dict[str, set[tuple[int, str]]]) -> None:
    expected = {
        (number, match["code"])
        for number, line in enumerate(MISTAKES.splitlines(), start=1)
        if (match := _EXPECTED.search(line)) is not None
    }
    assert len(expected) == 18
    assert mypy_results["mistakes.py"] == expected
