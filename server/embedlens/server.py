"""Building and running the gRPC server: health, reflection, metrics, graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

from .config import ServerConfig
from .index import COSINE
from .interceptors import ErrorInterceptor, MetricsInterceptor
from .metrics import Metrics
from .registry import ModelRegistry
from .service import EmbeddingService
from .spaces import EmbeddingSpace

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
RECALL_PROBE_QUERIES = 200


@dataclass
class EmbedlensServer:
    """A built server: start() binds and begins loading models; stop() drains."""

    config: ServerConfig
    server: grpc.Server
    port: int
    registry: ModelRegistry
    health: health.HealthServicer
    metrics: Metrics
    metrics_port: int = -1
    _loader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.server.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(
                self.config.metrics_host, self.config.metrics_port
            )
        log.info(
            "gRPC on %s:%d, metrics on %s:%d; loading %d model(s)",
            self.config.host,
            self.port,
            self.config.metrics_host,
            self.metrics_port,
            len(self.config.models),
        )
        self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        t0 = time.perf_counter()
        try:
            self.registry.load_all(on_loaded=self._record_model)
        except Exception:
            log.exception("loading models failed; health stays NOT_SERVING")
            return
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.models_ready.set(1)
        log.info(
            "ready: %d model(s) loaded in %.1fs", len(self.registry.names), time.perf_counter() - t0
        )

    def _record_model(self, space: EmbeddingSpace) -> None:
        m = self.metrics
        m.index_vectors.labels(space.name, "exact").set(space.index.size)
        m.index_vectors.labels(space.name, "hnsw").set(space.index.size)
        m.model_load_seconds.labels(space.name).set(space.load_seconds)
        m.model_info.labels(space.name).info(
            {
                "format": space.fmt,
                "source": space.source,
                "vocab_size": str(space.vocab_size),
                "d_model": str(space.d_model),
            }
        )
        recall = probe_recall(space)
        m.recall_probe.labels(space.name).set(recall)
        log.info(
            "model %r: HNSW recall@10 against exact search on %d probes: %.3f",
            space.name,
            RECALL_PROBE_QUERIES,
            recall,
        )

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every model is loaded (False on timeout or a failed load)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.registry.wait(0.05):
            if self.registry.failure is not None:
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within the grace."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.config.grace_seconds if grace is None else grace).wait()
        self.metrics.close()


def probe_recall(space: EmbeddingSpace, k: int = 10, n: int = RECALL_PROBE_QUERIES) -> float:
    """Recall@k of HNSW against exact search, on a fixed sample of the model's own rows."""
    rows = space.index.rows
    if len(rows) == 0:
        return 1.0
    sample = np.random.default_rng(0).choice(rows, size=min(n, len(rows)), replace=False)
    q = space.index.unit[sample]
    k = min(k, len(rows))
    own = [{int(r)} for r in sample]  # a row is trivially its own nearest neighbour
    _, exact = space.index.search(q, k, exact=True, metric=COSINE, exclude=own)
    _, approx = space.index.search(q, k, exact=False, metric=COSINE, exclude=own)
    hits = sum(len(set(e) & set(a)) for e, a in zip(exact.tolist(), approx.tolist()))
    return hits / float(exact.size)


def create_server(config: ServerConfig) -> tuple[EmbedlensServer, int]:
    """Build the server and bind its port (0 picks a free one); call .start() to serve."""
    metrics = Metrics()
    registry = ModelRegistry(config)
    limits = config.limits
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc"),
        interceptors=[MetricsInterceptor(metrics), ErrorInterceptor()],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            ("grpc.max_send_message_length", limits.max_response_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    pb_grpc.add_EmbeddingServiceServicer_to_server(
        EmbeddingService(registry, limits, metrics), server
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    app = EmbedlensServer(config, server, port, registry, health_servicer, metrics)
    return app, port


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain and return 0."""
    app, _ = create_server(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info(
            "got %s: draining (grace %.0fs)", signal.Signals(signum).name, config.grace_seconds
        )
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app.start()
    while not stop.wait(1.0):
        pass
    app.stop()
    log.info("stopped")
    return 0
