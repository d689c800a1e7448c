"""`GET /metrics`: what a serving process has done, in the Prometheus text format, for a scraper or a dashboard.

Each app gets a registry of its own (not prometheus_client's global one), so two apps in one process, as in tests or
a notebook, never count into each other. What is measured:
- `kdnas_requests_total{status}`: /v1/predict answers by HTTP status, including those refused before the handler
  (a body over the limit, JSON that does not parse or validate);
- `kdnas_request_seconds`: /v1/predict time from the handler's start to its answer, queueing for a batch included;
- `kdnas_batch_rows` and `kdnas_batch_seconds`: rows per ONNX Runtime pass and the pass's time (a request too large
  for one batch runs in several `max_batch` slices; one pass is all of them);
- `kdnas_queue_requests`: requests waiting for the batcher at scrape time;
- `kdnas_model_info`: the artifact served (name, profile, architecture, precision), always 1.
"""

from __future__ import annotations

from collections.abc import Callable

#: Request latency buckets, seconds: sub-millisecond GPU answers up to a queue that has fallen minutes behind.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServeMetrics:
    def __init__(self, model: dict[str, str], queued: Callable[[], int] | None = None) -> None:
        """`model`: the labels of `kdnas_model_info`; `queued`: how many requests wait, read at each scrape."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("kdnas_requests", "Answers to /v1/predict by HTTP status.", ["status"],
                                registry=self.registry)
        self.request_seconds = Histogram("kdnas_request_seconds", "Time to answer /v1/predict, queueing included.",
                                         buckets=REQUEST_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("kdnas_batch_rows", "Rows per ONNX Runtime pass.", buckets=BATCH_ROW_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("kdnas_batch_seconds", "Time of one ONNX Runtime pass over a batch.",
                                       buckets=REQUEST_BUCKETS, registry=self.registry)
        if queued is not None:
            waiting = Gauge("kdnas_queue_requests", "Requests waiting for the batcher.", registry=self.registry)
            waiting.set_function(queued)
        info = Gauge("kdnas_model_info", "The artifact served (always 1).", list(model), registry=self.registry)
        info.labels(**model).set(1)

    def answered(self, status: int, seconds: float | None = None) -> None:
        self.requests.labels(status=str(status)).inc()
        if seconds is not None:
            self.request_seconds.observe(seconds)

    def batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_seconds.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The scrape body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
