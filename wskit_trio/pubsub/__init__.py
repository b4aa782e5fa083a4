"""Topic pub/sub: the backend seam, the in-memory default and the topic policy."""

from .._protocol.pubsub import History, HistorySlice, Position, Recovery
from ._backend import Capability, PublishResult, PubSubBackend
from ._hub import PubSubConfig, PubSubHub, PubSubStatistics, TopicAction, TopicPolicy, with_pubsub
from ._memory import MemoryPubSub

__all__ = [
    "Capability",
    "History",
    "HistorySlice",
    "Position",
    "PubSubConfig",
    "Recovery",
    "MemoryPubSub",
    "PubSubBackend",
    "PubSubHub",
    "PubSubStatistics",
    "PublishResult",
    "TopicAction",
    "TopicPolicy",
    "with_pubsub",
]
