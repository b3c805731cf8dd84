"""An embedding space: vocabulary, the matrix E, its tokenizer, and the indexes over E."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound, quote_list
from ..index import VectorIndex

# BERT-style vocabularies mark reserved and control tokens with brackets: [PAD], [unused12].
_BRACKETED = re.compile(r"^\[[^\]\s]+\]$")


@dataclass(frozen=True)
class TokenSpan:
    """A token of a tokenized text, with character offsets [start, end)."""

    text: str
    id: int
    start: int
    end: int
    special: bool


@dataclass
class EmbeddingSpace:
    """What one served model is. Read-only once loaded; shared by every request thread."""

    name: str
    source: str
    fmt: str
    vocab: list[str]
    matrix: np.ndarray  # (d_vocab, d_model) float32: E, one row per token id
    index: VectorIndex
    tokenizer: Any | None = None  # a `tokenizers.Tokenizer`, when the model has one
    lowercase: bool = False
    special_ids: frozenset[int] = frozenset()
    transformer: Any | None = None
    load_seconds: float = 0.0
    token_to_id: dict[str, int] = field(default_factory=dict)
    # Longer texts cannot normalise to a vocabulary token; set from the vocabulary.
    max_token_chars: int = 0

    def __post_init__(self) -> None:
        if not self.token_to_id:
            # The first occurrence wins, as in gensim.
            for i, tok in enumerate(self.vocab):
                self.token_to_id.setdefault(tok, i)
        if not self.max_token_chars:
            longest = max((len(t) for t in self.token_to_id), default=0)
            # normalising can only drop characters (accents, controls): allow plenty of them
            self.max_token_chars = 4 * longest + 64

    @property
    def d_model(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.matrix.shape[0])

    # ---- tokens ---------------------------------------------------------------------------

    def normalize(self, text: str) -> str:
        """Token text as the model's tokenizer normalises it (lower-casing, accents)."""
        if self.tokenizer is not None and self.tokenizer.normalizer is not None:
            return str(self.tokenizer.normalizer.normalize_str(text))
        return text

    def find_token(self, text: str) -> int | None:
        """The id of a vocabulary token: the exact text first, then its normalised form."""
        i = self.token_to_id.get(text)
        if i is None and len(text) <= self.max_token_chars:  # never normalise megabytes
            i = self.token_to_id.get(self.normalize(text))
        return i

    def token_id(self, text: str) -> int:
        i = self.find_token(text)
        if i is None:
            raise NotFound(
                f"token {quote_list([text])} is not in the vocabulary of model {self.name!r}"
            )
        return i

    def token_ids(self, texts: list[str]) -> list[int]:
        """Ids of several tokens; NOT_FOUND names every one that is missing."""
        ids = [self.find_token(t) for t in texts]
        missing = [t for t, i in zip(texts, ids) if i is None]
        if missing:
            what = "token" if len(missing) == 1 else "tokens"
            raise NotFound(
                f"{what} {quote_list(missing)} not in the vocabulary of model {self.name!r}"
            )
        return [int(i) for i in ids if i is not None]

    def check_id(self, i: int) -> int:
        if not 0 <= i < self.vocab_size:
            raise NotFound(
                f"id {i} is out of range for model {self.name!r}: "
                f"ids are 0 to {self.vocab_size - 1}"
            )
        return int(i)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[TokenSpan]:
        """Text to tokens with character offsets; whitespace split for tokenizer-less spaces."""
        if self.tokenizer is None:
            return [
                TokenSpan(m.group(), self.token_to_id.get(m.group(), -1), m.start(), m.end(), False)
                for m in re.finditer(r"\S+", text)
            ]
        enc = self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return [
            TokenSpan(tok, int(i), int(s), int(e), bool(sp))
            for tok, i, (s, e), sp in zip(enc.tokens, enc.ids, enc.offsets, enc.special_tokens_mask)
        ]

    def compose(self, text: str) -> tuple[np.ndarray, list[TokenSpan]]:
        """The mean of the rows of E for the tokenizer's pieces of `text`."""
        if self.tokenizer is None:
            raise FailedPrecondition(
                f"model {self.name!r} has no subword tokenizer, so {quote_list([text])} "
                "cannot be composed"
            )
        pieces = [p for p in self.tokenize(text, add_special_tokens=False) if not p.special]
        if not pieces:
            raise InvalidArgument(f"{quote_list([text])} has no tokens to compose")
        unknown = [p.text for p in pieces if p.id in self.special_ids]
        if unknown:
            raise NotFound(
                f"{quote_list([text])} has pieces that model {self.name!r} cannot represent "
                f"(they map to special tokens): {quote_list(unknown)}"
            )
        vec = self.matrix[[p.id for p in pieces]].mean(axis=0, dtype=np.float32)
        return vec, pieces


def bracketed_specials(vocab: list[str]) -> set[int]:
    """Ids of [PAD], [CLS], [unused0] and the like in a BERT-style vocabulary."""
    return {i for i, t in enumerate(vocab) if _BRACKETED.match(t)}


def wordpiece_whole_words(vocab: list[str]) -> np.ndarray:
    """True for tokens that start a word (WordPiece continuations start with '##')."""
    return np.fromiter((not t.startswith("##") for t in vocab), dtype=bool, count=len(vocab))
