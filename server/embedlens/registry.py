"""The served models, by name, and whether they are ready."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .config import ServerConfig
from .errors import NotFound, Unavailable, quote_list
from .spaces import EmbeddingSpace, load_space

log = logging.getLogger(__name__)


class ModelRegistry:
    """Loads every configured model once; requests read it without locks afterwards."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.names = [m.name for m in config.models]
        self.default = config.default_model_name
        self._spaces: dict[str, EmbeddingSpace] = {}
        self._ready = threading.Event()
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
                space = load_space(spec, self.config)
                self._spaces[spec.name] = space
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
        if name not in self.names:
            raise NotFound(f"unknown model {name!r}; this server serves {quote_list(self.names)}")
        raise Unavailable(f"model {name!r} is still loading; retry shortly")

    def all(self) -> list[EmbeddingSpace]:
        if not self.ready:
            raise Unavailable("models are still loading; retry shortly")
        return [self._spaces[n] for n in self.names]
