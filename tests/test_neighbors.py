"""The precomputed neighbour table answers token/id queries exactly as exact search would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedlens.index import COSINE, DOT, HnswParams, VectorIndex
from embedlens.similarity import SearchOptions, Term, nearest


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 24)).astype(np.float32)
    x[7] = 0.0  # a zero row: no direction, search refuses it
    searchable = np.ones(2000, dtype=bool)
    searchable[:10] = False  # "special tokens": queries, never answers
    words = rng.random(2000) > 0.3
    return x, searchable, words


def _index(data, cache: Path, k: int = 30) -> VectorIndex:
    x, searchable, words = data
    idx = VectorIndex(
        x,
        searchable,
        words,
        params=HnswParams(16, 80, 64),
        neighbor_table_k=k,
        cache_dir=cache,
        progress=False,
        name="t",
    )
    idx.build()
    return idx


@pytest.fixture(scope="module")
def index(data, tmp_path_factory) -> VectorIndex:
    return _index(data, tmp_path_factory.mktemp("cache"))


def test_table_equals_exact_search_for_every_row(index, data) -> None:
    x, searchable, _ = data
    rows = np.array([r for r in range(len(x)) if r != 7])
    exclude = [{int(r)} for r in rows]
    got_s, got_i = index.search_rows(rows, 10, exclude=exclude, exact=True)
    want_s, want_i = index.search(index.unit[rows], 10, exact=True, exclude=exclude)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert (got_i == want_i).mean() > 0.999  # ties aside
    assert searchable[got_i].all()
    assert not (got_i == rows[:, None]).any()  # the query row itself is left out
    # include_query: a searchable row is its own nearest neighbour
    s, i = index.search_rows(np.array([100, 5]), 3)
    assert i[0, 0] == 100 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert i[1, 0] != 5  # a special row is a query, never an answer


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": 31},  # more than the table holds
        {"k": 30, "exclude": [{1}]},  # 30 + 1 excluded > K
        {"k": 10, "metric": DOT},
        {"k": 10, "whole_words_only": True},
        {"k": 10, "restrict_vocab": 1000},
        {"k": 10, "ef_search": 32},  # asks about the HNSW graph
    ],
)
def test_table_steps_aside_when_it_cannot_answer_exactly(index, kwargs) -> None:
    assert index.search_rows(np.array([100]), **kwargs) is None


def test_table_answers_what_it_can(index) -> None:
    assert index.search_rows(np.array([100]), 10, restrict_vocab=2000) is not None  # no-op
    assert index.search_rows(np.array([100]), 10, ef_search=32, exact=True) is not None
    assert index.search_rows(np.array([7]), 10) is None  # the zero row: search raises


def test_nearest_for_tokens_matches_vectors_and_zero_row_still_refused(index, data) -> None:
    from embedlens.errors import InvalidArgument

    class _Space:
        pass

    space = _Space()
    space.index = index  # type: ignore[attr-defined]
    x = data[0]
    terms = [Term(x[r], r) for r in (11, 500, 1999)]
    opts = SearchOptions(k=10, metric=COSINE, exact=True)
    s_table, i_table = nearest(space, terms, opts)  # type: ignore[arg-type]
    vec_terms = [Term(x[r]) for r in (11, 500, 1999)]
    wider = SearchOptions(k=11, metric=COSINE, exact=True)
    s_vec, i_vec = nearest(space, vec_terms, wider)  # type: ignore[arg-type]
    # as vectors the query rows are not excluded: drop them to compare
    for r, row_s, row_i, vs, vi in zip((11, 500, 1999), s_table, i_table, s_vec, i_vec):
        keep = vi != r
        np.testing.assert_array_equal(row_i, vi[keep][:10])
        np.testing.assert_allclose(row_s, vs[keep][:10], rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgument, match="zero length"):
        nearest(space, [Term(x[7], 7)], opts)  # type: ignore[arg-type]


def test_table_is_cached_and_rebuilt_when_rows_change(data, tmp_path) -> None:
    first = _index(data, tmp_path)
    files = sorted((tmp_path / "indexes").glob("*-table30-*"))
    assert len(files) == 1
    second = _index(data, tmp_path)
    np.testing.assert_array_equal(first.table.ids, second.table.ids)
    x, searchable, words = data
    changed = x.copy()
    changed[5] *= -1  # a special row: not in the searchable content hash, but in the table's
    third = VectorIndex(
        changed,
        searchable,
        words,
        params=HnswParams(16, 80, 64),
        neighbor_table_k=30,
        cache_dir=tmp_path,
        progress=False,
    )
    third.build()
    assert len(list((tmp_path / "indexes").glob("*-table30-*"))) == 2
    assert not np.array_equal(third.table.ids[5], first.table.ids[5])


def test_no_table_over_the_row_limit(data, tmp_path) -> None:
    x, searchable, words = data
    idx = VectorIndex(
        x,
        searchable,
        words,
        params=HnswParams(16, 80, 64),
        neighbor_table_k=30,
        neighbor_table_max_rows=1000,
        cache_dir=tmp_path,
        progress=False,
    )
    idx.build()
    assert idx.table is None and idx.search_rows(np.array([100]), 10) is None


# ---- through the server: token queries skip the batcher, vector queries are merged -----------


def _merged_requests(app) -> tuple[float, float]:
    reg, labels = app.metrics.registry, {"method": "Nearest"}
    count = reg.get_sample_value("embedlens_merged_batch_requests_count", labels) or 0.0
    total = reg.get_sample_value("embedlens_merged_batch_requests_sum", labels) or 0.0
    return count, total


def test_server_answers_tokens_from_the_table_and_merges_vector_queries(server, client) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    words = ["king", "river", "music", "paris", "apple", "doctor", "green", "seven"]
    vectors = client.lookup(words)
    # tokens: exact answers, equal to an exact search with the vector (its own row left out)
    searches = [client.nearest(vec, k=11, exact=True) for vec in vectors]
    before = _merged_requests(server)
    for word, found in zip(words, searches):
        table = client.nearest(word, k=10)
        searched = [n for n in found if n.token != word][:10]
        assert [n.id for n in table] == [n.id for n in searched]
        np.testing.assert_allclose(
            [n.score for n in table], [n.score for n in searched], rtol=0, atol=1e-5
        )
    assert _merged_requests(server) == before  # no token query went through a batch

    # 24 concurrent raw-vector queries: merged into shared searches, answers as if alone
    solo = [client.nearest(v, k=10, exact=True) for v in vectors]
    barrier = threading.Barrier(24)

    def one(i: int) -> list:
        barrier.wait(30)
        return client.nearest(vectors[i % len(words)], k=10, exact=True)

    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(one, range(24)))
    for i, answer in enumerate(together):
        assert [n.id for n in answer] == [n.id for n in solo[i % len(words)]]
    count, total = _merged_requests(server)
    new_batches, new_requests = count - before[0], total - before[1]
    assert new_requests == 24 + len(words)
    assert new_batches < new_requests  # at least two calls shared one search
