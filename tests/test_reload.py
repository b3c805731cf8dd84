"""Hot reload: a new version is built beside the old and swapped in; a broken file leaves the old
one serving and says why; under steady traffic during reloads no call fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedlens.server import EmbedlensServer
from embedlens_client import Client, NotFoundError, UnauthenticatedError

from .conftest import ROOT, make_config, start_server
from .toy_model import break_file, write_toy

ADMIN = "admin-secret-for-tests"


@pytest.fixture()
def toy(tmp_path: Path) -> Iterator[tuple[EmbedlensServer, Path]]:
    path = tmp_path / "toy.vec"
    write_toy(path, seed=0)
    app = start_server(
        make_config(
            models=(_spec("toy", path),),
            cache_dir=tmp_path / "cache",
            admin_token=ADMIN,
            workers=8,
        ),
        timeout=120,
    )
    yield app, path
    app.stop(0)


def _spec(name: str, path: Path):  # type: ignore[no-untyped-def]
    from embedlens.config import ModelSpec

    return ModelSpec(name, str(path))


def _sample(app: EmbedlensServer, name: str, **labels: str) -> float:
    v = app.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


class Traffic:
    """Client threads calling steadily (no retries: every failure counts) until stopped."""

    def __init__(self, target: str, threads: int = 4) -> None:
        self.target = target
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.calls = 0
        self.king_rows: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        with Client(self.target, timeout=30, retries=0) as c:
            while not self.stop.is_set():
                try:
                    assert len(c.nearest("king", k=5)) == 5
                    row = c.lookup("king")
                    c.analogy(["king", "woman"], ["man"], k=3, method="3cosmul", exact=True)
                    c.info()
                except Exception as exc:
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.calls += 4
                    self.king_rows.append(row)


def test_reload_swaps_in_new_vectors_and_keeps_serving_when_broken(
    toy: tuple[EmbedlensServer, Path],
) -> None:
    app, path = toy
    target = f"127.0.0.1:{app.port}"
    with Client(target, timeout=30, admin_token=ADMIN) as admin:
        before = admin.info("toy").index.content_hash
        m0 = admin.lookup("king")
        with Traffic(target) as traffic:
            time.sleep(0.5)
            # 1. new good file -> new version serves
            m1 = write_toy(path, seed=1)
            (r,) = admin.reload(["toy"])
            assert r.reloaded and r.error == "" and r.previous_content_hash == before
            assert r.content_hash != before
            time.sleep(0.3)
            np.testing.assert_allclose(admin.lookup("king"), m1[0], atol=1e-6)
            # 2. broken file -> old (seed 1) version keeps serving, result says why
            break_file(path)
            (r,) = admin.reload()
            assert not r.reloaded and "line 4" in r.error and "expected 4 numbers" in r.error
            assert r.content_hash == r.previous_content_hash
            time.sleep(0.3)
            np.testing.assert_allclose(admin.lookup("king"), m1[0], atol=1e-6)
            # 3. fixed again -> reloads
            m2 = write_toy(path, seed=2)
            (r,) = admin.reload(["toy"])
            assert r.reloaded
            time.sleep(0.3)
        assert traffic.errors == [], traffic.errors[:5]
        assert traffic.calls > 50
        # every answer came whole from one version, never a mix
        versions = [m0, m1[0], m2[0]]
        for row in traffic.king_rows:
            assert any(np.allclose(row, v, atol=1e-6) for v in versions)
        np.testing.assert_allclose(admin.lookup("king"), m2[0], atol=1e-6)
    assert _sample(app, "embedlens_reloads_total", model="toy", result="ok") == 2
    assert _sample(app, "embedlens_reloads_total", model="toy", result="error") == 1
    assert _sample(app, "embedlens_model_reload_ok", model="toy") == 1


def test_reload_needs_the_admin_token_and_known_names(
    toy: tuple[EmbedlensServer, Path],
) -> None:
    app, _ = toy
    target = f"127.0.0.1:{app.port}"
    with Client(target, timeout=30) as anonymous, pytest.raises(UnauthenticatedError):
        anonymous.reload()
    with Client(target, timeout=30, admin_token="wrong") as c, pytest.raises(UnauthenticatedError):
        c.reload()
    with Client(target, timeout=30, token=ADMIN) as c, pytest.raises(UnauthenticatedError):
        c.reload()  # the admin token sent as a user token is not an admin call
    with Client(target, timeout=30, admin_token=ADMIN) as c:
        with pytest.raises(NotFoundError, match="'nope'"):
            c.reload(["toy", "nope"])
        with pytest.raises(NotFoundError):
            c.reload(["/etc/passwd"])  # names are model names, never paths
    assert _sample(app, "embedlens_reloads_total", model="toy", result="ok") == 0


def test_admin_rpcs_are_refused_without_a_configured_admin_token(tmp_path: Path) -> None:
    path = write_toy_path(tmp_path)
    app = start_server(make_config(models=(_spec("toy", path),), cache_dir=tmp_path / "c"))
    try:
        with (
            Client(f"127.0.0.1:{app.port}", admin_token="anything") as c,
            pytest.raises(UnauthenticatedError, match="disabled"),
        ):
            c.reload()
    finally:
        app.stop(0)


def write_toy_path(tmp_path: Path, seed: int = 0) -> Path:
    path = tmp_path / "toy.vec"
    write_toy(path, seed=seed)
    return path


def test_sighup_reloads_every_model(tmp_path: Path) -> None:
    path = write_toy_path(tmp_path)
    log = tmp_path / "server.log"
    port = _free_port()
    env = {**os.environ, "EMBEDLENS_PROGRESS": "0", "EMBEDLENS_CACHE_DIR": str(tmp_path / "c")}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "embedlens", "serve", "--host", "127.0.0.1"),
                *("--port", str(port), "--metrics-port", "-1", "--model", f"toy={path}"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        target = f"127.0.0.1:{port}"
        with Client(target, timeout=10, retries=0) as c:
            _wait_ready(c, proc, log)
            m1 = write_toy(path, seed=1)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while not np.allclose(c.lookup("king"), m1[0], atol=1e-6):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            break_file(path)
            proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 60
            while "not reloaded" not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            np.testing.assert_allclose(c.lookup("king"), m1[0], atol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        text = log.read_text()
        assert "got SIGHUP" in text and "expected 4 numbers" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(c: Client, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.info()
            return
        except Exception:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
