"""Load a folder written by `embedlens train` as an EmbeddingSpace.

The folder is recognised by its embedlens.json marker (or, for a bare `Transformer.save`, by
transformer.json next to a tokenizer.json). E comes from the transformer's tied input embedding
(LM objective) or from embeddings.safetensors (SGNS objective, static only: no transformer, so
ContextualEmbed answers FAILED_PRECONDITION). Rows that cannot be answers are kept out of the
search index: special tokens, and tokens the training split never contained (their rows are
still their random initial values, as meaningless as gensim's below-min_count words). Whole
words are the tokens that begin a word by the tokenizer's convention ("##" marks the others).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelSpec, ServerConfig
from .space import EmbeddingSpace, bracketed_specials


def load_checkpoint_dir(spec: ModelSpec, path: Path, config: ServerConfig) -> EmbeddingSpace:
    """Tokenizer + E (+ transformer for LM checkpoints) + the search index over E."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from ..train.state import COUNTS, EMBEDDINGS, MARKER, TOKENIZER, load_counts, read_marker
    from ..train.tokenizer import special_ids, vocabulary, whole_word_mask
    from ..transformer import CONFIG_FILE, Transformer
    from . import _index  # the one place that turns config into a VectorIndex

    if not (path / TOKENIZER).exists():
        raise FileNotFoundError(f"checkpoint {path} has no {TOKENIZER}")
    objective = read_marker(path)["objective"] if (path / MARKER).exists() else "lm"
    tokenizer = Tokenizer.from_file(str(path / TOKENIZER))
    vocab = vocabulary(tokenizer)
    transformer = None
    if (path / CONFIG_FILE).exists():
        transformer = Transformer.load(path)  # safetensors only, never pickle
        matrix = transformer.embedding_matrix()
    elif (path / EMBEDDINGS).exists():
        weights = load_file(str(path / EMBEDDINGS))
        if "E" not in weights:
            raise ValueError(f"{path / EMBEDDINGS} has no tensor 'E'")
        matrix = np.ascontiguousarray(weights["E"], dtype=np.float32)
    else:
        raise FileNotFoundError(f"checkpoint {path} has neither {CONFIG_FILE} nor {EMBEDDINGS}")
    if matrix.ndim != 2 or len(matrix) != len(vocab):
        raise ValueError(
            f"{path}: the tokenizer has {len(vocab)} tokens but E has shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: E has NaN or infinite values")
    special = special_ids(tokenizer) | bracketed_specials(vocab)
    hidden = set(special)
    if (path / COUNTS).exists():
        counts = load_counts(path / COUNTS)
        if len(counts) != len(vocab):
            raise ValueError(f"{path / COUNTS} has {len(counts)} counts for {len(vocab)} tokens")
        hidden |= {int(i) for i in np.flatnonzero(counts == 0)}
    lowercase = tokenizer.normalizer is not None and tokenizer.normalizer.normalize_str("A") == "a"
    return EmbeddingSpace(
        name=spec.name,
        source=str(path),
        fmt=f"embedlens-{objective}",
        vocab=vocab,
        matrix=matrix,
        index=_index(spec.name, matrix, hidden, whole_word_mask(tokenizer, vocab), config),
        tokenizer=tokenizer,
        lowercase=lowercase,
        special_ids=frozenset(special),
        transformer=transformer,
    )
