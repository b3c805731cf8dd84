"""With exact=True, answers equal gensim's KeyedVectors on the same vectors (ties aside).

gensim is a test-only reference. It knows nothing of special tokens, so its answers are
filtered of them before comparing (embedlens never returns [PAD], [unused3] and the like).
"""

from __future__ import annotations

import numpy as np
import pytest

from embedlens.server import EmbedlensServer
from embedlens_client import Client, Neighbor

gensim_models = pytest.importorskip("gensim.models")

K = 10
N_QUERIES = 300
SCORE_TOL = 2e-5


@pytest.fixture(scope="module")
def kv(server: EmbedlensServer) -> object:
    space = server.registry.get("minilm")
    kv = gensim_models.KeyedVectors(vector_size=space.d_model)
    kv.add_vectors(space.vocab, np.asarray(space.matrix))
    kv.special = space.special_ids  # type: ignore[attr-defined]
    return kv


@pytest.fixture(scope="module")
def words(server: EmbedlensServer) -> list[str]:
    space = server.registry.get("minilm")
    rng = np.random.default_rng(20261203)
    pool = [
        t
        for i, t in enumerate(space.vocab)
        if i not in space.special_ids and t.isalpha() and len(t) > 2 and i < 20000
    ]
    return [str(w) for w in rng.choice(pool, size=3 * N_QUERIES, replace=False)]


def _gensim_filtered(kv: object, pairs: list[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    special = {kv.index_to_key[i] for i in kv.special}  # type: ignore[attr-defined]
    return [(w, s) for w, s in pairs if w not in special][:k]


def assert_same_ranking(ours: list[Neighbor], ref: list[tuple[str, float]], what: object) -> None:
    """Same scores rank by rank; same tokens except where scores tie within tolerance."""
    assert len(ours) == len(ref), what
    np.testing.assert_allclose(
        [n.score for n in ours], [s for _, s in ref], atol=SCORE_TOL, err_msg=str(what)
    )
    cutoff = ref[-1][1] + SCORE_TOL  # answers scoring clearly above the last one must match
    assert {n.token for n in ours if n.score > cutoff} == {w for w, s in ref if s > cutoff}, what


def test_nearest_equals_most_similar(client: Client, kv: object, words: list[str]) -> None:
    queries = words[:N_QUERIES]
    ours = client.nearest_batch(queries, k=K, exact=True)
    for q, got in zip(queries, ours):
        ref = _gensim_filtered(kv, kv.most_similar(positive=[q], topn=K + 1000), K)  # type: ignore[attr-defined]
        assert_same_ranking(got, ref, q)


def test_nearest_vector_equals_similar_by_vector(client: Client, kv: object) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(100, 384)).astype(np.float32)
    ours = client.nearest_batch(list(vectors), k=K, exact=True)
    for i, (v, got) in enumerate(zip(vectors, ours)):
        ref = _gensim_filtered(kv, kv.similar_by_vector(v, topn=K + 1000), K)  # type: ignore[attr-defined]
        assert_same_ranking(got, ref, i)


def test_restrict_vocab_equals_gensim(client: Client, kv: object, words: list[str]) -> None:
    queries = words[:50]
    ours = client.nearest_batch(queries, k=K, exact=True, restrict_vocab=8000)
    for q, got in zip(queries, ours):
        pairs = kv.most_similar(positive=[q], topn=K + 1000, restrict_vocab=8000)  # type: ignore[attr-defined]
        assert_same_ranking(got, _gensim_filtered(kv, pairs, K), q)


@pytest.mark.parametrize("method", ["3cosadd", "3cosmul"])
def test_analogy_equals_gensim(client: Client, kv: object, words: list[str], method: str) -> None:
    triples = [tuple(words[i : i + 3]) for i in range(0, 3 * N_QUERIES, 3)]
    queries = [([b, c], [a]) for a, b, c in triples]
    ours = client.analogy_batch(queries, k=K, method=method, exact=True)
    fn = kv.most_similar if method == "3cosadd" else kv.most_similar_cosmul  # type: ignore[attr-defined]
    for (pos, neg), got in zip(queries, ours):
        ref = _gensim_filtered(kv, fn(positive=pos, negative=neg, topn=K + 1000), K)
        assert_same_ranking(got, ref, (pos, neg))


def test_analogy_with_several_terms_and_vectors(client: Client, kv: object) -> None:
    v = np.random.default_rng(3).normal(size=384).astype(np.float32)
    for method, fn in (("3cosadd", kv.most_similar), ("3cosmul", kv.most_similar_cosmul)):  # type: ignore[attr-defined]
        got = client.analogy(
            ["paris", "germany", v], ["france", "city"], k=K, method=method, exact=True
        )
        ref = _gensim_filtered(
            kv, fn(positive=["paris", "germany", v], negative=["france", "city"], topn=K + 1000), K
        )
        assert_same_ranking(got, ref, method)
