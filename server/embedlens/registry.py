"""The served models, by name, whether they are ready, and hot reload.

Requests read `_spaces` without locks: a reload builds the new model beside the old one and then
replaces the whole mapping in one reference assignment, so a request sees the old model or the
new one, never a mix. A request that started on the old model finishes on it (it holds its own
reference); the old model is freed when the last such request ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import ServerConfig
from .errors import NotFound, Unavailable, quote_list
from .spaces import EmbeddingSpace, load_space

log = logging.getLogger(__name__)

Loader = Callable[..., EmbeddingSpace]


@dataclass(frozen=True)
class ReloadResult:
    """What one model's reload did; on failure the old version still serves."""

    model: str
    reloaded: bool
    error: str
    seconds: float
    previous_content_hash: str
    content_hash: str


class ModelRegistry:
    """Loads every configured model once; requests read it without locks afterwards."""

    def __init__(self, config: ServerConfig, loader: Loader = load_space) -> None:
        self.config = config
        self.names = [m.name for m in config.models]
        self.default = config.default_model_name
        self._specs = {m.name: m for m in config.models}
        self._spaces: dict[str, EmbeddingSpace] = {}
        self._ready = threading.Event()
        self._reload_lock = threading.Lock()
        self._loader = loader
        self.failure: BaseException | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def load_all(self, on_loaded: Callable[[EmbeddingSpace], None] | None = None) -> None:
        """Load the models in order; the registry is ready only when every one is."""
        try:
            for spec in self.config.models:
                space = self._loader(spec, self.config)
                self._spaces = {**self._spaces, spec.name: space}
                if on_loaded is not None:
                    on_loaded(space)
        except BaseException as exc:
            self.failure = exc
            raise
        self._ready.set()

    def get(self, name: str = "") -> EmbeddingSpace:
        """The model a request names ('' means the default)."""
        name = name or self.default
        space = self._spaces.get(name)
        if space is not None:
            return space
        if name not in self._specs:
            raise NotFound(
                f"unknown model {quote_list([name])}; this server serves {quote_list(self.names)}"
            )
        raise Unavailable(f"model {name!r} is still loading; retry shortly")

    def all(self) -> list[EmbeddingSpace]:
        if not self.ready:
            raise Unavailable("models are still loading; retry shortly")
        spaces = self._spaces  # one consistent mapping, even during a reload
        return [spaces[n] for n in self.names]

    def reload(
        self,
        names: Sequence[str] = (),
        on_loaded: Callable[[EmbeddingSpace], None] | None = None,
    ) -> list[ReloadResult]:
        """Reload models (all when `names` is empty) from their configured sources.

        Each new model is built completely (matrix, index, transformer, `on_loaded` checks) and
        only then swapped in; any failure keeps the old model serving and is reported. Reloads
        run one at a time. The sources come from the server's configuration, never a request.
        """
        unknown = [n for n in names if n not in self._specs]
        if unknown:
            raise NotFound(
                f"unknown model(s) {quote_list(unknown)}; this server serves "
                f"{quote_list(self.names)}"
            )
        if not self.ready:
            raise Unavailable("models are still loading; reload once the server is ready")
        wanted = list(dict.fromkeys(names)) or list(self.names)
        with self._reload_lock:
            return [self._reload_one(name, on_loaded) for name in wanted]

    def _reload_one(
        self, name: str, on_loaded: Callable[[EmbeddingSpace], None] | None
    ) -> ReloadResult:
        old = self._spaces[name]
        spec = self._specs[name]
        t0 = time.perf_counter()
        log.info("reloading model %r from %s", name, spec.source)
        try:
            new = self._loader(spec, self.config)
            if on_loaded is not None:
                on_loaded(new)
        except Exception as exc:
            seconds = time.perf_counter() - t0
            log.exception(
                "reloading model %r failed after %.1fs; the old version keeps serving",
                name,
                seconds,
            )
            return ReloadResult(
                name,
                False,
                f"{type(exc).__name__}: {exc}",
                seconds,
                old.index.content_hash,
                old.index.content_hash,
            )
        self._spaces = {**self._spaces, name: new}  # the swap: one reference assignment
        seconds = time.perf_counter() - t0
        changed = "changed" if new.index.content_hash != old.index.content_hash else "unchanged"
        log.info(
            "model %r reloaded in %.1fs (content %s: %s -> %s)",
            name,
            seconds,
            changed,
            old.index.content_hash,
            new.index.content_hash,
        )
        return ReloadResult(name, True, "", seconds, old.index.content_hash, new.index.content_hash)
