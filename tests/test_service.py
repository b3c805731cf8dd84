"""Lookup, Tokenize, Nearest, Analogy and Info on the default MiniLM model, through the client."""

from __future__ import annotations

import numpy as np
import pytest

from embedlens_client import Client


def test_info_and_models(client: Client) -> None:
    info = client.info()
    assert info.name == "minilm" and info.is_default
    assert (info.vocab_size, info.d_model) == (30522, 384)
    assert info.lowercase
    assert info.special_tokens == 999  # [PAD] [UNK] [CLS] [SEP] [MASK] + 994 [unusedN]
    assert info.index.indexed_vectors == 30522 - 999
    assert info.limits is not None and info.limits.max_k >= 100
    assert [m.name for m in client.models()] == ["minilm"]


def test_lookup_by_token_and_id_are_rows_of_E(client: Client) -> None:
    king = client.lookup("king")
    assert king.shape == (384,) and king.dtype == np.float32
    both = client.lookup(["king", 2332])
    assert both.shape == (2, 384)
    np.testing.assert_array_equal(both[0], king)
    np.testing.assert_array_equal(both[1], king)  # "king" is id 2332 in this vocabulary


def test_lookup_normalises_like_the_tokenizer(client: Client) -> None:
    np.testing.assert_array_equal(client.lookup("KING"), client.lookup("king"))
    np.testing.assert_array_equal(client.lookup("Café"), client.lookup("cafe"))


def test_lookup_composes_subwords_only_when_asked(client: Client) -> None:
    vectors, items = client.lookup_items(["embeddings"], compose_subwords=True)
    item = items[0]
    assert item.composed and item.id == -1
    pieces = [p.text for p in item.pieces]
    assert len(pieces) >= 2 and pieces[1].startswith("##")
    expected = client.lookup([p.id for p in item.pieces]).mean(axis=0)
    np.testing.assert_allclose(vectors[0], expected, rtol=1e-6, atol=1e-7)
    # A vocabulary word is never composed, even when composition is allowed.
    _, items = client.lookup_items(["king"], compose_subwords=True)
    assert not items[0].composed and items[0].id == 2332


def test_lookup_mixed_batch_keeps_item_order(client: Client) -> None:
    """Ids, composed words and tokens in one call: vector i belongs to item i."""
    vectors, items = client.lookup_items(
        [2332, "embeddings", "queen", "embeddings", 2332], compose_subwords=True
    )
    assert vectors.shape == (5, 384)
    assert [it.composed for it in items] == [False, True, False, True, False]
    king, queen = client.lookup(["king", "queen"])
    np.testing.assert_array_equal(vectors[0], king)
    np.testing.assert_array_equal(vectors[4], king)
    np.testing.assert_array_equal(vectors[2], queen)
    composed = client.lookup([p.id for p in items[1].pieces]).mean(axis=0)
    np.testing.assert_allclose(vectors[1], composed, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(vectors[3], vectors[1])


def test_tokenize_gives_ids_and_character_offsets(client: Client) -> None:
    text = "The river Bank, flooded."
    toks = client.tokenize(text)
    assert toks[0].text == "[CLS]" and toks[0].special
    assert toks[-1].text == "[SEP]" and toks[-1].special
    words = [t for t in toks if not t.special]
    assert [t.text for t in words][:3] == ["the", "river", "bank"]
    for t in words:
        assert text[t.start : t.end].lower() == t.text.removeprefix("##")
    assert next(t.text for t in client.tokenize(text, skip_special_tokens=True)) == "the"


def test_nearest_by_token_id_and_vector_agree(client: Client) -> None:
    by_token = client.nearest("king", k=5, exact=True)
    by_id = client.nearest(2332, k=5, exact=True)
    assert by_token == by_id
    assert "king" not in [n.token for n in by_token]  # the query is excluded by default
    assert by_token[0].token == "kings"
    by_vector = client.nearest(client.lookup("king"), k=6, exact=True)
    assert by_vector[0].token == "king" and by_vector[0].score == pytest.approx(1.0, abs=1e-5)
    assert [n.token for n in by_vector[1:]] == [n.token for n in by_token]


def test_nearest_can_include_the_query(client: Client) -> None:
    res = client.nearest("king", k=3, exact=True, include_query=True)
    assert res[0].token == "king"


def test_nearest_scores_are_cosines_best_first(client: Client) -> None:
    res = client.nearest("paris", k=10, exact=True)
    scores = [n.score for n in res]
    assert scores == sorted(scores, reverse=True)
    e = client.lookup(["paris", res[0].id])
    cos = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert scores[0] == pytest.approx(cos, abs=1e-5)


def test_dot_metric_ranks_by_inner_product(client: Client) -> None:
    res = client.nearest("king", k=5, exact=True, metric="dot")
    e = client.lookup(["king"] + [n.id for n in res])
    np.testing.assert_allclose([n.score for n in res], e[1:] @ e[0], rtol=1e-5)
    approx = client.nearest("king", k=5, metric="dot")
    assert len({n.id for n in approx} & {n.id for n in res}) >= 4


def test_special_tokens_never_appear(client: Client) -> None:
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for q in ("[CLS]", "[unused5]", "the", ".", 0):
        for exact in (True, False):
            res = client.nearest(q, k=50, exact=exact)
            assert len(res) == 50
            bad = [n.token for n in res if n.token in specials or n.token.startswith("[unused")]
            assert not bad, (q, exact, bad)


def test_whole_words_only_and_restrict_vocab(client: Client) -> None:
    for exact in (True, False):
        res = client.nearest("walking", k=30, exact=exact, whole_words_only=True)
        assert len(res) == 30 and not any(n.token.startswith("##") for n in res)
        res = client.nearest("walking", k=30, exact=exact, restrict_vocab=5000)
        assert len(res) == 30 and all(n.id < 5000 for n in res)


def test_approximate_search_agrees_with_exact(client: Client) -> None:
    words = ["king", "paris", "computer", "happy", "river", "dog", "music", "blue"]
    exact = client.nearest_batch(words, k=10, exact=True)
    approx = client.nearest_batch(words, k=10)
    hits = sum(len({n.id for n in a} & {n.id for n in e}) for a, e in zip(exact, approx))
    assert hits / (10 * len(words)) >= 0.9


def test_king_minus_man_plus_woman_is_queen(client: Client) -> None:
    for method in ("3cosadd", "3cosmul"):
        for exact in (True, False):
            res = client.analogy(
                positive=["king", "woman"], negative=["man"], k=1, method=method, exact=exact
            )
            assert res[0].token == "queen", (method, exact, res)


def test_analogy_can_show_that_inputs_are_often_nearest(client: Client) -> None:
    """The honest view: without the exclusion, king - man + woman is nearest to king."""
    res = client.analogy(["king", "woman"], ["man"], k=3, exact=True, exclude_inputs=False)
    assert res[0].token == "king"
    assert "queen" in [n.token for n in res]


def test_analogy_batch_answers_in_order(client: Client) -> None:
    queries = [(["king", "woman"], ["man"]), (["paris", "germany"], ["france"])]
    res = client.analogy_batch(queries, k=3, exact=True)
    assert res[0][0].token == "queen"
    assert res[1][0].token == "berlin"


def test_nearest_batch_of_vectors(client: Client) -> None:
    vecs = client.lookup(["dog", "cat", "car"])
    res = client.nearest_batch(vecs, k=1, exact=True)
    assert [r[0].token for r in res] == ["dog", "cat", "car"]


def test_streaming_analogy_matches_unary(client: Client, target: str) -> None:
    import grpc

    from embedlens_client.pb.embedlens.v1 import embedlens_pb2 as pb
    from embedlens_client.pb.embedlens.v1 import embedlens_pb2_grpc as pb_grpc

    def req(pos: list[str], neg: list[str]) -> pb.StreamAnalogyRequest:
        return pb.StreamAnalogyRequest(
            request=pb.AnalogyRequest(
                queries=[
                    pb.AnalogyQuery(
                        positive=[pb.Query(token=t) for t in pos],
                        negative=[pb.Query(token=t) for t in neg],
                    )
                ],
                options=pb.SearchOptions(k=2, exact=True),
            )
        )

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        out = list(
            stub.StreamAnalogy(
                iter([req(["king", "woman"], ["man"]), req(["paris", "germany"], ["france"])]),
                timeout=30,
            )
        )
    assert [o.response.results[0].neighbors[0].token for o in out] == ["queen", "berlin"]
    assert out[0].response.model == "minilm"
