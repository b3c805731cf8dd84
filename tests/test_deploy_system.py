"""The deployment's moving parts, run for real on loopback, without Docker.

Server replicas are real `python -m embedlens serve` processes sharing the tests' index cache.
In front of them: the nginx from apt with the compose nginx config (only its addresses
rewritten), the Prometheus from apt with the compose scrape config (only its targets and
intervals rewritten), and the client's own round_robin. Each part loses a replica mid-run and
must not lose a call. Everything binds 127.0.0.1, every wait has a deadline, and every process
started here is killed with its whole process group by a fixture finalizer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from embedlens_client import Client, UnavailableError

from .conftest import CACHE_DIR, ROOT
from .test_deploy_config import clean_env, system_binary

NGINX_TEMPLATE = ROOT / "docker" / "nginx" / "templates" / "default.conf.template"
PROMETHEUS_DIR = ROOT / "docker" / "prometheus"
SERVICE = "embedlens.v1.EmbeddingService"
# Three replicas behind each balancer; the fourth stands in for the one the nginx test stops,
# so the round_robin test needs no restart.
N_REPLICAS = 4
START_TIMEOUT = 300.0  # a fresh clone builds the HNSW index once (~30 s, longer on a busy box)
WORDS = ("king", "queen", "river", "bank", "paris", "music", "apple", "green")


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all held open until every one is chosen)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _die_with_parent() -> None:
    """In the child: SIGKILL when the test process dies, even if no finalizer got to run."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def terminate(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """Signal the process group; SIGKILL it if it has not exited within the timeout."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            pass
    # Children that outlived the group leader (nginx workers, say) go too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


@dataclass
class Replica:
    """One `python -m embedlens serve` process, in its own process group."""

    index: int
    port: int
    metrics_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_address(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        argv = [sys.executable, "-m", "embedlens", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--metrics-host", "127.0.0.1"]
        argv += ["--metrics-port", str(self.metrics_port), "--cache-dir", str(CACHE_DIR)]
        argv += ["--workers", "8", "--grace-seconds", "2", "--no-progress"]
        # Four servers share two cores: one OpenMP thread each keeps them from fighting.
        env = {**clean_env(), "OMP_NUM_THREADS": "1"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def serving(self) -> bool:
        if not self.alive:
            log = self.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"replica {self.index} exited with {self.proc and self.proc.poll()}\n{log}")
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=2
                )
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def handled(self, method: str = "Nearest") -> float:
        """grpc_server_handled_total{grpc_method=method, grpc_code="OK"} on its /metrics."""
        text = http_get(f"http://{self.metrics_address}/metrics")
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "grpc_server_handled_total"
            and s.labels.get("grpc_method") == method
            and s.labels.get("grpc_code") == "OK"
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            terminate(self.proc, sig)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    logs = tmp_path_factory.mktemp("replicas")
    ports = free_ports(2 * N_REPLICAS)
    group = [
        Replica(i, ports[2 * i], ports[2 * i + 1], logs / f"replica{i}.log")
        for i in range(N_REPLICAS)
    ]
    try:
        # The first one alone, so that a fresh clone builds the shared index cache once.
        group[0].start()
        wait_until("replica 0 to serve", group[0].serving, START_TIMEOUT, group[0].log)
        for r in group[1:]:
            r.start()
        for r in group[1:]:
            wait_until(f"replica {r.index} to serve", r.serving, START_TIMEOUT, r.log)
        yield group
    finally:
        for r in group:
            r.stop()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[[str, Sequence[str]], subprocess.Popen[bytes]]]:
    """Start a program in its own process group, output to tmp_path/NAME.log; killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        with (tmp_path / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=tmp_path,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        terminate(proc)


# ---- load: calls from several threads over one client, a replica lost in the middle --------------


@dataclass
class Load:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    before: list[float] = field(default_factory=list)  # per-replica calls until the loss
    after: list[float] = field(default_factory=list)  # per-replica calls after it


def run_load(
    client: Client,
    group: Sequence[Replica],
    lose: Callable[[], None],
    *,
    threads: int = 4,
    before_s: float = 2.5,
    after_s: float = 3.0,
) -> Load:
    """Call Nearest without pause from `threads` threads; `lose()` a replica half-way."""
    load = Load()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(seed: int) -> None:
        n = seed
        while not stop.is_set():
            try:
                client.nearest(WORDS[n % len(WORDS)], k=5)
                with lock:
                    load.ok += 1
            except Exception as exc:
                with lock:
                    load.failures.append(repr(exc))
            n += 1

    start = [r.handled() for r in group]
    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    try:
        time.sleep(before_s)
        middle = [r.handled() for r in group]
        lose()
        time.sleep(after_s)
        end = [r.handled() if r.alive else float("nan") for r in group]
    finally:
        stop.set()
        for t in pool:
            t.join(30)
    load.before = [m - s for m, s in zip(middle, start)]
    load.after = [e - m for e, m in zip(end, middle)]
    return load


def assert_spread_and_no_failure(load: Load, lost: int) -> None:
    assert not load.failures, f"{len(load.failures)} failed calls, e.g. {load.failures[:3]}"
    assert load.ok >= 50, f"only {load.ok} calls in the whole run"
    total = sum(load.before)
    for i, n in enumerate(load.before):
        assert n >= 0.1 * total, f"replica {i} got {n:.0f} of {total:.0f} calls: {load.before}"
    for i, n in enumerate(load.after):
        if i != lost:
            assert n > 0, f"replica {i} got no calls after replica {lost} went: {load.after}"


# ---- nginx ---------------------------------------------------------------------------------------


def render_nginx(upstreams: Sequence[str], grpc_listen: str, status_listen: str) -> str:
    """The compose nginx template with local addresses: one upstream line per address."""
    lines: list[str] = []
    for line in NGINX_TEMPLATE.read_text().splitlines():
        if "${EMBEDLENS_UPSTREAM}" in line:
            lines += [line.replace("${EMBEDLENS_UPSTREAM}", u) for u in upstreams]
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    text = text.replace("${NGINX_GRPC_LISTEN}", grpc_listen)
    text = text.replace("${NGINX_STATUS_LISTEN}", status_listen)
    assert "${" not in text
    return text


def nginx_main_conf(workdir: Path) -> str:
    """What the nginx image's own nginx.conf provides around conf.d, with paths in workdir."""
    # As root, nginx would run its workers as `nobody`, who cannot enter pytest's tmp folders.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 2;\n"
        f"pid {workdir / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n{temp}    include {workdir / 'embedlens.conf'};\n}}\n"
    )


@dataclass
class Nginx:
    grpc_address: str
    status_url: str


@pytest.fixture
def start_nginx(
    tmp_path: Path, launch: Callable[[str, Sequence[str]], subprocess.Popen[bytes]]
) -> Callable[[Sequence[str]], Nginx]:
    def start(upstreams: Sequence[str]) -> Nginx:
        nginx = system_binary("nginx")
        grpc_port, status_port = free_ports(2)
        workdir = tmp_path / "nginx"
        workdir.mkdir()
        conf = render_nginx(upstreams, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{status_port}")
        (workdir / "embedlens.conf").write_text(conf)
        (workdir / "nginx.conf").write_text(nginx_main_conf(workdir))
        argv = [nginx, "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e", "stderr"]
        checked = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        proc = launch("nginx", [*argv, "-g", "daemon off;"])
        status_url = f"http://127.0.0.1:{status_port}/healthz"

        def up() -> bool:
            if proc.poll() is not None:
                log = (tmp_path / "nginx.log").read_text(errors="replace")
                pytest.fail(f"nginx exited with {proc.returncode}\n{log[-3000:]}")
            try:
                return http_get(status_url, timeout=1) == "ok\n"
            except OSError:
                return False

        wait_until("nginx to answer", up, 15, tmp_path / "nginx.log")
        return Nginx(f"127.0.0.1:{grpc_port}", status_url)

    return start


def test_nginx_answers_unavailable_as_grpc_when_no_replica_answers(
    start_nginx: Callable[[Sequence[str]], Nginx],
) -> None:
    (dead,) = free_ports(1)  # nothing listens there
    nginx = start_nginx([f"127.0.0.1:{dead}"])
    with (
        Client(nginx.grpc_address, timeout=10, retries=0) as client,
        pytest.raises(UnavailableError, match="no embedlens replica answered"),
    ):
        client.nearest("king")


@pytest.mark.slow
def test_nginx_spreads_calls_and_survives_a_stopped_replica(
    replicas: list[Replica], start_nginx: Callable[[Sequence[str]], Nginx]
) -> None:
    group = replicas[:3]
    nginx = start_nginx([r.address for r in group])
    with Client(nginx.grpc_address, timeout=10) as client:
        assert [n.token for n in client.nearest("king", k=3)]  # warm: one call end to end
        # `docker compose stop` / a scale-down: SIGTERM, the replica drains and exits.
        load = run_load(client, group, lambda: group[1].stop(signal.SIGTERM))
    assert not group[1].alive
    assert_spread_and_no_failure(load, lost=1)


# ---- Prometheus ----------------------------------------------------------------------------------


def prometheus_config(targets: Sequence[str]) -> dict[str, object]:
    """The compose config with static local targets and second-long intervals."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "embedlens"]
    del job["dns_sd_configs"]
    job["static_configs"] = [{"targets": list(targets)}]
    return config


def prom_query(base: str, query: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    reply = json.loads(http_get(url))
    assert reply["status"] == "success", reply
    return list(reply["data"]["result"])


@pytest.mark.slow
def test_prometheus_scrapes_grpc_metrics_from_every_replica(
    replicas: list[Replica],
    tmp_path: Path,
    launch: Callable[[str, Sequence[str]], subprocess.Popen[bytes]],
) -> None:
    prometheus = system_binary("prometheus")
    group = [r for r in replicas if r.alive][:3]
    assert len(group) == 3
    confdir = tmp_path / "prometheus"
    confdir.mkdir()
    (confdir / "prometheus.yml").write_text(
        yaml.safe_dump(prometheus_config([r.metrics_address for r in group]))
    )
    shutil.copy(PROMETHEUS_DIR / "rules.yml", confdir / "rules.yml")
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    proc = launch(
        "prometheus",
        [
            prometheus,
            f"--config.file={confdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
    )

    def ready() -> bool:
        if proc.poll() is not None:
            log = (tmp_path / "prometheus.log").read_text(errors="replace")
            pytest.fail(f"prometheus exited with {proc.returncode}\n{log[-3000:]}")
        try:
            http_get(f"{base}/-/ready", timeout=1)
            return True
        except OSError:
            return False

    wait_until("Prometheus to be ready", ready, 30, tmp_path / "prometheus.log")
    for r in group:
        with Client(r.address, timeout=10) as client:
            for word in WORDS[:3]:
                client.nearest(word, k=3)
    wanted = {r.metrics_address for r in group}
    query = 'grpc_server_handled_total{job="embedlens",grpc_method="Nearest",grpc_code="OK"}'
    seen: dict[str, float] = {}

    def scraped() -> bool:
        seen.clear()
        for series in prom_query(base, query):
            metric, value = series["metric"], series["value"]  # type: ignore[index]
            seen[metric["instance"]] = float(value[1])  # type: ignore[index]
        return set(seen) == wanted and all(v >= 3 for v in seen.values())

    wait_until(f"{query} from {sorted(wanted)} (have {seen})", scraped, 30)
    up = {s["metric"]["instance"]: s["value"][1] for s in prom_query(base, 'up{job="embedlens"}')}  # type: ignore[index]
    assert up == {a: "1" for a in wanted}
    # The alert rules loaded and evaluate against these series.
    rules = json.loads(http_get(f"{base}/api/v1/rules"))["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {"EmbedlensReplicaDown"}
    assert all(r["health"] != "err" for g in rules for r in g["rules"])


# ---- client-side round_robin ---------------------------------------------------------------------


@pytest.mark.slow
def test_client_target_dns_round_robin_uses_a_live_address(replicas: list[Replica]) -> None:
    """dns:/// resolves localhost (127.0.0.1, maybe ::1, which nothing serves): no call fails."""
    alive = next(r for r in replicas if r.alive)
    with Client(f"dns:///localhost:{alive.port}", timeout=10) as client:
        assert all(client.nearest(w, k=2) for w in WORDS)


@pytest.mark.slow
def test_client_round_robin_survives_a_killed_replica(replicas: list[Replica]) -> None:
    group = [r for r in replicas if r.alive][:3]
    assert len(group) == 3
    with Client([r.address for r in group], timeout=10) as client:
        assert client.target.startswith("ipv4:")
        # SIGKILL: no drain, no goodbye; calls in flight on it fail and are retried elsewhere.
        load = run_load(client, group, lambda: group[1].stop(signal.SIGKILL))
    assert not group[1].alive
    assert_spread_and_no_failure(load, lost=1)


def test_client_turns_an_address_list_into_one_balanced_target() -> None:
    from embedlens_client.client import _service_config, channel_target

    assert channel_target("dns:///embedlens:50051") == "dns:///embedlens:50051"
    assert channel_target(["embedlens:50051"]) == "embedlens:50051"
    assert channel_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target(["localhost:1", "127.0.0.1:1"]) == "ipv4:127.0.0.1:1"
    assert channel_target(["[::1]:1", "127.0.0.1:2"]) == "ipv6:[::1]:1,[::ffff:127.0.0.1]:2"
    for bad in ([], ["embedlens"], ["a:b"], ["dns:///a:1", "b:2"], ["a:70000"]):
        with pytest.raises(ValueError):
            channel_target(bad)
    config = json.loads(_service_config(retries=4))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert method["retryPolicy"]["maxAttempts"] == 5
    assert set(method["retryPolicy"]["retryableStatusCodes"]) == {"UNAVAILABLE", "CANCELLED"}
    assert "methodConfig" not in json.loads(_service_config(retries=0))
