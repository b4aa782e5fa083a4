"""Topic pub/sub: the backend seam, the in-memory default and the topic policy."""

from ._backend import Capability, PublishResult, PubSubBackend
from ._hub import PubSubHub, PubSubStatistics, TopicAction, TopicPolicy, with_pubsub
from ._memory import MemoryPubSub

__all__ = [
    "Capability",
    "MemoryPubSub",
    "PubSubBackend",
    "PubSubHub",
    "PubSubStatistics",
    "PublishResult",
    "TopicAction",
    "TopicPolicy",
    "with_pubsub",
]
