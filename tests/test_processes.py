"""`embedlens serve --processes N`: N server processes share one port (SO_REUSEPORT)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedlens.config import ServerConfig
from embedlens.processes import copy_config
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = 16  # connections; all 16 landing on one of 2 processes: p = 2 * 2**-16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tiny_model(path: Path) -> None:
    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(300)]
    with path.open("w") as f:
        f.write(f"{len(words)} 8\n")
        for w in words:
            f.write(w + " " + " ".join(f"{x:.5f}" for x in rng.normal(size=8)) + "\n")


def _handled(metrics_port: int, method: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("grpc_server_handled_total{") and f'grpc_method="{method}"' in line:
            total += float(line.split()[-1])
    return total


def test_copy_config_shares_the_port_and_spreads_metrics_ports() -> None:
    c = ServerConfig(processes=3, port=0, metrics_port=9100)
    assert [copy_config(c, i, 5000).metrics_port for i in range(3)] == [9100, 9101, 9102]
    assert {copy_config(c, i, 5000).port for i in range(3)} == {5000}
    off = ServerConfig(processes=2, metrics_port=-1)
    assert copy_config(off, 1, 5000).metrics_port == -1


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int, int]:
    model = tmp_path / "tiny.txt"
    _tiny_model(model)
    port, metrics_port = _free_port(), _free_port()
    while metrics_port + 1 == port:
        metrics_port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedlens",
            "serve",
            "--processes",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-host",
            "127.0.0.1",
            "--metrics-port",
            str(metrics_port),
            "--model",
            f"tiny={model}",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--grace-seconds",
            "4",
        ],
        cwd=ROOT,
        env={**os.environ, "EMBEDLENS_PROGRESS": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port, metrics_port


def test_two_processes_share_the_port_and_stop_on_sigterm(tmp_path: Path) -> None:
    proc, port, metrics_port = _start(tmp_path)
    target = f"127.0.0.1:{port}"
    opts = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    channels = [grpc.insecure_channel(target, options=opts) for _ in range(CHANNELS)]
    try:
        deadline = time.monotonic() + 180
        for ch in channels:  # every connection, whichever process it reached, says SERVING
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "not SERVING"
                time.sleep(0.1)
        for ch in channels:
            r = pb_grpc.EmbeddingServiceStub(ch).Nearest(
                pb.NearestRequest(queries=[pb.Query(token="w1")], options=pb.SearchOptions(k=3)),
                timeout=10,
            )
            assert len(r.results[0].neighbors) == 3
        per_process = [_handled(metrics_port + i, "Nearest") for i in range(2)]
        assert sum(per_process) == CHANNELS
        assert min(per_process) > 0, per_process  # the kernel gave both processes connections
    finally:
        for ch in channels:
            ch.close()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.count("stopped in") == 2 and "all server processes stopped" in out
    with socket.socket() as s:  # nothing listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


def _serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)


def test_copies_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    proc, port, _ = _start(tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not _serving(port):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: nothing is passed on
        proc.communicate(timeout=30)
    deadline = time.monotonic() + 40
    while True:  # the copies notice, drain (grace 4 s) and exit: the port closes
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                break
        assert time.monotonic() < deadline, "server copies outlived their supervisor"
        time.sleep(0.2)
