"""Prometheus text-format metrics, written by hand (no client library): counters, gauges and
histograms with labels, and gauges read at scrape time (queue depth, requests in flight)."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    return "+Inf" if x == float("inf") else repr(float(x)) if isinstance(x, float) else str(x)


class Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.values: dict[tuple, float] = {}

    def inc(self, *labels, amount: float = 1) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0) + amount

    def get(self, *labels) -> float:
        return self.values.get(labels, 0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Metric):
    """Read at scrape time from `source()` → {label values: value}."""

    kind = "gauge"

    def __init__(self, name, help, labels=(), source: Callable[[], dict] | None = None):
        super().__init__(name, help, labels)
        self.source = source or (lambda: {})

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
                                for k, v in sorted(self.source().items())]


class Histogram(Metric):
    kind = "histogram"

    def __init__(self, name, help, labels=(), buckets=LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)
        self.series: dict[tuple, list] = {}  # labels → [bucket counts..., sum, count]

    def observe(self, value: float, *labels) -> None:
        with self._lock:
            s = self.series.setdefault(labels, [0] * len(self.buckets) + [0.0, 0])
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, *labels) -> int:
        return self.series.get(labels, [0])[-1]

    def max_bucket(self, *labels) -> float:
        """Upper bound of the highest non-empty bucket (tests use it: was anything batched?)."""
        s = self.series.get(labels)
        if not s:
            return 0
        filled = [b for b, n in zip(self.buckets, s) if n]
        return filled[-1] if filled else float("inf")

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self.series.items())
        for key, s in items:
            running = 0
            for bound, n in zip(self.buckets, s):
                running += n
                le = 'le="' + _number(float(bound)) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}")
            le = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {s[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(float(s[-2]))}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {s[-1]}")
        return lines


class Metrics:
    """Everything /metrics reports. Gauges' sources are attached by the app."""

    def __init__(self):
        self.requests = Counter("lightpipe_requests_total", "HTTP requests answered", ("route", "status"))
        self.errors = Counter("lightpipe_request_errors_total", "requests answered with an error", ("route", "error_type"))
        self.latency = Histogram("lightpipe_request_duration_seconds", "time from request to the end of the response", ("route",))
        self.queue_time = Histogram("lightpipe_queue_duration_seconds", "time a request waited for its batch", ("model",))
        self.inference_time = Histogram("lightpipe_inference_duration_seconds", "time one coalesced batch ran", ("model",))
        self.batch_inputs = Histogram("lightpipe_batch_inputs", "inputs per coalesced batch", ("model",), SIZE_BUCKETS)
        self.batch_requests = Histogram("lightpipe_batch_requests", "requests coalesced into one batch", ("model",), SIZE_BUCKETS)
        self.batch_tokens = Histogram("lightpipe_batch_tokens", "input tokens per coalesced batch", ("model",), TOKEN_BUCKETS)
        self.stream_tokens = Counter("lightpipe_streamed_tokens_total", "generated tokens streamed to clients", ("model",))
        self.cancelled = Counter("lightpipe_cancelled_jobs_total", "queued jobs dropped because their client had gone",
                                 ("model",))
        self.queue_depth = Gauge("lightpipe_queue_depth", "requests waiting for a batch", ("model",))
        self.in_flight = Gauge("lightpipe_requests_in_flight", "inference requests being served")
        self.models = Gauge("lightpipe_model_ready", "1 when the model is loaded and serving", ("model", "task"))

    def all(self) -> list[Metric]:
        return [self.requests, self.errors, self.latency, self.queue_time, self.inference_time, self.batch_inputs,
                self.batch_requests, self.batch_tokens, self.stream_tokens, self.cancelled, self.queue_depth, self.in_flight, self.models]

    def render(self) -> str:
        return "\n".join(line for m in self.all() for line in m.render()) + "\n"
