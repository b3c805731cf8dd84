"""Graceful shutdown of a real `embedlens serve` process: on SIGTERM health turns NOT_SERVING,
new calls are refused, in-flight calls finish, and the process exits 0 within the grace."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedlens_client import Client, ClientError, UnavailableError

from .conftest import CACHE_DIR, ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """`python -m embedlens serve` on loopback ports, its output in a log file."""

    def __init__(self, tmp: Path, grace: float) -> None:
        self.port, self.metrics_port = _free_port(), _free_port()
        self.log = tmp / "server.log"
        env = {**os.environ, "EMBEDLENS_CACHE_DIR": str(CACHE_DIR), "EMBEDLENS_PROGRESS": "0"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "embedlens", "serve", "--host", "127.0.0.1"),
                    *("--port", str(self.port), "--metrics-host", "127.0.0.1"),
                    *("--metrics-port", str(self.metrics_port), "--grace-seconds", str(grace)),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.target = f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def health(self) -> int:
        with grpc.insecure_channel(self.target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status

    def wait_serving(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "never SERVING:\n" + self.output()
            time.sleep(0.2)

    def in_flight(self, method: str) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        prefix = f'embedlens_in_flight_requests{{grpc_method="{method}"}} '
        for line in text.splitlines():
            if line.startswith(prefix):
                return float(line.split()[-1])
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture()
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    s = Served(tmp_path, grace=request.param)
    try:
        s.wait_serving()
        yield s
    finally:
        s.close()


def _analogies(n: int) -> list[tuple[list[object], list[object]]]:
    ids = np.random.default_rng(0).integers(2000, 29000, size=(n, 3)).tolist()
    return [(["king", "woman"], ["man"])] + [([a, b], [c]) for a, b, c in ids[1:]]


class SlowCall(threading.Thread):
    """An exact 3CosMul batch (seconds of work), run in the background."""

    def __init__(self, target: str, n: int) -> None:
        super().__init__(daemon=True)
        self.target, self.n = target, n
        self.result: list[object] | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            with Client(self.target, timeout=120, retries=0) as c:
                self.result = list(
                    c.analogy_batch(_analogies(self.n), k=3, method="3cosmul", exact=True)
                )
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()


def _wait_in_flight(s: Served, call: SlowCall) -> None:
    deadline = time.monotonic() + 30
    while s.in_flight("Analogy") < 1:
        assert call.is_alive() and time.monotonic() < deadline, "the slow call never started"
        time.sleep(0.02)


@pytest.mark.parametrize("served", [60.0], indirect=True)
def test_sigterm_lets_in_flight_calls_finish_and_refuses_new_ones(served: Served) -> None:
    call = SlowCall(served.target, 1024)
    call.start()
    _wait_in_flight(served, call)
    served.proc.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()

    # new calls are refused while the slow one is still running
    refused = None
    while refused is None and time.monotonic() - t_signal < 10:
        try:
            with Client(served.target, timeout=2, retries=0) as c:
                c.nearest("king", k=1)
            time.sleep(0.05)
        except UnavailableError as exc:
            refused = time.monotonic()
            assert "king" not in exc.details
        except ClientError as exc:  # anything else is wrong
            raise AssertionError(exc) from exc
    assert refused is not None, "a new call was still served 10 s after SIGTERM"
    assert call.is_alive(), "the slow call ended before we could check refusal; make it slower"
    try:
        status = served.health()
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.UNAVAILABLE  # the listener is already closed

    call.join(120)
    assert call.error is None, repr(call.error)
    assert call.result is not None and len(call.result) == 1024
    assert call.result[0][0].token == "queen"  # type: ignore[index, attr-defined]
    code = served.proc.wait(60)
    t_exit = time.monotonic()
    out = served.output()
    assert code == 0, out
    assert t_exit - t_signal < 60, out
    assert call.finished_at <= t_exit
    assert "draining" in out and "stopped" in out
    print(
        f"refused new calls {refused - t_signal:.2f}s after SIGTERM; in-flight call finished "
        f"{call.finished_at - t_signal:.2f}s after; exit 0 {t_exit - t_signal:.2f}s after"
    )


@pytest.mark.parametrize("served", [2.0], indirect=True)
def test_calls_longer_than_the_grace_are_cut_and_the_process_still_exits_in_time(
    served: Served,
) -> None:
    call = SlowCall(served.target, 4096)  # tens of seconds of work
    call.start()
    _wait_in_flight(served, call)
    served.proc.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()
    code = served.proc.wait(30)
    elapsed = time.monotonic() - t_signal
    out = served.output()
    assert code == 0, out
    assert elapsed < 2.0 + 4.0, f"exit took {elapsed:.1f}s\n{out}"
    call.join(30)
    assert isinstance(call.error, ClientError)
    assert call.error.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    print(f"exit 0 {elapsed:.2f}s after SIGTERM with a {call.n}-query call cut at the grace")
