"""Prometheus metrics, on a registry owned by the app (two apps in one process never mix)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from relay import RelayStats

LAG_SAMPLES = 6  # event-loop lag samples (one per 0.5 s) behind `Metrics.mean_loop_lag`


class RelayCollector(Collector):
    """Reads the relay's own monotonic counters at scrape time (no work on the media path)."""

    def __init__(self, totals: RelayStats) -> None:
        self.totals = totals

    def collect(self) -> Iterator[CounterMetricFamily]:
        t = self.totals
        yield CounterMetricFamily("parlor_relay_packets_forwarded", "RTP packets forwarded to subscribers", value=t.packets_forwarded)
        yield CounterMetricFamily("parlor_relay_bytes_forwarded", "RTP bytes forwarded to subscribers", value=t.bytes_forwarded)
        yield CounterMetricFamily("parlor_relay_packets_received", "RTP packets received from publishers", value=t.packets_received)
        yield CounterMetricFamily(
            "parlor_relay_keyframe_requests_forwarded", "PLIs sent upstream", value=t.keyframe_requests_forwarded
        )
        yield CounterMetricFamily("parlor_relay_packets_dropped", "RTP packets not forwarded to a subscriber (keyframe gating)", value=t.packets_dropped)
        yield CounterMetricFamily("parlor_relay_packets_retransmitted", "RTP packets resent to subscribers (NACK)", value=t.packets_retransmitted)
        yield CounterMetricFamily("parlor_relay_nacks_sent", "NACKs sent to publishers for the relay's own losses", value=t.nacks_sent)
        yield CounterMetricFamily(
            "parlor_relay_transport_feedback_sent", "Transport-cc feedback packets sent to publishers", value=t.transport_feedback_sent
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.relay = RelayStats()  # shared by every RelayPeer of this app
        self.registry.register(RelayCollector(self.relay))
        self.live_sessions = Gauge("parlor_live_sessions", "Live sessions on this node", registry=self.registry)
        self.live_visits = Gauge("parlor_live_visits", "Visits with live sessions on this node", registry=self.registry)
        self.joins = Counter("parlor_joins_total", "Admitted joins", ["role", "mode"], registry=self.registry)
        self.refusals = Counter("parlor_refusals_total", "Refused joins by code", ["code"], registry=self.registry)
        self.directives = Counter(
            "parlor_directives_total", "Directives issued", ["action", "scope_kind"], registry=self.registry
        )
        self.kill_seconds = Histogram(
            "parlor_kill_seconds",
            "From a directive's commit to the last affected session on this node told and recorded (media stops first)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        self.loop_lag = Gauge("parlor_event_loop_lag_seconds", "Event-loop lag, last sample", registry=self.registry)
        self.asyncio_tasks = Gauge("parlor_asyncio_tasks", "Asyncio tasks alive in this process", registry=self.registry)
        self.recent_lags: deque[float] = deque(maxlen=LAG_SAMPLES)
        self.memory_trims = Counter(
            "parlor_memory_trims_total", "malloc_trim calls after sessions ended", registry=self.registry
        )
        self.memory_trimmed_bytes = Counter(
            "parlor_memory_trimmed_bytes_total", "Resident bytes malloc_trim gave back", registry=self.registry
        )

    def lagged(self, seconds: float) -> None:
        """Record one event-loop lag sample."""
        self.loop_lag.set(seconds)
        self.recent_lags.append(seconds)

    def mean_loop_lag(self) -> float:
        """The event-loop lag over the last few samples (admission control reads it)."""
        return sum(self.recent_lags) / len(self.recent_lags) if self.recent_lags else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
