"""Analogy accuracy of a matrix during training (3CosAdd, inputs excluded), for metrics.json.

A quick in-process check with numpy; the figures in docs/training.md come from the real server
through the client (tests/test_train.py), which is the claim that matters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..corpus import Question


def analogy_accuracy(
    matrix: np.ndarray,
    token_to_id: dict[str, int],
    searchable: np.ndarray,
    questions: Sequence[Question],
    k: int = 5,
) -> dict[str, float]:
    """Share of questions whose answer is among the k nearest to b - a + c (top-1 and top-k).

    Questions with a word missing from the vocabulary are skipped and counted.
    """
    known = [q for q in questions if all(w in token_to_id for w in (q.a, q.b, q.c, q.d))]
    if not known:
        return {"analogy_questions": 0.0, "analogy_skipped": float(len(questions))}
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.maximum(norms, 1e-12)
    a, b, c, d = (np.array([token_to_id[getattr(q, f)] for q in known]) for f in "abcd")
    query = unit[b] - unit[a] + unit[c]  # (n, d_model)
    scores = query @ unit.T  # (n, d_vocab)
    scores[:, ~searchable] = -np.inf
    rows = np.arange(len(known))
    for col in (a, b, c):
        scores[rows, col] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return {
        "analogy_top1": float((top[:, 0] == d).mean()),
        f"analogy_top{k}": float((top == d[:, None]).any(axis=1).mean()),
        "analogy_questions": float(len(known)),
        "analogy_skipped": float(len(questions) - len(known)),
    }
