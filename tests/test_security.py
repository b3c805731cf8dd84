"""Security: TLS and mutual TLS, bearer tokens (health and reflection open if configured), the
admin token, config from flags and EMBEDLENS_* variables, and audits: weights never unpickled,
no request field can make the server open a file."""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embedlens.config import ModelSpec, add_serve_arguments, from_args
from embedlens.server import EmbedlensServer
from embedlens_client import (
    Client,
    NotFoundError,
    UnauthenticatedError,
    UnavailableError,
)
from embedlens_client.pb.embedlens.v1 import admin_pb2 as admin_pb
from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb

from .certs import Certs, make_certs
from .conftest import ROOT, make_config, start_server
from .toy_model import write_toy

pytest.importorskip("cryptography")

USER_TOKENS = ("user-token-a", "user-token-b")
ADMIN = "admin-token-z"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def certs(folder: Path) -> Certs:
    return make_certs(folder / "certs")


@pytest.fixture(scope="module")
def toy_path(folder: Path) -> Path:
    path = folder / "toy.vec"
    write_toy(path)
    return path


def _serve(folder: Path, toy_path: Path, **overrides: object) -> EmbedlensServer:
    settings: dict[str, object] = {
        "models": (ModelSpec("toy", str(toy_path)),),
        "cache_dir": folder / "cache",
        "metrics_port": -1,
        **overrides,
    }
    config = make_config(**settings)
    return start_server(config, timeout=120)


@pytest.fixture(scope="module")
def tls_server(folder: Path, toy_path: Path, certs: Certs) -> Iterator[str]:
    app = _serve(folder, toy_path, tls_cert=certs.server.cert, tls_key=certs.server.key)
    yield f"127.0.0.1:{app.port}"
    app.stop(0)


@pytest.fixture(scope="module")
def mtls_server(folder: Path, toy_path: Path, certs: Certs) -> Iterator[str]:
    app = _serve(
        folder,
        toy_path,
        tls_cert=certs.server.cert,
        tls_key=certs.server.key,
        tls_client_ca=certs.ca,
    )
    yield f"127.0.0.1:{app.port}"
    app.stop(0)


@pytest.fixture(scope="module")
def auth_server(folder: Path, toy_path: Path) -> Iterator[EmbedlensServer]:
    app = _serve(folder, toy_path, auth_tokens=USER_TOKENS, admin_token=ADMIN)
    yield app
    app.stop(0)


# ---- TLS ---------------------------------------------------------------------------------


def test_tls_serves_clients_that_trust_its_ca(tls_server: str, certs: Certs) -> None:
    with Client(tls_server, tls_ca=certs.ca, timeout=10, retries=0) as c:
        assert c.nearest("king", k=1)
    with Client(tls_server.replace("127.0.0.1", "localhost"), tls_ca=certs.ca, retries=0) as c:
        assert c.info().name == "toy"


@pytest.mark.parametrize("how", ["plaintext", "other CA", "system roots"])
def test_tls_refuses_clients_that_do_not_trust_it(tls_server: str, certs: Certs, how: str) -> None:
    kwargs: dict[str, object] = {
        "plaintext": {},
        "other CA": {"tls_ca": certs.other_ca},
        "system roots": {"tls": True},
    }[how]
    with (
        Client(tls_server, timeout=5, retries=0, **kwargs) as c,  # type: ignore[arg-type]
        pytest.raises(UnavailableError),
    ):
        c.info()


def test_mutual_tls_needs_a_client_certificate_from_the_ca(mtls_server: str, certs: Certs) -> None:
    good = {"tls_ca": certs.ca, "tls_cert": certs.client.cert, "tls_key": certs.client.key}
    with Client(mtls_server, timeout=10, retries=0, **good) as c:  # type: ignore[arg-type]
        assert c.nearest("queen", k=2)
    rogue = {"tls_cert": certs.rogue_client.cert, "tls_key": certs.rogue_client.key}
    for kwargs in ({"tls_ca": certs.ca}, {"tls_ca": certs.ca, **rogue}):
        with (
            Client(mtls_server, timeout=5, retries=0, **kwargs) as c,  # type: ignore[arg-type]
            pytest.raises(UnavailableError),
        ):
            c.info()


# ---- tokens ------------------------------------------------------------------------------


def _target(app: EmbedlensServer) -> str:
    return f"127.0.0.1:{app.port}"


def test_calls_need_a_valid_token(auth_server: EmbedlensServer) -> None:
    target = _target(auth_server)
    with Client(target, retries=0) as c, pytest.raises(UnauthenticatedError, match="needs a token"):
        c.nearest("king")
    with (
        Client(target, token="guess", retries=0) as c,
        pytest.raises(UnauthenticatedError, match="not valid"),
    ):
        c.nearest("king")
    for token in (*USER_TOKENS, ADMIN):
        with Client(target, token=token, retries=0) as c:
            assert c.nearest("king", k=1)


def test_the_scheme_is_case_insensitive_and_garbage_is_refused_unparsed(
    auth_server: EmbedlensServer,
) -> None:
    with grpc.insecure_channel(_target(auth_server)) as ch:
        info = ch.unary_unary("/embedlens.v1.EmbeddingService/Info")  # raw bytes in and out
        raw = info(b"", metadata=(("authorization", f"bearer {USER_TOKENS[0]}"),), timeout=5)
        assert pb.InfoResponse.FromString(raw).model.name == "toy"
        with pytest.raises(grpc.RpcError) as e:
            info(b"\xff\xfe garbage", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(auth_server: EmbedlensServer) -> None:
    with grpc.insecure_channel(_target(auth_server)) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        responses = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"embedlens.v1.EmbeddingService", "embedlens.v1.AdminService"} <= names


def test_admin_calls_need_the_admin_token(auth_server: EmbedlensServer) -> None:
    target = _target(auth_server)
    with (
        Client(target, token=USER_TOKENS[0], admin_token=USER_TOKENS[0], retries=0) as c,
        pytest.raises(UnauthenticatedError, match="admin token"),
    ):
        c.reload()
    with Client(target, admin_token=ADMIN, retries=0) as c:
        (r,) = c.reload(["toy"])
        assert r.reloaded and r.content_hash == r.previous_content_hash
    refused = auth_server.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_code": "Unauthenticated",
            "grpc_method": "Reload",
            "grpc_service": "embedlens.v1.AdminService",
            "grpc_type": "unary",
        },
    )
    assert refused is not None and refused >= 1


def test_health_can_be_closed_too(folder: Path, toy_path: Path) -> None:
    app = _serve(folder, toy_path, auth_tokens=USER_TOKENS, open_health=False)
    try:
        with grpc.insecure_channel(_target(app)) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            with pytest.raises(grpc.RpcError) as e:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            ok = stub.Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("authorization", f"Bearer {USER_TOKENS[1]}"),),
                timeout=5,
            )
            assert ok.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        app.stop(0)


def test_token_files_rotate_on_reload(folder: Path, toy_path: Path) -> None:
    tokens = folder / "tokens.txt"
    tokens.write_text("# clients\nfirst-token\n\n")
    admin = folder / "admin.txt"
    admin.write_text("admin-from-file\n")
    app = _serve(folder, toy_path, auth_token_file=tokens, admin_token_file=admin)
    try:
        target = _target(app)
        with Client(target, token="first-token", retries=0) as c:
            assert c.info().name == "toy"
        tokens.write_text("second-token\n")
        with Client(target, admin_token="admin-from-file", retries=0) as c:
            c.reload()  # re-reads the token files, as SIGHUP does
        with (
            Client(target, token="first-token", retries=0) as c,
            pytest.raises(UnauthenticatedError),
        ):
            c.info()
        with Client(target, token="second-token", retries=0) as c:
            assert c.info().name == "toy"
    finally:
        app.stop(0)


def test_tls_and_token_together(folder: Path, toy_path: Path, certs: Certs) -> None:
    app = _serve(
        folder,
        toy_path,
        tls_cert=certs.server.cert,
        tls_key=certs.server.key,
        auth_tokens=USER_TOKENS,
    )
    try:
        target = _target(app)
        with Client(target, tls_ca=certs.ca, token=USER_TOKENS[0], retries=0) as c:
            assert c.nearest("king", k=1)
        with Client(target, tls_ca=certs.ca, retries=0) as c, pytest.raises(UnauthenticatedError):
            c.nearest("king", k=1)
    finally:
        app.stop(0)


# ---- configuration -----------------------------------------------------------------------


def _parse(argv: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    return from_args(p.parse_args(argv), env)


def test_security_settings_from_env_and_flags(certs: Certs, folder: Path) -> None:
    env = {
        "EMBEDLENS_TLS_CERT": str(certs.server.cert),
        "EMBEDLENS_TLS_KEY": str(certs.server.key),
        "EMBEDLENS_TLS_CLIENT_CA": str(certs.ca),
        "EMBEDLENS_AUTH_TOKENS": "tok-a1, tok-b2",
        "EMBEDLENS_ADMIN_TOKEN": "secret-adm",
        "EMBEDLENS_OPEN_HEALTH": "0",
    }
    c = _parse([], env)
    assert c.tls_cert == certs.server.cert and c.tls_client_ca == certs.ca
    assert c.auth_tokens == ("tok-a1", "tok-b2") and c.admin_token == "secret-adm"
    assert not c.open_health
    assert "tok-a1" not in repr(c) and "secret-adm" not in repr(c)  # secrets stay out of logs
    c = _parse(["--auth-token", "x", "--open-health"], {"EMBEDLENS_AUTH_TOKEN": "single"})
    assert c.auth_tokens == ("x",) and c.open_health
    assert _parse([], {"EMBEDLENS_AUTH_TOKEN": "single"}).auth_tokens == ("single",)
    tokens = folder / "t.txt"
    tokens.write_text("t\n")
    assert _parse([], {"EMBEDLENS_AUTH_TOKEN_FILE": str(tokens)}).auth


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--tls-cert", "x.pem"], "both"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "readable"),
        (["--tls-client-ca", "/nonexistent.pem"], "needs --tls-cert"),
        (["--auth-token", "has space"], "whitespace"),
        (["--admin-token-file", "/nonexistent"], "readable"),
        (["--max-request-bytes", str(2**31)], "at most"),
    ],
)
def test_bad_security_config_is_a_clear_error(argv: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _parse(argv, {})


def test_metrics_bind_address_is_configurable(folder: Path, toy_path: Path) -> None:
    app = _serve(folder, toy_path, metrics_host="127.0.0.1", metrics_port=0)
    try:
        host = app.metrics._http.server_address[0]  # type: ignore[attr-defined]
        assert host == "127.0.0.1"
    finally:
        app.stop(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_with_tls_and_token_from_the_environment(
    folder: Path, toy_path: Path, certs: Certs
) -> None:
    """As the README says: EMBEDLENS_TLS_* and EMBEDLENS_AUTH_TOKEN for `embedlens serve`."""
    port = _free_port()
    env = {
        **os.environ,
        "EMBEDLENS_PROGRESS": "0",
        "EMBEDLENS_CACHE_DIR": str(folder / "cache"),
        "EMBEDLENS_HOST": "127.0.0.1",
        "EMBEDLENS_PORT": str(port),
        "EMBEDLENS_METRICS_PORT": "-1",
        "EMBEDLENS_MODELS": f"toy={toy_path}",
        "EMBEDLENS_TLS_CERT": str(certs.server.cert),
        "EMBEDLENS_TLS_KEY": str(certs.server.key),
        "EMBEDLENS_AUTH_TOKEN": "env-token",
    }
    log = folder / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "embedlens", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        with Client(f"localhost:{port}", tls_ca=certs.ca, token="env-token", retries=0) as c:
            while True:
                try:
                    assert c.nearest("king", k=1)
                    break
                except UnavailableError:
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
        with (
            Client(f"localhost:{port}", tls_ca=certs.ca, retries=0) as c,
            pytest.raises(UnauthenticatedError),
        ):
            c.info()
        assert "TLS" in log.read_text() and "token auth" in log.read_text()
        assert "env-token" not in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


# ---- audits ------------------------------------------------------------------------------

SOURCES = sorted((ROOT / "server" / "embedlens").rglob("*.py"))
UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|joblib|shelve|marshal)\b"), "pickle"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\bnp\.load\((?![^)]*allow_pickle=False)"), "np.load without allow_pickle=False"),
    (re.compile(r"\btorch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only"),
    (re.compile(r"\byaml\.load\("), "yaml.load"),
    (re.compile(r"\bpd\.read_pickle\("), "read_pickle"),
]


def test_weights_are_never_unpickled() -> None:
    assert SOURCES
    found = []
    for path in SOURCES:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in UNSAFE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


# Every string a request carries, and what it means: names, token texts, input texts.
REQUEST_STRINGS = {
    "model",  # a configured model's name
    "token",  # vocabulary token text
    "text",  # input text
    "texts",
    "points",  # residual-stream point names
    "models",  # AdminService/Reload: configured model names
}


def _request_types() -> list[object]:
    out = []
    for module in (pb, admin_pb):
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [m.input_type for m in service.methods]
    return out


def _string_fields(desc: object, seen: set[str]) -> set[str]:
    names: set[str] = set()
    full = desc.full_name  # type: ignore[attr-defined]
    if full in seen:
        return names
    seen.add(full)
    for f in desc.fields:  # type: ignore[attr-defined]
        if f.type == FieldDescriptor.TYPE_STRING:
            names.add(f.name)
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            names |= _string_fields(f.message_type, seen)
    return names


def test_no_request_field_names_a_file() -> None:
    names: set[str] = set()
    seen: set[str] = set()
    for desc in _request_types():
        names |= _string_fields(desc, seen)
    assert names == REQUEST_STRINGS, "a new string field: check it cannot name a file"


@pytest.fixture()
def opened() -> Iterator[list[str]]:
    """Paths the process opens while the fixture is active (a Python audit hook)."""
    paths: list[str] = []
    active = threading.Event()
    active.set()

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active.is_set() and event == "open" and args and isinstance(args[0], (str, bytes)):
            paths.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet afterwards
    yield paths
    active.clear()


def test_no_path_in_a_request_makes_the_server_open_a_file(
    folder: Path, toy_path: Path, opened: list[str]
) -> None:
    canary = folder / "canary.vec"
    write_toy(canary, seed=5)
    app = _serve(folder, toy_path, admin_token=ADMIN)
    try:
        target = _target(app)
        paths = [str(canary), f"file://{canary}", f"package:{canary}", f"toy={canary}"]
        opened.clear()
        with Client(target, admin_token=ADMIN, retries=0) as c:
            for p in paths:
                for call in (
                    lambda p=p: c.info(model=p),
                    lambda p=p: c.nearest(p),
                    lambda p=p: c.lookup(p, compose_subwords=True),
                    lambda p=p: c.tokenize(p, model=p),
                    lambda p=p: c.contextual_embed(p, points=[p], model=p),
                    lambda p=p: c.reload([p]),
                ):
                    with pytest.raises(Exception) as e:
                        call()
                    assert not isinstance(e.value, UnauthenticatedError)
            with pytest.raises(NotFoundError):
                c.reload([str(canary)])
            assert not [p for p in opened if "canary" in p], opened
            c.reload(["toy"])  # the hook does see the server's threads open files
        assert str(toy_path) in opened
    finally:
        app.stop(0)
