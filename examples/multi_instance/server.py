"""One instance of a chat that runs as several processes sharing one Valkey.

Run everything (Valkey + two instances):   python -m examples.multi_instance
Run one instance by hand:                   VALKEY_URL=valkey://127.0.0.1:6379 PORT=3081 \\
                                            INSTANCE=A python -m examples.multi_instance.server

Each instance keeps its own connections; the chat is the pub/sub topic ``chat``
on ``ValkeyPubSub``. A line said on any instance is published to Valkey, and
every instance (the sender's included) hands what Valkey brings back to its
own subscribers, so every member sees every line exactly once, whichever
instance they are connected to, in the one order Valkey gave the channel.
Nothing in the handlers knows there are several instances.
"""

from __future__ import annotations

import os
import re
import sys

import attrs
import trio

from wskit_trio import (
    Context,
    ErrorCode,
    Router,
    RpcContext,
    UpgradeRequest,
    WsKitError,
    message,
    rpc,
    serve,
    with_pubsub,
)
from wskit_trio.pubsub import PubSubBackend
from wskit_trio.valkey import ValkeyPubSub

DEFAULT_PORT = 3081
DEFAULT_VALKEY_URL = "valkey://127.0.0.1:6379"
TOPIC = "chat"


@attrs.define
class Member:
    """Per-connection data."""

    user: str


@attrs.frozen
class Welcome:
    """The answer to ``JOIN``: which instance the member is connected to."""

    instance: str
    user: str


@attrs.frozen
class Say:
    text: str


@attrs.frozen
class ChatLine:
    user: str
    text: str
    #: The instance the speaker is connected to.
    via: str


JOIN = rpc("JOIN", None, "WELCOME", Welcome)
SAY = message("SAY", Say)
CHAT_LINE = message("CHAT_LINE", ChatLine)

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def authenticate(request: UpgradeRequest) -> Member | None:
    """Demo auth: the token is the user name. ``None`` refuses the upgrade with 401."""
    token = request.token
    if token is None or not _NAME.fullmatch(token):
        return None
    return Member(user=token)


def build_router(instance: str, pubsub: PubSubBackend) -> Router[Member]:
    """The chat, for the instance named ``instance``, on ``pubsub`` (a
    ``ValkeyPubSub`` shared by every instance)."""
    router: Router[Member] = Router()
    router.plugin(with_pubsub(pubsub))

    @router.rpc(JOIN)
    async def join(ctx: RpcContext[None, Welcome, Member]) -> None:
        # Returns once Valkey confirmed the subscription: from the reply on, every
        # line said on any instance reaches this member.
        await ctx.topics.subscribe(TOPIC)
        await ctx.reply(Welcome(instance=instance, user=ctx.data.user))

    @router.on(SAY)
    async def say(ctx: Context[Say, Member]) -> None:
        if not await ctx.topics.has(TOPIC):
            raise WsKitError(ErrorCode.FAILED_PRECONDITION, "JOIN first")
        line = ChatLine(user=ctx.data.user, text=ctx.payload.text, via=instance)
        result = await ctx.publish(TOPIC, CHAT_LINE, line)
        if not result.ok:  # Valkey unreachable: tell the sender, who may try again
            raise WsKitError(
                ErrorCode.UNAVAILABLE, "The chat is unavailable", retryable=result.retryable
            )

    return router


async def main(port: int, valkey_url: str = DEFAULT_VALKEY_URL, instance: str = "A") -> None:
    pubsub = ValkeyPubSub.from_url(valkey_url)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            serve(
                build_router(instance, pubsub),
                host="127.0.0.1",
                port=port,
                authenticate=authenticate,
            )
        )
        with trio.move_on_after(10) as waiting:  # serving starts at once; say so once
            await pubsub.wait_healthy()  # Valkey is there too
        if waiting.cancelled_caught:
            print(f"instance {instance}: no Valkey at {valkey_url} yet", file=sys.stderr)
        print(f"multi-instance server listening on {server.url}", flush=True)


if __name__ == "__main__":
    trio.run(
        main,
        int(os.environ.get("PORT", str(DEFAULT_PORT))),
        os.environ.get("VALKEY_URL", DEFAULT_VALKEY_URL),
        os.environ.get("INSTANCE", "A"),
    )
