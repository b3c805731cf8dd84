"""Servers the bench starts as subprocesses: embedlens itself and the bare gRPC echo server.

Servers run in their own processes so that the client's event loop and the server's handlers
never share a GIL; the numbers are then what a client on the same host would see.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc), 0 where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class Proc:
    """A started server process and the address it answers on."""

    proc: subprocess.Popen[bytes]
    port: int
    started: float
    log: Path
    ready_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_serving(p: Proc, timeout: float) -> float:
    """Poll gRPC health until SERVING; seconds since the process started."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(p.target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            if p.proc.poll() is not None:
                raise RuntimeError(f"server exited with {p.proc.returncode}; log: {p.log}")
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    p.ready_seconds = time.perf_counter() - p.started
                    return p.ready_seconds
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"server not SERVING after {timeout:.0f}s; log: {p.log}")


def start_embedlens(
    cache_dir: Path,
    log_dir: Path,
    *,
    name: str = "embedlens",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 900.0,
    processes: int = 1,
) -> Proc:
    """`embedlens serve` on a free loopback port, waited for until health says SERVING (with
    `--processes` in args, pass `processes`: every process must say so)."""
    port = free_port()
    log = log_dir / f"{name}.log"
    cmd = [
        sys.executable,
        "-m",
        "embedlens",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--cache-dir",
        str(cache_dir),
        "--no-progress",
        *args,
    ]
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    p = Proc(proc, port, t0, log)
    try:
        wait_serving(p, timeout)
        if processes > 1:
            _wait_all_serving(p, timeout)
    except BaseException:
        p.stop()
        raise
    return p


def _wait_all_serving(p: Proc, timeout: float, connections: int = 16) -> None:
    """SERVING on `connections` fresh connections at once: with SO_REUSEPORT each lands on a
    random process, so all of them answering SERVING means every process has loaded (a
    process left out of 16 connections among 2: 2**-15)."""
    deadline = time.monotonic() + timeout
    opts = [("grpc.use_local_subchannel_pool", 1)]
    while time.monotonic() < deadline:
        chans = [grpc.insecure_channel(p.target, options=opts) for _ in range(connections)]
        try:
            ok = 0
            for ch in chans:
                try:
                    r = health_pb2_grpc.HealthStub(ch).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=2.0
                    )
                    ok += r.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    pass
        finally:
            for ch in chans:
                ch.close()
        if ok == connections:
            p.ready_seconds = time.perf_counter() - p.started
            return
        if p.proc.poll() is not None:
            raise RuntimeError(f"server exited with {p.proc.returncode}; log: {p.log}")
        time.sleep(0.2)
    raise TimeoutError(f"not every server process SERVING after {timeout:.0f}s; log: {p.log}")


def start_echo(
    log_dir: Path, sizes: dict[str, int], *, workers: int = 16, processes: int = 1
) -> Proc:
    """The bare gRPC echo server (bench/echo.py): method name -> response size in bytes;
    `processes` copies on one port."""
    port = free_port()
    log = log_dir / f"echo-{processes}.log"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "echo.py"),
        "--port",
        str(port),
        "--sizes",
        ",".join(f"{m}={n}" for m, n in sizes.items()),
        "--workers",
        str(workers),
        "--processes",
        str(processes),
    ]
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    p = Proc(proc, port, t0, log)
    try:
        wait_serving(p, 60.0)
        if processes > 1:
            _wait_all_serving(p, 60.0)
    except BaseException:
        p.stop()
        raise
    return p


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc), 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0
