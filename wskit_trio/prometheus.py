"""Prometheus metrics for a router (``pip install 'wskit_trio[prometheus]'``).

>>> metrics = PrometheusMetrics()               # registers on prometheus_client.REGISTRY
>>> router.plugin(metrics)
>>> trio.run(serve(router, metrics_path="/metrics"))

:class:`PrometheusMetrics` is :class:`~wskit_trio.middleware.Metrics` (the same
observer, the same bounded labels) made a Prometheus collector: the counters
``Metrics`` keeps are read when Prometheus scrapes, as are the numbers the runtime
keeps anyway (each server's pub/sub deliveries and slow-consumer cut-offs, each
connection's dropped frames, the backend's health), so nothing is counted twice
and the hot path pays nothing for Prometheus. Only RPC latency is recorded as it
happens, in a histogram.

``serve(..., metrics_path=...)`` answers scrapes itself; any other HTTP server
(an ASGI app, say) serves :func:`exposition`'s bytes. Render on the thread that
runs trio: the collector reads the runtime's state without locks.

This module imports ``prometheus_client``; ``import wskit_trio`` does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .middleware import Metrics

if TYPE_CHECKING:
    from ._handle import ConnectionHandle
    from ._observer import HubView

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics", "exposition"]

#: RPC latency buckets, in seconds: 1 ms to 30 s.
DEFAULT_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    float("inf"),
)


def exposition(registry: Collector = REGISTRY, accept: str | None = None) -> tuple[bytes, str]:
    """The body and ``Content-Type`` of a scrape of ``registry``: the Prometheus text
    format, or OpenMetrics when the ``Accept`` header asks for it."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type


class PrometheusMetrics(Metrics, Collector):
    """:class:`~wskit_trio.middleware.Metrics` as Prometheus metrics:
    ``router.plugin(PrometheusMetrics())``.

    ====================================  =================  ==================================
    metric (``namespace="wskit"``)        labels             what
    ====================================  =================  ==================================
    ``wskit_connections_opened_total``    —                  connections accepted
    ``wskit_connections_closed_total``    —                  connections ended
    ``wskit_connections_active``          —                  connections open now
    ``wskit_frames_in_total``             ``type``           inbound messages (``<unknown>``,
                                                             ``<invalid>`` as in ``Metrics``)
    ``wskit_frames_out_total``            ``type``           frames written to clients
    ``wskit_errors_total``                ``code``           errors answered or reported
    ``wskit_rate_limited_total``          ``type``           messages refused by rate_limit
    ``wskit_publishes_total``             ``outcome``        publishes: ``ok`` or the code
    ``wskit_rpc_duration_seconds``        ``type, outcome``  RPC handler time (histogram);
                                                             outcome: ``ok``, the error code,
                                                             ``aborted``, ``cancelled``
    ``wskit_pubsub_deliveries_total``     —                  messages queued for subscribers
    ``wskit_pubsub_cut_offs_total``       —                  subscribers closed as slow (1013)
    ``wskit_outbound_dropped_total``      —                  frames outbound queues dropped
    ``wskit_pubsub_backend_healthy``      ``backend``        1 while the backend is reachable
    ====================================  =================  ==================================

    ``registry``: where to register (``prometheus_client.REGISTRY`` by default;
    ``None`` registers nowhere, for a registry of your own to ``register``).
    Install it on the router that is served, once: its hooks see every server
    that runs that router.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        namespace: str = "wskit",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.namespace = namespace
        # Not registered itself: ``collect`` hands it on with the rest.
        self._rpc = Histogram(
            "rpc_duration_seconds",
            "Time from an RPC handler's start to its answer, by type and outcome",
            ("type", "outcome"),
            namespace=namespace,
            registry=None,
            buckets=buckets,
        )
        #: Open connections (their dropped frames are read at scrape time), and what
        #: the closed ones had dropped.
        self._live: dict[str, ConnectionHandle] = {}
        self._dropped_closed = 0
        #: Running hubs, and the final counts of stopped ones.
        self._hubs: dict[int, HubView] = {}
        self._delivered_stopped = 0
        self._cut_offs_stopped = 0
        if registry is not None:
            registry.register(self)

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """A scrape of this collector's registry (just this collector when it was
        created with ``registry=None``): ``(body, content_type)``."""
        return exposition(self if self.registry is None else self.registry, accept)

    # -- the observer ---------------------------------------------------------------

    def connection_opened(self, conn: ConnectionHandle) -> None:
        super().connection_opened(conn)
        self._live[conn.client_id] = conn

    def connection_closed(self, conn: ConnectionHandle) -> None:
        super().connection_closed(conn)
        if self._live.pop(conn.client_id, None) is not None:
            self._dropped_closed += conn.statistics().outbox.dropped

    def rpc_finished(self, type: str, outcome: str, seconds: float) -> None:
        self._rpc.labels(type, outcome).observe(seconds)

    def pubsub_started(self, hub: HubView) -> None:
        self._hubs[id(hub)] = hub

    def pubsub_stopped(self, hub: HubView) -> None:
        if self._hubs.pop(id(hub), None) is not None:
            final = hub.statistics()
            self._delivered_stopped += final.delivered
            self._cut_offs_stopped += final.cut_off

    # -- the collector --------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        # The registry checks these names for clashes when it registers us.
        return self._families(empty=True)

    def collect(self) -> Iterable[Metric]:
        return self._families(empty=False)

    def _families(self, *, empty: bool) -> Iterator[Metric]:
        ns = self.namespace
        stats = self.statistics()
        # Copies first: nothing below may see a dict change under it.
        live = list(self._live.values())
        hubs = list(self._hubs.values())

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(f"{ns}_{name}", doc, value=None if empty else value)

        def by_label(
            name: str, doc: str, label: str, counts: Iterable[tuple[str, int]]
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{ns}_{name}", doc, labels=(label,))
            if not empty:
                for value, count in sorted(counts):
                    family.add_metric((value,), count)
            return family

        yield counter("connections_opened", "Connections accepted", stats.connections_opened)
        yield counter("connections_closed", "Connections ended", stats.connections_closed)
        yield GaugeMetricFamily(
            f"{ns}_connections_active",
            "Connections open now",
            value=None if empty else stats.connections_active,
        )
        yield by_label("frames_in", "Inbound messages", "type", stats.frames_in.items())
        yield by_label("frames_out", "Frames written to clients", "type", stats.frames_out.items())
        yield by_label("errors", "Errors answered or reported", "code", stats.errors.items())
        yield by_label(
            "rate_limited", "Messages refused by rate_limit", "type", stats.rate_limited.items()
        )
        yield by_label("publishes", "Publishes by outcome", "outcome", stats.publishes.items())
        yield from self._rpc.collect()

        counts = [hub.statistics() for hub in hubs]
        yield counter(
            "pubsub_deliveries",
            "Pub/sub messages queued for local subscribers",
            self._delivered_stopped + sum(c.delivered for c in counts),
        )
        yield counter(
            "pubsub_cut_offs",
            "Subscribers closed as slow consumers (1013)",
            self._cut_offs_stopped + sum(c.cut_off for c in counts),
        )
        yield counter(
            "outbound_dropped",
            "Frames dropped by outbound queues (queue policy, or queued at a cut-off)",
            self._dropped_closed + sum(c.statistics().outbox.dropped for c in live),
        )
        healthy = GaugeMetricFamily(
            f"{ns}_pubsub_backend_healthy",
            "1 while the pub/sub backend can get publishes through, else 0",
            labels=("backend",),
        )
        if not empty:
            # By backend class: servers sharing one backend (or one kind) report once.
            states: dict[str, bool] = {}
            for hub in hubs:
                name = type(hub.backend).__name__
                states[name] = states.get(name, True) and hub.backend.healthy
            for name, ok in sorted(states.items()):
                healthy.add_metric((name,), 1 if ok else 0)
        yield healthy
