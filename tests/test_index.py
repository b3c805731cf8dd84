"""VectorIndex against a brute-force numpy reference on seeded data, tolerating ties."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlens.errors import InvalidArgument
from embedlens.index import COSINE, DOT, HnswParams, VectorIndex


def _reference(x: np.ndarray, allowed: np.ndarray, q: np.ndarray, k: int, metric: str):
    base = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == COSINE else x
    scores = q @ base.T
    scores[:, ~allowed] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    searchable = np.ones(3000, dtype=bool)
    searchable[:20] = False  # "special tokens"
    words = rng.random(3000) > 0.3
    return x, searchable, words


@pytest.fixture(scope="module")
def index(data, tmp_path_factory) -> VectorIndex:
    x, searchable, words = data
    idx = VectorIndex(
        x,
        searchable,
        words,
        params=HnswParams(16, 100, 64),
        cache_dir=tmp_path_factory.mktemp("cache"),
        progress=False,
        name="t",
    )
    idx.build()
    return idx


@pytest.mark.parametrize("metric", [COSINE, DOT])
@pytest.mark.parametrize("words_only", [False, True])
@pytest.mark.parametrize("restrict", [0, 1000])
def test_exact_search_equals_brute_force(index, data, metric, words_only, restrict) -> None:
    x, searchable, words = data
    q = np.random.default_rng(1).normal(size=(50, 32)).astype(np.float32)
    if metric == COSINE:
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    allowed = searchable & (words if words_only else True)
    if restrict:
        allowed &= np.arange(len(x)) < restrict
    ref_s, ref_i = _reference(x, allowed, q, 10, metric)
    s, i = index.search(
        q, 10, metric=metric, exact=True, whole_words_only=words_only, restrict_vocab=restrict
    )
    np.testing.assert_allclose(s, ref_s, rtol=1e-5, atol=1e-5)
    assert (i == ref_i).mean() > 0.99  # ties may swap neighbours with equal scores
    assert allowed[i].all()


def test_hnsw_recall_and_filters(index, data) -> None:
    x, searchable, words = data
    q = x[100:200] / np.linalg.norm(x[100:200], axis=1, keepdims=True)
    _, exact = index.search(q, 10, exact=True)
    _, approx = index.search(q, 10, exact=False, ef_search=128)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall > 0.95
    _, filt = index.search(q, 10, whole_words_only=True, restrict_vocab=2000)
    assert (filt < 2000).all() and words[filt].all() and searchable[filt].all()


def test_exclusion_still_returns_k(index, data) -> None:
    x = data[0]
    q = x[500] / np.linalg.norm(x[500])
    _, with_self = index.search(q, 5, exact=True)
    assert with_self[0, 0] == 500
    _, without = index.search(q, 5, exact=True, exclude=[{500}])
    assert 500 not in without[0] and list(without[0, :4]) == list(with_self[0, 1:])


def test_fewer_candidates_than_k_pads_with_minus_one(index) -> None:
    q = np.ones((1, 32), dtype=np.float32) / np.sqrt(32)
    s, i = index.search(q, 10, exact=True, restrict_vocab=25)  # only ids 20..24 are searchable
    assert sorted(i[0, :5]) == [20, 21, 22, 23, 24]
    assert (i[0, 5:] == -1).all() and np.isneginf(s[0, 5:]).all()


def test_bad_queries_are_invalid_argument(index) -> None:
    with pytest.raises(InvalidArgument, match="dimension 32"):
        index.search(np.ones(7, np.float32), 3)
    with pytest.raises(InvalidArgument, match="finite"):
        index.search(np.full(32, np.nan, np.float32), 3)


def test_hnsw_index_is_cached_by_content(data, tmp_path: Path) -> None:
    x, searchable, words = data
    kw = dict(params=HnswParams(16, 100, 64), cache_dir=tmp_path, progress=False)
    first = VectorIndex(x, searchable, words, **kw)
    first.build()
    assert not first.from_cache and list((tmp_path / "indexes").glob("*.faiss"))
    second = VectorIndex(x, searchable, words, **kw)
    second.build()
    assert second.from_cache
    changed = x.copy()
    changed[50] += 1.0
    third = VectorIndex(changed, searchable, words, **kw)
    third.build()
    assert not third.from_cache  # new content, new key
    # A corrupt cache file is rebuilt, not trusted.
    for p in (tmp_path / "indexes").glob("*.faiss"):
        p.write_bytes(b"garbage")
    fourth = VectorIndex(x, searchable, words, **kw)
    fourth.build()
    assert not fourth.from_cache
