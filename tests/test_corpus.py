"""The synthetic corpus: deterministic, planted relations, and analogy questions they answer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from embedlens.cli import main
from embedlens.corpus import (
    RELATIONS,
    Pair,
    Relation,
    _check_vocabulary,
    _Picker,
    _sentence,
    analogy_questions,
    format_questions,
    read_questions,
    sentences,
    write_corpus,
)


def test_same_seed_same_corpus_other_seed_another() -> None:
    a = list(sentences(500, seed=3))
    assert a == list(sentences(500, seed=3))
    assert a != list(sentences(500, seed=4))
    assert len(set(a)) > 400, "templates and fillers give varied lines"


def test_every_pair_word_is_frequent_and_lines_are_plain_words() -> None:
    lines = list(sentences(20_000))
    counts = Counter(w for line in lines for w in line.split())
    words = [w for rel in RELATIONS for p in rel.pairs for w in (p.a, p.b)]
    assert min(counts[w] for w in words) >= 100
    assert all(line == line.lower() and line.replace(" ", "").isalpha() for line in lines)


@pytest.mark.parametrize("rel", RELATIONS, ids=lambda r: r.name)
def test_a_sentence_holds_its_word_an_identity_word_and_its_side_marker(rel: Relation) -> None:
    picker = _Picker(0)
    marker_sets = [{w for ws in m.values() for p in ws for w in p.split()} for m in rel.markers]
    own = [marker_sets[0] - marker_sets[1], marker_sets[1] - marker_sets[0]]
    for pair in rel.pairs:
        for side in (0, 1):
            word = pair.b if side else pair.a
            for _ in range(20):
                tokens = set(_sentence(rel, pair, side, picker).split())
                assert word in tokens
                assert tokens & set(pair.identity)
                assert tokens & own[side], "the side's marker is present"
                assert not tokens & own[1 - side], "and the other side's is not"


def test_a_word_in_two_relations_is_refused() -> None:
    clash = Relation(
        name="clash",
        pairs=(Pair("king", "kings", ("crowns",)),),
        templates=(("the {w}",), ("the {w}",)),
        markers=({}, {}),
    )
    with pytest.raises(ValueError, match="'king'"):
        _check_vocabulary([*RELATIONS, clash])


def test_questions_cover_every_ordered_pair_of_pairs_and_round_trip(tmp_path: Path) -> None:
    questions = analogy_questions()
    assert len(questions) == sum(len(r.pairs) * (len(r.pairs) - 1) for r in RELATIONS)
    assert {q.section for q in questions} == {r.name for r in RELATIONS}
    assert all(len({q.a, q.b, q.c, q.d}) == 4 for q in questions)
    path = tmp_path / "questions.txt"
    path.write_text(format_questions(questions))
    assert read_questions(path) == questions
    path.write_text(": s\nking queen man\n")
    with pytest.raises(ValueError, match=r"questions.txt:2: expected 4 words"):
        read_questions(path)


def test_corpus_command_writes_corpus_and_questions(tmp_path: Path) -> None:
    out, questions = tmp_path / "c.txt", tmp_path / "q.txt"
    assert main(["corpus", "--out", str(out), "--lines", "300", "--analogies", str(questions)]) == 0
    assert out.read_text().splitlines() == list(sentences(300))
    assert read_questions(questions) == analogy_questions()
    assert write_corpus(tmp_path / "d.txt", 300) == sum(len(s.split()) for s in sentences(300))


@pytest.mark.slow
def test_gensim_word2vec_finds_the_planted_analogies(tmp_path: Path) -> None:
    """The corpus is a fair test: an independent word2vec solves its analogies (top-1)."""
    from gensim.models import Word2Vec

    model = Word2Vec(
        [s.split() for s in sentences(20_000)],
        vector_size=64,
        window=5,
        sg=1,
        negative=5,
        min_count=1,
        epochs=5,
        seed=1,
        workers=1,
    )
    path = tmp_path / "questions.txt"
    path.write_text(format_questions(analogy_questions()))
    score, _ = model.wv.evaluate_word_analogies(str(path))
    assert score >= 0.8
