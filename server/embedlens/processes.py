"""Several server processes on one port: `embedlens serve --processes N`.

gRPC Python runs every handler under one GIL, so one server process answers on about one core
however many threads it has (docs/performance.md: Lookup is bound at ~1 core of server CPU
while the client leaves the second idle). With N > 1 this process starts N copies of the
server, each loading the models itself (from the shared cache, so only the first start builds
anything) and binding the same port with SO_REUSEPORT: the kernel spreads incoming
*connections* over them. A client therefore needs several connections to use several
processes: several clients, several channels, or a load balancer in front.

- Copy i serves /metrics on `--metrics-port` + i (0: each picks a free port; -1: off), so a
  scrape sees each process; each answers health for its own connections.
- SIGTERM / SIGINT are passed on: every copy drains as a single server does, then this process
  exits 0. SIGHUP is passed on: every copy reloads.
- If a copy dies on its own, the others are stopped and this process exits 1, so that the
  supervisor (systemd, Kubernetes, compose) restarts the whole set.
- Each copy runs in its own process group (Ctrl-C reaches the supervisor, which passes it on
  once) and stops by itself, draining, if the supervisor is killed outright.
- Memory is per copy (E, graph, weights; ~650 MiB RSS for MiniLM): N copies cost N times that.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from .config import ServerConfig

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


def _free_port(host: str) -> int:
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((bare if bare not in ("", "::") else "::" if family == socket.AF_INET6 else "", 0))
        return int(s.getsockname()[1])


def copy_config(config: ServerConfig, index: int, port: int) -> ServerConfig:
    """The configuration of copy `index`: the shared port, its own metrics port."""
    metrics = config.metrics_port
    if metrics > 0:
        metrics += index
    return dataclasses.replace(config, port=port, metrics_port=metrics)


def _run_copy(config: ServerConfig, parent: int) -> None:
    # A process group of its own: Ctrl-C in a terminal reaches only the supervisor, which
    # passes it on once (a second SIGINT would make a copy skip its drain).
    os.setpgrp()
    # a fresh interpreter (spawn): set up logging as `embedlens serve` does
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    from .server import serve_one

    raise SystemExit(serve_one(config))


def _watch_parent(parent: int) -> None:
    """A copy whose supervisor is gone (killed with SIGKILL) drains and exits, as on SIGTERM."""
    while os.getppid() == parent:
        time.sleep(_POLL_SECONDS)
    log.error("the supervising process %d is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


def serve_processes(config: ServerConfig) -> int:
    port = config.port or _free_port(config.host)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads
    copies = [
        ctx.Process(
            target=_run_copy,
            args=(copy_config(config, i, port), os.getpid()),
            name=f"embedlens-{i}",
        )
        for i in range(config.processes)
    ]
    stopping = threading.Event()

    def forward(signum: int, _frame: Any) -> None:
        if signum != getattr(signal, "SIGHUP", None):
            stopping.set()
        for p in copies:
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):  # it just exited
                    os.kill(p.pid, signum)

    for sig in ("SIGTERM", "SIGINT", "SIGHUP"):
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), forward)
    for p in copies:
        p.start()
    log.info(
        "%d server processes on %s:%d (SO_REUSEPORT), pids %s",
        len(copies),
        config.host,
        port,
        ", ".join(str(p.pid) for p in copies),
    )
    failed = False
    while any(p.is_alive() for p in copies):
        if not stopping.is_set():
            dead = [p for p in copies if not p.is_alive()]
            if dead:
                log.error(
                    "server process %s exited with %s; stopping the others",
                    dead[0].pid,
                    dead[0].exitcode,
                )
                failed = True
                forward(signal.SIGTERM, None)
        time.sleep(_POLL_SECONDS)
    for p in copies:
        p.join()
    codes = [p.exitcode for p in copies]
    log.info("all server processes stopped (exit codes %s)", codes)
    return 1 if failed or any(c not in (0, None) for c in codes) else 0
