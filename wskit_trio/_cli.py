"""``python -m wskit_trio``: serve a router, or export its contract.

::

    python -m wskit_trio serve app.server:router --port 3000 --valkey valkey://localhost:6379
    python -m wskit_trio contract app.server:router --format typescript -o src/contract.ts

A target is ``module:attribute`` (dots reach into the attribute); when it is not a
:class:`Router` but callable (a factory such as ``build_router``), it is called with
no arguments. A target that cannot be loaded is a one-line error and exit status 2,
like any other usage error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
from collections.abc import Sequence
from typing import Any, NoReturn

import attrs
import trio

from ._contract import CONTRACT_FORMATS, export_contract
from ._errors import ConfigurationError
from ._router import Router
from ._schema import MessageSchema, RpcSchema
from ._server import serve
from .pubsub import PubSubBackend

__all__ = ["main"]

_LOG_LEVELS = ("debug", "info", "warning", "error")


class UsageError(Exception):
    """What the user asked for cannot be done; the message says why (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        return _contract(args)
    except UsageError as exc:
        print(f"wskit_trio: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Only before the server installed its own SIGINT handling (while importing).
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wskit_trio",
        description="Serve a wskit_trio router, or export its message contract.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "serve",
        help="serve a router over WebSocket (graceful shutdown on SIGINT/SIGTERM)",
        description="Serve a router until SIGINT or SIGTERM, then shut down gracefully: "
        "stop accepting, let in-flight RPCs finish, close every connection with 1001.",
    )
    run.add_argument("target", help="module:router (or module:factory, called with no args)")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument(
        "--port", type=int, default=3000, help="port to bind (default 3000; 0: any free one)"
    )
    run.add_argument("--path", help="accept upgrades on this path only (e.g. /ws)")
    run.add_argument("--health-path", help="answer a plain GET here with a JSON status")
    run.add_argument(
        "--valkey",
        metavar="URL",
        help="pub/sub across instances through Valkey (valkey://host:port/db), "
        "keeping the router's topic policy and history",
    )
    run.add_argument(
        "--log-level", choices=_LOG_LEVELS, default="info", help="logging level (default info)"
    )

    contract = commands.add_parser(
        "contract",
        help="export the router's messages as JSON Schema, AsyncAPI or TypeScript",
        description="Export every message the router receives and answers with, and every "
        "message() schema defined at the top level of its module (what the server sends), "
        "as JSON Schema 2020-12, AsyncAPI 3.0, or a TypeScript module of WS-Kit (zod) schemas.",
    )
    contract.add_argument("target", help="module:router (or module:factory, called with no args)")
    contract.add_argument("--format", choices=CONTRACT_FORMATS, default="jsonschema")
    contract.add_argument("-o", "--output", metavar="FILE", help="write here, not to stdout")
    return parser


# -- serve ------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    router, _ = load_router(args.target)
    if args.valkey is not None:
        use_valkey(router, args.valkey)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        # serve() turns SIGINT/SIGTERM into a graceful shutdown and returns.
        trio.run(
            serve(
                router,
                host=args.host,
                port=args.port,
                path=args.path,
                health_path=args.health_path,
            )
        )
    except OSError as exc:  # cannot listen: the address is in use, say
        print(f"wskit_trio: error: {exc}", file=sys.stderr)
        return 1
    return 0


def use_valkey(router: Router[Any], url: str) -> None:
    """Swap the router's pub/sub backend for Valkey at ``url``; its topic policy, history
    and origin stay as the app configured them."""
    router.pubsub = attrs.evolve(router.pubsub, backend=_valkey(url))


def _valkey(url: str) -> PubSubBackend:
    try:
        from .valkey import ValkeyPubSub
    except ImportError as exc:
        raise UsageError(
            f"--valkey needs the valkey extra (pip install 'wskit_trio[valkey]'): {exc}"
        ) from None
    try:
        return ValkeyPubSub.from_url(url)
    except ValueError as exc:
        raise UsageError(f"--valkey {url}: {exc}") from None


# -- contract ---------------------------------------------------------------------------


def _contract(args: argparse.Namespace) -> int:
    router, module = load_router(args.target)
    try:
        text = export_contract(
            router, args.format, messages=module_schemas(module), title=args.target
        )
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    return 0


def module_schemas(module: types.ModuleType) -> list[MessageSchema[Any] | RpcSchema[Any, Any]]:
    """The schemas defined at the top level of ``module``: the messages the server
    sends are registered nowhere, so this is where the contract finds them."""
    return [v for v in vars(module).values() if isinstance(v, MessageSchema | RpcSchema)]


# -- targets ----------------------------------------------------------------------------


def load_router(target: str) -> tuple[Router[Any], types.ModuleType]:
    """``module:attribute`` → the router (a callable is called) and its module."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        _fail(f"expected module:router, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            _fail(f"no module named {module_name!r} (is it on the path? run from its root)")
        _fail(f"importing {module_name!r} failed: {exc}")
    except Exception as exc:  # the app's own code raised: say what, not where
        _fail(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attribute.removesuffix("()").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            _fail(f"{module_name!r} has no attribute {attribute!r}")
    if not isinstance(obj, Router) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            _fail(f"calling {target} failed: {type(exc).__name__}: {exc}")
    if not isinstance(obj, Router):
        _fail(f"{target} is not a wskit_trio Router (got {type(obj).__name__})")
    return obj, module


def _fail(message: str) -> NoReturn:
    raise UsageError(message)
