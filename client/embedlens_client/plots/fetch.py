"""Fetching vectors for the pictures: batched Lookup with a progress bar, and small maths.

tqdm is not a client dependency, so the progress bar is a few lines writing to stderr; it is
drawn only when asked (the CLI asks when stderr is a terminal) and only for long fetches.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from ..client import Client, LookupResult
from ..errors import NotFoundError

CHUNK = 256  # items per Lookup call: small enough for a progress bar to move
MIN_ITEMS_FOR_BAR = 2 * CHUNK


class Progress:
    """A one-line progress bar on stderr: `label  [#####.....]  120/400`."""

    def __init__(
        self, total: int, label: str, *, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + n)
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            self.stream.write(
                f"\r{self.label}  [{'#' * filled}{'.' * (width - filled)}]  "
                f"{self.done}/{self.total}"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def lookup_vectors(
    client: Client,
    items: Sequence[str | int],
    *,
    model: str | None = None,
    progress: bool = False,
    label: str = "fetching vectors",
) -> tuple[np.ndarray, list[LookupResult]]:
    """Rows of E for items (n, d_model), in CHUNK-sized Lookup calls.

    An unknown word raises the server's NotFoundError, which names the word and the model.
    """
    if not items:
        raise ValueError("no words to look up")
    bar = Progress(len(items), label, enabled=progress and len(items) >= MIN_ITEMS_FOR_BAR)
    vectors: list[np.ndarray] = []
    info: list[LookupResult] = []
    try:
        for start in range(0, len(items), CHUNK):
            chunk = list(items[start : start + CHUNK])
            v, i = client.lookup_items(chunk, model)
            vectors.append(v)
            info.extend(i)
            bar.update(len(chunk))
    finally:
        bar.close()
    return np.concatenate(vectors), info


def lookup_known(
    client: Client,
    words: Sequence[str],
    *,
    model: str | None = None,
    progress: bool = False,
    label: str = "fetching vectors",
) -> dict[str, tuple[np.ndarray, LookupResult]]:
    """Vectors of the words the model knows; unknown ones are left out, not an error.

    Lookup fails as a whole when any item is unknown, so a failing chunk is split in halves
    until the unknown words stand alone: a few unknown words cost a few extra calls.
    """
    unique = list(dict.fromkeys(words))
    bar = Progress(len(unique), label, enabled=progress and len(unique) >= MIN_ITEMS_FOR_BAR)
    found: dict[str, tuple[np.ndarray, LookupResult]] = {}

    def resolve(chunk: list[str]) -> None:
        try:
            v, info = client.lookup_items(chunk, model)
        except NotFoundError:
            if len(chunk) == 1:
                bar.update(1)
                return
            half = len(chunk) // 2
            resolve(chunk[:half])
            resolve(chunk[half:])
            return
        for w, row, i in zip(chunk, v, info):
            found[w] = (row, i)
        bar.update(len(chunk))

    try:
        for start in range(0, len(unique), CHUNK):
            resolve(unique[start : start + CHUNK])
    finally:
        bar.close()
    return found


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float64; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0.0 if either is zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coords (n, 2), components (2, d), explained variance ratio (2,)) by SVD.

    Signs follow sklearn's svd_flip: each component's largest-magnitude coordinate over the
    points is positive, so the same inputs always give the same picture.
    """
    x = np.asarray(x, dtype=np.float64)
    centred = x - x.mean(axis=0)
    if centred.shape[0] < 3:
        raise ValueError(f"a 2-D projection needs at least 3 points, got {centred.shape[0]}")
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    u, s, vt = u[:, :2], s[:2], vt[:2]
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), range(u.shape[1])])
    signs[signs == 0] = 1.0
    u, vt = u * signs, vt * signs[:, None]
    total = float((centred**2).sum()) or 1.0
    return u * s, vt, s**2 / total
