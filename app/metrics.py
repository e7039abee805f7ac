"""Prometheus metrics of one service instance (its own registry, no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The service's metrics; rendered by ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sandbox_http_requests_total",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "sandbox_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sandboxes = Gauge(
            "sandbox_sandboxes", "Sandboxes known to the state store by status", ["status"], registry=self.registry
        )
        self.provider_latency = Histogram(
            "sandbox_provider_call_duration_seconds",
            "Provider call latency by operation and outcome",
            ["provider", "operation", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.replica = Gauge(
            "sandbox_replica_info", "This replica (value 1), by replica id", ["replica"], registry=self.registry
        )
        self.leases_held = Gauge(
            "sandbox_leases_held", "Leases on background work this replica holds", registry=self.registry
        )

        self.snapshot_chunks = Gauge(
            "sandbox_snapshot_chunks", "Snapshot chunks in the bucket (chunk index)", registry=self.registry
        )
        self.snapshot_chunk_bytes = Gauge(
            "sandbox_snapshot_chunk_bytes",
            "Bytes the snapshot chunks take in the bucket (compressed, each chunk once)",
            registry=self.registry,
        )

    def set_chunk_totals(self, count: int, stored_bytes: int) -> None:
        self.snapshot_chunks.set(count)
        self.snapshot_chunk_bytes.set(stored_bytes)

    def set_sandbox_counts(self, counts: dict[str, int]) -> None:
        for status in ("creating", "running", "stopped", "failed", "deleted", "warm", *counts):
            self.sandboxes.labels(status=status).set(counts.get(status, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)
