"""Prometheus metrics for operators (``GET /metrics``), through the official client.

Counters and histograms are kept per process. With ``PROMETHEUS_MULTIPROC_DIR`` set (before the
process starts: the client chooses its storage on import) every process writes its values to
files in that directory and a scrape of any process sums them all, so the figures stay right
with several workers.

Gauges that describe the log — live runs by status, the head position — are not kept at all:
they are read from the projections and the log at scrape time, so they are right after a
restart and the same whichever process is scraped.

Run outcomes, tokens and cost are counted from the events this process commits (the store's
commit observer), not from the code paths that produce them, so every writer of a run's
stream (the agent loop, a cancel, a resume) is counted the same way, once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from eventstore import RecordedEvent
from runs.events import TERMINAL_RUN_EVENTS, RunFailed, RunUsage, decode_event

__all__ = [
    "CONTENT_TYPE",
    "HTTP_REQUESTS",
    "HTTP_REQUEST_SECONDS",
    "PROVIDER_CALL_SECONDS",
    "PROVIDER_ERRORS",
    "PROVIDER_RETRIES",
    "PROVIDER_TTFT_SECONDS",
    "SSE_CONNECTIONS",
    "SSE_FRAMES",
    "exposition",
    "labeled",
    "observe_commit",
    "observe_reconnect",
    "process_exited",
]

#: The classic text format, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "runlog_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "runlog_http_request_duration_seconds",
    "Time to answer an HTTP request (an SSE stream: until it closes).",
    ["route", "method"],
)
EVENTS_APPENDED = Counter("runlog_events_appended_total", "Events committed to the log.")
COMMIT_BATCH_EVENTS = Histogram(
    "runlog_commit_batch_events",
    "Events per group commit.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
COMMIT_SECONDS = Histogram(
    "runlog_commit_duration_seconds",
    "Time of one group commit on the writer thread (checks, inserts, projections, fsync).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SSE_CONNECTIONS = Gauge("runlog_sse_connections", "Open SSE streams.", multiprocess_mode="livesum")
SSE_FRAMES = Counter("runlog_sse_frames_sent_total", "SSE event frames sent.")
RUNS_FINISHED = Counter(
    "runlog_runs_finished_total",
    "Runs that reached a terminal status (error_class is empty unless failed).",
    ["status", "error_class"],
)
_CALL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
PROVIDER_CALL_SECONDS = Histogram(
    "runlog_provider_call_duration_seconds",
    "Time of one model call attempt, from the request to its last event or its error.",
    ["route", "model"],
    buckets=_CALL_BUCKETS,
)
PROVIDER_TTFT_SECONDS = Histogram(
    "runlog_provider_time_to_first_token_seconds",
    "Time from a model call's request to its first text or tool use.",
    ["route", "model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0),
)
PROVIDER_ERRORS = Counter(
    "runlog_provider_errors_total",
    "Failed model call attempts, retried or not.",
    ["route", "error_class"],
)
PROVIDER_RETRIES = Counter(
    "runlog_provider_retries_total", "Model calls issued again after an error.", ["route"]
)
TOKENS = Counter(
    "runlog_tokens_total",
    "Tokens reported by model calls (kind: input, output, cache_read, cache_write).",
    ["model", "kind"],
)
COST_USD = Counter("runlog_cost_usd_total", "Cost of model calls in USD.", ["model"])
LIVE_RECONNECTS = Counter(
    "runlog_live_reconnects_total",
    "Times the wake-ups from other processes were lost and re-established (PostgreSQL's"
    " listening connection); live subscribers then read again from their cursors.",
)


#: Model calls of live runs whose usage this process counted: the estimate counted for a call
#: (None once its reported usage came), so each call is counted once as in the run's own
#: accounting. A run's are dropped when it ends; all are, should the live runs grow past a bound.
_counted_calls: dict[str, dict[int, RunUsage | None]] = {}
_COUNTED_CALLS_LIMIT = 100_000


#: Labeled children by metric and label values: ``labels()`` takes a lock and checks its
#: arguments on every call, and the hot paths (each request, each commit) would call it several
#: times. Label values are the service's own (route templates, known methods, statuses, models
#: of the configured routes, outcomes): the cache stays small, and past its bound ``labels()``
#: is simply called each time.
_children: dict[tuple[Any, ...], Any] = {}
_CHILDREN_LIMIT = 4096


def labeled(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, the child cached."""
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = metric.labels(*values)
        if len(_children) < _CHILDREN_LIMIT:
            _children[key] = child
    return child


def _figures(usage: RunUsage) -> tuple[tuple[str, float], ...]:
    return (
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
        ("cache_read", usage.cache_read_tokens),
        ("cache_write", usage.cache_write_tokens),
        ("cost", usage.cost_usd),
    )


def _count_usage(stream: str, usage: RunUsage) -> None:
    if len(_counted_calls) >= _COUNTED_CALLS_LIMIT and stream not in _counted_calls:
        _counted_calls.clear()
    calls = _counted_calls.setdefault(stream, {})
    if usage.estimated and usage.call in calls:
        return  # the call is counted already
    estimate = calls.get(usage.call)
    counted = dict(_figures(estimate)) if estimate is not None else {}
    calls[usage.call] = usage if usage.estimated else None
    for kind, amount in _figures(usage):
        # A counter cannot go down: a reported usage adds what it has beyond the estimate.
        more = max(0.0, amount - counted.get(kind, 0))
        if kind == "cost":
            labeled(COST_USD, usage.model).inc(more)
        else:
            labeled(TOKENS, usage.model, kind).inc(more)


def observe_commit(events: Sequence[RecordedEvent], seconds: float) -> None:
    """The store's commit observer: commit sizes and times, and what the events say about runs
    (only ``run.usage`` and terminal events are decoded)."""
    EVENTS_APPENDED.inc(len(events))
    COMMIT_BATCH_EVENTS.observe(len(events))
    COMMIT_SECONDS.observe(seconds)
    for recorded in events:
        if recorded.type == RunUsage.TYPE:
            usage = decode_event(recorded)
            assert isinstance(usage, RunUsage)
            _count_usage(recorded.stream, usage)
        elif recorded.type in TERMINAL_RUN_EVENTS:
            event = decode_event(recorded)
            error_class = event.error_class if isinstance(event, RunFailed) else ""
            labeled(RUNS_FINISHED, recorded.type.removeprefix("run."), error_class).inc()
            _counted_calls.pop(recorded.stream, None)


def observe_reconnect() -> None:
    """The store's reconnect observer."""
    LIVE_RECONNECTS.inc()


class _Families(Collector):
    """Metric families computed before the scrape (a collector cannot await queries)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class _ThisProcess(Collector):
    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def _multiprocess_dir() -> str | None:
    return os.environ.get(_MULTIPROCESS_ENV) or None


def exposition(live_runs: Mapping[str, int], head_position: int) -> bytes:
    """The text exposition: every process's metrics (or this one's), plus the log's gauges."""
    registry = CollectorRegistry()
    if _multiprocess_dir() is not None:
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    live = GaugeMetricFamily(
        "runlog_runs_live",
        "Runs not yet finished, by status (from the runs read model).",
        labels=["status"],
    )
    for status, count in sorted(live_runs.items()):
        live.add_metric([status], count)
    head = GaugeMetricFamily(
        "runlog_log_head_position", "Position of the last event of the log.", value=head_position
    )
    registry.register(_Families([live, head]))
    return generate_latest(registry)


def process_exited() -> None:
    """Drop this process's live gauges from the shared directory (multi-process mode)."""
    if _multiprocess_dir() is not None:
        _multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
