"""Load and fault suite: concurrent clients making mixed calls against real `embedlens serve`
processes on 127.0.0.1, while a replica is reloaded, sent SIGTERM, or killed.

Bounded in time and count, loopback only, and it stops by itself (every process it starts is
ended by the time it returns). Run it as

    python -m tests.load_fault --clients 64 --seconds 60            # every scenario, MiniLM
    python -m tests.load_fault --scenario kill --clients 8 --seconds 5

Every call goes through the README client (`Client([a, b])`: round robin over the replicas,
UNAVAILABLE retried with backoff). A call counts as an error unless it succeeds, or is one of the
deliberate over-limit calls (k = max_k + 1) and gets RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedlens_client import Client, ClientError, ResourceExhaustedError

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "load-fault-admin"
SCENARIOS = ("steady", "reload", "sigterm", "kill")
TOKENS = ["king", "queen", "man", "woman", "paris", "france", "berlin", "germany"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replica:
    """One `python -m embedlens serve` process on a loopback port; output in a log file."""

    def __init__(self, log_dir: Path, name: str, model: str | None, grace: float = 10.0) -> None:
        self.name = name
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        env = {**os.environ, "EMBEDLENS_PROGRESS": "0", "EMBEDLENS_ADMIN_TOKEN": ADMIN}
        env.setdefault("EMBEDLENS_CACHE_DIR", str(ROOT / "cache" / "test"))
        args = [sys.executable, "-m", "embedlens", "serve", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--metrics-port", "-1"]
        args += ["--grace-seconds", str(grace)]
        if model:
            args += ["--model", model]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        self.exit_code: int | None = None
        self.exit_seconds: float | None = None

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with Client(self.target, timeout=5, retries=0) as c:
            while True:
                try:
                    c.info()
                    return
                except ClientError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = self.log.read_text()
                        raise RuntimeError(f"{self.name} did not start:\n{log}") from None
                    time.sleep(0.2)

    def stop(self, sig: int, timeout: float = 60) -> None:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.exit_code = self.proc.wait(timeout)
        self.exit_seconds = time.monotonic() - t0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Result:
    scenario: str
    clients: int
    seconds: float
    calls: int = 0
    deliberate: int = 0  # over-limit calls answered RESOURCE_EXHAUSTED, as they must be
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    events: list[str] = field(default_factory=list)

    def percentiles(self, method: str | None = None) -> tuple[float, float]:
        if method is None:
            values = [v for vs in self.latencies.values() for v in vs]
        else:
            values = self.latencies[method]
        if not values:
            return float("nan"), float("nan")
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50) * 1000, float(p99) * 1000

    def summary(self) -> dict[str, object]:
        p50, p99 = self.percentiles()
        return {
            "scenario": self.scenario,
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "calls": self.calls,
            "calls_per_second": round(self.calls / self.seconds, 1),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "deliberate_resource_exhausted": self.deliberate,
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "by_method": {
                m: {
                    "calls": len(v),
                    "p50_ms": round(self.percentiles(m)[0], 1),
                    "p99_ms": round(self.percentiles(m)[1], 1),
                }
                for m, v in sorted(self.latencies.items())
            },
            "events": self.events,
        }


def _mix(
    contextual: bool, max_k: int
) -> list[tuple[str, float, Callable[[Client, random.Random], object]]]:
    def word(r: random.Random) -> str:
        return r.choice(TOKENS)

    mix: list[tuple[str, float, Callable[[Client, random.Random], object]]] = [
        ("nearest", 30, lambda c, r: c.nearest(word(r), k=10)),
        ("nearest_batch8", 15, lambda c, r: c.nearest_batch([word(r) for _ in range(8)], k=5)),
        ("analogy_3cosadd", 15, lambda c, r: c.analogy([word(r), word(r)], [word(r)], k=5)),
        (
            "analogy_3cosmul",
            10,
            lambda c, r: c.analogy([word(r), word(r)], [word(r)], k=5, method="3cosmul"),
        ),
        ("lookup3", 10, lambda c, r: c.lookup([word(r), word(r), word(r)])),
        ("tokenize", 5, lambda c, r: c.tokenize("the river bank flooded " + word(r))),
        ("info", 5, lambda c, r: c.info()),
        ("over_max_k", 5, lambda c, r: c.nearest(word(r), k=max_k + 1)),
    ]
    if contextual:
        mix.append(
            (
                "contextual",
                5,
                lambda c, r: c.contextual_embed("the river bank " + word(r), points="final"),
            )
        )
    return mix


def run_load(
    targets: Sequence[str],
    clients: int,
    seconds: float,
    scenario: str,
    during: Callable[[Result], None] | None = None,
    at: float = 0.4,
) -> Result:
    """`clients` threads calling for `seconds`; `during(result)` runs once, `at` of the way in."""
    with Client(list(targets), timeout=30) as probe:
        info = probe.info()
    contextual = info.transformer is not None
    max_k = info.limits.max_k if info.limits else 1000
    mix = _mix(contextual, max_k)
    names = [m[0] for m in mix]
    weights = [m[1] for m in mix]
    calls = {m[0]: m[2] for m in mix}
    result = Result(scenario, clients, seconds)
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(i: int) -> None:
        r = random.Random(i)
        local: dict[str, list[float]] = defaultdict(list)
        errors: Counter[str] = Counter()
        n = deliberate = 0
        with Client(list(targets), timeout=30) as c:
            while not stop.is_set():
                name = r.choices(names, weights)[0]
                t0 = time.perf_counter()
                try:
                    calls[name](c, r)
                except ResourceExhaustedError:
                    if name == "over_max_k":
                        deliberate += 1
                    else:
                        errors[f"{name}: RESOURCE_EXHAUSTED"] += 1
                except ClientError as exc:
                    errors[f"{name}: {exc.code.name}"] += 1
                else:
                    if name == "over_max_k":
                        errors["over_max_k: served"] += 1
                    local[name].append(time.perf_counter() - t0)
                n += 1
        with lock:
            result.calls += n
            result.deliberate += deliberate
            result.errors.update(errors)
            for k, v in local.items():
                result.latencies[k].extend(v)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    t_start = time.monotonic()
    for t in threads:
        t.start()
    event = None
    if during is not None:
        time.sleep(seconds * at)
        event = threading.Thread(target=during, args=(result,), daemon=True)
        event.start()
    time.sleep(max(0.0, seconds - (time.monotonic() - t_start)))
    stop.set()
    for t in threads:
        t.join(60)
    if event is not None:
        event.join(120)
    result.seconds = time.monotonic() - t_start
    return result


def scenario(name: str, clients: int, seconds: float, model: str | None, log_dir: Path) -> Result:
    """Run one scenario with its own replicas, and end them all."""
    n_replicas = 1 if name in ("steady", "reload") else 2
    replicas = [Replica(log_dir, f"{name}-{i}", model) for i in range(n_replicas)]
    try:
        for rep in replicas:
            rep.wait_ready()
        targets = [r.target for r in replicas]
        first = replicas[0]

        def reload(result: Result) -> None:
            t0 = time.monotonic()
            with Client(first.target, admin_token=ADMIN, timeout=300) as admin:
                results = admin.reload()
            for r in results:
                result.events.append(
                    f"reloaded {r.model} in {time.monotonic() - t0:.1f}s under load "
                    f"(ok={r.reloaded}{', ' + r.error if r.error else ''})"
                )

        def sigterm(result: Result) -> None:
            first.stop(signal.SIGTERM)
            result.events.append(
                f"SIGTERM to {first.name}: exit {first.exit_code} after {first.exit_seconds:.1f}s"
            )

        def kill(result: Result) -> None:
            first.stop(signal.SIGKILL)
            result.events.append(f"SIGKILL to {first.name}: gone after {first.exit_seconds:.2f}s")

        during = {"steady": None, "reload": reload, "sigterm": sigterm, "kill": kill}[name]
        return run_load(targets, clients, seconds, name, during)
    finally:
        for rep in replicas:
            rep.close()


def markdown(results: Sequence[Result]) -> str:
    rows = [
        "| scenario | clients | seconds | calls | calls/s | errors | deliberate RESOURCE_EXHAUSTED "
        "| p50 ms | p99 ms | events |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        s = r.summary()
        errs = f"{s['errors']}" + (f" {s['error_kinds']}" if s["errors"] else "")
        rows.append(
            f"| {r.scenario} | {r.clients} | {s['seconds']} | {s['calls']} | "
            f"{s['calls_per_second']} | {errs} | {s['deliberate_resource_exhausted']} | "
            f"{s['p50_ms']} | {s['p99_ms']} | {'; '.join(r.events)} |"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--model", default=None, help="NAME=SOURCE (default: MiniLM)")
    p.add_argument("--logs", type=Path, default=Path("/tmp/embedlens-load-fault"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.clients < 1 or not 0 < args.seconds <= 600:
        p.error("--clients must be at least 1 and --seconds between 0 and 600")
    args.logs.mkdir(parents=True, exist_ok=True)
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = []
    for name in names:
        r = scenario(name, args.clients, args.seconds, args.model, args.logs)
        results.append(r)
        print(json.dumps(r.summary()), flush=True)
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps([r.summary() for r in results], indent=1))
    return 0 if all(not r.errors for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
