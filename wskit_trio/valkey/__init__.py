"""Valkey for several instances: a small trio RESP client and pub/sub across instances.

``router.plugin(with_pubsub(ValkeyPubSub.from_url("valkey://host:6379")))`` makes
publishes reach subscribers on every instance sharing that Valkey (docs/protocol.md §9);
``rate_limit(limiter=ValkeyRateLimiter.from_url(url, capacity=..., tokens_per_second=...))``
makes them share rate-limit buckets. :class:`ValkeyCluster` speaks to a Valkey Cluster
(``valkey+cluster://host1:port,host2:port``): commands routed by key slot, sharded pub/sub.
"""

from .._errors import ValkeyError, ValkeyUnavailable
from ._cluster import (
    ClusterAddress,
    ClusterShard,
    ShardedSubscriber,
    ValkeyCluster,
    ValkeyClusterStatistics,
    is_cluster_url,
    key_slot,
    parse_cluster_url,
)
from ._connection import ValkeyAddress, ValkeyConnection, ValkeySubscriber, parse_url
from ._pubsub import ValkeyPubSub, ValkeyPubSubOptions, ValkeyPubSubStatistics
from ._ratelimit import ValkeyRateLimiter, ValkeyRateLimiterStatistics

__all__ = [
    "ClusterAddress",
    "ClusterShard",
    "ShardedSubscriber",
    "ValkeyAddress",
    "ValkeyCluster",
    "ValkeyClusterStatistics",
    "ValkeyConnection",
    "ValkeyError",
    "ValkeyPubSub",
    "ValkeyPubSubOptions",
    "ValkeyPubSubStatistics",
    "ValkeyRateLimiter",
    "ValkeyRateLimiterStatistics",
    "ValkeySubscriber",
    "ValkeyUnavailable",
    "is_cluster_url",
    "key_slot",
    "parse_cluster_url",
    "parse_url",
]
