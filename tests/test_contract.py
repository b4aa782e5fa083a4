"""The contract export: JSON Schema that agrees with the server on real frames, an
AsyncAPI document whose references all resolve, and a TypeScript module that
``tsc`` type-checks a client against (and refuses a wrong one)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import contract_app
import jsonschema
import pytest
import trio
import trio_websocket
from _net import recv_json, running_server, send_json
from _npm import npm_ci

from wskit_trio import ConfigurationError, Router, export_contract, message, rpc
from wskit_trio._cli import module_schemas

TESTS = Path(__file__).resolve().parent
TS = TESTS / "ts"
MESSAGES = module_schemas(contract_app)


def _document(format: str = "jsonschema") -> Any:
    return json.loads(export_contract(contract_app.router, format, messages=MESSAGES))  # type: ignore[arg-type]


def _validator(document: Any, ref: str) -> jsonschema.Draft202012Validator:
    """A validator for one definition, the rest of ``document`` around it for its refs."""
    return jsonschema.Draft202012Validator({**document, "$ref": ref})


def _order(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "customerId": "c1",
        "items": [{"sku": "ABC-1", "quantity": 2}],
        "color": "red",
        "priority": 2,
        "mode": "fast",
        "weights": {"a": 1.5},
        "pair": [1, "x"],
        "since": {"offset": 3, "epoch": "e"},
    }
    return {**payload, **changes}


def _frame(type: str, payload: Any = None, **meta: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": type, "meta": meta}
    if payload is not None:
        frame["payload"] = payload
    return frame


#: (frame, whether the server takes it): both the server and the schema must agree.
INBOUND: list[tuple[dict[str, Any], bool]] = [
    (_frame("ORDER", _order(), traceId="t"), True),
    (
        _frame("ORDER", _order(tags=["a", "a"], discount=0.5, size="l", gift=True), traceId="t"),
        True,
    ),
    (_frame("ORDER", _order(extra={"any": [1, None]}), traceId="t", hop=2, timestamp=1.5), True),
    (_frame("ORDER", _order(discount=None, since=None), traceId="t", timeoutMs=10), True),
    (_frame("ORDER", _order()), False),  # extended meta traceId is required
    (_frame("ORDER", _order(), traceId="t", other=1), False),
    (_frame("ORDER", _order(), traceId="t", timeoutMs=-1), False),
    (_frame("ORDER", _order(), traceId="t", timestamp="now"), False),
    (_frame("ORDER", _order(customerId=""), traceId="t"), False),
    (_frame("ORDER", _order(customerId="x" * 21), traceId="t"), False),
    (_frame("ORDER", _order(items=[]), traceId="t"), False),
    (_frame("ORDER", _order(items=[{"sku": "abc-1", "quantity": 1}]), traceId="t"), False),
    (_frame("ORDER", _order(items=[{"sku": "ABC-1", "quantity": 0}]), traceId="t"), False),
    (_frame("ORDER", _order(items=[{"sku": "ABC-1", "quantity": True}]), traceId="t"), False),
    (_frame("ORDER", _order(items=[{"sku": "ABC-1", "quantity": 1, "x": 1}]), traceId="t"), False),
    (_frame("ORDER", _order(color="blue"), traceId="t"), False),
    (_frame("ORDER", _order(priority=3), traceId="t"), False),
    (_frame("ORDER", _order(mode="slow"), traceId="t"), False),
    (_frame("ORDER", _order(weights={"a": "1"}), traceId="t"), False),
    (_frame("ORDER", _order(pair=[1, "x", 2]), traceId="t"), False),
    (_frame("ORDER", _order(discount=1), traceId="t"), False),
    (_frame("ORDER", _order(size="xl"), traceId="t"), False),
    (_frame("ORDER", _order(since={"offset": -1, "epoch": "e"}), traceId="t"), False),
    (_frame("ORDER", {k: v for k, v in _order().items() if k != "mode"}, traceId="t"), False),
    ({**_frame("ORDER", _order(), traceId="t"), "extra": 1}, False),
    (_frame("LEAVE"), True),
    ({"type": "LEAVE"}, True),
    (_frame("LEAVE", {}), False),
    (_frame("QUOTE", {"sku": "ABC-1"}, correlationId="q1"), True),
    (_frame("QUOTE", {"sku": "missing"}, correlationId="q2", timeoutMs=500), True),
    (_frame("QUOTE", {"sku": "ABC-1"}), False),  # an RPC needs its correlationId
    (_frame("QUOTE", {"sku": 1}, correlationId="q3"), False),
    (_frame("PING", correlationId="p1"), True),
    (_frame("NOPE", correlationId="n1"), False),  # not a type this router takes
]


async def test_the_json_schema_agrees_with_the_server_on_real_frames() -> None:
    document = _document()
    jsonschema.Draft202012Validator.check_schema(document)
    client = _validator(document, "#/$defs/ClientMessage")
    server = _validator(document, "#/$defs/ServerMessage")
    seen: set[str] = set()
    with trio.fail_after(10):
        async with (
            running_server(contract_app.router, heartbeat=None) as live,
            trio_websocket.open_websocket_url(f"{live.url}/") as ws,
        ):
            for frame, takes in INBOUND:
                await send_json(ws, frame)
                answers = [await recv_json(ws)]
                while answers[-1]["type"] == "$ws:rpc-progress":
                    answers.append(await recv_json(ws))
                for answer in answers:
                    server.validate(answer)  # everything the server says fits the contract
                    seen.add(answer["type"])
                last = answers[-1]
                refused = last["type"] in ("ERROR", "RPC_ERROR") and last["payload"]["code"] in (
                    "INVALID_ARGUMENT",
                    "UNIMPLEMENTED",
                )
                assert refused != takes, (frame, answers)
                assert client.is_valid(frame) == takes, frame
    # Each kind of server frame was checked: sent events, replies, progress, errors.
    assert seen == {"ORDERED", "NOTICE", "QUOTED", "PONG", "$ws:rpc-progress", "ERROR", "RPC_ERROR"}


def test_every_frame_has_a_definition_and_invalid_server_frames_are_refused() -> None:
    document = _document()
    defs = document["$defs"]
    for name in ("ORDER", "LEAVE", "QUOTE", "PING", "ORDERED", "NOTICE", "QUOTED", "PONG"):
        assert defs[name]["properties"]["type"] == {"const": name}
    for name in ("QUOTE.progress", "PING.progress"):
        assert defs[name]["properties"]["type"] == {"const": "$ws:rpc-progress"}
    client_refs = {r["$ref"] for r in defs["ClientMessage"]["anyOf"]}
    assert client_refs == {f"#/$defs/{n}" for n in ("ORDER", "LEAVE", "QUOTE", "PING")}
    server = _validator(document, "#/$defs/ServerMessage")
    quoted = {"sku": "A", "price": 1.0}
    assert server.is_valid(_frame("QUOTED", quoted, correlationId="c"))
    for wrong in [
        _frame("QUOTED", quoted),  # a reply carries the request's correlationId
        _frame("QUOTED", {**quoted, "currency": "USD"}, correlationId="c"),
        {"type": "$ws:rpc-progress", "meta": {"correlationId": "c"}, "payload": quoted},
        _frame("PONG", {}, correlationId="c"),
        _frame("ERROR", {"code": "INTERNAL", "message": "x"}),  # retryable is always there
        _frame("ORDERED", _order(), traceId="t"),  # ORDER's extended meta is not ORDERED's
    ]:
        assert not server.is_valid(wrong), wrong
    # Pub/sub deliveries may carry positions (delivery.md §11.4), and no meta at all.
    assert server.is_valid(_frame("NOTICE", {"text": "x"}, topic="t", offset=1, epoch="e"))
    assert server.is_valid({"type": "NOTICE", "payload": {"text": "x", "level": None}})


def _resolve(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [
            r for value in node.values() for r in _refs(value)
        ]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_asyncapi_document_structure_and_references() -> None:
    document = _document("asyncapi")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] and document["info"]["version"]
    refs = _refs(document)
    assert refs
    for ref in refs:
        _resolve(document, ref)  # every reference resolves
    messages = document["components"]["messages"]
    frame_names = {
        "ORDER", "LEAVE", "QUOTE", "PING", "ORDERED", "NOTICE", "QUOTED", "PONG",
        "QUOTE.progress", "PING.progress", "ERROR", "RPC_ERROR",
    }  # fmt: skip
    assert set(messages) == frame_names
    ((channel_name, channel),) = document["channels"].items()
    assert set(channel["messages"]) == frame_names
    for name, message_ in messages.items():
        assert message_["payload"] == {"$ref": f"#/components/schemas/{name}"}
    operations = document["operations"]
    actions = {key: op["action"] for key, op in operations.items()}
    assert actions == {
        "receive.ORDER": "receive",
        "receive.LEAVE": "receive",
        "receive.QUOTE": "receive",
        "receive.PING": "receive",
        "send.ORDERED": "send",
        "send.NOTICE": "send",
        "send.ERROR": "send",
        "send.RPC_ERROR": "send",
    }
    reply = operations["receive.QUOTE"]["reply"]["messages"]
    assert [r["$ref"] for r in reply] == [
        f"#/channels/{channel_name}/messages/{name}"
        for name in ("QUOTED", "QUOTE.progress", "RPC_ERROR")
    ]
    for operation in operations.values():
        # AsyncAPI 3: an operation's messages are its channel's.
        assert all(r["$ref"].startswith("#/channels/") for r in operation["messages"])
    # The payload schemas are the JSON Schema export's, under components.schemas.
    quote = _validator(document, "#/components/schemas/QUOTE")
    assert quote.is_valid(_frame("QUOTE", {"sku": "A"}, correlationId="c"))
    assert not quote.is_valid(_frame("QUOTE", {"sku": "A"}))


@attrs.frozen
class Upload:
    """cattrs structures bytes (from a string); JSON Schema has no bytes."""

    data: bytes


@attrs.frozen
class Keyed:
    counts: dict[int, int]


@attrs.frozen
class Node:
    name: str
    children: list[Node]


def test_unmappable_types_and_clashes_are_configuration_errors() -> None:
    router: Router[None] = Router()
    router.on(message("UPLOAD", Upload), _noop)
    with pytest.raises(ConfigurationError, match=r"field Upload\.data: type bytes has no JSON"):
        export_contract(router)

    router = Router()
    router.on(message("COUNT", Keyed), _noop)
    with pytest.raises(ConfigurationError, match=r"Keyed\.counts: .* non-string keys"):
        export_contract(router)

    router = Router()
    router.on(message("A", {"x": int}), _noop)
    with pytest.raises(ConfigurationError, match="'A' is declared twice"):
        export_contract(router, messages=[message("A", {"x": str})])


def test_recursive_types_have_json_schema_but_no_zod() -> None:
    router: Router[None] = Router()
    router.on(message("TREE", Node), _noop)
    document = json.loads(export_contract(router))
    validator = _validator(document, "#/$defs/TREE")
    assert validator.is_valid(
        _frame("TREE", {"name": "a", "children": [{"name": "b", "children": []}]})
    )
    assert not validator.is_valid(_frame("TREE", {"name": "a", "children": [{"name": "b"}]}))
    with pytest.raises(ConfigurationError, match=r"recursive types .*Node -> Node"):
        export_contract(router, "typescript")


def test_mounted_routes_keep_their_wire_type() -> None:
    chat: Router[None] = Router()
    chat.rpc(rpc("WHO", None, "MEMBERS", {"users": list[str]}), _noop)
    router: Router[None] = Router()
    router.mount("chat.", chat)
    defs = json.loads(export_contract(router))["$defs"]
    assert defs["chat.WHO"]["properties"]["type"] == {"const": "chat.WHO"}
    assert defs["MEMBERS"]["description"] == "Server → client reply to chat.WHO."
    assert 'export const chat_WHO = rpc("chat.WHO", undefined, "MEMBERS", Members);' in (
        export_contract(router, "typescript")
    )


async def _noop(ctx: Any) -> None:
    pass


# -- TypeScript -----------------------------------------------------------------------------

#: A client using the generated module: it must type-check.
CLIENT_OK = """\
import { z } from "@ws-kit/zod";
import type { InferPayload, InferResponse } from "@ws-kit/zod";
import { ORDER, QUOTE, PING, NOTICE, Order, clientMessages, serverMessages } from "./contract";

type Sendable = (typeof clientMessages)[number];
// What a typed client's send(schema, payload, meta) takes: inferred from the contract.
function send<S extends Sendable>(
  schema: S, payload: InferPayload<S>, meta?: z.input<S>["meta"]): string {
  return JSON.stringify({ type: schema.messageType, meta: meta ?? {}, payload });
}

const order: Order = {
  customerId: "c1",
  items: [{ sku: "ABC-1", quantity: 2, note: null }],
  color: "green",
  priority: 1,
  mode: "cheap",
  weights: { a: 1 },
  pair: [1, "x"],
  since: { offset: 1, epoch: "e" },
};
send(ORDER, order, { traceId: "t" });
send(QUOTE, { sku: "ABC-1" });

const quoted: InferResponse<typeof QUOTE> = { sku: "A", price: 1, currency: "EUR" };
const price: number = quoted.price;

// Frames from the server: the union narrows on `type`.
type ServerFrame = z.infer<(typeof serverMessages)[number]>;
function onFrame(frame: ServerFrame): string {
  switch (frame.type) {
    case "NOTICE":
      return frame.payload.text + String(frame.payload.level ?? 0);
    case "ORDERED":
      return frame.payload.items[0]!.sku;
    case "QUOTED":
      return frame.payload.currency ?? "EUR";
    case "PONG":
      return "pong";
  }
}
const parsed = NOTICE.parse({ type: "NOTICE", payload: { text: "hi" } });
onFrame(parsed);
export { price, PING };
"""

#: Each line marked `// wrong` must be a type error.
CLIENT_BAD = """\
import type { InferPayload } from "@ws-kit/zod";
import { z } from "@ws-kit/zod";
import { ORDER, QUOTE, Order, Quote, clientMessages } from "./contract";

type Sendable = (typeof clientMessages)[number];
declare function send<S extends Sendable>(
  schema: S, payload: InferPayload<S>, meta?: z.input<S>["meta"]): void;
declare const order: Order;

send(QUOTE, { sku: 1 }); // wrong
send(QUOTE, { sku: "A", extra: true }); // wrong
send(ORDER, order, { traceId: 1 }); // wrong
const bad: Order = { ...order, mode: "slow" }; // wrong
const worse: Order = { ...order, priority: 3 }; // wrong
const quote: Quote = { sku: "A", price: "1" }; // wrong
const tiny: Order = { ...order, items: [{ sku: "A" }] }; // wrong
export { bad, worse, quote, tiny };
"""


def test_typescript_clients_type_check_against_the_generated_module(tmp_path: Path) -> None:
    generated = tmp_path / "contract.ts"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "wskit_trio", "contract", "contract_app:router"),
            *("--format", "typescript", "-o", str(generated)),
        ],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert generated.read_text() == export_contract(
        contract_app.router, "typescript", messages=MESSAGES, title="contract_app:router"
    )
    (tmp_path / "client_ok.ts").write_text(CLIENT_OK)
    (tmp_path / "client_bad.ts").write_text(CLIENT_BAD)
    modules = npm_ci(TS, "typescript/bin/tsc")
    tsconfig = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "esnext",
            "moduleResolution": "bundler",
            "skipLibCheck": True,
            "noUncheckedIndexedAccess": True,
            "types": [],
            # The packages live in tests/ts (npm ci), not beside these files.
            "paths": {"*": [f"{modules}/*"]},
        },
        "files": ["contract.ts", "client_ok.ts", "client_bad.ts"],
    }
    (tmp_path / "tsconfig.json").write_text(json.dumps(tsconfig))
    tsc = subprocess.run(
        [
            "node",
            str(modules / "typescript" / "bin" / "tsc"),
            "-p",
            str(tmp_path),
            "--pretty",
            "false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    errors = re.findall(r"^(\S+?)\((\d+),\d+\): error (TS\d+)", tsc.stdout, re.M)
    assert all(Path(file).name == "client_bad.ts" for file, _, _ in errors), tsc.stdout
    wrong_lines = {i for i, line in enumerate(CLIENT_BAD.splitlines(), 1) if "// wrong" in line}
    assert {int(line) for _, line, _ in errors} == wrong_lines, tsc.stdout
    assert tsc.returncode != 0
