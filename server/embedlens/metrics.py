"""Every Prometheus metric the server exports, in one place, with explicit buckets.

The grpc_server_* names and labels are those of go-grpc-prometheus, so existing dashboards work.
Each server owns its CollectorRegistry: no module-level state, several servers per process.
"""

from __future__ import annotations

import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    start_http_server,
)

LATENCY_BUCKETS = (
    0.0005,
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
)
QUEUE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes, CPU seconds, open fds: the dashboard's memory panel
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", _RPC_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*_RPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from RPC start to its status, in seconds.",
            _RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total", "Stream messages received.", _RPC_LABELS, registry=r
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total", "Stream messages sent.", _RPC_LABELS, registry=r
        )
        self.in_flight = Gauge(
            "embedlens_in_flight_requests", "RPCs being handled now.", ("grpc_method",), registry=r
        )
        self.batch_size = Histogram(
            "embedlens_batch_size",
            "Queries, items or texts per request.",
            ("method",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.index_vectors = Gauge(
            "embedlens_index_vectors",
            "Vectors in each search index.",
            ("model", "index"),
            registry=r,
        )
        self.model_info = Info(
            "embedlens_model", "What each served model is.", ("model",), registry=r
        )
        self.model_load_seconds = Gauge(
            "embedlens_model_load_seconds",
            "Seconds it took to load each model.",
            ("model",),
            registry=r,
        )
        self.recall_probe = Gauge(
            "embedlens_recall_at_10",
            "Recall@10 of the approximate index against exact search, probed at load "
            "with the default efSearch.",
            ("model",),
            registry=r,
        )
        self.ef_search = Gauge(
            "embedlens_hnsw_ef_search",
            "Default HNSW efSearch (tuned at load to reach the recall target, or configured).",
            ("model",),
            registry=r,
        )
        self.models_ready = Gauge(
            "embedlens_models_ready", "1 when every configured model is loaded.", registry=r
        )
        self.abandoned = Counter(
            "embedlens_abandoned_calls_total",
            "Calls whose work stopped because the client cancelled or its deadline passed; "
            "stage is queued (dropped before work began) or running (stopped at a checkpoint).",
            ("grpc_method", "stage"),
            registry=r,
        )
        self.reloads = Counter(
            "embedlens_reloads_total",
            "Model reloads (SIGHUP or AdminService/Reload), by result (ok or error).",
            ("model", "result"),
            registry=r,
        )
        self.reload_ok = Gauge(
            "embedlens_model_reload_ok",
            "1 if the model's last reload succeeded, 0 if it failed (the old version serves).",
            ("model",),
            registry=r,
        )
        self.model_loaded_at = Gauge(
            "embedlens_model_loaded_timestamp_seconds",
            "Unix time at which the version of each model now serving was swapped in.",
            ("model",),
            registry=r,
        )
        # Cross-request batching (batching.py): how long requests queue, how much is merged.
        self.queue_wait = Histogram(
            "embedlens_queue_wait_seconds",
            "Seconds a request waited for the merged search that answered it to start.",
            ("method",),
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.merged_queries = Histogram(
            "embedlens_merged_batch_queries",
            "Queries per merged search call (concurrent requests coalesced into one).",
            ("method",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.merged_requests = Histogram(
            "embedlens_merged_batch_requests",
            "Requests per merged search call.",
            ("method",),
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._http: object | None = None
        self._lock = threading.Lock()

    def serve_http(self, host: str, port: int) -> int:
        """Start the /metrics HTTP server; returns its port."""
        httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = httpd
        return int(httpd.server_port)

    def close(self) -> None:
        httpd = self._http
        if httpd is not None:
            httpd.shutdown()  # type: ignore[attr-defined]
            httpd.server_close()  # type: ignore[attr-defined]
            self._http = None
