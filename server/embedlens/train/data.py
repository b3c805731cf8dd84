"""Corpus → token ids: the held-out split, LM windows and skip-gram pairs.

All randomness comes from a numpy Generator that the trainer owns and checkpoints, so a run
resumed from step k draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .tokenizer import BOS


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; each line is one document for the trainer."""
    with open(path, encoding="utf-8") as f:
        lines = [s for s in (line.strip() for line in f) if s]
    if not lines:
        raise ValueError(f"corpus {path} has no text")
    return lines


def split_lines(lines: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, held-out): a seeded shuffle of line indices, the first share held out."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    n_eval = math.ceil(len(lines) * eval_fraction) if eval_fraction else 0
    if n_eval and len(lines) - n_eval < 1:
        raise ValueError(f"corpus of {len(lines)} lines is too small to hold {n_eval} out")
    order = np.random.default_rng(seed).permutation(len(lines))
    held = set(order[:n_eval].tolist())
    train = [line for i, line in enumerate(lines) if i not in held]
    heldout = [line for i, line in enumerate(lines) if i in held]
    return train, heldout


@dataclass(frozen=True)
class Encoded:
    """Lines as one token stream: ids (n,) and the line each token came from (n,)."""

    ids: np.ndarray  # int64
    line: np.ndarray  # int64


def encode(tok: Tokenizer, lines: list[str], with_bos: bool) -> Encoded:
    """Encode lines; with_bos puts [BOS] before each line (the LM's document separator)."""
    bos = tok.token_to_id(BOS)
    if bos is None:
        raise ValueError(f"the tokenizer has no {BOS} token")
    ids: list[int] = []
    line_of: list[int] = []
    for i, enc in enumerate(tok.encode_batch(lines, add_special_tokens=False)):
        piece = ([bos] if with_bos else []) + enc.ids
        ids.extend(piece)
        line_of.extend([i] * len(piece))
    return Encoded(np.array(ids, dtype=np.int64), np.array(line_of, dtype=np.int64))


def token_counts(stream: np.ndarray, d_vocab: int) -> np.ndarray:
    return np.bincount(stream, minlength=d_vocab).astype(np.int64)


# ---- language model ----------------------------------------------------------------------


def lm_batch(
    stream: np.ndarray, n_ctx: int, batch: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random windows: inputs (batch, n_ctx) and next-token targets (batch, n_ctx)."""
    starts = rng.integers(0, len(stream) - n_ctx, size=batch)
    idx = starts[:, None] + np.arange(n_ctx + 1)[None, :]  # (batch, n_ctx + 1)
    w = stream[idx]
    return w[:, :-1], w[:, 1:]


def lm_eval_windows(
    stream: np.ndarray, n_ctx: int, max_tokens: int
) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive non-overlapping windows over (at most max_tokens of) the held-out stream."""
    n = min(len(stream) - 1, max_tokens) // n_ctx
    if n < 1:
        raise ValueError(
            f"the held-out split has {len(stream)} tokens, fewer than one window of "
            f"{n_ctx + 1}: use a larger --eval-fraction or a shorter --context"
        )
    x = stream[: n * n_ctx].reshape(n, n_ctx)
    y = stream[1 : n * n_ctx + 1].reshape(n, n_ctx)
    return x, y


def unigram_log_probs(counts: np.ndarray) -> np.ndarray:
    """log p(token) from training counts, add-one smoothed so unseen held-out tokens are finite."""
    c = counts.astype(np.float64) + 1.0
    return np.log(c / c.sum())


# ---- skip-gram with negative sampling ----------------------------------------------------


class PairSampler:
    """(center, context) pairs inside one line, as word2vec draws them.

    The window size is drawn from 1..window for each pair (nearer words are likelier contexts),
    frequent tokens are kept with word2vec's probability (sqrt(f/t) + 1) * t/f, and negatives
    come from the unigram distribution raised to 3/4.
    """

    def __init__(
        self,
        data: Encoded,
        counts: np.ndarray,
        window: int,
        negatives: int,
        special: set[int],
        subsample: float = 1e-3,
    ) -> None:
        if window < 1 or negatives < 1:
            raise ValueError(f"window and negatives must be >= 1, got {window}, {negatives}")
        self.data, self.window, self.negatives = data, window, negatives
        freq = counts / max(int(counts.sum()), 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            keep = (np.sqrt(freq / subsample) + 1.0) * subsample / freq
        keep = np.nan_to_num(np.clip(keep, 0.0, 1.0), nan=0.0)
        keep[list(special)] = 0.0
        self.keep = keep
        weights = counts.astype(np.float64) ** 0.75
        weights[list(special)] = 0.0
        if weights.sum() == 0:
            raise ValueError("the corpus has no tokens to train on")
        self.neg_cdf = np.cumsum(weights / weights.sum())
        # expected share of candidate pairs that survive, to size each draw
        probe = np.random.default_rng(0)
        *_, ok = self._candidates(probe, 20_000)
        self.accept = max(float(ok.mean()), 0.01)

    def _candidates(
        self, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, line = self.data.ids, self.data.line
        pos = rng.integers(0, len(ids), size=n)
        reach = rng.integers(1, self.window + 1, size=n)
        off = (rng.integers(0, reach) + 1) * np.where(rng.random(n) < 0.5, -1, 1)
        ctx = pos + off
        inside = (ctx >= 0) & (ctx < len(ids))
        ctx = np.where(inside, ctx, pos)
        ok = inside & (line[ctx] == line[pos])
        ok &= rng.random(n) < self.keep[ids[pos]] * self.keep[ids[ctx]]
        return ids[pos], ids[ctx], ok

    def batch(
        self, rng: np.random.Generator, size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """centers (n,), contexts (n,), negatives (n, negatives); n is about size."""
        c, x, ok = self._candidates(rng, math.ceil(size / self.accept))
        c, x = c[ok][:size], x[ok][:size]
        u = rng.random((len(c), self.negatives))
        neg = np.minimum(np.searchsorted(self.neg_cdf, u, side="right"), len(self.neg_cdf) - 1)
        return c, x, neg
