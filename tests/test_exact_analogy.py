"""exact_analogy: the per-term engine against a brute-force numpy reference on seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from embedlens import exact_analogy as ea
from embedlens.errors import InvalidArgument


def _reference(xb, rows, terms, q: ea.TermQuery, k: int, method: str):
    cos = xb @ terms[[*q.pos, *q.neg]].T  # (n_rows, n_terms)
    if method == "3cosmul":
        s = (1 + cos) / 2
        score = np.prod(s[:, : len(q.pos)], 1) / (np.prod(s[:, len(q.pos) :], 1) + ea.COSMUL_EPS)
    else:
        w = np.array([1.0] * len(q.pos) + [-1.0] * len(q.neg))
        mean = (w @ terms[[*q.pos, *q.neg]]) / len(w)
        score = xb @ (mean / np.linalg.norm(mean))
    score[np.isin(rows, list(q.exclude))] = -np.inf
    order = np.argsort(-score, kind="stable")[:k]
    return score[order], rows[order]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(700, 16)).astype(np.float32)
    rows = np.sort(rng.choice(1000, size=700, replace=False)).astype(np.int64)
    xb = x / np.linalg.norm(x, axis=1, keepdims=True)
    terms = rng.normal(size=(40, 16)).astype(np.float32)
    terms[:30] = xb[:30]  # 30 terms are rows (unit), 10 raw vectors used as given
    return xb, rows, terms


def _queries(rng: np.random.Generator, n: int) -> list[ea.TermQuery]:
    out = []
    for _ in range(n):
        shape = rng.integers(0, 4)
        a, b, c, d = (int(t) for t in rng.choice(30, size=4, replace=False))
        if shape == 0:
            q = ea.TermQuery((b, c), (a,), (0, 0))  # exclusion ids filled below
        elif shape == 1:
            q = ea.TermQuery((b,), (), ())
        elif shape == 2:
            q = ea.TermQuery((b, c, 30 + a % 10), (a, d), ())
        else:
            q = ea.TermQuery((b, c), (a,), ())
        out.append(q)
    return out


@pytest.mark.parametrize("method", ["3cosadd", "3cosmul"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_equals_brute_force(data, method: str, k: int) -> None:
    xb, rows, terms = data
    rng = np.random.default_rng(k)
    # Shared heads (b - a) across many questions, as in an analogy test set.
    qs = [
        ea.TermQuery(q.pos, q.neg, tuple(int(rows[t]) for t in (*q.pos, *q.neg) if t < 30))
        for q in _queries(rng, 200)
    ]
    scores, ids = ea.search(xb, rows, terms, qs, k, method)
    for j, q in enumerate(qs):
        ref_s, ref_i = _reference(xb, rows, terms, q, k, method)
        np.testing.assert_allclose(scores[j], ref_s, rtol=1e-5, atol=1e-5)
        assert (ids[j] == ref_i).mean() >= 0.9  # equal scores may swap places
        assert not set(ids[j].tolist()) & set(q.exclude)


def test_fewer_rows_than_k_pads(data) -> None:
    xb, rows, terms = data
    scores, ids = ea.search(xb[:3], rows[:3], terms, [ea.TermQuery((0, 1), (2,), ())], 5, "3cosadd")
    assert sorted(ids[0, :3].tolist()) == sorted(rows[:3].tolist())
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()


def test_zero_combined_vector_is_invalid(data) -> None:
    xb, rows, terms = data
    with pytest.raises(InvalidArgument, match="zero length"):
        ea.search(xb, rows, terms, [ea.TermQuery((3,), (3,), ())], 5, "3cosadd")


def test_top_k_is_exact_with_blocks() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 32 * 50)).astype(np.float32)
    want = np.argsort(-f, axis=1, kind="stable")[:, :20]
    assert (ea.top_k(f.copy(), 20, f.shape[1]) == want).all()  # two-level path (k > 16)
    assert (ea.top_k(f.copy(), 3, f.shape[1]) == want[:, :3]).all()  # argmax rounds


def test_worth_it_needs_shared_terms() -> None:
    assert ea.worth_it(1000, 300) and not ea.worth_it(100, 300)
