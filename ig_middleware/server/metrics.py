"""Prometheus metrics of the guarded server (one registry per app, so tests and several apps never clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "inferenceguard_server"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "Requests by endpoint and HTTP status.", ["endpoint", "status"], registry=r
        )
        self.fallbacks = Counter(
            f"{PREFIX}_fallbacks", "Answers that are the safe fallback, by reason.", ["reason"], registry=r
        )
        self.safety_state = Histogram(
            f"{PREFIX}_safety_state",
            "Final safety state z of each answer (<= 0: budget exhausted).",
            buckets=(-1.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Wall time of answered requests (queue wait included).",
            ["endpoint"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
            registry=r,
        )
        self.queue_depth = Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a search slot.", registry=r)
        self.running = Gauge(f"{PREFIX}_running", "Searches running now.", registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected", "Requests refused by admission control.", ["why"], registry=r)
        self.cancelled = Counter(f"{PREFIX}_cancelled", "Searches cancelled by a client disconnect.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
