"""A small static-vector model written to a temporary file, for tests that reload, restart or
secure a server and must not wait for MiniLM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

WORDS = ["king", "queen", "man", "woman", "paris", "france", "berlin", "germany"]


def toy_vocab(n: int = 400) -> list[str]:
    return WORDS + [f"w{i:04d}" for i in range(n - len(WORDS))]


def toy_matrix(n: int = 400, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def write_word2vec(path: Path, matrix: np.ndarray, vocab: list[str] | None = None) -> Path:
    """word2vec text format, written beside and renamed into place (a reader never sees half)."""
    vocab = vocab or toy_vocab(len(matrix))
    lines = [f"{len(matrix)} {matrix.shape[1]}"]
    lines += [f"{w} " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(vocab, matrix)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_toy(path: Path, seed: int = 0, n: int = 400, d: int = 16) -> np.ndarray:
    """Write a toy model; returns its matrix as the file holds it (6 decimals)."""
    m = np.round(toy_matrix(n, d, seed), 6)
    write_word2vec(path, m)
    return m


def break_file(path: Path) -> None:
    """Replace a vector file by one its loader must refuse (row 3 has the wrong length)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("5 4\nking 1 2 3 4\nqueen 1 2 3 4\nman 1 2\n", encoding="utf-8")
    os.replace(tmp, path)
