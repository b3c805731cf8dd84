"""Building and running the gRPC server: health, reflection, metrics, auth, TLS, graceful
shutdown and hot reload."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedlens_client.pb.embedlens.v1 import admin_pb2 as admin_pb
from embedlens_client.pb.embedlens.v1 import admin_pb2_grpc as admin_grpc
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

from .admin import AdminService
from .auth import Authenticator, Tokens
from .config import ServerConfig
from .index import COSINE
from .interceptors import CallPipeline
from .metrics import Metrics
from .registry import ModelRegistry, ReloadResult
from .service import EmbeddingService
from .spaces import EmbeddingSpace
from .tls import server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
ADMIN_SERVICE_NAME = admin_pb.DESCRIPTOR.services_by_name["AdminService"].full_name


@dataclass
class EmbedlensServer:
    """A built server: start() binds and begins loading models; stop() drains."""

    config: ServerConfig
    server: grpc.Server
    port: int
    registry: ModelRegistry
    health: health.HealthServicer
    metrics: Metrics
    tokens: Tokens
    executor: futures.ThreadPoolExecutor
    draining: threading.Event
    metrics_port: int = -1
    _loader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> None:
        self.server.start()
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve_http(
                self.config.metrics_host, self.config.metrics_port
            )
        c = self.config
        log.info(
            "gRPC on %s:%d (%s, %s), metrics on %s:%d; loading %d model(s)",
            c.host,
            self.port,
            ("mutual TLS" if c.tls_client_ca else "TLS") if c.tls else "plaintext",
            "token auth" if self.tokens.auth_required else "no auth",
            c.metrics_host,
            self.metrics_port,
            len(c.models),
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
        # The loaded models (vocabularies, token maps: ~10^5 objects each) live until exit:
        # moving them out of the cyclic GC's reach saves ~20 % of a large Analogy batch,
        # which otherwise rescans them in every full collection (docs/performance.md).
        gc.freeze()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.metrics.models_ready.set(1)
        log.info(
            "ready: %d model(s) loaded in %.1fs", len(self.registry.names), time.perf_counter() - t0
        )

    def _record_model(self, space: EmbeddingSpace) -> None:
        m = self.metrics
        m.model_loaded_at.labels(space.name).set(time.time())
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
        tuning = space.index.tuning.get(COSINE)
        if tuning is not None:  # measured when the graph was loaded (index.py, _tune)
            m.recall_probe.labels(space.name).set(tuning.recall)
            m.ef_search.labels(space.name).set(tuning.ef_search)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every model is loaded (False on timeout or a failed load)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.registry.wait(0.05):
            if self.registry.failure is not None:
                return False
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def reload(self, names: Sequence[str] = ()) -> list[ReloadResult]:
        """Reload models (all when none are named) and re-read the token files.

        A model that fails to load keeps serving its old version; its result, the log and
        `embedlens_reloads_total{result="error"}` say why.
        """
        try:
            self.tokens.reload()
        except (OSError, ValueError) as exc:
            log.error("re-reading the token files failed; the old tokens stay: %s", exc)
        results = self.registry.reload(names, on_loaded=self._record_model)
        for r in results:
            self.metrics.reloads.labels(r.model, "ok" if r.reloaded else "error").inc()
            self.metrics.reload_ok.labels(r.model).set(1 if r.reloaded else 0)
        return results

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let in-flight ones finish within the grace.

        For the first `drain_seconds` of the grace the port stays open: health answers
        NOT_SERVING and new calls get UNAVAILABLE, which clients retry on another replica.
        Then the listener closes and in-flight calls have the rest of the grace.
        """
        grace = self.config.grace_seconds if grace is None else grace
        drain = min(self.config.drain_seconds, grace / 2)
        self.health.enter_graceful_shutdown()
        self.draining.set()
        if drain > 0:
            time.sleep(drain)
        self.server.stop(grace - drain).wait()
        self.metrics.close()


def create_server(config: ServerConfig) -> tuple[EmbedlensServer, int]:
    """Build the server and bind its port (0 picks a free one); call .start() to serve."""
    metrics = Metrics()
    registry = ModelRegistry(config)
    tokens = Tokens(config)
    limits = config.limits
    executor = futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="rpc")
    draining = threading.Event()
    server = grpc.server(
        executor,
        # every call is counted, refused calls included (see interceptors.py)
        interceptors=[
            CallPipeline(
                metrics,
                Authenticator(tokens, open_health=config.open_health).check,
                draining,
            )
        ],
        # over it, gRPC answers RESOURCE_EXHAUSTED "Concurrent RPC limit exceeded!" itself
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
        options=[
            ("grpc.max_receive_message_length", limits.max_request_bytes),
            ("grpc.max_send_message_length", limits.max_response_bytes),
            # on only for --processes > 1: otherwise a second server on a port in use must fail
            ("grpc.so_reuseport", 1 if config.processes > 1 else 0),
        ],
    )
    app_box: list[EmbedlensServer] = []
    pb_grpc.add_EmbeddingServiceServicer_to_server(
        EmbeddingService(registry, limits, metrics), server
    )
    admin_grpc.add_AdminServiceServicer_to_server(
        AdminService(lambda names: app_box[0].reload(names)), server
    )
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, ADMIN_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    credentials = server_credentials(config)
    if credentials is not None:
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
        if tokens.auth_required and not _loopback(config.host):
            log.warning(
                "bearer tokens over plaintext on %s: anyone on the path can read them", address
            )
    if port == 0:
        raise OSError(f"cannot bind {address}")
    app = EmbedlensServer(
        config, server, port, registry, health_servicer, metrics, tokens, executor, draining
    )
    app_box.append(app)
    return app, port


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "[::1]", "::1")


def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT, then drain and return 0; SIGHUP reloads every model.

    With --processes N > 1 this process supervises N server processes (processes.py)."""
    if config.processes > 1:
        from .processes import serve_processes

        return serve_processes(config)
    return serve_one(config)


def serve_one(config: ServerConfig) -> int:
    """One server process: run until SIGTERM or SIGINT, drain, return 0."""
    app, _ = create_server(config)
    stop = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: do not wait for the grace period
            log.warning("got %s again: stopping now", signal.Signals(signum).name)
            os._exit(0)
        log.info(
            "got %s: draining (grace %.0fs)", signal.Signals(signum).name, config.grace_seconds
        )
        stop.set()

    def on_hup(_signum: int, _frame: object) -> None:
        log.info("got SIGHUP: reloading every model and the token files")
        threading.Thread(target=_reload_logged, args=(app,), name="reload", daemon=True).start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)
    app.start()
    while not stop.wait(1.0):
        pass
    t0 = time.monotonic()
    app.stop()
    # Handler threads still running past the grace are working for calls gRPC has already
    # cancelled; they stop at their next checkpoint. Do not let one hold the exit.
    app.executor.shutdown(wait=False, cancel_futures=True)
    busy = [t.name for t in threading.enumerate() if t.name.startswith("rpc") and t.is_alive()]
    log.info("stopped in %.1fs", time.monotonic() - t0)
    if busy:
        log.warning("%d handler thread(s) still busy after the grace; exiting anyway", len(busy))
        logging.shutdown()
        os._exit(0)
    return 0


def _reload_logged(app: EmbedlensServer) -> None:
    try:
        results = app.reload()
    except Exception:
        log.exception("reload failed")
        return
    for r in results:
        if not r.reloaded:
            log.error("model %r not reloaded, the old version serves: %s", r.model, r.error)
